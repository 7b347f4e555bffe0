#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "tokensel/methods/freepruner.hpp"

using namespace tokensel;
namespace fp = tokensel::freepruner;

namespace {

using idx_vec = std::vector<token_index>;

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

// ---- the hand-constructed example (same construction as tools/reference/freepruner_reference.py)
// 3 encoder layers, N = 10 tokens (CLS + 3x3 patches), 2 heads whose mean is the designed patch map.
constexpr index_t kN = 10, kPatches = 9, kHeads = 2;
constexpr float kBase = 0.0625f;

std::vector<std::vector<float>> example_patch_maps() {
  std::vector<std::vector<float>> m(3, std::vector<float>(kPatches * kPatches, kBase));
  auto at = [&](int l, int i, int j) -> float& { return m[l][i * kPatches + j]; };
  for (int i = 0; i < kPatches; ++i) {
    if (i != 3) at(0, i, 3) = 0.25f;   // r0[3] = 2
    if (i != 7) at(0, i, 7) = 0.125f;  // r0[7] = 1
    if (i != 5) at(1, i, 5) = 0.25f;   // r1[5] = 2, everything else ties at 0.5
    if (i != 6) at(2, i, 6) = 0.5f;    // r2[6] = 4
  }
  at(0, 1, 1) = 4.0f;  // a large diagonal entry must not count: r0[1] = 0.5
  at(2, 1, 3) = at(2, 2, 3) = 0.5f;  // r2[3] = 1.375 (rows 1 and 2 are never tested)
  at(2, 0, 8) = 0.3125f;             // outlier of row 0 at the complementary layer
  at(2, 5, 2) = 0.25f;               // outlier of row 5
  at(2, 7, 4) = 0.125f;              // outlier of row 7
  return m;
}

/// [heads, N, N]: head 0 = M + delta, head 1 = M - delta (exact mean M); CLS row/column 0.875.
std::vector<float> attention_from_map(const std::vector<float>& m) {
  std::vector<float> a(kHeads * kN * kN, 0.875f);
  for (int i = 0; i < kPatches; ++i) {
    for (int j = 0; j < kPatches; ++j) {
      const float d = (i + j) % 2 == 1 ? 0.03125f : -0.03125f;
      a[0 * kN * kN + (i + 1) * kN + (j + 1)] = m[i * kPatches + j] + d;
      a[1 * kN * kN + (i + 1) * kN + (j + 1)] = m[i * kPatches + j] - d;
    }
  }
  return a;
}

struct example {
  std::vector<std::vector<float>> data;
  std::vector<head_attention_view<float>> views;
  example() {
    for (const auto& m : example_patch_maps()) data.push_back(attention_from_map(m));
    for (auto& d : data) views.emplace_back(d.data(), std::array<index_t, 3>{kHeads, kN, kN});
  }
  fp::layer_stack<float> stack() const { return {views, 0}; }
};

fp::config example_config(index_t k = 2, index_t comp = 2) {
  return fp::config{.first_layer = 0, .last_layer = 2, .k_pivotal = k, .complementary_layer = comp};
}

fp::config fixed(fp::config cfg, index_t budget) {
  cfg.mode = fp::mode::fixed;
  cfg.budget = budget;
  return cfg;
}

template <class P, class T>
idx_vec run_one_shot(const P& policy, const fp::layer_stack<T>& stack, const fp::config& cfg, fp::result* res = nullptr,
                     fp::inspection* info = nullptr) {
  const index_t n = stack.layers[static_cast<std::size_t>(cfg.first_layer - stack.offset)].extent(1) - 1;
  idx_vec out(static_cast<std::size_t>(fp::max_count(n, cfg)), -1);
  fp::inspection local;
  const auto r = fp::select(policy, stack, cfg, out, info != nullptr ? *info : local);
  if (res != nullptr) *res = r;
  out.resize(static_cast<std::size_t>(r.count));
  return out;
}

/// Feeds the layers of the stack in the given order, then finishes.
template <class P, class T>
idx_vec run_streaming(const P& policy, const fp::layer_stack<T>& stack, const fp::config& cfg,
                      const std::vector<index_t>& order, fp::result* res = nullptr, fp::inspection* info = nullptr) {
  const index_t tokens = stack.layers[0].extent(1);
  fp::selector sel(tokens, cfg);
  for (index_t l : order) {
    if (sel.needs(l)) sel.add_layer(policy, l, stack.layers[static_cast<std::size_t>(l - stack.offset)]);
  }
  EXPECT_TRUE(sel.complete());
  idx_vec out(static_cast<std::size_t>(fp::max_count(sel.patches(), cfg)), -1);
  const auto r = sel.finish(out);
  if (res != nullptr) *res = r;
  if (info != nullptr) *info = sel.inspect();
  out.resize(static_cast<std::size_t>(r.count));
  return out;
}

void expect_same_inspection(const fp::inspection& a, const fp::inspection& b) {
  EXPECT_EQ(a.first_layer, b.first_layer);
  EXPECT_EQ(a.pivotal_per_layer, b.pivotal_per_layer);
  EXPECT_EQ(a.pivotal, b.pivotal);
  EXPECT_EQ(a.complementary, b.complementary);
  ASSERT_EQ(a.fences.size(), b.fences.size());
  for (std::size_t i = 0; i < a.fences.size(); ++i) {
    EXPECT_EQ(a.fences[i].token, b.fences[i].token);
    EXPECT_EQ(a.fences[i].outliers, b.fences[i].outliers);
    EXPECT_EQ(a.fences[i].q1, b.fences[i].q1);
    EXPECT_EQ(a.fences[i].q3, b.fences[i].q3);
    EXPECT_EQ(a.fences[i].upper_fence, b.fences[i].upper_fence);
  }
}

void expect_same_result(const fp::result& a, const fp::result& b) {
  EXPECT_EQ(a.count, b.count);
  EXPECT_EQ(a.pivotal, b.pivotal);
  EXPECT_EQ(a.complementary, b.complementary);
  EXPECT_EQ(a.candidates, b.candidates);
  EXPECT_EQ(a.dropped, b.dropped);
  EXPECT_EQ(a.filled, b.filled);
}

/// Random softmax attention [heads, N, N] per layer, peaked so that scores are well separated.
std::vector<std::vector<float>> random_layers(index_t layers, index_t heads, index_t tokens, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> z(0.0f, 2.0f);
  std::vector<std::vector<float>> out(static_cast<std::size_t>(layers));
  for (auto& a : out) {
    a.resize(static_cast<std::size_t>(heads * tokens * tokens));
    for (index_t h = 0; h < heads; ++h) {
      for (index_t i = 0; i < tokens; ++i) {
        float* row = a.data() + (h * tokens + i) * tokens;
        float mx = -1e30f;
        for (index_t j = 0; j < tokens; ++j) mx = std::max(mx, row[j] = z(gen));
        float s = 0;
        for (index_t j = 0; j < tokens; ++j) s += row[j] = std::exp(row[j] - mx);
        for (index_t j = 0; j < tokens; ++j) row[j] /= s;
      }
    }
  }
  return out;
}

std::vector<head_attention_view<float>> views_of(const std::vector<std::vector<float>>& data, index_t heads, index_t tokens) {
  std::vector<head_attention_view<float>> v;
  for (const auto& d : data) v.emplace_back(d.data(), std::array<index_t, 3>{heads, tokens, tokens});
  return v;
}

bool ascending_unique(const idx_vec& v, index_t n) {
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (v[i] < 0 || v[i] >= n) return false;
    if (i > 0 && v[i] <= v[i - 1]) return false;
  }
  return true;
}

}  // namespace

// ---- configuration and counts ------------------------------------------------------------------

TEST(FreePrunerConfig, DefaultsFollowTheSpec) {
  const fp::config cfg;
  EXPECT_EQ(cfg.heads, head_reduction::mean);
  EXPECT_EQ(cfg.first_layer, 6);
  EXPECT_EQ(cfg.last_layer, 22);
  EXPECT_EQ(cfg.k_pivotal, 8);
  EXPECT_EQ(cfg.complementary_layer, 22);
  EXPECT_EQ(cfg.iqr_multiplier, 1.5);
  EXPECT_EQ(cfg.mode, fp::mode::adaptive);
  EXPECT_TRUE(cfg.skip_cls);
  EXPECT_NO_THROW(fp::validate(cfg));
  EXPECT_EQ(fp::pivotal_layers(cfg), 17);
  EXPECT_EQ(fp::lowest_layer(cfg), 6);
  EXPECT_EQ(fp::layers_end(cfg), 23);
  EXPECT_TRUE(fp::uses_layer(cfg, 22));
  EXPECT_FALSE(fp::uses_layer(cfg, 23));
  EXPECT_FALSE(fp::uses_layer(cfg, 5));
  EXPECT_TRUE(fp::uses_layer(fp::config{.complementary_layer = 3}, 3));
}

TEST(FreePrunerConfig, KeepCountAndMaxCount) {
  EXPECT_EQ(fp::keep_count(576, fp::config{.mode = fp::mode::fixed, .budget = 64}), 64);
  EXPECT_EQ(fp::keep_count(64, fp::config{.mode = fp::mode::fixed, .budget = 64}), 64);
  EXPECT_EQ(fp::max_count(576, fp::config{.mode = fp::mode::fixed, .budget = 64}), 64);
  EXPECT_EQ(fp::max_count(576, fp::config{}), 576);
  EXPECT_EQ(fp::max_count(0, fp::config{}), 0);
  expect_error([] { (void)fp::keep_count(63, fp::config{.mode = fp::mode::fixed, .budget = 64}); }, errc::invalid_argument,
               "freepruner.budget = 64: exceeds the 63 patches");
  expect_error([] { fp::max_count(0, fp::config{.mode = fp::mode::fixed, .budget = 1}); }, errc::invalid_argument,
               "freepruner.budget = 1");
  expect_error([] { (void)fp::keep_count(576, fp::config{}); }, errc::invalid_argument, "freepruner.mode = adaptive");
  expect_error([] { fp::max_count(-1, fp::config{}); }, errc::invalid_argument, "freepruner.n = -1");
}

TEST(FreePrunerConfig, RejectsEveryBadParameter) {
  expect_error([] { fp::validate({.first_layer = -1}); }, errc::invalid_argument, "freepruner.first_layer = -1");
  expect_error([] { fp::validate({.first_layer = 7, .last_layer = 6}); }, errc::invalid_argument,
               "freepruner.last_layer = 6: must be >= first_layer (7)");
  expect_error([] { fp::validate({.k_pivotal = 0}); }, errc::invalid_argument, "freepruner.k_pivotal = 0");
  expect_error([] { fp::validate({.k_pivotal = -3}); }, errc::invalid_argument, "freepruner.k_pivotal = -3");
  expect_error([] { fp::validate({.complementary_layer = -1}); }, errc::invalid_argument,
               "freepruner.complementary_layer = -1");
  expect_error([] { fp::validate({.iqr_multiplier = -0.5}); }, errc::invalid_argument, "freepruner.iqr_multiplier = -0.5");
  expect_error([] { fp::validate({.iqr_multiplier = std::numeric_limits<double>::quiet_NaN()}); },
               errc::invalid_argument, "freepruner.iqr_multiplier = nan");
  expect_error([] { fp::validate({.mode = fp::mode::fixed}); }, errc::invalid_argument, "freepruner.budget = 0");
  expect_error([] { fp::validate({.budget = 32}); }, errc::invalid_argument, "freepruner.budget = 32");
  expect_error([] { fp::validate({.mode = static_cast<fp::mode>(7)}); }, errc::invalid_argument, "freepruner.mode = 7");
  expect_error([] { fp::validate({.heads = static_cast<head_reduction>(9)}); }, errc::invalid_argument,
               "freepruner.heads = 9");
}

// ---- the hand-constructed example --------------------------------------------------------------
// Patch maps (head mean, patch submatrix) and contribution degrees:
//   layer 0: r0[3] = 8 * 0.25 = 2, r0[7] = 1, others 0.5 (token 1 has diagonal 4: 4.4375 - 4 + ... = 0.5)
//   layer 1: r1[5] = 2, all others tie at 0.5 -> tie rule picks token 0
//   layer 2: r2[6] = 4, r2[3] = 1.375, r2[8] = 0.75, r2[2] = 0.6875, r2[4] = 0.5625, others 0.5
// k = 2: P = {3,7} u {0,5} u {3,6} = {0,3,5,6,7}. Rows of M2 for p in P have at most two entries
// above 0.0625, so Q1 = Q3 = fence = 0.0625 and every larger entry is an outlier:
//   row 0 -> {6, 8}, row 3 -> {6}, row 5 -> {2, 6}, row 6 -> {} (all equal: strict >), row 7 -> {4, 6}.
// Verified by tools/reference/freepruner_reference.py, whose output is:
//   k=2, layers 0..2, complementary 2: per layer {0: [3, 7], 1: [0, 5], 2: [3, 6]}
//     P = [0, 3, 5, 6, 7], C \ P = [2, 4, 8], S = [0, 2, 3, 4, 5, 6, 7, 8]
//     fences (p, outliers, q1, q3, fence) = (0, 2, .0625, .0625, .0625), (3, 1, ...), (5, 2, ...), (6, 0, ...), (7, 2, ...)
//   k=1, complementary 2: per layer {0: [3], 1: [5], 2: [6]}; P = [3, 5, 6], C \ P = [2], S = [2, 3, 5, 6]
//   k=2, complementary 1: P = [0, 3, 5, 6, 7], C \ P = [], S = [0, 3, 5, 6, 7]
//     fences outliers per p: (0, 1), (3, 1), (5, 0), (6, 1), (7, 1)
//   fixed k=2 B=2: [3, 6]  B=3: [3, 5, 6]  B=4: [3, 5, 6, 7]  B=6: [0, 3, 5, 6, 7, 8]  B=7: [0, 2, 3, 5, 6, 7, 8]
//         B=9: [0..8]
//   fixed k=1 B=4: [2, 3, 5, 6]  B=5: [2, 3, 5, 6, 8]  B=6: [2, 3, 4, 5, 6, 8]  B=7: [0, 2, 3, 4, 5, 6, 8]
//   max_r = [0.5, 0.5, 0.6875, 2.0, 0.5625, 2.0, 4.0, 1.0, 0.75]

TEST(FreePrunerExample, AdaptivePivotalAndComplementary) {
  const example ex;
  fp::result res;
  fp::inspection info;
  EXPECT_EQ(run_one_shot(seq, ex.stack(), example_config(), &res, &info), (idx_vec{0, 2, 3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(res.count, 8);
  EXPECT_EQ(res.pivotal, 5);
  EXPECT_EQ(res.complementary, 3);
  EXPECT_EQ(res.candidates, 8);
  EXPECT_EQ(res.dropped, 0);
  EXPECT_EQ(res.filled, 0);
  EXPECT_EQ(info.first_layer, 0);
  EXPECT_EQ(info.pivotal_per_layer, (std::vector<idx_vec>{{3, 7}, {0, 5}, {3, 6}}));
  EXPECT_EQ(info.pivotal, (idx_vec{0, 3, 5, 6, 7}));
  EXPECT_EQ(info.complementary, (idx_vec{2, 4, 8}));
  ASSERT_EQ(info.fences.size(), 5u);
  const idx_vec tokens{0, 3, 5, 6, 7};
  const std::vector<index_t> outliers{2, 1, 2, 0, 2};
  for (std::size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(info.fences[i].token, tokens[i]);
    EXPECT_EQ(info.fences[i].outliers, outliers[i]);
    EXPECT_EQ(info.fences[i].q1, 0.0625);
    EXPECT_EQ(info.fences[i].q3, 0.0625);
    EXPECT_EQ(info.fences[i].upper_fence, 0.0625);
  }
}

TEST(FreePrunerExample, OnePivotalPerLayer) {
  const example ex;
  fp::result res;
  fp::inspection info;
  EXPECT_EQ(run_one_shot(seq, ex.stack(), example_config(1), &res, &info), (idx_vec{2, 3, 5, 6}));
  EXPECT_EQ(res.pivotal, 3);
  EXPECT_EQ(res.complementary, 1);
  EXPECT_EQ(info.pivotal_per_layer, (std::vector<idx_vec>{{3}, {5}, {6}}));
  EXPECT_EQ(info.complementary, (idx_vec{2}));
}

TEST(FreePrunerExample, ComplementaryLayerBeforeTheLastPivotalLayer) {
  const example ex;
  fp::result res;
  fp::inspection info;
  EXPECT_EQ(run_one_shot(seq, ex.stack(), example_config(2, 1), &res, &info), (idx_vec{0, 3, 5, 6, 7}));
  EXPECT_EQ(res.complementary, 0);
  EXPECT_TRUE(info.complementary.empty());
  std::vector<index_t> outliers;
  for (const auto& f : info.fences) outliers.push_back(f.outliers);
  EXPECT_EQ(outliers, (std::vector<index_t>{1, 1, 0, 1, 1}));
}

TEST(FreePrunerExample, FixedModeTruncatesByRank) {
  const example ex;
  const std::vector<std::pair<index_t, idx_vec>> cases = {
      {2, {3, 6}},              // 6 (max r 4), then 3 before 5 (both max r 2: lower index)
      {3, {3, 5, 6}},           //
      {4, {3, 5, 6, 7}},        // all pivotal but 0 (max r 0.5)
      {6, {0, 3, 5, 6, 7, 8}},  // all pivotal, then complementary 8 (margin 0.25)
      {7, {0, 2, 3, 5, 6, 7, 8}},  // then 2 (margin 0.1875) before 4 (0.0625)
      {8, {0, 2, 3, 4, 5, 6, 7, 8}},  // exactly S
  };
  for (const auto& [budget, expected] : cases) {
    fp::result res;
    EXPECT_EQ(run_one_shot(seq, ex.stack(), fixed(example_config(), budget), &res), expected) << "B = " << budget;
    EXPECT_EQ(res.count, budget);
    EXPECT_EQ(res.candidates, 8);
    EXPECT_EQ(res.dropped, 8 - budget);
    EXPECT_EQ(res.filled, 0);
  }
}

TEST(FreePrunerExample, FixedModeFillsByLastLayerContribution) {
  const example ex;
  // k = 1: S = {2, 3, 5, 6}; r of layer 2 outside S: 8 (0.75), 4 (0.5625), then 0, 1, 7 tie at 0.5.
  const std::vector<std::pair<index_t, idx_vec>> cases = {
      {4, {2, 3, 5, 6}},
      {5, {2, 3, 5, 6, 8}},
      {6, {2, 3, 4, 5, 6, 8}},
      {7, {0, 2, 3, 4, 5, 6, 8}},  // tie at 0.5: lowest index 0
      {9, {0, 1, 2, 3, 4, 5, 6, 7, 8}},
  };
  for (const auto& [budget, expected] : cases) {
    fp::result res;
    EXPECT_EQ(run_one_shot(seq, ex.stack(), fixed(example_config(1), budget), &res), expected) << "B = " << budget;
    EXPECT_EQ(res.count, budget);
    EXPECT_EQ(res.filled, budget - 4);
    EXPECT_EQ(res.dropped, 0);
  }
  // k = 2, B = 9: S has 8, the fill adds token 1.
  EXPECT_EQ(run_one_shot(seq, ex.stack(), fixed(example_config(), 9)), (idx_vec{0, 1, 2, 3, 4, 5, 6, 7, 8}));
}

TEST(FreePrunerExample, HalfAndBfloat16GiveTheSameSelection) {
  // Every value of the example is exactly representable in fp16 and bf16.
  const example ex;
  std::vector<std::vector<Eigen::half>> h;
  std::vector<std::vector<Eigen::bfloat16>> b;
  for (const auto& d : ex.data) {
    h.emplace_back(d.size());
    b.emplace_back(d.size());
    for (std::size_t i = 0; i < d.size(); ++i) {
      h.back()[i] = Eigen::half(d[i]);
      b.back()[i] = Eigen::bfloat16(d[i]);
      ASSERT_EQ(static_cast<float>(h.back()[i]), d[i]);
      ASSERT_EQ(static_cast<float>(b.back()[i]), d[i]);
    }
  }
  std::vector<head_attention_view<Eigen::half>> hv;
  std::vector<head_attention_view<Eigen::bfloat16>> bv;
  for (auto& d : h) hv.emplace_back(d.data(), std::array<index_t, 3>{kHeads, kN, kN});
  for (auto& d : b) bv.emplace_back(d.data(), std::array<index_t, 3>{kHeads, kN, kN});
  for (const auto& cfg : {example_config(), fixed(example_config(1), 7)}) {
    const auto expected = run_one_shot(seq, ex.stack(), cfg);
    EXPECT_EQ(run_one_shot(seq, fp::layer_stack<Eigen::half>{hv, 0}, cfg), expected);
    EXPECT_EQ(run_one_shot(par, fp::layer_stack<Eigen::bfloat16>{bv, 0}, cfg), expected);
  }
}

TEST(FreePrunerExample, SkipClsOffUsesEveryToken) {
  // With skip_cls = false the CLS token (0.875 everywhere in its row and column) is token 0 and
  // has the largest contribution degree in every layer.
  const example ex;
  auto cfg = example_config(1);
  cfg.skip_cls = false;
  fp::inspection info;
  fp::result res;
  std::vector<token_index> out(10);
  res = fp::select(seq, ex.stack(), cfg, out, info);
  EXPECT_EQ(info.pivotal_per_layer, (std::vector<idx_vec>{{0}, {0}, {0}}));
  EXPECT_EQ(res.pivotal, 1);
}

// ---- streaming == one-shot, policies, strides ---------------------------------------------------

TEST(FreePrunerStreaming, EqualsOneShotInAnyLayerOrder) {
  const example ex;
  for (const auto& cfg : {example_config(), example_config(1), example_config(2, 1), example_config(2, 0),
                          fixed(example_config(), 4), fixed(example_config(1), 7)}) {
    fp::result r1, r2;
    fp::inspection i1, i2;
    const auto expected = run_one_shot(seq, ex.stack(), cfg, &r1, &i1);
    for (const auto& order : {std::vector<index_t>{0, 1, 2}, {2, 1, 0}, {1, 2, 0}, {0, 2, 1}}) {
      EXPECT_EQ(run_streaming(seq, ex.stack(), cfg, order, &r2, &i2), expected);
      expect_same_result(r1, r2);
      expect_same_inspection(i1, i2);
      EXPECT_EQ(run_streaming(par, ex.stack(), cfg, order), expected);
    }
  }
}

TEST(FreePrunerStreaming, RandomLayersSeqParStreamingStridesAgree) {
  const index_t L = 6, H = 3, N = 50, n = N - 1;
  const auto data = random_layers(L, H, N, 1234);
  const auto views = views_of(data, H, N);
  const fp::layer_stack<float> stack{views, 0};
  const fp::config base{.first_layer = 1, .last_layer = 4, .k_pivotal = 3, .complementary_layer = 3};
  // Strided copy: keys padded to 53 columns, heads stored in reverse order with a negative stride.
  std::vector<std::vector<float>> padded(L, std::vector<float>(static_cast<std::size_t>(H * N * 53), 99.0f));
  std::vector<head_attention_view<float>> strided;
  for (index_t l = 0; l < L; ++l) {
    for (index_t h = 0; h < H; ++h)
      for (index_t i = 0; i < N; ++i)
        for (index_t j = 0; j < N; ++j)
          padded[l][((H - 1 - h) * N + i) * 53 + j] = data[l][(h * N + i) * N + j];
    strided.emplace_back(padded[l].data() + (H - 1) * N * 53, std::array<index_t, 3>{H, N, N},
                         std::array<index_t, 3>{-N * 53, 53, 1});
  }
  for (const auto& cfg : {base, fixed(base, 10), fixed(base, 40), fixed(base, n)}) {
    fp::result r1, r2;
    fp::inspection i1, i2;
    const auto a = run_one_shot(seq, stack, cfg, &r1, &i1);
    EXPECT_TRUE(ascending_unique(a, n));
    if (cfg.mode == fp::mode::fixed) {
      EXPECT_EQ(static_cast<index_t>(a.size()), cfg.budget);
    }
    EXPECT_EQ(run_one_shot(par, stack, cfg, &r2, &i2), a);
    expect_same_result(r1, r2);
    expect_same_inspection(i1, i2);
    EXPECT_EQ(run_one_shot(seq, fp::layer_stack<float>{strided, 0}, cfg), a);
    EXPECT_EQ(run_streaming(seq, stack, cfg, {0, 1, 2, 3, 4, 5}, &r2, &i2), a);
    expect_same_result(r1, r2);
    expect_same_inspection(i1, i2);
    EXPECT_EQ(run_streaming(par, stack, cfg, {5, 4, 3, 2, 1, 0}), a);
    if (cfg.mode == fp::mode::adaptive) {
      // S = P u (C \ P), and every pivotal set has k entries drawn from P.
      idx_vec s = i1.pivotal;
      s.insert(s.end(), i1.complementary.begin(), i1.complementary.end());
      std::sort(s.begin(), s.end());
      EXPECT_EQ(s, a);
      EXPECT_EQ(i1.pivotal_per_layer.size(), 4u);
      for (const auto& set : i1.pivotal_per_layer) {
        EXPECT_EQ(set.size(), 3u);
        for (token_index t : set) EXPECT_TRUE(std::binary_search(i1.pivotal.begin(), i1.pivotal.end(), t));
      }
      EXPECT_EQ(i1.fences.size(), i1.pivotal.size());
    }
  }
}

TEST(FreePrunerStreaming, ResetReusesTheSelector) {
  const example ex;
  const auto cfg = example_config(2, 1);
  fp::selector sel(kN, cfg);
  EXPECT_EQ(sel.tokens(), kN);
  EXPECT_EQ(sel.patches(), kPatches);
  EXPECT_EQ(sel.batch(), 1);
  for (int round = 0; round < 2; ++round) {
    EXPECT_FALSE(sel.complete());
    for (index_t l = 0; l < 3; ++l) sel.add_layer(seq, l, ex.views[static_cast<std::size_t>(l)]);
    EXPECT_FALSE(sel.needs(1));
    idx_vec out(9);
    const auto r = sel.finish(out);
    out.resize(static_cast<std::size_t>(r.count));
    EXPECT_EQ(out, (idx_vec{0, 3, 5, 6, 7}));
    // finish is repeatable
    idx_vec again(9);
    EXPECT_EQ(sel.finish(again).count, 5);
    sel.reset();
  }
}

// ---- batches ------------------------------------------------------------------------------------

TEST(FreePrunerBatch, BatchedLayersEqualPerSample) {
  // Batch of 3 per layer: sample 0 = the example, sample 1 = random, sample 2 = the example again.
  const example ex;
  const auto rnd = random_layers(3, kHeads, kN, 99);
  const index_t B = 3, per = kHeads * kN * kN;
  std::vector<std::vector<float>> batched(3, std::vector<float>(static_cast<std::size_t>(B * per)));
  for (std::size_t l = 0; l < 3; ++l) {
    std::copy(ex.data[l].begin(), ex.data[l].end(), batched[l].begin());
    std::copy(rnd[l].begin(), rnd[l].end(), batched[l].begin() + per);
    std::copy(ex.data[l].begin(), ex.data[l].end(), batched[l].begin() + 2 * per);
  }
  std::vector<attention_view<float>> layer_views;
  for (auto& d : batched) layer_views.emplace_back(d.data(), std::array<index_t, 4>{B, kHeads, kN, kN});
  const auto rnd_views = views_of(rnd, kHeads, kN);
  for (const auto& cfg : {example_config(), fixed(example_config(1), 6), example_config(2, 1)}) {
    const idx_vec e0 = run_one_shot(seq, ex.stack(), cfg);
    const idx_vec e1 = run_one_shot(seq, fp::layer_stack<float>{rnd_views, 0}, cfg);
    for (int use_par = 0; use_par < 2; ++use_par) {
      std::vector<token_index> idx(static_cast<std::size_t>(B * 9), -1), counts(static_cast<std::size_t>(B));
      std::vector<fp::result> results(static_cast<std::size_t>(B));
      const selection_batch out{tensor_view<token_index, 2>(idx.data(), {B, 9}), counts};
      if (use_par != 0) {
        fp::select(par, fp::batch_layer_stack<float>{layer_views, 0}, cfg, out, results);
      } else {
        fp::select(seq, fp::batch_layer_stack<float>{layer_views, 0}, cfg, out, results);
      }
      auto row = [&](index_t b) { return idx_vec(idx.begin() + b * 9, idx.begin() + b * 9 + counts[b]); };
      EXPECT_EQ(row(0), e0);
      EXPECT_EQ(row(1), e1);
      EXPECT_EQ(row(2), e0);
      EXPECT_EQ(results[2].count, counts[2]);

      // Streaming batch selector, layers in reverse order.
      fp::selector sel(kN, cfg, B);
      for (index_t l = 2; l >= 0; --l) {
        if (use_par != 0) {
          sel.add_layer(par, l, layer_views[static_cast<std::size_t>(l)]);
        } else {
          sel.add_layer(seq, l, layer_views[static_cast<std::size_t>(l)]);
        }
      }
      std::fill(idx.begin(), idx.end(), -1);
      sel.finish(par, out, results);
      EXPECT_EQ(row(0), e0);
      EXPECT_EQ(row(1), e1);
      EXPECT_EQ(row(2), e0);
      fp::inspection i0;
      run_one_shot(seq, ex.stack(), cfg, nullptr, &i0);
      expect_same_inspection(sel.inspect(2), i0);
    }
  }
}

TEST(FreePrunerBatch, RaggedSamples) {
  const example ex;
  const auto big = random_layers(3, 4, 17, 5);  // 16 patches, 4 heads
  const auto big_views = views_of(big, 4, 17);
  const std::vector<fp::layer_stack<float>> samples{ex.stack(), {big_views, 0}, ex.stack()};
  const auto cfg = fixed(example_config(), 7);
  std::vector<token_index> idx(3 * 16, -1), counts(3);
  const selection_batch out{tensor_view<token_index, 2>(idx.data(), {3, 16}), counts};
  fp::select(par, std::span<const fp::layer_stack<float>>(samples), cfg, out);
  EXPECT_EQ(idx_vec(idx.begin(), idx.begin() + counts[0]), run_one_shot(seq, ex.stack(), cfg));
  EXPECT_EQ(idx_vec(idx.begin() + 16, idx.begin() + 16 + counts[1]), run_one_shot(seq, samples[1], cfg));
  EXPECT_EQ(counts[2], 7);
  // Empty batch is valid.
  std::vector<token_index> none;
  const selection_batch empty{tensor_view<token_index, 2>(nullptr, {0, 16}), none};
  EXPECT_NO_THROW(fp::select(seq, std::span<const fp::layer_stack<float>>(), cfg, empty));
}

TEST(FreePrunerBatch, LayerStackOffset) {
  // Only layers 1 and 2 are given (offset 1); the config reads 1..2.
  const example ex;
  const std::vector<head_attention_view<float>> tail{ex.views[1], ex.views[2]};
  const fp::config cfg{.first_layer = 1, .last_layer = 2, .k_pivotal = 2, .complementary_layer = 2};
  // P = {0,5} u {3,6}; rows 0 -> {6,8}, 3 -> {6}, 5 -> {2,6}, 6 -> {} => S = {0,2,3,5,6,8}
  EXPECT_EQ(run_one_shot(seq, fp::layer_stack<float>{tail, 1}, cfg), (idx_vec{0, 2, 3, 5, 6, 8}));
  EXPECT_EQ(run_one_shot(seq, ex.stack(), cfg), (idx_vec{0, 2, 3, 5, 6, 8}));
  idx_vec out(9);
  expect_error([&] { (void)fp::select(seq, fp::layer_stack<float>{tail, 1}, example_config(), out); }, errc::invalid_argument,
               "freepruner.layers = model layers [1, 3)");
  expect_error([&] { (void)fp::select(seq, fp::layer_stack<float>{tail, 0}, cfg, out); }, errc::invalid_argument,
               "must cover layers [1, 3)");
}

// ---- ties and edge cases ------------------------------------------------------------------------

TEST(FreePrunerEdge, AllEqualMapsFollowTheTieRule) {
  // Every entry equal: every r ties (top-k = lowest indices), every row is flat (no outlier:
  // the fence equals the values and the test is strict).
  std::vector<float> flat(kHeads * kN * kN, 0.1f);
  const std::vector<head_attention_view<float>> v(3, head_attention_view<float>(flat.data(), {kHeads, kN, kN}));
  const fp::layer_stack<float> stack{v, 0};
  fp::inspection info;
  fp::result res;
  EXPECT_EQ(run_one_shot(seq, stack, example_config(3), &res, &info), (idx_vec{0, 1, 2}));
  EXPECT_EQ(info.pivotal_per_layer, (std::vector<idx_vec>{{0, 1, 2}, {0, 1, 2}, {0, 1, 2}}));
  EXPECT_EQ(res.complementary, 0);
  EXPECT_EQ(run_one_shot(seq, stack, fixed(example_config(3), 5)), (idx_vec{0, 1, 2, 3, 4}));
  EXPECT_EQ(run_one_shot(seq, stack, fixed(example_config(3), 2)), (idx_vec{0, 1}));
  // k = n: every patch is pivotal.
  EXPECT_EQ(run_one_shot(seq, stack, example_config(9)).size(), 9u);
}

TEST(FreePrunerEdge, NoPatches) {
  std::vector<float> cls(kHeads, 1.0f);
  const std::vector<head_attention_view<float>> v(3, head_attention_view<float>(cls.data(), {kHeads, 1, 1}));
  std::vector<token_index> out;
  const auto r = fp::select(seq, fp::layer_stack<float>{v, 0}, example_config(), out);
  EXPECT_EQ(r.count, 0);
  fp::selector sel(1, example_config());
  for (index_t l = 0; l < 3; ++l) sel.add_layer(seq, l, v[static_cast<std::size_t>(l)]);
  EXPECT_EQ(sel.finish(out).count, 0);
  EXPECT_TRUE(sel.inspect().pivotal_per_layer.empty());
  // A fixed budget cannot be met by 0 patches.
  expect_error([&] { (void)fp::select(seq, fp::layer_stack<float>{v, 0}, fixed(example_config(), 1), out); },
               errc::invalid_argument, "freepruner.budget = 1: exceeds the 0 patches");
}

// ---- bad input ----------------------------------------------------------------------------------

TEST(FreePrunerErrors, StreamingMisuse) {
  const example ex;
  fp::selector sel(kN, example_config());
  expect_error([&] { sel.add_layer(seq, 3, ex.views[0]); }, errc::invalid_argument,
               "freepruner.layer = 3: not read by the config (pivotal layers 0..2, complementary layer 2)");
  expect_error([&] { sel.add_layer(seq, -1, ex.views[0]); }, errc::invalid_argument, "freepruner.layer = -1");
  sel.add_layer(seq, 0, ex.views[0]);
  expect_error([&] { sel.add_layer(seq, 0, ex.views[0]); }, errc::invalid_argument, "freepruner.layer = 0: already added");
  idx_vec out(9);
  expect_error([&] { (void)sel.finish(out); }, errc::invalid_argument, "freepruner.layer = 1: was not added before finish");
  expect_error([&] { (void)sel.inspect(); }, errc::invalid_argument, "freepruner.layer = 1");
  // Wrong token count for this selector.
  std::vector<float> small(kHeads * 5 * 5, 0.1f);
  expect_error([&] { sel.add_layer(seq, 1, head_attention_view<float>(small.data(), {kHeads, 5, 5})); },
               errc::shape_mismatch, "freepruner.attention[layer 1] = 5x5");
  // A batch layer with the wrong batch size.
  std::vector<float> two(2 * kHeads * kN * kN, 0.1f);
  expect_error([&] { sel.add_layer(seq, 1, attention_view<float>(two.data(), {2, kHeads, kN, kN})); },
               errc::shape_mismatch, "freepruner.attention[layer 1].extent(0) = 2");
  sel.add_layer(seq, 1, ex.views[1]);
  sel.add_layer(seq, 2, ex.views[2]);
  idx_vec tiny(3);
  expect_error([&] { (void)sel.finish(tiny); }, errc::shape_mismatch, "freepruner.out.size() = 3");
  EXPECT_EQ(sel.finish(out).count, 8);
  expect_error([&] { (void)sel.inspect(1); }, errc::invalid_argument, "freepruner.selector.sample = 1");
  // Construction-time checks.
  expect_error([] { fp::selector(kN, fixed(example_config(), 10)); }, errc::invalid_argument,
               "freepruner.budget = 10: exceeds the 9 patches");
  expect_error([] { fp::selector(kN, example_config(10)); }, errc::invalid_argument,
               "freepruner.k_pivotal = 10: exceeds the 9 patches");
  expect_error([] { fp::selector(kN, fp::config{.first_layer = 3, .last_layer = 2}); }, errc::invalid_argument,
               "freepruner.last_layer = 2");
  expect_error([] { fp::selector(0, example_config()); }, errc::invalid_argument, "skip_cls.n = 0");
  fp::selector batched(kN, example_config(), 2);
  expect_error([&] { batched.add_layer(seq, 0, ex.views[0]); }, errc::shape_mismatch, "freepruner.selector.batch = 2");
}

TEST(FreePrunerErrors, NonFiniteAttention) {
  example ex;
  // NaN in layer 1's patch map (head 1, patch row 4, patch column 2): the pivotal stage rejects it,
  // naming the layer and the column.
  ex.data[1][1 * kN * kN + 5 * kN + 3] = std::numeric_limits<float>::quiet_NaN();
  idx_vec out(9);
  expect_error([&] { (void)fp::select(seq, ex.stack(), example_config(), out); }, errc::non_finite,
               "freepruner.attention[layer 1]: contribution_degree.r[2]");
  expect_error([&] { (void)fp::select(par, ex.stack(), example_config(), out); }, errc::non_finite, "layer 1");
  // The streaming selector refuses further use until reset().
  fp::selector sel(kN, example_config());
  sel.add_layer(seq, 0, ex.views[0]);
  expect_error([&] { sel.add_layer(seq, 1, ex.views[1]); }, errc::non_finite, "layer 1");
  expect_error([&] { sel.add_layer(seq, 2, ex.views[2]); }, errc::invalid_argument, "call reset()");
  sel.reset();
  ex.data[1][1 * kN * kN + 5 * kN + 3] = 0.1f;
  ex.data[1][1 * kN * kN + 5 * kN + 3] = std::numeric_limits<float>::infinity();
  expect_error([&] { (void)fp::select(seq, ex.stack(), example_config(), out); }, errc::non_finite, "layer 1");

  // A NaN in a row of the complementary layer when that layer is not pivotal: only the rows of P
  // are read, so it is caught when row p is tested.
  example ex2;
  const fp::config cfg{.first_layer = 0, .last_layer = 1, .k_pivotal = 2, .complementary_layer = 2};
  // P = {3,7} u {0,5}; poison row 5 (patch), column 1 of layer 2, head 0.
  ex2.data[2][0 * kN * kN + 6 * kN + 2] = std::numeric_limits<float>::quiet_NaN();
  expect_error([&] { (void)fp::select(seq, ex2.stack(), cfg, out); }, errc::non_finite,
               "freepruner.attention[layer 2].row(5)[1]");
  fp::selector sel2(kN, cfg);
  sel2.add_layer(seq, 2, ex2.views[2]);  // stored: P is not complete yet
  sel2.add_layer(seq, 0, ex2.views[0]);
  expect_error([&] { sel2.add_layer(seq, 1, ex2.views[1]); }, errc::non_finite, "freepruner.attention[layer 2].row(5)[1]");
}

TEST(FreePrunerErrors, BadShapesAndCapacity) {
  example ex;
  idx_vec out(9);
  // Non-square map in one layer.
  std::vector<float> rect(kHeads * kN * (kN + 1), 0.1f);
  auto views = ex.views;
  views[1] = head_attention_view<float>(rect.data(), {kHeads, kN, kN + 1});
  expect_error([&] { (void)fp::select(seq, fp::layer_stack<float>{views, 0}, example_config(), out); }, errc::shape_mismatch,
               "freepruner.attention[layer 1] = 10x11: must be square");
  // A layer with a different token count.
  std::vector<float> other(kHeads * 5 * 5, 0.1f);
  views[1] = head_attention_view<float>(other.data(), {kHeads, 5, 5});
  expect_error([&] { (void)fp::select(seq, fp::layer_stack<float>{views, 0}, example_config(), out); }, errc::shape_mismatch,
               "freepruner.attention[layer 1] = 5x5");
  // No heads.
  views[1] = head_attention_view<float>(other.data(), {0, kN, kN});
  expect_error([&] { (void)fp::select(seq, fp::layer_stack<float>{views, 0}, example_config(), out); }, errc::shape_mismatch,
               "freepruner.attention[layer 1].extent(0) = 0");
  // Output too small for max_count (adaptive: n).
  idx_vec small(8);
  expect_error([&] { (void)fp::select(seq, ex.stack(), example_config(), small); }, errc::shape_mismatch,
               "freepruner.out.size() = 8");
  // k_pivotal > n, B > n, first_layer > last_layer.
  expect_error([&] { (void)fp::select(seq, ex.stack(), example_config(10), out); }, errc::invalid_argument,
               "freepruner.k_pivotal = 10");
  idx_vec big(20);
  expect_error([&] { (void)fp::select(seq, ex.stack(), fixed(example_config(), 10), big); }, errc::invalid_argument,
               "freepruner.budget = 10");
  expect_error([&] { (void)fp::select(seq, ex.stack(), fp::config{.first_layer = 2, .last_layer = 1}, out); },
               errc::invalid_argument, "freepruner.last_layer = 1");
  // Too few layers for the default config (6..22).
  expect_error([&] { (void)fp::select(seq, ex.stack(), fp::config{}, out); }, errc::invalid_argument,
               "must cover layers [6, 23)");
  // Batched layers with different batch sizes.
  std::vector<float> b2(2 * kHeads * kN * kN, 0.1f), b3(3 * kHeads * kN * kN, 0.1f);
  const std::vector<attention_view<float>> mixed{attention_view<float>(b2.data(), {2, kHeads, kN, kN}),
                                                 attention_view<float>(b3.data(), {3, kHeads, kN, kN}),
                                                 attention_view<float>(b2.data(), {2, kHeads, kN, kN})};
  std::vector<token_index> idx(2 * 9), counts(2);
  expect_error([&] {
    fp::select(seq, fp::batch_layer_stack<float>{mixed, 0}, example_config(),
               selection_batch{tensor_view<token_index, 2>(idx.data(), {2, 9}), counts});
  },
               errc::shape_mismatch, "freepruner.attention[layer 1].extent(0) = 3");
}

TEST(FreePrunerStreaming, AdaptiveCountGrowsWithKAndRangeAndShrinksWithMultiplier) {
  const index_t L = 6, H = 2, N = 65, n = N - 1;
  const auto data = random_layers(L, H, N, 77);
  const auto views = views_of(data, H, N);
  const fp::layer_stack<float> stack{views, 0};
  auto subset = [](const idx_vec& a, const idx_vec& b) { return std::includes(b.begin(), b.end(), a.begin(), a.end()); };
  const fp::config base{.first_layer = 2, .last_layer = 3, .k_pivotal = 2, .complementary_layer = 5};
  idx_vec prev = run_one_shot(seq, stack, base);
  for (index_t k = 3; k <= 12; ++k) {
    auto cfg = base;
    cfg.k_pivotal = k;
    const idx_vec cur = run_one_shot(seq, stack, cfg);
    EXPECT_TRUE(subset(prev, cur)) << "k = " << k;
    EXPECT_TRUE(ascending_unique(cur, n));
    prev = cur;
  }
  auto wide = base;
  wide.first_layer = 0;
  wide.last_layer = 5;
  EXPECT_TRUE(subset(run_one_shot(seq, stack, base), run_one_shot(seq, stack, wide)));
  auto strict = base;
  strict.iqr_multiplier = 3.0;
  fp::result loose_r, strict_r;
  const auto loose = run_one_shot(seq, stack, base, &loose_r);
  EXPECT_TRUE(subset(run_one_shot(seq, stack, strict, &strict_r), loose));
  EXPECT_EQ(loose_r.pivotal, strict_r.pivotal);
  EXPECT_LT(strict_r.complementary, loose_r.complementary);  // 13 < 19 on these maps
  EXPECT_GT(loose_r.complementary, 0) << "the random maps must exercise the complementary stage";
}
