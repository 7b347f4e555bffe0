// VisPruner: conformance with the independent float64 reference tools/reference/vispruner_reference.py
// (its printed output is pasted below), CLS row / Q-K sources, budgets, errors, seq == par, batches.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "tokensel/methods/vispruner.hpp"

using namespace tokensel;

namespace {

constexpr index_t N = 49, heads = 2, D = 8;  // 48 patches + CLS

// The reference's inputs: CLS rows (multiples of 1/64) and patch features (multiples of 1/8);
// the other query rows of the [heads, N, N] map are NaN: they are never read.
struct sample {
  std::vector<float> attention, cls_rows, features;
  sample() : attention(heads * N * N, std::numeric_limits<float>::quiet_NaN()), cls_rows(heads * N), features((N - 1) * D) {
    for (index_t j = 0; j < N; ++j) {
      cls_rows[j] = static_cast<float>((j * 13 + 5) % 37 + 1) / 64.0f;
      cls_rows[N + j] = static_cast<float>((j * 7 + 3) % 41 + 1) / 64.0f;
      attention[j] = cls_rows[j];
      attention[N * N + j] = cls_rows[N + j];
    }
    for (index_t p = 0; p < N - 1; ++p)
      for (index_t c = 0; c < D; ++c) features[p * D + c] = static_cast<float>((((p * 9 + c * 5 + 2) * (p + 2 * c + 1)) % 59) - 29) / 8.0f;
  }
  head_attention_view<float> a() const { return {attention.data(), {heads, N, N}}; }
  matrix_view<const float> x() const { return {features.data(), {N - 1, D}}; }
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

TEST(VisPruner, MatchesIndependentReference) {
  struct expected {
    index_t t;
    double important_ratio;
    std::vector<token_index> kept;
    index_t rounds;
  };
  // python3 tools/reference/vispruner_reference.py (float64; smallest gap between two duplicate scores 2.6e-4).
  const std::vector<expected> cases = {
      {16, 0.5, {4, 9, 15, 18, 19, 21, 22, 25, 27, 32, 38, 42, 43, 44, 45, 47}, 4},
      {10, 0.3, {3, 4, 6, 7, 10, 16, 20, 21, 27, 38}, 5},
      {5, 0.0, {15, 16, 22, 28, 35}, 6},
      {24, 1.0, {1, 3, 4, 7, 9, 10, 14, 15, 16, 18, 20, 21, 24, 26, 27, 32, 33, 37, 38, 39, 41, 43, 44, 45}, 0},
      {40, 0.5, {0, 1, 3, 4, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 35, 37, 38, 39, 41, 42, 43, 44, 45, 46}, 1},
      {9, 0.5, {4, 12, 16, 21, 22, 27, 38, 42, 44}, 6},
  };
  const sample s;
  for (const auto& c : cases) {
    const vispruner::config cfg{.count = c.t, .important_ratio = c.important_ratio};
    std::vector<token_index> out(static_cast<std::size_t>(c.t)), row(static_cast<std::size_t>(c.t));
    const auto r = vispruner::select(seq, s.a(), s.x(), cfg, std::span(out));
    EXPECT_EQ(out, c.kept) << "T " << c.t << " r " << c.important_ratio;
    EXPECT_EQ(r.rounds, c.rounds);
    EXPECT_EQ(r.important + r.diverse, c.t);
    // The CLS query row alone ([heads, 1, N]) gives the same.
    (void)vispruner::select(par, head_attention_view<float>(s.cls_rows.data(), {heads, 1, N}), s.x(), cfg, std::span(row));
    EXPECT_EQ(row, c.kept);
  }
}

TEST(VisPruner, FromQueriesAndKeys) {
  // Q/K source of a random layer: same selection as the materialised softmax map.
  std::mt19937 gen(2);
  std::normal_distribution<float> g;
  const index_t n = 37, h = 3, dh = 8;
  std::vector<float> q(h * n * dh), k(h * n * dh), x((n - 1) * 5), map(h * n * n);
  for (auto& v : q) v = g(gen);
  for (auto& v : k) v = g(gen);
  for (auto& v : x) v = g(gen);
  qk_source<float> src{tensor_view<const float, 3>(q.data(), {h, n, dh}), tensor_view<const float, 3>(k.data(), {h, n, dh})};
  materialize_attention(seq, src, tensor_view<float, 3>(map.data(), {h, n, n}));
  std::vector<token_index> a(12), b(12);
  const vispruner::config cfg{.count = 12};
  (void)vispruner::select(seq, head_attention_view<float>(map.data(), {h, n, n}), matrix_view<const float>(x.data(), {n - 1, 5}), cfg, std::span(a));
  (void)vispruner::select(seq, src, matrix_view<const float>(x.data(), {n - 1, 5}), cfg, std::span(b));
  EXPECT_EQ(a, b);
}

TEST(VisPruner, BudgetAndRequirements) {
  EXPECT_EQ(vispruner::keep_count(576, {}), 64);
  EXPECT_EQ(vispruner::keep_count(0, {}), 0);
  EXPECT_EQ(vispruner::keep_count(576, {.ratio = 0.25}), 144);
  EXPECT_EQ(vispruner::important_count(64, {}), 32);
  EXPECT_EQ(vispruner::important_count(9, {}), 4);
  EXPECT_EQ(vispruner::keep_count(576, vispruner::with_budget(budget::count(128), 576)), 128);
  const auto req = vispruner::requirements(vispruner::with_budget(budget::fraction(0.25), 576), {576, true, 22, 24});
  EXPECT_EQ(req.layers.first, 22);
  EXPECT_TRUE(req.cls_row && req.hidden_states);
  EXPECT_FALSE(req.full_maps || req.keys);
  EXPECT_EQ(req.keep, 144);
  expect_error([] { (void)vispruner::requirements({}, {576, false, 22, 24}); }, errc::invalid_argument, "vispruner.model");
  expect_error([] { (void)vispruner::keep_count(10, {.important_ratio = 1.5}); }, errc::invalid_argument, "vispruner.important_ratio = 1.5");
  expect_error([] { (void)vispruner::keep_count(10, {.count = 11}); }, errc::invalid_argument, "vispruner.count = 11");
  expect_error([] { (void)vispruner::keep_count(10, {.ratio = 0.5, .count = 2}); }, errc::invalid_argument, "vispruner.ratio/vispruner.count");
}

TEST(VisPruner, BadInputs) {
  sample s;
  std::vector<token_index> out(16);
  const vispruner::config cfg{.count = 16};
  s.attention[N * N + 7] = std::numeric_limits<float>::infinity();
  expect_error([&] { (void)vispruner::select(seq, s.a(), s.x(), cfg, std::span(out)); }, errc::non_finite, "vispruner.attention[:, 0, 7]");
  sample t;
  t.features[30 * D + 1] = std::numeric_limits<float>::quiet_NaN();
  // Patch 30 is among the remaining ones for this budget: its features are read.
  expect_error([&] { (void)vispruner::select(seq, t.a(), t.x(), {.count = 4}, std::span(out)); }, errc::non_finite, "vispruner.features[30, 1]");
  expect_error([&] { (void)vispruner::select(seq, s.a(), matrix_view<const float>(s.features.data(), {N, D}), cfg, std::span(out)); },
               errc::shape_mismatch, "vispruner.features.extent(0) = 49");
  expect_error([&] { (void)vispruner::select(seq, head_attention_view<float>(s.attention.data(), {heads, 3, N}), s.x(), cfg, std::span(out)); },
               errc::shape_mismatch, "vispruner.attention.extent(1) = 3");
  const sample u;
  expect_error([&] { (void)vispruner::select(seq, u.a(), u.x(), cfg, std::span(out).first(15)); }, errc::shape_mismatch, "vispruner.out.size() = 15");
}

TEST(VisPruner, SequentialEqualsThreadedAndBatches) {
  std::mt19937 gen(9);
  std::normal_distribution<float> g;
  const index_t n = 145, h = 4, d = 32;
  std::vector<float> attn(h * n), x((n - 1) * d);
  for (auto& v : attn) v = std::exp(g(gen));
  for (auto& v : x) v = g(gen);
  const head_attention_view<float> a(attn.data(), {h, 1, n});
  const matrix_view<const float> xv(x.data(), {n - 1, d});
  const vispruner::config cfg{.count = 36};
  std::vector<token_index> s1(36), s2(36), s3(36);
  (void)vispruner::select(seq, a, xv, cfg, std::span(s1));
  (void)vispruner::select(threaded_policy{.threads = 3}, a, xv, cfg, std::span(s2));
  EXPECT_EQ(s1, s2);
  std::vector<Eigen::half> xh(x.begin(), x.end());
  (void)vispruner::select(par, a, matrix_view<const Eigen::half>(xh.data(), {n - 1, d}), cfg, std::span(s3));
  EXPECT_TRUE(std::is_sorted(s3.begin(), s3.end()));
  // Dense batch of two copies, and a ragged batch with an empty image.
  std::vector<float> a2(attn), x2(x);
  a2.insert(a2.end(), attn.begin(), attn.end());
  x2.insert(x2.end(), x.begin(), x.end());
  std::vector<token_index> idx(2 * 36), counts(2);
  vispruner::select(par, attention_view<float>(a2.data(), {2, h, 1, n}), feature_view<const float>(x2.data(), {2, n - 1, d}), cfg,
                    selection_batch{tensor_view<token_index, 2>(idx.data(), {2, 36}), std::span(counts)});
  EXPECT_EQ(std::vector<token_index>(idx.begin(), idx.begin() + 36), s1);
  EXPECT_EQ(std::vector<token_index>(idx.begin() + 36, idx.end()), s1);
  std::vector<head_attention_view<float>> av{a, {nullptr, {h, 0, 0}}};
  std::vector<matrix_view<const float>> fv{xv, {nullptr, {0, d}}};
  vispruner::select(par, std::span<const head_attention_view<float>>(av), std::span<const matrix_view<const float>>(fv), cfg,
                    selection_batch{tensor_view<token_index, 2>(idx.data(), {2, 36}), std::span(counts)});
  EXPECT_EQ(std::vector<token_index>(idx.begin(), idx.begin() + 36), s1);
  EXPECT_EQ(counts, (std::vector<token_index>{36, 0}));
}
