// CUDA backend: the primitives. Each is compared with the CPU function of the same name on random
// inputs (every dtype, strided views, ties), bit for bit; plus host validation and index errors.
#include "cuda_test_util.cuh"

#include <span>
#include <vector>

#include "tokensel/stats/contribution_degree.hpp"
#include "tokensel/cuda/select/gather.cuh"
#include "tokensel/cuda/stats/iqr_outliers.cuh"
#include "tokensel/cuda/stats/map_sums.cuh"
#include "tokensel/cuda/stats/region_mass.cuh"
#include "tokensel/cuda/select/top_k.cuh"
#include "tokensel/select/gather.hpp"
#include "tokensel/stats/head_reduction.hpp"
#include "tokensel/stats/iqr_outliers.hpp"
#include "tokensel/stats/map_sums.hpp"
#include "tokensel/stats/region_mass.hpp"
#include "tokensel/select/row_aggregation.hpp"
#include "tokensel/select/top_k.hpp"
#include "tokensel/stats/variance_axis.hpp"

using namespace tokensel;
using namespace tokensel_test;

namespace {

index_t pick(std::mt19937_64& rng, index_t lo, index_t hi) { return std::uniform_int_distribution<index_t>(lo, hi)(rng); }

std::vector<std::uint32_t> bits(const std::vector<float>& v) {
  std::vector<std::uint32_t> b(v.size());
  std::memcpy(b.data(), v.data(), v.size() * sizeof(float));
  return b;
}

template <class E>
attention_batch<E> one_map(std::mt19937_64& rng, index_t q, index_t k) {
  return attention_batch<E>(true, pick(rng, 1, 10), {q}, {k}, static_cast<layout>(pick(rng, 0, 2)),
                            static_cast<values>(pick(rng, 0, 3)), rng);
}

/// Random scores [B, n] stored transposed (column stride B: a strided view) or row-major.
template <class E>
struct score_matrix {
  index_t B, n;
  bool transposed;
  std::vector<E> host;
  device_buffer<E> dev;
  score_matrix(std::mt19937_64& rng, index_t B_, index_t n_) : B(B_), n(n_), transposed(pick(rng, 0, 1) == 0) {
    host.assign(static_cast<std::size_t>(std::max<index_t>(B * n, 1)), to_storage<E>(0.0f));
    const int kind = static_cast<int>(pick(rng, 0, 3));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (auto& x : host) {
      const float v = kind == 0 ? normal(rng) : (kind == 1 ? static_cast<float>(pick(rng, -3, 3)) * 0.5f
                                                            : (kind == 2 ? std::exp(3.0f * normal(rng)) : 0.25f));
      x = to_storage<E>(v);
    }
    dev = to_device(host);
  }
  std::array<index_t, 2> strides() const { return transposed ? std::array<index_t, 2>{1, B} : std::array<index_t, 2>{n, 1}; }
  tensor_view<const E, 1> host_row(index_t b) const {
    return tensor_view<const E, 1>(host.data() + b * strides()[0], {n}, {strides()[1]});
  }
  template <class D>
  tensor_view<const D, 2> device_view() const {
    return tensor_view<const D, 2>(reinterpret_cast<const D*>(dev.data()), {B, n}, strides());
  }
};

template <class E>
void map_primitives_case(std::mt19937_64& rng, const std::string& label) {
  using D = cuda_detail::device_type_t<E>;
  const index_t q = pick(rng, 0, 70), k = pick(rng, 0, 70);
  const auto batch = one_map<E>(rng, q, k);
  const auto host = batch.host_view(0);
  const auto dev = batch.template device_samples<D>()[0];
  const auto op = static_cast<head_reduction>(pick(rng, 0, 2));
  // reduce_heads into a transposed output.
  {
    std::vector<float> want(static_cast<std::size_t>(std::max<index_t>(q * k, 1)));
    reduce_heads(seq, host, op, matrix_view<float>(want.data(), {q, k}, {1, std::max<index_t>(q, 1)}));
    device_buffer<float> out(want.size());
    workspace ws(reduce_heads_workspace_size());
    reduce_heads(ws.policy, dev, op, matrix_view<float>(out.data(), {q, k}, {1, std::max<index_t>(q, 1)}));
    cuda_ok(cudaDeviceSynchronize(), "sync");
    if (q * k > 0) ASSERT_EQ(bits(out.download()), bits(want)) << label << " reduce_heads";
  }
  // map_sums with a random subset of outputs.
  {
    const bool rs = pick(rng, 0, 3) != 0, cs = pick(rng, 0, 3) != 0, dg = pick(rng, 0, 3) != 0;
    const index_t m = std::min(q, k);
    std::vector<float> r(static_cast<std::size_t>(rs ? q : 0)), c(static_cast<std::size_t>(cs ? k : 0)), g(static_cast<std::size_t>(dg ? m : 0));
    map_sums(seq, host, op, {r, c, g});
    device_buffer<float> dr(r.size()), dc(c.size()), dd(g.size());
    const map_sums_out out{std::span<float>(dr.data(), r.size()), std::span<float>(dc.data(), c.size()), std::span<float>(dd.data(), g.size())};
    workspace ws(map_sums_workspace_size(dev, out));
    map_sums(ws.policy, dev, op, out);
    ASSERT_TRUE(status(ws.policy).ok);
    EXPECT_EQ(bits(dr.download()), bits(r)) << label << " row sums";
    EXPECT_EQ(bits(dc.download()), bits(c)) << label << " column sums";
    EXPECT_EQ(bits(dd.download()), bits(g)) << label << " diagonal";
  }
}

template <class E>
void square_primitives_case(std::mt19937_64& rng, const std::string& label) {
  using D = cuda_detail::device_type_t<E>;
  const index_t N = pick(rng, 1, 90);
  const auto batch = one_map<E>(rng, N, N);
  const auto host = batch.host_view(0);
  const auto dev = batch.template device_samples<D>()[0];
  const auto op = static_cast<head_reduction>(pick(rng, 0, 2));
  {  // contribution degree over a random range
    const index_t begin = pick(rng, 0, N), count = pick(rng, 0, N - begin);
    const token_range range{begin, count};
    std::vector<float> want(static_cast<std::size_t>(count));
    contribution_degree(seq, host, op, range, want);
    device_buffer<float> out(want.size());
    workspace ws(contribution_degree_workspace_size(dev, range));
    contribution_degree(ws.policy, dev, op, range, std::span<float>(out.data(), want.size()));
    ASSERT_TRUE(status(ws.policy).ok) << label;
    EXPECT_EQ(bits(out.download()), bits(want)) << label << " contribution_degree";
  }
  {  // variance-axis significance
    std::vector<float> want(static_cast<std::size_t>(N));
    const variance_axis_result wr = variance_axis_significance(seq, host, op, want);
    device_buffer<float> out(want.size());
    device_buffer<variance_axis_result> res(1);
    workspace ws(variance_axis_workspace_size(dev));
    variance_axis_significance(ws.policy, dev, op, std::span<float>(out.data(), want.size()), res.data());
    ASSERT_TRUE(status(ws.policy).ok) << label;
    EXPECT_EQ(bits(out.download()), bits(want)) << label << " significance";
    const auto gr = res.download()[0];
    EXPECT_EQ(gr.axis, wr.axis);
    EXPECT_EQ(gr.row_variance, wr.row_variance);
    EXPECT_EQ(gr.column_variance, wr.column_variance);
  }
  {  // region mass around a random span
    const index_t s0 = pick(rng, 0, N), n = pick(rng, 0, N - s0);
    const token_range visual{s0, n};
    std::vector<float> cross(static_cast<std::size_t>(n)), self(static_cast<std::size_t>(n));
    const region_mass_result wr = region_mass(seq, host, visual, op, {cross, self});
    device_buffer<float> dc(cross.size()), ds(self.size());
    device_buffer<region_mass_result> res(1);
    workspace ws(region_mass_workspace_size(dev, visual));
    region_mass(ws.policy, dev, visual, op, {std::span<float>(dc.data(), cross.size()), std::span<float>(ds.data(), self.size())},
                res.data());
    ASSERT_TRUE(status(ws.policy).ok) << label;
    EXPECT_EQ(bits(dc.download()), bits(cross)) << label << " cross";
    EXPECT_EQ(bits(ds.download()), bits(self)) << label << " self";
    const auto gr = res.download()[0];
    EXPECT_EQ(gr.cross_mass, wr.cross_mass) << label;
    EXPECT_EQ(gr.self_mass, wr.self_mass) << label;
    EXPECT_EQ(gr.text_rows, wr.text_rows) << label;
  }
}

template <class E>
void score_primitives_case(std::mt19937_64& rng, const std::string& label) {
  using D = cuda_detail::device_type_t<E>;
  const index_t B = pick(rng, 1, 4);
  // top_k / bottom_k
  {
    const index_t n = pick(rng, 0, 700);
    const score_matrix<E> s(rng, B, n);
    const index_t k = pick(rng, 0, n);
    const auto order = pick(rng, 0, 1) == 0 ? index_order::ascending : index_order::ranked;
    const bool high = pick(rng, 0, 1) == 0;
    device_selection out(B, k + 1);
    workspace ws(top_k_workspace_size(s.template device_view<D>()));
    if (high) {
      top_k(ws.policy, s.template device_view<D>(), k, out.view(), order);
    } else {
      bottom_k(ws.policy, s.template device_view<D>(), k, out.view(), order);
    }
    ASSERT_TRUE(status(ws.policy).ok) << label;
    const auto rows = out.rows();
    for (index_t b = 0; b < B; ++b) {
      std::vector<token_index> want(static_cast<std::size_t>(k));
      if (high) {
        top_k<E>(s.host_row(b), k, want, order);
      } else {
        bottom_k<E>(s.host_row(b), k, want, order);
      }
      ASSERT_EQ(rows[static_cast<std::size_t>(b)], want) << label << (high ? " top_k" : " bottom_k") << " row " << b;
    }
  }
  // select_rows
  {
    const token_grid grid{pick(rng, 0, 20), pick(rng, 1, 20)};
    const score_matrix<E> s(rng, B, grid.size());
    const index_t kept = pick(rng, 0, grid.rows);
    const auto op = pick(rng, 0, 1) == 0 ? row_reduction::sum : row_reduction::mean;
    device_selection out(B, kept * grid.cols + 1);
    workspace ws(select_rows_workspace_size(s.template device_view<D>()));
    select_rows(ws.policy, s.template device_view<D>(), grid, kept, op, out.view());
    ASSERT_TRUE(status(ws.policy).ok) << label;
    const auto rows = out.rows();
    for (index_t b = 0; b < B; ++b) {
      std::vector<token_index> want(static_cast<std::size_t>(kept * grid.cols));
      select_rows<E>(s.host_row(b), grid, kept, op, want);
      ASSERT_EQ(rows[static_cast<std::size_t>(b)], want) << label << " select_rows row " << b;
    }
  }
  // iqr_outliers
  {
    const index_t n = pick(rng, 0, 600);
    const score_matrix<E> s(rng, B, n);
    const iqr_config cfg{.multiplier = pick(rng, 0, 2) == 0 ? 1.5 : std::uniform_real_distribution<double>(0.0, 3.0)(rng),
                         .lower_fence = pick(rng, 0, 2) == 0};
    device_selection out(B, iqr_max_count(n, cfg));
    device_buffer<iqr_result> res(static_cast<std::size_t>(B));
    workspace ws(iqr_workspace_size(s.template device_view<D>()));
    iqr_outliers(ws.policy, s.template device_view<D>(), cfg, out.view(), std::span<iqr_result>(res.data(), static_cast<std::size_t>(B)));
    ASSERT_TRUE(status(ws.policy).ok) << label;
    const auto rows = out.rows();
    const auto got = res.download();
    for (index_t b = 0; b < B; ++b) {
      std::vector<token_index> want(static_cast<std::size_t>(n));
      const iqr_result wr = iqr_outliers<E>(s.host_row(b), cfg, want);
      want.resize(static_cast<std::size_t>(wr.count));
      ASSERT_EQ(rows[static_cast<std::size_t>(b)], want) << label << " iqr row " << b;
      const auto& gr = got[static_cast<std::size_t>(b)];
      EXPECT_EQ(gr.count, wr.count);
      EXPECT_EQ(gr.q1, wr.q1);
      EXPECT_EQ(gr.q3, wr.q3);
      EXPECT_EQ(gr.upper_fence, wr.upper_fence);
      EXPECT_EQ(gr.lower_fence, wr.lower_fence);
    }
  }
}

template <class S, class O>
void gather_case(std::mt19937_64& rng, const std::string& label) {
  using SD = cuda_detail::device_type_t<S>;
  using OD = cuda_detail::device_type_t<O>;
  const index_t B = pick(rng, 1, 3), n = pick(rng, 1, 80), d = pick(rng, 1, 70), cap = pick(rng, 0, n);
  std::vector<S> src(static_cast<std::size_t>(B * n * d));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (auto& x : src) x = to_storage<S>(normal(rng));
  auto dsrc = to_device(src);
  // Per sample: counts[b] <= cap distinct ascending indices.
  std::vector<token_index> idx(static_cast<std::size_t>(std::max<index_t>(B * cap, 1)), 0), cnt(static_cast<std::size_t>(B));
  for (index_t b = 0; b < B; ++b) {
    std::vector<token_index> all(static_cast<std::size_t>(n));
    for (index_t i = 0; i < n; ++i) all[static_cast<std::size_t>(i)] = static_cast<token_index>(i);
    std::shuffle(all.begin(), all.end(), rng);
    const index_t c = pick(rng, 0, cap);
    std::sort(all.begin(), all.begin() + c);
    std::copy(all.begin(), all.begin() + c, idx.begin() + b * cap);
    cnt[static_cast<std::size_t>(b)] = static_cast<token_index>(c);
  }
  auto didx = to_device(idx);
  auto dcnt = to_device(cnt);
  const selection_batch sel{tensor_view<token_index, 2>(didx.data(), {B, cap}), std::span<token_index>(dcnt.data(), static_cast<std::size_t>(B))};
  const tensor_view<const SD, 3> dsv(reinterpret_cast<const SD*>(dsrc.data()), {B, n, d});
  // gather into a transposed [B, cap, d] output ([B, d, cap] in memory)
  std::vector<O> init(static_cast<std::size_t>(std::max<index_t>(B * cap * d, 1)), to_storage<O>(-7.0f));
  auto dout = to_device(init);
  const tensor_view<OD, 3> dov(reinterpret_cast<OD*>(dout.data()), {B, cap, d}, {cap * d, 1, cap});
  workspace ws(gather_workspace_size());
  gather_rows(ws.policy, dsv, sel, dov);
  ASSERT_TRUE(status(ws.policy).ok) << label;
  const auto got = dout.download();
  for (index_t b = 0; b < B; ++b) {
    const index_t c = cnt[static_cast<std::size_t>(b)];
    std::vector<O> want(static_cast<std::size_t>(std::max<index_t>(c * d, 1)));
    gather_rows<S, O>(tensor_view<const S, 2>(src.data() + b * n * d, {n, d}),
                      std::span<const token_index>(idx.data() + b * cap, static_cast<std::size_t>(c)),
                      tensor_view<O, 2>(want.data(), {c, d}));
    for (index_t r = 0; r < c; ++r) {
      for (index_t j = 0; j < d; ++j) {
        const O g = got[static_cast<std::size_t>(b * cap * d + j * cap + r)];
        const O w = want[static_cast<std::size_t>(r * d + j)];
        ASSERT_EQ(std::memcmp(&g, &w, sizeof(O)), 0) << label << " gather b " << b << " r " << r << " c " << j;
      }
    }
  }
  // scatter back into zeros: rows named receive the gathered rows, others stay
  std::vector<S> zeros(src.size(), to_storage<S>(0.0f));
  auto dback = to_device(zeros);
  scatter_rows(ws.policy, tensor_view<const OD, 3>(dov), sel, tensor_view<SD, 3>(reinterpret_cast<SD*>(dback.data()), {B, n, d}));
  ASSERT_TRUE(status(ws.policy).ok) << label;
  const auto back = dback.download();
  for (index_t b = 0; b < B; ++b) {
    std::vector<S> want(static_cast<std::size_t>(n * d), to_storage<S>(0.0f));
    const index_t c = cnt[static_cast<std::size_t>(b)];
    std::vector<O> rows(static_cast<std::size_t>(std::max<index_t>(c * d, 1)));
    for (index_t r = 0; r < c; ++r) {
      for (index_t j = 0; j < d; ++j) rows[static_cast<std::size_t>(r * d + j)] = got[static_cast<std::size_t>(b * cap * d + j * cap + r)];
    }
    scatter_rows<O, S>(tensor_view<const O, 2>(rows.data(), {c, d}), std::span<const token_index>(idx.data() + b * cap, static_cast<std::size_t>(c)),
                       tensor_view<S, 2>(want.data(), {n, d}));
    ASSERT_EQ(std::memcmp(back.data() + b * n * d, want.data(), want.size() * sizeof(S)), 0) << label << " scatter b " << b;
  }
}

template <class E>
void run_all(int cases, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (int c = 0; c < parity_cases(cases); ++c) {
    parity_case(c);
    const std::string label = std::string(element_name<E>()) + " case " + std::to_string(c);
    map_primitives_case<E>(rng, label);
    if (::testing::Test::HasFatalFailure()) return;
    square_primitives_case<E>(rng, label);
    if (::testing::Test::HasFatalFailure()) return;
    score_primitives_case<E>(rng, label);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

}  // namespace

TEST(CudaPrimitives, ParityFloat) {
  TOKENSEL_REQUIRE_DEVICE();
  run_all<float>(300, 51);
}
TEST(CudaPrimitives, ParityHalf) {
  TOKENSEL_REQUIRE_DEVICE();
  run_all<Eigen::half>(300, 52);
}
TEST(CudaPrimitives, ParityBfloat16) {
  TOKENSEL_REQUIRE_DEVICE();
  run_all<Eigen::bfloat16>(300, 53);
}
TEST(CudaPrimitives, GatherScatterParity) {
  TOKENSEL_REQUIRE_DEVICE();
  std::mt19937_64 rng(54);
  for (int c = 0; c < parity_cases(100); ++c) {
    parity_case(c);
    gather_case<float, float>(rng, "f32->f32 " + std::to_string(c));
    gather_case<Eigen::half, float>(rng, "f16->f32 " + std::to_string(c));
    gather_case<float, Eigen::bfloat16>(rng, "f32->bf16 " + std::to_string(c));
    gather_case<Eigen::bfloat16, Eigen::bfloat16>(rng, "bf16->bf16 " + std::to_string(c));
    if (::testing::Test::HasFatalFailure()) return;
  }
}

TEST(CudaPrimitives, GatherReportsBadIndices) {
  TOKENSEL_REQUIRE_DEVICE();
  const std::vector<float> src(2 * 5 * 3, 1.0f);
  auto dsrc = to_device(src);
  auto didx = to_device(std::vector<token_index>{0, 4, 1, 5});  // sample 1, row 1: 5 is outside [0, 5)
  auto dcnt = to_device(std::vector<token_index>{2, 2});
  device_buffer<float> out(2 * 2 * 3);
  workspace ws(gather_workspace_size());
  gather_rows(ws.policy, tensor_view<const float, 3>(dsrc.data(), {2, 5, 3}),
              selection_batch{tensor_view<token_index, 2>(didx.data(), {2, 2}), std::span<token_index>(dcnt.data(), 2)},
              tensor_view<float, 3>(out.data(), {2, 2, 3}));
  const cuda_status st = status(ws.policy);
  ASSERT_FALSE(st.ok);
  EXPECT_EQ(st.code, errc::invalid_argument);
  EXPECT_EQ(st.sample, 1);
  EXPECT_EQ(st.index, 1);
}

TEST(CudaPrimitives, HostValidation) {
  const cuda_policy big{nullptr, fake_device_pointer<void>(), std::size_t{1} << 30};
  const head_attention_view<float> a(fake_device_pointer<const float>(), {2, 10, 12});
  const head_attention_view<float> sq(fake_device_pointer<const float>(), {2, 10, 10});
  float* f = fake_device_pointer<float>();
  expect_error([&] { reduce_heads(big, a, head_reduction::mean, matrix_view<float>(f, {10, 11})); }, errc::shape_mismatch, "reduce_heads.out");
  expect_error([&] { map_sums(big, a, head_reduction::mean, {std::span<float>(f, 12), {}, {}}); }, errc::shape_mismatch, "map_sums.row_sums.size()");
  expect_error([&] { contribution_degree(big, a, head_reduction::mean, std::span<float>(f, 9)); }, errc::shape_mismatch, "contribution_degree.attention");
  expect_error([&] { contribution_degree(big, sq, head_reduction::mean, std::span<float>(f, 10)); }, errc::shape_mismatch, "contribution_degree.out.extent(0)");
  expect_error([&] { variance_axis_significance(big, sq, head_reduction::mean, std::span<float>(f, 9)); }, errc::shape_mismatch, "variance_axis.significance.size()");
  expect_error([&] { region_mass(big, sq, token_range{5, 6}, head_reduction::max); }, errc::invalid_argument, "region_mass.visual");
  const tensor_view<const float, 2> scores(fake_device_pointer<const float>(), {3, 20});
  const selection_batch out{tensor_view<token_index, 2>(fake_device_pointer<token_index>(), {3, 5}),
                            std::span<token_index>(fake_device_pointer<token_index>(), 3)};
  expect_error([&] { top_k(big, scores, 21, out); }, errc::invalid_argument, "top_k.k");
  expect_error([&] { bottom_k(big, scores, 6, out); }, errc::shape_mismatch, "bottom_k.out.size()");
  expect_error([&] { select_rows(big, scores, token_grid{3, 7}, 1, row_reduction::sum, out); }, errc::shape_mismatch, "select_rows.grid");
  expect_error([&] { select_rows(big, scores, token_grid{4, 5}, 2, row_reduction::sum, out); }, errc::shape_mismatch, "select_rows.out.size()");
  expect_error([&] { iqr_outliers(big, scores, iqr_config{.multiplier = -1.0}, out); }, errc::invalid_argument, "iqr.multiplier");
  // 30 values may have up to 30 - 1 - floor(87 / 4) = 8 outliers: 5 slots are too few.
  expect_error([&] { iqr_outliers(big, tensor_view<const float, 2>(fake_device_pointer<const float>(), {3, 30}), iqr_config{}, out); },
         errc::shape_mismatch, "iqr.out.size()");
  expect_error([&] {
    gather_rows(big, tensor_view<const float, 3>(fake_device_pointer<const float>(), {3, 20, 4}), out,
                tensor_view<float, 3>(f, {3, 4, 4}));
  }, errc::shape_mismatch, "gather_rows.dst.extent(1)");
  expect_error([&] { top_k(cuda_policy{nullptr, fake_device_pointer<void>(), 1}, scores, 2, out); }, errc::invalid_argument, "top_k.policy.workspace_bytes");
}
