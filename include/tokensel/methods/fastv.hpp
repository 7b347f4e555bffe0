// tokensel: FastV (arXiv 2403.06764, official code pkunlp-icler/FastV), spec section 5.
//
// At LLM layer K (default 2) the visual tokens are ranked by the attention the last prompt token
// paid them in layer K-1 (probabilities, mean over heads, last query row, visual key columns);
// the round(n * (1 - R)) highest are kept (default R = 0.5), the rest leave the sequence from
// layer K on (hidden states, positions; survivors keep their original position ids). Pruning
// happens once, at prefill. The caller feeds layer K-1's attention; K is recorded in the config
// for the engine and validated, the selection itself does not depend on it.
// Input: the materialised attention [heads, q, L], or a qk_source of layer K-1 (queries and keys;
// causal = true for an LLM): then only the last query row is computed from Q and K (one row of
// softmax per head, O(L) memory), the visual span being a column window of it.
#pragma once

#include <cmath>
#include <span>
#include <string>

#include "tokensel/core/attention_source.hpp"
#include "tokensel/core/batch.hpp"
#include "tokensel/core/budget.hpp"
#include "tokensel/core/config.hpp"
#include "tokensel/detail/reduce.hpp"
#include "tokensel/detail/scratch.hpp"
#include "tokensel/detail/validate.hpp"
#include "tokensel/core/element.hpp"
#include "tokensel/core/error.hpp"
#include "tokensel/stats/head_reduction.hpp"
#include "tokensel/core/policy.hpp"
#include "tokensel/core/qk_source.hpp"
#include "tokensel/stats/qk_statistics.hpp"
#include "tokensel/core/tensor_view.hpp"
#include "tokensel/core/token_range.hpp"
#include "tokensel/select/top_k.hpp"

TOKENSEL_BEGIN_NAMESPACE
namespace fastv {

struct config {
  double ratio = 0.5;                           ///< R: fraction of visual tokens dropped, in [0, 1)
  index_t layer = 2;                            ///< K: pruning layer (scores from layer K-1); >= 1
  head_reduction heads = head_reduction::mean;  ///< official: mean over heads
};

/// Per-sample statistics.
struct [[nodiscard]] result {
  index_t count = 0;          ///< visual tokens kept
  float visual_mass = 0.0f;   ///< attention of the last query row on all visual tokens (head-reduced)
  float kept_mass = 0.0f;     ///< the part of it on the kept tokens
};

inline void validate(const config& cfg) {
  if (!(cfg.ratio >= 0.0 && cfg.ratio < 1.0)) tokensel::detail::fail(errc::invalid_argument, "fastv.ratio", cfg.ratio, "must be in [0, 1)");
  if (cfg.layer < 1) tokensel::detail::fail(errc::invalid_argument, "fastv.layer", cfg.layer, "must be >= 1 (the scores come from layer K-1)");
}

namespace detail {
/// Python's round() of a double: nearest integer, exact halves to the even neighbour. x - floor(x)
/// is exact for the magnitudes of token counts, so the tie test is exact too.
inline index_t round_half_even(double x) {
  const double f = std::floor(x);
  const double frac = x - f;
  auto r = static_cast<index_t>(f);
  if (frac > 0.5 || (frac == 0.5 && (r % 2) != 0)) ++r;
  return r;
}
}  // namespace detail

/// Tokens kept of n visual tokens: round(n * (1 - R)) with Python's round (half to even) of the
/// double product, exactly as the official HF implementation computes it. Pure.
[[nodiscard]] inline index_t keep_count(index_t n, const config& cfg) {
  validate(cfg);
  if (n < 0) tokensel::detail::fail(errc::invalid_argument, "fastv.n", n, "must be >= 0");
  const double kept = static_cast<double>(n) * (1.0 - cfg.ratio);
  // Near 2^63 the double product can round up to n or beyond, out of index_t's range.
  if (kept >= static_cast<double>(n)) return n;
  return detail::round_half_even(kept);
}

/// The config that keeps `b` of n visual tokens; layer and heads come from base. FastV's ratio
/// is the dropped fraction: a kept fraction f gives R = 1 - f. A count becomes the R whose
/// keep_count is that count (the neighbouring doubles of 1 - k / n are tried, since the official
/// rounding is of the double product); none is refused.
[[nodiscard]] inline config with_budget(const budget& b, index_t n, config base = {}) {
  if (b.is_fraction()) {
    base.ratio = 1.0 - b.fraction_value();
    return base;
  }
  const index_t k = b.tokens(n, "fastv");
  const double r = 1.0 - static_cast<double>(k) / static_cast<double>(n);
  for (const double candidate : {r, std::nextafter(r, -1.0), std::nextafter(r, 2.0)}) {
    if (!(candidate >= 0.0 && candidate < 1.0)) continue;
    base.ratio = candidate;
    if (keep_count(n, base) == k) return base;
  }
  tokensel::detail::fail(errc::invalid_argument, "fastv.budget", b.describe(),
                         "no drop ratio keeps exactly this many of " + std::to_string(n) + " tokens: give a fraction");
}

/// What FastV reads: the last query row of LLM layer K-1 (after which it drops; the scores are
/// that row over the visual span).
[[nodiscard]] inline method_requirements requirements(const config& cfg, const model_shape& shape) {
  tokensel::detail::check_model_shape(shape, "fastv");
  validate(cfg);
  method_requirements r;
  r.stage = stage::llm;
  r.layers = {cfg.layer - 1, cfg.layer - 1};
  r.last_query_row = true;
  r.keep = r.output_rows = keep_count(shape.visual_tokens, cfg);
  return r;
}

/// From precomputed head-reduced scores of the visual tokens (e.g. the last query row computed
/// from Q and K under FlashAttention): writes the keep_count(n) highest, ascending.
template <element T>
result select_scores(const vector_view<const T>& scores, const config& cfg, std::span<token_index> out) {
  const index_t n = scores.extent(0);
  const index_t k = keep_count(n, cfg);
  tokensel::detail::check_capacity(out.size(), k, "fastv.out.size()");
  tokensel::detail::check_finite(scores, "fastv.scores");
  result res;
  res.count = top_k<T>(scores, k, out, index_order::ascending);
  if (n > 0) res.visual_mass = tokensel::detail::canonical_sum(scores.data(), n, scores.stride(0));
  for (index_t i = 0; i < k; ++i) res.kept_mass += to_float(scores(out[i]));  // ascending kept order
  return res;
}

namespace detail {
/// Head-reduced last query row over the visual columns, from a materialised view.
template <cpu_policy Policy, element T>
void last_row(const Policy&, const head_attention_view<T>& attention, const token_range& visual, head_reduction op,
              float* row) {
  const index_t queries = attention.extent(1), n = visual.count;
  tokensel::detail::check_heads_present(attention.extent(0), queries, n);
  tokensel::detail::reduce_heads_row(attention.slice(2, visual.begin, n, "fastv.attention"), queries - 1, op, row);
  if (tokensel::detail::all_finite(row, n)) return;  // one branch-free pass; locate only on failure
  for (index_t j = 0; j < n; ++j) {
    if (!std::isfinite(row[j])) {
      tokensel::detail::fail(errc::non_finite, "fastv.attention[" + std::to_string(queries - 1) + ", " + std::to_string(visual.begin + j) + "]",
                             row[j], "attention values must be finite");
    }
  }
}

/// Same from Q/K: one row of softmax per head (over every visible key), the span as a column window.
template <cpu_policy Policy, element T>
void last_row(const Policy& policy, const qk_source<T>& source, const token_range& visual, head_reduction op,
              float* row) {
  const index_t queries = query_tokens(source), n = visual.count;
  const auto window = restrict_window(source, token_range::all(queries), visual);
  const index_t last[1] = {queries - 1};
  reduced_rows(policy, window, op, std::span<const index_t>(last), matrix_view<float>(row, {1, n}, "fastv.scores"));
}
}  // namespace detail

/// One sample: attention of layer K-1 as a view [heads, q, L] (prefill: q = L; or only the last
/// query row, q = 1) or as a qk_source (queries [heads, q, d], keys [kv_heads, L, d]; set causal
/// for an LLM), visual = [s0, s0 + n) among the L keys. Scores = head reduction of the last query
/// row over the visual columns; keeps the keep_count(n) highest (ties: lower index), ascending
/// indices into the span.
template <cpu_policy Policy, attention_source Source>
result select(const Policy& policy, const Source& attention, const token_range& visual, const config& cfg,
              std::span<token_index> out) {
  validate(cfg);
  const index_t queries = query_tokens(attention);
  check_range(visual, key_tokens(attention), "fastv.visual");
  const index_t n = visual.count;
  tokensel::detail::check_capacity(out.size(), keep_count(n, cfg), "fastv.out.size()");
  if (n == 0) return {};
  if (queries < 1) tokensel::detail::fail(errc::shape_mismatch, "fastv.attention.extent(1)", queries, "needs the last query row");
  tokensel::detail::scratch_scope scratch;
  auto row = scratch.take<float>(static_cast<std::size_t>(n));
  detail::last_row(policy, attention, visual, cfg.heads, row.data());
  return select_scores<float>(as_view(std::span<const float>(row), "fastv.scores"), cfg, out);
}

/// Batch [batch, heads, q, L] sharing one visual span.
template <cpu_policy Policy, element T>
void select(const Policy& policy, const attention_view<T>& batch, const token_range& visual, const config& cfg,
            const selection_batch& out, std::span<result> results = {}) {
  tokensel::detail::run_batch(policy, tokensel::detail::batch_size(batch), out, results, "fastv",
                              [&](index_t b, std::span<token_index> row, const auto& inner) {
                                return select(inner, batch[b], visual, cfg, row);
                              });
}

/// Ragged batch: one [heads, q_b, L_b] view (or qk_source) and one visual span per sample.
template <cpu_policy Policy, attention_source Source>
void select(const Policy& policy, std::span<const Source> batch, std::span<const token_range> visual,
            const config& cfg, const selection_batch& out, std::span<result> results = {}) {
  if (visual.size() != batch.size()) {
    tokensel::detail::fail(errc::shape_mismatch, "fastv.visual.size()", visual.size(), "must equal the batch size " + std::to_string(batch.size()));
  }
  tokensel::detail::run_batch(policy, static_cast<index_t>(batch.size()), out, results, "fastv",
                              [&](index_t b, std::span<token_index> row, const auto& inner) {
                                return select(inner, batch[b], visual[b], cfg, row);
                              });
}

}  // namespace fastv
TOKENSEL_END_NAMESPACE
