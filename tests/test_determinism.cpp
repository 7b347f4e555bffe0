// Determinism: every method gives bit-identical results (indices, counts, statistics, merged
// features) across repeated runs and under seq and par with 1..4 threads. Inputs are random but
// fixed (seeded), sized so that the threaded paths really split the work.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "tokensel/methods/baselines.hpp"
#include "tokensel/methods/fastv.hpp"
#include "tokensel/methods/fitprune.hpp"
#include "tokensel/methods/fopru.hpp"
#include "tokensel/methods/freepruner.hpp"
#include "tokensel/methods/prumerge.hpp"
#include "tokensel/methods/visionzip.hpp"

using namespace tokensel;

namespace {

/// Everything a run produced, as bit patterns.
struct snapshot {
  std::vector<std::uint64_t> bits;
  void add(index_t v) { bits.push_back(static_cast<std::uint64_t>(v)); }
  void add(float v) { bits.push_back(std::bit_cast<std::uint32_t>(v)); }
  void add(double v) { bits.push_back(std::bit_cast<std::uint64_t>(v)); }
  void add(std::span<const token_index> v) {
    add(static_cast<index_t>(v.size()));
    for (auto x : v) add(static_cast<index_t>(x));
  }
  void add(std::span<const float> v) {
    for (auto x : v) add(x);
  }
  bool operator==(const snapshot&) const = default;
};

/// Runs run(policy) -> snapshot 3 times under seq, twice under threaded_policy{t} for t = 1..4
/// and once under par; every snapshot must equal the first.
template <class Run>
void expect_deterministic(Run&& run) {
  const snapshot ref = run(seq);
  ASSERT_FALSE(ref.bits.empty());
  for (int rep = 0; rep < 3; ++rep) EXPECT_TRUE(run(seq) == ref) << "seq repeat " << rep;
  for (int t = 1; t <= 4; ++t) {
    for (int rep = 0; rep < 2; ++rep) {
      EXPECT_TRUE(run(threaded_policy{.threads = t}) == ref) << "threads = " << t << ", repeat " << rep;
    }
  }
  EXPECT_TRUE(run(par) == ref) << "par (default threads)";
}

/// Row-softmax attention maps [count, rows, cols] of random logits (every row sums to 1).
std::vector<float> softmax_maps(std::mt19937& rng, index_t count, index_t rows, index_t cols, float spread = 3.0f) {
  std::normal_distribution<float> logit(0.0f, spread);
  std::vector<float> a(static_cast<std::size_t>(count * rows * cols));
  for (index_t r = 0; r < count * rows; ++r) {
    float* row = a.data() + r * cols;
    float m = -INFINITY;
    for (index_t c = 0; c < cols; ++c) m = std::max(m, row[c] = logit(rng));
    float s = 0.0f;
    for (index_t c = 0; c < cols; ++c) s += row[c] = std::exp(row[c] - m);
    for (index_t c = 0; c < cols; ++c) row[c] /= s;
  }
  return a;
}

std::vector<float> normal_values(std::mt19937& rng, std::size_t n) {
  std::normal_distribution<float> x(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& e : v) e = x(rng);
  return v;
}

constexpr index_t kHeads = 4;
constexpr index_t kPatches = 144;  // 12 x 12 grid
constexpr index_t kTokens = kPatches + 1;

}  // namespace

TEST(Determinism, FoPruRankAndRowSingleAndBatch) {
  std::mt19937 rng(1);
  const index_t batch = 3;
  const auto a = softmax_maps(rng, batch * kHeads, kTokens, kTokens);
  const attention_view<float> all(a.data(), {batch, kHeads, kTokens, kTokens});
  for (const auto strategy : {fopru::strategy::rank, fopru::strategy::row}) {
    const fopru::config cfg{.ratio = 0.3, .strategy = strategy};
    const index_t k = fopru::keep_count(kPatches, cfg);
    expect_deterministic([&](const auto& policy) {
      snapshot s;
      std::vector<token_index> out(static_cast<std::size_t>(k));
      const auto r = fopru::select(policy, all[0], cfg, out);
      s.add(std::span<const token_index>(out).first(static_cast<std::size_t>(r.count)));
      s.add(r.row_variance);
      s.add(r.column_variance);
      std::vector<token_index> idx(static_cast<std::size_t>(batch * k)), counts(static_cast<std::size_t>(batch));
      std::vector<fopru::result> results(static_cast<std::size_t>(batch));
      fopru::select(policy, all, cfg, selection_batch{tensor_view<token_index, 2>(idx.data(), {batch, k}), counts},
                    std::span<fopru::result>(results));
      s.add(std::span<const token_index>(idx));
      s.add(std::span<const token_index>(counts));
      for (const auto& x : results) s.add(x.row_variance);
      return s;
    });
  }
}

TEST(Determinism, FreePrunerAdaptiveAndFixed) {
  std::mt19937 rng(2);
  const index_t layers = 23;  // defaults read layers 6..22
  const auto a = softmax_maps(rng, layers * 2, kTokens, kTokens);
  std::vector<head_attention_view<float>> views;
  for (index_t l = 0; l < layers; ++l) views.emplace_back(a.data() + l * 2 * kTokens * kTokens, std::array<index_t, 3>{2, kTokens, kTokens});
  for (const auto mode : {freepruner::mode::adaptive, freepruner::mode::fixed}) {
    freepruner::config cfg{.mode = mode};
    if (mode == freepruner::mode::fixed) cfg.budget = 40;
    const index_t cap = freepruner::max_count(kPatches, cfg);
    expect_deterministic([&](const auto& policy) {
      snapshot s;
      std::vector<token_index> out(static_cast<std::size_t>(cap));
      const auto r = freepruner::select(policy, freepruner::layer_stack<float>{views, 0}, cfg, out);
      s.add(std::span<const token_index>(out).first(static_cast<std::size_t>(r.count)));
      s.add(r.pivotal);
      s.add(r.complementary);
      s.add(r.candidates);
      s.add(r.dropped);
      s.add(r.filled);
      return s;
    });
  }
}

TEST(Determinism, FitPrunePruneLayerAndCalibration) {
  std::mt19937 rng(3);
  const index_t len = 200, batch = 2;
  const token_range visual{20, 150};
  const auto a = softmax_maps(rng, batch * kHeads, len, len);
  const attention_view<float> all(a.data(), {batch, kHeads, len, len});
  const fitprune::flops_model geometry{.hidden = 64, .ffn = 160, .layers = 3, .visual_tokens = visual.count};
  expect_deterministic([&](const auto& policy) {
    snapshot s;
    std::vector<token_index> kept(static_cast<std::size_t>(visual.count));
    const auto r = fitprune::prune_layer(policy, all[0], visual, 70, fitprune::config{}, kept);
    s.add(std::span<const token_index>(kept).first(static_cast<std::size_t>(r.count)));
    s.add(r.cross_mass);
    s.add(r.self_mass);
    std::vector<token_index> idx(static_cast<std::size_t>(batch * 80)), counts(static_cast<std::size_t>(batch));
    fitprune::prune_layer(policy, all, visual, 70, fitprune::config{},
                          selection_batch{tensor_view<token_index, 2>(idx.data(), {batch, 80}), counts});
    s.add(std::span<const token_index>(idx));
    fitprune::calibrator cal(geometry);
    for (index_t b = 0; b < batch; ++b) {
      const index_t id = cal.add_sample();
      for (index_t l = 0; l < geometry.layers; ++l) cal.add_layer(policy, id, l, all[b], visual);
    }
    const auto fit = cal.fit(0.4);
    s.add(fit.alpha);
    s.add(fit.flops_ratio);
    for (auto d : fit.recipe.drops) s.add(d);
    return s;
  });
}

TEST(Determinism, FastV) {
  std::mt19937 rng(4);
  const index_t len = 300, batch = 2;
  const token_range visual{35, 200};
  const auto a = softmax_maps(rng, batch * kHeads, len, len);
  const attention_view<float> all(a.data(), {batch, kHeads, len, len});
  const fastv::config cfg{.ratio = 0.5};
  const index_t k = fastv::keep_count(visual.count, cfg);
  expect_deterministic([&](const auto& policy) {
    snapshot s;
    std::vector<token_index> out(static_cast<std::size_t>(k));
    const auto r = fastv::select(policy, all[1], visual, cfg, out);
    s.add(std::span<const token_index>(out).first(static_cast<std::size_t>(r.count)));
    s.add(r.visual_mass);
    s.add(r.kept_mass);
    std::vector<token_index> idx(static_cast<std::size_t>(batch * k)), counts(static_cast<std::size_t>(batch));
    fastv::select(policy, all, visual, cfg, selection_batch{tensor_view<token_index, 2>(idx.data(), {batch, k}), counts});
    s.add(std::span<const token_index>(idx));
    return s;
  });
}

TEST(Determinism, PruMergeAndPlusWithMerge) {
  std::mt19937 rng(5);
  const index_t dim = 32, fdim = 24;
  const auto q = normal_values(rng, static_cast<std::size_t>(kTokens * dim));
  const auto kv = normal_values(rng, static_cast<std::size_t>(kTokens * dim));
  const auto f = normal_values(rng, static_cast<std::size_t>(kPatches * fdim));
  const matrix_view<const float> queries(q.data(), {kTokens, dim}), keys(kv.data(), {kTokens, dim});
  const matrix_view<const float> features(f.data(), {kPatches, fdim});
  for (const bool plus : {false, true}) {
    const prumerge::config cfg{.plus = plus, .neighbours = 8};
    const index_t cap = prumerge::max_count(kPatches, cfg), rows = prumerge::max_rows(kPatches, cfg);
    expect_deterministic([&](const auto& policy) {
      snapshot s;
      std::vector<token_index> out(static_cast<std::size_t>(cap));
      std::vector<float> merged(static_cast<std::size_t>(rows * fdim));
      const auto r = prumerge::select(policy, queries, keys, features, cfg, out, matrix_view<float>(merged.data(), {rows, fdim}));
      s.add(std::span<const token_index>(out).first(static_cast<std::size_t>(r.count)));
      s.add(std::span<const float>(merged).first(static_cast<std::size_t>(r.rows() * fdim)));
      s.add(r.iqr.q1);
      s.add(r.iqr.q3);
      return s;
    });
  }
}

TEST(Determinism, VisionZip) {
  std::mt19937 rng(6);
  const index_t dh = 16, d = 40;
  const auto a = softmax_maps(rng, kHeads, kTokens, kTokens);
  const auto kv = normal_values(rng, static_cast<std::size_t>(kHeads * kTokens * dh));
  const auto h = normal_values(rng, static_cast<std::size_t>(kTokens * d));
  const head_attention_view<float> attn(a.data(), {kHeads, kTokens, kTokens});
  const tensor_view<const float, 3> keys(kv.data(), {kHeads, kTokens, dh});
  const matrix_view<const float> hidden(h.data(), {kTokens, d});
  const visionzip::config cfg{.dominant = 30, .contextual = 8};
  const index_t k = visionzip::keep_count(kTokens, cfg);
  expect_deterministic([&](const auto& policy) {
    snapshot s;
    std::vector<token_index> out(static_cast<std::size_t>(k));
    std::vector<float> feats(static_cast<std::size_t>(k * d));
    const auto r = visionzip::select(policy, attn, keys, hidden, cfg, out, matrix_view<float>(feats.data(), {k, d}));
    s.add(std::span<const token_index>(out).first(static_cast<std::size_t>(r.count)));
    s.add(std::span<const float>(feats));
    s.add(r.merged);
    return s;
  });
}

TEST(Determinism, Baselines) {
  std::mt19937 rng(7);
  const index_t d = 8;
  const auto f = normal_values(rng, static_cast<std::size_t>(kPatches * d));
  const matrix_view<const float> features(f.data(), {kPatches, d});
  const token_grid grid{12, 12};
  expect_deterministic([&](const auto& policy) {
    snapshot s;
    std::vector<token_index> out(kPatches);
    const auto r = baselines::random::select(policy, kPatches, baselines::random::config{.ratio = 0.25, .seed = 42}, out, 3);
    s.add(std::span<const token_index>(out).first(static_cast<std::size_t>(r.count)));
    const auto u = baselines::uniform::select(policy, grid, baselines::uniform::config{.count = 50}, out);
    s.add(std::span<const token_index>(out).first(static_cast<std::size_t>(u.count)));
    std::vector<float> pooled(static_cast<std::size_t>(36 * d));
    (void)baselines::pool::apply(policy, features, grid, baselines::pool::config{}, matrix_view<float>(pooled.data(), {36, d}));
    s.add(std::span<const float>(pooled));
    return s;
  });
}
