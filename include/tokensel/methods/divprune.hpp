// tokensel: DivPrune (Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large
// Multimodal Models", CVPR 2025, arXiv 2503.02175; official code vbdi/divprune). docs/divprune.md.
//
// Keeps the k visual tokens that solve the max-min diversity problem greedily over the cosine
// distance d(i, j) = 1 - cos(x_i, x_j) of the tokens' features (LLaVA: the projected features,
// the LLM input embeddings of the image span):
//   first:  the token whose nearest other token is farthest, argmax_j min_{i != j} d(i, j);
//   then:   repeatedly the token farthest from the kept set, argmax_j min_{s kept} d(s, j),
//           among the tokens not kept yet.
// Ties go to the lower index (torch.argmax's first maximum). The kept indices are written
// ascending. No attention is read, so any attention kernel works. All arithmetic is fp32 in the
// canonical order: unit rows (methods/detail/cosine.hpp), dots (detail/reduce.hpp), d = 1 - cos
// rounded once. Memory: the unit rows (n x D floats) and the n x n cosines, each pair's dot
// computed once (register-blocked tiles, the same bits as one dot per pair); at LLaVA shapes
// (n <= D) the table is no larger than the unit rows (576 tokens: 1.3 MB against 9.4 MB).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <span>
#include <string>

#include "tokensel/core/batch.hpp"
#include "tokensel/core/budget.hpp"
#include "tokensel/core/config.hpp"
#include "tokensel/core/element.hpp"
#include "tokensel/core/error.hpp"
#include "tokensel/core/policy.hpp"
#include "tokensel/core/tensor_view.hpp"
#include "tokensel/detail/arith.hpp"
#include "tokensel/detail/parallel.hpp"
#include "tokensel/detail/scratch.hpp"
#include "tokensel/detail/validate.hpp"
#include "tokensel/methods/detail/cosine.hpp"
#include "tokensel/methods/fastv.hpp"

TOKENSEL_BEGIN_NAMESPACE
namespace divprune {

/// The budget: a kept fraction (official `threshold_ratio`) or an exact count; at most one of the
/// two is set, neither means the official default ratio 0.098 (56 of LLaVA-1.5's 576 tokens).
struct config {
  std::optional<double> ratio{};   ///< keep round(n * ratio) (Python's round), at least 1; in (0, 1]
  std::optional<index_t> count{};  ///< or keep exactly count (<= n)
};

inline constexpr double default_ratio = 0.098;

/// Per-sample statistics.
struct [[nodiscard]] result {
  index_t count = 0;          ///< tokens kept
  float min_distance = 0.0f;  ///< smallest cosine distance between two kept tokens (0 when count < 2)
};

inline void validate(const config& cfg) {
  if (cfg.ratio && cfg.count) {
    tokensel::detail::fail(errc::invalid_argument, "divprune.ratio/divprune.count", "both set", "set at most one of ratio and count");
  }
  if (cfg.ratio) tokensel::detail::check_ratio(*cfg.ratio, "divprune.ratio");
  if (cfg.count && (*cfg.count < 1 || *cfg.count > std::numeric_limits<token_index>::max())) {
    tokensel::detail::fail(errc::invalid_argument, "divprune.count", *cfg.count, "must be in [1, 2147483647]");
  }
}

/// Tokens kept of n: 0 for n = 0; the count (which must not exceed n); or round(n * ratio) with
/// Python's round (half to even, as the official int(round(ratio * n))), at least 1, at most n.
[[nodiscard]] inline index_t keep_count(index_t n, const config& cfg) {
  validate(cfg);
  if (n < 0) tokensel::detail::fail(errc::invalid_argument, "divprune.n", n, "must be >= 0");
  if (n == 0) return 0;
  if (cfg.count) {
    if (*cfg.count > n) {
      tokensel::detail::fail(errc::invalid_argument, "divprune.count", *cfg.count,
                             "exceeds the " + std::to_string(n) + " tokens of the sample");
    }
    return *cfg.count;
  }
  const double kept = static_cast<double>(n) * cfg.ratio.value_or(default_ratio);
  if (kept >= static_cast<double>(n)) return n;
  const index_t k = fastv::detail::round_half_even(kept);
  return k < 1 ? 1 : k;
}

/// A fraction is the ratio, a count the count (checked against n).
[[nodiscard]] inline config with_budget(const budget& b, index_t n, config base = {}) {
  return tokensel::detail::ratio_or_count(b, n, base, "divprune");
}

/// What DivPrune reads: only the visual tokens' features (no attention, no layer). It selects
/// between the encoder and the LLM; LLaVA's official placement uses the projected features.
[[nodiscard]] inline method_requirements requirements(const config& cfg, const model_shape& shape) {
  tokensel::detail::check_model_shape(shape, "divprune");
  method_requirements r;
  r.stage = stage::encoder;
  r.hidden_states = true;
  r.keep = r.output_rows = keep_count(shape.visual_tokens, cfg);
  return r;
}

namespace detail {

/// argmax over j of score[j] (strict >: the lowest index among equal maxima); -inf marks taken.
inline index_t first_max(std::span<const float> score) noexcept {
  index_t best = 0;
  for (index_t j = 1; j < static_cast<index_t>(score.size()); ++j) {
    if (tokensel::detail::divprune_farther(score[static_cast<std::size_t>(j)], j, score[static_cast<std::size_t>(best)], best)) best = j;
  }
  return best;
}

}  // namespace detail

/// One sample: features [n, D] (any strides; f32 / f16 / bf16, finite); out >= keep_count(n)
/// indices, written ascending. Optional `order`: when not empty (>= keep_count), the kept indices
/// in the greedy order (the first pick first).
template <cpu_policy Policy, element F>
result select(const Policy& policy, const matrix_view<const F>& features, const config& cfg, std::span<token_index> out,
              std::span<token_index> order = {}) {
  const index_t n = features.extent(0), d = features.extent(1);
  const index_t k = keep_count(n, cfg);
  tokensel::detail::check_capacity(out.size(), k, "divprune.out.size()");
  if (!order.empty()) tokensel::detail::check_capacity(order.size(), k, "divprune.order.size()");
  if (n > 0 && d < 1) tokensel::detail::fail(errc::shape_mismatch, "divprune.features.extent(1)", d, "empty feature vectors");
  result res;
  if (n == 0) return res;
  if (n > std::numeric_limits<token_index>::max()) {
    tokensel::detail::fail(errc::invalid_argument, "divprune.features.extent(0)", n, "must be <= 2147483647");
  }

  tokensel::detail::scratch_scope scratch;
  auto unit = scratch.take<float>(static_cast<std::size_t>(n * d));
  tokensel::detail::unit_feature_rows(policy, features, nullptr, n, unit, "divprune.features");
  // Every cosine once (n^2 floats, as the official code's distance matrix): the first pick reads
  // them all and each farthest-point step one row, instead of recomputing a row of dots.
  auto cosine = scratch.take<float>(static_cast<std::size_t>(n * n));
  tokensel::detail::cosine_table(policy, unit.data(), n, d, cosine);
  auto score = scratch.take<float>(static_cast<std::size_t>(n));

  // 1. Nearest-neighbour distance of every token; the first pick maximises it (n = 1: token 0).
  tokensel::detail::parallel_for(policy, n, tokensel::detail::bytes_of<float>(n * n), [&](index_t j) {
    const float* row = cosine.data() + j * n;
    float m = std::numeric_limits<float>::infinity();
    for (index_t i = 0; i < n; ++i) {
      if (i == j) continue;
      const float dist = tokensel::detail::cosine_distance(row[i]);
      if (dist < m) m = dist;
    }
    score[static_cast<std::size_t>(j)] = n > 1 ? m : 0.0f;
  });
  index_t pick = detail::first_max(score);
  out[0] = static_cast<token_index>(pick);

  // 2. Farthest-point steps: score[j] = min distance to the kept set (-inf once kept).
  constexpr float taken = -std::numeric_limits<float>::infinity();
  std::fill(score.begin(), score.end(), std::numeric_limits<float>::infinity());
  score[static_cast<std::size_t>(pick)] = taken;
  for (index_t t = 1; t < k; ++t) {
    const float* row = cosine.data() + pick * n;
    for (index_t j = 0; j < n; ++j) {
      float& s = score[static_cast<std::size_t>(j)];
      if (s == taken) continue;
      const float dist = tokensel::detail::cosine_distance(row[j]);
      if (dist < s) s = dist;
    }
    pick = detail::first_max(score);
    res.min_distance = score[static_cast<std::size_t>(pick)];
    score[static_cast<std::size_t>(pick)] = taken;
    out[static_cast<std::size_t>(t)] = static_cast<token_index>(pick);
  }
  if (!order.empty()) std::copy(out.begin(), out.begin() + k, order.begin());
  std::sort(out.begin(), out.begin() + k);
  res.count = k;
  return res;
}

/// Batch: features [batch, n, D]; sample b writes out.indices(b, :).
template <cpu_policy Policy, element F>
void select(const Policy& policy, const feature_view<const F>& features, const config& cfg, const selection_batch& out,
            std::span<result> results = {}) {
  tokensel::detail::run_batch(policy, features.extent(0), out, results, "divprune",
                              [&](index_t b, std::span<token_index> row, const auto& inner) {
                                return select(inner, features[b], cfg, row);
                              });
}

/// Ragged batch: one [n_b, D_b] view per sample.
template <cpu_policy Policy, element F>
void select(const Policy& policy, std::span<const matrix_view<const F>> features, const config& cfg,
            const selection_batch& out, std::span<result> results = {}) {
  tokensel::detail::run_batch(policy, static_cast<index_t>(features.size()), out, results, "divprune",
                              [&](index_t b, std::span<token_index> row, const auto& inner) {
                                return select(inner, features[static_cast<std::size_t>(b)], cfg, row);
                              });
}

}  // namespace divprune
TOKENSEL_END_NAMESPACE
