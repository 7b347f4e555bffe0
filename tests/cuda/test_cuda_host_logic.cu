// The CUDA kernels' decomposition, checked against the CPU backend on the host (runs without a
// GPU). The kernels call the same __host__ __device__ helpers (tokensel/cuda/detail/arith.cuh);
// what this file emulates is how they combine them: the warp's shuffle-down tree, selection by
// rank counting, quartiles by counting, freePruner's fixed-budget ranking, the variance order.
// A mismatch here is a bug in the design, independent of any GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <random>
#include <span>
#include <vector>

#include "tokensel/methods/baselines.hpp"
#include "tokensel/stats/contribution_degree.hpp"
#include "tokensel/cuda/methods/baselines.cuh"
#include "tokensel/cuda/detail/arith.cuh"
#include "tokensel/cuda/methods/freepruner.cuh"
#include "tokensel/detail/reduce.hpp"
#include "tokensel/methods/freepruner.hpp"
#include "tokensel/stats/iqr_outliers.hpp"
#include "tokensel/select/top_k.hpp"
#include "tokensel/stats/variance_axis.hpp"

using namespace tokensel;
namespace cd = tokensel::cuda_detail;

namespace {

std::vector<float> random_vector(std::mt19937_64& rng, int n, int kind) {
  std::vector<float> x(static_cast<std::size_t>(n));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> small(-3, 3);
  for (auto& v : x) {
    switch (kind) {
      case 0: v = normal(rng); break;                                    // distinct
      case 1: v = static_cast<float>(small(rng)) * 0.25f; break;         // many ties
      case 2: v = std::exp(normal(rng) * 4.0f); break;                   // wide dynamic range
      case 3: v = small(rng) == 0 ? (small(rng) < 0 ? -0.0f : 0.0f) : normal(rng); break;  // signed zeros
      default: v = 1.0f; break;                                          // all equal
    }
  }
  return x;
}

/// What a warp does: lane l sums x[l], x[l+32], ...; then v += shfl_down(v, w) for w = 16..1,
/// where a lane whose source l + w is beyond the warp reads its own value.
float warp_emulation(const std::vector<float>& x) {
  float lane[32];
  for (int l = 0; l < 32; ++l) {
    lane[l] = 0.0f;
    for (std::size_t j = static_cast<std::size_t>(l); j < x.size(); j += 32) lane[l] = cd::fadd(lane[l], x[j]);
  }
  for (int w = 16; w >= 1; w /= 2) {
    float next[32];
    for (int l = 0; l < 32; ++l) next[l] = cd::fadd(lane[l], l + w < 32 ? lane[l + w] : lane[l]);
    std::copy(next, next + 32, lane);
  }
  return lane[0];
}

template <class Beats>
std::vector<int> ranks(const std::vector<float>& x, Beats beats) {
  const int n = static_cast<int>(x.size());
  std::vector<int> r(static_cast<std::size_t>(n), 0);
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < n; ++j) r[static_cast<std::size_t>(i)] += beats(x[static_cast<std::size_t>(j)], j, x[static_cast<std::size_t>(i)], i) ? 1 : 0;
  }
  return r;
}

/// block_quartiles' rule on the host: the value at sorted position p is x_i with the lowest i
/// such that less_i <= p < leq_i.
double value_at(const std::vector<float>& x, int p) {
  const int n = static_cast<int>(x.size());
  int owner = INT_MAX;
  for (int i = 0; i < n; ++i) {
    int less = 0, leq = 0;
    for (int j = 0; j < n; ++j) {
      less += x[static_cast<std::size_t>(j)] < x[static_cast<std::size_t>(i)] ? 1 : 0;
      leq += x[static_cast<std::size_t>(j)] <= x[static_cast<std::size_t>(i)] ? 1 : 0;
    }
    if (less <= p && p < leq) owner = std::min(owner, i);
  }
  return static_cast<double>(x[static_cast<std::size_t>(owner)]);
}

cd::quartiles counted_quartiles(const std::vector<float>& x) {
  const int n = static_cast<int>(x.size());
  const auto p1 = cd::quantile_at(n, 0.25), p3 = cd::quantile_at(n, 0.75);
  cd::quartiles q;
  q.q1 = cd::quantile_value(p1, value_at(x, p1.lo), value_at(x, p1.lerp ? p1.lo + 1 : p1.lo));
  q.q3 = cd::quantile_value(p3, value_at(x, p3.lo), value_at(x, p3.lerp ? p3.lo + 1 : p3.lo));
  return q;
}

}  // namespace

TEST(CudaHostLogic, CanonicalSumSerialAndWarpTreeMatchTheCpu) {
  std::mt19937_64 rng(1);
  for (int t = 0; t < 3000; ++t) {
    const int n = t < 200 ? t : static_cast<int>(rng() % 2000);
    const auto x = random_vector(rng, n, static_cast<int>(rng() % 5));
    const float cpu = detail::canonical_sum(x.data(), static_cast<index_t>(n));
    const float serial = cd::canonical_sum_serial(x.data(), n);
    const float warp = warp_emulation(x);
    ASSERT_EQ(std::signbit(cpu), std::signbit(serial)) << n;
    ASSERT_EQ(cpu, serial) << n;
    ASSERT_EQ(std::signbit(cpu), std::signbit(warp)) << n;
    ASSERT_EQ(cpu, warp) << n;
  }
}

TEST(CudaHostLogic, RankCountingIsTheCpuTopKAndBottomK) {
  std::mt19937_64 rng(2);
  for (int t = 0; t < 2000; ++t) {
    const int n = 1 + static_cast<int>(rng() % 300);
    const auto x = random_vector(rng, n, static_cast<int>(rng() % 5));
    const int k = static_cast<int>(rng() % static_cast<unsigned>(n + 1));
    const auto high = ranks(x, [](float a, int j, float b, int i) { return cd::beats_high(a, j, b, i); });
    const auto low = ranks(x, [](float a, int j, float b, int i) { return cd::beats_low(a, j, b, i); });
    std::vector<token_index> want(static_cast<std::size_t>(k)), want_ranked(static_cast<std::size_t>(k)), got, got_ranked(static_cast<std::size_t>(k));
    top_k<float>(std::span<const float>(x), k, want);
    top_k<float>(std::span<const float>(x), k, want_ranked, index_order::ranked);
    for (int i = 0; i < n; ++i) {
      if (high[static_cast<std::size_t>(i)] < k) {
        got.push_back(i);
        got_ranked[static_cast<std::size_t>(high[static_cast<std::size_t>(i)])] = i;
      }
    }
    ASSERT_EQ(got, want) << "n " << n << " k " << k;
    ASSERT_EQ(got_ranked, want_ranked);
    // Ranks are a permutation (a strict total order), so exactly k are selected.
    auto sorted = high;
    std::sort(sorted.begin(), sorted.end());
    for (int i = 0; i < n; ++i) ASSERT_EQ(sorted[static_cast<std::size_t>(i)], i);
    // bottom-k and its complement (FitPrune's kept set).
    std::vector<token_index> dropped(static_cast<std::size_t>(k)), kept_want(static_cast<std::size_t>(n - k)), kept_got;
    bottom_k<float>(std::span<const float>(x), k, dropped);
    complement(dropped, n, kept_want);
    for (int i = 0; i < n; ++i) {
      if (low[static_cast<std::size_t>(i)] >= k) kept_got.push_back(i);
    }
    ASSERT_EQ(kept_got, kept_want);
  }
}

TEST(CudaHostLogic, CountedQuartilesAndFencesMatchNumpyLinear) {
  std::mt19937_64 rng(3);
  for (int t = 0; t < 1500; ++t) {
    const int n = 1 + static_cast<int>(rng() % 200);
    const auto x = random_vector(rng, n, static_cast<int>(rng() % 5));
    const double c = (t % 3 == 0) ? 1.5 : std::uniform_real_distribution<double>(0.0, 3.0)(rng);
    const iqr_result want = iqr_fences(std::span<const float>(x), iqr_config{.multiplier = c});
    const cd::quartiles q = counted_quartiles(x);
    ASSERT_EQ(q.q1, want.q1) << n;  // == : a signed-zero difference would be allowed (see iqr.cuh)
    ASSERT_EQ(q.q3, want.q3) << n;
    const double fence = cd::upper_fence(q.q1, q.q3, c);
    ASSERT_EQ(fence, want.upper_fence);
    ASSERT_EQ(cd::lower_fence(q.q1, q.q3, c), want.lower_fence);
    index_t count = 0;
    for (const float v : x) count += static_cast<double>(v) > fence ? 1 : 0;
    ASSERT_EQ(count, want.count);
  }
}

TEST(CudaHostLogic, SequentialVarianceIsTheCpuVariance) {
  std::mt19937_64 rng(4);
  for (int t = 0; t < 2000; ++t) {
    const int n = 1 + static_cast<int>(rng() % 1000);
    const auto x = random_vector(rng, n, static_cast<int>(rng() % 5));
    const double want = population_variance(std::span<const float>(x));
    const double got = cd::sequential_variance(x.data(), n);
    ASSERT_EQ(got, want);
  }
}

TEST(CudaHostLogic, MaxNanAndHeadReductionOrder) {
  EXPECT_TRUE(std::isnan(cd::max_nan(1.0f, NAN)));
  EXPECT_TRUE(std::isnan(cd::max_nan(NAN, 1.0f)));
  EXPECT_EQ(cd::max_nan(1.0f, 2.0f), 2.0f);
  EXPECT_EQ(cd::max_nan(2.0f, 1.0f), 2.0f);
  EXPECT_EQ(detail::max_nan(3.0f, NAN) != detail::max_nan(3.0f, NAN), cd::max_nan(3.0f, NAN) != cd::max_nan(3.0f, NAN));
  // reduce_heads_at: head 0 is the start value (not 0 + head 0): -0 survives a one-head sum.
  const float m = -0.0f;
  EXPECT_TRUE(std::signbit(m));
  EXPECT_FALSE(std::signbit(cd::fadd(0.0f, m)));
}

// freePruner: the GPU pipeline's decisions (rank-count top-k per layer into P, counted quartiles,
// margins over p ascending, fixed-budget ranking by assemble_ranker::beats) reproduce the CPU's
// select on random stacks, in both modes, with |S| above, at and below the budget.
TEST(CudaHostLogic, FreePrunerDecisionsMatchTheCpu) {
  std::mt19937_64 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  int over = 0, under = 0;
  for (int t = 0; t < 400; ++t) {
    const index_t heads = 1 + static_cast<index_t>(rng() % 3);
    const index_t tokens = 2 + static_cast<index_t>(rng() % 40);
    const index_t n = tokens - 1;
    freepruner::config cfg;
    cfg.first_layer = 0;
    cfg.last_layer = static_cast<index_t>(rng() % 3);
    cfg.complementary_layer = static_cast<index_t>(rng() % 4);
    cfg.k_pivotal = 1 + static_cast<index_t>(rng() % static_cast<unsigned>(std::min<index_t>(n, 4)));
    cfg.heads = static_cast<head_reduction>(rng() % 3);
    if (rng() % 2 == 0) {
      cfg.mode = freepruner::mode::fixed;
      cfg.budget = 1 + static_cast<index_t>(rng() % static_cast<unsigned>(n));
    }
    const index_t layers = std::max(cfg.last_layer, cfg.complementary_layer) + 1;
    const bool ties = rng() % 3 == 0;
    std::vector<std::vector<float>> data(static_cast<std::size_t>(layers));
    std::vector<head_attention_view<float>> views;
    for (auto& d : data) {
      d.resize(static_cast<std::size_t>(heads * tokens * tokens));
      for (auto& v : d) v = ties ? static_cast<float>(static_cast<int>(rng() % 4)) * 0.125f : std::exp(normal(rng));
      views.emplace_back(d.data(), std::array<index_t, 3>{heads, tokens, tokens});
    }
    std::vector<token_index> want(static_cast<std::size_t>(n));
    const freepruner::result wr = freepruner::select(seq, freepruner::layer_stack<float>{views, 0}, cfg, want);
    want.resize(static_cast<std::size_t>(wr.count));

    // GPU decisions on the host.
    const token_range patches = token_range::skip_cls(tokens);
    std::vector<float> max_r(static_cast<std::size_t>(n)), last_r(static_cast<std::size_t>(n)), r(static_cast<std::size_t>(n));
    std::vector<unsigned char> in_p(static_cast<std::size_t>(n), 0), in_c(static_cast<std::size_t>(n), 0);
    for (index_t l = cfg.first_layer; l <= cfg.last_layer; ++l) {
      contribution_degree(seq, views[static_cast<std::size_t>(l)], cfg.heads, patches, r);  // as column_sums computes it
      for (index_t i = 0; i < n; ++i) {
        const auto at = static_cast<std::size_t>(i);
        max_r[at] = l == cfg.first_layer ? r[at] : cd::std_max(max_r[at], r[at]);
        if (l == cfg.last_layer) last_r[at] = r[at];
      }
      const auto rk = ranks(r, [](float a, int j, float b, int i) { return cd::beats_high(a, j, b, i); });
      for (index_t i = 0; i < n; ++i) {
        if (rk[static_cast<std::size_t>(i)] < cfg.k_pivotal) in_p[static_cast<std::size_t>(i)] = 1;
      }
    }
    const auto sub = restrict_tokens(views[static_cast<std::size_t>(cfg.complementary_layer)], patches);
    std::vector<std::vector<float>> rows(static_cast<std::size_t>(n));
    std::vector<double> fence(static_cast<std::size_t>(n), 0.0), margin(static_cast<std::size_t>(n));
    for (index_t p = 0; p < n; ++p) {
      if (in_p[static_cast<std::size_t>(p)] == 0) continue;
      auto& row = rows[static_cast<std::size_t>(p)];
      row.resize(static_cast<std::size_t>(n));
      detail::reduce_heads_row(sub, p, cfg.heads, row.data());
      const auto q = counted_quartiles(row);
      fence[static_cast<std::size_t>(p)] = cd::upper_fence(q.q1, q.q3, cfg.iqr_multiplier);
    }
    int P = 0, S = 0;
    for (index_t j = 0; j < n; ++j) {
      double best = -static_cast<double>(INFINITY);
      bool c = false;
      for (index_t p = 0; p < n; ++p) {
        if (in_p[static_cast<std::size_t>(p)] == 0) continue;
        const double x = static_cast<double>(rows[static_cast<std::size_t>(p)][static_cast<std::size_t>(j)]);
        if (x > fence[static_cast<std::size_t>(p)]) {
          c = true;
          best = cd::std_max(best, cd::dsub(x, fence[static_cast<std::size_t>(p)]));
        }
      }
      in_c[static_cast<std::size_t>(j)] = c ? 1 : 0;
      margin[static_cast<std::size_t>(j)] = best;
      P += in_p[static_cast<std::size_t>(j)];
      S += (in_p[static_cast<std::size_t>(j)] != 0 || c) ? 1 : 0;
    }
    const int B = static_cast<int>(cfg.budget);
    const bool fixed = cfg.mode == freepruner::mode::fixed;
    std::vector<int> rank(static_cast<std::size_t>(n), 0);
    if (fixed && S != B) {
      auto key = [&](index_t i) {
        const auto at = static_cast<std::size_t>(i);
        return freepruner::cuda_detail::assemble_key{S > B ? 1 : 0, in_p[at] != 0 ? 1 : 0, max_r[at], last_r[at], margin[at]};
      };
      auto eligible = [&](index_t i) {
        const bool s = in_p[static_cast<std::size_t>(i)] != 0 || in_c[static_cast<std::size_t>(i)] != 0;
        return S > B ? s : !s;
      };
      for (index_t i = 0; i < n; ++i) {
        if (!eligible(i)) continue;
        for (index_t j = 0; j < n; ++j) {
          if (eligible(j) && freepruner::cuda_detail::assemble_ranker::beats(key(j), static_cast<int>(j), key(i), static_cast<int>(i))) {
            ++rank[static_cast<std::size_t>(i)];
          }
        }
      }
      (S > B ? over : under) += 1;
    }
    std::vector<token_index> got;
    for (index_t i = 0; i < n; ++i) {
      const auto at = static_cast<std::size_t>(i);
      const bool s = in_p[at] != 0 || in_c[at] != 0;
      bool sel = s;
      if (fixed && S > B) sel = s && rank[at] < B;
      if (fixed && S < B) sel = s || rank[at] < B - S;
      if (sel) got.push_back(static_cast<token_index>(i));
    }
    ASSERT_EQ(got, want) << "case " << t;
    EXPECT_EQ(P, wr.pivotal);
    EXPECT_EQ(S, wr.candidates);
  }
  EXPECT_GT(over, 10);
  EXPECT_GT(under, 10);
}

// The device splitmix64 draws the CPU's numbers; the uniform kernel's closed form (row r starts
// at output floor(r k / kr)) writes the CPU's indices.
TEST(CudaHostLogic, BaselinesDrawsAndPositions) {
  std::mt19937_64 rng(6);
  for (int t = 0; t < 200; ++t) {
    const std::uint64_t seed = rng();
    baselines::detail::splitmix64 cpu(seed);
    baselines::cuda_detail::splitmix64 dev{seed};
    for (int i = 0; i < 100; ++i) {
      const std::uint64_t bound = 1 + rng() % 1000;
      ASSERT_EQ(cpu.below(bound), dev.below(bound));
      ASSERT_EQ(cpu.next(), dev.next());
    }
  }
  for (int t = 0; t < 3000; ++t) {
    const token_grid grid{static_cast<index_t>(rng() % 40), 1 + static_cast<index_t>(rng() % 40)};
    const baselines::uniform::config cfg{.count = static_cast<index_t>(rng() % static_cast<unsigned>(grid.size() + 1))};
    std::vector<token_index> want(static_cast<std::size_t>(grid.size()));
    const auto wr = baselines::uniform::select(seq, grid, cfg, want);
    const auto w = baselines::cuda_detail::uniform_desc(grid, cfg, grid.size());
    std::vector<token_index> got(static_cast<std::size_t>(w.p0), -1);
    const long long k = w.p0, kr = w.p1;
    for (long long r = 0; r < kr; ++r) {
      const long long row = baselines::cuda_detail::spread(r, w.p2, kr);
      const long long first = r * k / kr, kr_row = (r + 1) * k / kr - first;
      for (long long i = 0; i < kr_row; ++i) {
        got[static_cast<std::size_t>(first + i)] = static_cast<token_index>(row * w.p3 + baselines::cuda_detail::spread(i, w.p3, kr_row));
      }
    }
    want.resize(static_cast<std::size_t>(wr.count));
    ASSERT_EQ(got, want) << grid.rows << "x" << grid.cols << " k " << k;
    ASSERT_EQ(k == 0 ? 0 : kr, wr.rows_used);
  }
}
