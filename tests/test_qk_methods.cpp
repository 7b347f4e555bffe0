// Every vision-encoder method selects the same tokens from a Q/K source as from the materialised
// attention (FoPru, contribution degree, freePruner, VisionZip, PruMerge). The LLM methods (FastV,
// FitPrune, region masses) are in test_qk_llm_methods.cpp, the memory bound in test_qk_memory.cpp.
//
// The materialised map comes from materialize_attention (the library's own tiled softmax); the
// Q/K path computes the same probabilities with a different tiling (e.g. one row, or the rows of
// the pivotal set), so the two agree to fp32 rounding, not bit for bit. Near-ties are excluded by
// construction: every test recomputes the method's decision statistics in double precision from
// Q and K (an independent softmax, below) and only compares seeds whose decisions have a relative
// margin above 1e-4 (fp32 rounding is ~1e-6 here); it asserts that most seeds qualify.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "tokensel/stats/contribution_degree.hpp"
#include "tokensel/methods/fopru.hpp"
#include "tokensel/methods/freepruner.hpp"
#include "tokensel/methods/prumerge.hpp"
#include "tokensel/stats/qk_statistics.hpp"
#include "tokensel/methods/visionzip.hpp"

using namespace tokensel;

namespace {

constexpr double min_margin = 1e-4;

// One encoder layer: Q [heads, n, d], K [heads, n, d] in T, the materialised probabilities
// [heads, n, n] (fp32) and the reference probabilities in double.
template <class T>
struct layer {
  index_t heads = 0, n = 0, d = 0;
  std::vector<T> q, k;
  std::vector<float> map;
  std::vector<double> ref;

  qk_source<T> source() const {
    return {.queries = tensor_view<const T, 3>(q.data(), {heads, n, d}), .keys = tensor_view<const T, 3>(k.data(), {heads, n, d})};
  }
  head_attention_view<float> view() const { return head_attention_view<float>(map.data(), {heads, n, n}); }
  // Head mean / sum of the double reference.
  double mean(index_t i, index_t j) const { return sum(i, j) / static_cast<double>(heads); }
  double sum(index_t i, index_t j) const {
    double acc = 0.0;
    for (index_t h = 0; h < heads; ++h) acc += ref[(h * n + i) * n + j];
    return acc;
  }
};

// softmax(Q K^T / sqrt(d)) in double from the stored (rounded) Q and K.
template <class T>
std::vector<double> reference_softmax(const std::vector<T>& q, const std::vector<T>& k, index_t heads, index_t nq,
                                      index_t nk, index_t d) {
  std::vector<double> p(static_cast<std::size_t>(heads * nq * nk));
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  std::vector<double> s(static_cast<std::size_t>(nk));
  for (index_t h = 0; h < heads; ++h)
    for (index_t i = 0; i < nq; ++i) {
      double m = -std::numeric_limits<double>::infinity();
      for (index_t j = 0; j < nk; ++j) {
        double acc = 0.0;
        for (index_t c = 0; c < d; ++c) acc += double(to_float(q[(h * nq + i) * d + c])) * double(to_float(k[(h * nk + j) * d + c]));
        s[j] = acc * scale;
        m = std::max(m, s[j]);
      }
      double total = 0.0;
      for (index_t j = 0; j < nk; ++j) total += s[j] = std::exp(s[j] - m);
      for (index_t j = 0; j < nk; ++j) p[(h * nq + i) * nk + j] = s[j] / total;
    }
  return p;
}

// Structured layers get "sink" keys every query attends to (like CLIP's high-norm tokens);
// random layers are plain Gaussian Q/K.
template <class T>
layer<T> make_layer(index_t heads, index_t n, index_t d, unsigned seed, bool structured) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  layer<T> x{heads, n, d, std::vector<T>(heads * n * d), std::vector<T>(heads * n * d), std::vector<float>(heads * n * n), {}};
  std::vector<float> qf(x.q.size()), kf(x.k.size());
  for (auto& v : qf) v = dist(gen);
  for (auto& v : kf) v = dist(gen);
  if (structured) {
    for (index_t h = 0; h < heads; ++h)
      for (index_t sink : {index_t{3}, n / 2, n - 2})
        for (index_t c = 0; c < d; ++c) kf[(h * n + sink) * d + c] += 1.0f + 0.25f * static_cast<float>(h);
  }
  for (std::size_t i = 0; i < qf.size(); ++i) x.q[i] = from_float<T>(qf[i]);
  for (std::size_t i = 0; i < kf.size(); ++i) x.k[i] = from_float<T>(kf[i]);
  materialize_attention(seq, x.source(), tensor_view<float, 3>(x.map.data(), {heads, n, n}));
  x.ref = reference_softmax(x.q, x.k, heads, n, n, d);
  return x;
}

// Relative gap between the k-th and (k+1)-th largest scores (infinite when nothing is cut).
double topk_margin(std::vector<double> s, index_t k) {
  if (k <= 0 || k >= static_cast<index_t>(s.size())) return std::numeric_limits<double>::infinity();
  double scale = 0.0;
  for (double v : s) scale = std::max(scale, std::abs(v));
  std::sort(s.begin(), s.end(), std::greater<>());
  return (s[k - 1] - s[k]) / scale;
}

// Smallest relative distance of any value to a threshold (the IQR fence).
double fence_margin(const std::vector<double>& row, double fence) {
  double m = std::numeric_limits<double>::infinity();
  for (double v : row) m = std::min(m, std::abs(v - fence) / std::abs(fence));
  return m;
}

// Contribution degree of the CLS-free patch map, in double (head mean).
template <class T>
std::vector<double> reference_contribution(const layer<T>& x) {
  const index_t n = x.n - 1;
  std::vector<double> r(n, 0.0);
  for (index_t i = 0; i < n; ++i) {
    for (index_t j = 0; j < n; ++j) r[i] += x.mean(1 + j, 1 + i);
    r[i] -= x.mean(1 + i, 1 + i);
  }
  return r;
}

}  // namespace

TEST(QkMethods, FoPruSelectsIdenticalTokens) {
  for (unsigned seed = 0; seed < 8; ++seed) {
    const auto x = make_layer<float>(4, 1 + 49, 16, seed, true);
    for (auto strat : {fopru::strategy::rank, fopru::strategy::row}) {
      const fopru::config cfg{.ratio = 0.3, .strategy = strat};
      const index_t k = fopru::keep_count(49, cfg);
      std::vector<token_index> a(k), b(k);
      const auto ra = fopru::select(seq, x.view(), cfg, a);
      const auto rb = fopru::select(par, x.source(), cfg, b);
      EXPECT_EQ(a, b) << "seed " << seed;
      EXPECT_EQ(ra.axis, rb.axis);
      EXPECT_NEAR(ra.column_variance, rb.column_variance, 1e-5 * ra.column_variance);
    }
  }
}

// FoPru on fp16 Q/K and plain random layers, with the rank margin checked in double.
template <class T>
void fopru_parity(bool structured) {
  int compared = 0;
  for (unsigned seed = 100; seed < 110; ++seed) {
    const auto x = make_layer<T>(4, 1 + 64, 16, seed, structured);
    const index_t n = 64;
    std::vector<double> s1(n, 0.0), s2(n, 0.0);
    for (index_t i = 0; i < n; ++i)
      for (index_t j = 0; j < n; ++j) {
        s1[i] += x.mean(1 + i, 1 + j) / n;
        s2[j] += x.mean(1 + i, 1 + j) / n;
      }
    auto var = [](const std::vector<double>& v) {
      double m = 0, a = 0;
      for (double e : v) m += e;
      m /= v.size();
      for (double e : v) a += (e - m) * (e - m);
      return a / v.size();
    };
    const double v1 = var(s1), v2 = var(s2);
    const fopru::config cfg{.ratio = 0.25};
    const index_t k = fopru::keep_count(n, cfg);
    if (std::abs(v1 - v2) < min_margin * std::max(v1, v2) || topk_margin(v1 > v2 ? s1 : s2, k) < min_margin) continue;
    ++compared;
    std::vector<token_index> a(k), b(k);
    (void)fopru::select(seq, x.view(), cfg, a);
    (void)fopru::select(seq, x.source(), cfg, b);
    EXPECT_EQ(a, b) << "seed " << seed;
  }
  EXPECT_GE(compared, 8);
}

TEST(QkMethods, FoPruHalfAndRandomInputs) {
  fopru_parity<float>(false);
  fopru_parity<Eigen::half>(true);
  fopru_parity<Eigen::half>(false);
}

template <class T>
void contribution_parity(bool structured) {
  int compared = 0;
  for (unsigned seed = 0; seed < 10; ++seed) {
    const auto x = make_layer<T>(4, 1 + 64, 16, seed, structured);
    const auto ref = reference_contribution(x);
    std::vector<float> a(64), b(64);
    contribution_degree(seq, x.view(), head_reduction::mean, a);
    contribution_degree(par, x.source(), head_reduction::mean, b);
    for (index_t i = 0; i < 64; ++i) {
      EXPECT_NEAR(a[i], ref[i], 1e-5 * std::abs(ref[i]) + 1e-6);
      EXPECT_NEAR(b[i], ref[i], 1e-5 * std::abs(ref[i]) + 1e-6);
    }
    const index_t k = 8;
    if (topk_margin(ref, k) < min_margin) continue;
    ++compared;
    std::vector<token_index> ta(k), tb(k);
    top_k<float>(as_view(std::span<const float>(a)), k, ta, index_order::ascending);
    top_k<float>(as_view(std::span<const float>(b)), k, tb, index_order::ascending);
    EXPECT_EQ(ta, tb) << "seed " << seed;
  }
  EXPECT_GE(compared, 8);
}

TEST(QkMethods, ContributionDegreeMatches) {
  contribution_parity<float>(true);
  contribution_parity<float>(false);
  contribution_parity<Eigen::half>(true);
}

TEST(QkMethods, ContributionDegreeWindowEqualsSkipCls) {
  // restrict_tokens on the source (the patch window) = skip_cls on the map; the softmax still
  // covers the CLS key.
  const auto x = make_layer<float>(3, 1 + 36, 8, 7, true);
  std::vector<float> a(36), b(36), c(36);
  contribution_degree(seq, x.view(), head_reduction::sum, a);
  contribution_degree(seq, restrict_tokens(x.source(), token_range::skip_cls(37)), head_reduction::sum,
                      token_range::all(36), b);
  contribution_degree(seq, x.source(), head_reduction::sum, c);
  for (index_t i = 0; i < 36; ++i) {
    EXPECT_NEAR(a[i], b[i], 1e-5f * std::abs(a[i]));
    EXPECT_EQ(b[i], c[i]);  // same Q/K pipeline, same rows: bit-identical
  }
}

// ---- freePruner -----------------------------------------------------------------------------

namespace {

// A model of `count` layers; the layers the config reads are checked for margins.
template <class T>
struct model {
  std::vector<layer<T>> layers;
  std::vector<head_attention_view<float>> views;
  std::vector<qk_source<T>> sources;
};

template <class T>
model<T> make_model(index_t count, index_t heads, index_t n, index_t d, unsigned seed, bool structured) {
  model<T> m;
  for (index_t l = 0; l < count; ++l) m.layers.push_back(make_layer<T>(heads, n, d, seed * 97 + static_cast<unsigned>(l), structured));
  for (const auto& x : m.layers) {
    m.views.push_back(x.view());
    m.sources.push_back(x.source());
  }
  return m;
}

// Whether every decision of freePruner on this model has a margin: per-layer top-k of r, and
// every fence of the complementary rows (fences from the view path's inspection, rows in double).
template <class T>
bool freepruner_separated(const model<T>& m, const freepruner::config& cfg, const freepruner::inspection& info) {
  for (index_t l = cfg.first_layer; l <= cfg.last_layer; ++l) {
    if (topk_margin(reference_contribution(m.layers[l]), cfg.k_pivotal) < min_margin) return false;
  }
  const auto& x = m.layers[cfg.complementary_layer];
  for (const auto& f : info.fences) {
    std::vector<double> row(x.n - 1);
    for (index_t j = 0; j < x.n - 1; ++j) row[j] = x.mean(1 + f.token, 1 + j);
    if (fence_margin(row, f.upper_fence) < min_margin) return false;
  }
  return true;
}

}  // namespace

template <class T>
void freepruner_parity(bool structured) {
  const freepruner::config cfg{.first_layer = 1, .last_layer = 4, .k_pivotal = 4, .complementary_layer = 4};
  int compared = 0;
  for (unsigned seed = 0; seed < 8; ++seed) {
    const auto m = make_model<T>(5, 4, 1 + 64, 16, seed, structured);
    std::vector<token_index> a(64), b(64);
    freepruner::inspection info;
    const auto ra = freepruner::select(seq, freepruner::layer_stack<float>{m.views, 0}, cfg, a, info);
    if (!freepruner_separated(m, cfg, info)) continue;
    ++compared;
    freepruner::inspection qk_info;
    const auto rb = freepruner::select(par, freepruner::layer_stack<qk_source<T>>{m.sources, 0}, cfg, b, qk_info);
    ASSERT_EQ(ra.count, rb.count) << "seed " << seed;
    EXPECT_EQ(info.pivotal_per_layer, qk_info.pivotal_per_layer);
    EXPECT_EQ(info.complementary, qk_info.complementary);
    ASSERT_EQ(info.fences.size(), qk_info.fences.size());
    for (std::size_t f = 0; f < info.fences.size(); ++f) {
      EXPECT_EQ(info.fences[f].token, qk_info.fences[f].token);
      EXPECT_EQ(info.fences[f].outliers, qk_info.fences[f].outliers);
      EXPECT_NEAR(info.fences[f].upper_fence, qk_info.fences[f].upper_fence, 1e-5 * info.fences[f].upper_fence);
    }
    EXPECT_EQ(ra.pivotal, rb.pivotal);
    EXPECT_EQ(ra.complementary, rb.complementary);
    a.resize(ra.count);
    b.resize(rb.count);
    EXPECT_EQ(a, b) << "seed " << seed;
    EXPECT_GT(ra.complementary, 0) << "seed " << seed << ": the test should exercise the complementary stage";
  }
  EXPECT_GE(compared, 5);
}

TEST(QkMethods, FreePrunerAdaptiveSelectsIdenticalTokens) {
  freepruner_parity<float>(true);
  freepruner_parity<float>(false);
  freepruner_parity<Eigen::half>(true);
}

TEST(QkMethods, FreePrunerFixedModeDropAndFill) {
  // Fixed mode ranks the pivotal set by max_l r_l (drop) or the rest by r of the last layer
  // (fill): check those margins in double too.
  const freepruner::config base{.first_layer = 0, .last_layer = 3, .k_pivotal = 4, .complementary_layer = 3};
  int compared = 0;
  for (unsigned seed = 20; seed < 28; ++seed) {
    const auto m = make_model<float>(4, 4, 1 + 64, 16, seed, true);
    std::vector<token_index> all(64);
    freepruner::inspection info;
    const auto adaptive = freepruner::select(seq, freepruner::layer_stack<float>{m.views, 0}, base, all, info);
    if (!freepruner_separated(m, base, info)) continue;
    std::vector<double> max_r(64, -1e300), last_r;
    for (index_t l = base.first_layer; l <= base.last_layer; ++l) {
      const auto r = reference_contribution(m.layers[l]);
      for (index_t i = 0; i < 64; ++i) max_r[i] = std::max(max_r[i], r[i]);
      if (l == base.last_layer) last_r = r;
    }
    std::vector<double> pivotal_keys, rest_keys;
    std::vector<char> in_s(64, 0);
    for (index_t i = 0; i < adaptive.count; ++i) in_s[all[i]] = 1;
    for (token_index p : info.pivotal) pivotal_keys.push_back(max_r[p]);
    for (index_t i = 0; i < 64; ++i)
      if (!in_s[i]) rest_keys.push_back(last_r[i]);
    const index_t drop_budget = adaptive.pivotal - 2, fill_budget = adaptive.count + 5;
    if (topk_margin(pivotal_keys, drop_budget) < min_margin || topk_margin(rest_keys, 5) < min_margin) continue;
    ++compared;
    for (index_t budget : {drop_budget, fill_budget}) {
      auto cfg = base;
      cfg.mode = freepruner::mode::fixed;
      cfg.budget = budget;
      std::vector<token_index> a(budget), b(budget);
      const auto ra = freepruner::select(seq, freepruner::layer_stack<float>{m.views, 0}, cfg, a);
      const auto rb = freepruner::select(seq, freepruner::layer_stack<qk_source<float>>{m.sources, 0}, cfg, b);
      EXPECT_EQ(a, b) << "seed " << seed << " budget " << budget;
      EXPECT_EQ(ra.dropped, rb.dropped);
      EXPECT_EQ(ra.filled, rb.filled);
    }
  }
  EXPECT_GE(compared, 5);
}

TEST(QkMethods, FreePrunerStreamingAndRaggedBatchFromQk) {
  const freepruner::config cfg{.first_layer = 0, .last_layer = 3, .k_pivotal = 3, .complementary_layer = 2};
  const auto m0 = make_model<float>(4, 2, 1 + 49, 16, 3, true);
  const auto m1 = make_model<float>(4, 2, 1 + 36, 16, 4, true);
  // One-shot from Q/K is the reference here: the streaming selector (layers in reverse order, so
  // the complementary layer arrives before P is complete and its map is stored) gives the same
  // selection, and so does a ragged batch of two Q/K stacks.
  std::vector<token_index> one(49);
  const auto r1 = freepruner::select(seq, freepruner::layer_stack<qk_source<float>>{m0.sources, 0}, cfg, one);
  one.resize(r1.count);

  freepruner::selector sel(50, cfg);
  for (index_t l = 3; l >= 0; --l) sel.add_layer(seq, l, m0.sources[l]);
  std::vector<token_index> streamed(49);
  const auto r2 = sel.finish(streamed);
  streamed.resize(r2.count);
  EXPECT_EQ(one, streamed);

  // Batch selector fed spans of per-sample sources (same N).
  freepruner::selector batch_sel(50, cfg, 2);
  for (index_t l = 0; l < 4; ++l) {
    const qk_source<float> pair[2] = {m0.sources[l], m0.sources[l]};
    batch_sel.add_layer(par, l, std::span<const qk_source<float>>(pair));
  }
  std::vector<token_index> idx(2 * 49), counts(2);
  batch_sel.finish(seq, selection_batch{tensor_view<token_index, 2>(idx.data(), {2, 49}), counts});
  EXPECT_EQ(counts[0], r1.count);
  EXPECT_EQ(std::vector<token_index>(idx.begin(), idx.begin() + r1.count), one);

  const freepruner::layer_stack<qk_source<float>> stacks[2] = {{m0.sources, 0}, {m1.sources, 0}};
  std::vector<token_index> ragged(2 * 49), rc(2);
  freepruner::select(par, std::span<const freepruner::layer_stack<qk_source<float>>>(stacks), cfg,
                     selection_batch{tensor_view<token_index, 2>(ragged.data(), {2, 49}), rc});
  EXPECT_EQ(std::vector<token_index>(ragged.begin(), ragged.begin() + rc[0]), one);
  std::vector<token_index> second(36);
  const auto r3 = freepruner::select(seq, freepruner::layer_stack<qk_source<float>>{m1.sources, 0}, cfg, second);
  EXPECT_EQ(rc[1], r3.count);
  EXPECT_EQ(std::vector<token_index>(ragged.begin() + 49, ragged.begin() + 49 + rc[1]),
            std::vector<token_index>(second.begin(), second.begin() + r3.count));
}

TEST(QkMethods, FreePrunerWindowedSourcesEqualSkipCls) {
  // Sources already restricted to the patches (skip_cls = false) select what skip_cls = true
  // selects on the full sources: the window keeps the CLS key in every softmax.
  const freepruner::config cfg{.first_layer = 0, .last_layer = 2, .k_pivotal = 4, .complementary_layer = 2};
  const auto m = make_model<float>(3, 4, 1 + 64, 16, 11, true);
  std::vector<qk_source<float>> windowed;
  for (const auto& s : m.sources) windowed.push_back(restrict_tokens(s, token_range::skip_cls(65)));
  auto no_cls = cfg;
  no_cls.skip_cls = false;
  std::vector<token_index> a(64), b(64);
  const auto ra = freepruner::select(seq, freepruner::layer_stack<qk_source<float>>{m.sources, 0}, cfg, a);
  const auto rb = freepruner::select(seq, freepruner::layer_stack<qk_source<float>>{windowed, 0}, no_cls, b);
  ASSERT_EQ(ra.count, rb.count);
  a.resize(ra.count);
  b.resize(rb.count);
  EXPECT_EQ(a, b);
}

TEST(QkMethods, FreePrunerRejectsBadQkLayers) {
  const freepruner::config cfg{.first_layer = 0, .last_layer = 1, .k_pivotal = 2, .complementary_layer = 1};
  const auto m = make_model<float>(2, 2, 17, 8, 1, true);
  auto bad = m.sources;
  std::vector<float> q = m.layers[1].q;
  q[5] = std::numeric_limits<float>::quiet_NaN();
  bad[1].queries = tensor_view<const float, 3>(q.data(), {2, 17, 8});
  std::vector<token_index> out(16);
  try {
    (void)freepruner::select(seq, freepruner::layer_stack<qk_source<float>>{bad, 0}, cfg, out);
    FAIL() << "expected non_finite";
  } catch (const error& e) {
    EXPECT_EQ(e.code(), errc::non_finite);
    EXPECT_NE(std::string(e.what()).find("layer 1"), std::string::npos) << e.what();
  }
  freepruner::selector sel(17, cfg);
  auto shorter = m.sources[0];
  shorter.row_window = {0, 16};
  shorter.col_window = {0, 16};
  EXPECT_THROW(sel.add_layer(seq, 0, shorter), error);
  freepruner::selector two(17, cfg, 2);
  EXPECT_THROW(two.add_layer(seq, 0, m.sources[0]), error);
}

// ---- VisionZip ------------------------------------------------------------------------------

template <class T>
void visionzip_parity(bool structured) {
  const index_t heads = 4, n = 1 + 64, d = 16, D = 12;
  const visionzip::config cfg{.dominant = 10, .contextual = 4};
  std::mt19937 gen(5);
  std::normal_distribution<float> dist;
  std::vector<float> hidden(n * D);
  for (auto& v : hidden) v = dist(gen);
  const matrix_view<const float> hv(hidden.data(), {n, D});
  int compared = 0;
  for (unsigned seed = 0; seed < 10; ++seed) {
    const auto x = make_layer<T>(heads, n, d, seed, structured);
    std::vector<double> cls(n - 1);
    for (index_t j = 1; j < n; ++j) cls[j - 1] = x.sum(0, j);
    if (topk_margin(cls, cfg.dominant - 1) < min_margin) continue;
    ++compared;
    const tensor_view<const T, 3> keys(x.k.data(), {heads, n, d});
    const index_t k = visionzip::keep_count(n, cfg);
    std::vector<token_index> a(k), b(k), c(k);
    std::vector<float> fa(k * D), fb(k * D), fc(k * D);
    (void)visionzip::select(seq, x.view(), keys, hv, cfg, a, matrix_view<float>(fa.data(), {k, D}));
    (void)visionzip::select(par, x.source(), keys, hv, cfg, b, matrix_view<float>(fb.data(), {k, D}));
    // Only the CLS query row, as an engine would compute it next to FlashAttention.
    auto cls_only = x.source();
    cls_only.queries = tensor_view<const T, 3>(x.q.data(), {heads, 1, d}, {n * d, d, 1});
    (void)visionzip::select(seq, cls_only, keys, hv, cfg, c, matrix_view<float>(fc.data(), {k, D}));
    EXPECT_EQ(a, b) << "seed " << seed;
    EXPECT_EQ(a, c) << "seed " << seed;
    EXPECT_EQ(fa, fb);  // same tokens, same keys, same hidden: same merged rows
    EXPECT_EQ(fa, fc);
  }
  EXPECT_GE(compared, 8);
}

TEST(QkMethods, VisionZipSelectsIdenticalTokens) {
  visionzip_parity<float>(true);
  visionzip_parity<float>(false);
  visionzip_parity<Eigen::half>(true);
}

// ---- PruMerge -------------------------------------------------------------------------------

template <class T>
void prumerge_parity(bool structured) {
  // PruMerge works from Q/K natively (one 1024-wide head in LLaVA; smaller here): compare it with
  // select_from_attention on the CLS row of the materialised map.
  const index_t n = 1 + 100, dim = 32, D = 6;
  std::mt19937 gen(9);
  std::normal_distribution<float> dist;
  std::vector<float> feat((n - 1) * D);
  for (auto& v : feat) v = dist(gen);
  const matrix_view<const float> fv(feat.data(), {n - 1, D});
  int compared = 0;
  for (unsigned seed = 0; seed < 10; ++seed) {
    const auto x = make_layer<T>(1, n, dim, seed, structured);
    const matrix_view<const T> q(x.q.data(), {n, dim}), k(x.k.data(), {n, dim});
    std::vector<double> cls(n - 1);
    for (index_t j = 1; j < n; ++j) cls[j - 1] = x.ref[j];
    std::vector<float> row(x.map.begin() + 1, x.map.begin() + n);  // CLS row of the map, patches
    const vector_view<const float> rv(row.data(), {n - 1});
    for (auto mode : {prumerge::mode::fixed, prumerge::mode::parity}) {
      for (bool plus : {false, true}) {
        const prumerge::config cfg{.mode = mode, .plus = plus, .neighbours = 8};
        const index_t cap = prumerge::max_count(n - 1, cfg), rows = prumerge::max_rows(n - 1, cfg);
        std::vector<token_index> a(cap), b(cap);
        std::vector<float> ma(rows * D), mb(rows * D);
        const auto ra = prumerge::select_from_attention(seq, rv, matrix_view<const T>(x.k.data() + dim, {n - 1, dim}), fv,
                                                        cfg, a, matrix_view<float>(ma.data(), {rows, D}));
        // The fence and, in parity mode, the descending order of the kept values need margins.
        bool separated = fence_margin(cls, ra.iqr.upper_fence) >= min_margin;
        if (mode == prumerge::mode::parity) separated = separated && topk_margin(cls, ra.outliers) >= min_margin;
        std::vector<double> kept;
        for (index_t i = 0; i < ra.outliers; ++i) kept.push_back(cls[a[i]]);
        std::sort(kept.begin(), kept.end());
        for (std::size_t i = 1; i < kept.size(); ++i) separated = separated && (kept[i] - kept[i - 1]) / kept.back() >= min_margin;
        if (!separated) continue;
        ++compared;
        const auto rb = prumerge::select(par, q, k, fv, cfg, b, matrix_view<float>(mb.data(), {rows, D}));
        ASSERT_EQ(ra.count, rb.count) << "seed " << seed;
        EXPECT_EQ(ra.outliers, rb.outliers);
        a.resize(ra.count);
        b.resize(rb.count);
        EXPECT_EQ(a, b) << "seed " << seed;
        for (index_t i = 0; i < ra.rows() * D; ++i) EXPECT_NEAR(ma[i], mb[i], 1e-4f * (1.0f + std::abs(ma[i])));
      }
    }
  }
  EXPECT_GE(compared, 24);
}

TEST(QkMethods, PruMergeFromQkEqualsMaterialisedClsRow) {
  prumerge_parity<float>(true);
  prumerge_parity<float>(false);
  prumerge_parity<Eigen::half>(true);
}
