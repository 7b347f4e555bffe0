// Every method selects from an fp16 / bf16 input exactly what it selects from the same values
// widened to fp32: widening is exact and all arithmetic is in fp32 (docs/views-and-errors.md), so
// the indices (and the fp32 rows a method writes) must be the same bits. Typed over the two
// 16-bit element types; each test runs a method on the T data and on its fp32 copy.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "tokensel/methods/baselines.hpp"
#include "tokensel/methods/dart.hpp"
#include "tokensel/methods/divprune.hpp"
#include "tokensel/methods/fastv.hpp"
#include "tokensel/methods/fitprune.hpp"
#include "tokensel/methods/fopru.hpp"
#include "tokensel/methods/freepruner.hpp"
#include "tokensel/methods/prumerge.hpp"
#include "tokensel/methods/visionzip.hpp"
#include "tokensel/methods/vispruner.hpp"
#include "tokensel/select/top_k.hpp"
#include "support/random_inputs.hpp"

using namespace tokensel;

namespace {

constexpr index_t kHeads = 4;
constexpr index_t kPatches = 144;  // 12 x 12 grid
constexpr index_t kTokens = kPatches + 1;

using tokensel_test::normal_values;
using tokensel_test::softmax_maps;

/// The exact fp32 values of a T vector.
template <class T>
std::vector<float> widened(const std::vector<T>& v) {
  std::vector<float> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = static_cast<float>(v[i]);
  return out;
}

/// An index buffer of n slots, -1 where nothing was written (so the counts are compared too).
std::vector<token_index> slots(index_t n) { return std::vector<token_index>(static_cast<std::size_t>(n), -1); }

/// The selection from T equals the one from the widened values, which selected something.
void expect_same(const std::vector<token_index>& got, const std::vector<token_index>& want, const std::string& what) {
  ASSERT_FALSE(want.empty()) << what;
  EXPECT_NE(want.front(), -1) << what << ": nothing selected";
  EXPECT_EQ(got, want) << what;
}

template <class T>
class SameAsWidened : public ::testing::Test {};
using half_types = ::testing::Types<Eigen::half, Eigen::bfloat16>;
TYPED_TEST_SUITE(SameAsWidened, half_types);

}  // namespace

TYPED_TEST(SameAsWidened, FoPru) {
  using T = TypeParam;
  std::mt19937 rng(1);
  const auto a = softmax_maps<T>(rng, kHeads, kTokens, kTokens);
  const auto a32 = widened(a);
  for (const auto strategy : {fopru::strategy::rank, fopru::strategy::row}) {
    const fopru::config cfg{.ratio = 0.25, .strategy = strategy};
    auto o = slots(kPatches), o32 = slots(kPatches);
    (void)fopru::select(seq, head_attention_view<T>(a.data(), {kHeads, kTokens, kTokens}), cfg, o);
    (void)fopru::select(seq, head_attention_view<float>(a32.data(), {kHeads, kTokens, kTokens}), cfg, o32);
    expect_same(o, o32, fopru::to_string(strategy));
  }
}

TYPED_TEST(SameAsWidened, FreePruner) {
  using T = TypeParam;
  std::mt19937 rng(2);
  const index_t layers = 23;  // the defaults read layers 6..22
  const auto stack = softmax_maps<T>(rng, layers * 2, kTokens, kTokens);
  const auto stack32 = widened(stack);
  std::vector<head_attention_view<T>> views;
  std::vector<head_attention_view<float>> views32;
  for (index_t l = 0; l < layers; ++l) {
    const std::array<index_t, 3> shape{2, kTokens, kTokens};
    views.emplace_back(stack.data() + l * 2 * kTokens * kTokens, shape);
    views32.emplace_back(stack32.data() + l * 2 * kTokens * kTokens, shape);
  }
  for (const auto mode : {freepruner::mode::adaptive, freepruner::mode::fixed}) {
    freepruner::config cfg{.mode = mode};
    if (mode == freepruner::mode::fixed) cfg.budget = 40;
    const index_t cap = freepruner::max_count(kPatches, cfg);
    auto o = slots(cap), o32 = slots(cap);
    (void)freepruner::select(seq, freepruner::layer_stack<T>{views, 0}, cfg, o);
    (void)freepruner::select(seq, freepruner::layer_stack<float>{views32, 0}, cfg, o32);
    expect_same(o, o32, freepruner::to_string(mode));
  }
}

TYPED_TEST(SameAsWidened, VisionZipIndicesAndRows) {
  using T = TypeParam;
  std::mt19937 rng(3);
  const index_t dh = 16, d = 40;
  const auto a = softmax_maps<T>(rng, kHeads, kTokens, kTokens);
  const auto keys = normal_values<T>(rng, static_cast<std::size_t>(kHeads * kTokens * dh));
  const auto hidden = normal_values<T>(rng, static_cast<std::size_t>(kTokens * d));
  const auto a32 = widened(a), keys32 = widened(keys), hidden32 = widened(hidden);
  const visionzip::config cfg{.dominant = 30, .contextual = 8};
  const index_t k = visionzip::keep_count(kTokens, cfg);
  auto o = slots(k), o32 = slots(k);
  std::vector<float> rows(static_cast<std::size_t>(k * d)), rows32(rows.size());
  (void)visionzip::select(seq, head_attention_view<T>(a.data(), {kHeads, kTokens, kTokens}),
                          tensor_view<const T, 3>(keys.data(), {kHeads, kTokens, dh}),
                          matrix_view<const T>(hidden.data(), {kTokens, d}), cfg, std::span(o),
                          matrix_view<float>(rows.data(), {k, d}));
  (void)visionzip::select(seq, head_attention_view<float>(a32.data(), {kHeads, kTokens, kTokens}),
                          tensor_view<const float, 3>(keys32.data(), {kHeads, kTokens, dh}),
                          matrix_view<const float>(hidden32.data(), {kTokens, d}), cfg, std::span(o32),
                          matrix_view<float>(rows32.data(), {k, d}));
  expect_same(o, o32, "visionzip");
  EXPECT_EQ(rows, rows32);
}

TYPED_TEST(SameAsWidened, PruMergeIndicesAndMergedRows) {
  using T = TypeParam;
  std::mt19937 rng(4);
  const index_t dim = 32, fdim = 24;
  const auto q = normal_values<T>(rng, static_cast<std::size_t>(kTokens * dim));
  const auto kv = normal_values<T>(rng, static_cast<std::size_t>(kTokens * dim));
  const auto f = normal_values<T>(rng, static_cast<std::size_t>(kPatches * fdim));
  const auto q32 = widened(q), kv32 = widened(kv), f32 = widened(f);
  for (const bool plus : {false, true}) {
    const prumerge::config cfg{.plus = plus, .neighbours = 8};
    const index_t cap = prumerge::max_count(kPatches, cfg), rows = prumerge::max_rows(kPatches, cfg);
    auto o = slots(cap), o32 = slots(cap);
    std::vector<float> merged(static_cast<std::size_t>(rows * fdim)), merged32(merged.size());
    (void)prumerge::select(seq, matrix_view<const T>(q.data(), {kTokens, dim}), matrix_view<const T>(kv.data(), {kTokens, dim}),
                           matrix_view<const T>(f.data(), {kPatches, fdim}), cfg, o,
                           matrix_view<float>(merged.data(), {rows, fdim}));
    (void)prumerge::select(seq, matrix_view<const float>(q32.data(), {kTokens, dim}),
                           matrix_view<const float>(kv32.data(), {kTokens, dim}),
                           matrix_view<const float>(f32.data(), {kPatches, fdim}), cfg, o32,
                           matrix_view<float>(merged32.data(), {rows, fdim}));
    expect_same(o, o32, plus ? "PruMerge+" : "PruMerge");
    EXPECT_EQ(merged, merged32) << (plus ? "PruMerge+" : "PruMerge");
  }
}

TYPED_TEST(SameAsWidened, FeatureSimilarityMethods) {
  using T = TypeParam;
  std::mt19937 rng(5);
  const index_t d = 40;
  const auto x = normal_values<T>(rng, static_cast<std::size_t>(kPatches * d));
  const auto x32 = widened(x);
  auto o = slots(kPatches), o32 = slots(kPatches), order = slots(kPatches), order32 = slots(kPatches);
  (void)divprune::select(seq, matrix_view<const T>(x.data(), {kPatches, d}), divprune::config{.count = 36}, o, order);
  (void)divprune::select(seq, matrix_view<const float>(x32.data(), {kPatches, d}), divprune::config{.count = 36}, o32, order32);
  expect_same(o, o32, "divprune");
  expect_same(order, order32, "divprune order");

  const auto a = softmax_maps<T>(rng, kHeads, 1, kTokens);
  const auto a32 = widened(a);
  o = slots(kPatches), o32 = slots(kPatches);
  (void)vispruner::select(seq, head_attention_view<T>(a.data(), {kHeads, 1, kTokens}),
                          matrix_view<const T>(x.data(), {kPatches, d}), vispruner::config{.count = 36}, o);
  (void)vispruner::select(seq, head_attention_view<float>(a32.data(), {kHeads, 1, kTokens}),
                          matrix_view<const float>(x32.data(), {kPatches, d}), vispruner::config{.count = 36}, o32);
  expect_same(o, o32, "vispruner");

  const index_t len = 200, dh = 16;
  const token_range visual{20, 150};
  const auto keys = normal_values<T>(rng, static_cast<std::size_t>(kHeads * len * dh));
  const auto hidden = normal_values<T>(rng, static_cast<std::size_t>(len * d));
  const auto keys32 = widened(keys), hidden32 = widened(hidden);
  o = slots(visual.count), o32 = slots(visual.count);
  (void)dart::select(seq, tensor_view<const T, 3>(keys.data(), {kHeads, len, dh}), matrix_view<const T>(hidden.data(), {len, d}),
                     vector_view<const float>{}, visual, dart::config{.count = 40}, o);
  (void)dart::select(seq, tensor_view<const float, 3>(keys32.data(), {kHeads, len, dh}),
                     matrix_view<const float>(hidden32.data(), {len, d}), vector_view<const float>{}, visual,
                     dart::config{.count = 40}, o32);
  expect_same(o, o32, "dart");
}

TYPED_TEST(SameAsWidened, LlmMethods) {
  using T = TypeParam;
  std::mt19937 rng(6);
  const index_t len = 200;
  const token_range visual{20, 150};
  const auto a = softmax_maps<T>(rng, kHeads, len, len);
  const auto a32 = widened(a);
  const head_attention_view<T> attn(a.data(), {kHeads, len, len});
  const head_attention_view<float> attn32(a32.data(), {kHeads, len, len});
  auto kept = slots(visual.count), kept32 = slots(visual.count);
  (void)fitprune::prune_layer(seq, attn, visual, 70, fitprune::config{}, kept);
  (void)fitprune::prune_layer(seq, attn32, visual, 70, fitprune::config{}, kept32);
  expect_same(kept, kept32, "fitprune");
  const fastv::config cfg{.ratio = 0.5};
  auto o = slots(fastv::keep_count(visual.count, cfg)), o32 = slots(fastv::keep_count(visual.count, cfg));
  (void)fastv::select(seq, attn, visual, cfg, o);
  (void)fastv::select(seq, attn32, visual, cfg, o32);
  expect_same(o, o32, "fastv");
}

TYPED_TEST(SameAsWidened, PoolingAndTopK) {
  using T = TypeParam;
  std::mt19937 rng(7);
  const index_t d = 8;
  const auto f = normal_values<T>(rng, static_cast<std::size_t>(kPatches * d));
  const auto f32 = widened(f);
  const token_grid grid{12, 12};
  std::vector<float> pooled(static_cast<std::size_t>(36 * d)), pooled32(pooled.size());
  (void)baselines::pool::apply(seq, matrix_view<const T>(f.data(), {kPatches, d}), grid, baselines::pool::config{},
                               matrix_view<float>(pooled.data(), {36, d}));
  (void)baselines::pool::apply(seq, matrix_view<const float>(f32.data(), {kPatches, d}), grid, baselines::pool::config{},
                               matrix_view<float>(pooled32.data(), {36, d}));
  EXPECT_EQ(pooled, pooled32);

  const auto scores = normal_values<T>(rng, kPatches);
  const auto scores32 = widened(scores);
  auto o = slots(36), o32 = slots(36);
  (void)top_k(tensor_view<const T, 1>(scores.data(), {kPatches}), 36, std::span(o));
  (void)top_k(tensor_view<const float, 1>(scores32.data(), {kPatches}), 36, std::span(o32));
  expect_same(o, o32, "top_k");
}
