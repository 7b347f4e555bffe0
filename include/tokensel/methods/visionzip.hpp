// tokensel: VisionZip (arXiv 2412.04467; official code dvlab-research/VisionZip), spec section 7.
//   Dominant:   s[j] = sum over heads of the CLS attention row A[h, 0, j] at the feature layer
//               (layer 22 for LLaVA-1.5); keep CLS plus the top (dominant - 1) patches.
//   Contextual: over the R = N - dominant remaining tokens (ascending), take the head-mean keys of
//               the same layer, L2-normalised; targets are remaining positions 0, step, 2 step, ...
//               (first `contextual` of them, step = max(1, R / contextual)); every other remaining
//               token joins the target with the highest dot product (ties: the first target);
//               contextual_t = x[target_t] + mean of x over the tokens assigned to t (no term
//               when none is assigned).
//   Output rows: the dominant tokens ascending (CLS first), then the contextual tokens in target
//   order. Unlike the other methods, the output holds merged features, so select() writes both
//   anchor indices (full-sequence, CLS = 0) and the feature rows.
//   The attention is a materialised view or a qk_source of the feature layer (queries [heads, N
//   or 1, d], keys [heads, N, d]): then only the CLS row is computed from Q and K (reduced_rows,
//   sum over heads), O(N) memory per head.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>

#if defined(__AVX512F__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "tokensel/core/attention_source.hpp"
#include "tokensel/core/batch.hpp"
#include "tokensel/core/budget.hpp"
#include "tokensel/core/config.hpp"
#include "tokensel/detail/parallel.hpp"
#include "tokensel/detail/reduce.hpp"
#include "tokensel/detail/scratch.hpp"
#include "tokensel/detail/validate.hpp"
#include "tokensel/detail/widen.hpp"
#include "tokensel/core/element.hpp"
#include "tokensel/core/error.hpp"
#include "tokensel/core/policy.hpp"
#include "tokensel/core/qk_source.hpp"
#include "tokensel/stats/head_reduction.hpp"
#include "tokensel/stats/qk_statistics.hpp"
#include "tokensel/core/tensor_view.hpp"
#include "tokensel/select/top_k.hpp"

TOKENSEL_BEGIN_NAMESPACE
namespace visionzip {

struct config {
  index_t dominant = 54;    ///< tokens kept by CLS attention, CLS included (>= 1)
  index_t contextual = 10;  ///< merged tokens built from the rest (>= 0)
};

/// Per-sample statistics.
struct [[nodiscard]] result {
  index_t count = 0;       ///< output rows = dominant + contextual (0 for an empty sample)
  index_t dominant = 0;    ///< of which dominant tokens (CLS included)
  index_t contextual = 0;  ///< of which contextual (merged) tokens
  index_t merged = 0;      ///< remaining non-target tokens folded into the contextual tokens
};

inline void validate(const config& cfg) {
  constexpr index_t limit = std::numeric_limits<token_index>::max();
  if (cfg.dominant < 1 || cfg.dominant > limit) {
    tokensel::detail::fail(errc::invalid_argument, "visionzip.dominant", cfg.dominant,
                           "must be in [1, 2147483647] (the CLS token is always kept)");
  }
  if (cfg.contextual < 0 || cfg.contextual > limit) {
    tokensel::detail::fail(errc::invalid_argument, "visionzip.contextual", cfg.contextual,
                           "must be in [0, 2147483647]");
  }
}

/// Output rows per non-empty sample: dominant + contextual (LLaVA-1.5 default 54 + 10 = 64).
[[nodiscard]] inline index_t keep_count(const config& cfg) {
  validate(cfg);
  return cfg.dominant + cfg.contextual;
}

/// Output rows for a sample of n tokens (CLS included): 0 when n = 0, else dominant + contextual.
/// Throws when the budget does not fit in n tokens.
[[nodiscard]] inline index_t keep_count(index_t n, const config& cfg) {
  const index_t k = keep_count(cfg);
  if (n < 0) tokensel::detail::fail(errc::invalid_argument, "visionzip.n", n, "must be >= 0");
  if (n == 0) return 0;
  if (k > n) {
    tokensel::detail::fail(errc::invalid_argument, "visionzip.dominant + visionzip.contextual", k,
                           "exceeds the " + std::to_string(n) + " tokens of the sample (CLS included)");
  }
  return k;
}

/// The config that keeps `b` of n patches as dominant + contextual tokens in the official
/// 54 : 10 proportion: contextual = floor(k 10 / 64), dominant = k - contextual (CLS counts as
/// one of the dominant tokens, as in the official code).
[[nodiscard]] inline config with_budget(const budget& b, index_t n, config base = {}) {
  const index_t k = b.tokens(n, "visionzip");
  base.contextual = k * 10 / 64;
  base.dominant = k - base.contextual;
  return base;
}

/// What VisionZip reads at the feature layer: the CLS query row of the attention (dominant
/// tokens), the keys (contextual similarity) and the hidden states it merges.
[[nodiscard]] inline method_requirements requirements(const config& cfg, const model_shape& shape) {
  tokensel::detail::check_feature_layer(shape, "visionzip");
  if (!shape.cls) tokensel::detail::fail(errc::invalid_argument, "visionzip.model", "needs a CLS token (its attention row ranks the tokens)");
  method_requirements r;
  r.layers = {shape.feature_layer, shape.feature_layer};
  r.cls_row = true;
  r.keys = true;
  r.hidden_states = true;
  r.keep = r.output_rows = keep_count(shape.visual_tokens + 1, cfg);
  return r;
}

namespace detail {

inline std::string at3(std::string_view name, index_t a, index_t b, index_t c) {
  return std::string(name) + "[" + std::to_string(a) + ", " + std::to_string(b) + ", " + std::to_string(c) + "]";
}

template <element A>
index_t source_heads(const head_attention_view<A>& a) noexcept { return a.extent(0); }
template <element A>
index_t source_heads(const qk_source<A>& a) noexcept { return a.heads(); }

template <class Source, class K, class H, class O>
void check_shapes(const Source& attention, const tensor_view<const K, 3>& keys,
                  const tensor_view<const H, 2>& hidden, const tensor_view<O, 2>& features, const config& cfg) {
  using tokensel::detail::fail;
  const index_t n = key_tokens(attention), queries = query_tokens(attention);
  if (queries != n && queries != 1) {
    fail(errc::shape_mismatch, "visionzip.attention.extent(1)", queries,
         "must be the " + std::to_string(n) + " tokens or 1 (the CLS query row only)");
  }
  if (n > 0 && source_heads(attention) < 1) fail(errc::shape_mismatch, "visionzip.attention.extent(0)", source_heads(attention), "no heads");
  if (hidden.extent(0) != n) {
    fail(errc::shape_mismatch, "visionzip.hidden.extent(0)", hidden.extent(0),
         "must equal the " + std::to_string(n) + " tokens of the attention");
  }
  // Keys are read only when there is something to merge; contextual = 0 accepts an empty view.
  if (cfg.contextual > 0 && n > 0) {
    if (keys.extent(1) != n) {
      fail(errc::shape_mismatch, "visionzip.keys.extent(1)", keys.extent(1),
           "must equal the " + std::to_string(n) + " tokens of the attention");
    }
    if (keys.extent(0) < 1) fail(errc::shape_mismatch, "visionzip.keys.extent(0)", keys.extent(0), "no heads");
    if (keys.extent(2) < 1) fail(errc::shape_mismatch, "visionzip.keys.extent(2)", keys.extent(2), "empty key vectors");
  }
  if (features.extent(1) != hidden.extent(1)) {
    fail(errc::shape_mismatch, "visionzip.features.extent(1)", features.extent(1),
         "must equal hidden.extent(1) = " + std::to_string(hidden.extent(1)));
  }
}

/// s[j - 1] = sum over heads of A[h, 0, j], j = 1 .. n-1 (ascending heads, fp32), from a view.
/// The fp32 sum runs over whole CLS rows (head by head, vectorised); each entry still adds its
/// heads in ascending order from 0.0f. A NaN/Inf is located in the scalar order (patch, then head)
/// only when a row fails the check, so the error names the value it always named.
template <cpu_policy Policy, element A>
void cls_scores(const Policy&, const head_attention_view<A>& attention, std::span<float> score) {
  using tokensel::detail::fail;
  const index_t heads = attention.extent(0), n = attention.extent(2);
  if (n < 2) return;
  tokensel::detail::scratch_scope scratch;
  auto buffer = scratch.take<float>(static_cast<std::size_t>(n));
  std::fill(score.begin(), score.begin() + (n - 1), 0.0f);
  bool finite = true;
  for (index_t h = 0; h < heads; ++h) {
    const float* a = tokensel::detail::row_f32(attention[h], 0, buffer.data()) + 1;
    finite = finite && tokensel::detail::all_finite(a, n - 1);
    for (index_t j = 0; j < n - 1; ++j) score[static_cast<std::size_t>(j)] += a[j];
  }
  if (finite) return;
  for (index_t j = 1; j < n; ++j) {
    for (index_t h = 0; h < heads; ++h) {
      const float a = to_float(attention(h, 0, j));
      if (!std::isfinite(a)) fail(errc::non_finite, detail::at3("visionzip.attention", h, 0, j), a, "values must be finite");
    }
  }
}

/// Same from Q/K: the CLS row of every head's softmax (over all N keys), summed over heads with
/// the same arithmetic (reduced_rows, head_reduction::sum).
template <cpu_policy Policy, element A>
void cls_scores(const Policy& policy, const qk_source<A>& attention, std::span<float> score) {
  const index_t n = key_tokens(attention);
  const auto patches = restrict_window(attention, token_range::all(query_tokens(attention)), token_range::skip_cls(n));
  const index_t cls[1] = {0};
  reduced_rows(policy, patches, head_reduction::sum, std::span<const index_t>(cls),
               matrix_view<float>(score.data(), {1, n - 1}, "visionzip.cls_attention"));
}

}  // namespace detail

namespace detail {

template <element H, element O>
void copy_row(const matrix_view<const H>& hidden, index_t src, const matrix_view<O>& features, index_t dst) {
  tokensel::detail::scratch_scope local;
  auto buffer = local.take<float>(static_cast<std::size_t>(hidden.extent(1)));
  tokensel::detail::store_row(features, dst, tokensel::detail::row_f32(hidden, src, buffer.data()));
}

/// 1. Dominant: CLS-row attention summed over heads (ascending head order), patches only; out[0]
///    = 0 (CLS), out[1, dominant) the top dominant - 1 patches as sequence indices, ascending.
template <cpu_policy Policy, class Source>
void dominant_tokens(const Policy& policy, const Source& attention, index_t dominant, std::span<token_index> out,
                     tokensel::detail::scratch_scope& scratch) {
  auto score = scratch.take<float>(static_cast<std::size_t>(key_tokens(attention) - 1));
  cls_scores(policy, attention, score);
  out[0] = 0;
  top_k<float>(as_view(std::span<const float>(score), "visionzip.cls_attention"), dominant - 1,
               out.subspan(1, static_cast<std::size_t>(dominant - 1)), index_order::ascending);
  for (index_t r = 1; r < dominant; ++r) out[r] += 1;  // patch index -> sequence index
}

/// Fails with the first NaN/Inf of token t's keys, channel by channel, heads inner.
template <element K>
void locate_non_finite_key(const tensor_view<const K, 3>& keys, index_t t) {
  for (index_t c = 0; c < keys.extent(2); ++c) {
    for (index_t h = 0; h < keys.extent(0); ++h) {
      const float v = to_float(keys(h, t, c));
      if (!std::isfinite(v)) tokensel::detail::fail(errc::non_finite, at3("visionzip.keys", h, t, c), v, "values must be finite");
    }
  }
}

/// Asks for the cache lines of bytes [p, p + bytes) ahead of their use (no effect on results).
inline void prefetch_bytes(const void* p, std::size_t bytes) noexcept {
#if defined(__GNUC__)
  const char* c = static_cast<const char*>(p);
  for (std::size_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o);
#else
  (void)p, (void)bytes;
#endif
}

#if defined(__GNUC__)
/// u[c0, c0 + V W) = sum over heads of keys(h, t, c), the V vectors held in registers across the
/// heads (widened there): each channel adds its heads in ascending order from 0.0f. The same
/// columns of token `next` are prefetched head by head (next < 0: none).
template <int V, element K>
void head_sum_block(const tensor_view<const K, 3>& keys, index_t t, index_t c0, float* u, index_t next) noexcept {
  constexpr int W = tokensel::detail::f32_vector_width;
  tokensel::detail::f32_vector acc[V];
TOKENSEL_UNROLL(4)
  for (int v = 0; v < V; ++v) acc[v] = tokensel::detail::f32_vector{};
  for (index_t h = 0; h < keys.extent(0); ++h) {
    const K* x = &keys(h, t, c0);
    if (next >= 0) prefetch_bytes(&keys(h, next, c0), sizeof(K) * V * W);
TOKENSEL_UNROLL(4)
    for (int v = 0; v < V; ++v) {
      tokensel::detail::f32_vector w;
      tokensel::detail::load_f32(x + v * W, w);
      acc[v] += w;
    }
  }
  std::memcpy(u + c0, acc, sizeof acc);
}
#endif

/// u[c] = sum over heads of keys(h, t, c), c in [0, dh), key rows contiguous: whole vectors in
/// registers across the heads (u stored once, not loaded and stored per head), the rest per head
/// in the same order.
template <element K>
void head_sum_row(const tensor_view<const K, 3>& keys, index_t t, float* u, index_t next) noexcept {
  const index_t dh = keys.extent(2);
  index_t c0 = 0;
#if defined(__GNUC__)
  if constexpr (tokensel::detail::widens_in_registers<K>) {
    constexpr int W = tokensel::detail::f32_vector_width;
    for (; c0 + 4 * W <= dh; c0 += 4 * W) head_sum_block<4>(keys, t, c0, u, next);
    for (; c0 + W <= dh; c0 += W) head_sum_block<1>(keys, t, c0, u, next);
  }
#endif
  std::fill(u + c0, u + dh, 0.0f);
  for (index_t h = 0; h < keys.extent(0) && c0 < dh; ++h) tokensel::detail::accumulate(&keys(h, t, c0), dh - c0, u + c0);
}

/// Head-mean keys of the remaining tokens, L2-normalised, into unit [rest.size(), d_head]. A zero
/// key vector stays zero (its similarity to every target is 0) where the official code would
/// divide by zero.
template <cpu_policy Policy, element K>
void unit_keys(const Policy& policy, const tensor_view<const K, 3>& keys, std::span<const token_index> rest,
               std::span<float> unit) {
  const index_t kheads = keys.extent(0), dh = keys.extent(2);
  // Contiguous key rows are summed over the heads in registers (head_sum_row); each channel still
  // adds its heads in ascending order from 0.0f. They are checked once, on the sum (a NaN or Inf
  // among the terms leaves the sum non-finite); a failed check is located in the scalar order
  // (locate_non_finite_key), which also ignores a sum that only overflowed.
  const auto count = static_cast<index_t>(rest.size());
  const bool contiguous = keys.stride(2) == 1 && dh > 0;
  tokensel::detail::parallel_for(policy, count, tokensel::detail::bytes_of<K>(count * kheads * dh), [&](index_t p) {
    float* u = unit.data() + p * dh;
    const index_t t = rest[static_cast<std::size_t>(p)];
    bool finite = true;
    if (contiguous) {
      // The next token's key rows load while this one is summed.
      head_sum_row(keys, t, u, p + 1 < count ? index_t{rest[static_cast<std::size_t>(p + 1)]} : index_t{-1});
      finite = tokensel::detail::all_finite(u, dh);
    } else {
      tokensel::detail::scratch_scope local;
      auto buffer = local.take<float>(static_cast<std::size_t>(dh));
      std::fill(u, u + dh, 0.0f);
      for (index_t h = 0; h < kheads; ++h) {
        const float* x = tokensel::detail::row_f32(keys[h], t, buffer.data());
        finite = finite && tokensel::detail::all_finite(x, dh);
        for (index_t c = 0; c < dh; ++c) u[c] += x[c];
      }
    }
    if (!finite) locate_non_finite_key(keys, t);
    tokensel::detail::divide_by_count(u, dh, kheads);
    const float norm = std::sqrt(tokensel::detail::canonical_dot(u, u, dh));
    if (norm > 0.0f) {
      for (index_t c = 0; c < dh; ++c) u[c] = u[c] / norm;
    }
  });
}

#if defined(__AVX512F__) && TOKENSEL_DETAIL_VECTOR_DOT_TILE
/// Lanes l and l + 16 of canonical_dot(a, b, n) added (the lane tree's first step), as one vector:
/// lane l adds its products i = l mod 32 in ascending order from 0.0f. The last step loads zeros
/// past n (masked): a +0 or -0 product leaves a lane unchanged, as a lane is never -0 (it starts at
/// +0, and x + y is -0 only when both are).
inline __m512 half_lanes(const float* a, const float* b, index_t n) noexcept {
  __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
  for (index_t i = 0; i < n; i += 32) {
    const index_t left = n - i;
    const __mmask16 m0 = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
    const __mmask16 m1 = left >= 32 ? __mmask16(0xffff) : left <= 16 ? __mmask16(0) : __mmask16((1u << (left - 16)) - 1);
    lo = _mm512_add_ps(lo, _mm512_mul_ps(_mm512_maskz_loadu_ps(m0, a + i), _mm512_maskz_loadu_ps(m0, b + i)));
    hi = _mm512_add_ps(hi, _mm512_mul_ps(_mm512_maskz_loadu_ps(m1, a + i + 16), _mm512_maskz_loadu_ps(m1, b + i + 16)));
  }
  return _mm512_add_ps(lo, hi);
}

/// best[j] = the first target of highest similarity to token p0 + j, j < 16 (tokens past count
/// repeat p0; their results are not used): 16 tokens per vector of dots, strict > as the scalar scan.
inline void best_targets16(const float* unit, index_t dh, index_t p0, index_t count, index_t contextual, index_t step,
                           std::int32_t* best) noexcept {
  const float* u[16];
  for (index_t j = 0; j < 16; ++j) u[j] = unit + (p0 + j < count ? p0 + j : p0) * dh;
  __m512 best_sim = _mm512_setzero_ps();
  __m512i best_t = _mm512_setzero_si512();
  for (index_t t = 0; t < contextual; ++t) {
    const float* g = unit + t * step * dh;
    tokensel::detail::f32_vector h[16];
    for (int j = 0; j < 16; ++j) h[j] = half_lanes(u[j], g, dh);
    tokensel::detail::reduce_lane_trees(h);  // the rest of the 16 trees together
    const __m512 sim = h[0];
    const __mmask16 better = t == 0 ? __mmask16(0xffff) : _mm512_cmp_ps_mask(sim, best_sim, _CMP_GT_OQ);
    best_sim = _mm512_mask_mov_ps(best_sim, better, sim);
    best_t = _mm512_mask_mov_epi32(best_t, better, _mm512_set1_epi32(static_cast<std::int32_t>(t)));
  }
  _mm512_storeu_si512(best, best_t);
}
#endif

/// owner[p]: -1 for the targets (remaining positions t * step, t < contextual), else the target
/// whose unit key is most similar (strict >: ties go to the first target). The similarities of a
/// block of tokens to the targets come from register-blocked tiles (canonical_dot_tile: each
/// pair's canonical_dot bits, each loaded vector used by several pairs).
template <cpu_policy Policy>
void assign_to_targets(const Policy& policy, std::span<const float> unit, index_t dh, index_t contextual, index_t step,
                       std::span<index_t> owner) {
  const auto count = static_cast<index_t>(owner.size());
#if defined(__AVX512F__) && TOKENSEL_DETAIL_VECTOR_DOT_TILE
  if (contextual <= std::numeric_limits<std::int32_t>::max()) {
    tokensel::detail::parallel_for(policy, (count + 15) / 16, tokensel::detail::bytes_of<float>(count * dh * contextual), [&](index_t b) {
      std::int32_t best[16];
      best_targets16(unit.data(), dh, b * 16, count, contextual, step, best);
      for (index_t p = b * 16; p < std::min(count, b * 16 + 16); ++p) {
        owner[static_cast<std::size_t>(p)] = (p % step == 0 && p / step < contextual) ? -1 : best[p - b * 16];
      }
    });
    return;
  }
#endif
  constexpr int R = tokensel::detail::dot_tile_rows, C = tokensel::detail::dot_tile_cols;
  const index_t blocks = (count + R - 1) / R;
  tokensel::detail::parallel_for(policy, blocks, tokensel::detail::bytes_of<float>(count * dh * contextual), [&](index_t b) {
    const index_t p0 = b * R, rows = std::min<index_t>(R, count - p0);
    const float* a[R];
    for (index_t r = 0; r < rows; ++r) a[r] = unit.data() + (p0 + r) * dh;
    float best_sim[R];
    index_t best[R] = {};
    for (index_t t0 = 0; t0 < contextual; t0 += C) {
      const index_t cols = std::min<index_t>(C, contextual - t0);
      const float* targets[C];
      for (index_t c = 0; c < cols; ++c) targets[c] = unit.data() + (t0 + c) * step * dh;
      float sim[R * C];
      tokensel::detail::canonical_dot_tile(a, static_cast<int>(rows), targets, static_cast<int>(cols), dh, sim, C);
      for (index_t r = 0; r < rows; ++r) {
        for (index_t c = 0; c < cols; ++c) {
          const float v = sim[r * C + c];
          if (t0 + c == 0 || v > best_sim[r]) {  // target 0 starts the search
            best_sim[r] = v;
            best[r] = t0 + c;
          }
        }
      }
    }
    for (index_t r = 0; r < rows; ++r) {
      const index_t p = p0 + r;
      owner[static_cast<std::size_t>(p)] = (p % step == 0 && p / step < contextual) ? -1 : best[r];
    }
  });
}

/// Output rows: the dominant rows, then for each target its row + the mean of its assigned rows
/// (summed in ascending token order); out[dominant + t] = target t's sequence index. The sums
/// run in one ascending pass over the remaining rows per column chunk, each row added to its
/// target's accumulator (contextual x chunk floats, L1-sized), so the hidden states stream in
/// order instead of being scanned once per target; each target still adds its rows in ascending
/// token order from 0.0f.
template <cpu_policy Policy, element H, element O>
void write_rows(const Policy& policy, const matrix_view<const H>& hidden, std::span<const token_index> rest,
                std::span<const index_t> owner, index_t dominant, index_t contextual, index_t step,
                std::span<token_index> out, const matrix_view<O>& features, tokensel::detail::scratch_scope& scratch) {
  const index_t d = hidden.extent(1), remaining = static_cast<index_t>(rest.size());
  tokensel::detail::parallel_for(policy, dominant, tokensel::detail::bytes_of<H>(dominant * d),
                                 [&](index_t r) { copy_row(hidden, out[r], features, r); });
  auto acc = scratch.take_zeroed<float>(static_cast<std::size_t>(contextual * d));
  auto assigned = scratch.take_zeroed<index_t>(static_cast<std::size_t>(contextual));
  for (index_t p = 0; p < remaining; ++p) {
    if (owner[static_cast<std::size_t>(p)] >= 0) ++assigned[static_cast<std::size_t>(owner[static_cast<std::size_t>(p)])];
  }
  // Columns per pass: whole rows on one thread (the hidden rows stream once, in order; at
  // D = 1024 the 10 accumulators fill 40 kB: 5-8 % faster at f16 than two 512-column passes),
  // halves of 512 columns when two threads share the rows.
  const std::size_t bytes = tokensel::detail::bytes_of<H>(remaining * d);
  const index_t chunk = tokensel::detail::runs_threaded(policy, bytes) ? std::min<index_t>(d, 512) : std::max<index_t>(d, 1);
  const index_t chunks = (d + chunk - 1) / chunk;
  tokensel::detail::parallel_for(policy, chunks, bytes, [&](index_t b) {
    const index_t c0 = b * chunk, width = std::min(chunk, d - c0);
    for (index_t p = 0; p < remaining; ++p) {
      const index_t t = owner[static_cast<std::size_t>(p)];
      if (t < 0) continue;
      float* a = acc.data() + t * d + c0;
      const index_t token = rest[static_cast<std::size_t>(p)];
      if (hidden.inner_contiguous()) {
        const H* next = p + 1 < remaining ? &hidden(rest[static_cast<std::size_t>(p + 1)], c0) : nullptr;
        tokensel::detail::accumulate(&hidden(token, c0), width, a, next);  // the next row prefetched
      } else {
        for (index_t c = 0; c < width; ++c) a[c] += to_float(hidden(token, c0 + c));
      }
    }
  });
  tokensel::detail::parallel_for(policy, contextual, tokensel::detail::bytes_of<H>(contextual * d), [&](index_t t) {
    const index_t r = dominant + t, target = rest[static_cast<std::size_t>(t * step)];
    out[r] = static_cast<token_index>(target);
    tokensel::detail::scratch_scope local;
    auto buffer = local.take<float>(static_cast<std::size_t>(d));
    float* a = acc.data() + t * d;
    const float count = static_cast<float>(assigned[static_cast<std::size_t>(t)] > 0 ? assigned[static_cast<std::size_t>(t)] : 1);
    const float* x = tokensel::detail::row_f32(hidden, target, buffer.data());
    for (index_t c = 0; c < d; ++c) a[c] = x[c] + a[c] / count;
    tokensel::detail::store_row(features, r, a);
  });
}

}  // namespace detail

/// One sample.
///   attention [heads, N, N] (or [heads, 1, N]: only the CLS query row 0 is read), CLS at token 0,
///             or its qk_source (queries [heads, N or 1, d], keys [heads, N, d]; scale, GQA);
///   keys      [heads, N, d_head] of the same layer (averaged over heads here; any head count);
///   hidden    [N, D] features to output (LLaVA: hidden_states[-2], CLS included);
///   out       >= keep_count indices: out[0, dominant) = dominant tokens, full-sequence indices
///             ascending (out[0] = 0, the CLS token); out[dominant, count) = the full-sequence
///             index of each contextual token's target, in target (ascending) order;
///   features  [>= keep_count, D]: row r is the output token anchored at out[r].
/// Attention and keys must be finite; hidden states pass through unchecked.
template <cpu_policy Policy, attention_source Source, element K, element H, element O>
result select(const Policy& policy, const Source& attention, const tensor_view<const K, 3>& keys,
              const matrix_view<const H>& hidden, const config& cfg, std::span<token_index> out,
              const matrix_view<O>& features) {
  validate(cfg);
  detail::check_shapes(attention, keys, hidden, features, cfg);
  const index_t n = key_tokens(attention);
  const index_t k = keep_count(n, cfg);
  tokensel::detail::check_capacity(out.size(), k, "visionzip.out.size()");
  if (features.extent(0) < k) {
    tokensel::detail::fail(errc::shape_mismatch, "visionzip.features.extent(0)", features.extent(0),
                           "below the " + std::to_string(k) + " output rows");
  }
  result res;
  if (n == 0) return res;

  const index_t dominant = cfg.dominant, contextual = cfg.contextual;
  const index_t remaining = n - dominant;
  tokensel::detail::scratch_scope scratch;
  detail::dominant_tokens(policy, attention, dominant, out, scratch);
  res.dominant = dominant;
  res.count = dominant;
  if (contextual == 0) {
    tokensel::detail::parallel_for(policy, dominant, [&](index_t r) { detail::copy_row(hidden, out[r], features, r); });
    return res;
  }

  // 2. Remaining tokens, ascending (CLS is dominant, so never among them), and their unit keys.
  auto rest = scratch.take<token_index>(static_cast<std::size_t>(remaining));
  complement(std::span<const token_index>(out.data(), static_cast<std::size_t>(dominant)), n, rest);
  const index_t dh = keys.extent(2);
  auto unit = scratch.take<float>(static_cast<std::size_t>(remaining * dh));
  detail::unit_keys(policy, keys, rest, unit);

  // 3. Targets at remaining positions t * step; every other remaining token goes to its most
  //    similar target.
  const index_t step = remaining / contextual > 1 ? remaining / contextual : 1;
  auto owner = scratch.take<index_t>(static_cast<std::size_t>(remaining));  // -1 for targets
  detail::assign_to_targets(policy, unit, dh, contextual, step, owner);

  // 4. Output rows: dominant rows, then target + mean(assigned).
  detail::write_rows(policy, hidden, rest, owner, dominant, contextual, step, out, features, scratch);
  res.contextual = contextual;
  res.count = dominant + contextual;
  res.merged = remaining - contextual;
  return res;
}

/// Batch: attention [batch, heads, N, N] (or [batch, heads, 1, N]), keys [batch, heads, N, d_head],
/// hidden [batch, N, D]; sample b writes its indices to out.indices(b, :) and its rows to
/// features[b] ([batch, >= keep_count, D]).
template <cpu_policy Policy, element A, element K, element H, element O>
void select(const Policy& policy, const attention_view<A>& attention, const tensor_view<const K, 4>& keys,
            const feature_view<const H>& hidden, const config& cfg, const selection_batch& out,
            const feature_view<O>& features, std::span<result> results = {}) {
  using tokensel::detail::fail;
  const index_t batch = attention.extent(0);
  if (hidden.extent(0) != batch) fail(errc::shape_mismatch, "visionzip.hidden.extent(0)", hidden.extent(0), "must equal the batch size " + std::to_string(batch));
  if (features.extent(0) != batch) fail(errc::shape_mismatch, "visionzip.features.extent(0)", features.extent(0), "must equal the batch size " + std::to_string(batch));
  const bool need_keys = cfg.contextual > 0 && attention.extent(3) > 0;
  if (need_keys && keys.extent(0) != batch) fail(errc::shape_mismatch, "visionzip.keys.extent(0)", keys.extent(0), "must equal the batch size " + std::to_string(batch));
  tokensel::detail::run_batch(policy, batch, out, results, "visionzip",
                              [&](index_t b, std::span<token_index> row, const auto& inner) {
                                return select(inner, attention[b], need_keys ? keys[b] : tensor_view<const K, 3>{},
                                              hidden[b], cfg, row, features[b]);
                              });
}

/// Ragged batch: one view (or qk_source) per sample for each input and for the output features.
template <cpu_policy Policy, attention_source Source, element K, element H, element O>
void select(const Policy& policy, std::span<const Source> attention,
            std::span<const tensor_view<const K, 3>> keys, std::span<const matrix_view<const H>> hidden,
            const config& cfg, const selection_batch& out, std::span<const matrix_view<O>> features,
            std::span<result> results = {}) {
  using tokensel::detail::fail;
  const auto batch = static_cast<index_t>(attention.size());
  if (static_cast<index_t>(hidden.size()) != batch) fail(errc::shape_mismatch, "visionzip.hidden.size()", hidden.size(), "must equal the batch size " + std::to_string(batch));
  if (static_cast<index_t>(features.size()) != batch) fail(errc::shape_mismatch, "visionzip.features.size()", features.size(), "must equal the batch size " + std::to_string(batch));
  const bool need_keys = cfg.contextual > 0;
  if (need_keys && static_cast<index_t>(keys.size()) != batch) fail(errc::shape_mismatch, "visionzip.keys.size()", keys.size(), "must equal the batch size " + std::to_string(batch));
  tokensel::detail::run_batch(policy, batch, out, results, "visionzip",
                              [&](index_t b, std::span<token_index> row, const auto& inner) {
                                return select(inner, attention[b], need_keys ? keys[b] : tensor_view<const K, 3>{},
                                              hidden[b], cfg, row, features[b]);
                              });
}

}  // namespace visionzip
TOKENSEL_END_NAMESPACE
