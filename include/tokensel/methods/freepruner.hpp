// tokensel: freePruner (arXiv 2411.15446), spec section 2. The paper has no official code; every
// choice the paper leaves open is a "project decision" listed in docs/freepruner.md.
//   1. Pivotal tokens: for each encoder layer l in [first_layer, last_layer], M_l = head reduction
//      of the layer's attention over the patch submatrix (CLS row and column removed, not
//      renormalised); r_l = contribution degree of M_l (column sum minus diagonal); the
//      k_pivotal patches with the highest r_l (ties: lower index). P = union over the layers.
//   2. Complementary tokens: at complementary_layer, for each p in P, the IQR outliers (strictly
//      above Q3 + c * IQR) of the row M[p, :] over all patches. C = union over p.
//   3. S = P u C, ascending (adaptive mode: |S| is data-dependent, at most n).
//   Fixed-length mode (budget B): rank S (pivotal first by max_l r_l, then complementary by their
//   largest outlier margin x - fence); keep the best B when |S| > B, fill with the best remaining
//   patches by r_{last_layer} when |S| < B; output ascending.
//
// Two input forms, same bits:
//   * streaming: freepruner::selector is fed one layer at a time (the attention map may be freed
//     after each call) and keeps O(n) state per sample, plus one reduced n x n map of the
//     complementary layer only when that layer arrives before the pivotal set is complete;
//   * one-shot: freepruner::select over a layer_stack (a span of per-layer views).
// Every layer may also be a qk_source (queries and keys of the layer, FlashAttention engines):
// contribution degrees come from tiled column sums and the complementary rows from
// reduced_rows, so no n x n map is formed; the selection equals the one from the materialised
// maps up to fp32 rounding (identical indices except near-ties).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "tokensel/core/attention_source.hpp"
#include "tokensel/core/batch.hpp"
#include "tokensel/core/budget.hpp"
#include "tokensel/core/config.hpp"
#include "tokensel/stats/contribution_degree.hpp"
#include "tokensel/detail/parallel.hpp"
#include "tokensel/detail/scratch.hpp"
#include "tokensel/detail/validate.hpp"
#include "tokensel/core/element.hpp"
#include "tokensel/core/error.hpp"
#include "tokensel/stats/head_reduction.hpp"
#include "tokensel/stats/iqr_outliers.hpp"
#include "tokensel/core/policy.hpp"
#include "tokensel/core/qk_source.hpp"
#include "tokensel/stats/qk_statistics.hpp"
#include "tokensel/core/tensor_view.hpp"
#include "tokensel/core/token_range.hpp"
#include "tokensel/select/top_k.hpp"

TOKENSEL_BEGIN_NAMESPACE
namespace freepruner {

enum class mode {
  adaptive,  ///< keep S = P u C (count data-dependent, at most n)
  fixed,     ///< keep exactly budget tokens (project decision, see the header comment)
};

inline const char* to_string(mode m) noexcept { return m == mode::adaptive ? "adaptive" : "fixed"; }

/// Layer indices are 0-based encoder layers (LLaVA-1.5's CLIP ViT-L/14-336: 0..23; its feature
/// layer is 22). The defaults follow spec section 2.
struct config {
  head_reduction heads = head_reduction::mean;  ///< project decision (paper silent)
  index_t first_layer = 6;                      ///< first layer of the pivotal range (inclusive)
  index_t last_layer = 22;                      ///< last layer of the pivotal range (inclusive)
  index_t k_pivotal = 8;                        ///< pivotal tokens per layer, >= 1 and <= n
  index_t complementary_layer = 22;             ///< "penultimate" layer of the complementary stage
  double iqr_multiplier = 1.5;                  ///< c of the fence Q3 + c * IQR (strict >)
  freepruner::mode mode = freepruner::mode::adaptive;
  index_t budget = 0;                           ///< fixed mode: B >= 1 tokens kept; adaptive: must stay 0
  bool skip_cls = true;                         ///< token 0 is CLS: use the patch submatrix
};

/// Per-sample statistics (allocation-free; see inspection for the sets themselves).
struct [[nodiscard]] result {
  index_t count = 0;          ///< indices written
  index_t pivotal = 0;        ///< |P|
  index_t complementary = 0;  ///< |S \ P|: complementary tokens that were not already pivotal
  index_t candidates = 0;     ///< |S| = |P u C|
  index_t dropped = 0;        ///< fixed mode: |S| - B when |S| > B
  index_t filled = 0;         ///< fixed mode: B - |S| when |S| < B (taken by r of last_layer)
};

/// The IQR fence of one pivotal token's row at the complementary layer.
struct row_fence {
  token_index token = 0;   ///< the pivotal patch p whose row M[p, :] was tested
  index_t outliers = 0;    ///< patches strictly above the fence in that row
  double q1 = 0, q3 = 0, upper_fence = 0;
};

/// Everything a user may want to print about one sample's selection (allocates; not for the
/// hot path).
struct inspection {
  index_t first_layer = 0;
  std::vector<std::vector<token_index>> pivotal_per_layer;  ///< [l - first_layer]: top-k of r_l, ascending
  std::vector<token_index> pivotal;                         ///< P, ascending
  std::vector<token_index> complementary;                   ///< C \ P, ascending
  std::vector<row_fence> fences;                            ///< one per p in P, ascending p
};

/// Layer indices above this are rejected by validate(): no encoder has that many layers, and the
/// bound keeps the per-layer bookkeeping (and layers_end) far from any overflow.
inline constexpr index_t max_layer_index = 4095;

/// Number of layers in the pivotal range.
inline index_t pivotal_layers(const config& cfg) noexcept { return cfg.last_layer - cfg.first_layer + 1; }

/// Whether the method reads layer `layer` (a pivotal layer or the complementary layer).
inline bool uses_layer(const config& cfg, index_t layer) noexcept {
  return (layer >= cfg.first_layer && layer <= cfg.last_layer) || layer == cfg.complementary_layer;
}

/// Lowest and one-past-highest model layer the method reads.
inline index_t lowest_layer(const config& cfg) noexcept { return std::min(cfg.first_layer, cfg.complementary_layer); }
inline index_t layers_end(const config& cfg) noexcept { return std::max(cfg.last_layer, cfg.complementary_layer) + 1; }

inline void validate(const config& cfg) {
  using tokensel::detail::fail;
  const int heads = static_cast<int>(cfg.heads);
  if (heads < 0 || heads > 2) fail(errc::invalid_argument, "freepruner.heads", heads, "not a head_reduction");
  if (cfg.first_layer < 0) fail(errc::invalid_argument, "freepruner.first_layer", cfg.first_layer, "must be >= 0");
  if (cfg.last_layer < cfg.first_layer) {
    fail(errc::invalid_argument, "freepruner.last_layer", cfg.last_layer,
         "must be >= first_layer (" + std::to_string(cfg.first_layer) + ")");
  }
  if (cfg.complementary_layer < 0) {
    fail(errc::invalid_argument, "freepruner.complementary_layer", cfg.complementary_layer, "must be >= 0");
  }
  if (cfg.last_layer > max_layer_index) {
    fail(errc::invalid_argument, "freepruner.last_layer", cfg.last_layer, "must be <= 4095 (max_layer_index)");
  }
  if (cfg.complementary_layer > max_layer_index) {
    fail(errc::invalid_argument, "freepruner.complementary_layer", cfg.complementary_layer,
         "must be <= 4095 (max_layer_index)");
  }
  if (cfg.k_pivotal < 1) fail(errc::invalid_argument, "freepruner.k_pivotal", cfg.k_pivotal, "must be >= 1");
  if (!std::isfinite(cfg.iqr_multiplier) || cfg.iqr_multiplier < 0.0) {
    fail(errc::invalid_argument, "freepruner.iqr_multiplier", cfg.iqr_multiplier, "must be finite and >= 0");
  }
  if (cfg.mode == mode::fixed) {
    if (cfg.budget < 1) fail(errc::invalid_argument, "freepruner.budget", cfg.budget, "fixed mode needs a budget >= 1");
  } else if (cfg.mode == mode::adaptive) {
    if (cfg.budget != 0) {
      fail(errc::invalid_argument, "freepruner.budget", cfg.budget,
           "a budget applies only in fixed mode (mode = adaptive); set mode = fixed or leave it 0");
    }
  } else {
    fail(errc::invalid_argument, "freepruner.mode", static_cast<int>(cfg.mode), "not a freepruner::mode");
  }
}

namespace detail {
inline void check_patches(index_t n) {
  if (n < 0) tokensel::detail::fail(errc::invalid_argument, "freepruner.n", n, "must be >= 0");
}
inline void check_budget(index_t n, const config& cfg) {
  if (cfg.mode == mode::fixed && cfg.budget > n) {
    tokensel::detail::fail(errc::invalid_argument, "freepruner.budget", cfg.budget,
                           "exceeds the " + std::to_string(n) + " patches");
  }
}
}  // namespace detail

/// Fixed mode: the budget B, known before any attention is computed; throws when B > n.
/// Adaptive mode has no such count (it depends on the data): throws errc::invalid_argument;
/// size outputs with max_count instead.
[[nodiscard]] inline index_t keep_count(index_t n, const config& cfg) {
  validate(cfg);
  detail::check_patches(n);
  if (cfg.mode == mode::adaptive) {
    tokensel::detail::fail(errc::invalid_argument, "freepruner.mode", "adaptive",
                           "the count is data-dependent: use max_count(n, cfg) for the output capacity");
  }
  detail::check_budget(n, cfg);
  return cfg.budget;
}

/// The config that keeps `b` of n patches: fixed mode with budget B (a fraction f gives
/// max(1, floor(n f))); the other fields come from base.
[[nodiscard]] inline config with_budget(const budget& b, index_t n, config base = {}) {
  base.mode = mode::fixed;
  base.budget = b.tokens(n, "freepruner");
  return base;
}

/// What freePruner reads: full maps of layers first_layer..last_layer (pivotal) and of the
/// complementary layer. Adaptive mode keeps a data-dependent count (at most n).
[[nodiscard]] inline method_requirements requirements(const config& cfg, const model_shape& shape) {
  tokensel::detail::check_model_shape(shape, "freepruner");
  validate(cfg);
  if (cfg.skip_cls != shape.cls) {
    tokensel::detail::fail(errc::invalid_argument, "freepruner.skip_cls", cfg.skip_cls ? "true" : "false",
                           "must match the model (CLS token present: " + std::string(shape.cls ? "yes" : "no") + ")");
  }
  tokensel::detail::check_model_layer(shape, cfg.last_layer, "freepruner.last_layer");
  tokensel::detail::check_model_layer(shape, cfg.complementary_layer, "freepruner.complementary_layer");
  method_requirements r;
  r.layers = {cfg.first_layer, cfg.last_layer};
  if (!r.layers.contains(cfg.complementary_layer)) r.extra_layer = {cfg.complementary_layer, cfg.complementary_layer};
  r.full_maps = true;
  r.adaptive = cfg.mode == mode::adaptive;
  r.keep = r.output_rows = r.adaptive ? shape.visual_tokens : keep_count(shape.visual_tokens, cfg);
  return r;
}

/// Output capacity a sample of n patches needs: n (adaptive) or B (fixed; throws when B > n).
inline index_t max_count(index_t n, const config& cfg) {
  validate(cfg);
  detail::check_patches(n);
  if (cfg.mode == mode::adaptive) return n;
  detail::check_budget(n, cfg);
  return cfg.budget;
}

namespace detail {
/// The layer type of a layer_stack<S>: S itself for a source type, the [heads, N, N] view for an
/// element type (layer_stack<float> holds views, layer_stack<qk_source<float>> Q/K sources).
template <class S>
struct stack_layer {
  using type = S;
};
template <element T>
struct stack_layer<T> {
  using type = head_attention_view<T>;
};
}  // namespace detail

/// One sample's attention, one entry per model layer: layers[i] is layer offset + i, each with the
/// same N tokens (heads may differ). S is an element type (layers are [heads, N, N] views) or an
/// attention source type (qk_source<T>: the layer's queries and keys; no map is materialised).
/// It must cover every layer the config reads ([lowest_layer(cfg), layers_end(cfg))); other
/// layers in it are ignored.
template <class S>
  requires element<S> || attention_source<S>
struct layer_stack {
  using layer_type = typename detail::stack_layer<S>::type;
  std::span<const layer_type> layers;
  index_t offset = 0;
};

/// The same for a batch: layers[i] is layer offset + i, each [batch, heads, N, N] with the same
/// batch and N.
template <element T>
struct batch_layer_stack {
  std::span<const attention_view<T>> layers;
  index_t offset = 0;
};

namespace detail {

using tokensel::detail::fail;

/// Per-sample working state over caller- or scratch-provided storage (n patches).
struct sample_state {
  index_t n = 0;
  std::span<float> max_r;                ///< max_l r_l over the pivotal layers seen
  std::span<float> last_r;               ///< r of last_layer
  std::span<std::uint8_t> in_p, in_c;    ///< membership of P and C
  std::span<double> margin;              ///< largest outlier margin x - fence (C members)
  std::span<token_index> pivotal_sets;   ///< [pivotal_layers * k]: top-k of each layer, ascending
  std::span<row_fence> fences;           ///< [n]: the first fence_count are used
  index_t fence_count = 0;
};

inline std::size_t sz(index_t v) noexcept { return static_cast<std::size_t>(v); }

/// Takes the state of one sample from scratch (valid for the scratch scope).
/// Entries of the per-layer top-k sets of one sample: none without patches (k_pivotal is only
/// checked against n > 0, so it must not size anything when n = 0).
inline index_t pivotal_set_size(const config& cfg, index_t n) noexcept {
  return n > 0 ? pivotal_layers(cfg) * cfg.k_pivotal : 0;
}

inline sample_state scratch_state(tokensel::detail::scratch_scope& scratch, index_t n, const config& cfg) {
  sample_state s;
  s.n = n;
  s.max_r = scratch.take<float>(sz(n));
  s.last_r = scratch.take<float>(sz(n));
  s.in_p = scratch.take_zeroed<std::uint8_t>(sz(n));
  s.in_c = scratch.take_zeroed<std::uint8_t>(sz(n));
  s.margin = scratch.take<double>(sz(n));
  s.pivotal_sets = scratch.take<token_index>(sz(pivotal_set_size(cfg, n)));
  s.fences = scratch.take<row_fence>(sz(n));
  return s;
}

inline void check_k(index_t n, const config& cfg) {
  if (n > 0 && cfg.k_pivotal > n) {
    fail(errc::invalid_argument, "freepruner.k_pivotal", cfg.k_pivotal, "exceeds the " + std::to_string(n) + " patches");
  }
}

inline std::string layer_name(index_t layer) { return "freepruner.attention[layer " + std::to_string(layer) + "]"; }

template <element T>
index_t layer_heads(const head_attention_view<T>& a) noexcept { return a.extent(0); }
template <element T>
index_t layer_heads(const qk_source<T>& a) noexcept { return a.heads(); }

/// A view is checked here; a Q/K source is validated as a whole (shapes, finite Q/K), named by layer.
template <element T>
void validate_layer(const head_attention_view<T>&, index_t) {}
template <element T>
void validate_layer(const qk_source<T>& a, index_t layer) { validate(a, layer_name(layer)); }

/// attention must be [heads >= 1, tokens, tokens] (queries and keys: the same tokens).
template <attention_source Source>
void check_layer_shape(const Source& a, index_t tokens, index_t layer) {
  validate_layer(a, layer);
  if (query_tokens(a) != tokens || key_tokens(a) != tokens) {
    fail(errc::shape_mismatch, layer_name(layer), std::to_string(query_tokens(a)) + "x" + std::to_string(key_tokens(a)),
         "must be square with the " + std::to_string(tokens) + " tokens of the other layers");
  }
  if (layer_heads(a) < 1 && tokens > 0) fail(errc::shape_mismatch, layer_name(layer) + ".extent(0)", layer_heads(a), "no heads");
}

inline token_range patch_range(index_t tokens, const config& cfg) {
  return cfg.skip_cls ? token_range::skip_cls(tokens) : token_range::all(tokens);
}

/// Pivotal stage of one layer: r_l, the running max, r of last_layer, top-k into P.
template <cpu_policy Policy, attention_source Source>
void pivotal_layer(const Policy& policy, const Source& attention, const token_range& patches,
                   const config& cfg, index_t layer, bool first_seen, sample_state& s) {
  const index_t n = s.n;
  tokensel::detail::scratch_scope scratch;
  auto r = scratch.take<float>(sz(n));
  try {
    contribution_degree(policy, attention, cfg.heads, patches, r);
  } catch (const error& e) {
    // Name the layer: "tokensel: freepruner.attention[layer 9]: contribution_degree.r[3] = nan: ..."
    const std::string what = e.what();
    const std::string inner = what.rfind("tokensel: ", 0) == 0 ? what.substr(10) : what;
    throw error(e.code(), layer_name(layer), "tokensel: " + layer_name(layer) + ": " + inner);
  }
  if (first_seen) {
    std::copy(r.begin(), r.end(), s.max_r.begin());
  } else {
    for (index_t i = 0; i < n; ++i) s.max_r[sz(i)] = std::max(s.max_r[sz(i)], r[sz(i)]);
  }
  if (layer == cfg.last_layer) std::copy(r.begin(), r.end(), s.last_r.begin());
  const auto set = s.pivotal_sets.subspan(sz((layer - cfg.first_layer) * cfg.k_pivotal), sz(cfg.k_pivotal));
  top_k<float>(as_view(std::span<const float>(r), "freepruner.r"), cfg.k_pivotal, set, index_order::ascending);
  for (const token_index p : set) s.in_p[sz(p)] = 1;
}

/// Complementary stage: row_of(p, buffer) -> const float* gives the reduced row M[p, :] over
/// the n patches (in buffer or elsewhere). Needs the complete P.
template <class RowOf>
void complementary_stage(const config& cfg, index_t layer, sample_state& s, RowOf&& row_of) {
  const index_t n = s.n;
  std::fill(s.in_c.begin(), s.in_c.end(), std::uint8_t{0});
  std::fill(s.margin.begin(), s.margin.end(), -std::numeric_limits<double>::infinity());
  s.fence_count = 0;
  tokensel::detail::scratch_scope scratch;
  auto buffer = scratch.take<float>(sz(n));
  auto outliers = scratch.take<token_index>(sz(n));
  const iqr_config iqr{.multiplier = cfg.iqr_multiplier, .lower_fence = false};
  for (index_t p = 0; p < n; ++p) {
    if (s.in_p[sz(p)] == 0) continue;
    const float* row = row_of(p, buffer.data());
    for (index_t j = 0; j < n; ++j) {
      if (!std::isfinite(row[j])) {
        fail(errc::non_finite, layer_name(layer) + ".row(" + std::to_string(p) + ")[" + std::to_string(j) + "]",
             row[j], "reduced attention must be finite");
      }
    }
    const auto fence = iqr_outliers<float>(vector_view<const float>(row, {n}, "freepruner.row"), iqr, outliers);
    for (index_t o = 0; o < fence.count; ++o) {
      const auto j = sz(outliers[sz(o)]);
      s.in_c[j] = 1;
      s.margin[j] = std::max(s.margin[j], static_cast<double>(row[j]) - fence.upper_fence);
    }
    s.fences[sz(s.fence_count++)] =
        row_fence{static_cast<token_index>(p), fence.count, fence.q1, fence.q3, fence.upper_fence};
  }
}

/// Complementary stage straight from the attention of the complementary layer (rows reduced on
/// demand: |P| rows, never the whole map).
template <cpu_policy Policy, element T>
void complementary_from_attention(const Policy&, const head_attention_view<T>& attention, const token_range& patches,
                                  const config& cfg, sample_state& s) {
  const auto sub = restrict_tokens(attention, patches);
  complementary_stage(cfg, cfg.complementary_layer, s, [&](index_t p, float* buffer) -> const float* {
    tokensel::detail::reduce_heads_row(sub, p, cfg.heads, buffer);
    return buffer;
  });
}

/// Same from the Q/K of the complementary layer: the |P| rows in one tiled pass (|P| x n floats).
template <cpu_policy Policy, element T>
void complementary_from_attention(const Policy& policy, const qk_source<T>& source, const token_range& patches,
                                  const config& cfg, sample_state& s) {
  const index_t n = s.n;
  tokensel::detail::scratch_scope scratch;
  auto ids = scratch.take<index_t>(sz(n));
  auto slot = scratch.take<index_t>(sz(n));  // slot[p]: row of p in rows
  index_t m = 0;
  for (index_t p = 0; p < n; ++p) {
    if (s.in_p[sz(p)] == 0) continue;
    slot[sz(p)] = m;
    ids[sz(m++)] = p;
  }
  auto rows = scratch.take<float>(sz(m * n));
  reduced_rows(policy, restrict_tokens(source, patches), cfg.heads, std::span<const index_t>(ids.data(), sz(m)),
               matrix_view<float>(rows.data(), {m, n}, "freepruner.rows"));
  complementary_stage(cfg, cfg.complementary_layer, s,
                      [&](index_t p, float*) -> const float* { return rows.data() + slot[sz(p)] * n; });
}

/// The reduced patch map of a layer into out [n, n] (streaming selector, complementary layer
/// before the pivotal set is complete).
template <cpu_policy Policy, element T>
void reduced_patch_map(const Policy& policy, const head_attention_view<T>& attention, const token_range& patches,
                       head_reduction op, const matrix_view<float>& out) {
  reduce_heads(policy, restrict_tokens(attention, patches), op, out);
}
template <cpu_policy Policy, element T>
void reduced_patch_map(const Policy& policy, const qk_source<T>& source, const token_range& patches,
                       head_reduction op, const matrix_view<float>& out) {
  tokensel::detail::scratch_scope scratch;
  auto ids = scratch.take<index_t>(sz(patches.count));
  for (index_t p = 0; p < patches.count; ++p) ids[sz(p)] = p;
  reduced_rows(policy, restrict_tokens(source, patches), op, std::span<const index_t>(ids), out);
}

/// Writes the selection of one sample (S, or the fixed-mode budget) ascending into out.
inline result assemble(const sample_state& s, const config& cfg, std::span<token_index> out) {
  const index_t n = s.n;
  tokensel::detail::check_capacity(out.size(), max_count(n, cfg), "freepruner.out.size()");
  result res;
  for (index_t i = 0; i < n; ++i) {
    res.pivotal += s.in_p[sz(i)];
    res.candidates += (s.in_p[sz(i)] | s.in_c[sz(i)]) != 0 ? 1 : 0;
  }
  res.complementary = res.candidates - res.pivotal;
  auto in_s = [&](index_t i) { return (s.in_p[sz(i)] | s.in_c[sz(i)]) != 0; };
  if (cfg.mode == mode::adaptive || res.candidates == cfg.budget) {
    index_t w = 0;
    for (index_t i = 0; i < n; ++i) {
      if (in_s(i)) out[sz(w++)] = static_cast<token_index>(i);
    }
    res.count = w;
    return res;
  }
  const index_t budget = cfg.budget;
  tokensel::detail::scratch_scope scratch;
  auto idx = scratch.take<token_index>(sz(n));
  if (res.candidates > budget) {
    // Pivotal first (by max_l r_l), then complementary (by largest outlier margin); ties: lower index.
    index_t m = 0;
    for (index_t i = 0; i < n; ++i) {
      if (in_s(i)) idx[sz(m++)] = static_cast<token_index>(i);
    }
    auto better = [&](token_index a, token_index b) {
      const bool pa = s.in_p[sz(a)] != 0, pb = s.in_p[sz(b)] != 0;
      if (pa != pb) return pa;
      if (pa) {
        const float ka = s.max_r[sz(a)], kb = s.max_r[sz(b)];
        return ka > kb || (ka == kb && a < b);
      }
      const double ka = s.margin[sz(a)], kb = s.margin[sz(b)];
      return ka > kb || (ka == kb && a < b);
    };
    std::partial_sort(idx.begin(), idx.begin() + budget, idx.begin() + m, better);
    std::sort(idx.begin(), idx.begin() + budget);
    std::copy(idx.begin(), idx.begin() + budget, out.begin());
    res.dropped = m - budget;
  } else {
    // All of S, then the best remaining patches by r of last_layer.
    index_t w = 0, m = 0;
    for (index_t i = 0; i < n; ++i) {
      if (in_s(i)) {
        out[sz(w++)] = static_cast<token_index>(i);
      } else {
        idx[sz(m++)] = static_cast<token_index>(i);
      }
    }
    const index_t need = budget - w;
    auto better = [&](token_index a, token_index b) {
      const float ka = s.last_r[sz(a)], kb = s.last_r[sz(b)];
      return ka > kb || (ka == kb && a < b);
    };
    std::partial_sort(idx.begin(), idx.begin() + need, idx.begin() + m, better);
    std::copy(idx.begin(), idx.begin() + need, out.begin() + w);
    std::sort(out.begin(), out.begin() + budget);
    res.filled = need;
  }
  res.count = budget;
  return res;
}

inline void fill_inspection(const sample_state& s, const config& cfg, inspection& info) {
  const index_t n = s.n;
  info.first_layer = cfg.first_layer;
  info.pivotal_per_layer.assign(sz(n == 0 ? 0 : pivotal_layers(cfg)), {});
  for (std::size_t l = 0; l < info.pivotal_per_layer.size(); ++l) {
    const auto set = s.pivotal_sets.subspan(l * sz(cfg.k_pivotal), sz(cfg.k_pivotal));
    info.pivotal_per_layer[l].assign(set.begin(), set.end());
  }
  info.pivotal.clear();
  info.complementary.clear();
  for (index_t i = 0; i < n; ++i) {
    if (s.in_p[sz(i)] != 0) {
      info.pivotal.push_back(static_cast<token_index>(i));
    } else if (s.in_c[sz(i)] != 0) {
      info.complementary.push_back(static_cast<token_index>(i));
    }
  }
  info.fences.assign(s.fences.begin(), s.fences.begin() + s.fence_count);
}

/// One-shot selection of one sample; layer_of(l) returns the attention source (view [heads, N, N]
/// or qk_source) of model layer l (only layers the config reads are asked for).
template <cpu_policy Policy, class LayerOf>
result select_sample(const Policy& policy, LayerOf&& layer_of, const config& cfg, std::span<token_index> out,
                     inspection* info) {
  validate(cfg);
  const index_t tokens = query_tokens(layer_of(cfg.first_layer));
  const token_range patches = patch_range(tokens, cfg);
  const index_t n = patches.count;
  tokensel::detail::check_capacity(out.size(), max_count(n, cfg), "freepruner.out.size()");
  check_k(n, cfg);
  for (index_t l = lowest_layer(cfg); l < layers_end(cfg); ++l) {
    if (uses_layer(cfg, l)) check_layer_shape(layer_of(l), tokens, l);
  }
  tokensel::detail::scratch_scope scratch;
  sample_state s = scratch_state(scratch, n, cfg);
  if (n > 0) {
    for (index_t l = cfg.first_layer; l <= cfg.last_layer; ++l) {
      pivotal_layer(policy, layer_of(l), patches, cfg, l, l == cfg.first_layer, s);
    }
    complementary_from_attention(policy, layer_of(cfg.complementary_layer), patches, cfg, s);
  }
  const result res = assemble(s, cfg, out);
  if (info != nullptr) fill_inspection(s, cfg, *info);
  return res;
}

template <class Views>
void check_stack(const Views& layers, index_t offset, const config& cfg) {
  const auto size = static_cast<index_t>(layers.size());
  if (offset < 0 || offset > lowest_layer(cfg) || offset + size < layers_end(cfg)) {
    fail(errc::invalid_argument, "freepruner.layers",
         "model layers [" + std::to_string(offset) + ", " + std::to_string(offset + size) + ")",
         "must cover layers [" + std::to_string(lowest_layer(cfg)) + ", " + std::to_string(layers_end(cfg)) +
             ") that the config reads");
  }
}

}  // namespace detail

// ---- one-shot -------------------------------------------------------------------------------

/// One sample from all its layers (views or Q/K sources). Writes the selection (ascending patch
/// indices) into out, which needs max_count(n, cfg) entries; returns its statistics.
template <cpu_policy Policy, class S>
result select(const Policy& policy, const layer_stack<S>& stack, const config& cfg, std::span<token_index> out) {
  validate(cfg);
  detail::check_stack(stack.layers, stack.offset, cfg);
  return detail::select_sample(
      policy, [&](index_t l) { return stack.layers[detail::sz(l - stack.offset)]; }, cfg, out, nullptr);
}

/// Same, and fills info with the per-layer pivotal sets, P, C \ P and the fences (allocates).
template <cpu_policy Policy, class S>
result select(const Policy& policy, const layer_stack<S>& stack, const config& cfg, std::span<token_index> out,
              inspection& info) {
  validate(cfg);
  detail::check_stack(stack.layers, stack.offset, cfg);
  return detail::select_sample(
      policy, [&](index_t l) { return stack.layers[detail::sz(l - stack.offset)]; }, cfg, out, &info);
}

/// Batch: every layer [batch, heads, N, N]; sample b writes counts[b] indices into out.indices(b, :)
/// (capacity max_count(n, cfg)).
template <cpu_policy Policy, element T>
void select(const Policy& policy, const batch_layer_stack<T>& stack, const config& cfg, const selection_batch& out,
            std::span<result> results = {}) {
  validate(cfg);
  detail::check_stack(stack.layers, stack.offset, cfg);
  const index_t batch = stack.layers[detail::sz(cfg.first_layer - stack.offset)].extent(0);
  for (index_t l = lowest_layer(cfg); l < layers_end(cfg); ++l) {
    const index_t b = stack.layers[detail::sz(l - stack.offset)].extent(0);
    if (uses_layer(cfg, l) && b != batch) {
      tokensel::detail::fail(errc::shape_mismatch, detail::layer_name(l) + ".extent(0)", b,
                             "batch must be " + std::to_string(batch) + " in every layer");
    }
  }
  tokensel::detail::run_batch(policy, batch, out, results, "freepruner",
                              [&](index_t b, std::span<token_index> row, const auto& inner) {
                                return detail::select_sample(
                                    inner, [&](index_t l) { return stack.layers[detail::sz(l - stack.offset)][b]; },
                                    cfg, row, nullptr);
                              });
}

/// Ragged batch: one layer_stack per sample (AnyRes views, video frames, mixed sizes; views or
/// Q/K sources).
template <cpu_policy Policy, class S>
void select(const Policy& policy, std::span<const layer_stack<S>> samples, const config& cfg,
            const selection_batch& out, std::span<result> results = {}) {
  validate(cfg);
  for (const auto& s : samples) detail::check_stack(s.layers, s.offset, cfg);
  tokensel::detail::run_batch(policy, static_cast<index_t>(samples.size()), out, results, "freepruner",
                              [&](index_t b, std::span<token_index> row, const auto& inner) {
                                return select(inner, samples[detail::sz(b)], cfg, row);
                              });
}

// ---- streaming ------------------------------------------------------------------------------

namespace detail {

/// Bookkeeping of a streaming selector, shared by the CPU selector and the CUDA one: which layers
/// the config reads have been added, and whether an add_layer failed part-way (the state is then
/// unusable until reset). The error messages are the selector's.
class layer_progress {
 public:
  explicit layer_progress(const config& cfg) : cfg_(cfg), seen_(sz(layers_end(cfg))) {}

  bool needs(index_t layer) const noexcept { return uses_layer(cfg_, layer) && seen_[sz(layer)] == 0; }
  bool complete() const noexcept { return pivotal_seen_ == pivotal_layers(cfg_) && complementary_seen_; }
  index_t pivotal_seen() const noexcept { return pivotal_seen_; }

  void reset() noexcept {
    std::fill(seen_.begin(), seen_.end(), std::uint8_t{0});
    pivotal_seen_ = 0;
    complementary_seen_ = false;
    broken_ = false;
  }

  void check_usable() const {
    if (broken_) {
      tokensel::detail::fail(errc::invalid_argument, "freepruner.selector",
                             "an earlier add_layer failed part-way; call reset() before reuse");
    }
  }
  /// The layer is one the config reads and has not been added yet.
  void check_addable(index_t layer) const {
    check_usable();
    if (!uses_layer(cfg_, layer)) {
      tokensel::detail::fail(errc::invalid_argument, "freepruner.layer", layer,
                             "not read by the config (pivotal layers " + std::to_string(cfg_.first_layer) + ".." +
                                 std::to_string(cfg_.last_layer) + ", complementary layer " +
                                 std::to_string(cfg_.complementary_layer) + ")");
    }
    if (seen_[sz(layer)] != 0) {
      tokensel::detail::fail(errc::invalid_argument, "freepruner.layer", layer, "already added (call reset() for a new image)");
    }
  }
  void check_finishable() const {
    check_usable();
    if (complete()) return;
    for (index_t l = lowest_layer(cfg_); l < layers_end(cfg_); ++l) {
      if (needs(l)) tokensel::detail::fail(errc::invalid_argument, "freepruner.layer", l, "was not added before finish");
    }
  }

  /// Past the checks: a failure from here on leaves partial state behind.
  void begin_add() noexcept { broken_ = true; }
  void end_add(index_t layer) noexcept {
    seen_[sz(layer)] = 1;
    if (layer >= cfg_.first_layer && layer <= cfg_.last_layer) ++pivotal_seen_;
    if (layer == cfg_.complementary_layer) complementary_seen_ = true;
    broken_ = false;
  }

 private:
  config cfg_;
  std::vector<std::uint8_t> seen_;
  index_t pivotal_seen_ = 0;
  bool complementary_seen_ = false;
  bool broken_ = false;
};

}  // namespace detail

/// Feed layers one at a time (any order, each layer the config reads exactly once), then finish.
/// State per sample: O(n) vectors (running max of r, r of last_layer, membership flags, margins,
/// fences) and the k_pivotal indices of each pivotal layer. When the complementary layer arrives
/// before the last pivotal layer (P is incomplete then), its reduced patch map (n x n fp32 per
/// sample) is stored until P is complete; in layer order with the default config (complementary
/// layer = last_layer) nothing n x n is ever stored, the needed rows are reduced on demand.
/// Allocates at construction (and the n x n map when needed); reset() reuses the storage.
/// Results are bit-identical to the one-shot select (for Q/K layers when the complementary layer
/// does not precede the last pivotal layer; otherwise its rows come from a different tiling of the
/// same softmax and agree to fp32 rounding).
class selector {
 public:
  /// tokens = N, the extent of every attention map (CLS included when cfg.skip_cls);
  /// batch = samples per add_layer call.
  selector(index_t tokens, const config& cfg, index_t batch = 1)
      : cfg_(validated(cfg)), batch_(batch), progress_(cfg_) {
    if (tokens < 0) tokensel::detail::fail(errc::invalid_argument, "freepruner.tokens", tokens, "must be >= 0");
    if (batch < 0) tokensel::detail::fail(errc::invalid_argument, "freepruner.batch", batch, "must be >= 0");
    tokens_ = tokens;
    patches_ = detail::patch_range(tokens, cfg_);
    n_ = patches_.count;
    (void)max_count(n_, cfg_);  // throws when the budget exceeds n
    detail::check_k(n_, cfg_);
    const auto bn = detail::sz(batch_ * n_);
    max_r_.resize(bn);
    last_r_.resize(bn);
    in_p_.resize(bn);
    in_c_.resize(bn);
    margin_.resize(bn);
    fences_.resize(bn);
    fence_count_.resize(detail::sz(batch_));
    pivotal_sets_.resize(detail::sz(batch_ * detail::pivotal_set_size(cfg_, n_)));
    reset();
  }

  const config& settings() const noexcept { return cfg_; }
  index_t tokens() const noexcept { return tokens_; }
  /// Patches per sample (n): the length of the index space of the output.
  index_t patches() const noexcept { return n_; }
  index_t batch() const noexcept { return batch_; }

  /// Whether add_layer expects this layer (a pivotal or the complementary layer not added yet).
  bool needs(index_t layer) const noexcept { return progress_.needs(layer); }
  /// Every layer the config reads has been added.
  bool complete() const noexcept { return progress_.complete(); }

  /// Adds one layer of a single-sample selector (batch() == 1): attention [heads, N, N].
  template <cpu_policy Policy, element T>
  void add_layer(const Policy& policy, index_t layer, const head_attention_view<T>& attention) {
    if (batch_ != 1) {
      tokensel::detail::fail(errc::shape_mismatch, "freepruner.selector.batch", batch_,
                             "a [heads, N, N] layer needs batch 1; pass [batch, heads, N, N]");
    }
    add_impl(policy, layer, [&](index_t) { return attention; });
  }

  /// Adds one layer of a single-sample selector from its queries and keys (FlashAttention
  /// engines): no n x n map is formed, except the reduced patch map of the complementary layer
  /// when it arrives before the last pivotal layer (as for a view).
  template <cpu_policy Policy, element T>
  void add_layer(const Policy& policy, index_t layer, const qk_source<T>& source) {
    if (batch_ != 1) {
      tokensel::detail::fail(errc::shape_mismatch, "freepruner.selector.batch", batch_,
                             "a single qk_source layer needs batch 1; pass a span of batch() sources");
    }
    add_impl(policy, layer, [&](index_t) -> const qk_source<T>& { return source; });
  }

  /// Adds one layer for the whole batch from one Q/K source per sample (sources.size() == batch()).
  template <cpu_policy Policy, element T>
  void add_layer(const Policy& policy, index_t layer, std::span<const qk_source<T>> sources) {
    if (static_cast<index_t>(sources.size()) != batch_) {
      tokensel::detail::fail(errc::shape_mismatch, detail::layer_name(layer) + ".size()", sources.size(),
                             "must be the selector's batch " + std::to_string(batch_));
    }
    add_impl(policy, layer, [&](index_t b) -> const qk_source<T>& { return sources[detail::sz(b)]; });
  }

  /// Adds one layer for the whole batch: attention [batch, heads, N, N].
  template <cpu_policy Policy, element T>
  void add_layer(const Policy& policy, index_t layer, const attention_view<T>& attention) {
    if (attention.extent(0) != batch_) {
      tokensel::detail::fail(errc::shape_mismatch, detail::layer_name(layer) + ".extent(0)", attention.extent(0),
                             "must be the selector's batch " + std::to_string(batch_));
    }
    add_impl(policy, layer, [&](index_t b) { return attention[b]; });
  }

  /// Single sample: writes the selection (ascending) into out (capacity max_count(n, cfg)).
  result finish(std::span<token_index> out) {
    if (batch_ != 1) {
      tokensel::detail::fail(errc::shape_mismatch, "freepruner.selector.batch", batch_,
                             "finish(span) needs batch 1; pass a selection_batch");
    }
    progress_.check_finishable();
    return detail::assemble(state(0), cfg_, out);
  }

  /// Batch: sample b writes counts[b] indices into out.indices(b, :).
  template <cpu_policy Policy>
  void finish(const Policy& policy, const selection_batch& out, std::span<result> results = {}) {
    progress_.check_finishable();
    tokensel::detail::run_batch(policy, batch_, out, results, "freepruner",
                                [&](index_t b, std::span<token_index> row) { return detail::assemble(state(b), cfg_, row); });
  }

  /// Per-layer pivotal sets, P, C \ P and fences of one sample (after every layer was added).
  inspection inspect(index_t sample = 0) const {
    progress_.check_finishable();
    if (sample < 0 || sample >= batch_) {
      tokensel::detail::fail(errc::invalid_argument, "freepruner.selector.sample", sample,
                             "must be in [0, " + std::to_string(batch_) + ")");
    }
    inspection info;
    detail::fill_inspection(state(sample), cfg_, info);
    return info;
  }

  /// Forgets every layer added (keeps the storage) for the next image(s).
  void reset() noexcept {
    std::fill(in_p_.begin(), in_p_.end(), std::uint8_t{0});
    std::fill(in_c_.begin(), in_c_.end(), std::uint8_t{0});
    std::fill(fence_count_.begin(), fence_count_.end(), index_t{0});
    progress_.reset();
    map_stored_ = false;
  }

 private:
  detail::sample_state state(index_t b) const {
    auto* self = const_cast<selector*>(this);  // the state is a set of spans; inspect() only reads it
    const auto n = detail::sz(n_), off = detail::sz(b) * n;
    const auto kset = detail::sz(detail::pivotal_set_size(cfg_, n_));
    detail::sample_state s;
    s.n = n_;
    s.max_r = std::span<float>(self->max_r_).subspan(off, n);
    s.last_r = std::span<float>(self->last_r_).subspan(off, n);
    s.in_p = std::span<std::uint8_t>(self->in_p_).subspan(off, n);
    s.in_c = std::span<std::uint8_t>(self->in_c_).subspan(off, n);
    s.margin = std::span<double>(self->margin_).subspan(off, n);
    s.pivotal_sets = std::span<token_index>(self->pivotal_sets_).subspan(detail::sz(b) * kset, kset);
    s.fences = std::span<row_fence>(self->fences_).subspan(off, n);
    s.fence_count = fence_count_[detail::sz(b)];
    return s;
  }

  static const config& validated(const config& cfg) {
    validate(cfg);
    return cfg;
  }

  /// Runs body(b, inner_policy) for every sample: one sample gets the policy itself, a batch is
  /// split over samples (as run_batch does).
  template <class Policy, class Body>
  void for_samples(const Policy& policy, Body&& body) {
    if (batch_ == 1) {
      body(index_t{0}, policy);
    } else {
      tokensel::detail::parallel_for(policy, batch_, [&](index_t b) { body(b, seq); });
    }
  }

  template <cpu_policy Policy, class SampleOf>
  void add_impl(const Policy& policy, index_t layer, SampleOf&& sample_of) {
    progress_.check_addable(layer);
    for (index_t b = 0; b < batch_; ++b) detail::check_layer_shape(sample_of(b), tokens_, layer);
    progress_.begin_add();  // a failure from here on (non-finite data) leaves partial state behind
    const bool pivotal = layer >= cfg_.first_layer && layer <= cfg_.last_layer;
    const bool complementary = layer == cfg_.complementary_layer;
    const bool p_complete = progress_.pivotal_seen() + (pivotal ? 1 : 0) == pivotal_layers(cfg_);
    if (n_ > 0) {
      if (pivotal) {
        const bool first_seen = progress_.pivotal_seen() == 0;
        for_samples(policy, [&](index_t b, const auto& inner) {
          auto s = state(b);
          detail::pivotal_layer(inner, sample_of(b), patches_, cfg_, layer, first_seen, s);
        });
      }
      if (complementary && p_complete) {
        for_samples(policy, [&](index_t b, const auto& inner) {
          auto s = state(b);
          detail::complementary_from_attention(inner, sample_of(b), patches_, cfg_, s);
          fence_count_[detail::sz(b)] = s.fence_count;
        });
      } else if (complementary) {
        if (map_.empty()) map_.resize(detail::sz(batch_ * n_ * n_));
        for_samples(policy, [&](index_t b, const auto& inner) {
          detail::reduced_patch_map(inner, sample_of(b), patches_, cfg_.heads, stored_map(b));
        });
        map_stored_ = true;
      } else if (p_complete && map_stored_) {
        for_samples(policy, [&](index_t b, const auto&) {
          auto s = state(b);
          const auto map = stored_map(b);
          detail::complementary_stage(cfg_, cfg_.complementary_layer, s,
                                      [&](index_t p, float*) -> const float* { return &map(p, 0); });
          fence_count_[detail::sz(b)] = s.fence_count;
        });
      }
    }
    progress_.end_add(layer);
  }

  matrix_view<float> stored_map(index_t b) {
    return matrix_view<float>(map_.data() + detail::sz(b * n_ * n_), {n_, n_}, "freepruner.stored_map");
  }

  config cfg_;
  index_t batch_ = 1;
  index_t tokens_ = 0;
  token_range patches_{};
  index_t n_ = 0;
  std::vector<float> max_r_, last_r_;
  std::vector<std::uint8_t> in_p_, in_c_;
  std::vector<double> margin_;
  std::vector<row_fence> fences_;
  std::vector<index_t> fence_count_;
  std::vector<token_index> pivotal_sets_;
  std::vector<float> map_;  // reduced complementary-layer map, only when it precedes the last pivotal layer
  detail::layer_progress progress_;
  bool map_stored_ = false;
};

}  // namespace freepruner
TOKENSEL_END_NAMESPACE
