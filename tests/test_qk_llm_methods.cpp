// The LLM-side methods (FastV, FitPrune and the region masses they read) give the same result from
// a Q/K source (causal, GQA, fp16, windows) as from the materialised attention. As in
// test_qk_methods.cpp, decisions are compared only where their margin, recomputed in double
// precision from Q and K, exceeds 1e-4 relative (fp32 rounding is ~1e-6), and most seeds qualify.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "tokensel/methods/fastv.hpp"
#include "tokensel/methods/fitprune.hpp"
#include "tokensel/stats/qk_statistics.hpp"
#include "tokensel/stats/region_mass.hpp"

using namespace tokensel;

namespace {

constexpr double min_margin = 1e-4;

// One LLM prefill layer: [prefix | visual | text], Q [heads, L, d], K [kv_heads, L, d] (GQA), the
// causal materialised map [heads, L, L] and the causal reference probabilities in double.
template <class T>
struct llm_layer {
  index_t heads = 0, kv_heads = 0, L = 0, d = 0;
  token_range visual{};
  bool causal = true;
  std::vector<T> q, k;
  std::vector<float> map;
  std::vector<double> ref;

  qk_source<T> source() const {
    return {.queries = tensor_view<const T, 3>(q.data(), {heads, L, d}),
            .keys = tensor_view<const T, 3>(k.data(), {kv_heads, L, d}),
            .causal = causal};
  }
  head_attention_view<float> view() const { return head_attention_view<float>(map.data(), {heads, L, L}); }
  double reduced(head_reduction op, index_t i, index_t j) const {
    double acc = op == head_reduction::max ? -1.0 : 0.0;
    for (index_t h = 0; h < heads; ++h) {
      const double v = ref[(h * L + i) * L + j];
      acc = op == head_reduction::max ? std::max(acc, v) : acc + v;
    }
    return op == head_reduction::mean ? acc / static_cast<double>(heads) : acc;
  }
};

template <class T>
llm_layer<T> make_llm_layer(index_t heads, index_t kv_heads, index_t prefix, index_t n, index_t text, index_t d,
                            unsigned seed, bool structured, bool causal = true) {
  llm_layer<T> x;
  x.heads = heads;
  x.kv_heads = kv_heads;
  x.L = prefix + n + text;
  x.d = d;
  x.visual = {prefix, n};
  x.causal = causal;
  const index_t L = x.L;
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> qf(heads * L * d), kf(kv_heads * L * d);
  for (auto& v : qf) v = dist(gen);
  for (auto& v : kf) v = dist(gen);
  if (structured) {
    // The BOS token is an attention sink, and a few visual tokens draw attention.
    for (index_t g = 0; g < kv_heads; ++g) {
      for (index_t c = 0; c < d; ++c) kf[(g * L + 0) * d + c] += 1.5f;
      for (index_t v : {prefix + 2, prefix + n / 2, prefix + n - 3})
        for (index_t c = 0; c < d; ++c) kf[(g * L + v) * d + c] += 0.8f + 0.2f * static_cast<float>(g);
    }
  }
  x.q.resize(qf.size());
  x.k.resize(kf.size());
  for (std::size_t i = 0; i < qf.size(); ++i) x.q[i] = from_float<T>(qf[i]);
  for (std::size_t i = 0; i < kf.size(); ++i) x.k[i] = from_float<T>(kf[i]);
  x.map.resize(heads * L * L);
  materialize_attention(seq, x.source(), tensor_view<float, 3>(x.map.data(), {heads, L, L}));
  // Reference: causal softmax in double, query head h reads key head h / (heads / kv_heads).
  x.ref.assign(heads * L * L, 0.0);
  const index_t group = heads / kv_heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  std::vector<double> s(L);
  for (index_t h = 0; h < heads; ++h)
    for (index_t i = 0; i < L; ++i) {
      const index_t visible = causal ? i + 1 : L;
      double m = -std::numeric_limits<double>::infinity();
      for (index_t j = 0; j < visible; ++j) {
        double acc = 0.0;
        for (index_t c = 0; c < d; ++c)
          acc += double(to_float(x.q[(h * L + i) * d + c])) * double(to_float(x.k[((h / group) * L + j) * d + c]));
        s[j] = acc * scale;
        m = std::max(m, s[j]);
      }
      double total = 0.0;
      for (index_t j = 0; j < visible; ++j) total += s[j] = std::exp(s[j] - m);
      for (index_t j = 0; j < visible; ++j) x.ref[(h * L + i) * L + j] = s[j] / total;
    }
  return x;
}

double topk_margin(std::vector<double> s, index_t k) {
  if (k <= 0 || k >= static_cast<index_t>(s.size())) return std::numeric_limits<double>::infinity();
  double scale = 0.0;
  for (double v : s) scale = std::max(scale, std::abs(v));
  std::sort(s.begin(), s.end(), std::greater<>());
  return (s[k - 1] - s[k]) / scale;
}

void expect_close(float got, float want, const char* what, index_t j) {
  EXPECT_NEAR(got, want, 2e-5f * std::abs(want) + 1e-7f) << what << "[" << j << "]";
}

}  // namespace

// ---- FastV ----------------------------------------------------------------------------------

template <class T>
void fastv_parity(index_t heads, index_t kv_heads, bool structured) {
  const fastv::config cfg{.ratio = 0.5};
  int compared = 0;
  for (unsigned seed = 0; seed < 10; ++seed) {
    const auto x = make_llm_layer<T>(heads, kv_heads, 5, 48, 11, 16, seed, structured);
    const index_t n = x.visual.count, k = fastv::keep_count(n, cfg);
    std::vector<double> last(n);
    for (index_t j = 0; j < n; ++j) last[j] = x.reduced(head_reduction::mean, x.L - 1, x.visual.begin + j);
    if (topk_margin(last, k) < min_margin) continue;
    ++compared;
    std::vector<token_index> a(k), b(k), c(k), w(k);
    const auto ra = fastv::select(seq, x.view(), x.visual, cfg, a);
    const auto rb = fastv::select(par, x.source(), x.visual, cfg, b);
    EXPECT_EQ(a, b) << "seed " << seed;
    EXPECT_EQ(ra.count, rb.count);
    EXPECT_NEAR(ra.visual_mass, rb.visual_mass, 1e-5f);
    // Only the last query row (decode-style, bottom-right causal alignment: it sees every key).
    auto last_only = x.source();
    last_only.queries = tensor_view<const T, 3>(x.q.data() + (x.L - 1) * x.d, {heads, 1, x.d}, {x.L * x.d, x.d, 1});
    (void)fastv::select(seq, last_only, x.visual, cfg, c);
    EXPECT_EQ(a, c) << "seed " << seed;
    // A source whose key window starts 3 tokens before the span: the span is relative to it.
    const auto windowed = restrict_window(x.source(), token_range::all(x.L), {x.visual.begin - 3, x.L - x.visual.begin + 3});
    (void)fastv::select(seq, windowed, token_range{3, n}, cfg, w);
    EXPECT_EQ(a, w) << "seed " << seed;
  }
  EXPECT_GE(compared, 8);
}

TEST(QkLlmMethods, FastVSelectsIdenticalTokens) {
  fastv_parity<float>(8, 2, true);   // GQA 4:1
  fastv_parity<float>(4, 4, false);  // MHA, plain random
  fastv_parity<Eigen::half>(8, 4, true);
}

TEST(QkLlmMethods, FastVBatchesFromQk) {
  const auto x0 = make_llm_layer<float>(4, 2, 5, 36, 7, 16, 1, true);
  const auto x1 = make_llm_layer<float>(4, 2, 3, 40, 9, 16, 2, true);
  const fastv::config cfg{.ratio = 0.75};
  const qk_source<float> sources[2] = {x0.source(), x1.source()};
  const token_range spans[2] = {x0.visual, x1.visual};
  std::vector<token_index> idx(2 * 10), counts(2);
  fastv::select(par, std::span<const qk_source<float>>(sources), std::span<const token_range>(spans), cfg,
                selection_batch{tensor_view<token_index, 2>(idx.data(), {2, 10}), counts});
  for (index_t b = 0; b < 2; ++b) {
    std::vector<token_index> one(fastv::keep_count(spans[b].count, cfg));
    (void)fastv::select(seq, sources[b], spans[b], cfg, one);
    ASSERT_EQ(counts[b], static_cast<token_index>(one.size()));
    EXPECT_EQ(std::vector<token_index>(idx.begin() + b * 10, idx.begin() + b * 10 + counts[b]), one);
  }
}

// ---- region masses --------------------------------------------------------------------------

template <class T>
void region_mass_parity(index_t heads, index_t kv_heads, bool causal) {
  for (unsigned seed = 0; seed < 4; ++seed) {
    // 70 visual + 80 text rows: the tiles of 64 rows straddle the visual / text boundary.
    const auto x = make_llm_layer<T>(heads, kv_heads, 6, 70, 80, 16, seed, true, causal);
    for (auto op : {head_reduction::max, head_reduction::mean}) {
      const index_t n = x.visual.count;
      std::vector<float> ca(n), sa(n), cb(n), sb(n), cc(n), sc(n);
      const auto ra = region_mass(seq, x.view(), x.visual, op, {ca, sa});
      const auto rb = region_mass(seq, x.source(), x.visual, op, {cb, sb});
      const auto rc = region_mass(par, x.source(), x.visual, op, {cc, sc});
      EXPECT_EQ(ra.text_rows, rb.text_rows);
      expect_close(rb.cross_mass, ra.cross_mass, "cross_mass", 0);
      expect_close(rb.self_mass, ra.self_mass, "self_mass", 0);
      for (index_t j = 0; j < n; ++j) {
        expect_close(cb[j], ca[j], "cross", j);
        expect_close(sb[j], sa[j], "self", j);
      }
      // seq and par from Q/K: bit-identical.
      EXPECT_EQ(cb, cc);
      EXPECT_EQ(sb, sc);
      EXPECT_EQ(rb.cross_mass, rc.cross_mass);
      EXPECT_EQ(rb.self_mass, rc.self_mass);
      // Against the double reference (the same definitions as region_mass.hpp).
      const index_t s0 = x.visual.begin, T_rows = x.L - x.visual.end();
      double wc = 0.0, ws = 0.0;
      for (index_t j = 0; j < n; ++j) {
        double cross = 0.0, self = 0.0;
        for (index_t i = s0 + n; i < x.L; ++i) cross += x.reduced(op, i, s0 + j);
        for (index_t i = s0; i < s0 + n; ++i) self += x.reduced(op, i, s0 + j);
        wc += cross;
        ws += self;
        EXPECT_NEAR(cb[j], cross, 2e-5 * cross + 1e-7) << "cross " << j;
        EXPECT_NEAR(sb[j], self / n, 2e-5 * self / n + 1e-8) << "self " << j;
      }
      EXPECT_NEAR(rb.cross_mass, wc / T_rows, 2e-5 * wc / T_rows);
      EXPECT_NEAR(rb.self_mass, ws / n, 2e-5 * ws / n);
    }
  }
}

TEST(QkLlmMethods, RegionMassMatchesMaterialisedMap) {
  region_mass_parity<float>(8, 2, true);
  region_mass_parity<float>(4, 4, false);
  region_mass_parity<Eigen::half>(4, 2, true);
}

TEST(QkLlmMethods, RegionMassEdgeCasesAndErrors) {
  const auto x = make_llm_layer<float>(4, 2, 4, 20, 0, 8, 3, true);  // no text rows
  std::vector<float> c(20), s(20);
  const auto r = region_mass(seq, x.source(), x.visual, head_reduction::max, {c, s});
  EXPECT_EQ(r.text_rows, 0);
  EXPECT_EQ(r.cross_mass, 0.0f);
  for (float v : c) EXPECT_EQ(v, 0.0f);
  EXPECT_GT(r.self_mass, 0.0f);
  EXPECT_EQ(region_mass(seq, x.source(), token_range{3, 0}, head_reduction::max).self_mass, 0.0f);
  EXPECT_THROW((void)region_mass(seq, x.source(), token_range{10, 20}, head_reduction::max), error);
  std::vector<float> small(3);
  EXPECT_THROW((void)region_mass(seq, x.source(), x.visual, head_reduction::max, {small, {}}), error);
  auto rect = x.source();
  rect.col_window = {0, 10};
  EXPECT_THROW((void)region_mass(seq, rect, token_range{0, 5}, head_reduction::max), error);
}

// ---- FitPrune -------------------------------------------------------------------------------

template <class T>
void fitprune_parity(index_t heads, index_t kv_heads, bool structured) {
  int compared = 0;
  for (unsigned seed = 0; seed < 10; ++seed) {
    const auto x = make_llm_layer<T>(heads, kv_heads, 5, 48, 20, 16, seed, structured);
    const index_t n = x.visual.count, drop = 12, s0 = x.visual.begin;
    std::vector<double> score(n);
    for (index_t j = 0; j < n; ++j) {
      double cross = 0.0, self = 0.0;
      for (index_t i = s0 + n; i < x.L; ++i) cross += x.reduced(head_reduction::max, i, s0 + j);
      for (index_t i = s0; i < s0 + n; ++i) self += x.reduced(head_reduction::max, i, s0 + j);
      score[j] = -(cross * self / n);  // bottom-k of the score = top-k of its negation
    }
    if (topk_margin(score, drop) < min_margin) continue;
    ++compared;
    std::vector<token_index> a(n - drop), b(n - drop);
    const auto ra = fitprune::prune_layer(seq, x.view(), x.visual, drop, a);
    const auto rb = fitprune::prune_layer(par, x.source(), x.visual, drop, b);
    EXPECT_EQ(a, b) << "seed " << seed;
    EXPECT_EQ(ra.count, rb.count);
    EXPECT_NEAR(ra.cross_mass, rb.cross_mass, 2e-5f * ra.cross_mass);
    EXPECT_NEAR(ra.self_mass, rb.self_mass, 2e-5f * ra.self_mass);
  }
  EXPECT_GE(compared, 8);
}

TEST(QkLlmMethods, FitPrunePruneLayerSelectsIdenticalTokens) {
  fitprune_parity<float>(8, 2, true);
  fitprune_parity<float>(4, 4, false);
  fitprune_parity<Eigen::half>(8, 4, true);
}

TEST(QkLlmMethods, FitPruneBatchesAndCalibrationFromQk) {
  const auto x0 = make_llm_layer<float>(4, 2, 5, 30, 10, 16, 4, true);
  const auto x1 = make_llm_layer<float>(4, 2, 5, 30, 14, 16, 5, true);
  // Ragged prune_layer over Q/K sources equals the single-sample calls.
  const qk_source<float> sources[2] = {x0.source(), x1.source()};
  const token_range spans[2] = {x0.visual, x1.visual};
  const index_t drops[2] = {6, 9};
  std::vector<token_index> idx(2 * 30), counts(2);
  fitprune::prune_layer(par, std::span<const qk_source<float>>(sources), std::span<const token_range>(spans),
                        std::span<const index_t>(drops), fitprune::config{},
                        selection_batch{tensor_view<token_index, 2>(idx.data(), {2, 30}), counts});
  for (index_t b = 0; b < 2; ++b) {
    std::vector<token_index> one(30 - drops[b]);
    (void)fitprune::prune_layer(seq, sources[b], spans[b], drops[b], one);
    ASSERT_EQ(counts[b], static_cast<token_index>(one.size()));
    EXPECT_EQ(std::vector<token_index>(idx.begin() + b * 30, idx.begin() + b * 30 + counts[b]), one);
  }
  // Calibration statistics from Q/K equal those from the maps (to fp32 rounding).
  const fitprune::flops_model geometry{.layers = 2, .visual_tokens = 30};
  fitprune::calibrator from_maps(geometry), from_qk(geometry);
  for (const auto* x : {&x0, &x1}) {
    const index_t a = from_maps.add_sample(), b = from_qk.add_sample();
    for (index_t l = 0; l < 2; ++l) {
      from_maps.add_layer(seq, a, l, x->view(), x->visual);
      from_qk.add_layer(seq, b, l, x->source(), x->visual);
    }
  }
  std::vector<token_index> present(30);
  for (index_t j = 0; j < 30; ++j) present[j] = static_cast<token_index>(j);
  for (index_t s = 0; s < 2; ++s)
    for (index_t l = 0; l < 2; ++l) {
      EXPECT_NEAR(from_qk.cross_mass(s, l), from_maps.cross_mass(s, l), 2e-5 * from_maps.cross_mass(s, l));
      EXPECT_NEAR(from_qk.self_mass(s, l), from_maps.self_mass(s, l), 2e-5 * from_maps.self_mass(s, l));
      std::vector<float> c1(30), v1(30), c2(30), v2(30);
      from_maps.scores(s, l, present, c1, v1);
      from_qk.scores(s, l, present, c2, v2);
      for (index_t j = 0; j < 30; ++j) {
        expect_close(c2[j], c1[j], "cross", j);
        expect_close(v2[j], v1[j], "self", j);
      }
    }
}
