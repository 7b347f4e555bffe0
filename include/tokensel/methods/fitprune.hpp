// tokensel: FitPrune (arXiv 2409.10197, official code ywh187/FitPrune), spec section 4.
//
// FitPrune prunes visual tokens inside the LLM, a fixed number per layer given by a recipe.
//   Runtime: at a layer l whose recipe count k_l > 0, with M = max over heads of that layer's
//     prefill attention and the still-present visual tokens at [s0, s0 + n), drop the k_l tokens
//     with the smallest cross[j] * self[j] (region_mass.hpp; ties: the lower index is dropped
//     first). Dropped tokens leave the hidden state, residual and positions of all later layers;
//     the survivors keep their original position ids; layer l's own KV cache still holds them.
//   Calibration (offline): per sample and layer, the unpruned model's Wc and Ws and the per-token
//     scores; FIT(alpha) walks the layers, stopping when a FLOPs budget is met, and removes per
//     sample the intersection of the largest low-cross set and the largest low-self set that
//     keep (1 - alpha) of Wc and Ws; k_l = floor(mean over samples). Bisection on alpha.
//   Recipe: per-layer drop counts plus the geometry they were fitted for; scaled to another
//     visual count n by floor(k_l * n / n_fit) (the official LLaVA-NeXT rule).
//   Input: a layer's attention is a materialised view [heads, L, L] or a qk_source (its queries
//     and keys, causal for an LLM, GQA allowed): the region masses are then computed tile by tile
//     from Q and K (region_mass.hpp), never the L x L map.
#pragma once

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "tokensel/core/attention_source.hpp"
#include "tokensel/core/batch.hpp"
#include "tokensel/core/budget.hpp"
#include "tokensel/core/config.hpp"
#include "tokensel/detail/scratch.hpp"
#include "tokensel/detail/validate.hpp"
#include "tokensel/core/element.hpp"
#include "tokensel/core/error.hpp"
#include "tokensel/stats/head_reduction.hpp"
#include "tokensel/core/policy.hpp"
#include "tokensel/select/sequence.hpp"
#include "tokensel/stats/region_mass.hpp"
#include "tokensel/core/tensor_view.hpp"
#include "tokensel/core/token_range.hpp"
#include "tokensel/select/top_k.hpp"

TOKENSEL_BEGIN_NAMESPACE
namespace fitprune {

// ---- FLOPs model ------------------------------------------------------------------------------

/// The official FLOPs model: only visual tokens are counted; per LLM layer with n visual tokens
/// entering and n' leaving (pruning happens between the attention and the output projection):
///   before(n)  = 3 n d^2 + 2 n^2 d       (Q, K, V projections; Q K^T; A V)
///   after(n')  = n' d^2 + 3 n' d m       (output projection; gate, up, down of the SwiGLU FFN)
/// original = layers * (before(n0) + after(n0)). Defaults: Vicuna-7B / LLaVA-1.5-7B.
/// Exact integer arithmetic (int64).
struct flops_model {
  index_t hidden = 4096;        ///< d
  index_t ffn = 11008;          ///< m
  index_t layers = 32;          ///< T
  index_t visual_tokens = 576;  ///< n0 (the visual count a recipe is fitted for, n_fit)

  // FLOPs are doubles: exact integers below 2^53 (LLaVA-1.5-7B's whole model is ~3.8e12), and no
  // overflow for any geometry or token count a caller passes.
  double before(index_t n) const noexcept {
    const double d = static_cast<double>(hidden), k = static_cast<double>(n);
    return 3 * k * d * d + 2 * k * k * d;
  }
  double after(index_t n) const noexcept {
    const double d = static_cast<double>(hidden), m = static_cast<double>(ffn), k = static_cast<double>(n);
    return k * d * d + 3 * k * d * m;
  }
  double layer(index_t n) const noexcept { return before(n) + after(n); }
  double original() const noexcept { return static_cast<double>(layers) * layer(visual_tokens); }

  /// Cost of a drop schedule (drops[l] removed at layer l) starting from n visual tokens.
  double cost(std::span<const index_t> drops, index_t n) const noexcept {
    double total = 0;
    for (index_t l = 0; l < layers; ++l) {
      total += before(n);
      if (l < static_cast<index_t>(drops.size())) n -= drops[l];
      total += after(n);
    }
    return total;
  }
};

inline void validate(const flops_model& f, std::string_view name = "fitprune.geometry") {
  auto positive = [&](index_t v, const char* field) {
    if (v < 1) tokensel::detail::fail(errc::invalid_argument, std::string(name) + "." + field, v, "must be >= 1");
  };
  positive(f.hidden, "hidden");
  positive(f.ffn, "ffn");
  positive(f.layers, "layers");
  positive(f.visual_tokens, "visual_tokens");
  if (f.visual_tokens > std::numeric_limits<token_index>::max()) {
    tokensel::detail::fail(errc::invalid_argument, std::string(name) + ".visual_tokens", f.visual_tokens,
                           "must fit a token_index (<= 2147483647)");
  }
}

// ---- recipe -----------------------------------------------------------------------------------

/// Per-layer drop counts and the model geometry they were fitted for.
struct recipe {
  std::vector<index_t> drops;      ///< k_l for l = 0 .. geometry.layers - 1, fitted for n_fit tokens
  flops_model geometry;            ///< model geometry; geometry.visual_tokens = n_fit
  double reduction = 0.0;          ///< FLOPs reduction target it was fitted for, in [0, 1)
  std::optional<double> alpha;     ///< fitted alpha, when known (absent in the official tables)
  std::string model;               ///< free text, e.g. "llava-v1.5-7b"
  std::string source;              ///< provenance, free text
};

/// Throws unless the geometry is valid, drops has one non-negative count per layer summing to at
/// most n_fit, reduction lies in [0, 1) (0: the identity recipe) and alpha, when present, in [0, 1].
inline void validate(const recipe& r, std::string_view name = "fitprune.recipe") {
  const std::string base(name);
  validate(r.geometry, base + ".geometry");
  if (static_cast<index_t>(r.drops.size()) != r.geometry.layers) {
    tokensel::detail::fail(errc::invalid_argument, base + ".drops.size()", r.drops.size(),
                 "must equal geometry.layers = " + std::to_string(r.geometry.layers));
  }
  index_t total = 0;
  for (std::size_t l = 0; l < r.drops.size(); ++l) {
    if (r.drops[l] < 0) tokensel::detail::fail(errc::invalid_argument, tokensel::detail::at_index(base + ".drops", static_cast<index_t>(l)), r.drops[l], "must be >= 0");
    // Compared before adding: a huge count must not overflow the running sum.
    if (r.drops[l] > r.geometry.visual_tokens - total) {
      tokensel::detail::fail(errc::invalid_argument, base + ".drops",
                             "sum " + std::to_string(total) + " + " + std::to_string(r.drops[l]) + " (through layer " + std::to_string(l) + ")",
                             "drops more than geometry.visual_tokens = " + std::to_string(r.geometry.visual_tokens));
    }
    total += r.drops[l];
  }
  if (!(r.reduction >= 0.0 && r.reduction < 1.0)) tokensel::detail::fail(errc::invalid_argument, base + ".reduction", r.reduction, "must be in [0, 1)");
  if (r.alpha && !(*r.alpha >= 0.0 && *r.alpha <= 1.0)) tokensel::detail::fail(errc::invalid_argument, base + ".alpha", *r.alpha, "must be in [0, 1]");
}

namespace detail {
/// floor(k * n / n_fit) for 0 <= k <= n_fit, without forming k * n (which overflows for huge n):
/// n = q n_fit + r gives k q + floor(k r / n_fit); k q <= n, and k r < n_fit^2 < 2^62 since
/// validate() bounds n_fit by the token_index range.
inline index_t scale_drop(index_t k, index_t n, index_t n_fit) noexcept {
  const index_t q = n / n_fit, r = n % n_fit;
  return k * q + k * r / n_fit;
}

inline void check_visual_count(index_t n, std::string_view name) {
  if (n < 0) tokensel::detail::fail(errc::invalid_argument, name, n, "must be >= 0");
}
}  // namespace detail

/// Drop count of `layer` for a sample that entered the LLM with n visual tokens:
/// floor(k_l * n / n_fit) (exact integer arithmetic; the official LLaVA-NeXT rule).
inline index_t drops_at(const recipe& r, index_t layer, index_t n) {
  validate(r);
  detail::check_visual_count(n, "fitprune.n");
  if (layer < 0 || layer >= r.geometry.layers) {
    tokensel::detail::fail(errc::invalid_argument, "fitprune.layer", layer, "must be in [0, " + std::to_string(r.geometry.layers) + ")");
  }
  return detail::scale_drop(r.drops[static_cast<std::size_t>(layer)], n, r.geometry.visual_tokens);
}

/// All scaled drop counts for n visual tokens (out.size() == layers).
inline void scaled_drops(const recipe& r, index_t n, std::span<index_t> out) {
  validate(r);
  detail::check_visual_count(n, "fitprune.n");
  if (static_cast<index_t>(out.size()) != r.geometry.layers) {
    tokensel::detail::fail(errc::shape_mismatch, "fitprune.scaled_drops.out.size()", out.size(),
                           "must equal geometry.layers = " + std::to_string(r.geometry.layers));
  }
  for (std::size_t l = 0; l < out.size(); ++l) out[l] = detail::scale_drop(r.drops[l], n, r.geometry.visual_tokens);
}

/// Visual tokens left after `layers_done` layers (0 .. layers) for a sample entering with n.
inline index_t remaining_after(index_t n, const recipe& r, index_t layers_done) {
  validate(r);
  detail::check_visual_count(n, "fitprune.n");
  if (layers_done < 0 || layers_done > r.geometry.layers) {
    tokensel::detail::fail(errc::invalid_argument, "fitprune.layers_done", layers_done, "must be in [0, " + std::to_string(r.geometry.layers) + "]");
  }
  index_t left = n;
  for (index_t l = 0; l < layers_done; ++l) left -= detail::scale_drop(r.drops[static_cast<std::size_t>(l)], n, r.geometry.visual_tokens);
  return left;  // >= 0: the scaled counts sum to at most floor(sum k_l * n / n_fit) <= n
}

/// Visual tokens that reach the end of the LLM: n - sum of the scaled drops. Pure; callable
/// before any data (engines size their buffers with it).
[[nodiscard]] inline index_t keep_count(index_t n, const recipe& r) { return remaining_after(n, r, r.geometry.layers); }

/// What FitPrune reads: at every LLM layer l with a drop (drops_at(l) > 0), the attention rows
/// of the visual and text tokens over the visual columns (self- and cross-attention masses).
/// The recipe is the budget (calibrated offline); keep_count(n) tokens reach the end.
[[nodiscard]] inline method_requirements requirements(const recipe& r, const model_shape& shape) {
  tokensel::detail::check_model_shape(shape, "fitprune");
  method_requirements req;
  req.stage = stage::llm;
  req.keep = req.output_rows = keep_count(shape.visual_tokens, r);
  for (index_t l = 0; l < r.geometry.layers; ++l) {
    if (drops_at(r, l, shape.visual_tokens) == 0) continue;
    if (req.layers.empty()) req.layers.first = l;
    req.layers.last = l;
  }
  req.full_maps = !req.layers.empty();
  return req;
}

/// Predicted FLOPs of the recipe relative to the unpruned model, both for n visual tokens.
inline double flops_ratio(const recipe& r, index_t n) {
  validate(r);
  detail::check_visual_count(n, "fitprune.n");
  if (n == 0) return 1.0;
  std::vector<index_t> drops(r.drops.size());
  scaled_drops(r, n, drops);
  return r.geometry.cost(drops, n) / (static_cast<double>(r.geometry.layers) * r.geometry.layer(n));
}

// ---- runtime ----------------------------------------------------------------------------------

struct config {
  head_reduction heads = head_reduction::max;  ///< official: max over heads
};

inline void validate(const config&) {}

/// Per-sample statistics of one pruning layer. The masses are computed only when drop > 0 (a
/// layer without drops never reads its attention, as in the official code).
struct [[nodiscard]] layer_result {
  index_t count = 0;         ///< visual tokens kept
  index_t dropped = 0;       ///< visual tokens dropped (the layer's drop count)
  float cross_mass = 0.0f;   ///< Wc of this layer over the present visual tokens
  float self_mass = 0.0f;    ///< Ws of this layer over the present visual tokens
};

/// One sample, one layer. attention: that layer's prefill probabilities [heads, L, L] over the
/// current (already pruned) sequence, or its qk_source (queries and keys of that sequence,
/// causal); visual: the span of the still-present visual tokens (they stay contiguous); drop: the
/// layer's count (drops_at). Writes the n - drop kept visual tokens into kept, ascending, as
/// indices into the current visual set [0, n) (position_tracker maps them to original positions;
/// sequence_keep to sequence positions).
template <cpu_policy Policy, attention_source Source>
layer_result prune_layer(const Policy& policy, const Source& attention, const token_range& visual,
                         index_t drop, const config& cfg, std::span<token_index> kept) {
  validate(cfg);
  tokensel::detail::check_llm_attention(query_tokens(attention), key_tokens(attention), visual, "fitprune");
  const index_t n = visual.count;
  tokensel::detail::check_count(drop, n, "fitprune.drop");
  tokensel::detail::check_capacity(kept.size(), n - drop, "fitprune.kept.size()");
  layer_result res;
  res.count = n - drop;
  res.dropped = drop;
  if (drop == 0) {
    for (index_t j = 0; j < n; ++j) kept[j] = static_cast<token_index>(j);
    return res;
  }
  tokensel::detail::scratch_scope scratch;
  auto cross = scratch.take<float>(static_cast<std::size_t>(n));
  auto self = scratch.take<float>(static_cast<std::size_t>(n));
  const auto masses = region_mass(policy, attention, visual, cfg.heads, {cross, self});
  res.cross_mass = masses.cross_mass;
  res.self_mass = masses.self_mass;
  for (index_t j = 0; j < n; ++j) cross[j] = cross[j] * self[j];
  auto dropped = scratch.take<token_index>(static_cast<std::size_t>(drop));
  bottom_k<float>(as_view(std::span<const float>(cross), "fitprune.score"), drop, dropped, index_order::ascending);
  complement(dropped, n, kept);
  return res;
}

/// Same with the default config (max over heads).
template <cpu_policy Policy, attention_source Source>
layer_result prune_layer(const Policy& policy, const Source& attention, const token_range& visual,
                         index_t drop, std::span<token_index> kept) {
  return prune_layer(policy, attention, visual, drop, config{}, kept);
}

/// Batch [batch, heads, L, L] sharing one visual span and one drop count.
template <cpu_policy Policy, element T>
void prune_layer(const Policy& policy, const attention_view<T>& batch, const token_range& visual, index_t drop,
                 const config& cfg, const selection_batch& out, std::span<layer_result> results = {}) {
  tokensel::detail::run_batch(policy, tokensel::detail::batch_size(batch), out, results, "fitprune",
                              [&](index_t b, std::span<token_index> row, const auto& inner) {
                                return prune_layer(inner, batch[b], visual, drop, cfg, row);
                              });
}

/// Ragged batch: per-sample attention (views or Q/K sources), visual span and drop count (sizes
/// must match the batch).
template <cpu_policy Policy, attention_source Source>
void prune_layer(const Policy& policy, std::span<const Source> batch,
                 std::span<const token_range> visual, std::span<const index_t> drops, const config& cfg,
                 const selection_batch& out, std::span<layer_result> results = {}) {
  if (visual.size() != batch.size()) {
    tokensel::detail::fail(errc::shape_mismatch, "fitprune.visual.size()", visual.size(), "must equal the batch size " + std::to_string(batch.size()));
  }
  if (drops.size() != batch.size()) {
    tokensel::detail::fail(errc::shape_mismatch, "fitprune.drops.size()", drops.size(), "must equal the batch size " + std::to_string(batch.size()));
  }
  tokensel::detail::run_batch(policy, static_cast<index_t>(batch.size()), out, results, "fitprune",
                              [&](index_t b, std::span<token_index> row, const auto& inner) {
                                return prune_layer(inner, batch[b], visual[b], drops[b], cfg, row);
                              });
}

// compact_positions and position_tracker moved to tokensel/select/sequence.hpp (namespace
// tokensel); these names keep the fitprune:: spelling working.
using tokensel::compact_positions;
using tokensel::position_tracker;

// ---- calibration ------------------------------------------------------------------------------

/// Statistics of one calibration sample at one layer of the unpruned model (for calibrator::add_layer
/// when the caller computed them elsewhere, e.g. from a GPU forward pass).
struct layer_statistics {
  std::span<const float> cross;  ///< a_c[j]: sum over the text rows of M[i, s0+j], n_fit values
  std::span<const float> self;   ///< a_s[j]: mean over the visual rows of M[i, s0+j], n_fit values
  index_t text_rows = 0;         ///< T: rows after the visual span
  double cross_mass = 0.0;       ///< Wc
  double self_mass = 0.0;        ///< Ws
};

/// Anything FIT can read per-sample, per-layer statistics from. scores() writes, for the visual
/// tokens still present (original indices `present`, ascending), the cross score per text row
/// (a_c[j] / T, so that it sums to Wc over all tokens) and the self score a_s[j]. FIT calls it in
/// layer-major order (layer 0 for every sample, then layer 1, ...), and every FIT pass starts again
/// at layer 0 with all tokens present, so a source that runs the model layer by layer can
/// reproduce the official script exactly (scores of the pruned model). The calibrator stores the
/// unpruned statistics and restricts them to the present tokens.
template <class S>
concept calibration_source = requires(S& s, index_t i, std::span<const token_index> present, std::span<float> out) {
  { s.samples() } -> std::convertible_to<index_t>;
  { s.cross_mass(i, i) } -> std::convertible_to<double>;
  { s.self_mass(i, i) } -> std::convertible_to<double>;
  s.scores(i, i, present, out, out);
};

/// Which bisection iterate becomes the recipe.
enum class recipe_pick {
  upper,         ///< FIT(hi): the last alpha that met the budget (spec)
  last_iterate,  ///< the last FIT(mid) evaluated, met or not (what the official script prints)
};

struct fit_options {
  double tolerance = 0.01;               ///< bisection stops when hi - lo <= tolerance; in (0, 1)
  recipe_pick pick = recipe_pick::upper;
  std::string model;                     ///< copied into the recipe
};

/// One FIT(alpha) pass.
struct fit_pass {
  std::vector<index_t> drops;  ///< floor(mean over samples) per layer
  bool reached = false;        ///< the FLOPs budget was met before some layer
  index_t stop_layer = 0;      ///< first layer left unpruned by the budget (layers when never reached)
  double flops_ratio = 1.0;    ///< mean estimated cost / original at the stop (or after all layers)
};

struct [[nodiscard]] fit_result {
  fitprune::recipe recipe;
  double alpha = 0.0;           ///< alpha of the recipe
  double lower = 0.0;           ///< final bisection bracket [lower, upper]
  double upper = 1.0;
  int iterations = 0;           ///< FIT(mid) evaluations of the bisection
  bool reached = false;         ///< the recipe's pass met the budget
  index_t stop_layer = 0;
  double flops_ratio = 1.0;     ///< of the recipe's pass, as estimated by FIT
};

namespace detail {

/// Largest m such that removing the m lowest scores (order: ascending value, then index) keeps
/// the remaining mass >= W - W * alpha, scanning m upward and stopping at the first violation (the
/// official loop). Remaining masses are suffix sums in double (exactly 0 after all n).
inline index_t removable(std::span<const float> value, std::span<const token_index> order, double mass, double alpha,
                         std::vector<double>& suffix) {
  const std::size_t n = order.size();
  suffix.assign(n + 1, 0.0);
  for (std::size_t i = n; i-- > 0;) suffix[i] = suffix[i + 1] + static_cast<double>(value[order[i]]);
  const double threshold = mass - mass * alpha;
  for (std::size_t i = 0; i <= n; ++i) {
    if (suffix[i] < threshold) return i == 0 ? 0 : static_cast<index_t>(i - 1);
  }
  return static_cast<index_t>(n);
}

inline void check_fit_request(double reduction, const fit_options& opts) {
  if (!(reduction > 0.0 && reduction < 1.0)) tokensel::detail::fail(errc::invalid_argument, "fitprune.reduction", reduction, "must be in (0, 1)");
  if (!(opts.tolerance > 0.0 && opts.tolerance < 1.0)) tokensel::detail::fail(errc::invalid_argument, "fitprune.fit_options.tolerance", opts.tolerance, "must be in (0, 1)");
}

}  // namespace detail

namespace detail {

/// One sample's scores at layer l over its present tokens (cross into c, self into v) and its
/// masses {Wc, Ws}; everything must be finite.
template <class Source>
std::pair<double, double> read_scores(Source& source, index_t s, index_t l, std::span<const token_index> present,
                                      std::span<float> c, std::span<float> v) {
  source.scores(s, l, present, c, v);
  for (std::size_t j = 0; j < c.size(); ++j) {
    if (!std::isfinite(c[j]) || !std::isfinite(v[j])) {
      tokensel::detail::fail(errc::non_finite, "fitprune.scores(sample " + std::to_string(s) + ", layer " + std::to_string(l) + ")",
                             std::isfinite(c[j]) ? v[j] : c[j], "calibration scores must be finite");
    }
  }
  const double wc = source.cross_mass(s, l), ws = source.self_mass(s, l);
  if (!std::isfinite(wc) || !std::isfinite(ws)) {
    tokensel::detail::fail(errc::non_finite, "fitprune.masses(sample " + std::to_string(s) + ", layer " + std::to_string(l) + ")",
                           std::isfinite(wc) ? ws : wc, "calibration masses must be finite");
  }
  return {wc, ws};
}

/// Buffers of one FIT pass, sized for n0 tokens, reused by every sample and layer.
struct fit_workspace {
  explicit fit_workspace(std::size_t n0) : cross(n0), self(n0), by_cross(n0), by_self(n0), kept(n0), low_cross(n0) {}
  std::vector<float> cross, self;
  std::vector<token_index> by_cross, by_self, kept;
  std::vector<char> low_cross;
  std::vector<double> suffix;

  /// Removes from `mine` (compacted in place) the intersection of the largest low-cross and
  /// low-self sets keeping (1 - alpha) of Wc and Ws; returns how many went.
  index_t prune(std::span<token_index> mine, double wc, double ws, double alpha) {
    const std::size_t un = mine.size();
    const auto n = static_cast<index_t>(un);
    std::span<const float> c(cross.data(), un), v(self.data(), un);
    auto order_by = [&](std::span<const float> key, std::vector<token_index>& order) {
      std::iota(order.begin(), order.begin() + n, token_index{0});
      std::sort(order.begin(), order.begin() + n, tokensel::detail::rank_low_first{key.data()});
    };
    order_by(c, by_cross);
    order_by(v, by_self);
    const index_t mc = removable(c, {by_cross.data(), un}, wc, alpha, suffix);
    const index_t ms = removable(v, {by_self.data(), un}, ws, alpha, suffix);
    std::fill(low_cross.begin(), low_cross.begin() + n, char{0});
    for (index_t i = 0; i < mc; ++i) low_cross[static_cast<std::size_t>(by_cross[i])] = 1;
    std::fill(kept.begin(), kept.begin() + n, token_index{1});
    index_t gone = 0;
    for (index_t i = 0; i < ms; ++i) {
      const auto j = static_cast<std::size_t>(by_self[i]);
      if (low_cross[j] != 0) {
        kept[j] = 0;
        ++gone;
      }
    }
    if (gone > 0) {
      index_t w = 0;
      for (std::size_t j = 0; j < un; ++j) {
        if (kept[j] != 0) mine[static_cast<std::size_t>(w++)] = mine[j];
      }
    }
    return gone;
  }
};

inline void check_fit_once(const flops_model& geometry, double alpha, double reduction, index_t samples) {
  validate(geometry);
  if (!(alpha >= 0.0 && alpha <= 1.0)) tokensel::detail::fail(errc::invalid_argument, "fitprune.alpha", alpha, "must be in [0, 1]");
  if (!(reduction > 0.0 && reduction < 1.0)) tokensel::detail::fail(errc::invalid_argument, "fitprune.reduction", reduction, "must be in (0, 1)");
  if (samples < 1) tokensel::detail::fail(errc::invalid_argument, "fitprune.samples", samples, "calibration needs at least one sample");
}

}  // namespace detail

/// FIT(alpha) on a calibration source: walks the layers; before each layer, estimates the mean
/// per-sample cost (layers done + this layer's attention + the rest at the current counts) and
/// stops when it is <= (1 - reduction) * original; otherwise removes, per sample, the intersection
/// of the largest low-cross and low-self sets keeping (1 - alpha) of Wc and Ws.
template <class Source>
  requires calibration_source<std::remove_reference_t<Source>>
fit_pass fit_once(Source&& source, const flops_model& geometry, double alpha, double reduction) {
  const index_t samples = source.samples();
  detail::check_fit_once(geometry, alpha, reduction, samples);
  const index_t n0 = geometry.visual_tokens, layers = geometry.layers;
  const auto un0 = static_cast<std::size_t>(n0);

  std::vector<token_index> present(static_cast<std::size_t>(samples) * un0);
  std::vector<index_t> count(static_cast<std::size_t>(samples), n0);
  for (index_t s = 0; s < samples; ++s) std::iota(present.begin() + s * n0, present.begin() + (s + 1) * n0, token_index{0});
  std::vector<std::int64_t> removed(static_cast<std::size_t>(layers), 0);
  detail::fit_workspace ws(un0);

  const double budget = geometry.original() * (1.0 - reduction);
  double spent = 0;  // summed over samples
  fit_pass pass;
  pass.stop_layer = layers;
  for (index_t l = 0; l < layers && !pass.reached; ++l) {
    double forecast = 0;
    for (index_t s = 0; s < samples; ++s) {
      const index_t n = count[static_cast<std::size_t>(s)];
      spent += geometry.before(n);
      forecast += geometry.after(n) + geometry.layer(n) * static_cast<double>(layers - 1 - l);
    }
    const double mean_cost = (spent + forecast) / static_cast<double>(samples);
    if (mean_cost <= budget) {
      pass.reached = true;
      pass.stop_layer = l;
      pass.flops_ratio = mean_cost / geometry.original();
      break;
    }
    for (index_t s = 0; s < samples; ++s) {
      const auto us = static_cast<std::size_t>(s);
      const auto un = static_cast<std::size_t>(count[us]);
      std::span<token_index> mine(present.data() + us * un0, un);
      if (un > 0) {
        const auto [wc, wself] = detail::read_scores(source, s, l, std::span<const token_index>(mine),
                                                     std::span<float>(ws.cross.data(), un), std::span<float>(ws.self.data(), un));
        const index_t gone = ws.prune(mine, wc, wself, alpha);
        if (gone > 0) {
          count[us] -= gone;
          removed[static_cast<std::size_t>(l)] += gone;
        }
      }
      spent += geometry.after(count[us]);
    }
  }
  if (!pass.reached) pass.flops_ratio = spent / static_cast<double>(samples) / geometry.original();
  pass.drops.resize(static_cast<std::size_t>(layers));
  for (std::size_t l = 0; l < pass.drops.size(); ++l) pass.drops[l] = static_cast<index_t>(removed[l] / samples);
  return pass;
}

/// FIT + bisection on alpha in [0, 1]: mid = (lo + hi) / 2; FIT(mid) meets the budget -> hi = mid,
/// else lo = mid; until hi - lo <= tolerance. The recipe is FIT(hi) (options.pick = upper; FIT(1)
/// when no mid met the budget; throws when even that misses it) or the last FIT(mid) evaluated
/// (last_iterate, the official script's output).
template <class Source>
  requires calibration_source<std::remove_reference_t<Source>>
fit_result fit(Source&& source, const flops_model& geometry, double reduction, const fit_options& options = {}) {
  validate(geometry);
  detail::check_fit_request(reduction, options);
  double lo = 0.0, hi = 1.0;
  std::optional<fit_pass> at_hi;
  fit_pass last;
  double last_alpha = 0.0;
  int iterations = 0;
  while (hi - lo > options.tolerance) {
    const double mid = (lo + hi) / 2.0;
    // A tolerance below the spacing of doubles near alpha cannot be met: stop when the bracket
    // can no longer shrink instead of looping forever.
    if (mid <= lo || mid >= hi) break;
    fit_pass pass = fit_once(source, geometry, mid, reduction);
    ++iterations;
    if (pass.reached) {
      hi = mid;
      at_hi = pass;
    } else {
      lo = mid;
    }
    last = std::move(pass);
    last_alpha = mid;
  }
  fit_result res;
  res.lower = lo;
  res.upper = hi;
  res.iterations = iterations;
  fit_pass chosen;
  if (options.pick == recipe_pick::last_iterate) {
    chosen = std::move(last);
    res.alpha = last_alpha;
  } else {
    chosen = at_hi ? std::move(*at_hi) : fit_once(source, geometry, hi, reduction);
    res.alpha = hi;
    if (!chosen.reached) {
      tokensel::detail::fail(errc::invalid_argument, "fitprune.reduction", reduction,
                             "the FLOPs budget is not reached even at alpha = 1 on this calibration set");
    }
  }
  res.reached = chosen.reached;
  res.stop_layer = chosen.stop_layer;
  res.flops_ratio = chosen.flops_ratio;
  res.recipe.drops = std::move(chosen.drops);
  res.recipe.geometry = geometry;
  res.recipe.reduction = reduction;
  res.recipe.alpha = res.alpha;
  res.recipe.model = options.model;
  res.recipe.source = "tokensel fitprune::fit";
  return res;
}

/// Stores the unpruned model's statistics of a calibration set (every sample has
/// geometry.visual_tokens visual tokens and one entry per layer) and fits recipes from them.
/// FIT on stored statistics restricts each layer's unpruned scores to the tokens still present
/// (the official script re-runs the pruned model instead; implement calibration_source to do that).
class calibrator {
 public:
  explicit calibrator(const flops_model& geometry = {}) : geometry_(geometry) { validate(geometry_); }

  const flops_model& geometry() const noexcept { return geometry_; }
  index_t samples() const noexcept { return samples_; }

  /// Opens a new sample (all layers missing) and returns its id.
  index_t add_sample() {
    const auto per_sample = static_cast<std::size_t>(geometry_.layers * geometry_.visual_tokens);
    cross_.resize(cross_.size() + per_sample, 0.0f);
    self_.resize(self_.size() + per_sample, 0.0f);
    const auto layers = static_cast<std::size_t>(geometry_.layers);
    cross_mass_.resize(cross_mass_.size() + layers, 0.0);
    self_mass_.resize(self_mass_.size() + layers, 0.0);
    filled_.resize(filled_.size() + layers, 0);
    return samples_++;
  }

  /// Precomputed statistics of one sample at one layer.
  void add_layer(index_t sample, index_t layer, const layer_statistics& stats) {
    const std::size_t at = slot(sample, layer);
    const index_t n0 = geometry_.visual_tokens;
    if (static_cast<index_t>(stats.cross.size()) != n0) tokensel::detail::fail(errc::shape_mismatch, "fitprune.layer_statistics.cross.size()", stats.cross.size(), "must equal geometry.visual_tokens = " + std::to_string(n0));
    if (static_cast<index_t>(stats.self.size()) != n0) tokensel::detail::fail(errc::shape_mismatch, "fitprune.layer_statistics.self.size()", stats.self.size(), "must equal geometry.visual_tokens = " + std::to_string(n0));
    if (stats.text_rows < 0) tokensel::detail::fail(errc::invalid_argument, "fitprune.layer_statistics.text_rows", stats.text_rows, "must be >= 0");
    tokensel::detail::check_finite(as_view(stats.cross, "cross"), "fitprune.layer_statistics.cross");
    tokensel::detail::check_finite(as_view(stats.self, "self"), "fitprune.layer_statistics.self");
    if (!std::isfinite(stats.cross_mass)) tokensel::detail::fail(errc::non_finite, "fitprune.layer_statistics.cross_mass", stats.cross_mass, "must be finite");
    if (!std::isfinite(stats.self_mass)) tokensel::detail::fail(errc::non_finite, "fitprune.layer_statistics.self_mass", stats.self_mass, "must be finite");
    float* c = cross_.data() + at * static_cast<std::size_t>(n0);
    float* v = self_.data() + at * static_cast<std::size_t>(n0);
    store_cross(stats.cross, stats.text_rows, c);
    std::copy(stats.self.begin(), stats.self.end(), v);
    cross_mass_[at] = stats.cross_mass;
    self_mass_[at] = stats.self_mass;
    filled_[at] = 1;
  }

  /// The same from that layer's prefill attention [heads, L, L] of the unpruned model, or its
  /// qk_source (region_mass).
  template <cpu_policy Policy, attention_source Source>
  void add_layer(const Policy& policy, index_t sample, index_t layer, const Source& attention,
                 const token_range& visual, head_reduction op = head_reduction::max) {
    const std::size_t at = slot(sample, layer);
    const index_t n0 = geometry_.visual_tokens;
    if (visual.count != n0) tokensel::detail::fail(errc::shape_mismatch, "fitprune.visual.count", visual.count, "must equal geometry.visual_tokens = " + std::to_string(n0));
    tokensel::detail::scratch_scope scratch;
    auto a_c = scratch.take<float>(static_cast<std::size_t>(n0));
    float* v = self_.data() + at * static_cast<std::size_t>(n0);
    const auto m = region_mass(policy, attention, visual, op, {a_c, std::span<float>(v, static_cast<std::size_t>(n0))});
    store_cross(a_c, m.text_rows, cross_.data() + at * static_cast<std::size_t>(n0));
    cross_mass_[at] = m.cross_mass;
    self_mass_[at] = m.self_mass;
    filled_[at] = 1;
  }

  /// True when every sample has every layer.
  bool complete() const noexcept { return std::all_of(filled_.begin(), filled_.end(), [](char f) { return f != 0; }); }

  /// FIT + bisection on the stored statistics (see fitprune::fit).
  fit_result fit(double reduction, const fit_options& options = {}) const {
    detail::check_fit_request(reduction, options);
    check_complete();
    auto res = fitprune::fit(*this, geometry_, reduction, options);
    res.recipe.source = "tokensel fitprune::calibrator (unpruned statistics)";
    return res;
  }
  fit_pass fit_once(double alpha, double reduction) const {
    check_complete();
    return fitprune::fit_once(*this, geometry_, alpha, reduction);
  }

  // calibration_source
  double cross_mass(index_t sample, index_t layer) const { return cross_mass_[slot(sample, layer)]; }
  double self_mass(index_t sample, index_t layer) const { return self_mass_[slot(sample, layer)]; }
  void scores(index_t sample, index_t layer, std::span<const token_index> present, std::span<float> cross,
              std::span<float> self) const {
    const std::size_t base = slot(sample, layer) * static_cast<std::size_t>(geometry_.visual_tokens);
    for (std::size_t i = 0; i < present.size(); ++i) {
      cross[i] = cross_[base + static_cast<std::size_t>(present[i])];
      self[i] = self_[base + static_cast<std::size_t>(present[i])];
    }
  }

 private:
  std::size_t slot(index_t sample, index_t layer) const {
    if (sample < 0 || sample >= samples_) tokensel::detail::fail(errc::invalid_argument, "fitprune.sample", sample, "no such calibration sample (add_sample first)");
    if (layer < 0 || layer >= geometry_.layers) tokensel::detail::fail(errc::invalid_argument, "fitprune.layer", layer, "must be in [0, " + std::to_string(geometry_.layers) + ")");
    return static_cast<std::size_t>(sample * geometry_.layers + layer);
  }
  /// Cross score per text row (a_c / T; 0 without text rows), as the official calibration uses.
  void store_cross(std::span<const float> a_c, index_t text_rows, float* out) const {
    const float t = static_cast<float>(text_rows);
    for (std::size_t j = 0; j < a_c.size(); ++j) out[j] = text_rows > 0 ? a_c[j] / t : 0.0f;
  }
  void check_complete() const {
    if (samples_ == 0) tokensel::detail::fail(errc::invalid_argument, "fitprune.samples", 0, "calibration needs at least one sample");
    for (std::size_t at = 0; at < filled_.size(); ++at) {
      if (filled_[at] == 0) {
        const auto layers = static_cast<std::size_t>(geometry_.layers);
        tokensel::detail::fail(errc::invalid_argument, "fitprune.calibrator",
                               "sample " + std::to_string(at / layers) + " has no statistics for layer " + std::to_string(at % layers));
      }
    }
  }

  flops_model geometry_;
  index_t samples_ = 0;
  std::vector<float> cross_, self_;  // [sample][layer][token]
  std::vector<double> cross_mass_, self_mass_;
  std::vector<char> filled_;
};

}  // namespace fitprune
TOKENSEL_END_NAMESPACE
