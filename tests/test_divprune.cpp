// DivPrune: conformance with the independent float64 reference tools/reference/divprune_reference.py
// (its printed output is pasted below), tie rule, budgets, errors, seq == par, dtypes, batches.
#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "tokensel/methods/divprune.hpp"

using namespace tokensel;

namespace {

// The reference's inputs(n, d, salt): (((i*7 + c*5 + salt) * (i + 3c + 1)) % 33 - 16) / 8, exact in fp32.
std::vector<float> inputs(index_t n, index_t d, index_t salt) {
  std::vector<float> x(static_cast<std::size_t>(n * d));
  for (index_t i = 0; i < n; ++i)
    for (index_t c = 0; c < d; ++c) x[i * d + c] = static_cast<float>((((i * 7 + c * 5 + salt) * (i + 3 * c + 1)) % 33) - 16) / 8.0f;
  return x;
}

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

}  // namespace

TEST(DivPrune, MatchesIndependentReference) {
  struct expected {
    index_t n, d, salt, k;
    std::vector<token_index> kept, order;
    double min_distance;
  };
  // python3 tools/reference/divprune_reference.py (float64; smallest non-zero score gap 1.6e-4).
  const std::vector<expected> cases = {
      {24, 6, 0, 5, {4, 13, 15, 22, 23}, {23, 15, 4, 13, 22}, 0.7067622472631205},
      {24, 6, 0, 12, {2, 3, 4, 5, 6, 13, 14, 15, 16, 21, 22, 23}, {23, 15, 4, 13, 22, 14, 3, 5, 6, 21, 16, 2}, 0.44706918689909037},
      {40, 16, 3, 10, {5, 10, 11, 13, 14, 18, 21, 24, 28, 31}, {24, 10, 31, 5, 11, 13, 18, 14, 28, 21}, 0.7591846310793391},
      {17, 5, 11, 17, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
       {15, 7, 9, 2, 5, 4, 8, 1, 13, 6, 3, 16, 12, 11, 10, 0, 14}, 0.06630043815214759},
  };
  for (const auto& c : cases) {
    const auto x = inputs(c.n, c.d, c.salt);
    std::vector<token_index> out(static_cast<std::size_t>(c.k)), order(static_cast<std::size_t>(c.k));
    const auto r = divprune::select(seq, matrix_view<const float>(x.data(), {c.n, c.d}), {.count = c.k}, std::span(out), std::span(order));
    EXPECT_EQ(out, c.kept) << "n " << c.n << " k " << c.k;
    EXPECT_EQ(order, c.order) << "n " << c.n << " k " << c.k;
    EXPECT_EQ(r.count, c.k);
    EXPECT_NEAR(r.min_distance, c.min_distance, 1e-5);
  }
}

TEST(DivPrune, KeepCountAndBudget) {
  EXPECT_EQ(divprune::keep_count(576, {}), 56);  // official default 0.098: round(56.448)
  EXPECT_EQ(divprune::keep_count(0, {}), 0);
  EXPECT_EQ(divprune::keep_count(10, {.ratio = 0.25}), 2);   // round(2.5) = 2 (half to even)
  EXPECT_EQ(divprune::keep_count(14, {.ratio = 0.25}), 4);   // round(3.5) = 4
  EXPECT_EQ(divprune::keep_count(10, {.ratio = 0.01}), 1);   // at least one
  EXPECT_EQ(divprune::keep_count(10, {.count = 7}), 7);
  EXPECT_EQ(divprune::keep_count(576, divprune::with_budget(budget::count(144), 576)), 144);
  EXPECT_EQ(divprune::keep_count(576, divprune::with_budget(budget::fraction(0.25), 576)), 144);
  const auto req = divprune::requirements(divprune::with_budget(budget::count(64), 576), {576, true, 22, 24});
  EXPECT_EQ(req.keep, 64);
  EXPECT_EQ(req.output_rows, 64);
  EXPECT_TRUE(req.hidden_states);
  EXPECT_TRUE(req.layers.empty());
  EXPECT_FALSE(req.cls_row || req.full_maps || req.keys);
  expect_error([] { (void)divprune::keep_count(5, {.count = 6}); }, errc::invalid_argument, "divprune.count = 6");
  expect_error([] { (void)divprune::keep_count(5, {.ratio = 0.5, .count = 2}); }, errc::invalid_argument, "divprune.ratio/divprune.count");
  expect_error([] { (void)divprune::keep_count(5, {.ratio = 0.0}); }, errc::invalid_argument, "divprune.ratio = 0");
  expect_error([] { (void)divprune::keep_count(5, {.count = 0}); }, errc::invalid_argument, "divprune.count = 0");
  expect_error([] { (void)divprune::with_budget(budget::count(9), 8); }, errc::invalid_argument, "budget.count = 9");
}

TEST(DivPrune, TiesAndDegenerateRows) {
  // Four identical rows and one orthogonal: every nearest-neighbour distance of the copies is 0,
  // the orthogonal row's is 1 -> first pick 4; then all copies are at distance 1 -> lowest index 0.
  const std::vector<float> x = {1, 0, 1, 0, 1, 0, 1, 0, 0, 1};
  std::vector<token_index> out(2), order(2);
  (void)divprune::select(seq, matrix_view<const float>(x.data(), {5, 2}), {.count = 2}, std::span(out), std::span(order));
  EXPECT_EQ(order, (std::vector<token_index>{4, 0}));
  EXPECT_EQ(out, (std::vector<token_index>{0, 4}));
  // A zero row has cosine 0 with everything (distance 1), never NaN.
  const std::vector<float> z = {0, 0, 1, 0, 1, 0};
  std::vector<token_index> o2(2);
  const auto r = divprune::select(seq, matrix_view<const float>(z.data(), {3, 2}), {.count = 2}, std::span(o2));
  EXPECT_EQ(o2, (std::vector<token_index>{0, 1}));
  EXPECT_EQ(r.min_distance, 1.0f);
  // One token.
  std::vector<token_index> o1(1);
  (void)divprune::select(seq, matrix_view<const float>(z.data(), {1, 2}), {.ratio = 1.0}, std::span(o1));
  EXPECT_EQ(o1[0], 0);
  // Empty sample.
  std::vector<token_index> none;
  EXPECT_EQ(divprune::select(seq, matrix_view<const float>(nullptr, {0, 2}), {}, std::span(none)).count, 0);
}

TEST(DivPrune, BadInputs) {
  auto x = inputs(8, 3, 1);
  std::vector<token_index> out(4);
  x[5 * 3 + 2] = std::numeric_limits<float>::quiet_NaN();
  expect_error([&] { (void)divprune::select(seq, matrix_view<const float>(x.data(), {8, 3}), {.count = 4}, std::span(out)); },
               errc::non_finite, "divprune.features[5, 2]");
  expect_error([&] { (void)divprune::select(seq, matrix_view<const float>(x.data(), {8, 3}), {.count = 4}, std::span(out).first(3)); },
               errc::shape_mismatch, "divprune.out.size() = 3");
  expect_error([&] { (void)divprune::select(seq, matrix_view<const float>(x.data(), {8, 0}), {.count = 4}, std::span(out)); },
               errc::shape_mismatch, "divprune.features.extent(1) = 0");
  expect_error([&] { (void)divprune::select(seq, matrix_view<const float>(x.data(), {3, 3}), {.count = 4}, std::span(out)); },
               errc::invalid_argument, "divprune.count = 4");
}

TEST(DivPrune, SequentialEqualsThreadedStridedAndHalf) {
  std::mt19937 gen(3);
  std::normal_distribution<float> g;
  const index_t n = 96, d = 40;
  std::vector<float> x(n * d), xt(n * d);
  for (auto& v : x) v = g(gen);
  for (index_t i = 0; i < n; ++i)
    for (index_t c = 0; c < d; ++c) xt[c * n + i] = x[i * d + c];
  const divprune::config cfg{.count = 24};
  std::vector<token_index> a(24), b(24), c(24);
  const auto ra = divprune::select(seq, matrix_view<const float>(x.data(), {n, d}), cfg, std::span(a));
  const auto rb = divprune::select(threaded_policy{.threads = 3}, matrix_view<const float>(x.data(), {n, d}), cfg, std::span(b));
  (void)divprune::select(par, matrix_view<const float>(xt.data(), {n, d}, {1, n}), cfg, std::span(c));
  EXPECT_EQ(a, b);
  EXPECT_EQ(a, c);
  EXPECT_EQ(std::memcmp(&ra.min_distance, &rb.min_distance, sizeof(float)), 0);
  // bf16 / fp16 features: a valid selection of the same size (values rounded, so possibly other tokens).
  std::vector<Eigen::bfloat16> xb(x.begin(), x.end());
  std::vector<Eigen::half> xh(x.begin(), x.end());
  std::vector<token_index> hb(24), hh(24), hh2(24);
  EXPECT_EQ(divprune::select(par, matrix_view<const Eigen::bfloat16>(xb.data(), {n, d}), cfg, std::span(hb)).count, 24);
  (void)divprune::select(par, matrix_view<const Eigen::half>(xh.data(), {n, d}), cfg, std::span(hh));
  (void)divprune::select(seq, matrix_view<const Eigen::half>(xh.data(), {n, d}), cfg, std::span(hh2));
  EXPECT_EQ(hh, hh2);
  EXPECT_TRUE(std::is_sorted(hb.begin(), hb.end()));
}

TEST(DivPrune, BatchedMatchesSingle) {
  const index_t n = 24, d = 6;
  std::vector<float> all;
  for (index_t b = 0; b < 3; ++b) {
    const auto x = inputs(n, d, b);
    all.insert(all.end(), x.begin(), x.end());
  }
  std::vector<token_index> idx(3 * 5), counts(3);
  std::vector<divprune::result> res(3);
  divprune::select(par, feature_view<const float>(all.data(), {3, n, d}), {.count = 5},
                   selection_batch{tensor_view<token_index, 2>(idx.data(), {3, 5}), std::span(counts)}, std::span(res));
  const auto small = inputs(17, 5, 11);
  std::vector<matrix_view<const float>> ragged{{all.data(), {n, d}}, {small.data(), {17, 5}}, {nullptr, {0, 5}}};
  std::vector<token_index> ridx(3 * 5), rcounts(3);
  divprune::select(par, std::span<const matrix_view<const float>>(ragged), {.count = 5},
                   selection_batch{tensor_view<token_index, 2>(ridx.data(), {3, 5}), std::span(rcounts)});
  for (index_t b = 0; b < 3; ++b) {
    std::vector<token_index> one(5);
    (void)divprune::select(seq, matrix_view<const float>(all.data() + b * n * d, {n, d}), {.count = 5}, std::span(one));
    EXPECT_EQ(std::vector<token_index>(idx.begin() + b * 5, idx.begin() + b * 5 + 5), one);
    EXPECT_EQ(counts[b], 5);
  }
  EXPECT_EQ(std::vector<token_index>(ridx.begin(), ridx.begin() + 5), (std::vector<token_index>{4, 13, 15, 22, 23}));
  EXPECT_EQ(rcounts, (std::vector<token_index>{5, 5, 0}));
}

// The cosine table (methods/detail/cosine.hpp) holds canonical_dot(row i, row j) for every pair,
// bit for bit, in both triangles: several row bands (8 tiles each) and partial row / column
// tiles, d with a lane tail; the table starts as NaN so a cell no band writes fails.
TEST(DivPrune, CosineTableIsCanonicalDotOfEveryPair) {
  const index_t n = 101, d = 70;
  std::mt19937 rng(7);
  std::normal_distribution<float> g;
  std::vector<float> unit(static_cast<std::size_t>(n * d));
  for (auto& v : unit) v = g(rng);
  for (const bool threaded : {false, true}) {
    std::vector<float> table(static_cast<std::size_t>(n * n), std::numeric_limits<float>::quiet_NaN());
    if (threaded) {
      detail::cosine_table(threaded_policy{2}, unit.data(), n, d, std::span(table));
    } else {
      detail::cosine_table(seq, unit.data(), n, d, std::span(table));
    }
    for (index_t i = 0; i < n; ++i) {
      for (index_t j = 0; j < n; ++j) {
        const float want = detail::canonical_dot(unit.data() + i * d, unit.data() + j * d, d);
        const float got = table[static_cast<std::size_t>(i * n + j)];
        std::uint32_t a, b;
        std::memcpy(&a, &got, 4);
        std::memcpy(&b, &want, 4);
        ASSERT_EQ(a, b) << "cell (" << i << ", " << j << ")" << (threaded ? " threaded" : "");
      }
    }
  }
}
