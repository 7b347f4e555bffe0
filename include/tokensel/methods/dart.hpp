// tokensel: DART (Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models:
// Duplication Matters More", 2025, arXiv 2502.11494; official code ZichenWen1/DART). docs/dart.md.
//
// Inside the LLM prefill, after layer K-1 (default K = 2), DART keeps the visual tokens that
// duplicate its pivots least:
//   pivots: the image_pivots visual tokens and the text_pivots text tokens (every token after
//           the visual span) with the largest L1 norm of their layer-(K-1) keys (after RoPE, all
//           heads concatenated);
//   then, pivot by pivot (ascending sequence position), the pivot takes its quota of the
//   remaining visual tokens whose hidden states (entering layer K, under the model's final
//   RMSNorm weight) have the LOWEST cosine similarity to its own, and those leave the pool.
//   Kept: the image pivots and everything the pivots took (text pivots are not visual tokens).
// The budget is the total count k; the k - image pivots non-pivot tokens are split over the
// pivots as evenly as possible (the first ones in processing order take one more), so any k is
// exact. With k = image_pivots + P * t (P pivots) every pivot takes t, which is the official
// rule with its TOKEN_TOPK = t. Ties: lower index (top-k rule, select/top_k.hpp). The RMSNorm's
// per-row scale cancels in a cosine, so only its weight is an input. No attention map is read:
// the keys are the layer's K (FlashAttention keeps them), so any attention kernel works.
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
#include "tokensel/core/token_range.hpp"
#include "tokensel/detail/arith.hpp"
#include "tokensel/detail/parallel.hpp"
#include "tokensel/detail/reduce.hpp"
#include "tokensel/detail/scratch.hpp"
#include "tokensel/detail/validate.hpp"
#include "tokensel/detail/widen.hpp"
#include "tokensel/methods/detail/cosine.hpp"
#include "tokensel/methods/detail/feature_rules.hpp"
#include "tokensel/select/top_k.hpp"

TOKENSEL_BEGIN_NAMESPACE
namespace dart {

struct config {
  std::optional<double> ratio{};   ///< keep max(1, floor(n * ratio)) visual tokens, in (0, 1]
  std::optional<index_t> count{};  ///< or keep exactly count (<= n); at most one of the two, neither: ratio 0.222
  index_t layer = 2;                    ///< K: tokens leave after layer K-1, whose keys rank the pivots (>= 1)
  index_t image_pivots = 4;             ///< visual pivots (kept), >= 0
  index_t text_pivots = 4;              ///< text pivots (after the visual span), >= 0
};

/// Kept fraction when no budget is set: the official LLaVA-1.5 reduction ratio 0.778.
inline constexpr double default_ratio = 0.222;

/// Per-sample statistics.
struct [[nodiscard]] result {
  index_t count = 0;         ///< visual tokens kept (image pivots included)
  index_t image_pivots = 0;  ///< of which image pivots
  index_t text_pivots = 0;   ///< text pivots used (at most the text tokens present)
};

inline void validate(const config& cfg) {
  using tokensel::detail::fail;
  if (cfg.ratio && cfg.count) fail(errc::invalid_argument, "dart.ratio/dart.count", "both set", "set at most one of ratio and count");
  if (cfg.ratio) tokensel::detail::check_ratio(*cfg.ratio, "dart.ratio");
  if (cfg.count && (*cfg.count < 1 || *cfg.count > std::numeric_limits<token_index>::max())) {
    fail(errc::invalid_argument, "dart.count", *cfg.count, "must be in [1, 2147483647]");
  }
  if (cfg.layer < 1) fail(errc::invalid_argument, "dart.layer", cfg.layer, "must be >= 1 (the keys come from layer K-1)");
  if (cfg.image_pivots < 0 || cfg.image_pivots > std::numeric_limits<token_index>::max()) {
    fail(errc::invalid_argument, "dart.image_pivots", cfg.image_pivots, "must be in [0, 2147483647]");
  }
  if (cfg.text_pivots < 0 || cfg.text_pivots > std::numeric_limits<token_index>::max()) {
    fail(errc::invalid_argument, "dart.text_pivots", cfg.text_pivots, "must be in [0, 2147483647]");
  }
  if (cfg.image_pivots + cfg.text_pivots < 1) {
    fail(errc::invalid_argument, "dart.image_pivots + dart.text_pivots", cfg.image_pivots + cfg.text_pivots, "must be >= 1");
  }
}

/// Visual tokens kept of n: 0 for n = 0; the count (<= n); or max(1, floor(n * ratio)).
[[nodiscard]] inline index_t keep_count(index_t n, const config& cfg) {
  validate(cfg);
  if (n < 0) tokensel::detail::fail(errc::invalid_argument, "dart.n", n, "must be >= 0");
  if (n == 0) return 0;
  if (cfg.count) {
    if (*cfg.count > n) {
      tokensel::detail::fail(errc::invalid_argument, "dart.count", *cfg.count, "exceeds the " + std::to_string(n) + " visual tokens");
    }
    return *cfg.count;
  }
  const double kept = static_cast<double>(n) * cfg.ratio.value_or(default_ratio);
  if (kept >= static_cast<double>(n)) return n;
  const auto k = static_cast<index_t>(kept);
  return k < 1 ? 1 : k;
}

/// A fraction is the ratio, a count the count; layer and pivots come from base.
[[nodiscard]] inline config with_budget(const budget& b, index_t n, config base = {}) {
  return tokensel::detail::ratio_or_count(b, n, base, "dart");
}

/// What DART reads: LLM layer K-1's keys (after RoPE) and the hidden states leaving it.
[[nodiscard]] inline method_requirements requirements(const config& cfg, const model_shape& shape) {
  tokensel::detail::check_model_shape(shape, "dart");
  validate(cfg);
  method_requirements r;
  r.stage = stage::llm;
  r.layers = {cfg.layer - 1, cfg.layer - 1};
  r.keys = true;
  r.hidden_states = true;
  r.keep = r.output_rows = keep_count(shape.visual_tokens, cfg);
  return r;
}

namespace detail {

/// L1 norm of token t's keys over every head, in fp32: the |values| in head-major order, then the
/// canonical sum. row: scratch of heads * d_head floats.
template <element K>
float key_l1(const tensor_view<const K, 3>& keys, index_t t, float* row) {
  const index_t heads = keys.extent(0), dh = keys.extent(2);
  // Contiguous key rows are widened in bulk (F16C for fp16) and checked in one pass; the element
  // loop below then only runs to name a non-finite value. Same values, same canonical sum.
  if (dh > 0 && keys.stride(2) == 1) {
    for (index_t h = 0; h < heads; ++h) tokensel::detail::widen(&keys(h, t, 0), dh, row + h * dh);
    if (tokensel::detail::all_finite(row, heads * dh)) {
      for (index_t j = 0; j < heads * dh; ++j) row[j] = std::fabs(row[j]);
      return tokensel::detail::canonical_sum(row, heads * dh);
    }
  }
  for (index_t h = 0; h < heads; ++h) {
    for (index_t c = 0; c < dh; ++c) {
      const float v = to_float(keys(h, t, c));
      if (!std::isfinite(v)) {
        tokensel::detail::fail(errc::non_finite,
                               "dart.keys[" + std::to_string(h) + ", " + std::to_string(t) + ", " + std::to_string(c) + "]", v,
                               "values must be finite");
      }
      row[h * dh + c] = std::fabs(v);
    }
  }
  return tokensel::detail::canonical_sum(row, heads * dh);
}

template <class K, class H, class W>
void check_shapes(const tensor_view<const K, 3>& keys, const matrix_view<const H>& hidden, const vector_view<const W>& weight,
                  const token_range& visual) {
  using tokensel::detail::fail;
  const index_t len = hidden.extent(0);
  if (visual.begin < 0 || visual.count < 0 || visual.end() > len) {
    fail(errc::invalid_argument, "dart.visual", "[" + std::to_string(visual.begin) + ", " + std::to_string(visual.end()) + ")",
         "must lie within the " + std::to_string(len) + " tokens of the sequence");
  }
  if (visual.count == 0) return;
  if (keys.extent(1) != len) {
    fail(errc::shape_mismatch, "dart.keys.extent(1)", keys.extent(1), "must equal the " + std::to_string(len) + " tokens of hidden");
  }
  if (keys.extent(0) < 1) fail(errc::shape_mismatch, "dart.keys.extent(0)", keys.extent(0), "no heads");
  if (keys.extent(2) < 1) fail(errc::shape_mismatch, "dart.keys.extent(2)", keys.extent(2), "empty key vectors");
  if (hidden.extent(1) < 1) fail(errc::shape_mismatch, "dart.hidden.extent(1)", hidden.extent(1), "empty hidden states");
  tokensel::detail::check_channel_weight(weight, hidden.extent(1), "dart.norm_weight");
}

/// taken: ascending positions into pool[0, pool_size): their tokens go to out[written ..) (written
/// advances), the rest of the pool is compacted in order. Returns the new pool size.
inline index_t move_taken(std::span<const token_index> taken, std::span<token_index> pool, index_t pool_size,
                          std::span<token_index> out, index_t& written) {
  const auto quota = static_cast<index_t>(taken.size());
  index_t next = 0, kept_pool = 0;
  for (index_t c = 0; c < pool_size; ++c) {
    if (next < quota && taken[static_cast<std::size_t>(next)] == c) {
      out[static_cast<std::size_t>(written++)] = pool[static_cast<std::size_t>(c)];
      ++next;
    } else {
      pool[static_cast<std::size_t>(kept_pool++)] = pool[static_cast<std::size_t>(c)];
    }
  }
  return kept_pool;
}

}  // namespace detail

/// One sequence.
///   keys        [kv_heads, L, d_head]: layer K-1's keys after RoPE (any head count; f32/f16/bf16);
///   hidden      [L, D]: the hidden states entering layer K (before its input norm);
///   norm_weight [D] the final RMSNorm weight the official code applies before the cosine, or
///               empty (no weight);
///   visual      the visual span of the sequence; its text tokens are those after it;
///   out         >= keep_count(visual.count) indices relative to the span, written ascending.
template <cpu_policy Policy, element K, element H, element W = float>
result select(const Policy& policy, const tensor_view<const K, 3>& keys, const matrix_view<const H>& hidden,
              const vector_view<const W>& norm_weight, const token_range& visual, const config& cfg,
              std::span<token_index> out) {
  detail::check_shapes(keys, hidden, norm_weight, visual);
  const index_t n = visual.count, k = keep_count(n, cfg);
  tokensel::detail::check_capacity(out.size(), k, "dart.out.size()");
  result res;
  if (n == 0) return res;
  const index_t len = hidden.extent(0), d = hidden.extent(1);
  const index_t m = len - visual.end();  // text tokens
  const index_t pi = std::min(cfg.image_pivots, k), pt = std::min(cfg.text_pivots, m);
  const index_t extra = k - pi, pivots = pi + pt;
  if (extra > 0 && pivots == 0) {
    tokensel::detail::fail(errc::invalid_argument, "dart.image_pivots", cfg.image_pivots,
                           "no pivot to take the other " + std::to_string(extra) + " tokens (no text tokens follow the visual span)");
  }

  tokensel::detail::scratch_scope scratch;
  // 1. Pivots: the largest key L1 norms among the visual tokens and among the text tokens.
  const index_t row_len = keys.extent(0) * keys.extent(2);
  auto norm = scratch.take<float>(static_cast<std::size_t>(std::max(n, m)));
  auto pivot = scratch.take<token_index>(static_cast<std::size_t>(pivots > 0 ? pivots : 1));  // sequence positions
  auto l1 = [&](index_t first, index_t count) {
    tokensel::detail::parallel_for(policy, count, [&](index_t i) {
      tokensel::detail::scratch_scope local;
      auto row = local.take<float>(static_cast<std::size_t>(row_len));
      norm[static_cast<std::size_t>(i)] = detail::key_l1(keys, first + i, row.data());
    });
  };
  l1(visual.begin, n);
  top_k<float>(as_view(std::span<const float>(norm.data(), static_cast<std::size_t>(n)), "dart.key_norms"), pi,
               pivot.first(static_cast<std::size_t>(pi)), index_order::ascending);
  for (index_t i = 0; i < pi; ++i) out[static_cast<std::size_t>(i)] = pivot[static_cast<std::size_t>(i)];  // relative
  for (index_t i = 0; i < pi; ++i) pivot[static_cast<std::size_t>(i)] += static_cast<token_index>(visual.begin);
  if (pt > 0) {
    l1(visual.end(), m);
    top_k<float>(as_view(std::span<const float>(norm.data(), static_cast<std::size_t>(m)), "dart.key_norms"), pt,
                 pivot.subspan(static_cast<std::size_t>(pi), static_cast<std::size_t>(pt)), index_order::ascending);
    for (index_t i = pi; i < pivots; ++i) pivot[static_cast<std::size_t>(i)] += static_cast<token_index>(visual.end());
  }
  res.image_pivots = pi;
  res.text_pivots = pt;
  res.count = k;
  if (extra == 0) {
    std::sort(out.begin(), out.begin() + k);
    return res;
  }

  // 2. Unit rows of the (weighted) hidden states: the visual span, then the text pivots.
  auto unit = scratch.take<float>(static_cast<std::size_t>((n + pt) * d));
  auto rows = scratch.take<token_index>(static_cast<std::size_t>(n + pt));
  for (index_t i = 0; i < n; ++i) rows[static_cast<std::size_t>(i)] = static_cast<token_index>(visual.begin + i);
  for (index_t i = 0; i < pt; ++i) rows[static_cast<std::size_t>(n + i)] = pivot[static_cast<std::size_t>(pi + i)];
  tokensel::detail::unit_feature_rows(policy, hidden, rows.data(), n + pt, unit, "dart.hidden", norm_weight);

  // 3. Pool: the visual tokens that are not image pivots, ascending (relative indices).
  auto pool = scratch.take<token_index>(static_cast<std::size_t>(n));
  std::sort(out.begin(), out.begin() + pi);
  index_t pool_size = complement(std::span<const token_index>(out.data(), static_cast<std::size_t>(pi)), n, pool);
  // All pivots' cosines to the visual tokens in one pass (the pool only shrinks; the same dots).
  auto pivot_rows = scratch.take<token_index>(static_cast<std::size_t>(pivots));
  for (index_t q = 0; q < pivots; ++q)
    pivot_rows[static_cast<std::size_t>(q)] = static_cast<token_index>(q < pi ? pivot[static_cast<std::size_t>(q)] - visual.begin : n + q - pi);
  auto pivot_cosine = scratch.take<float>(static_cast<std::size_t>(pivots * n));
  tokensel::detail::cosine_rows(policy, unit.data(), d, n, pivot_rows, pivot_cosine);
  auto sim = scratch.take<float>(static_cast<std::size_t>(n));
  auto taken = scratch.take<token_index>(static_cast<std::size_t>(extra / pivots + 1));
  index_t written = pi;
  for (index_t q = 0; q < pivots; ++q) {  // pivots in ascending sequence position
    const index_t quota = tokensel::detail::dart_quota(q, extra, pivots);
    if (quota == 0) continue;
    const float* row = pivot_cosine.data() + q * n;
    for (index_t c = 0; c < pool_size; ++c) sim[static_cast<std::size_t>(c)] = row[pool[static_cast<std::size_t>(c)]];
    bottom_k<float>(as_view(std::span<const float>(sim.data(), static_cast<std::size_t>(pool_size)), "dart.similarity"), quota,
                    taken.first(static_cast<std::size_t>(quota)), index_order::ascending);
    pool_size = detail::move_taken(taken.first(static_cast<std::size_t>(quota)), pool, pool_size, out, written);
  }
  std::sort(out.begin(), out.begin() + k);
  return res;
}

/// Batch of equal-length sequences with the same visual span: keys [batch, kv_heads, L, d_head],
/// hidden [batch, L, D]; sample b writes out.indices(b, :).
template <cpu_policy Policy, element K, element H, element W = float>
void select(const Policy& policy, const tensor_view<const K, 4>& keys, const feature_view<const H>& hidden,
            const vector_view<const W>& norm_weight, const token_range& visual, const config& cfg,
            const selection_batch& out, std::span<result> results = {}) {
  const index_t batch = hidden.extent(0);
  if (visual.count > 0 && keys.extent(0) != batch) {
    tokensel::detail::fail(errc::shape_mismatch, "dart.keys.extent(0)", keys.extent(0), "must equal the batch size " + std::to_string(batch));
  }
  tokensel::detail::run_batch(policy, batch, out, results, "dart", [&](index_t b, std::span<token_index> row, const auto& inner) {
    return select(inner, visual.count > 0 ? keys[b] : tensor_view<const K, 3>{}, hidden[b], norm_weight, visual, cfg, row);
  });
}

/// Ragged batch: one sequence per sample, each with its own visual span.
template <cpu_policy Policy, element K, element H, element W = float>
void select(const Policy& policy, std::span<const tensor_view<const K, 3>> keys, std::span<const matrix_view<const H>> hidden,
            const vector_view<const W>& norm_weight, std::span<const token_range> visual, const config& cfg,
            const selection_batch& out, std::span<result> results = {}) {
  const auto batch = static_cast<index_t>(hidden.size());
  if (static_cast<index_t>(keys.size()) != batch) {
    tokensel::detail::fail(errc::shape_mismatch, "dart.keys.size()", keys.size(), "must equal the batch size " + std::to_string(batch));
  }
  if (static_cast<index_t>(visual.size()) != batch) {
    tokensel::detail::fail(errc::shape_mismatch, "dart.visual.size()", visual.size(), "must equal the batch size " + std::to_string(batch));
  }
  tokensel::detail::run_batch(policy, batch, out, results, "dart", [&](index_t b, std::span<token_index> row, const auto& inner) {
    const auto i = static_cast<std::size_t>(b);
    return select(inner, keys[i], hidden[i], norm_weight, visual[i], cfg, row);
  });
}

}  // namespace dart
TOKENSEL_END_NAMESPACE
