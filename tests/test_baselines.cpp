#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "tokensel/methods/baselines.hpp"

using namespace tokensel;
namespace bl = tokensel::baselines;

namespace {

template <class F>
void expect_error(F&& f, errc code, const std::string& needle) {
  try {
    f();
    FAIL() << "no exception; expected " << needle;
  } catch (const error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

template <class Config>
std::vector<token_index> random_indices(index_t n, const Config& cfg, std::uint64_t stream = 0) {
  std::vector<token_index> out(static_cast<std::size_t>(bl::random::keep_count(n, cfg)));
  const auto r = bl::random::select(seq, n, cfg, std::span(out), stream);
  EXPECT_EQ(r.count, static_cast<index_t>(out.size()));
  return out;
}

std::vector<token_index> uniform_indices(const token_grid& g, const bl::uniform::config& cfg) {
  std::vector<token_index> out(static_cast<std::size_t>(bl::uniform::keep_count(g.size(), cfg)));
  const auto r = bl::uniform::select(seq, g, cfg, std::span(out));
  EXPECT_EQ(r.count, static_cast<index_t>(out.size()));
  return out;
}

bool ascending_unique(const std::vector<token_index>& v) {
  return std::adjacent_find(v.begin(), v.end(), [](token_index a, token_index b) { return a >= b; }) == v.end();
}

}  // namespace

// ---- budgets ------------------------------------------------------------------------------------

TEST(Baselines, KeepCountRatioAndCount) {
  EXPECT_EQ(bl::random::keep_count(576, {.ratio = 0.25}), 144);
  EXPECT_EQ(bl::random::keep_count(576, {.count = 64}), 64);
  EXPECT_EQ(bl::random::keep_count(10, {.ratio = 0.01}), 1);  // max(1, floor(n r))
  EXPECT_EQ(bl::random::keep_count(10, {.ratio = 0.39}), 3);
  EXPECT_EQ(bl::random::keep_count(10, {.count = 0}), 0);
  EXPECT_EQ(bl::random::keep_count(0, {.count = 64}), 0);  // n = 0: empty, whatever the budget
  EXPECT_EQ(bl::uniform::keep_count(576, {.ratio = 1.0}), 576);
  EXPECT_EQ(bl::uniform::keep_count(7, {.count = 7}), 7);
}

TEST(Baselines, BadBudgets) {
  expect_error([] { (void)bl::random::keep_count(10, {}); }, errc::invalid_argument, "random.ratio/random.count = neither set");
  expect_error([] { (void)bl::uniform::keep_count(10, {.ratio = 0.5, .count = 3}); }, errc::invalid_argument,
               "uniform.ratio/uniform.count = both set");
  expect_error([] { (void)bl::random::keep_count(10, {.ratio = 0.0}); }, errc::invalid_argument, "random.ratio = 0");
  expect_error([] { (void)bl::random::keep_count(10, {.ratio = 1.5}); }, errc::invalid_argument, "random.ratio = 1.5");
  expect_error([] { (void)bl::uniform::keep_count(10, {.ratio = std::nan("")}); }, errc::invalid_argument, "uniform.ratio = nan");
  expect_error([] { (void)bl::random::keep_count(10, {.count = -1}); }, errc::invalid_argument, "random.count = -1");
  expect_error([] { (void)bl::uniform::keep_count(10, {.count = 11}); }, errc::invalid_argument, "uniform.count = 11");
  expect_error([] { (void)bl::random::keep_count(-3, {.count = 1}); }, errc::invalid_argument, "random.n = -3");
  std::vector<token_index> out(2);
  expect_error([&] { (void)bl::random::select(seq, 10, {.count = 3}, std::span(out)); }, errc::shape_mismatch,
               "random.out.size() = 2");
  expect_error([&] { (void)bl::uniform::select(seq, 10, {.count = 3}, std::span(out)); }, errc::shape_mismatch,
               "uniform.out.size() = 2");
  expect_error([&] { (void)bl::uniform::select(seq, token_grid{-1, 3}, {.count = 1}, std::span(out)); }, errc::invalid_argument,
               "uniform.grid = -1x3");
}

// ---- random -------------------------------------------------------------------------------------

// Pinned numbers: python3 tools/reference/baselines_reference.py (splitmix64 + partial Fisher-Yates).
TEST(Baselines, RandomPinnedForFixedSeed) {
  EXPECT_EQ(random_indices(20, bl::random::config{.count = 5, .seed = 42}), (std::vector<token_index>{2, 6, 8, 13, 16}));
  EXPECT_EQ(random_indices(20, bl::random::config{.count = 5, .seed = 42}, 1), (std::vector<token_index>{5, 7, 10, 12, 13}));
  EXPECT_EQ(random_indices(20, bl::random::config{.count = 5, .seed = 43}), (std::vector<token_index>{0, 1, 8, 17, 19}));
  EXPECT_EQ(random_indices(576, bl::random::config{.count = 8, .seed = 2024}),
            (std::vector<token_index>{85, 107, 114, 254, 307, 333, 439, 493}));
}

TEST(Baselines, RandomDeterministicDistinctAndSeedDependent) {
  const bl::random::config cfg{.ratio = 0.25, .seed = 7};
  const auto a = random_indices(576, cfg), b = random_indices(576, cfg);
  EXPECT_EQ(a, b);
  EXPECT_EQ(a.size(), 144u);
  EXPECT_TRUE(ascending_unique(a));
  EXPECT_GE(a.front(), 0);
  EXPECT_LT(a.back(), 576);
  EXPECT_NE(a, random_indices(576, bl::random::config{.ratio = 0.25, .seed = 8}));
  EXPECT_NE(a, random_indices(576, cfg, 1));
  // k = n: every index once.
  const auto all = random_indices(50, bl::random::config{.count = 50, .seed = 3});
  for (index_t i = 0; i < 50; ++i) EXPECT_EQ(all[i], i);
}

TEST(Baselines, RandomIsRoughlyUniform) {
  // 4000 draws of 1 out of 8: every index appears; counts within a generous band of 500.
  std::vector<int> hits(8);
  for (std::uint64_t s = 0; s < 4000; ++s) hits[random_indices(8, bl::random::config{.count = 1, .seed = s})[0]]++;
  for (int h : hits) {
    EXPECT_GT(h, 400);
    EXPECT_LT(h, 600);
  }
}

TEST(Baselines, RandomBatchUsesStreamPerSample) {
  const std::vector<index_t> ns{20, 0, 20, 9};
  const bl::random::config cfg{.count = 5, .seed = 42};
  std::vector<token_index> idx(4 * 5, -1), counts(4);
  std::vector<bl::random::result> results(4);
  bl::random::select(par, std::span<const index_t>(ns), cfg, {tensor_view<token_index, 2>(idx.data(), {4, 5}), std::span(counts)},
                     std::span(results));
  EXPECT_EQ(counts, (std::vector<token_index>{5, 0, 5, 5}));
  EXPECT_EQ(std::vector<token_index>(idx.begin(), idx.begin() + 5), (std::vector<token_index>{2, 6, 8, 13, 16}));
  EXPECT_EQ(std::vector<token_index>(idx.begin() + 10, idx.begin() + 15), random_indices(20, cfg, 2));
  EXPECT_EQ(std::vector<token_index>(idx.begin() + 15, idx.end()), random_indices(9, cfg, 3));
  EXPECT_EQ(results[3].count, 5);
  // seq gives the same
  std::vector<token_index> idx2(20, -1), counts2(4);
  bl::random::select(seq, std::span<const index_t>(ns), cfg, {tensor_view<token_index, 2>(idx2.data(), {4, 5}), std::span(counts2)});
  EXPECT_EQ(idx, idx2);
  // fewer output rows than samples
  expect_error([&] { bl::random::select(seq, std::span<const index_t>(ns), bl::random::config{.count = 10},
                                        {tensor_view<token_index, 2>(idx2.data(), {2, 10}), std::span(counts2).first(2)}); },
               errc::shape_mismatch, "random.out.indices.extent(0) = 2");
}

// ---- uniform ------------------------------------------------------------------------------------

TEST(Baselines, UniformPinned1D) {
  // floor((2i+1) n / (2k))
  EXPECT_EQ(uniform_indices({1, 10}, {.count = 3}), (std::vector<token_index>{1, 5, 8}));
  EXPECT_EQ(uniform_indices({1, 10}, {.count = 10}), (std::vector<token_index>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
  std::vector<token_index> out(3);
  EXPECT_EQ(bl::uniform::select(seq, 10, {.count = 3}, std::span(out)).rows_used, 1);
  EXPECT_EQ(out, (std::vector<token_index>{1, 5, 8}));
  std::vector<token_index> one(1);
  (void)bl::uniform::select(seq, 9, {.count = 1}, std::span(one));
  EXPECT_EQ(one[0], 4);  // the centre
}

TEST(Baselines, UniformPinned2D) {
  // python3 tools/reference/baselines_reference.py
  EXPECT_EQ(uniform_indices({4, 4}, {.count = 4}), (std::vector<token_index>{5, 7, 13, 15}));
  EXPECT_EQ(uniform_indices({4, 4}, {.count = 5}), (std::vector<token_index>{5, 7, 12, 14, 15}));
  EXPECT_EQ(uniform_indices({3, 5}, {.count = 7}), (std::vector<token_index>{0, 2, 4, 10, 11, 13, 14}));
  // 24 x 24, 64 tokens: an 8 x 8 lattice at rows and columns 1, 4, 7, ..., 22.
  const auto lattice = uniform_indices({24, 24}, {.count = 64});
  ASSERT_EQ(lattice.size(), 64u);
  for (index_t r = 0; r < 8; ++r) {
    for (index_t c = 0; c < 8; ++c) EXPECT_EQ(lattice[r * 8 + c], (1 + 3 * r) * 24 + 1 + 3 * c);
  }
  // 144 of 576 (ratio 0.25): 12 x 12 lattice at odd rows and columns.
  const auto quarter = uniform_indices({24, 24}, {.ratio = 0.25});
  ASSERT_EQ(quarter.size(), 144u);
  for (index_t r = 0; r < 12; ++r) {
    for (index_t c = 0; c < 12; ++c) EXPECT_EQ(quarter[r * 12 + c], (2 * r + 1) * 24 + 2 * c + 1);
  }
}

TEST(Baselines, UniformBudgetExactOnManyGrids) {
  for (index_t rows = 1; rows <= 9; ++rows) {
    for (index_t cols = 1; cols <= 9; ++cols) {
      for (index_t k = 0; k <= rows * cols; ++k) {
        const auto v = uniform_indices({rows, cols}, {.count = k});
        ASSERT_EQ(static_cast<index_t>(v.size()), k) << rows << "x" << cols << " k " << k;
        ASSERT_TRUE(ascending_unique(v)) << rows << "x" << cols << " k " << k;
        if (k > 0) {
          ASSERT_GE(v.front(), 0);
          ASSERT_LT(v.back(), rows * cols);
        }
      }
    }
  }
}

TEST(Baselines, UniformBatches) {
  const std::vector<token_grid> grids{{4, 4}, {0, 0}, {24, 24}};
  std::vector<token_index> idx(3 * 64, -1), counts(3);
  std::vector<bl::uniform::result> results(3);
  bl::uniform::select(par, std::span<const token_grid>(grids), {.count = 4},
                      {tensor_view<token_index, 2>(idx.data(), {3, 64}), std::span(counts)}, std::span(results));
  EXPECT_EQ(counts, (std::vector<token_index>{4, 0, 4}));
  EXPECT_EQ(std::vector<token_index>(idx.begin(), idx.begin() + 4), (std::vector<token_index>{5, 7, 13, 15}));
  EXPECT_EQ(std::vector<token_index>(idx.begin() + 128, idx.begin() + 132), uniform_indices({24, 24}, {.count = 4}));
  EXPECT_EQ(results[2].rows_used, 2);
  const std::vector<index_t> ns{10, 3};
  bl::uniform::select(seq, std::span<const index_t>(ns), {.ratio = 0.3},
                      {tensor_view<token_index, 2>(idx.data(), {2, 64}), std::span(counts).first(2)});
  EXPECT_EQ(counts[0], 3);
  EXPECT_EQ(counts[1], 1);
  EXPECT_EQ(std::vector<token_index>(idx.begin(), idx.begin() + 3), (std::vector<token_index>{1, 5, 8}));
  EXPECT_EQ(idx[64], 1);
}

// ---- pooling ------------------------------------------------------------------------------------

TEST(Baselines, PoolPinned) {
  // python3 tools/reference/baselines_reference.py
  std::vector<float> f{1, 2, 3, 4, 5, 6, 7, 8, 9}, out(4);
  auto r = bl::pool::apply(seq, matrix_view<const float>(f.data(), {9, 1}), {3, 3}, {}, matrix_view<float>(out.data(), {4, 1}));
  EXPECT_EQ(r.count, 4);
  EXPECT_EQ(r.grid.rows, 2);
  EXPECT_EQ(r.grid.cols, 2);
  EXPECT_EQ(out, (std::vector<float>{3, 4.5f, 7.5f, 9}));  // partial windows average what they hold

  std::vector<float> g(32), o2(8);
  for (index_t i = 0; i < 16; ++i) g[i * 2] = static_cast<float>(i), g[i * 2 + 1] = static_cast<float>(-2 * i);
  (void)bl::pool::apply(par, matrix_view<const float>(g.data(), {16, 2}), {4, 4}, {}, matrix_view<float>(o2.data(), {4, 2}));
  EXPECT_EQ(o2, (std::vector<float>{2.5f, -5, 4.5f, -9, 10.5f, -21, 12.5f, -25}));

  std::vector<float> h(10), o3(3), o4(2);
  for (index_t i = 0; i < 10; ++i) h[i] = static_cast<float>(i * i);
  (void)bl::pool::apply(seq, matrix_view<const float>(h.data(), {10, 1}), {2, 5}, {}, matrix_view<float>(o3.data(), {3, 1}));
  EXPECT_EQ(o3, (std::vector<float>{15.5f, 31.5f, 48.5f}));
  (void)bl::pool::apply(seq, matrix_view<const float>(h.data(), {10, 1}), {2, 5}, {.window = 3}, matrix_view<float>(o4.data(), {2, 1}));
  EXPECT_FLOAT_EQ(o4[0], 19.1666667f);
  EXPECT_FLOAT_EQ(o4[1], 42.5f);
}

// Every pooled value is (window sum, row-major from 0.0f) / count, bit for bit, whether the count
// is a power of two (the library multiplies by its exact reciprocal) or not (it divides): values
// over a wide exponent range, subnormal quotients included, fp32 / fp16 / bf16 inputs and outputs.
// d = 147 runs the register-blocked chunks (64 or 32 channels) and the channel tail; channel 5 is
// -0.0 everywhere, whose window sum from 0.0f is +0.0 (a sum started from the first token is not).
template <class T>
void expect_pool_is_window_sum_over_count() {
  const token_grid grid{5, 7};  // window 2: counts 4, 2 and 1; window 3: 9, 6, 3, 4, 2
  const index_t n = grid.size(), d = 147;
  std::vector<T> f(static_cast<std::size_t>(n * d));
  std::uint32_t state = 12345;
  for (std::size_t i = 0; i < f.size(); ++i) {
    state = state * 1664525u + 1013904223u;
    const int e = static_cast<int>(state >> 24) - (std::is_same_v<T, float> ? 150 : 40);  // finite sums
    const float v = std::ldexp(static_cast<float>(state & 0xffff) / 65536.0f + 0.5f, e) * ((state >> 23) & 1 ? -1.0f : 1.0f);
    f[i] = static_cast<T>(i % static_cast<std::size_t>(d) == 5 ? -0.0f : v);
  }
  for (const index_t w : {index_t{2}, index_t{3}}) {
    const bl::pool::config cfg{.window = w};
    const index_t k = bl::pool::keep_count(grid, cfg);
    std::vector<float> out(static_cast<std::size_t>(k * d));
    std::vector<Eigen::half> oh(out.size());
    std::vector<Eigen::bfloat16> ob(out.size());
    const matrix_view<const T> in(f.data(), {n, d});
    (void)bl::pool::apply(seq, in, grid, cfg, matrix_view<float>(out.data(), {k, d}));
    (void)bl::pool::apply(seq, in, grid, cfg, matrix_view<Eigen::half>(oh.data(), {k, d}));
    (void)bl::pool::apply(seq, in, grid, cfg, matrix_view<Eigen::bfloat16>(ob.data(), {k, d}));
    const index_t pc = (grid.cols + w - 1) / w;
    for (index_t o = 0; o < k; ++o) {
      const index_t r0 = o / pc * w, c0 = o % pc * w;
      for (index_t c = 0; c < d; ++c) {
        float sum = 0.0f;
        index_t count = 0;
        for (index_t r = r0; r < std::min(r0 + w, grid.rows); ++r) {
          for (index_t q = c0; q < std::min(c0 + w, grid.cols); ++q, ++count) {
            sum += static_cast<float>(f[static_cast<std::size_t>((r * grid.cols + q) * d + c)]);
          }
        }
        const float want = sum / static_cast<float>(count);
        const auto at = static_cast<std::size_t>(o * d + c);
        std::uint32_t a, b;
        std::memcpy(&a, &out[at], 4);
        std::memcpy(&b, &want, 4);
        ASSERT_EQ(a, b) << "window " << w << " output " << o << " channel " << c;
        ASSERT_EQ(Eigen::numext::bit_cast<std::uint16_t>(oh[at]), Eigen::numext::bit_cast<std::uint16_t>(Eigen::half(want)));
        ASSERT_EQ(Eigen::numext::bit_cast<std::uint16_t>(ob[at]), Eigen::numext::bit_cast<std::uint16_t>(Eigen::bfloat16(want)));
      }
    }
  }
}

TEST(Baselines, PoolIsWindowSumOverCountBitForBit) {
  expect_pool_is_window_sum_over_count<float>();
  expect_pool_is_window_sum_over_count<Eigen::half>();
  expect_pool_is_window_sum_over_count<Eigen::bfloat16>();
}

TEST(Baselines, PoolCountsAndBadInputs) {
  EXPECT_EQ(bl::pool::keep_count({24, 24}, {}), 144);
  EXPECT_EQ(bl::pool::keep_count({3, 5}, {}), 6);
  EXPECT_EQ(bl::pool::keep_count({24, 24}, {.window = 1}), 576);
  EXPECT_EQ(bl::pool::keep_count({0, 0}, {}), 0);
  expect_error([] { (void)bl::pool::keep_count({3, 3}, {.partial_windows = false}); }, errc::shape_mismatch, "pool.grid = 3x3");
  expect_error([] { (void)bl::pool::keep_count({4, 4}, {.window = 0}); }, errc::invalid_argument, "pool.window = 0");
  std::vector<float> f(9), out(4);
  expect_error([&] { (void)bl::pool::apply(seq, matrix_view<const float>(f.data(), {9, 1}), {2, 4}, {}, matrix_view<float>(out.data(), {4, 1})); },
               errc::shape_mismatch, "pool.grid = 2x4");
  expect_error([&] { (void)bl::pool::apply(seq, matrix_view<const float>(f.data(), {9, 1}), {3, 3}, {}, matrix_view<float>(out.data(), {3, 1})); },
               errc::shape_mismatch, "pool.out.extent(0) = 3");
  std::vector<float> wide(8);
  expect_error([&] { (void)bl::pool::apply(seq, matrix_view<const float>(f.data(), {9, 1}), {3, 3}, {}, matrix_view<float>(wide.data(), {4, 2})); },
               errc::shape_mismatch, "pool.out.extent(1) = 2");
  // empty grid
  const auto r = bl::pool::apply(seq, matrix_view<const float>(nullptr, {0, 4}), {0, 0}, {}, matrix_view<float>(nullptr, {0, 4}));
  EXPECT_EQ(r.count, 0);
}

TEST(Baselines, PoolStridedTypesAndPolicies) {
  // 24 x 24 x 16 features; transposed storage and bf16 output give the same numbers.
  const index_t n = 576, d = 16;
  std::vector<float> f(n * d), ft(n * d);
  for (index_t i = 0; i < n * d; ++i) f[i] = std::sin(0.37f * static_cast<float>(i));
  for (index_t i = 0; i < n; ++i) {
    for (index_t c = 0; c < d; ++c) ft[c * n + i] = f[i * d + c];
  }
  std::vector<float> a(144 * d), b(144 * d), c(144 * d);
  (void)bl::pool::apply(seq, matrix_view<const float>(f.data(), {n, d}), {24, 24}, {}, matrix_view<float>(a.data(), {144, d}));
  (void)bl::pool::apply(threaded_policy{.threads = 3}, matrix_view<const float>(f.data(), {n, d}), {24, 24}, {},
                  matrix_view<float>(b.data(), {144, d}));
  (void)bl::pool::apply(seq, matrix_view<const float>(ft.data(), {n, d}, {1, n}), {24, 24}, {},
                  matrix_view<float>(c.data(), {144, d}, {1, 144}));
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
  for (index_t o = 0; o < 144; ++o) {
    for (index_t k = 0; k < d; ++k) EXPECT_EQ(a[o * d + k], c[k * 144 + o]);
  }
  // spot check one window: output (1, 2) averages tokens (2,4) (2,5) (3,4) (3,5)
  const index_t o = 1 * 12 + 2;
  for (index_t k = 0; k < d; ++k) {
    const float s = f[(2 * 24 + 4) * d + k] + f[(2 * 24 + 5) * d + k] + f[(3 * 24 + 4) * d + k] + f[(3 * 24 + 5) * d + k];
    EXPECT_EQ(a[o * d + k], s / 4.0f);
  }
  std::vector<Eigen::bfloat16> hb(144 * d);
  (void)bl::pool::apply(seq, matrix_view<const float>(f.data(), {n, d}), {24, 24}, {}, matrix_view<Eigen::bfloat16>(hb.data(), {144, d}));
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_EQ(static_cast<float>(hb[i]), static_cast<float>(Eigen::bfloat16(a[i])));
}

TEST(Baselines, PoolBatches) {
  const index_t d = 2;
  std::vector<float> f(3 * 16 * d);
  for (std::size_t i = 0; i < f.size(); ++i) f[i] = static_cast<float>(i % 29);
  std::vector<float> out(3 * 4 * d);
  std::vector<bl::pool::result> results(3);
  bl::pool::apply(par, feature_view<const float>(f.data(), {3, 16, d}), {4, 4}, {}, feature_view<float>(out.data(), {3, 4, d}),
                  std::span(results));
  for (index_t b = 0; b < 3; ++b) {
    std::vector<float> one(4 * d);
    (void)bl::pool::apply(seq, matrix_view<const float>(f.data() + b * 16 * d, {16, d}), {4, 4}, {}, matrix_view<float>(one.data(), {4, d}));
    EXPECT_EQ(std::vector<float>(out.begin() + b * 4 * d, out.begin() + (b + 1) * 4 * d), one);
    EXPECT_EQ(results[b].count, 4);
  }
  // ragged: 4x4 and 3x3 grids
  std::vector<matrix_view<const float>> fv{{f.data(), {16, d}}, {f.data() + 32, {9, d}}};
  const std::vector<token_grid> grids{{4, 4}, {3, 3}};
  std::vector<float> o0(8), o1(8);
  std::vector<matrix_view<float>> ov{{o0.data(), {4, d}}, {o1.data(), {4, d}}};
  bl::pool::apply(par, std::span<const matrix_view<const float>>(fv), std::span<const token_grid>(grids), {},
                  std::span<const matrix_view<float>>(ov), std::span(results).first(2));
  EXPECT_EQ(std::vector<float>(o0.begin(), o0.end()), std::vector<float>(out.begin(), out.begin() + 8));
  std::vector<float> one(8);
  (void)bl::pool::apply(seq, fv[1], grids[1], {}, matrix_view<float>(one.data(), {4, d}));
  EXPECT_EQ(o1, one);
  EXPECT_EQ(results[1].grid.rows, 2);
}

// ---- issue 18: k of n in O(k) memory ---------------------------------------------------------

namespace {
// The documented draw, on a full permutation (the dense path): the reference for the sparse one.
std::vector<token_index> random_reference(index_t n, index_t k, std::uint64_t seed, std::uint64_t stream) {
  std::vector<index_t> perm(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) perm[static_cast<std::size_t>(i)] = i;
  bl::detail::splitmix64 rng(seed + stream * bl::random::stream_step);
  for (index_t i = 0; i < k; ++i) {
    const auto j = i + static_cast<index_t>(rng.below(static_cast<std::uint64_t>(n - i)));
    std::swap(perm[static_cast<std::size_t>(i)], perm[static_cast<std::size_t>(j)]);
  }
  std::vector<token_index> out(perm.begin(), perm.begin() + k);
  std::sort(out.begin(), out.end());
  return out;
}
}  // namespace

TEST(Baselines, RandomSparsePathDrawsTheSameTokens) {
  for (const index_t n : {4097, 10000, 250000}) {
    for (const index_t k : {1, 3, 50, 1000}) {
      for (const std::uint64_t seed : {0ull, 7ull, 0xFFFFFFFFFFFFFFFFull}) {
        const bl::random::config cfg{.count = k, .seed = seed};
        EXPECT_EQ(random_indices(n, cfg, 3), random_reference(n, k, seed, 3)) << "n " << n << " k " << k;
      }
    }
  }
}

TEST(Baselines, RandomFewOfHugeNNeedsMemoryOfK) {
  // 3 of 2^31 - 1 tokens: a permutation of n would need 8 GB; the sparse draw needs a few entries.
  const index_t n = std::numeric_limits<token_index>::max();
  const auto kept = random_indices(n, bl::random::config{.count = 3, .seed = 1});
  ASSERT_EQ(kept.size(), 3u);
  EXPECT_TRUE(std::is_sorted(kept.begin(), kept.end()));
  EXPECT_EQ(std::set<token_index>(kept.begin(), kept.end()).size(), 3u);
  for (const auto i : kept) EXPECT_GE(i, 0);
}
