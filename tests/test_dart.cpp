// DART: conformance with the independent float64 reference tools/reference/dart_reference.py
// (its printed output is pasted below), budget split, errors, seq == par, dtypes, batches.
#include <gtest/gtest.h>

#include <limits>
#include <random>
#include <string>
#include <vector>

#include "tokensel/methods/dart.hpp"

using namespace tokensel;

namespace {

// The reference's inputs: L = 30 tokens, visual span [3, 23), 2 heads x d_head 4, D = 6.
constexpr index_t L = 30, begin = 3, n = 20, heads = 2, dh = 4, D = 6;

struct sample {
  std::vector<float> keys, hidden, weight;
  sample() : keys(heads * L * dh), hidden(L * D), weight(D) {
    for (index_t t = 0; t < L; ++t) {
      for (index_t c = 0; c < heads * dh; ++c) {
        const float v = static_cast<float>((((t * 5 + c * 3 + 1) * (t + c + 2)) % 29) - 14) / 8.0f;
        keys[((c / dh) * L + t) * dh + c % dh] = v;  // [heads, L, d_head]; c = head * d_head + channel
      }
      for (index_t h = 0; h < D; ++h) hidden[t * D + h] = static_cast<float>((((t * 11 + h * 7 + 3) * (2 * t + h + 1)) % 31) - 15) / 8.0f;
    }
    for (index_t h = 0; h < D; ++h) weight[h] = static_cast<float>(h % 3 + 1) / 2.0f;
  }
  tensor_view<const float, 3> k() const { return {keys.data(), {heads, L, dh}}; }
  matrix_view<const float> x() const { return {hidden.data(), {L, D}}; }
  vector_view<const float> w() const { return {weight.data(), {D}}; }
};

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

TEST(Dart, MatchesIndependentReference) {
  struct expected {
    index_t k, pi, pt;
    std::vector<token_index> kept;
  };
  // python3 tools/reference/dart_reference.py (float64; smallest similarity gap at a cut 5.0e-5).
  const std::vector<expected> cases = {
      {8, 4, 4, {2, 3, 5, 10, 11, 13, 16, 17}},
      {8, 2, 2, {5, 7, 10, 11, 13, 15, 16, 17}},
      {13, 3, 2, {0, 2, 5, 7, 9, 10, 11, 12, 13, 15, 16, 17, 19}},
      {4, 4, 4, {2, 10, 13, 16}},
      {20, 4, 4, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19}},
      {6, 0, 3, {9, 10, 11, 15, 16, 17}},
  };
  const sample s;
  for (const auto& c : cases) {
    std::vector<token_index> out(static_cast<std::size_t>(c.k));
    const dart::config cfg{.count = c.k, .image_pivots = c.pi, .text_pivots = c.pt};
    const auto r = dart::select(seq, s.k(), s.x(), s.w(), token_range{begin, n}, cfg, std::span(out));
    EXPECT_EQ(out, c.kept) << "k " << c.k << " pivots " << c.pi << "+" << c.pt;
    EXPECT_EQ(r.count, c.k);
    EXPECT_EQ(r.image_pivots, std::min(c.pi, c.k));
    EXPECT_EQ(r.text_pivots, c.pt);
  }
}

TEST(Dart, KeepCountBudgetRequirements) {
  EXPECT_EQ(dart::keep_count(576, {}), 127);  // floor(576 * 0.222)
  EXPECT_EQ(dart::keep_count(576, {.count = 132}), 132);
  EXPECT_EQ(dart::keep_count(0, {}), 0);
  EXPECT_EQ(dart::keep_count(576, dart::with_budget(budget::fraction(0.25), 576)), 144);
  const auto cfg = dart::with_budget(budget::count(64), 576, {.layer = 3});
  EXPECT_EQ(cfg.layer, 3);
  const auto req = dart::requirements(cfg, {576, true, 22, 24});
  EXPECT_EQ(req.stage, stage::llm);
  EXPECT_EQ(req.layers.first, 2);
  EXPECT_EQ(req.layers.last, 2);
  EXPECT_TRUE(req.keys && req.hidden_states);
  EXPECT_FALSE(req.full_maps || req.cls_row || req.last_query_row);
  EXPECT_EQ(req.keep, 64);
  expect_error([] { (void)dart::keep_count(10, {.layer = 0}); }, errc::invalid_argument, "dart.layer = 0");
  expect_error([] { (void)dart::keep_count(10, {.image_pivots = 0, .text_pivots = 0}); }, errc::invalid_argument,
               "dart.image_pivots + dart.text_pivots = 0");
  expect_error([] { (void)dart::keep_count(10, {.count = 11}); }, errc::invalid_argument, "dart.count = 11");
  expect_error([] { (void)dart::keep_count(10, {.ratio = 0.5, .count = 1}); }, errc::invalid_argument, "dart.ratio/dart.count");
}

TEST(Dart, NoTextTokens) {
  // The visual span ends the sequence: only the image pivots take tokens.
  const sample s;
  std::vector<token_index> a(8), b(8);
  (void)dart::select(seq, s.k(), s.x(), s.w(), token_range{begin, L - begin}, {.count = 8}, std::span(a));
  EXPECT_TRUE(std::is_sorted(a.begin(), a.end()));
  expect_error([&] { (void)dart::select(seq, s.k(), s.x(), s.w(), token_range{begin, L - begin}, {.count = 8, .image_pivots = 0, .text_pivots = 2}, std::span(b)); },
               errc::invalid_argument, "dart.image_pivots = 0");
}

TEST(Dart, BadInputs) {
  sample s;
  std::vector<token_index> out(8);
  const dart::config cfg{.count = 8};
  auto call = [&](const sample& t, token_range v, std::span<token_index> o) { (void)dart::select(seq, t.k(), t.x(), t.w(), v, cfg, o); };
  expect_error([&] { call(s, {25, 10}, out); }, errc::invalid_argument, "dart.visual");
  expect_error([&] { call(s, {begin, n}, std::span(out).first(7)); }, errc::shape_mismatch, "dart.out.size() = 7");
  expect_error([&] { (void)dart::select(seq, tensor_view<const float, 3>(s.keys.data(), {heads, L - 1, dh}), s.x(), s.w(), {begin, n}, cfg, std::span(out)); },
               errc::shape_mismatch, "dart.keys.extent(1) = 29");
  expect_error([&] { (void)dart::select(seq, s.k(), s.x(), vector_view<const float>(s.weight.data(), {5}), {begin, n}, cfg, std::span(out)); },
               errc::shape_mismatch, "dart.norm_weight.extent(0) = 5");
  sample bad = s;
  bad.keys[(1 * L + 7) * dh + 2] = std::numeric_limits<float>::infinity();
  expect_error([&] { call(bad, {begin, n}, out); }, errc::non_finite, "dart.keys[1, 7, 2]");
  bad = s;
  bad.hidden[9 * D + 4] = std::numeric_limits<float>::quiet_NaN();
  expect_error([&] { call(bad, {begin, n}, out); }, errc::non_finite, "dart.hidden[9, 4]");
}

TEST(Dart, SequentialEqualsThreadedAndHalfInputs) {
  std::mt19937 gen(5);
  std::normal_distribution<float> g;
  const index_t len = 700, s0 = 35, nv = 576, kh = 4, kd = 16, d = 64;
  std::vector<float> keys(kh * len * kd), hidden(len * d), w(d);
  for (auto& v : keys) v = g(gen);
  for (auto& v : hidden) v = g(gen);
  for (auto& v : w) v = 1.0f + 0.1f * g(gen);
  const tensor_view<const float, 3> kv(keys.data(), {kh, len, kd});
  const matrix_view<const float> xv(hidden.data(), {len, d});
  const vector_view<const float> wv(w.data(), {d});
  const dart::config cfg{.count = 128};
  std::vector<token_index> a(128), b(128), c(128);
  (void)dart::select(seq, kv, xv, wv, {s0, nv}, cfg, std::span(a));
  (void)dart::select(threaded_policy{.threads = 3}, kv, xv, wv, {s0, nv}, cfg, std::span(b));
  EXPECT_EQ(a, b);
  std::vector<Eigen::half> kh16(keys.begin(), keys.end());
  std::vector<Eigen::bfloat16> xb16(hidden.begin(), hidden.end());
  (void)dart::select(par, tensor_view<const Eigen::half, 3>(kh16.data(), {kh, len, kd}), matrix_view<const Eigen::bfloat16>(xb16.data(), {len, d}),
               wv, {s0, nv}, cfg, std::span(c));
  EXPECT_TRUE(std::is_sorted(c.begin(), c.end()));
  EXPECT_LT(c.back(), nv);
}

TEST(Dart, BatchedMatchesSingle) {
  const sample s;
  std::vector<float> keys, hidden;
  for (int b = 0; b < 2; ++b) {
    keys.insert(keys.end(), s.keys.begin(), s.keys.end());
    hidden.insert(hidden.end(), s.hidden.begin(), s.hidden.end());
  }
  std::vector<token_index> idx(2 * 8), counts(2);
  dart::select(par, tensor_view<const float, 4>(keys.data(), {2, heads, L, dh}), feature_view<const float>(hidden.data(), {2, L, D}), s.w(),
               token_range{begin, n}, {.count = 8}, selection_batch{tensor_view<token_index, 2>(idx.data(), {2, 8}), std::span(counts)});
  const std::vector<token_index> expected{2, 3, 5, 10, 11, 13, 16, 17};
  EXPECT_EQ(std::vector<token_index>(idx.begin(), idx.begin() + 8), expected);
  EXPECT_EQ(std::vector<token_index>(idx.begin() + 8, idx.end()), expected);
  std::vector<tensor_view<const float, 3>> kv{s.k(), s.k()};
  std::vector<matrix_view<const float>> xv{s.x(), s.x()};
  std::vector<token_range> spans{{begin, n}, {begin, 0}};
  dart::select(par, std::span<const tensor_view<const float, 3>>(kv), std::span<const matrix_view<const float>>(xv), s.w(),
               std::span<const token_range>(spans), {.count = 8}, selection_batch{tensor_view<token_index, 2>(idx.data(), {2, 8}), std::span(counts)});
  EXPECT_EQ(std::vector<token_index>(idx.begin(), idx.begin() + 8), expected);
  EXPECT_EQ(counts, (std::vector<token_index>{8, 0}));
}
