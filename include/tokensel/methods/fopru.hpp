// tokensel: FoPru (arXiv 2411.14164), spec section 3.
//   1. M = head mean of the penultimate-layer attention, patch submatrix (CLS row and column
//      removed, not renormalised).
//   2. Sig = variance-axis significance of M (row mean or column mean, whichever varies more).
//   3. Rank: keep max(1, floor(n r)) tokens with the highest Sig.
//      Row:  score grid rows by the sum of Sig, keep max(1, floor(rows r)) rows, all their tokens.
//   4. Reorder: ascending indices (original spatial order).
// The same procedure applies to pre-softmax logits: pass the logits view instead.
#pragma once

#include <cmath>
#include <optional>
#include <span>
#include <string>

#include "tokensel/core/attention_source.hpp"
#include "tokensel/core/batch.hpp"
#include "tokensel/core/budget.hpp"
#include "tokensel/core/config.hpp"
#include "tokensel/detail/scratch.hpp"
#include "tokensel/detail/validate.hpp"
#include "tokensel/core/element.hpp"
#include "tokensel/stats/head_reduction.hpp"
#include "tokensel/core/policy.hpp"
#include "tokensel/select/row_aggregation.hpp"
#include "tokensel/core/tensor_view.hpp"
#include "tokensel/core/token_grid.hpp"
#include "tokensel/core/token_range.hpp"
#include "tokensel/select/top_k.hpp"
#include "tokensel/stats/variance_axis.hpp"

TOKENSEL_BEGIN_NAMESPACE
namespace fopru {

enum class strategy {
  rank,  ///< keep the highest-significance tokens
  row,   ///< keep whole grid rows by aggregated significance
};

inline const char* to_string(strategy s) noexcept { return s == strategy::rank ? "rank" : "row"; }

struct config {
  double ratio = 0.5;                              ///< retention ratio r in (0, 1]
  fopru::strategy strategy = fopru::strategy::rank;
  head_reduction heads = head_reduction::mean;     ///< paper eq. 2: mean
  bool skip_cls = true;                            ///< token 0 is CLS: use the patch submatrix
  std::optional<token_grid> grid{};                  ///< row strategy; default: square grid of the patches
  row_reduction row_score = row_reduction::sum;    ///< row strategy: sum (paper) or mean
};

/// Per-sample statistics.
struct [[nodiscard]] result {
  index_t count = 0;
  significance_axis axis = significance_axis::column_mean;
  double row_variance = 0.0;
  double column_variance = 0.0;
  index_t rows_kept = 0;  ///< row strategy only
};

inline void validate(const config& cfg) { detail::check_ratio(cfg.ratio, "fopru.ratio"); }

namespace detail {
/// max(1, floor(count * ratio)) for count > 0, else 0 (floor of the double product, as Python's
/// int(count * ratio) in the reference implementations).
inline index_t retained(index_t count, double ratio) {
  if (count <= 0) return 0;
  const double f = std::floor(static_cast<double>(count) * ratio);
  if (f >= static_cast<double>(count)) return count;  // ratio 1; also keeps huge counts castable
  const auto k = static_cast<index_t>(f);
  return k < 1 ? 1 : k;
}

inline token_grid grid_for(const config& cfg, index_t n) {
  if (cfg.grid) {
    check_grid(*cfg.grid, n, "fopru.grid");
    return *cfg.grid;
  }
  return token_grid::square(n, "fopru.grid");
}
}  // namespace detail

/// Tokens kept for n patches (n excludes CLS): known before any attention is computed.
/// Row strategy: rows_kept * cols of the grid (throws when n does not fit the grid).
[[nodiscard]] inline index_t keep_count(index_t n, const config& cfg) {
  validate(cfg);
  if (n < 0) tokensel::detail::fail(errc::invalid_argument, "fopru.n", n, "must be >= 0");
  if (cfg.strategy == strategy::rank || n == 0) return detail::retained(n, cfg.ratio);
  const token_grid grid = detail::grid_for(cfg, n);
  return detail::retained(grid.rows, cfg.ratio) * grid.cols;
}

/// The config that keeps `b` of n patches; strategy, heads, grid and CLS handling come from base.
/// A fraction is the retention ratio itself. A count becomes the smallest ratio whose keep_count
/// is that count; one the strategy cannot keep exactly (row strategy: whole grid rows) is refused.
[[nodiscard]] inline config with_budget(const budget& b, index_t n, config base = {}) {
  if (b.is_fraction()) {
    base.ratio = b.fraction_value();
    return base;
  }
  const index_t k = b.tokens(n, "fopru");
  base.ratio = static_cast<double>(k) / static_cast<double>(n);
  if (keep_count(n, base) < k) base.ratio = std::min(1.0, std::nextafter(base.ratio, 2.0));
  if (keep_count(n, base) != k) {
    tokensel::detail::fail(errc::invalid_argument, "fopru.budget", b.describe(),
                           "the " + std::string(base.strategy == strategy::row ? "row" : "rank") +
                               " strategy cannot keep exactly this many of " + std::to_string(n) +
                               " patches (the row strategy keeps whole grid rows): give a fraction");
  }
  return base;
}

/// What FoPru reads: the full attention map (every query row; or Q/K) of the feature layer.
[[nodiscard]] inline method_requirements requirements(const config& cfg, const model_shape& shape) {
  tokensel::detail::check_feature_layer(shape, "fopru");
  if (cfg.skip_cls != shape.cls) {
    tokensel::detail::fail(errc::invalid_argument, "fopru.skip_cls", cfg.skip_cls ? "true" : "false",
                           "must match the model (CLS token present: " + std::string(shape.cls ? "yes" : "no") + ")");
  }
  method_requirements r;
  r.layers = {shape.feature_layer, shape.feature_layer};
  r.full_maps = true;
  r.keep = r.output_rows = keep_count(shape.visual_tokens, cfg);
  return r;
}

/// One sample: the penultimate layer's attention [heads, N, N] (N includes CLS when skip_cls), or
/// its Q/K source. Writes keep_count(n) patch indices, ascending, into out.
template <cpu_policy Policy, attention_source Source>
result select(const Policy& policy, const Source& attention, const config& cfg, std::span<token_index> out) {
  validate(cfg);
  const index_t tokens = query_tokens(attention);
  if (key_tokens(attention) != tokens) {
    tokensel::detail::fail(errc::shape_mismatch, "fopru.attention",
                           std::to_string(tokens) + "x" + std::to_string(key_tokens(attention)),
                           "queries and keys must be the same tokens");
  }
  const token_range patches = cfg.skip_cls ? token_range::skip_cls(tokens) : token_range::all(tokens);
  const index_t n = patches.count;
  const index_t k = keep_count(n, cfg);
  tokensel::detail::check_capacity(out.size(), k, "fopru.out.size()");
  result res;
  if (n == 0) return res;
  // Before any scratch is sized by n: an empty view (0 heads) may carry any n.
  if constexpr (requires { attention.heads(); }) {
    tokensel::detail::check_heads_present(attention.heads(), n, n);
  } else {
    tokensel::detail::check_heads_present(attention.extent(0), n, n);
  }

  tokensel::detail::scratch_scope scratch;
  auto sig = scratch.take<float>(static_cast<std::size_t>(n));
  const auto axis = variance_axis_significance(policy, restrict_tokens(attention, patches), cfg.heads, sig);
  res.axis = axis.axis;
  res.row_variance = axis.row_variance;
  res.column_variance = axis.column_variance;
  const auto sig_view = as_view(std::span<const float>(sig), "fopru.significance");
  if (cfg.strategy == strategy::rank) {
    res.count = top_k<float>(sig_view, k, out, index_order::ascending);
  } else {
    const token_grid grid = detail::grid_for(cfg, n);
    res.rows_kept = detail::retained(grid.rows, cfg.ratio);
    res.count = select_rows<float>(sig_view, grid, res.rows_kept, cfg.row_score, out);
  }
  return res;
}

/// Batch [batch, heads, N, N]: sample b writes keep_count(n) indices into out.indices(b, :).
template <cpu_policy Policy, element T>
void select(const Policy& policy, const attention_view<T>& batch, const config& cfg, const selection_batch& out,
            std::span<result> results = {}) {
  tokensel::detail::run_batch(policy, tokensel::detail::batch_size(batch), out, results, "fopru",
                              [&](index_t b, std::span<token_index> row, const auto& inner) {
                                return select(inner, batch[b], cfg, row);
                              });
}

/// Ragged batch: one source per sample ([heads, N_b, N_b] views or Q/K sources: AnyRes views,
/// video frames, mixed sizes).
template <cpu_policy Policy, attention_source Source>
void select(const Policy& policy, std::span<const Source> batch, const config& cfg, const selection_batch& out,
            std::span<result> results = {}) {
  tokensel::detail::run_batch(policy, static_cast<index_t>(batch.size()), out, results, "fopru",
                              [&](index_t b, std::span<token_index> row, const auto& inner) {
                                return select(inner, batch[b], cfg, row);
                              });
}

}  // namespace fopru
TOKENSEL_END_NAMESPACE
