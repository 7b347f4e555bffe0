// CUDA backend: PruMerge / PruMerge+. Parity with the CPU backend (indices in both orders,
// merged rows bit for bit, statistics) on random batches with ties; host tests that run without a
// GPU (the CLS softmax decomposition and glibc's expf against the CPU backend, argument errors,
// workspace sizes); NaN reporting; CUDA-graph capture.
#include "cuda_test_util.cuh"

#include <cstring>
#include <span>
#include <vector>

#include "tokensel/cuda/detail/libm_expf.cuh"
#include "tokensel/cuda/methods/prumerge.cuh"
#include "tokensel/methods/prumerge.hpp"

using namespace tokensel;
using namespace tokensel_test;

namespace {

index_t pick(std::mt19937_64& rng, index_t lo, index_t hi) { return std::uniform_int_distribution<index_t>(lo, hi)(rng); }

prumerge::config random_config(std::mt19937_64& rng) {
  prumerge::config cfg;
  cfg.mode = pick(rng, 0, 1) == 0 ? prumerge::mode::fixed : prumerge::mode::parity;
  cfg.plus = pick(rng, 0, 1) == 1;
  const index_t nb[] = {0, 1, 5, 32, 32, 1000};
  cfg.neighbours = nb[pick(rng, 0, 5)];
  const double mult[] = {0.0, 0.5, 1.5, 1.5};
  cfg.iqr_multiplier = mult[pick(rng, 0, 3)];
  cfg.merge = pick(rng, 0, 3) != 0;
  cfg.extra_token = pick(rng, 0, 3) != 0;
  cfg.scale = pick(rng, 0, 3) == 0 ? 0.05 : 0.0;
  return cfg;
}

/// Random Q/K rows: normal keys, a few of them pulled towards the CLS query (outliers); coarse
/// (integer-valued) keys give exact ties of logits and cosines; constant keys make every
/// attention value equal.
template <class E>
void fill_qk(std::mt19937_64& rng, std::vector<E>& q, std::vector<E>& k, index_t B, index_t nq, index_t n1, index_t D) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const index_t kind = pick(rng, 0, 5);
  for (index_t b = 0; b < B; ++b) {
    std::vector<float> qf(static_cast<std::size_t>(D));
    for (auto& v : qf) v = kind == 1 ? std::round(normal(rng)) : normal(rng);
    for (index_t t = 0; t < nq; ++t) {
      for (index_t c = 0; c < D; ++c) {
        q[static_cast<std::size_t>((b * nq + t) * D + c)] = to_storage<E>(t == 0 ? qf[static_cast<std::size_t>(c)] : normal(rng));
      }
    }
    for (index_t t = 0; t < n1; ++t) {
      const bool pulled = pick(rng, 0, 15) == 0;
      for (index_t c = 0; c < D; ++c) {
        float v = 0.0f;
        if (kind == 0) v = 0.25f;
        else if (kind == 1) v = std::round(normal(rng));
        else v = normal(rng) + (pulled ? 3.0f * qf[static_cast<std::size_t>(c)] / std::sqrt(static_cast<float>(D)) * 4.0f : 0.0f);
        k[static_cast<std::size_t>((b * n1 + t) * D + c)] = to_storage<E>(v);
      }
    }
  }
}

template <class E, class F, class O>
void prumerge_case(std::mt19937_64& rng, const std::string& label, bool with_features, index_t forced_n = -1,
                   index_t forced_d = -1) {
  using D_ = cuda_detail::device_type_t<E>;
  using FD = cuda_detail::device_type_t<F>;
  using OD = cuda_detail::device_type_t<O>;
  const index_t B = pick(rng, 1, 3);
  const index_t n = forced_n >= 0 ? forced_n : (pick(rng, 0, 9) == 0 ? pick(rng, 0, 3) : pick(rng, 4, 160));
  const index_t n1 = n + 1;
  const index_t D = forced_d >= 0 ? forced_d : pick(rng, 1, 80);
  const index_t d = pick(rng, 1, 48);
  const index_t nq = pick(rng, 0, 1) == 0 ? 1 : n1;
  prumerge::config cfg = random_config(rng);
  if (forced_n == 576) cfg.neighbours = 32;
  std::vector<E> q(static_cast<std::size_t>(B * nq * D)), k(static_cast<std::size_t>(B * n1 * D));
  fill_qk(rng, q, k, B, nq, n1, D);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<F> x(static_cast<std::size_t>(std::max<index_t>(B * n * d, 1)));
  for (auto& v : x) v = to_storage<F>(normal(rng));
  const index_t cap = std::max<index_t>(prumerge::max_count(n, cfg), 1);
  const index_t rows = std::max<index_t>(prumerge::max_rows(n, cfg), 1);

  // CPU reference, sample by sample.
  std::vector<std::vector<token_index>> want(static_cast<std::size_t>(B));
  std::vector<std::vector<O>> want_y(static_cast<std::size_t>(B));
  std::vector<prumerge::result> want_r(static_cast<std::size_t>(B));
  for (index_t b = 0; b < B; ++b) {
    const auto i = static_cast<std::size_t>(b);
    std::vector<token_index> o(static_cast<std::size_t>(cap));
    const matrix_view<const E> qv(q.data() + b * nq * D, {nq, D}), kv(k.data() + b * n1 * D, {n1, D});
    if (with_features) {
      std::vector<O> y(static_cast<std::size_t>(rows * d));
      want_r[i] = prumerge::select(seq, qv, kv, matrix_view<const F>(x.data() + b * n * d, {n, d}), cfg,
                                   std::span<token_index>(o), matrix_view<O>(y.data(), {rows, d}));
      want_y[i] = y;
    } else {
      want_r[i] = prumerge::select(seq, qv, kv, cfg, std::span<token_index>(o));
    }
    o.resize(static_cast<std::size_t>(want_r[i].count));
    want[i] = o;
  }

  // Device: keys with padded rows, queries with padded rows, merged written transposed.
  const index_t kld = D + 3, qld = D + 1;
  std::vector<E> kp(static_cast<std::size_t>(B * n1 * kld)), qp(static_cast<std::size_t>(B * nq * qld));
  for (index_t b = 0; b < B; ++b) {
    for (index_t t = 0; t < n1; ++t) {
      for (index_t c = 0; c < D; ++c) kp[static_cast<std::size_t>((b * n1 + t) * kld + c)] = k[static_cast<std::size_t>((b * n1 + t) * D + c)];
    }
    for (index_t t = 0; t < nq; ++t) {
      for (index_t c = 0; c < D; ++c) qp[static_cast<std::size_t>((b * nq + t) * qld + c)] = q[static_cast<std::size_t>((b * nq + t) * D + c)];
    }
  }
  auto dq = to_device(qp);
  auto dk = to_device(kp);
  auto dx = to_device(x);
  const tensor_view<const D_, 3> qview(reinterpret_cast<const D_*>(dq.data()), {B, nq, D}, {nq * qld, qld, 1});
  const tensor_view<const D_, 3> kview(reinterpret_cast<const D_*>(dk.data()), {B, n1, D}, {n1 * kld, kld, 1});
  const tensor_view<const FD, 3> xview(reinterpret_cast<const FD*>(dx.data()), {B, n, d});
  device_selection out(B, cap);
  device_buffer<O> dy(static_cast<std::size_t>(B * rows * d));
  dy.fill_bytes(0);
  const tensor_view<OD, 3> yview(reinterpret_cast<OD*>(dy.data()), {B, rows, d}, {rows * d, 1, rows});
  device_buffer<prumerge::result> dres(static_cast<std::size_t>(B));
  const std::span<prumerge::result> rspan(dres.data(), static_cast<std::size_t>(B));
  if (with_features) {
    workspace ws(prumerge::workspace_size(qview, kview, xview, cfg));
    prumerge::select(ws.policy, qview, kview, xview, cfg, out.view(), yview, rspan);
    const cuda_status st = status(ws.policy);
    ASSERT_TRUE(st.ok) << label << ": " << st.message;
  } else {
    workspace ws(prumerge::workspace_size(qview, kview, cfg));
    prumerge::select(ws.policy, qview, kview, cfg, out.view(), rspan);
    const cuda_status st = status(ws.policy);
    ASSERT_TRUE(st.ok) << label << ": " << st.message;
  }
  const auto got = out.rows();
  const auto ys = dy.download();
  const auto res = dres.download();
  for (index_t b = 0; b < B; ++b) {
    const auto i = static_cast<std::size_t>(b);
    ASSERT_EQ(got[i], want[i]) << label << " sample " << b << " n " << n << " D " << D;
    const prumerge::result& g = res[i];
    const prumerge::result& w = want_r[i];
    EXPECT_EQ(g.count, w.count) << label;
    EXPECT_EQ(g.outliers, w.outliers) << label;
    EXPECT_EQ(g.grid, w.grid) << label;
    EXPECT_EQ(g.stride, w.stride) << label;
    EXPECT_EQ(g.neighbours, w.neighbours) << label;
    EXPECT_EQ(g.extra_token, w.extra_token) << label;
    EXPECT_EQ(g.iqr.count, w.iqr.count) << label;
    EXPECT_EQ(g.iqr.q1, w.iqr.q1) << label;
    EXPECT_EQ(g.iqr.q3, w.iqr.q3) << label;
    EXPECT_EQ(g.iqr.upper_fence, w.iqr.upper_fence) << label;
    EXPECT_EQ(g.iqr.lower_fence, w.iqr.lower_fence) << label;
    if (!with_features) continue;
    for (index_t r = 0; r < w.rows(); ++r) {
      for (index_t c = 0; c < d; ++c) {
        const O gy = ys[static_cast<std::size_t>(b * rows * d + c * rows + r)];
        const O wy = want_y[i][static_cast<std::size_t>(r * d + c)];
        ASSERT_EQ(std::memcmp(&gy, &wy, sizeof(O)), 0) << label << " sample " << b << " row " << r << " col " << c;
      }
    }
  }
}

/// Ragged batch: every sample its own n, D, d (and queries rows); CPU per sample vs one call.
template <class E, class F, class O>
void ragged_case(std::mt19937_64& rng, const std::string& label, bool with_features) {
  using FD = cuda_detail::device_type_t<F>;
  using OD = cuda_detail::device_type_t<O>;
  const index_t B = pick(rng, 1, 5);
  const prumerge::config cfg = random_config(rng);
  std::vector<index_t> ns, Ds, ds, nqs;
  index_t cap = 1;
  for (index_t b = 0; b < B; ++b) {
    ns.push_back(pick(rng, 0, 6) == 0 ? pick(rng, 0, 3) : pick(rng, 4, 120));
    Ds.push_back(pick(rng, 1, 70));
    ds.push_back(pick(rng, 1, 40));
    nqs.push_back(pick(rng, 0, 1) == 0 ? 1 : ns.back() + 1);
    cap = std::max(cap, prumerge::max_count(ns.back(), cfg));
  }
  std::vector<device_buffer<E>> dq, dk;
  std::vector<device_buffer<F>> dx;
  std::vector<device_buffer<O>> dy;
  std::vector<prumerge::qk_input<E>> inputs;  // qk_input takes the CPU element types (Eigen's)
  std::vector<matrix_view<const FD>> xs;
  std::vector<matrix_view<OD>> ys;
  std::vector<std::vector<token_index>> want(static_cast<std::size_t>(B));
  std::vector<std::vector<O>> want_y(static_cast<std::size_t>(B));
  std::vector<prumerge::result> want_r(static_cast<std::size_t>(B));
  std::vector<index_t> rows_of;
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (index_t b = 0; b < B; ++b) {
    const auto i = static_cast<std::size_t>(b);
    const index_t n = ns[i], D = Ds[i], d = ds[i], nq = nqs[i];
    std::vector<E> q(static_cast<std::size_t>(nq * D)), k(static_cast<std::size_t>((n + 1) * D));
    fill_qk(rng, q, k, 1, nq, n + 1, D);
    std::vector<F> x(static_cast<std::size_t>(std::max<index_t>(n * d, 1)));
    for (auto& v : x) v = to_storage<F>(normal(rng));
    const index_t rows = std::max<index_t>(prumerge::max_rows(n, cfg), 1);
    rows_of.push_back(rows);
    std::vector<token_index> o(static_cast<std::size_t>(cap));
    const matrix_view<const E> qv(q.data(), {nq, D}), kv(k.data(), {n + 1, D});
    if (with_features) {
      std::vector<O> y(static_cast<std::size_t>(rows * d));
      want_r[i] = prumerge::select(seq, qv, kv, matrix_view<const F>(x.data(), {n, d}), cfg, std::span<token_index>(o),
                                   matrix_view<O>(y.data(), {rows, d}));
      want_y[i] = y;
    } else {
      want_r[i] = prumerge::select(seq, qv, kv, cfg, std::span<token_index>(o));
    }
    o.resize(static_cast<std::size_t>(want_r[i].count));
    want[i] = o;
    dq.push_back(to_device(q));
    dk.push_back(to_device(k));
    dx.push_back(to_device(x));
    dy.emplace_back(static_cast<std::size_t>(rows * d));
    dy.back().fill_bytes(0);
    inputs.push_back({matrix_view<const E>(dq.back().data(), {nq, D}), matrix_view<const E>(dk.back().data(), {n + 1, D})});
    xs.emplace_back(reinterpret_cast<const FD*>(dx.back().data()), std::array<index_t, 2>{n, d});
    ys.emplace_back(reinterpret_cast<OD*>(dy.back().data()), std::array<index_t, 2>{rows, d});
  }
  device_selection out(B, cap);
  device_buffer<prumerge::result> dres(static_cast<std::size_t>(B));
  const std::span<prumerge::result> rspan(dres.data(), static_cast<std::size_t>(B));
  const std::span<const prumerge::qk_input<E>> in(inputs);
  if (with_features) {
    workspace ws(prumerge::workspace_size(in, std::span<const matrix_view<const FD>>(xs), cfg));
    prumerge::select(ws.policy, in, std::span<const matrix_view<const FD>>(xs), cfg, out.view(),
                     std::span<const matrix_view<OD>>(ys), rspan);
    const cuda_status st = prumerge::status(ws.policy);
    ASSERT_TRUE(st.ok) << label << ": " << st.message;
  } else {
    workspace ws(prumerge::workspace_size(in, cfg));
    prumerge::select(ws.policy, in, cfg, out.view(), rspan);
    const cuda_status st = prumerge::status(ws.policy);
    ASSERT_TRUE(st.ok) << label << ": " << st.message;
  }
  const auto got = out.rows();
  const auto res = dres.download();
  for (index_t b = 0; b < B; ++b) {
    const auto i = static_cast<std::size_t>(b);
    ASSERT_EQ(got[i], want[i]) << label << " sample " << b;
    EXPECT_EQ(res[i].count, want_r[i].count) << label;
    EXPECT_EQ(res[i].outliers, want_r[i].outliers) << label;
    EXPECT_EQ(res[i].stride, want_r[i].stride) << label;
    EXPECT_EQ(res[i].neighbours, want_r[i].neighbours) << label;
    EXPECT_EQ(res[i].extra_token, want_r[i].extra_token) << label;
    EXPECT_EQ(res[i].iqr.upper_fence, want_r[i].iqr.upper_fence) << label;
    if (!with_features) continue;
    const auto ysb = dy[i].download();
    const index_t rows = want_r[i].rows(), d = ds[i];
    for (index_t e = 0; e < rows * d; ++e) {
      ASSERT_EQ(std::memcmp(&ysb[static_cast<std::size_t>(e)], &want_y[i][static_cast<std::size_t>(e)], sizeof(O)), 0)
          << label << " sample " << b << " element " << e;
    }
  }
}

}  // namespace

TEST(CudaPruMerge, ParityRagged) {
  TOKENSEL_REQUIRE_DEVICE();
  std::mt19937_64 rng(86);
  for (int c = 0; c < parity_cases(60); ++c) {
    parity_case(c);
    ragged_case<float, float, float>(rng, "ragged f32 " + std::to_string(c), c % 3 != 0);
    ragged_case<Eigen::half, Eigen::half, Eigen::half>(rng, "ragged f16 " + std::to_string(c), c % 3 != 1);
    ragged_case<Eigen::bfloat16, float, Eigen::bfloat16>(rng, "ragged bf16 " + std::to_string(c), c % 3 != 2);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

TEST(CudaPruMerge, ParityFromAttention) {
  TOKENSEL_REQUIRE_DEVICE();
  std::mt19937_64 rng(88);
  auto one = [&](auto tag, int c) {
    using E = decltype(tag);
    using D_ = cuda_detail::device_type_t<E>;
    const index_t B = pick(rng, 1, 4);
    const index_t n = pick(rng, 0, 9) == 0 ? pick(rng, 0, 3) : (pick(rng, 0, 20) == 0 ? 576 : pick(rng, 4, 300));
    const prumerge::config cfg = random_config(rng);
    // Positive softmax-like rows: exponentials of normals, a few boosted; quantised for ties.
    std::normal_distribution<float> normal(0.0f, 1.0f);
    const bool coarse = pick(rng, 0, 2) == 0;
    std::vector<E> a(static_cast<std::size_t>(std::max<index_t>(B * n, 1)));
    for (auto& v : a) {
      float x = std::exp(normal(rng) + (pick(rng, 0, 20) == 0 ? 4.0f : 0.0f)) / static_cast<float>(n + 1);
      if (coarse) x = std::round(x * 64.0f) / 64.0f;
      v = to_storage<E>(x);
    }
    const index_t cap = std::max<index_t>(prumerge::max_count(n, cfg), 1);
    std::vector<token_index> want(static_cast<std::size_t>(B * cap), -1), cnt(static_cast<std::size_t>(B));
    std::vector<prumerge::result> want_r(static_cast<std::size_t>(B));
    prumerge::select_from_attention(seq, score_view<E>(a.data(), {B, n}), cfg,
                                    selection_batch{tensor_view<token_index, 2>(want.data(), {B, cap}), std::span<token_index>(cnt)},
                                    std::span<prumerge::result>(want_r));
    // Device copy stored transposed ([n, B] in memory) to exercise strides.
    std::vector<E> t(a.size());
    for (index_t b = 0; b < B; ++b) {
      for (index_t j = 0; j < n; ++j) t[static_cast<std::size_t>(j * B + b)] = a[static_cast<std::size_t>(b * n + j)];
    }
    auto dt = to_device(t);
    const score_view<D_> view(reinterpret_cast<const D_*>(dt.data()), {B, n}, {1, B});
    device_selection out(B, cap);
    device_buffer<prumerge::result> dres(static_cast<std::size_t>(B));
    workspace ws(prumerge::workspace_size(view, cfg));
    prumerge::select_from_attention(ws.policy, view, cfg, out.view(), std::span<prumerge::result>(dres.data(), static_cast<std::size_t>(B)));
    const cuda_status st = prumerge::status(ws.policy);
    ASSERT_TRUE(st.ok) << st.message;
    const auto got = out.rows();
    const auto res = dres.download();
    for (index_t b = 0; b < B; ++b) {
      const auto i = static_cast<std::size_t>(b);
      const std::vector<token_index> w(want.begin() + b * cap, want.begin() + b * cap + cnt[i]);
      ASSERT_EQ(got[i], w) << "case " << c << " sample " << b << " n " << n;
      EXPECT_EQ(res[i].outliers, want_r[i].outliers);
      EXPECT_EQ(res[i].grid, want_r[i].grid);
      EXPECT_EQ(res[i].stride, want_r[i].stride);
      EXPECT_EQ(res[i].iqr.q1, want_r[i].iqr.q1);
      EXPECT_EQ(res[i].iqr.q3, want_r[i].iqr.q3);
      EXPECT_EQ(res[i].iqr.upper_fence, want_r[i].iqr.upper_fence);
    }
  };
  for (int c = 0; c < parity_cases(120); ++c) {
    parity_case(c);
    one(float{}, c);
    one(Eigen::half{}, c);
    one(Eigen::bfloat16{}, c);
    if (::testing::Test::HasFatalFailure()) return;
  }
  // NaN in a row: prumerge.attention[j] of that sample.
  std::vector<float> a(2 * 30, 0.01f);
  a[30 + 11] = NAN;
  auto da = to_device(a);
  const score_view<float> view(da.data(), {2, 30});
  device_selection out(2, prumerge::max_count(30, prumerge::config{}));
  workspace ws(prumerge::workspace_size(view, prumerge::config{}));
  prumerge::select_from_attention(ws.policy, view, prumerge::config{}, out.view());
  const cuda_status st = prumerge::status(ws.policy);
  ASSERT_FALSE(st.ok);
  EXPECT_EQ(st.sample, 1);
  EXPECT_EQ(st.parameter, "prumerge.attention[11]");
}

TEST(CudaPruMerge, ParityMerge) {
  TOKENSEL_REQUIRE_DEVICE();
  std::mt19937_64 rng(81);
  for (int c = 0; c < parity_cases(250); ++c) {
    parity_case(c);
    prumerge_case<float, float, float>(rng, "f32 merge case " + std::to_string(c), true);
    prumerge_case<Eigen::half, Eigen::half, Eigen::half>(rng, "f16 merge case " + std::to_string(c), true);
    prumerge_case<Eigen::bfloat16, Eigen::bfloat16, float>(rng, "bf16 merge case " + std::to_string(c), true);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

TEST(CudaPruMerge, ParitySelectionOnly) {
  TOKENSEL_REQUIRE_DEVICE();
  std::mt19937_64 rng(82);
  for (int c = 0; c < parity_cases(150); ++c) {
    parity_case(c);
    prumerge_case<float, float, float>(rng, "f32 select case " + std::to_string(c), false);
    prumerge_case<Eigen::half, float, float>(rng, "f16 select case " + std::to_string(c), false);
    prumerge_case<Eigen::bfloat16, float, float>(rng, "bf16 select case " + std::to_string(c), false);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

TEST(CudaPruMerge, ParityLlavaShapes) {
  TOKENSEL_REQUIRE_DEVICE();
  std::mt19937_64 rng(83);
  for (int c = 0; c < parity_cases(4); ++c) {
    parity_case(c);
    prumerge_case<Eigen::half, Eigen::half, Eigen::half>(rng, "llava f16 " + std::to_string(c), true, 576, 1024);
    prumerge_case<float, float, float>(rng, "llava f32 " + std::to_string(c), true, 576, 1024);
    prumerge_case<Eigen::bfloat16, Eigen::bfloat16, Eigen::bfloat16>(rng, "llava bf16 " + std::to_string(c), true, 576, 1024);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

TEST(CudaPruMerge, NonFiniteIsReported) {
  TOKENSEL_REQUIRE_DEVICE();
  const index_t B = 2, n = 20, D = 8, d = 4;
  std::vector<float> q(static_cast<std::size_t>(B * D), 0.5f), k(static_cast<std::size_t>(B * (n + 1) * D), 0.25f),
      x(static_cast<std::size_t>(B * n * d), 1.0f);
  k[static_cast<std::size_t>(1 * (n + 1) * D + 7 * D + 3)] = NAN;  // sample 1, key row 7, column 3
  x[static_cast<std::size_t>(1 * n * d + 9 * d + 2)] = INFINITY;   // sample 1, feature row 9: found first (CPU order)
  auto dq = to_device(q);
  auto dk = to_device(k);
  auto dx = to_device(x);
  const prumerge::config cfg{};
  const tensor_view<const float, 3> qv(dq.data(), {B, 1, D}), kv(dk.data(), {B, n + 1, D}), xv(dx.data(), {B, n, d});
  const index_t rows = prumerge::max_rows(n, cfg);
  device_selection out(B, prumerge::max_count(n, cfg));
  device_buffer<float> y(static_cast<std::size_t>(B * rows * d));
  workspace ws(prumerge::workspace_size(qv, kv, xv, cfg));
  prumerge::select(ws.policy, qv, kv, xv, cfg, out.view(), tensor_view<float, 3>(y.data(), {B, rows, d}));
  const cuda_status st = prumerge::status(ws.policy);
  ASSERT_FALSE(st.ok);
  EXPECT_EQ(st.code, errc::non_finite);
  EXPECT_EQ(st.sample, 1);
  EXPECT_EQ(st.row, 9);
  EXPECT_EQ(st.index, 2);
  EXPECT_EQ(st.parameter, "prumerge.features[9, 2]");
  EXPECT_EQ(out.cnt.download()[1], 0);
  EXPECT_GE(out.cnt.download()[0], 0);
  // Without merging the features are not read: the key is the problem (CPU: prumerge.keys[7, 3]).
  const prumerge::config plain{.merge = false};
  prumerge::select(ws.policy, qv, kv, xv, plain, out.view(), tensor_view<float, 3>(y.data(), {B, rows, d}));
  const cuda_status st2 = prumerge::status(ws.policy);
  ASSERT_FALSE(st2.ok);
  EXPECT_EQ(st2.parameter, "prumerge.keys[7, 3]");
  // Q K^T overflowing fp32 (finite inputs): prumerge.logits[j].
  std::vector<float> big(static_cast<std::size_t>(B * (n + 1) * D), 0.25f);
  for (index_t c = 0; c < D; ++c) big[static_cast<std::size_t>(0 * (n + 1) * D + 4 * D + c)] = 3e38f;
  auto dbig = to_device(big);
  prumerge::select(ws.policy, qv, tensor_view<const float, 3>(dbig.data(), {B, n + 1, D}), cfg, out.view());
  const cuda_status st3 = prumerge::status(ws.policy);
  ASSERT_FALSE(st3.ok);
  EXPECT_EQ(st3.sample, 0);
  EXPECT_EQ(st3.parameter, "prumerge.logits[4]");
  try {
    prumerge::throw_on_error(ws.policy);
    ADD_FAILURE() << "no throw";
  } catch (const error& e) {
    EXPECT_EQ(e.code(), errc::non_finite);
    EXPECT_EQ(e.parameter(), "prumerge.logits[4]");
  }
}

TEST(CudaPruMerge, GraphCaptureAllocatesNothingAndReplays) {
  TOKENSEL_REQUIRE_DEVICE();
  std::mt19937_64 rng(84);
  const index_t B = 4, n = 576, D = 1024, d = 64;
  std::vector<Eigen::half> q(static_cast<std::size_t>(B * D)), k(static_cast<std::size_t>(B * (n + 1) * D)),
      x(static_cast<std::size_t>(B * n * d));
  fill_qk(rng, q, k, B, 1, n + 1, D);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (auto& v : x) v = Eigen::half(normal(rng));
  auto dq = to_device(q);
  auto dk = to_device(k);
  auto dx = to_device(x);
  const tensor_view<const __half, 3> qv(reinterpret_cast<const __half*>(dq.data()), {B, 1, D});
  const tensor_view<const __half, 3> kv(reinterpret_cast<const __half*>(dk.data()), {B, n + 1, D});
  const tensor_view<const __half, 3> xv(reinterpret_cast<const __half*>(dx.data()), {B, n, d});
  for (const bool plus : {false, true}) {
    const prumerge::config cfg{.plus = plus};
    const index_t cap = prumerge::max_count(n, cfg), rows = prumerge::max_rows(n, cfg);
    device_selection o1(B, cap), o2(B, cap);
    device_buffer<float> y1(static_cast<std::size_t>(B * rows * d)), y2(static_cast<std::size_t>(B * rows * d));
    y1.fill_bytes(0);
    y2.fill_bytes(0);
    cudaStream_t stream;
    cuda_ok(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
    workspace ws(prumerge::workspace_size(qv, kv, xv, cfg), stream);
    prumerge::select(ws.policy, qv, kv, xv, cfg, o1.view(), tensor_view<float, 3>(y1.data(), {B, rows, d}));
    cuda_ok(cudaStreamSynchronize(stream), "sync");
    cudaGraph_t graph;
    cuda_ok(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), "begin capture");
    prumerge::select(ws.policy, qv, kv, xv, cfg, o2.view(), tensor_view<float, 3>(y2.data(), {B, rows, d}));
    cuda_ok(cudaStreamEndCapture(stream, &graph), "end capture");
    cudaGraphExec_t exec;
    cuda_ok(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
    cuda_ok(cudaGraphLaunch(exec, stream), "graph launch");
    cuda_ok(cudaStreamSynchronize(stream), "sync");
    std::size_t free_before = 0, free_after = 0, total = 0;
    cuda_ok(cudaMemGetInfo(&free_before, &total), "meminfo");
    for (int rep = 0; rep < 3; ++rep) cuda_ok(cudaGraphLaunch(exec, stream), "graph launch");
    cuda_ok(cudaStreamSynchronize(stream), "sync");
    cuda_ok(cudaMemGetInfo(&free_after, &total), "meminfo");
    EXPECT_EQ(free_before, free_after);
    EXPECT_EQ(o1.idx.download(), o2.idx.download());
    EXPECT_EQ(o1.cnt.download(), o2.cnt.download());
    EXPECT_EQ(y1.download(), y2.download());
    EXPECT_TRUE(status(ws.policy).ok);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaStreamDestroy(stream);
  }
}

// ---- host only (no GPU needed) ---------------------------------------------------------------

// The device's expf is glibc's: checked on every 97th float in [-104, 0] and on the edges (the
// full range, 1.1e9 values, was checked once: 0 differences against glibc 2.36 with FMA).
TEST(CudaPruMergeHost, ExpfMatchesTheHostLibrary) {
  long long checked = 0, differ = 0;
  auto one = [&](float x) {
    const float a = cuda_detail::libm_expf_nonpositive(x), b = std::exp(x);
    ++checked;
    if (std::memcmp(&a, &b, sizeof a) != 0) {
      if (++differ <= 5) ADD_FAILURE() << "expf(" << x << "): emulated " << a << ", libm " << b;
    }
  };
  for (std::uint32_t u = 0x80000000u; u <= 0xC2D00000u; u += 97u) {
    float x;
    std::memcpy(&x, &u, sizeof x);
    one(x);
  }
  for (const float x : {0.0f, -0.0f, -1e-30f, -1e-45f, -87.0f, -103.0f, -103.9f, -0x1.9fe368p6f, -0x1.9fe36ap6f, -104.0f,
                        -1e30f, -INFINITY, -0x1.f8cbb2p+5f}) {
    one(x);
  }
  EXPECT_EQ(differ, 0) << "of " << checked;
  EXPECT_GT(checked, 10000000);
}

// The select kernel's CLS softmax, run with the same helpers on the host (canonical dots as the
// warp computes them, glibc's expf, canonical_sum_serial, fp32 division), equals
// prumerge::cls_attention of the CPU backend bit for bit.
TEST(CudaPruMergeHost, ClsSoftmaxDecompositionMatchesCpu) {
  std::mt19937_64 rng(85);
  int cases = 0;
  for (int c = 0; c < 600; ++c) {
    const index_t n = pick(rng, 0, 300), D = pick(rng, 1, 100);
    std::vector<float> q(static_cast<std::size_t>(D)), k(static_cast<std::size_t>((n + 1) * D));
    fill_qk(rng, q, k, 1, 1, n + 1, D);
    if (c % 7 == 0) {
      for (auto& v : k) v *= 40.0f;  // very peaked: exponentials underflow to 0 and subnormals
    }
    const double scale = c % 3 == 0 ? 0.07 : 0.0;
    std::vector<float> want(static_cast<std::size_t>(n));
    prumerge::cls_attention(seq, matrix_view<const float>(q.data(), {1, D}), matrix_view<const float>(k.data(), {n + 1, D}),
                            scale, vector_view<float>(want.data(), {n}));
    const float s = static_cast<float>(scale > 0.0 ? scale : 1.0 / std::sqrt(static_cast<double>(D)));
    std::vector<float> e(static_cast<std::size_t>(n + 1));
    for (index_t j = 0; j <= n; ++j) {
      float lane[32] = {};
      for (index_t col = 0; col < D; ++col) {
        lane[col % 32] = cuda_detail::fadd(lane[col % 32], cuda_detail::fmul(q[static_cast<std::size_t>(col)], k[static_cast<std::size_t>(j * D + col)]));
      }
      for (int w = 16; w >= 1; w /= 2) {
        for (int l = 0; l < w; ++l) lane[l] = cuda_detail::fadd(lane[l], lane[l + w]);
      }
      e[static_cast<std::size_t>(j)] = cuda_detail::fmul(lane[0], s);
    }
    float m = -INFINITY;
    for (const float v : e) m = cuda_detail::std_max(m, v);
    for (auto& v : e) v = cuda_detail::libm_expf_nonpositive(cuda_detail::fsub(v, m));
    const float z = cuda_detail::canonical_sum_serial(e.data(), static_cast<int>(n + 1));
    for (index_t j = 0; j < n; ++j) {
      const float got = cuda_detail::fdiv(e[static_cast<std::size_t>(j + 1)], z);
      ASSERT_EQ(std::memcmp(&got, &want[static_cast<std::size_t>(j)], sizeof got), 0) << "case " << c << " j " << j;
    }
    ++cases;
  }
  EXPECT_EQ(cases, 600);
}

namespace {

/// The canonical dot as one warp computes it (lane l: columns l, l + 32, ...; then the tree).
float warp_dot(const float* a, const float* b, index_t n) {
  float lane[32] = {};
  for (index_t c = 0; c < n; ++c) lane[c % 32] = cuda_detail::fadd(lane[c % 32], cuda_detail::fmul(a[c], b[c]));
  for (int w = 16; w >= 1; w /= 2) {
    for (int l = 0; l < w; ++l) lane[l] = cuda_detail::fadd(lane[l], lane[l + w]);
  }
  return lane[0];
}

struct emulated {
  std::vector<token_index> indices;
  prumerge::result res;
  std::vector<float> rows;  // [rows(), d]
};

/// The kernels' decomposition, step by step on the host (same helpers, sequential loops where
/// the device scans or counts): logits, expf, canonical sum, counted quartiles, outliers ranked
/// by counting, grid, order, unit keys, cosines, neighbours by rank counting, merged rows.
emulated emulate(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& x, index_t n,
                 index_t D, index_t d, const prumerge::config& cfg, bool with_features) {
  using namespace cuda_detail;
  emulated em;
  if (n == 0) return em;
  const float scale = static_cast<float>(cfg.scale > 0.0 ? cfg.scale : 1.0 / std::sqrt(static_cast<double>(D)));
  std::vector<float> e(static_cast<std::size_t>(n + 1)), attn(static_cast<std::size_t>(n));
  for (index_t j = 0; j <= n; ++j) e[static_cast<std::size_t>(j)] = fmul(warp_dot(q.data(), k.data() + j * D, D), scale);
  float m = -INFINITY;
  for (const float v : e) m = std_max(m, v);
  for (auto& v : e) v = libm_expf_nonpositive(fsub(v, m));
  const float z = canonical_sum_serial(e.data(), static_cast<int>(n + 1));
  for (index_t j = 0; j < n; ++j) attn[static_cast<std::size_t>(j)] = fdiv(e[static_cast<std::size_t>(j + 1)], z);
  // block_quartiles: the value at sorted position p is x_i with less_i <= p < leq_i (lowest i).
  const auto at_sorted = [&](int p) {
    for (index_t i = 0; i < n; ++i) {
      int less = 0, leq = 0;
      for (const float v : attn) {
        less += v < attn[static_cast<std::size_t>(i)] ? 1 : 0;
        leq += v <= attn[static_cast<std::size_t>(i)] ? 1 : 0;
      }
      if (less <= p && p < leq) return static_cast<double>(attn[static_cast<std::size_t>(i)]);
    }
    return 0.0;
  };
  const quantile_position p1 = quantile_at(static_cast<int>(n), 0.25), p3 = quantile_at(static_cast<int>(n), 0.75);
  const double q1 = quantile_value(p1, at_sorted(p1.lo), at_sorted(p1.lerp ? p1.lo + 1 : p1.lo));
  const double q3 = quantile_value(p3, at_sorted(p3.lo), at_sorted(p3.lerp ? p3.lo + 1 : p3.lo));
  const double upper = upper_fence(q1, q3, cfg.iqr_multiplier);
  std::vector<int> kept(static_cast<std::size_t>(n), 0), order(static_cast<std::size_t>(n), -1);
  int kc = 0;
  for (index_t j = 0; j < n; ++j) {
    kept[static_cast<std::size_t>(j)] = static_cast<double>(attn[static_cast<std::size_t>(j)]) > upper ? 1 : 0;
    kc += kept[static_cast<std::size_t>(j)];
  }
  for (index_t j = 0; j < n; ++j) {
    if (kept[static_cast<std::size_t>(j)] == 0) continue;
    int rank = 0;
    for (index_t i = 0; i < n; ++i) {
      rank += beats_high(attn[static_cast<std::size_t>(i)], static_cast<int>(i), attn[static_cast<std::size_t>(j)], static_cast<int>(j)) ? 1 : 0;
    }
    EXPECT_LT(rank, kc);
    order[static_cast<std::size_t>(rank)] = static_cast<int>(j);
  }
  int count = kc, stride = 0;
  if (cfg.plus && kc > 0) {
    stride = std::max(1, static_cast<int>(n / kc) / 3);
    const int cells = n < 2 ? 0 : static_cast<int>(n - 2) / stride + 1;
    for (int g = 0; g < cells; ++g) {
      if (kept[static_cast<std::size_t>(g * stride)] == 0) {
        order[static_cast<std::size_t>(count++)] = g * stride;
        kept[static_cast<std::size_t>(g * stride)] = 2;
      }
    }
  }
  if (cfg.mode == prumerge::mode::fixed) {
    int r = 0;
    for (index_t j = 0; j < n; ++j) {
      if (kept[static_cast<std::size_t>(j)] != 0) order[static_cast<std::size_t>(r++)] = static_cast<int>(j);
    }
  }
  em.indices.assign(order.begin(), order.begin() + count);
  em.res.count = count;
  em.res.outliers = kc;
  em.res.grid = count - kc;
  em.res.stride = stride;
  em.res.iqr = iqr_result{kc, q1, q3, upper, lower_fence(q1, q3, cfg.iqr_multiplier)};
  if (!with_features) return em;
  const bool merge = cfg.merge;
  const index_t nb = merge ? std::min(cfg.neighbours, n - 1) : 0;
  em.res.neighbours = nb;
  em.res.extra_token = merge && cfg.extra_token;
  std::vector<float> unit(static_cast<std::size_t>(n * D));
  for (index_t j = 0; j < n; ++j) {
    const float* kj = k.data() + (j + 1) * D;
    const float denom = std_max(std::sqrt(warp_dot(kj, kj, D)), 1e-12f);
    for (index_t c = 0; c < D; ++c) unit[static_cast<std::size_t>(j * D + c)] = fdiv(kj[c], denom);
  }
  const index_t rows = count + (em.res.extra_token ? 1 : 0);
  em.rows.assign(static_cast<std::size_t>(rows * d), 0.0f);
  std::vector<float> cs(static_cast<std::size_t>(n));
  for (int r = 0; r < count; ++r) {
    const int i = order[static_cast<std::size_t>(r)];
    std::vector<unsigned char> near(static_cast<std::size_t>(n), 0);
    if (merge && nb > 0) {
      for (index_t j = 0; j < n; ++j) cs[static_cast<std::size_t>(j)] = warp_dot(unit.data() + i * D, unit.data() + j * D, D);
      for (index_t j = 0; j < n; ++j) {
        int rank = 0;
        for (index_t p = 0; p < n; ++p) {
          rank += (p != i && beats_high(cs[static_cast<std::size_t>(p)], static_cast<int>(p), cs[static_cast<std::size_t>(j)], static_cast<int>(j))) ? 1 : 0;
        }
        near[static_cast<std::size_t>(j)] = (j != i && rank < nb) ? 1 : 0;
      }
    }
    for (index_t c = 0; c < d; ++c) {
      const float xi = x[static_cast<std::size_t>(i * d + c)];
      if (!merge) {
        em.rows[static_cast<std::size_t>(r * d + c)] = xi;
        continue;
      }
      float acc = 0.0f;
      for (index_t j = 0; j < n; ++j) {
        if (near[static_cast<std::size_t>(j)] != 0) acc = fadd(acc, fmul(attn[static_cast<std::size_t>(j)], x[static_cast<std::size_t>(j * d + c)]));
      }
      em.rows[static_cast<std::size_t>(r * d + c)] = fadd(xi, acc);
    }
  }
  if (em.res.extra_token) {
    for (index_t c = 0; c < d; ++c) {
      float acc = 0.0f;
      for (index_t j = 0; j < n; ++j) {
        if (kept[static_cast<std::size_t>(j)] == 0) acc = fadd(acc, fmul(attn[static_cast<std::size_t>(j)], x[static_cast<std::size_t>(j * d + c)]));
      }
      em.rows[static_cast<std::size_t>(count * d + c)] = acc;
    }
  }
  return em;
}

}  // namespace

// The whole pipeline as the kernels decompose it (emulate above) gives the CPU backend's
// indices, statistics and merged rows bit for bit: fixed/parity, PruMerge/PruMerge+, merge on
// and off, ties (integer-valued keys), constant keys, tiny n.
TEST(CudaPruMergeHost, KernelDecompositionMatchesCpu) {
  std::mt19937_64 rng(87);
  int merged_rows = 0, plus_cases = 0;
  for (int c = 0; c < 400; ++c) {
    const index_t n = pick(rng, 0, 9) == 0 ? pick(rng, 0, 3) : pick(rng, 4, 90);
    const index_t D = pick(rng, 1, 70), d = pick(rng, 1, 12);
    const bool with_features = c % 4 != 3;
    const prumerge::config cfg = random_config(rng);
    std::vector<float> q(static_cast<std::size_t>(D)), k(static_cast<std::size_t>((n + 1) * D)),
        x(static_cast<std::size_t>(std::max<index_t>(n * d, 1)));
    fill_qk(rng, q, k, 1, 1, n + 1, D);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (auto& v : x) v = normal(rng);
    const index_t rows = std::max<index_t>(prumerge::max_rows(n, cfg), 1);
    std::vector<token_index> o(static_cast<std::size_t>(std::max<index_t>(prumerge::max_count(n, cfg), 1)));
    std::vector<float> y(static_cast<std::size_t>(rows * d), 0.0f);
    const matrix_view<const float> qv(q.data(), {1, D}), kv(k.data(), {n + 1, D});
    const prumerge::result want =
        with_features ? prumerge::select(seq, qv, kv, matrix_view<const float>(x.data(), {n, d}), cfg, std::span<token_index>(o),
                                         matrix_view<float>(y.data(), {rows, d}))
                      : prumerge::select(seq, qv, kv, cfg, std::span<token_index>(o));
    const emulated got = emulate(q, k, x, n, D, d, cfg, with_features);
    const std::string label = "case " + std::to_string(c) + " n " + std::to_string(n);
    ASSERT_EQ(got.indices, std::vector<token_index>(o.begin(), o.begin() + want.count)) << label;
    EXPECT_EQ(got.res.outliers, want.outliers) << label;
    EXPECT_EQ(got.res.grid, want.grid) << label;
    EXPECT_EQ(got.res.stride, want.stride) << label;
    EXPECT_EQ(got.res.neighbours, want.neighbours) << label;
    EXPECT_EQ(got.res.extra_token, want.extra_token) << label;
    EXPECT_EQ(got.res.iqr.q1, want.iqr.q1) << label;
    EXPECT_EQ(got.res.iqr.q3, want.iqr.q3) << label;
    EXPECT_EQ(got.res.iqr.upper_fence, want.iqr.upper_fence) << label;
    EXPECT_EQ(got.res.iqr.lower_fence, want.iqr.lower_fence) << label;
    plus_cases += want.grid > 0 ? 1 : 0;
    if (!with_features) continue;
    ASSERT_EQ(static_cast<index_t>(got.rows.size()), want.rows() * d) << label;
    for (std::size_t e = 0; e < got.rows.size(); ++e) {
      ASSERT_EQ(std::memcmp(&got.rows[e], &y[e], sizeof(float)), 0) << label << " element " << e;
    }
    merged_rows += static_cast<int>(want.rows());
  }
  EXPECT_GT(merged_rows, 1000);
  EXPECT_GT(plus_cases, 20);
}

TEST(CudaPruMergeHost, ArgumentErrorsAreTheCpus) {
  const cuda_policy big{nullptr, fake_device_pointer<void>(), std::size_t{1} << 30};
  const index_t B = 2, n = 20, D = 8, d = 6;
  const prumerge::config cfg{};
  const index_t cap = prumerge::max_count(n, cfg), rows = prumerge::max_rows(n, cfg);
  const tensor_view<const __half, 3> q(fake_device_pointer<const __half>(), {B, 1, D});
  const tensor_view<const __half, 3> k(fake_device_pointer<const __half>(), {B, n + 1, D});
  const tensor_view<const float, 3> x(fake_device_pointer<const float>(), {B, n, d});
  const tensor_view<float, 3> y(fake_device_pointer<float>(), {B, rows, d});
  auto out_of = [](index_t b, index_t c) {
    return selection_batch{tensor_view<token_index, 2>(fake_device_pointer<token_index>(), {b, c}),
                           std::span<token_index>(fake_device_pointer<token_index>(), static_cast<std::size_t>(b))};
  };
  const selection_batch out = out_of(B, cap);
  // Config errors: the CPU's validate (same text).
  for (const auto& [bad, name] : std::vector<std::pair<prumerge::config, std::string>>{
           {prumerge::config{.neighbours = -1}, "prumerge.neighbours"},
           {prumerge::config{.iqr_multiplier = NAN}, "prumerge.iqr_multiplier"},
           {prumerge::config{.iqr_multiplier = -1.0}, "prumerge.iqr_multiplier"},
           {prumerge::config{.scale = -0.5}, "prumerge.scale"},
           {prumerge::config{.mode = static_cast<prumerge::mode>(7)}, "prumerge.mode"}}) {
    expect_error([&] { prumerge::select(big, q, k, x, bad, out, y); }, errc::invalid_argument, name);
    expect_error([&] { prumerge::select(big, q, k, bad, out); }, errc::invalid_argument, name);
    expect_error([&] { (void)prumerge::workspace_size(q, k, x, bad); }, errc::invalid_argument, name);
    std::string cpu_what, cuda_what;
    try { prumerge::validate(bad); } catch (const error& e) { cpu_what = e.what(); }
    try { prumerge::select(big, q, k, bad, out); } catch (const error& e) { cuda_what = e.what(); }
    EXPECT_EQ(cuda_what, cpu_what);
    EXPECT_FALSE(cpu_what.empty());
  }
  // Shapes (the CPU's check_qk / check_features / dense-batch checks).
  expect_error([&] { prumerge::select(big, tensor_view<const __half, 3>(fake_device_pointer<const __half>(), {B, 3, D}), k, x, cfg, out, y); },
         errc::shape_mismatch, "prumerge.queries.extent(0)");
  expect_error([&] { prumerge::select(big, tensor_view<const __half, 3>(fake_device_pointer<const __half>(), {B + 1, 1, D}), k, x, cfg, out, y); },
         errc::shape_mismatch, "prumerge.queries.extent(0)");
  expect_error([&] { prumerge::select(big, tensor_view<const __half, 3>(fake_device_pointer<const __half>(), {B, 1, D + 1}), k, x, cfg, out, y); },
         errc::shape_mismatch, "prumerge.queries.extent(1)");
  expect_error([&] { prumerge::select(big, q, tensor_view<const __half, 3>(fake_device_pointer<const __half>(), {B, 0, D}), cfg, out); },
         errc::shape_mismatch, "prumerge.keys.extent(0)");
  expect_error([&] { prumerge::select(big, tensor_view<const __half, 3>(fake_device_pointer<const __half>(), {B, 1, 0}), tensor_view<const __half, 3>(fake_device_pointer<const __half>(), {B, n + 1, 0}), cfg, out); },
         errc::shape_mismatch, "prumerge.keys.extent(1)");
  expect_error([&] { prumerge::select(big, q, k, tensor_view<const float, 3>(fake_device_pointer<const float>(), {B, n - 1, d}), cfg, out, y); },
         errc::shape_mismatch, "prumerge.features.extent(0)");
  expect_error([&] { prumerge::select(big, q, k, tensor_view<const float, 3>(fake_device_pointer<const float>(), {B + 1, n, d}), cfg, out, y); },
         errc::shape_mismatch, "prumerge.features.extent(0)");
  expect_error([&] { prumerge::select(big, q, k, x, cfg, out, tensor_view<float, 3>(fake_device_pointer<float>(), {B, rows, d + 1})); },
         errc::shape_mismatch, "prumerge.merged.extent(1)");
  expect_error([&] { prumerge::select(big, q, k, x, cfg, out, tensor_view<float, 3>(fake_device_pointer<float>(), {B - 1, rows, d})); },
         errc::shape_mismatch, "prumerge.merged.extent(0)");
  // Outputs: batch shape (run_batch's checks) and the up-front capacities.
  expect_error([&] { prumerge::select(big, q, k, x, cfg, out_of(B + 1, cap), y); }, errc::shape_mismatch, "prumerge.out.indices.extent(0)");
  expect_error([&] { prumerge::select(big, q, k, x, cfg, out, y, std::span<prumerge::result>(fake_device_pointer<prumerge::result>(), 3)); },
         errc::shape_mismatch, "prumerge.results.size()");
  expect_error([&] { prumerge::select(big, q, k, x, cfg, out_of(B, cap - 1), y); }, errc::shape_mismatch, "prumerge.out.size()");
  expect_error([&] { prumerge::select(big, q, k, cfg, out_of(B, cap - 1)); }, errc::shape_mismatch, "prumerge.out.size()");
  expect_error([&] { prumerge::select(big, q, k, x, cfg, out, tensor_view<float, 3>(fake_device_pointer<float>(), {B, rows - 1, d})); },
         errc::shape_mismatch, "prumerge.merged.extent(0)");
  // Ragged: the span sizes, then every sample's shapes and capacity before anything runs.
  using EH = Eigen::half;
  const prumerge::qk_input<EH> s0{matrix_view<const EH>(fake_device_pointer<const EH>(), {1, D}),
                                  matrix_view<const EH>(fake_device_pointer<const EH>(), {n + 1, D})};
  const prumerge::qk_input<EH> s1{matrix_view<const EH>(fake_device_pointer<const EH>(), {1, D}),
                                  matrix_view<const EH>(fake_device_pointer<const EH>(), {2 * n + 1, D})};
  const std::vector<prumerge::qk_input<EH>> rag{s0, s1};
  const std::vector<matrix_view<const float>> rx{matrix_view<const float>(fake_device_pointer<const float>(), {n, d}),
                                                 matrix_view<const float>(fake_device_pointer<const float>(), {2 * n, d})};
  const std::vector<matrix_view<float>> ry{matrix_view<float>(fake_device_pointer<float>(), {rows, d}),
                                           matrix_view<float>(fake_device_pointer<float>(), {prumerge::max_rows(2 * n, cfg), d})};
  using rin = std::span<const prumerge::qk_input<EH>>;
  using rxs = std::span<const matrix_view<const float>>;
  using rys = std::span<const matrix_view<float>>;
  expect_error([&] { prumerge::select(big, rin(rag), rxs(rx).first(1), cfg, out, rys(ry)); }, errc::shape_mismatch, "prumerge.features.size()");
  expect_error([&] { prumerge::select(big, rin(rag), rxs(rx), cfg, out, rys(ry).first(1)); }, errc::shape_mismatch, "prumerge.merged.size()");
  expect_error([&] { prumerge::select(big, rin(rag), rxs(rx), cfg, out_of(B, prumerge::max_count(2 * n, cfg) - 1), rys(ry)); },
         errc::shape_mismatch, "prumerge.out.size()");  // sample 1 needs more than sample 0
  expect_error([&] { prumerge::select(big, rin(rag), cfg, out_of(B, prumerge::max_count(2 * n, cfg) - 1)); }, errc::shape_mismatch, "prumerge.out.size()");
  const std::vector<matrix_view<const float>> rx_short{rx[0], rx[0]};
  const std::vector<matrix_view<float>> ry_short{ry[0], ry[0]};
  const selection_batch out2 = out_of(B, prumerge::max_count(2 * n, cfg));
  expect_error([&] { prumerge::select(big, rin(rag), rxs(rx_short), cfg, out2, rys(ry)); }, errc::shape_mismatch,
         "prumerge.features.extent(0)");  // check_features: sample 1's features vs its n
  expect_error([&] { prumerge::select(big, rin(rag), rxs(rx), cfg, out2, rys(ry_short)); }, errc::shape_mismatch,
         "prumerge.merged.extent(0)");  // sample 1 needs max_rows(2n) rows
  EXPECT_GE(prumerge::workspace_size(rin(rag), rxs(rx), cfg), prumerge::workspace_size(rin(rag).first(1), rxs(rx).first(1), cfg));
  // From attention rows.
  const score_view<__half> att(fake_device_pointer<const __half>(), {B, n});
  expect_error([&] { prumerge::select_from_attention(big, att, prumerge::config{.neighbours = -2}, out); }, errc::invalid_argument, "prumerge.neighbours");
  expect_error([&] { prumerge::select_from_attention(big, att, cfg, out_of(B, cap - 1)); }, errc::shape_mismatch, "prumerge.out.size()");
  expect_error([&] { prumerge::select_from_attention(big, att, cfg, out_of(B + 1, cap)); }, errc::shape_mismatch, "prumerge.out.indices.extent(0)");
  expect_error([&] { prumerge::select_from_attention(cuda_policy{nullptr, fake_device_pointer<void>(), prumerge::workspace_size(att, cfg) - 1}, att, cfg, out); },
         errc::invalid_argument, "prumerge.policy.workspace_bytes");
  EXPECT_EQ(prumerge::workspace_size(att, cfg), prumerge::workspace_size(q, k, cfg));  // the Q/K selection's layout
  // Workspace.
  expect_error([&] { prumerge::select(cuda_policy{nullptr, nullptr, 0}, q, k, x, cfg, out, y); }, errc::invalid_argument, "prumerge.policy.workspace");
  expect_error([&] { prumerge::select(cuda_policy{nullptr, fake_device_pointer<void>(), 64}, q, k, x, cfg, out, y); },
         errc::invalid_argument, "prumerge.policy.workspace_bytes");
}

// Device problem keys decode to the CPU's parameter names; the smallest key is the CPU's first
// exception (features before queries before keys before logits; row-major within each).
TEST(CudaPruMergeHost, StatusKeysDecodeToCpuNames) {
  using cuda_detail::status_key;
  using cuda_detail::status_site;
  namespace pc = prumerge::cuda_detail;
  const auto key = [](unsigned what, unsigned sample, unsigned index) {
    return status_key(status_site::keys_value, what, sample, index);
  };
  EXPECT_EQ(pc::decode(key(pc::features_value, 3, (9u << 16) | 2u)).parameter, "prumerge.features[9, 2]");
  EXPECT_EQ(pc::decode(key(pc::features_value, 3, (9u << 16) | 2u)).sample, 3);
  EXPECT_EQ(pc::decode(key(pc::queries_value, 0, 17u)).parameter, "prumerge.queries[0, 17]");
  EXPECT_EQ(pc::decode(key(pc::keys_value_, 0, (576u << 16) | 1023u)).parameter, "prumerge.keys[576, 1023]");
  EXPECT_EQ(pc::decode(key(pc::attention_value, 2, 5u)).parameter, "prumerge.attention[5]");
  const cuda_status lg = pc::decode(key(pc::logits_value, 1, 44u));
  EXPECT_EQ(lg.parameter, "prumerge.logits[44]");
  EXPECT_EQ(lg.code, errc::non_finite);
  EXPECT_EQ(lg.message, "tokensel: prumerge.logits[44] (sample 1): Q K^T overflows fp32");
  EXPECT_TRUE(pc::decode(cuda_detail::no_problem).ok);
  EXPECT_LT(key(pc::features_value, 0, 0xFFFFFFFFu), key(pc::queries_value, 0, 0));
  EXPECT_LT(key(pc::queries_value, 0, 0xFFFFu), key(pc::keys_value_, 0, 0));
  EXPECT_LT(key(pc::keys_value_, 0, 0xFFFFFFFFu), key(pc::logits_value, 0, 0));
  EXPECT_LT(key(pc::logits_value, 0, 0xFFFFFFFFu), key(pc::features_value, 1, 0));
  EXPECT_LT(key(pc::keys_value_, 0, (3u << 16) | 900u), key(pc::keys_value_, 0, (4u << 16) | 0u));
}

TEST(CudaPruMergeHost, WorkspaceSizeIsPureAndConsistent) {
  const index_t D = 1024, d = 1024;
  auto views = [&](index_t B, index_t n) {
    return std::make_tuple(tensor_view<const __half, 3>(fake_device_pointer<const __half>(), {B, 1, D}),
                           tensor_view<const __half, 3>(fake_device_pointer<const __half>(), {B, n + 1, D}),
                           tensor_view<const __half, 3>(fake_device_pointer<const __half>(), {B, n, d}));
  };
  for (const bool plus : {false, true}) {
    for (const bool merge : {false, true}) {
      const prumerge::config cfg{.plus = plus, .merge = merge};
      const auto [q1, k1, x1] = views(1, 576);
      const auto [q8, k8, x8] = views(8, 576);
      const std::size_t a = prumerge::workspace_size(q1, k1, x1, cfg), b = prumerge::workspace_size(q1, k1, x1, cfg);
      EXPECT_EQ(a, b);  // pure: the same answer, no device touched (none here)
      EXPECT_GT(prumerge::workspace_size(q8, k8, x8, cfg), a);
      EXPECT_LE(prumerge::workspace_size(q1, k1, cfg), a);
      if (!merge) EXPECT_EQ(prumerge::workspace_size(q1, k1, cfg), a);  // no keys or pairs kept without a merge
      // The call checks exactly this size: one byte less is refused before anything is enqueued;
      // the exact size passes the check (here the first CUDA call then fails: no device).
      const index_t rows = prumerge::max_rows(576, cfg), cap = prumerge::max_count(576, cfg);
      const selection_batch out{tensor_view<token_index, 2>(fake_device_pointer<token_index>(), {8, cap}),
                                std::span<token_index>(fake_device_pointer<token_index>(), 8)};
      const tensor_view<float, 3> y(fake_device_pointer<float>(), {8, rows, d});
      const std::size_t need = prumerge::workspace_size(q8, k8, x8, cfg);
      try {
        prumerge::select(cuda_policy{nullptr, fake_device_pointer<void>(), need - 1}, q8, k8, x8, cfg, out, y);
        ADD_FAILURE() << "no throw";
      } catch (const error& e) {
        EXPECT_EQ(e.parameter(), "prumerge.policy.workspace_bytes");
      }
      if (device_skip_reason().empty()) continue;  // with a device the call would really run
      try {
        prumerge::select(cuda_policy{nullptr, fake_device_pointer<void>(), need}, q8, k8, x8, cfg, out, y);
        ADD_FAILURE() << "no throw without a device";
      } catch (const error& e) {
        EXPECT_EQ(e.code(), errc::cuda_runtime) << e.what();
        EXPECT_EQ(e.parameter().rfind("cuda.", 0), 0u) << e.what();
      }
    }
  }
  // Empty inputs: n = 0 and batch 0 need only the status word and are valid.
  const auto [q0, k0, x0] = views(0, 576);
  EXPECT_GT(prumerge::workspace_size(q0, k0, x0, prumerge::config{}), 0u);
}
