// The hot path never allocates: every method's select (and the building blocks an engine calls
// per image), warm, on the sequential policy, makes no heap allocation, neither through operator
// new nor inside Eigen, in f32, f16 and bf16 (in the style of Eigen's nomalloc test). A first,
// cold call may grow the thread's scratch arena; the second call must not allocate at all.
// A positive control proves the counter sees allocations.
#include "support/counting_allocator.hpp"  // first: it replaces operator new and hooks Eigen

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <thread>
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
#include "tokensel/select/gather.hpp"
#include "tokensel/select/top_k.hpp"
#include "support/random_inputs.hpp"

using namespace tokensel;
using tokensel_test_alloc::counts;
using tokensel_test_alloc::measure;

namespace {

constexpr index_t kHeads = 4;
constexpr index_t kPatches = 144;  // 12 x 12 grid
constexpr index_t kTokens = kPatches + 1;

using tokensel_test::normal_values;
using tokensel_test::softmax_maps;

/// Runs `call` twice on a fresh thread (an empty scratch arena): what the warm second call
/// allocated, with Eigen's heap checks on.
template <class F>
counts warm_allocations(F&& call) {
  counts warm;
  std::thread t([&] {
    call();
    Eigen::internal::set_is_malloc_allowed(false);
    warm = measure(call);
    Eigen::internal::set_is_malloc_allowed(true);
  });
  t.join();
  return warm;
}

#define EXPECT_NO_ALLOCATION(call)                                              \
  do {                                                                          \
    const counts c_ = warm_allocations([&] { call; });                          \
    EXPECT_EQ(c_.allocations, 0u) << #call << ": " << c_.bytes << " bytes";     \
    EXPECT_EQ(c_.eigen, 0u) << #call << ": Eigen heap use";                     \
  } while (0)

template <class T>
class NoAllocation : public ::testing::Test {};
using element_types = ::testing::Types<float, Eigen::half, Eigen::bfloat16>;
TYPED_TEST_SUITE(NoAllocation, element_types);

}  // namespace

TEST(NoAllocationControl, TheCounterSeesAllocations) {
  const counts c = warm_allocations([] {
    std::vector<int> v(100);
    v[5] = 1;
    ::testing::StaticAssertTypeEq<int, decltype(v)::value_type>();
  });
  EXPECT_EQ(c.allocations, 1u);
  EXPECT_EQ(c.bytes, 100 * sizeof(int));
  // And Eigen's hook: a dynamic matrix allocates while malloc is disallowed.
  const counts e = warm_allocations([] {
    Eigen::MatrixXf m(16, 16);
    m.setZero();
  });
  EXPECT_GE(e.eigen, 1u);
}

TYPED_TEST(NoAllocation, EncoderMethods) {
  using T = TypeParam;
  std::mt19937 rng(1);
  const auto a = softmax_maps<T>(rng, kHeads, kTokens, kTokens);
  const head_attention_view<T> attn(a.data(), {kHeads, kTokens, kTokens});
  std::vector<token_index> out(kPatches);

  for (const auto strategy : {fopru::strategy::rank, fopru::strategy::row}) {
    const fopru::config cfg{.ratio = 0.25, .strategy = strategy};
    EXPECT_NO_ALLOCATION((void)fopru::select(seq, attn, cfg, out));
  }

  const index_t layers = 23;  // the defaults read layers 6..22
  const auto stack = softmax_maps<T>(rng, layers * 2, kTokens, kTokens);
  std::vector<head_attention_view<T>> views;
  for (index_t l = 0; l < layers; ++l) views.emplace_back(stack.data() + l * 2 * kTokens * kTokens, std::array<index_t, 3>{2, kTokens, kTokens});
  for (const auto mode : {freepruner::mode::adaptive, freepruner::mode::fixed}) {
    freepruner::config cfg{.mode = mode};
    if (mode == freepruner::mode::fixed) cfg.budget = 40;
    std::vector<token_index> fp_out(static_cast<std::size_t>(freepruner::max_count(kPatches, cfg)));
    EXPECT_NO_ALLOCATION((void)freepruner::select(seq, freepruner::layer_stack<T>{views, 0}, cfg, fp_out));
  }

  const index_t dh = 16, d = 40;
  const auto keys = normal_values<T>(rng, static_cast<std::size_t>(kHeads * kTokens * dh));
  const auto hidden = normal_values<T>(rng, static_cast<std::size_t>(kTokens * d));
  const visionzip::config vz{.dominant = 30, .contextual = 8};
  const index_t k = visionzip::keep_count(kTokens, vz);
  std::vector<float> feats(static_cast<std::size_t>(k * d));
  EXPECT_NO_ALLOCATION((void)visionzip::select(seq, attn, tensor_view<const T, 3>(keys.data(), {kHeads, kTokens, dh}),
                                               matrix_view<const T>(hidden.data(), {kTokens, d}), vz, std::span(out).first(static_cast<std::size_t>(k)),
                                               matrix_view<float>(feats.data(), {k, d})));
}

TYPED_TEST(NoAllocation, FeatureSimilarityMethods) {
  // DivPrune, VisPruner (encoder side) and DART (LLM side): scratch only, also on f16 / bf16 inputs.
  using T = TypeParam;
  std::mt19937 rng(11);
  const index_t d = 40;
  const auto x = normal_values<T>(rng, static_cast<std::size_t>(kPatches * d));
  const matrix_view<const T> features(x.data(), {kPatches, d});
  std::vector<token_index> out(kPatches), order(kPatches);
  EXPECT_NO_ALLOCATION((void)divprune::select(seq, features, divprune::config{.count = 36}, out, order));
  const auto a = softmax_maps<T>(rng, kHeads, 1, kTokens);
  EXPECT_NO_ALLOCATION((void)vispruner::select(seq, head_attention_view<T>(a.data(), {kHeads, 1, kTokens}), features,
                                               vispruner::config{.count = 36}, out));
  const index_t len = 200, dh = 16;
  const token_range visual{20, 150};
  const auto keys = normal_values<T>(rng, static_cast<std::size_t>(kHeads * len * dh));
  const auto hidden = normal_values<T>(rng, static_cast<std::size_t>(len * d));
  EXPECT_NO_ALLOCATION((void)dart::select(seq, tensor_view<const T, 3>(keys.data(), {kHeads, len, dh}),
                                          matrix_view<const T>(hidden.data(), {len, d}), vector_view<const float>{}, visual,
                                          dart::config{.count = 40}, out));
}

TYPED_TEST(NoAllocation, PruMergeAndPlus) {
  using T = TypeParam;
  std::mt19937 rng(5);
  const index_t dim = 32, fdim = 24;
  const auto q = normal_values<T>(rng, static_cast<std::size_t>(kTokens * dim));
  const auto kv = normal_values<T>(rng, static_cast<std::size_t>(kTokens * dim));
  const auto f = normal_values<T>(rng, static_cast<std::size_t>(kPatches * fdim));
  const matrix_view<const T> queries(q.data(), {kTokens, dim}), keys(kv.data(), {kTokens, dim});
  const matrix_view<const T> features(f.data(), {kPatches, fdim});
  for (const bool plus : {false, true}) {
    const prumerge::config cfg{.plus = plus, .neighbours = 8};
    const index_t cap = prumerge::max_count(kPatches, cfg), rows = prumerge::max_rows(kPatches, cfg);
    std::vector<token_index> out(static_cast<std::size_t>(cap));
    std::vector<float> merged(static_cast<std::size_t>(rows * fdim));
    EXPECT_NO_ALLOCATION((void)prumerge::select(seq, queries, keys, features, cfg, out, matrix_view<float>(merged.data(), {rows, fdim})));
  }
}

TYPED_TEST(NoAllocation, LlmMethods) {
  using T = TypeParam;
  std::mt19937 rng(3);
  const index_t len = 200;
  const token_range visual{20, 150};
  const auto a = softmax_maps<T>(rng, kHeads, len, len);
  const head_attention_view<T> attn(a.data(), {kHeads, len, len});
  std::vector<token_index> kept(static_cast<std::size_t>(visual.count));
  EXPECT_NO_ALLOCATION((void)fitprune::prune_layer(seq, attn, visual, 70, fitprune::config{}, kept));
  const fastv::config cfg{.ratio = 0.5};
  std::vector<token_index> out(static_cast<std::size_t>(fastv::keep_count(visual.count, cfg)));
  EXPECT_NO_ALLOCATION((void)fastv::select(seq, attn, visual, cfg, out));
}

TYPED_TEST(NoAllocation, BaselinesAndBuildingBlocks) {
  using T = TypeParam;
  std::mt19937 rng(7);
  const index_t d = 8;
  const auto f = normal_values<T>(rng, static_cast<std::size_t>(kPatches * d));
  const matrix_view<const T> features(f.data(), {kPatches, d});
  const token_grid grid{12, 12};
  std::vector<token_index> out(kPatches);
  EXPECT_NO_ALLOCATION((void)baselines::uniform::select(seq, grid, baselines::uniform::config{.count = 50}, out));
  std::vector<float> pooled(static_cast<std::size_t>(36 * d));
  EXPECT_NO_ALLOCATION((void)baselines::pool::apply(seq, features, grid, baselines::pool::config{}, matrix_view<float>(pooled.data(), {36, d})));

  const auto scores = normal_values<T>(rng, kPatches);
  const tensor_view<const T, 1> s(scores.data(), {kPatches});
  EXPECT_NO_ALLOCATION((void)top_k(s, 36, std::span(out).first(36)));
  std::vector<float> gathered(static_cast<std::size_t>(36 * d));
  EXPECT_NO_ALLOCATION(gather_rows(features, std::span<const token_index>(out).first(36), matrix_view<float>(gathered.data(), {36, d})));
}
