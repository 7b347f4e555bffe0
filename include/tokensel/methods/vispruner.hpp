// tokensel: VisPruner (Zhang et al., "Beyond Text-Visual Attention: Exploiting Visual Cues for
// Effective Token Pruning in VLMs", ICCV 2025, arXiv 2412.01818; official code
// Theia-4869/VisPruner). docs/vispruner.md.
//
// Keeps T visual tokens of two kinds, chosen from visual cues only:
//   important: the T_imp = floor(T * important_ratio) patches with the highest CLS attention at
//              the feature layer (CLS query row, mean over heads);
//   diverse:   the other T - T_imp come from the remaining patches, taken in descending CLS
//              attention order, by repeated duplicate removal: split the list into its even
//              positions (a) and odd positions (b), score each a token by its highest cosine
//              similarity (of the features) to any b token, drop the r = min(8, R - (T - T_imp))
//              highest-scored a tokens, and continue with [the other a tokens by descending score,
//              then b], until T - T_imp tokens remain.
// Ties: the lower index (or list position) first. The kept patch indices are written ascending.
// The attention is read as the CLS query row only: a materialised view [heads, N or 1, N] or a
// qk_source of the feature layer (one softmax row per head from Q and K, O(N) memory), so any
// attention kernel works. The cosines between remaining patches are computed once (R x R fp32,
// R = n - T_imp; 1.2 MiB for LLaVA-1.5) instead of once per round as the official code does; the
// values are the same canonical dots (methods/detail/cosine.hpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <span>
#include <string>

#include "tokensel/core/attention_source.hpp"
#include "tokensel/core/batch.hpp"
#include "tokensel/core/budget.hpp"
#include "tokensel/core/config.hpp"
#include "tokensel/core/element.hpp"
#include "tokensel/core/error.hpp"
#include "tokensel/core/policy.hpp"
#include "tokensel/core/qk_source.hpp"
#include "tokensel/core/tensor_view.hpp"
#include "tokensel/core/token_range.hpp"
#include "tokensel/detail/arith.hpp"
#include "tokensel/detail/parallel.hpp"
#include "tokensel/detail/scratch.hpp"
#include "tokensel/detail/validate.hpp"
#include "tokensel/methods/detail/cosine.hpp"
#include "tokensel/methods/detail/feature_rules.hpp"
#include "tokensel/select/top_k.hpp"
#include "tokensel/stats/head_reduction.hpp"
#include "tokensel/stats/qk_statistics.hpp"

TOKENSEL_BEGIN_NAMESPACE
namespace vispruner {

struct config {
  std::optional<double> ratio{};          ///< keep max(1, floor(n * ratio)) patches, in (0, 1]
  std::optional<index_t> count{};         ///< or exactly count (<= n); at most one of the two, neither: 64
  double important_ratio = 0.5;           ///< share of the kept tokens chosen by CLS attention, in [0, 1]
  index_t rounds_drop = 8;                ///< tokens dropped per duplicate-removal round (official 8), >= 1
};

/// Kept patches when no budget is set (the paper's LLaVA-1.5 setting of 64 tokens).
inline constexpr index_t default_count = 64;

/// Per-sample statistics.
struct [[nodiscard]] result {
  index_t count = 0;      ///< patches kept
  index_t important = 0;  ///< of which chosen by CLS attention
  index_t diverse = 0;    ///< of which left by duplicate removal
  index_t rounds = 0;     ///< duplicate-removal rounds run
};

inline void validate(const config& cfg) {
  using tokensel::detail::fail;
  if (cfg.ratio && cfg.count) fail(errc::invalid_argument, "vispruner.ratio/vispruner.count", "both set", "set at most one of ratio and count");
  if (cfg.ratio) tokensel::detail::check_ratio(*cfg.ratio, "vispruner.ratio");
  if (cfg.count && (*cfg.count < 1 || *cfg.count > std::numeric_limits<token_index>::max())) {
    fail(errc::invalid_argument, "vispruner.count", *cfg.count, "must be in [1, 2147483647]");
  }
  if (!(cfg.important_ratio >= 0.0 && cfg.important_ratio <= 1.0)) {
    fail(errc::invalid_argument, "vispruner.important_ratio", cfg.important_ratio, "must be in [0, 1]");
  }
  if (cfg.rounds_drop < 1) fail(errc::invalid_argument, "vispruner.rounds_drop", cfg.rounds_drop, "must be >= 1");
}

/// Patches kept of n: 0 for n = 0; the count (<= n); or max(1, floor(n * ratio)).
[[nodiscard]] inline index_t keep_count(index_t n, const config& cfg) {
  validate(cfg);
  if (n < 0) tokensel::detail::fail(errc::invalid_argument, "vispruner.n", n, "must be >= 0");
  if (n == 0) return 0;
  if (!cfg.ratio) {
    const index_t c = cfg.count.value_or(default_count);
    if (c > n) tokensel::detail::fail(errc::invalid_argument, "vispruner.count", c, "exceeds the " + std::to_string(n) + " patches");
    return c;
  }
  const double kept = static_cast<double>(n) * *cfg.ratio;
  if (kept >= static_cast<double>(n)) return n;
  const auto k = static_cast<index_t>(kept);
  return k < 1 ? 1 : k;
}

/// Important tokens of T kept: int(T * important_ratio) (truncation, as the official code).
[[nodiscard]] inline index_t important_count(index_t kept, const config& cfg) {
  validate(cfg);
  const double t = static_cast<double>(kept) * cfg.important_ratio;
  return t >= static_cast<double>(kept) ? kept : static_cast<index_t>(t);
}

/// A fraction is the ratio, a count the count; important_ratio comes from base.
[[nodiscard]] inline config with_budget(const budget& b, index_t n, config base = {}) {
  return tokensel::detail::ratio_or_count(b, n, base, "vispruner");
}

/// What VisPruner reads at the feature layer: the CLS query row and the features it compares.
[[nodiscard]] inline method_requirements requirements(const config& cfg, const model_shape& shape) {
  tokensel::detail::check_feature_layer(shape, "vispruner");
  if (!shape.cls) tokensel::detail::fail(errc::invalid_argument, "vispruner.model", "needs a CLS token (its attention row ranks the patches)");
  method_requirements r;
  r.layers = {shape.feature_layer, shape.feature_layer};
  r.cls_row = true;
  r.hidden_states = true;
  r.keep = r.output_rows = keep_count(shape.visual_tokens, cfg);
  return r;
}

namespace detail {

template <element A>
index_t source_heads(const head_attention_view<A>& a) noexcept { return a.extent(0); }
template <element A>
index_t source_heads(const qk_source<A>& a) noexcept { return a.heads(); }

/// s[j] = mean over heads of A[h, 0, 1 + j] (the head_reduction::mean arithmetic).
template <cpu_policy Policy, element A>
void cls_scores(const Policy& policy, const head_attention_view<A>& attention, std::span<float> score) {
  const index_t n = attention.extent(2);
  const index_t cls[1] = {0};
  reduced_rows(policy, attention.slice(2, 1, n - 1, "vispruner.attention"), head_reduction::mean, std::span<const index_t>(cls),
               matrix_view<float>(score.data(), {1, n - 1}, "vispruner.cls_attention"));
}
template <cpu_policy Policy, element A>
void cls_scores(const Policy& policy, const qk_source<A>& attention, std::span<float> score) {
  const index_t n = key_tokens(attention);
  const auto patches = restrict_window(attention, token_range::all(query_tokens(attention)), token_range::skip_cls(n));
  const index_t cls[1] = {0};
  reduced_rows(policy, patches, head_reduction::mean, std::span<const index_t>(cls),
               matrix_view<float>(score.data(), {1, n - 1}, "vispruner.cls_attention"));
}

/// The patches of attention (CLS excluded), after select's checks of the attention's query rows
/// and heads and of the features' row count.
template <attention_source Source, element F>
index_t checked_patches(const Source& attention, const matrix_view<const F>& features) {
  using tokensel::detail::fail;
  const index_t big_n = key_tokens(attention), queries = query_tokens(attention);
  if (queries != big_n && queries != 1) {
    fail(errc::shape_mismatch, "vispruner.attention.extent(1)", queries,
         "must be the " + std::to_string(big_n) + " tokens or 1 (the CLS query row only)");
  }
  if (big_n > 0 && source_heads(attention) < 1) fail(errc::shape_mismatch, "vispruner.attention.extent(0)", source_heads(attention), "no heads");
  const index_t n = big_n > 0 ? big_n - 1 : 0;
  if (features.extent(0) != n) {
    fail(errc::shape_mismatch, "vispruner.features.extent(0)", features.extent(0),
         "must equal the " + std::to_string(n) + " patches of the attention (CLS excluded)");
  }
  return n;
}

}  // namespace detail

/// One image.
///   attention [heads, N, N] or [heads, 1, N] (only the CLS query row 0 is read), CLS at token 0,
///             or its qk_source of the feature layer;
///   features  [N - 1, D]: the patch features (LLaVA: hidden_states[-2] without CLS), finite;
///   out       >= keep_count(N - 1) patch indices (CLS excluded, 0-based), written ascending.
template <cpu_policy Policy, attention_source Source, element F>
result select(const Policy& policy, const Source& attention, const matrix_view<const F>& features, const config& cfg,
              std::span<token_index> out) {
  using tokensel::detail::fail;
  const index_t n = detail::checked_patches(attention, features), d = features.extent(1);
  const index_t k = keep_count(n, cfg);
  tokensel::detail::check_capacity(out.size(), k, "vispruner.out.size()");
  result res;
  if (n == 0) return res;
  if (d < 1) fail(errc::shape_mismatch, "vispruner.features.extent(1)", d, "empty feature vectors");
  const index_t important = important_count(k, cfg), diverse = k - important;

  tokensel::detail::scratch_scope scratch;
  // 1. CLS attention (head mean), every patch ranked: higher first, then lower index.
  auto score = scratch.take<float>(static_cast<std::size_t>(n));
  detail::cls_scores(policy, attention, score);
  for (index_t j = 0; j < n; ++j) {
    if (!std::isfinite(score[static_cast<std::size_t>(j)])) {
      fail(errc::non_finite, "vispruner.attention[:, 0, " + std::to_string(j + 1) + "]", score[static_cast<std::size_t>(j)],
           "CLS attention must be finite");
    }
  }
  auto ranked = scratch.take<token_index>(static_cast<std::size_t>(n));
  top_k<float>(as_view(std::span<const float>(score), "vispruner.cls_attention"), n, ranked, index_order::ranked);
  for (index_t i = 0; i < important; ++i) out[static_cast<std::size_t>(i)] = ranked[static_cast<std::size_t>(i)];
  res.important = important;
  res.count = k;
  if (diverse == 0) {
    std::sort(out.begin(), out.begin() + k);
    return res;
  }

  // 2. The remaining patches in ranked order; their unit features and all their cosines.
  const index_t r0 = n - important;
  const token_index* rest = ranked.data() + important;
  auto unit = scratch.take<float>(static_cast<std::size_t>(r0 * d));
  tokensel::detail::unit_feature_rows(policy, features, rest, r0, unit, "vispruner.features");
  auto gram = scratch.take<float>(static_cast<std::size_t>(r0 * r0));
  tokensel::detail::cosine_table(policy, unit.data(), r0, d, gram);

  // 3. Duplicate removal over positions into `rest` (list: current order).
  auto list = scratch.take<index_t>(static_cast<std::size_t>(r0));
  auto next = scratch.take<index_t>(static_cast<std::size_t>(r0));
  auto a_score = scratch.take<float>(static_cast<std::size_t>((r0 + 1) / 2));
  auto a_rank = scratch.take<token_index>(static_cast<std::size_t>((r0 + 1) / 2));
  for (index_t i = 0; i < r0; ++i) list[static_cast<std::size_t>(i)] = i;
  index_t size = r0;
  while (size > diverse) {
    const index_t na = (size + 1) / 2, nb = size / 2;
    tokensel::detail::parallel_for(policy, na, [&](index_t i) {
      const float* row = gram.data() + list[static_cast<std::size_t>(2 * i)] * r0;
      float best = row[list[1]];
      for (index_t j = 1; j < nb; ++j) best = tokensel::detail::std_max(best, row[list[static_cast<std::size_t>(2 * j + 1)]]);
      a_score[static_cast<std::size_t>(i)] = best;
    });
    const auto scores = std::span<const float>(a_score.data(), static_cast<std::size_t>(na));
    top_k<float>(as_view(scores, "vispruner.duplicate_scores"), na, a_rank.first(static_cast<std::size_t>(na)), index_order::ranked);
    const index_t dropped = tokensel::detail::vispruner_dropped(size, diverse, cfg.rounds_drop);
    index_t w = 0;
    for (index_t i = dropped; i < na; ++i) next[static_cast<std::size_t>(w++)] = list[static_cast<std::size_t>(2 * a_rank[static_cast<std::size_t>(i)])];
    for (index_t j = 0; j < nb; ++j) next[static_cast<std::size_t>(w++)] = list[static_cast<std::size_t>(2 * j + 1)];
    std::swap(list, next);
    size = w;
    ++res.rounds;
  }
  for (index_t i = 0; i < diverse; ++i) out[static_cast<std::size_t>(important + i)] = rest[list[static_cast<std::size_t>(i)]];
  res.diverse = diverse;
  std::sort(out.begin(), out.begin() + k);
  return res;
}

/// Batch: attention [batch, heads, N, N] (or [batch, heads, 1, N]), features [batch, N - 1, D].
template <cpu_policy Policy, element A, element F>
void select(const Policy& policy, const attention_view<A>& attention, const feature_view<const F>& features, const config& cfg,
            const selection_batch& out, std::span<result> results = {}) {
  const index_t batch = attention.extent(0);
  if (features.extent(0) != batch) {
    tokensel::detail::fail(errc::shape_mismatch, "vispruner.features.extent(0)", features.extent(0),
                           "must equal the batch size " + std::to_string(batch));
  }
  tokensel::detail::run_batch(policy, batch, out, results, "vispruner", [&](index_t b, std::span<token_index> row, const auto& inner) {
    return select(inner, attention[b], features[b], cfg, row);
  });
}

/// Ragged batch: one attention view (or qk_source) and one feature view per image.
template <cpu_policy Policy, attention_source Source, element F>
void select(const Policy& policy, std::span<const Source> attention, std::span<const matrix_view<const F>> features,
            const config& cfg, const selection_batch& out, std::span<result> results = {}) {
  const auto batch = static_cast<index_t>(attention.size());
  if (static_cast<index_t>(features.size()) != batch) {
    tokensel::detail::fail(errc::shape_mismatch, "vispruner.features.size()", features.size(),
                           "must equal the batch size " + std::to_string(batch));
  }
  tokensel::detail::run_batch(policy, batch, out, results, "vispruner", [&](index_t b, std::span<token_index> row, const auto& inner) {
    const auto i = static_cast<std::size_t>(b);
    return select(inner, attention[i], features[i], cfg, row);
  });
}

}  // namespace vispruner
TOKENSEL_END_NAMESPACE
