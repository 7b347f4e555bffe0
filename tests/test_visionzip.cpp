#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "tokensel/methods/visionzip.hpp"

using namespace tokensel;

namespace {

// The hand-made case of tools/reference/visionzip_reference.py (tiny_case): N = 1 + 9 tokens,
// 2 heads, d_head 2, D 3. Only the CLS row of the attention matters; every other row is filled
// with NaN to show that it is never read.
struct tiny {
  static constexpr index_t n = 10, heads = 2, dh = 2, d = 3;
  std::vector<float> attention, keys, hidden;

  tiny() : attention(heads * n * n, std::numeric_limits<float>::quiet_NaN()), keys(heads * n * dh), hidden(n * d) {
    const float cls0[n] = {0.5f, 0.0625f, 0.0625f, 0.25f, 0.0625f, 0.25f, 0.0625f, 0.125f, 0.0625f, 0.0625f};
    const float cls1[n] = {0.5f, 0.0625f, 0.125f, 0.25f, 0.0625f, 0.125f, 0.0625f, 0.25f, 0.0625f, 0.0625f};
    for (index_t j = 0; j < n; ++j) {
      attention[0 * n * n + j] = cls0[j];
      attention[1 * n * n + j] = cls1[j];
    }
    // Head 0 alone would send token 2 to target 6 and token 4 to target 1: only the head mean
    // gives the expected assignment. Token 7's mean key (1, 1) ties between the two targets.
    const float k0[n][dh] = {{0.5f, 0.5f}, {2, 1},  {0.25f, 1}, {1, -1},        {1.25f, 0.5f},
                             {-1, -1},     {1, 3},  {1.5f, 0.5f}, {-1, 0.5f},   {2, -2}};
    const float k1[n][dh] = {{0.5f, 0.5f}, {2, -1}, {1.75f, -0.5f}, {1, -1},    {-0.75f, 1.5f},
                             {-1, -1},     {-1, 3}, {0.5f, 1.5f},   {-1, 0.5f}, {4, 0}};
    for (index_t i = 0; i < n; ++i) {
      for (index_t c = 0; c < dh; ++c) {
        keys[(0 * n + i) * dh + c] = k0[i][c];
        keys[(1 * n + i) * dh + c] = k1[i][c];
      }
      hidden[i * d + 0] = static_cast<float>(i);
      hidden[i * d + 1] = static_cast<float>(2 * i + 1);
      hidden[i * d + 2] = static_cast<float>(i % 3 - 1);
    }
  }
  head_attention_view<float> attention_view() const { return {attention.data(), {heads, n, n}}; }
  tensor_view<const float, 3> keys_view() const { return {keys.data(), {heads, n, dh}}; }
  matrix_view<const float> hidden_view() const { return {hidden.data(), {n, d}}; }
};

struct output {
  std::vector<token_index> idx;
  std::vector<float> rows;
  visionzip::result res;
};

template <class Policy>
output run(const Policy& policy, const tiny& t, const visionzip::config& cfg) {
  const index_t k = visionzip::keep_count(tiny::n, cfg);
  output o{std::vector<token_index>(k, -7), std::vector<float>(k * tiny::d, -7.0f), {}};
  o.res = visionzip::select(policy, t.attention_view(), t.keys_view(), t.hidden_view(), cfg, std::span(o.idx),
                            matrix_view<float>(o.rows.data(), {k, tiny::d}));
  return o;
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

TEST(VisionZip, KeepCount) {
  EXPECT_EQ(visionzip::keep_count(visionzip::config{}), 64);  // LLaVA-1.5: 54 + 10
  EXPECT_EQ(visionzip::keep_count(577, {}), 64);
  EXPECT_EQ(visionzip::keep_count(0, {}), 0);
  EXPECT_EQ(visionzip::keep_count(64, {}), 64);
  EXPECT_EQ(visionzip::keep_count(10, {.dominant = 1, .contextual = 0}), 1);
  expect_error([] { (void)visionzip::keep_count(63, {}); }, errc::invalid_argument, "visionzip.dominant + visionzip.contextual = 64");
  expect_error([] { (void)visionzip::keep_count(-1, {}); }, errc::invalid_argument, "visionzip.n = -1");
  expect_error([] { (void)visionzip::keep_count(10, {.dominant = 0}); }, errc::invalid_argument, "visionzip.dominant = 0");
  expect_error([] { (void)visionzip::keep_count(10, {.dominant = 2, .contextual = -1}); }, errc::invalid_argument,
               "visionzip.contextual = -1");
}

// Expected numbers: python3 tools/reference/visionzip_reference.py, and by hand:
// CLS sums over heads (patches 1..9) .125 .1875 .5 .125 .375 .125 .375 .125 .125 -> top 2 = 3, then
// 5 (tie with 7 -> lower index). Remaining 1 2 4 6 7 8 9, step 7 / 2 = 3 -> targets 1 and 6.
// Unit mean keys: 1 -> (1, 0), 6 -> (0, 1); 2 -> t1, 4 -> t6, 7 -> tie -> t1, 8 -> t6, 9 -> t1.
// x_i = (i, 2i+1, i%3-1): t1 = x1 + mean(x2, x7, x9) = (7, 16, 0); t6 = x6 + mean(x4, x8) = (12, 26, -0.5).
TEST(VisionZip, HandComputedTinyCase) {
  const tiny t;
  const auto o = run(seq, t, {.dominant = 3, .contextual = 2});
  EXPECT_EQ(o.idx, (std::vector<token_index>{0, 3, 5, 1, 6}));
  EXPECT_EQ(o.rows, (std::vector<float>{0, 1, -1, 3, 7, -1, 5, 11, 1, 7, 16, 0, 12, 26, -0.5f}));
  EXPECT_EQ(o.res.count, 5);
  EXPECT_EQ(o.res.dominant, 3);
  EXPECT_EQ(o.res.contextual, 2);
  EXPECT_EQ(o.res.merged, 5);
}

TEST(VisionZip, TargetWithNothingAssignedIsItself) {
  // dominant 1 (CLS only), contextual 3: targets 1, 4, 7; 2 3 5 9 -> t1, 6 8 -> t4, none -> t7.
  const tiny t;
  const auto o = run(seq, t, {.dominant = 1, .contextual = 3});
  EXPECT_EQ(o.idx, (std::vector<token_index>{0, 1, 4, 7}));
  EXPECT_EQ(o.rows, (std::vector<float>{0, 1, -1, 5.75f, 13.5f, 0, 11, 24, 0, 7, 15, 0}));
  EXPECT_EQ(o.res.merged, 6);
}

TEST(VisionZip, EveryRemainingTokenATarget) {
  // contextual = R: step 1, nothing merged, the output is a permutation of the input rows.
  const tiny t;
  const auto o = run(seq, t, {.dominant = 3, .contextual = 7});
  EXPECT_EQ(o.idx, (std::vector<token_index>{0, 3, 5, 1, 2, 4, 6, 7, 8, 9}));
  for (index_t r = 0; r < 10; ++r) {
    for (index_t c = 0; c < tiny::d; ++c) EXPECT_EQ(o.rows[r * 3 + c], t.hidden[o.idx[r] * 3 + c]);
  }
  EXPECT_EQ(o.res.merged, 0);
}

TEST(VisionZip, NoContextualTokensNeedsNoKeys) {
  const tiny t;
  std::vector<token_index> idx(3);
  std::vector<float> rows(9);
  const auto res = visionzip::select(seq, t.attention_view(), tensor_view<const float, 3>{}, t.hidden_view(),
                                     {.dominant = 3, .contextual = 0}, std::span(idx),
                                     matrix_view<float>(rows.data(), {3, 3}));
  EXPECT_EQ(res.count, 3);
  EXPECT_EQ(idx, (std::vector<token_index>{0, 3, 5}));
  EXPECT_EQ(rows, (std::vector<float>{0, 1, -1, 3, 7, -1, 5, 11, 1}));
}

TEST(VisionZip, AllTokensKept) {
  const tiny t;
  const auto o = run(par, t, {.dominant = 10, .contextual = 0});
  EXPECT_EQ(o.idx, (std::vector<token_index>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
  EXPECT_EQ(o.rows, t.hidden);
}

TEST(VisionZip, ClsRowOnlyAttention) {
  // [heads, 1, N]: just the CLS query row (what a FlashAttention engine can provide).
  const tiny t;
  std::vector<float> row(2 * 10);
  for (index_t h = 0; h < 2; ++h) {
    for (index_t j = 0; j < 10; ++j) row[h * 10 + j] = t.attention[h * 100 + j];
  }
  std::vector<token_index> idx(5);
  std::vector<float> rows(15);
  (void)visionzip::select(seq, head_attention_view<float>(row.data(), {2, 1, 10}), t.keys_view(), t.hidden_view(),
                    {.dominant = 3, .contextual = 2}, std::span(idx), matrix_view<float>(rows.data(), {5, 3}));
  EXPECT_EQ(idx, (std::vector<token_index>{0, 3, 5, 1, 6}));
  EXPECT_EQ(rows, (std::vector<float>{0, 1, -1, 3, 7, -1, 5, 11, 1, 7, 16, 0, 12, 26, -0.5f}));
}

TEST(VisionZip, AllEqualScoresTieToLowerIndices) {
  // Uniform CLS attention: dominant = CLS + patches 1, 2; all keys equal: everything joins target 0.
  const index_t n = 8;
  std::vector<float> a(n * n, 1.0f / n), k(n * 2, 1.0f), x(n);
  for (index_t i = 0; i < n; ++i) x[i] = static_cast<float>(i);
  std::vector<token_index> idx(5);
  std::vector<float> rows(5);
  (void)visionzip::select(seq, head_attention_view<float>(a.data(), {1, n, n}), tensor_view<const float, 3>(k.data(), {1, n, 2}),
                    matrix_view<const float>(x.data(), {n, 1}), {.dominant = 3, .contextual = 2}, std::span(idx),
                    matrix_view<float>(rows.data(), {5, 1}));
  // remaining 3..7, step 5 / 2 = 2, targets 3 and 5; 4, 6, 7 -> target 3 (tie to the first).
  EXPECT_EQ(idx, (std::vector<token_index>{0, 1, 2, 3, 5}));
  EXPECT_EQ(rows, (std::vector<float>{0, 1, 2, 3 + (4 + 6 + 7) / 3.0f, 5}));
}

TEST(VisionZip, ZeroKeyVectorHasZeroSimilarity) {
  // CLS row puts everything on patch 1: dominant = {0, 1}. Remaining 2..6 (R = 5), step 5 / 2 = 2:
  // targets 2 and 4. Keys: 2 (1, 0), 3 (0, 0), 4 (0, 1), 5 (0, 0), 6 (-1, 0). The zero keys 3 and 5
  // have similarity 0 to both targets -> tie -> target 2; 6: -1 vs 0 -> target 4.
  const index_t n = 7;
  std::vector<float> a(n, 0.0f), x(n);
  a[1] = 1.0f;
  const std::vector<float> k = {0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, -1, 0};
  for (index_t i = 0; i < n; ++i) x[i] = static_cast<float>(10 * i);
  std::vector<token_index> idx(4);
  std::vector<float> rows(4);
  (void)visionzip::select(seq, head_attention_view<float>(a.data(), {1, 1, n}), tensor_view<const float, 3>(k.data(), {1, n, 2}),
                    matrix_view<const float>(x.data(), {n, 1}), {.dominant = 2, .contextual = 2}, std::span(idx),
                    matrix_view<float>(rows.data(), {4, 1}));
  EXPECT_EQ(idx, (std::vector<token_index>{0, 1, 2, 4}));
  EXPECT_EQ(rows, (std::vector<float>{0, 10, 20 + (30 + 50) / 2.0f, 40 + 60}));
}

TEST(VisionZip, EmptySample) {
  std::vector<token_index> idx;
  std::vector<float> rows;
  const auto res = visionzip::select(seq, head_attention_view<float>(nullptr, {2, 0, 0}),
                                     tensor_view<const float, 3>(nullptr, {2, 0, 4}), matrix_view<const float>(nullptr, {0, 3}),
                                     visionzip::config{}, std::span(idx), matrix_view<float>(nullptr, {0, 3}));
  EXPECT_EQ(res.count, 0);
}

TEST(VisionZip, BadInputs) {
  const tiny t;
  std::vector<token_index> idx(5);
  std::vector<float> rows(15);
  const matrix_view<float> out(rows.data(), {5, 3});
  const visionzip::config cfg{.dominant = 3, .contextual = 2};
  auto call = [&](const head_attention_view<float>& a, const tensor_view<const float, 3>& k,
                  const matrix_view<const float>& x, const visionzip::config& c, std::span<token_index> o,
                  const matrix_view<float>& f) { (void)visionzip::select(seq, a, k, x, c, o, f); };

  // non-finite CLS attention / keys of a remaining token
  auto a = t.attention;
  a[1 * 100 + 4] = std::numeric_limits<float>::infinity();
  expect_error([&] { call({a.data(), {2, 10, 10}}, t.keys_view(), t.hidden_view(), cfg, idx, out); }, errc::non_finite,
               "visionzip.attention[1, 0, 4]");
  auto k = t.keys;
  k[(0 * 10 + 8) * 2 + 1] = std::numeric_limits<float>::quiet_NaN();
  expect_error([&] { call(t.attention_view(), {k.data(), {2, 10, 2}}, t.hidden_view(), cfg, idx, out); }, errc::non_finite,
               "visionzip.keys[0, 8, 1]");
  auto k_inf = t.keys;  // an infinity alone (the contiguous path checks the head sum)
  k_inf[(1 * 10 + 8) * 2 + 0] = -std::numeric_limits<float>::infinity();
  expect_error([&] { call(t.attention_view(), {k_inf.data(), {2, 10, 2}}, t.hidden_view(), cfg, idx, out); }, errc::non_finite,
               "visionzip.keys[1, 8, 0]");
  // shapes
  expect_error([&] { call({t.attention.data(), {2, 5, 10}}, t.keys_view(), t.hidden_view(), cfg, idx, out); },
               errc::shape_mismatch, "visionzip.attention.extent(1) = 5");
  expect_error([&] { call(t.attention_view(), {t.keys.data(), {2, 9, 2}}, t.hidden_view(), cfg, idx, out); },
               errc::shape_mismatch, "visionzip.keys.extent(1) = 9");
  expect_error([&] { call(t.attention_view(), t.keys_view(), {t.hidden.data(), {9, 3}}, cfg, idx, out); },
               errc::shape_mismatch, "visionzip.hidden.extent(0) = 9");
  expect_error([&] { call(t.attention_view(), t.keys_view(), t.hidden_view(), cfg, idx, {rows.data(), {5, 2}}); },
               errc::shape_mismatch, "visionzip.features.extent(1) = 2");
  expect_error([&] { call(t.attention_view(), t.keys_view(), t.hidden_view(), cfg, idx, {rows.data(), {4, 3}}); },
               errc::shape_mismatch, "visionzip.features.extent(0) = 4");
  expect_error([&] { call(t.attention_view(), t.keys_view(), t.hidden_view(), cfg, std::span(idx).first(4), out); },
               errc::shape_mismatch, "visionzip.out.size() = 4");
  expect_error([&] { call(t.attention_view(), tensor_view<const float, 3>{}, t.hidden_view(), cfg, idx, out); },
               errc::shape_mismatch, "visionzip.keys.extent(1) = 0");
  // budget
  expect_error([&] { call(t.attention_view(), t.keys_view(), t.hidden_view(), {.dominant = 8, .contextual = 3}, idx, out); },
               errc::invalid_argument, "visionzip.dominant + visionzip.contextual = 11");
  expect_error([&] { call(t.attention_view(), t.keys_view(), t.hidden_view(), {.dominant = 0, .contextual = 2}, idx, out); },
               errc::invalid_argument, "visionzip.dominant = 0");
}

namespace {

// Random inputs with softmax CLS rows and Gaussian keys/features.
struct random_sample {
  index_t n, heads, dh, d;
  std::vector<float> attention, keys, hidden;
  random_sample(index_t n_, index_t heads_, index_t dh_, index_t d_, unsigned seed)
      : n(n_), heads(heads_), dh(dh_), d(d_), attention(heads_ * n_ * n_), keys(heads_ * n_ * dh_), hidden(n_ * d_) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> g(0.0f, 1.0f);
    for (auto& v : attention) v = std::exp(2.0f * g(gen));
    for (index_t h = 0; h < heads; ++h) {
      for (index_t i = 0; i < n; ++i) {
        float s = 0;
        for (index_t j = 0; j < n; ++j) s += attention[(h * n + i) * n + j];
        for (index_t j = 0; j < n; ++j) attention[(h * n + i) * n + j] /= s;
      }
    }
    for (auto& v : keys) v = g(gen);
    for (auto& v : hidden) v = g(gen);
  }
};

// A plain double-precision transcription of the spec (no lanes, no scratch) for cross-checking.
void reference(const random_sample& s, const visionzip::config& cfg, std::vector<token_index>& idx, std::vector<double>& rows) {
  const index_t n = s.n;
  std::vector<double> score(n - 1);
  for (index_t j = 1; j < n; ++j) {
    for (index_t h = 0; h < s.heads; ++h) score[j - 1] += s.attention[(h * n + 0) * n + j];
  }
  std::vector<index_t> order(n - 1);
  for (index_t j = 0; j < n - 1; ++j) order[j] = j;
  std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t b) { return score[a] > score[b]; });
  std::vector<index_t> dom{0};
  for (index_t r = 0; r < cfg.dominant - 1; ++r) dom.push_back(order[r] + 1);
  std::sort(dom.begin(), dom.end());
  std::vector<index_t> rest;
  for (index_t i = 0; i < n; ++i) {
    if (!std::binary_search(dom.begin(), dom.end(), i)) rest.push_back(i);
  }
  idx.assign(dom.begin(), dom.end());
  rows.clear();
  for (index_t i : dom) {
    for (index_t c = 0; c < s.d; ++c) rows.push_back(s.hidden[i * s.d + c]);
  }
  const auto R = static_cast<index_t>(rest.size());
  const index_t step = std::max<index_t>(1, R / cfg.contextual);
  std::vector<std::vector<double>> u(R, std::vector<double>(s.dh));
  for (index_t p = 0; p < R; ++p) {
    double norm = 0;
    for (index_t c = 0; c < s.dh; ++c) {
      for (index_t h = 0; h < s.heads; ++h) u[p][c] += s.keys[(h * n + rest[p]) * s.dh + c] / s.heads;
      norm += u[p][c] * u[p][c];
    }
    for (auto& v : u[p]) v /= std::sqrt(norm);
  }
  std::vector<std::vector<index_t>> groups(cfg.contextual);
  for (index_t p = 0; p < R; ++p) {
    if (p % step == 0 && p / step < cfg.contextual) continue;
    index_t best = 0;
    double best_sim = -1e300;
    for (index_t t = 0; t < cfg.contextual; ++t) {
      double sim = 0;
      for (index_t c = 0; c < s.dh; ++c) sim += u[p][c] * u[t * step][c];
      if (sim > best_sim) best_sim = sim, best = t;
    }
    groups[best].push_back(rest[p]);
  }
  for (index_t t = 0; t < cfg.contextual; ++t) {
    const index_t target = rest[t * step];
    idx.push_back(target);
    for (index_t c = 0; c < s.d; ++c) {
      double m = 0;
      for (index_t i : groups[t]) m += s.hidden[i * s.d + c];
      if (!groups[t].empty()) m /= static_cast<double>(groups[t].size());
      rows.push_back(s.hidden[target * s.d + c] + m);
    }
  }
}

}  // namespace

TEST(VisionZip, MatchesDoublePrecisionReferenceOnRandomInputs) {
  for (unsigned seed = 1; seed <= 6; ++seed) {
    const random_sample s(65, 4, 40, 7, seed);
    const visionzip::config cfg{.dominant = 12, .contextual = 5};
    std::vector<token_index> idx(17), ref_idx;
    std::vector<float> rows(17 * 7);
    std::vector<double> ref_rows;
    const auto res = visionzip::select(seq, head_attention_view<float>(s.attention.data(), {4, 65, 65}),
                                       tensor_view<const float, 3>(s.keys.data(), {4, 65, 40}),
                                       matrix_view<const float>(s.hidden.data(), {65, 7}), cfg, std::span(idx),
                                       matrix_view<float>(rows.data(), {17, 7}));
    reference(s, cfg, ref_idx, ref_rows);
    EXPECT_EQ(res.count, 17);
    EXPECT_EQ(idx, ref_idx) << "seed " << seed;
    for (std::size_t i = 0; i < rows.size(); ++i) EXPECT_NEAR(rows[i], ref_rows[i], 1e-5) << "seed " << seed << " i " << i;
    EXPECT_TRUE(std::is_sorted(idx.begin(), idx.begin() + 12));
    EXPECT_TRUE(std::is_sorted(idx.begin() + 12, idx.end()));
    EXPECT_EQ(idx[0], 0);
  }
}

TEST(VisionZip, SequentialEqualsThreadedBitForBit) {
  const random_sample s(257, 8, 64, 96, 11);
  const visionzip::config cfg{.dominant = 30, .contextual = 9};
  std::vector<token_index> i1(39), i2(39);
  std::vector<float> r1(39 * 96), r2(39 * 96);
  const head_attention_view<float> a(s.attention.data(), {8, 257, 257});
  const tensor_view<const float, 3> k(s.keys.data(), {8, 257, 64});
  const matrix_view<const float> x(s.hidden.data(), {257, 96});
  (void)visionzip::select(seq, a, k, x, cfg, std::span(i1), matrix_view<float>(r1.data(), {39, 96}));
  (void)visionzip::select(threaded_policy{.threads = 3}, a, k, x, cfg, std::span(i2), matrix_view<float>(r2.data(), {39, 96}));
  EXPECT_EQ(i1, i2);
  EXPECT_EQ(std::memcmp(r1.data(), r2.data(), r1.size() * sizeof(float)), 0);
}

TEST(VisionZip, StridedEqualsContiguous) {
  const random_sample s(37, 3, 8, 5, 5);
  const visionzip::config cfg{.dominant = 7, .contextual = 4};
  const index_t n = 37;
  // Transposed storage: attention stored [keys, queries, heads], keys [d_head, tokens, heads],
  // hidden [D, N]; output features column-major.
  std::vector<float> at(s.attention.size()), kt(s.keys.size()), xt(s.hidden.size());
  for (index_t h = 0; h < 3; ++h) {
    for (index_t i = 0; i < n; ++i) {
      for (index_t j = 0; j < n; ++j) at[(j * n + i) * 3 + h] = s.attention[(h * n + i) * n + j];
      for (index_t c = 0; c < 8; ++c) kt[(c * n + i) * 3 + h] = s.keys[(h * n + i) * 8 + c];
    }
  }
  for (index_t i = 0; i < n; ++i) {
    for (index_t c = 0; c < 5; ++c) xt[c * n + i] = s.hidden[i * 5 + c];
  }
  std::vector<token_index> i1(11), i2(11);
  std::vector<float> r1(55), r2(55);
  (void)visionzip::select(seq, head_attention_view<float>(s.attention.data(), {3, n, n}),
                    tensor_view<const float, 3>(s.keys.data(), {3, n, 8}), matrix_view<const float>(s.hidden.data(), {n, 5}),
                    cfg, std::span(i1), matrix_view<float>(r1.data(), {11, 5}));
  (void)visionzip::select(seq, head_attention_view<float>(at.data(), {3, n, n}, {1, 3, 3 * n}),
                    tensor_view<const float, 3>(kt.data(), {3, n, 8}, {1, 3, 3 * n}),
                    matrix_view<const float>(xt.data(), {n, 5}, {1, n}), cfg, std::span(i2),
                    matrix_view<float>(r2.data(), {11, 5}, {1, 11}));
  EXPECT_EQ(i1, i2);
  for (index_t r = 0; r < 11; ++r) {
    for (index_t c = 0; c < 5; ++c) EXPECT_EQ(r1[r * 5 + c], r2[c * 11 + r]);
  }
}

TEST(VisionZip, VectorPathsEqualScalarPathsBitForBit) {
  // Contiguous keys and hidden states take the register paths (head sums held in vectors, rows
  // added a vector at a time, tiled similarities); transposed storage takes the element-wise
  // ones. Both must give the same bits for fp32, fp16 and bf16 inputs: d_head = 70 and D = 600
  // leave tails after whole vectors and after a 512-column chunk.
  constexpr index_t n = 90, heads = 3, dh = 70, d = 600, k = 20;
  const random_sample s(n, heads, dh, d, 13);
  const visionzip::config cfg{.dominant = 14, .contextual = 6};
  auto check = [&]<class T>(T) {
    std::vector<T> a(s.attention.size()), kc(s.keys.size()), xc(s.hidden.size()), kt(kc.size()), xt(xc.size());
    for (std::size_t i = 0; i < a.size(); ++i) a[i] = T(s.attention[i]);
    for (index_t h = 0; h < heads; ++h) {
      for (index_t i = 0; i < n; ++i) {
        for (index_t c = 0; c < dh; ++c) {
          kc[(h * n + i) * dh + c] = T(4.0f * s.keys[(h * n + i) * dh + c]);
          kt[(c * n + i) * heads + h] = kc[(h * n + i) * dh + c];
        }
      }
    }
    for (index_t i = 0; i < n; ++i) {
      for (index_t c = 0; c < d; ++c) {
        xc[i * d + c] = T(s.hidden[i * d + c]);
        xt[c * n + i] = xc[i * d + c];
      }
    }
    const head_attention_view<T> av(a.data(), {heads, n, n});
    std::vector<token_index> i1(k), i2(k);
    std::vector<float> r1(k * d), r2(k * d);
    (void)visionzip::select(seq, av, tensor_view<const T, 3>(kc.data(), {heads, n, dh}), matrix_view<const T>(xc.data(), {n, d}),
                            cfg, std::span(i1), matrix_view<float>(r1.data(), {k, d}));
    (void)visionzip::select(seq, av, tensor_view<const T, 3>(kt.data(), {heads, n, dh}, {1, heads, heads * n}),
                            matrix_view<const T>(xt.data(), {n, d}, {1, n}), cfg, std::span(i2),
                            matrix_view<float>(r2.data(), {k, d}));
    EXPECT_EQ(i1, i2);
    EXPECT_EQ(std::memcmp(r1.data(), r2.data(), r1.size() * sizeof(float)), 0);
  };
  check(0.0f);
  check(Eigen::half{});
  check(Eigen::bfloat16{});
}

TEST(VisionZip, TargetAssignmentEqualsScalarCanonicalDots) {
  // assign_to_targets (16 tokens per vector of dots where AVX-512 is on, register tiles else)
  // against the plain scan: canonical_dot per pair, strict > so ties keep the first target.
  // 45 tokens end in a partial block; d_head 70 and 64 (with and without a tail); target 4
  // duplicates target 1, so every token ties between them.
  for (const index_t dh : {index_t{70}, index_t{64}}) {
    constexpr index_t count = 45, contextual = 7, step = 6;
    std::mt19937 gen(static_cast<unsigned>(dh));
    std::normal_distribution<float> g(0.0f, 1.0f);
    std::vector<float> unit(count * dh);
    for (float& v : unit) v = g(gen);
    std::copy_n(unit.begin() + 1 * step * dh, dh, unit.begin() + 4 * step * dh);
    std::vector<index_t> owner(count, -7);
    visionzip::detail::assign_to_targets(seq, std::span<const float>(unit), dh, contextual, step, std::span(owner));
    for (index_t p = 0; p < count; ++p) {
      index_t want = -1;
      if (!(p % step == 0 && p / step < contextual)) {
        float best = tokensel::detail::canonical_dot(&unit[p * dh], &unit[0], dh);
        want = 0;
        for (index_t t = 1; t < contextual; ++t) {
          const float sim = tokensel::detail::canonical_dot(&unit[p * dh], &unit[t * step * dh], dh);
          if (sim > best) best = sim, want = t;
        }
      }
      EXPECT_EQ(owner[p], want) << "d_head " << dh << " token " << p;
      EXPECT_NE(owner[p], 4);
    }
  }
}

TEST(VisionZip, VectorLaneTreesEqualCanonicalDotBits) {
#if defined(__AVX512F__) && TOKENSEL_DETAIL_VECTOR_DOT_TILE
  // 16 dots finished together by shuffled tree steps: each must carry canonical_dot's bits.
  for (const index_t n : {index_t{64}, index_t{70}, index_t{13}, index_t{97}}) {
    std::mt19937 gen(static_cast<unsigned>(n) + 5);
    std::normal_distribution<float> g(0.0f, 1.0f);
    std::vector<float> a(16 * n), b(16 * n);
    for (float& v : a) v = g(gen);
    for (float& v : b) v = g(gen);
    tokensel::detail::f32_vector h[16];
    for (index_t j = 0; j < 16; ++j) h[j] = visionzip::detail::half_lanes(&a[j * n], &b[j * n], n);
    tokensel::detail::reduce_lane_trees(h);
    float dots[16];
    _mm512_storeu_ps(dots, h[0]);
    for (index_t j = 0; j < 16; ++j) {
      const float want = tokensel::detail::canonical_dot(&a[j * n], &b[j * n], n);
      EXPECT_EQ(std::bit_cast<std::uint32_t>(dots[j]), std::bit_cast<std::uint32_t>(want)) << "n " << n << " dot " << j;
    }
  }
#else
  GTEST_SKIP() << "AVX-512 lane trees are compiled only where the target has AVX-512 (-march=native builds)";
#endif
}

TEST(VisionZip, HalfPrecisionInputsSameSelection) {
  // fp16 / bf16 attention and keys, bf16 hidden -> fp16 output: same indices as fp32 (well separated
  // random scores), features equal up to the storage rounding.
  const random_sample s(50, 2, 16, 4, 9);
  const visionzip::config cfg{.dominant = 6, .contextual = 3};
  std::vector<Eigen::half> ah(s.attention.begin(), s.attention.end()), kh(s.keys.begin(), s.keys.end());
  std::vector<Eigen::bfloat16> xb;
  for (float v : s.hidden) xb.push_back(Eigen::bfloat16(v));
  std::vector<token_index> i1(9), i2(9);
  std::vector<float> r1(36);
  std::vector<Eigen::half> r2(36);
  (void)visionzip::select(seq, head_attention_view<float>(s.attention.data(), {2, 50, 50}),
                    tensor_view<const float, 3>(s.keys.data(), {2, 50, 16}), matrix_view<const float>(s.hidden.data(), {50, 4}),
                    cfg, std::span(i1), matrix_view<float>(r1.data(), {9, 4}));
  (void)visionzip::select(par, head_attention_view<Eigen::half>(ah.data(), {2, 50, 50}),
                    tensor_view<const Eigen::half, 3>(kh.data(), {2, 50, 16}),
                    matrix_view<const Eigen::bfloat16>(xb.data(), {50, 4}), cfg, std::span(i2),
                    matrix_view<Eigen::half>(r2.data(), {9, 4}));
  EXPECT_EQ(i1, i2);
  for (std::size_t i = 0; i < r1.size(); ++i) EXPECT_NEAR(static_cast<float>(r2[i]), r1[i], 0.05f);
}

TEST(VisionZip, BatchedMatchesSingle) {
  // Uniform batch of 3 samples [3, heads, N, N] and a ragged batch of different sizes.
  const visionzip::config cfg{.dominant = 5, .contextual = 3};
  std::vector<random_sample> ss;
  for (unsigned b = 0; b < 3; ++b) ss.emplace_back(20, 2, 6, 4, 100 + b);
  std::vector<float> a, k, x;
  for (const auto& s : ss) {
    a.insert(a.end(), s.attention.begin(), s.attention.end());
    k.insert(k.end(), s.keys.begin(), s.keys.end());
    x.insert(x.end(), s.hidden.begin(), s.hidden.end());
  }
  std::vector<token_index> idx(3 * 8), counts(3);
  std::vector<float> feats(3 * 8 * 4);
  std::vector<visionzip::result> results(3);
  const selection_batch out{tensor_view<token_index, 2>(idx.data(), {3, 8}), std::span(counts)};
  visionzip::select(par, attention_view<float>(a.data(), {3, 2, 20, 20}), tensor_view<const float, 4>(k.data(), {3, 2, 20, 6}),
                    feature_view<const float>(x.data(), {3, 20, 4}), cfg, out,
                    feature_view<float>(feats.data(), {3, 8, 4}), std::span(results));
  for (index_t b = 0; b < 3; ++b) {
    std::vector<token_index> i1(8);
    std::vector<float> r1(32);
    const auto& s = ss[b];
    (void)visionzip::select(seq, head_attention_view<float>(s.attention.data(), {2, 20, 20}),
                      tensor_view<const float, 3>(s.keys.data(), {2, 20, 6}), matrix_view<const float>(s.hidden.data(), {20, 4}),
                      cfg, std::span(i1), matrix_view<float>(r1.data(), {8, 4}));
    EXPECT_EQ(counts[b], 8);
    EXPECT_EQ(results[b].count, 8);
    EXPECT_EQ(std::vector<token_index>(idx.begin() + b * 8, idx.begin() + b * 8 + 8), i1);
    EXPECT_EQ(std::vector<float>(feats.begin() + b * 32, feats.begin() + b * 32 + 32), r1);
  }

  // Ragged: sizes 20, 9 and 0 (an empty sample writes nothing).
  const random_sample small(9, 1, 6, 4, 7);
  std::vector<head_attention_view<float>> av{{ss[0].attention.data(), {2, 20, 20}}, {small.attention.data(), {1, 9, 9}},
                                             {nullptr, {1, 0, 0}}};
  std::vector<tensor_view<const float, 3>> kv{{ss[0].keys.data(), {2, 20, 6}}, {small.keys.data(), {1, 9, 6}},
                                              {nullptr, {1, 0, 6}}};
  std::vector<matrix_view<const float>> xv{{ss[0].hidden.data(), {20, 4}}, {small.hidden.data(), {9, 4}}, {nullptr, {0, 4}}};
  std::vector<float> f0(32, -1), f1(32, -1);
  std::vector<matrix_view<float>> fv{{f0.data(), {8, 4}}, {f1.data(), {8, 4}}, {nullptr, {0, 4}}};
  std::fill(idx.begin(), idx.end(), -1);
  visionzip::select(par, std::span<const head_attention_view<float>>(av), std::span<const tensor_view<const float, 3>>(kv),
                    std::span<const matrix_view<const float>>(xv), cfg, out, std::span<const matrix_view<float>>(fv),
                    std::span(results));
  EXPECT_EQ(counts, (std::vector<token_index>{8, 8, 0}));
  EXPECT_EQ(std::vector<float>(feats.begin(), feats.begin() + 32), f0);
  std::vector<token_index> i1(8);
  std::vector<float> r1(32);
  (void)visionzip::select(seq, av[1], kv[1], xv[1], cfg, std::span(i1), matrix_view<float>(r1.data(), {8, 4}));
  EXPECT_EQ(std::vector<token_index>(idx.begin() + 8, idx.begin() + 16), i1);
  EXPECT_EQ(f1, r1);
  EXPECT_EQ(results[2].count, 0);

  // Empty batch.
  visionzip::select(seq, attention_view<float>(nullptr, {0, 2, 20, 20}), tensor_view<const float, 4>(nullptr, {0, 2, 20, 6}),
                    feature_view<const float>(nullptr, {0, 20, 4}), cfg,
                    selection_batch{tensor_view<token_index, 2>(nullptr, {0, 8}), {}}, feature_view<float>(nullptr, {0, 8, 4}));
}

// The contextual sums bit for bit, against a plain transcription: equal keys make every
// similarity tie, so every non-target remaining token joins the first target (ties: the first
// target); its row is x[target] + (the assigned rows summed in ascending token order from 0.0f)
// / count, and every other target's row is x[target] + 0 / 1. Hidden values span 2^-40 .. 2^40,
// so any other summation order changes bits; D = 600 covers a 512-column chunk and its tail.
TEST(VisionZip, ContextualSumsAscendingBitForBit) {
  constexpr index_t n = 90, heads = 2, dh = 8, d = 600, dominant = 14, contextual = 6, k = dominant + contextual;
  const random_sample s(n, heads, dh, d, 29);
  const visionzip::config cfg{.dominant = dominant, .contextual = contextual};
  const std::vector<float> keys(static_cast<std::size_t>(heads * n * dh), 1.0f);
  auto check = [&]<class T>(T) {
    std::vector<T> x(static_cast<std::size_t>(n * d));
    std::uint32_t state = 99;
    for (auto& v : x) {
      state = state * 1664525u + 1013904223u;
      const float m = std::ldexp(static_cast<float>(state & 0xffff) / 65536.0f + 0.5f, static_cast<int>(state >> 25) - 40);
      v = T((state >> 24) & 1 ? -m : m);
    }
    std::vector<token_index> idx(k);
    std::vector<float> rows(static_cast<std::size_t>(k * d));
    (void)visionzip::select(seq, head_attention_view<const float>(s.attention.data(), {heads, n, n}),
                            tensor_view<const float, 3>(keys.data(), {heads, n, dh}), matrix_view<const T>(x.data(), {n, d}),
                            cfg, std::span(idx), matrix_view<float>(rows.data(), {k, d}));
    std::vector<token_index> rest;
    for (index_t t = 0; t < n; ++t) {
      if (std::find(idx.begin(), idx.begin() + dominant, static_cast<token_index>(t)) == idx.begin() + dominant) rest.push_back(t);
    }
    const auto remaining = static_cast<index_t>(rest.size());
    const index_t step = std::max<index_t>(1, remaining / contextual);
    for (index_t t = 0; t < contextual; ++t) {
      const index_t target = rest[static_cast<std::size_t>(t * step)];
      ASSERT_EQ(idx[static_cast<std::size_t>(dominant + t)], target);
      for (index_t c = 0; c < d; ++c) {
        float sum = 0.0f;
        float count = 1.0f;
        if (t == 0) {
          index_t assigned = 0;
          for (index_t p = 0; p < remaining; ++p) {
            if (p % step == 0 && p / step < contextual) continue;  // a target
            sum += static_cast<float>(x[static_cast<std::size_t>(rest[static_cast<std::size_t>(p)] * d + c)]);
            ++assigned;
          }
          count = static_cast<float>(assigned);
        }
        const float want = static_cast<float>(x[static_cast<std::size_t>(target * d + c)]) + sum / count;
        ASSERT_EQ(std::bit_cast<std::uint32_t>(rows[static_cast<std::size_t>((dominant + t) * d + c)]), std::bit_cast<std::uint32_t>(want))
            << "target " << t << " column " << c;
      }
    }
  };
  check(0.0f);
  check(Eigen::half{});
  check(Eigen::bfloat16{});
}
