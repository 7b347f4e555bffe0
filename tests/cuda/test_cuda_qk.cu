// CUDA statistics from Q and K (tokensel/cuda/stats/qk_statistics.cuh).
//
// Host tests (run everywhere): argument validation (before any launch), workspace sizing, and a
// host emulation of the kernels' order (32 x 32 tiles, online softmax over ascending key tiles,
// heads reduced per element, column partials per row group g (one chain over the rows of the
// query tiles g, g + G, ...), row partials per column group (32-lane tree per key tile added over
// the key tiles c, c + G, ...), then the G partials in ascending order) compared with the CPU qk
// path within 1e-5.
// Device tests (skip without a GPU): the kernels against the CPU qk path (fp32 / fp16 / bf16,
// lse given or not, CLIP 16 x 577 x 64, LLM-like 32 heads d 128 n 600 causal GQA) and the
// methods fed from Q/K against the CPU methods on the same sources, on seeds whose decisions
// have a margin (top-k cut) above 1e-4 relative.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "cuda_test_util.cuh"
#include "tokensel/cuda/methods/fastv.cuh"
#include "tokensel/cuda/methods/fopru.cuh"
#include "tokensel/cuda/methods/visionzip.cuh"
#include "tokensel/cuda/stats/qk_statistics.cuh"
#include "tokensel/methods/fastv.hpp"
#include "tokensel/methods/fopru.hpp"
#include "tokensel/stats/qk_statistics.hpp"
#include "tokensel/stats/region_mass.hpp"
#include "tokensel/methods/visionzip.hpp"

using namespace tokensel;
using namespace tokensel_test;

namespace {

template <class E>
struct qk_host {
  index_t heads = 0, kv = 0, nq = 0, nk = 0, d = 0;
  std::vector<E> q, k;
  std::vector<float> lse;  // [heads, nq], filled by fill_lse
  bool causal = false;

  qk_source<E> source(const E* qd, const E* kd, const float* l = nullptr) const {
    qk_source<E> s{.queries = tensor_view<const E, 3>(qd, {heads, nq, d}), .keys = tensor_view<const E, 3>(kd, {kv, nk, d}), .causal = causal};
    if (l != nullptr) s.lse = tensor_view<const float, 2>(l, {heads, nq});
    return s;
  }
  qk_source<E> cpu() const { return source(q.data(), k.data(), lse.empty() ? nullptr : lse.data()); }
};

// Gaussian Q/K with a few "sink" keys every query likes (separated attention, like CLIP).
template <class E>
qk_host<E> make_qk(index_t heads, index_t kv, index_t nq, index_t nk, index_t d, unsigned seed, bool causal = false) {
  qk_host<E> h;
  h.heads = heads, h.kv = kv, h.nq = nq, h.nk = nk, h.d = d, h.causal = causal;
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  h.q.resize(static_cast<std::size_t>(heads * nq * d));
  h.k.resize(static_cast<std::size_t>(kv * nk * d));
  for (auto& x : h.q) x = static_cast<E>(g(rng));
  for (index_t a = 0; a < kv; ++a)
    for (index_t j = 0; j < nk; ++j)
      for (index_t c = 0; c < d; ++c) {
        const float sink = (j % 37 == 5 && c < 4) ? 3.0f : 0.0f;
        h.k[static_cast<std::size_t>((a * nk + j) * d + c)] = static_cast<E>(g(rng) + sink);
      }
  return h;
}

// lse from a double softmax of the stored Q/K (what FlashAttention would return, to fp32).
template <class E>
void fill_lse(qk_host<E>& h) {
  const auto src = h.cpu();
  const double scale = src.effective_scale();
  const index_t group = h.heads / h.kv, off = src.effective_causal_offset();
  h.lse.assign(static_cast<std::size_t>(h.heads * h.nq), 0.0f);
  for (index_t a = 0; a < h.heads; ++a)
    for (index_t i = 0; i < h.nq; ++i) {
      const index_t vis = h.causal ? std::clamp<index_t>(i + off + 1, 0, h.nk) : h.nk;
      std::vector<double> s(static_cast<std::size_t>(vis));
      double m = -INFINITY;
      for (index_t j = 0; j < vis; ++j) {
        double acc = 0.0;
        for (index_t c = 0; c < h.d; ++c)
          acc += double(to_float(h.q[static_cast<std::size_t>((a * h.nq + i) * h.d + c)])) *
                 double(to_float(h.k[static_cast<std::size_t>(((a / group) * h.nk + j) * h.d + c)]));
        s[static_cast<std::size_t>(j)] = acc * double(static_cast<float>(scale));
        m = std::max(m, s[static_cast<std::size_t>(j)]);
      }
      double t = 0.0;
      for (double v : s) t += std::exp(v - m);
      h.lse[static_cast<std::size_t>(a * h.nq + i)] = static_cast<float>(m + std::log(t));
    }
}

// Host emulation of the kernels for map_sums (window = everything): the same tiles and orders.
struct emulated {
  std::vector<float> rows, cols, diag;
};

template <class E>
emulated emulate_map_sums(const qk_source<E>& src, head_reduction op) {
  using namespace tokensel::cuda_detail;
  const index_t H = src.heads(), nq = src.query_count(), nk = src.key_count(), d = src.head_dim();
  const index_t group = H / src.kv_heads(), off = src.effective_causal_offset();
  const float scale = src.effective_scale();
  auto logit = [&](index_t h, index_t i, index_t j) {
    float acc = 0.0f;  // the kernel's FMA chain over ascending dimensions
    for (index_t c = 0; c < d; ++c) acc = std::fma(to_float(src.queries(h, i, c)), to_float(src.keys(h / group, j, c)), acc);
    return acc * scale;
  };
  auto visible = [&](index_t i, index_t j) { return !src.causal || j <= i + off; };
  // Pass 1: online max / sum over key tiles of 32 (lane tree sum within a tile).
  std::vector<float> m(static_cast<std::size_t>(H * nq)), l(m.size());
  for (index_t h = 0; h < H; ++h)
    for (index_t i = 0; i < nq; ++i) {
      float mm = -INFINITY, ll = 0.0f;
      for (index_t c0 = 0; c0 < nk; c0 += 32) {
        float v[32], e[32];
        float tmax = -INFINITY;
        for (int lane = 0; lane < 32; ++lane) {
          const index_t j = c0 + lane;
          v[lane] = (j < nk && visible(i, j)) ? logit(h, i, j) : -INFINITY;
          tmax = max_nan(tmax, v[lane]);
        }
        const float mn = max_nan(mm, tmax);
        if (mn == -INFINITY) continue;
        for (int lane = 0; lane < 32; ++lane) e[lane] = v[lane] == -INFINITY ? 0.0f : std::exp(v[lane] - mn);
        ll = ll * std::exp(mm - mn) + canonical_sum_serial(e, 32);
        mm = mn;
      }
      m[static_cast<std::size_t>(h * nq + i)] = mm;
      l[static_cast<std::size_t>(h * nq + i)] = ll;
    }
  // Pass 2 + 3.
  emulated out;
  out.rows.assign(static_cast<std::size_t>(nq), 0.0f);
  out.cols.assign(static_cast<std::size_t>(nk), 0.0f);
  out.diag.assign(static_cast<std::size_t>(std::min(nq, nk)), 0.0f);
  const index_t qt = (nq + 31) / 32, kt = (nk + 31) / 32, G = tokensel::cuda_detail::qk_groups;
  const index_t rg = std::min(G, qt), cg = std::min(G, kt);
  std::vector<float> colpart(static_cast<std::size_t>(rg * nk)), rowpart(static_cast<std::size_t>(cg * nq));
  // Block (g, c): query tiles g, g + G, ... ascending, within each the key tiles c, c + G, ...
  for (index_t g = 0; g < rg; ++g)
    for (index_t gc = 0; gc < cg; ++gc)
      for (index_t a = g; a < qt; a += G)
        for (index_t b = gc; b < kt; b += G) {
          float red[32][32] = {};
          for (index_t r = 0; r < 32; ++r)
            for (index_t c = 0; c < 32; ++c) {
              const index_t i = a * 32 + r, j = b * 32 + c;
              if (i >= nq || j >= nk) continue;
              float acc = 0.0f;
              for (index_t h = 0; h < H; ++h) {
                const std::size_t x = static_cast<std::size_t>(h * nq + i);
                const float p = visible(i, j) ? std::exp(logit(h, i, j) - m[x]) / l[x] : 0.0f;
                acc = h == 0 ? p : (op == head_reduction::max ? max_nan(acc, p) : acc + p);
              }
              if (op == head_reduction::mean) acc = acc / static_cast<float>(H);
              red[r][c] = acc;
              if (i == j) out.diag[static_cast<std::size_t>(i)] = acc;
            }
          for (index_t r = 0; r < 32 && a * 32 + r < nq; ++r) {
            float& rp = rowpart[static_cast<std::size_t>(gc * nq + a * 32 + r)];
            rp = (b == gc ? 0.0f : rp) + canonical_sum_serial(red[r], 32);
          }
          for (index_t c = 0; c < 32 && b * 32 + c < nk; ++c) {
            float& cp = colpart[static_cast<std::size_t>(g * nk + b * 32 + c)];
            float s = a == g ? 0.0f : cp;
            for (index_t r = 0; r < 32 && a * 32 + r < nq; ++r) s += red[r][c];
            cp = s;
          }
        }
  for (index_t j = 0; j < nk; ++j)
    for (index_t g = 0; g < rg; ++g) out.cols[static_cast<std::size_t>(j)] += colpart[static_cast<std::size_t>(g * nk + j)];
  for (index_t i = 0; i < nq; ++i)
    for (index_t g = 0; g < cg; ++g) out.rows[static_cast<std::size_t>(i)] += rowpart[static_cast<std::size_t>(g * nq + i)];
  return out;
}

void expect_close(const std::vector<float>& got, const std::vector<float>& want, double rel, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double scale = 0.0;
  for (float w : want) scale = std::max(scale, std::abs(double(w)));
  for (std::size_t i = 0; i < got.size(); ++i) {
    ASSERT_TRUE(std::isfinite(got[i])) << what << "[" << i << "]";
    EXPECT_LE(std::abs(double(got[i]) - double(want[i])), rel * std::max(std::abs(double(want[i])), 1e-3 * scale))
        << what << "[" << i << "] got " << got[i] << " want " << want[i];
  }
}

template <class E>
emulated cpu_map_sums(const qk_source<E>& src, head_reduction op) {
  emulated c;
  c.rows.resize(static_cast<std::size_t>(src.rows().count));
  c.cols.resize(static_cast<std::size_t>(src.cols().count));
  c.diag.resize(static_cast<std::size_t>(std::min(src.rows().count, src.cols().count)));
  map_sums(seq, src, op, map_sums_out{c.rows, c.cols, c.diag});
  return c;
}

// ---- host tests ---------------------------------------------------------------------------

TEST(CudaQkHost, EmulationMatchesCpuQkPath) {
  struct shape_case {
    index_t heads, kv, nq, nk, d;
    bool causal;
    head_reduction op;
  };
  for (const auto& c : {shape_case{4, 4, 70, 70, 16, false, head_reduction::mean}, shape_case{4, 2, 65, 65, 24, true, head_reduction::max},
                        shape_case{3, 1, 1, 40, 8, true, head_reduction::sum}, shape_case{2, 2, 33, 97, 40, false, head_reduction::max},
                        // More tiles than groups: 19 x 18 tiles (causal), 35 x 19 tiles (3 query tiles per group).
                        shape_case{2, 1, 577, 545, 16, true, head_reduction::mean}, shape_case{2, 2, 1100, 600, 8, false, head_reduction::sum}}) {
    const auto h = make_qk<float>(c.heads, c.kv, c.nq, c.nk, c.d, 11u + static_cast<unsigned>(c.nq), c.causal);
    const auto src = h.cpu();
    const emulated got = emulate_map_sums(src, c.op), want = cpu_map_sums(src, c.op);
    expect_close(got.rows, want.rows, 1e-5, "row_sums");
    expect_close(got.cols, want.cols, 1e-5, "column_sums");
    expect_close(got.diag, want.diag, 1e-5, "diagonal");
  }
}

TEST(CudaQkHost, EmulationFp16InputsMatchCpuQkPath) {
  // fp16 / bf16 values are widened exactly on both paths: the same fp32 bound applies.
  const auto h = make_qk<Eigen::half>(4, 4, 50, 50, 32, 5u);
  const emulated got = emulate_map_sums(h.cpu(), head_reduction::mean), want = cpu_map_sums(h.cpu(), head_reduction::mean);
  expect_close(got.cols, want.cols, 1e-5, "column_sums");
  const auto hb = make_qk<Eigen::bfloat16>(4, 2, 50, 50, 32, 6u, true);
  const emulated gb = emulate_map_sums(hb.cpu(), head_reduction::max), wb = cpu_map_sums(hb.cpu(), head_reduction::max);
  expect_close(gb.rows, wb.rows, 1e-5, "row_sums");
}

TEST(CudaQkHost, ValidationBeforeLaunch) {
  const float* fq = fake_device_pointer<float>();
  cuda_policy none{};
  qk_source<float> src{.queries = tensor_view<const float, 3>(fq, {4, 10, 8}), .keys = tensor_view<const float, 3>(fq, {3, 10, 8})};
  std::vector<float> host(10);
  auto code_of = [](auto&& f) {
    try {
      f();
    } catch (const error& e) {
      return std::pair<errc, std::string>(e.code(), e.what());
    }
    return std::pair<errc, std::string>(errc::invalid_argument, "no throw");
  };
  // GQA: kv heads must divide heads.
  auto r = code_of([&] { map_sums(none, src, head_reduction::mean, map_sums_out{{}, std::span<float>(host), {}}); });
  EXPECT_EQ(r.first, errc::shape_mismatch);
  EXPECT_NE(r.second.find("map_sums.qk.keys.extent(0)"), std::string::npos) << r.second;
  src.keys = tensor_view<const float, 3>(fq, {2, 10, 7});
  r = code_of([&] { map_sums(none, src, head_reduction::mean, map_sums_out{{}, std::span<float>(host), {}}); });
  EXPECT_NE(r.second.find("keys.extent(2)"), std::string::npos) << r.second;
  src.keys = tensor_view<const float, 3>(fq, {2, 10, 8});
  // Output sizes.
  r = code_of([&] { map_sums(none, src, head_reduction::mean, map_sums_out{{}, std::span<float>(host).first(9), {}}); });
  EXPECT_NE(r.second.find("map_sums.column_sums.size()"), std::string::npos) << r.second;
  // Null workspace is reported after the shapes pass.
  r = code_of([&] { map_sums(none, src, head_reduction::mean, map_sums_out{{}, std::span<float>(host), {}}); });
  EXPECT_EQ(r.first, errc::invalid_argument);
  EXPECT_NE(r.second.find("map_sums.policy.workspace"), std::string::npos) << r.second;
  // Non-finite scale, bad windows, bad rows.
  src.scale = std::numeric_limits<float>::infinity();
  r = code_of([&] { (void)map_sums_workspace_size(src, map_sums_out{}); });
  EXPECT_NE(r.second.find("scale"), std::string::npos) << r.second;
  src.scale = 0.0f;
  src.row_window = {5, 6};
  r = code_of([&] { (void)map_sums_workspace_size(src, map_sums_out{}); });
  EXPECT_NE(r.second.find("row_window"), std::string::npos) << r.second;
  src.row_window = {0, -1};
  r = code_of([&] { (void)reduced_rows_workspace_size(src, token_range{10, 1}); });
  EXPECT_NE(r.second.find("reduced_rows.rows"), std::string::npos) << r.second;
  // Methods: FastV visual outside the keys, FoPru non-square.
  r = code_of([&] { (void)fastv::workspace_size(std::span<const qk_source<float>>(&src, 1), std::span<const token_range>(), fastv::config{}); });
  EXPECT_NE(r.second.find("fastv.visual.size()"), std::string::npos) << r.second;
  const token_range bad{4, 10};
  r = code_of([&] { (void)fastv::workspace_size(std::span<const qk_source<float>>(&src, 1), std::span<const token_range>(&bad, 1), fastv::config{}); });
  EXPECT_NE(r.second.find("fastv.visual"), std::string::npos) << r.second;
  qk_source<float> rect = src;
  rect.col_window = {0, 9};
  r = code_of([&] { (void)fopru::workspace_size(std::span<const qk_source<float>>(&rect, 1), fopru::config{}); });
  EXPECT_EQ(r.first, errc::shape_mismatch);
  EXPECT_NE(r.second.find("fopru.attention"), std::string::npos) << r.second;
}

TEST(CudaQkHost, WorkspaceIsLinearNotQuadratic) {
  const float* fq = fake_device_pointer<float>();
  auto bytes = [&](index_t heads, index_t n) {
    qk_source<float> s{.queries = tensor_view<const float, 3>(fq, {heads, n, 64}), .keys = tensor_view<const float, 3>(fq, {heads, n, 64})};
    std::vector<float> host(static_cast<std::size_t>(n));
    return map_sums_workspace_size(s, map_sums_out{host, host, {}});
  };
  const auto G = static_cast<std::size_t>(tokensel::cuda_detail::qk_groups);
  const std::size_t slack = 4096;  // status word and alignment padding
  for (index_t heads : {16, 32}) {
    for (index_t n : {1, 31, 100, 577, 600, 1154, 2900, 5800, 20000}) {
      // Exactly: 2 x heads x n (row max / sum) + min(G, tiles) x n per axis, in floats.
      const auto un = static_cast<std::size_t>(n), tiles = (un + 31) / 32;
      const std::size_t bound = 4 * (2 * static_cast<std::size_t>(heads) * un + 2 * std::min(G, tiles) * un);
      const std::size_t b = bytes(heads, n);
      EXPECT_GE(b, bound) << heads << " x " << n;
      EXPECT_LE(b, bound + slack) << heads << " x " << n;
      // O(n): once the groups are full, doubling n at most doubles the workspace (plus padding).
      if (n >= 577) EXPECT_LE(bytes(heads, 2 * n), 2 * b + slack) << heads << " x " << n;
    }
  }
  // Far below one head's n x n fp32 map: CLIP-L/336 (16 heads, 577) and Vicuna-7B (32 heads, 2900).
  EXPECT_LT(bytes(16, 577), std::size_t{577} * 577 * 4 / 8);
  EXPECT_LT(bytes(32, 2900), std::size_t{2900} * 2900 * 4 / 30);
  // Region masses (two column chains) and contribution degree stay O(n) as well.
  qk_source<float> llm{.queries = tensor_view<const float, 3>(fq, {32, 2900, 128}), .keys = tensor_view<const float, 3>(fq, {8, 2900, 128}),
                       .causal = true};
  EXPECT_LT(region_mass_workspace_size(llm, token_range{35, 2304}), std::size_t{2900} * 2900 * 4 / 20);
  EXPECT_LT(contribution_degree_workspace_size(llm, token_range{1, 2899}), std::size_t{2900} * 2900 * 4 / 20);
  // One row: O(heads x rows) only.
  EXPECT_LT(reduced_rows_workspace_size(llm, token_range{2899, 1}), std::size_t{4096});
  // Pure host, deterministic.
  EXPECT_EQ(bytes(16, 577), bytes(16, 577));
}

TEST(CudaQkHost, StatusDecoding) {
  using namespace tokensel::cuda_detail;
  const auto st = decode_status(status_key(status_site::qk_statistic, 1, 2, 17));
  EXPECT_FALSE(st.ok);
  EXPECT_EQ(st.code, errc::non_finite);
  EXPECT_EQ(st.sample, 2);
  EXPECT_EQ(st.parameter, "qk.column_sums[17]");
  const auto rows = decode_status(status_key(status_site::qk_statistic, 3, 0, (3u << 16) | 9u));
  EXPECT_EQ(rows.parameter, "qk.rows[3, 9]");
  EXPECT_EQ(rows.row, 3);
  EXPECT_EQ(rows.index, 9);
}

// ---- device tests -------------------------------------------------------------------------

template <class E>
struct on_device {
  device_buffer<E> q, k;
  device_buffer<float> lse;
  qk_source<E> src;
  explicit on_device(const qk_host<E>& h) : q(to_device(h.q)), k(to_device(h.k)), lse(to_device(h.lse)) {
    src = h.source(q.data(), k.data(), h.lse.empty() ? nullptr : lse.data());
  }
};

template <class E>
void check_map_sums_on_device(const qk_host<E>& h, head_reduction op) {
  on_device<E> dev(h);
  const emulated want = cpu_map_sums(h.cpu(), op);
  device_buffer<float> r(want.rows.size()), c(want.cols.size()), g(want.diag.size());
  const map_sums_out out{{r.data(), r.size()}, {c.data(), c.size()}, {g.data(), g.size()}};
  workspace ws(map_sums_workspace_size(dev.src, out));
  map_sums(ws.policy, dev.src, op, out);
  EXPECT_TRUE(status(ws.policy).ok);
  expect_close(r.download(), want.rows, 1e-5, "row_sums");
  expect_close(c.download(), want.cols, 1e-5, "column_sums");
  expect_close(g.download(), want.diag, 1e-5, "diagonal");
  // Deterministic: a second run gives the same bits.
  const auto first = c.download();
  map_sums(ws.policy, dev.src, op, out);
  EXPECT_EQ(c.download(), first);
}

TEST(CudaQkDevice, MapSumsClipAllDtypes) {
  TOKENSEL_REQUIRE_DEVICE();
  check_map_sums_on_device(make_qk<float>(16, 16, 577, 577, 64, 1u), head_reduction::mean);
  check_map_sums_on_device(make_qk<Eigen::half>(16, 16, 577, 577, 64, 2u), head_reduction::mean);
  check_map_sums_on_device(make_qk<Eigen::bfloat16>(16, 16, 577, 577, 64, 3u), head_reduction::sum);
}

TEST(CudaQkDevice, MapSumsLlmCausalGqaWithAndWithoutLse) {
  TOKENSEL_REQUIRE_DEVICE();
  auto h = make_qk<float>(32, 8, 600, 600, 128, 4u, true);
  check_map_sums_on_device(h, head_reduction::max);
  fill_lse(h);
  check_map_sums_on_device(h, head_reduction::max);
  auto hh = make_qk<Eigen::half>(32, 8, 600, 600, 128, 5u, true);
  fill_lse(hh);
  check_map_sums_on_device(hh, head_reduction::mean);
}

TEST(CudaQkDevice, ReducedRowsAndRegionMass) {
  TOKENSEL_REQUIRE_DEVICE();
  auto h = make_qk<Eigen::bfloat16>(8, 2, 300, 300, 64, 6u, true);
  on_device<Eigen::bfloat16> dev(h);
  // Last row over all keys.
  std::vector<float> want(300);
  reduced_rows(seq, h.cpu(), head_reduction::mean, std::vector<index_t>{299}, matrix_view<float>(want.data(), {1, 300}));
  device_buffer<float> row(300);
  workspace ws(reduced_rows_workspace_size(dev.src, token_range{299, 1}));
  reduced_rows(ws.policy, dev.src, head_reduction::mean, token_range{299, 1}, matrix_view<float>(row.data(), {1, 300}));
  expect_close(row.download(), want, 1e-5, "last row");
  // Region masses, max over heads.
  const token_range visual{20, 200};
  std::vector<float> cross(200), self(200);
  const auto cpu = region_mass(seq, h.cpu(), visual, head_reduction::max, region_mass_out{cross, self});
  device_buffer<float> dc(200), ds(200);
  device_buffer<region_mass_result> dr(1);
  workspace wr(region_mass_workspace_size(dev.src, visual));
  region_mass(wr.policy, dev.src, visual, head_reduction::max, region_mass_out{{dc.data(), 200}, {ds.data(), 200}}, dr.data());
  expect_close(dc.download(), cross, 1e-5, "cross");
  expect_close(ds.download(), self, 1e-5, "self");
  const auto res = dr.download()[0];
  EXPECT_NEAR(res.cross_mass, cpu.cross_mass, 1e-5 * std::abs(cpu.cross_mass));
  EXPECT_NEAR(res.self_mass, cpu.self_mass, 1e-5 * std::abs(cpu.self_mass));
}

// Relative gap between the k-th and (k+1)-th highest scores (the top-k decision margin).
double topk_margin(std::vector<float> s, index_t k) {
  if (k <= 0 || k >= static_cast<index_t>(s.size())) return 1.0;
  std::sort(s.begin(), s.end(), std::greater<>());
  const double a = s[static_cast<std::size_t>(k - 1)], b = s[static_cast<std::size_t>(k)];
  return (a - b) / std::max(std::abs(a), 1e-30);
}

TEST(CudaQkDevice, FastVAndVisionZipFromQk) {
  TOKENSEL_REQUIRE_DEVICE();
  int compared = 0;
  for (unsigned seed = 0; seed < 6; ++seed) {
    auto h = make_qk<Eigen::half>(32, 8, 600, 600, 128, 100u + seed, true);
    if (seed % 2 == 1) fill_lse(h);
    const token_range visual{35, 576};
    const fastv::config cfg{};
    std::vector<float> scores(576);
    reduced_rows(seq, restrict_window(h.cpu(), token_range::all(600), visual), cfg.heads, std::vector<index_t>{599},
                 matrix_view<float>(scores.data(), {1, 576}));
    if (topk_margin(scores, fastv::keep_count(576, cfg)) < 1e-4) continue;
    ++compared;
    std::vector<token_index> want(576);
    const auto cres = fastv::select(seq, h.cpu(), visual, cfg, std::span<token_index>(want));
    want.resize(static_cast<std::size_t>(cres.count));
    on_device<Eigen::half> dev(h);
    device_selection sel(1, 576);
    const std::span<const qk_source<Eigen::half>> one(&dev.src, 1);
    workspace ws(fastv::workspace_size(one, std::span<const token_range>(&visual, 1), cfg));
    fastv::select(ws.policy, one, std::span<const token_range>(&visual, 1), cfg, sel.view());
    EXPECT_TRUE(status(ws.policy).ok);
    EXPECT_EQ(sel.rows()[0], want) << "seed " << seed;
  }
  EXPECT_GE(compared, 3);
  // VisionZip (dense batch of 2 CLIP layers): indices and merged features (random hidden states,
  // so a wrong merge cannot hide behind equal rows).
  const index_t B = 2, H = 16, N = 577, D = 64;
  std::vector<float> q, k;
  for (index_t b = 0; b < B; ++b) {
    const auto h = make_qk<float>(H, H, N, N, D, 300u + static_cast<unsigned>(b));
    q.insert(q.end(), h.q.begin(), h.q.end());
    k.insert(k.end(), h.k.begin(), h.k.end());
  }
  auto dq = to_device(q), dk = to_device(k);
  const visionzip::config vcfg{.dominant = 54, .contextual = 10};
  std::vector<float> hidden(static_cast<std::size_t>(B * N * 8));
  std::mt19937_64 hidden_rng(301);
  std::normal_distribution<float> hidden_value(0.0f, 1.0f);
  for (auto& x : hidden) x = hidden_value(hidden_rng);
  auto dh = to_device(hidden);
  device_buffer<float> feats(static_cast<std::size_t>(B * 64 * 8));
  const qk_batch<float> batch{.queries = tensor_view<const float, 4>(dq.data(), {B, H, N, D}), .keys = tensor_view<const float, 4>(dk.data(), {B, H, N, D})};
  device_selection sel(B, 64);
  workspace ws(visionzip::workspace_size(batch, batch.keys, vcfg));
  visionzip::select(ws.policy, batch, batch.keys, tensor_view<const float, 3>(dh.data(), {B, N, 8}), vcfg, sel.view(),
                    tensor_view<float, 3>(feats.data(), {B, 64, 8}));
  EXPECT_TRUE(status(ws.policy).ok);
  const auto got = sel.rows();
  const auto got_features = feats.download();
  for (index_t b = 0; b < B; ++b) {
    const qk_source<float> src{.queries = tensor_view<const float, 3>(q.data() + b * H * N * D, {H, N, D}),
                               .keys = tensor_view<const float, 3>(k.data() + b * H * N * D, {H, N, D})};
    std::vector<token_index> want(64);
    std::vector<float> fw(64 * 8);
    const auto r = visionzip::select(seq, src, src.keys, tensor_view<const float, 2>(hidden.data() + b * N * 8, {N, 8}), vcfg,
                                     std::span<token_index>(want), tensor_view<float, 2>(fw.data(), {64, 8}));
    want.resize(static_cast<std::size_t>(r.count));
    EXPECT_EQ(got[static_cast<std::size_t>(b)], want) << "sample " << b;
    // The merged rows (dominant rows, then the contextual merges), bit for bit.
    fw.resize(static_cast<std::size_t>(r.count * 8));
    const std::vector<float> gf(got_features.begin() + b * 64 * 8, got_features.begin() + b * 64 * 8 + r.count * 8);
    EXPECT_EQ(gf, fw) << "merged features, sample " << b;
  }
}

TEST(CudaQkDevice, FoPruFromQk) {
  TOKENSEL_REQUIRE_DEVICE();
  int compared = 0;
  for (unsigned seed = 0; seed < 4; ++seed) {
    const auto h = make_qk<float>(16, 16, 577, 577, 64, 500u + seed);
    const fopru::config cfg{};
    std::vector<token_index> want(576);
    const auto cres = fopru::select(seq, h.cpu(), cfg, std::span<token_index>(want));
    want.resize(static_cast<std::size_t>(cres.count));
    // Margin: the significance vector of the winning axis.
    const emulated sums = cpu_map_sums(restrict_tokens(h.cpu(), token_range::skip_cls(577)), cfg.heads);
    const auto& sig = cres.axis == significance_axis::row_mean ? sums.rows : sums.cols;
    if (topk_margin(sig, fopru::keep_count(576, cfg)) < 1e-4 ||
        std::abs(cres.row_variance - cres.column_variance) < 1e-4 * std::max(cres.row_variance, cres.column_variance)) {
      continue;
    }
    ++compared;
    on_device<float> dev(h);
    device_selection sel(1, 576);
    const std::span<const qk_source<float>> one(&dev.src, 1);
    workspace ws(fopru::workspace_size(one, cfg));
    fopru::select(ws.policy, one, cfg, sel.view());
    EXPECT_TRUE(status(ws.policy).ok);
    EXPECT_EQ(sel.rows()[0], want) << "seed " << seed;
  }
  EXPECT_GE(compared, 2);
}

TEST(CudaQkDevice, NonFiniteQueriesReported) {
  TOKENSEL_REQUIRE_DEVICE();
  auto h = make_qk<float>(2, 2, 40, 40, 16, 9u);
  h.q[5] = std::numeric_limits<float>::quiet_NaN();
  on_device<float> dev(h);
  device_buffer<float> c(40);
  const map_sums_out out{{}, {c.data(), 40}, {}};
  workspace ws(map_sums_workspace_size(dev.src, out));
  map_sums(ws.policy, dev.src, head_reduction::mean, out);
  const auto st = status(ws.policy);
  EXPECT_FALSE(st.ok);
  EXPECT_EQ(st.code, errc::non_finite);
}

TEST(CudaQkDevice, MaterializeMatchesCpu) {
  TOKENSEL_REQUIRE_DEVICE();
  const auto h = make_qk<float>(4, 2, 70, 90, 32, 12u, true);
  on_device<float> dev(h);
  std::vector<float> want(static_cast<std::size_t>(4 * 70 * 90));
  materialize_attention(seq, h.cpu(), tensor_view<float, 3>(want.data(), {4, 70, 90}));
  device_buffer<float> got(want.size());
  workspace ws(materialize_attention_workspace_size(dev.src));
  materialize_attention(ws.policy, dev.src, tensor_view<float, 3>(got.data(), {4, 70, 90}));
  const auto g = got.download();
  for (std::size_t i = 0; i < g.size(); ++i) ASSERT_NEAR(g[i], want[i], 1e-5 * std::max(1e-3f, want[i])) << i;
}

}  // namespace
