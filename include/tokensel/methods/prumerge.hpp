// tokensel: LLaVA-PruMerge and PruMerge+ (arXiv 2403.15388; official code 42Shawn/LLaVA-PruMerge),
// spec section 6.
//   1. a = CLS row of softmax(Q K^T * scale) over all n+1 tokens of the last CLIP layer (one
//      1024-wide head, scale 1/sqrt(D)); patch columns 1..n, sliced after the softmax.
//   2. Kc = number of IQR outliers of a (upper fence, strict); keep the top-Kc patches by a.
//   3. PruMerge+: add every stride-th index of 0..n-2, stride = max(1, floor(floor(n/Kc)/3)),
//      skipping indices already kept (Kc = 0: nothing added, plain PruMerge).
//   4. Merge: for each kept i, y_i = x_i + sum_{j in nn(i)} a_j x_j, nn(i) = the `neighbours` other
//      patches (kept or not) with the highest cosine similarity of their layer-23 keys to i's;
//      plus one extra row sum_{j not kept} a_j x_j.
// The count is data-dependent (adaptive): size outputs with max_count / max_rows.
// Only the CLS query row is used: no n x n map is formed.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "tokensel/core/batch.hpp"
#include "tokensel/core/budget.hpp"
#include "tokensel/core/config.hpp"
#include "tokensel/detail/arith.hpp"
#include "tokensel/detail/expf.hpp"
#include "tokensel/detail/parallel.hpp"
#include "tokensel/detail/reduce.hpp"
#include "tokensel/detail/scratch.hpp"
#include "tokensel/detail/validate.hpp"
#include "tokensel/detail/widen.hpp"
#include "tokensel/methods/detail/cosine.hpp"
#include "tokensel/core/element.hpp"
#include "tokensel/stats/head_reduction.hpp"
#include "tokensel/stats/iqr_outliers.hpp"
#include "tokensel/core/policy.hpp"
#include "tokensel/core/tensor_view.hpp"
#include "tokensel/select/top_k.hpp"

TOKENSEL_BEGIN_NAMESPACE
namespace prumerge {

/// Order of the kept tokens (indices and merged rows).
enum class mode {
  fixed,   ///< ascending patch indices (original spatial order)
  parity,  ///< the official order: top-Kc by descending attention, then grid tokens ascending
};

inline const char* to_string(mode m) noexcept { return m == mode::fixed ? "fixed" : "parity"; }

struct config {
  prumerge::mode mode = prumerge::mode::fixed;
  bool plus = false;            ///< PruMerge+: add the spatially uniform stride grid
  index_t neighbours = 32;      ///< nearest other tokens merged into each kept token (>= 0)
  double iqr_multiplier = 1.5;  ///< IQR fence Q3 + c (Q3 - Q1), strict >
  bool merge = true;            ///< false: kept rows are gathered unchanged (pruning only, no extra row)
  bool extra_token = true;      ///< with merge: append sum_{j not kept} a_j x_j as the last row
  double scale = 0.0;           ///< softmax scale of Q K^T; 0 means 1/sqrt(D)
};

/// Per-sample statistics.
struct [[nodiscard]] result {
  index_t count = 0;       ///< kept patch indices written (outliers + grid)
  index_t outliers = 0;    ///< Kc
  index_t grid = 0;        ///< PruMerge+ grid tokens added (not already among the top-Kc)
  index_t stride = 0;      ///< PruMerge+ grid stride (0 when no grid was laid)
  index_t neighbours = 0;  ///< neighbours merged per kept token: min(config.neighbours, n - 1); 0 without merge
  bool extra_token = false;  ///< merged row `count` holds the extra token
  iqr_result iqr;          ///< quartiles and fences of the CLS attention over the patches
  /// Rows written to the merged output.
  index_t rows() const noexcept { return count + (extra_token ? 1 : 0); }
};

inline void validate(const config& cfg) {
  if (cfg.mode != mode::fixed && cfg.mode != mode::parity) {
    tokensel::detail::fail(errc::invalid_argument, "prumerge.mode", static_cast<int>(cfg.mode), "unknown mode");
  }
  if (cfg.neighbours < 0) tokensel::detail::fail(errc::invalid_argument, "prumerge.neighbours", cfg.neighbours, "must be >= 0");
  if (!std::isfinite(cfg.iqr_multiplier) || cfg.iqr_multiplier < 0.0) {
    tokensel::detail::fail(errc::invalid_argument, "prumerge.iqr_multiplier", cfg.iqr_multiplier, "must be finite and >= 0");
  }
  if (!std::isfinite(cfg.scale) || cfg.scale < 0.0) {
    tokensel::detail::fail(errc::invalid_argument, "prumerge.scale", cfg.scale, "must be finite and >= 0 (0: 1/sqrt(D))");
  }
}

namespace detail {

/// PruMerge+ grid stride, outliers > 0: max(1, floor(floor(n / Kc) / 3)). Host and device.
TOKENSEL_PORTABLE_HD index_t plus_grid_stride(index_t n, index_t outliers) noexcept {
  const index_t s = (n / outliers) / 3;
  return s < 1 ? 1 : s;
}

/// Grid indices 0, s, 2s, ... <= n - 2 (the official range stops one short of the last patch).
TOKENSEL_PORTABLE_HD index_t grid_size(index_t n, index_t stride) noexcept { return n < 2 ? 0 : (n - 2) / stride + 1; }

}  // namespace detail

/// PruMerge+ grid stride for n patches and Kc > 0 outliers: max(1, floor(floor(n / Kc) / 3)).
inline index_t grid_stride(index_t n, index_t outliers) {
  if (outliers <= 0) tokensel::detail::fail(errc::invalid_argument, "prumerge.outliers", outliers, "must be > 0 for a grid");
  return detail::plus_grid_stride(n, outliers);
}

namespace detail {

using tokensel::detail::canonical_dot;

inline std::string at2(std::string_view name, index_t i, index_t j) {
  return std::string(name) + "[" + std::to_string(i) + ", " + std::to_string(j) + "]";
}

/// Fails with the first NaN/Inf of rows [row0, row0 + rows) of m (row-major order): the error
/// path of the vectorised checks below, which only know that some value is not finite.
template <class T>
void locate_non_finite(const tensor_view<const T, 2>& m, index_t row0, index_t rows, std::string_view name) {
  for (index_t i = row0; i < row0 + rows; ++i) {
    for (index_t c = 0; c < m.extent(1); ++c) {
      const float v = to_float(m(i, c));
      if (!std::isfinite(v)) tokensel::detail::fail(errc::non_finite, at2(name, i, c), v, "values must be finite");
    }
  }
}

/// Copies rows [row0, row0 + rows) of m into a contiguous fp32 buffer, rejecting NaN/Inf.
template <class T>
void to_float_rows(const tensor_view<const T, 2>& m, index_t row0, index_t rows, float* dst, std::string_view name) {
  const index_t d = m.extent(1);
  for (index_t i = 0; i < rows; ++i) {
    float* row = dst + i * d;
    const float* src = tokensel::detail::row_f32(m, row0 + i, row);
    if (src != row && d > 0) std::copy(src, src + d, row);
    if (!tokensel::detail::all_finite(row, d)) locate_non_finite(m, row0 + i, 1, name);
  }
}

template <class T>
void check_finite_rows(const tensor_view<const T, 2>& m, std::string_view name) {
  tokensel::detail::scratch_scope scratch;
  auto buffer = scratch.take<float>(static_cast<std::size_t>(m.extent(1)));
  for (index_t i = 0; i < m.extent(0); ++i) {
    if (!tokensel::detail::all_finite(tokensel::detail::row_f32(m, i, buffer.data()), m.extent(1))) {
      locate_non_finite(m, i, 1, name);
    }
  }
}

inline void check_extent(index_t got, index_t want, std::string_view name) {
  if (got != want) tokensel::detail::fail(errc::shape_mismatch, name, got, "must be " + std::to_string(want));
}

/// queries [n+1 or 1, D], keys [n+1, D] with n+1 >= 1 and D >= 1.
template <class T>
void check_qk(const tensor_view<const T, 2>& queries, const tensor_view<const T, 2>& keys) {
  if (keys.extent(0) < 1) {
    tokensel::detail::fail(errc::shape_mismatch, "prumerge.keys.extent(0)", keys.extent(0), "must be >= 1 (CLS + n patches)");
  }
  if (keys.extent(1) < 1) tokensel::detail::fail(errc::shape_mismatch, "prumerge.keys.extent(1)", keys.extent(1), "must be >= 1");
  if (queries.extent(0) != 1 && queries.extent(0) != keys.extent(0)) {
    tokensel::detail::fail(errc::shape_mismatch, "prumerge.queries.extent(0)", queries.extent(0),
                           "must be 1 (the CLS query) or keys.extent(0) = " + std::to_string(keys.extent(0)));
  }
  check_extent(queries.extent(1), keys.extent(1), "prumerge.queries.extent(1)");
}

template <class F, class O>
void check_features(const tensor_view<const F, 2>& features, const tensor_view<O, 2>& merged, index_t n) {
  check_extent(features.extent(0), n, "prumerge.features.extent(0)");
  check_extent(merged.extent(1), features.extent(1), "prumerge.merged.extent(1)");
}

inline float softmax_scale(const config& cfg, index_t dim) {
  return static_cast<float>(cfg.scale > 0.0 ? cfg.scale : 1.0 / std::sqrt(static_cast<double>(dim)));
}

/// out[r] = canonical_dot(q, float(k[r])) for rows <= widened_rows contiguous fp16 / bf16 rows,
/// each widened in registers (no fp32 copy). One pass over i advances every lane vector of every
/// row: a row's lane l still adds its products i = l mod 32 in ascending order from 0.0f, then the
/// lane tree, so the bits are canonical_dot's; the one-row loop was bound by the latency of one
/// add chain per lane vector. Only where widened_dots<T>.
#if defined(__GNUC__)
template <class T>
/// fp16 / bf16 keys whose dots run widened in registers (fp32 keys need no widening).
inline constexpr bool widened_dots = !std::is_same_v<std::remove_cv_t<T>, float> && tokensel::detail::widens_in_registers<T>;
/// Key rows per block: 8 accumulators (rows x 32 / width lane vectors) hide the add latency and
/// leave registers for the loads (4 rows with AVX-512, 2 with 8-wide vectors).
inline constexpr index_t widened_rows = tokensel::detail::f32_vector_width / 4;
#else
template <class T>
inline constexpr bool widened_dots = false;
inline constexpr index_t widened_rows = 1;
#endif

#if defined(__GNUC__)
/// bf16 rows as 32-bit words (little-endian): word m of a block holds elements 2m (low half) and
/// 2m + 1 (high half), so `w << 16` and `w & 0xffff0000` widen the even and the odd elements with
/// one integer op per vector each, against the query deinterleaved the same way (q_split).
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
inline constexpr bool bf16_split_widening = true;
#else
inline constexpr bool bf16_split_widening = false;
#endif

template <class T>
inline constexpr bool split_widened = std::is_same_v<std::remove_cv_t<T>, Eigen::bfloat16> && bf16_split_widening;

/// q_split[b + m] = q[b + 2m], q_split[b + W + m] = q[b + 2m + 1] over blocks b of 2W values in
/// [0, full): the order in which the split bf16 loads deliver the key values.
inline void split_query(const float* q, index_t full, float* q_split) noexcept {
  constexpr int W = tokensel::detail::f32_vector_width;
  for (index_t b = 0; b < full; b += 2 * W) {
    for (int m = 0; m < W; ++m) {
      q_split[b + m] = q[b + 2 * m];
      q_split[b + W + m] = q[b + 2 * m + 1];
    }
  }
}

/// Lane vectors of one 32-value step of row k at i: fp16 widened by F16C; bf16 split into even and
/// odd elements (vector 2h holds lanes 2hW + 2m, vector 2h + 1 lanes 2hW + 2m + 1).
template <class T>
inline void step_products(const float* q, const T* k, index_t i, tokensel::detail::f32_vector* acc) noexcept {
  constexpr int W = tokensel::detail::f32_vector_width, G = tokensel::detail::canonical_lanes / W;
  using vec = tokensel::detail::f32_vector;
  using unaligned = tokensel::detail::f32_vector_unaligned;
  if constexpr (split_widened<T>) {
    typedef std::uint32_t words __attribute__((vector_size(W * 4), aligned(2), may_alias));
TOKENSEL_UNROLL(4)
    for (int h = 0; h < G / 2; ++h) {
      const words w = *reinterpret_cast<const words*>(k + i + h * 2 * W);
      const words even = w << 16, odd = w & 0xffff0000u;
      vec e, o;
      std::memcpy(&e, &even, sizeof e);
      std::memcpy(&o, &odd, sizeof o);
      acc[2 * h] += *reinterpret_cast<const unaligned*>(q + i + h * 2 * W) * e;
      acc[2 * h + 1] += *reinterpret_cast<const unaligned*>(q + i + h * 2 * W + W) * o;
    }
  } else {
TOKENSEL_UNROLL(4)
    for (int g = 0; g < G; ++g) {
      vec widened;
      tokensel::detail::load_f32(k + i + g * W, widened);
      acc[g] += *reinterpret_cast<const unaligned*>(q + i + g * W) * widened;
    }
  }
}

#if TOKENSEL_DETAIL_VECTOR_DOT_TILE
/// The even-lane vector e and the odd-lane vector o of 2W tree lanes: x = (e[0, W/2), o[0, W/2)),
/// y = (e[W/2, W), o[W/2, W)), so that x + y is the tree step at width W (lane l + lane l + W).
/// (Vectors by reference: without AVX a 32-byte vector returned by value changes the ABI.)
template <std::size_t... P>
inline void split_halves(const tokensel::detail::f32_vector& e, const tokensel::detail::f32_vector& o,
                         tokensel::detail::f32_vector& x, tokensel::detail::f32_vector& y, std::index_sequence<P...>) noexcept {
  constexpr int W = tokensel::detail::f32_vector_width, H = W / 2;
  x = __builtin_shufflevector(e, o, (P < H ? P : W + P - H)...);
  y = __builtin_shufflevector(e, o, (P < H ? H + P : W + P)...);
}
/// (t[0], t[W/2], t[1], t[W/2 + 1], ...): the lanes 2m (first half) and 2m + 1 (second half) back
/// in natural order.
template <std::size_t... P>
inline void interleave_halves(const tokensel::detail::f32_vector& t, tokensel::detail::f32_vector& out, std::index_sequence<P...>) noexcept {
  constexpr int H = tokensel::detail::f32_vector_width / 2;
  out = __builtin_shufflevector(t, t, (P % 2 == 0 ? P / 2 : H + P / 2)...);
}
#endif

/// The 32 lane partials of one row from its lane vectors (step_products' layout).
template <class T>
inline void lanes_of(const tokensel::detail::f32_vector* acc, float* lane) noexcept {
  constexpr int W = tokensel::detail::f32_vector_width, G = tokensel::detail::canonical_lanes / W;
  if constexpr (split_widened<T>) {
    for (int h = 0; h < G / 2; ++h) {
      for (int m = 0; m < W; ++m) {
        lane[h * 2 * W + 2 * m] = acc[2 * h][m];
        lane[h * 2 * W + 2 * m + 1] = acc[2 * h + 1][m];
      }
    }
  } else {
    std::memcpy(lane, acc, sizeof(float) * tokensel::detail::canonical_lanes);
  }
}
#endif

#if TOKENSEL_DETAIL_VECTOR_DOT_TILE
/// Tree lanes 0 .. W-1 of one row (the whole-vector steps of the lane tree: lane l += lane l + w
/// for w = 16 down to W) from step_products' accumulators, in natural lane order, into s.
template <class T>
inline void first_tree_steps(tokensel::detail::f32_vector* acc, tokensel::detail::f32_vector& s) noexcept {
  constexpr int W = tokensel::detail::f32_vector_width, G = tokensel::detail::canonical_lanes / W;
  if constexpr (split_widened<T>) {
    // Vector pairs (2h, 2h + 1) hold the even and the odd lanes of 2W lanes: widths >= 2W add
    // pairs; width W adds within each half of the pair, then the even and odd lanes interleave.
    for (int v = G / 2; v >= 2; v /= 2) {
      for (int k = 0; k < v; ++k) acc[k] += acc[k + v];
    }
    tokensel::detail::f32_vector x, y;
    split_halves(acc[0], acc[1], x, y, std::make_index_sequence<W>{});
    const tokensel::detail::f32_vector t = x + y;  // t[m] = lane 2m, t[W/2 + m] = lane 2m + 1
    interleave_halves(t, s, std::make_index_sequence<W>{});
  } else {
    for (int v = G / 2; v >= 1; v /= 2) {
      for (int k = 0; k < v; ++k) acc[k] += acc[k + v];
    }
    s = acc[0];
  }
}
#endif

/// out[r] = canonical_dot(q, float(k[r])) for rows <= f32_vector_width contiguous fp16 / bf16
/// rows, each widened in registers (no fp32 copy); q_step is q, or for bf16 split_query(q). One
/// pass over i advances every lane vector of widened_rows rows at a time: a row's lane l still adds
/// its products i = l mod 32 in ascending order from 0.0f, then the lane tree, so the bits are
/// canonical_dot's (the one-row loop was bound by the latency of one add chain per lane vector).
/// The trees of all the rows then run together across vectors (reduce_lane_trees; one tree at a
/// time through memory took as long as the 1024 multiply-adds of the row).
/// next: f32_vector_width rows after these (nullptr: none). Each row is prefetched widened_rows
/// rows before it is read (from k, then from next), so that its loads overlap the arithmetic of
/// the rows before instead of following it.
template <class T>
void canonical_dots_widened(const float* q, const float* q_step, const T* const* k, int rows, index_t n,
                            float* out, const T* const* next = nullptr) noexcept {
#if defined(__GNUC__)
  if constexpr (widened_dots<T>) {
    constexpr int W = tokensel::detail::f32_vector_width, L = tokensel::detail::canonical_lanes, G = L / W;
    constexpr int R = static_cast<int>(widened_rows);
    const index_t full = n - n % L;
#if TOKENSEL_DETAIL_VECTOR_DOT_TILE
    tokensel::detail::f32_vector trees[W];
#endif
    for (int r0 = 0; r0 < rows; r0 += R) {
      const T* row[R];
      for (int r = 0; r < R; ++r) row[r] = k[r0 + r < rows ? r0 + r : r0];  // padding repeats a row, never stored
      // The rows widened_rows further on (in k, then in next) load while these are multiplied.
      const T* ahead[R];
      for (int r = 0; r < R; ++r) {
        const int j = r0 + R + r;
        ahead[r] = next == nullptr ? nullptr : j < rows ? k[j] : next[std::min(j - rows, W - 1)];
      }
      tokensel::detail::f32_vector acc[R][G];
TOKENSEL_UNROLL(16)
      for (int a = 0; a < R * G; ++a) acc[a / G][a % G] = tokensel::detail::f32_vector{};
      for (index_t i = 0; i < full; i += L) {
        if (ahead[0] != nullptr) {  // 32 values of 2 bytes: one cache line per row and step
TOKENSEL_UNROLL(4)
          for (int r = 0; r < R; ++r) __builtin_prefetch(ahead[r] + i);
        }
TOKENSEL_UNROLL(4)
        for (int r = 0; r < R; ++r) step_products(q_step, row[r], i, acc[r]);
      }
      for (int r = 0; r < R && r0 + r < rows; ++r) {
#if TOKENSEL_DETAIL_VECTOR_DOT_TILE
        if (full == n) {
          first_tree_steps<T>(acc[r], trees[r0 + r]);
          continue;
        }
#endif
        float lane[L];
        lanes_of<T>(acc[r], lane);
        for (int l = 0; full + l < n; ++l) lane[l] += q[full + l] * to_float(row[r][full + l]);
        out[r0 + r] = tokensel::detail::combine_lanes_unrolled(lane);
      }
    }
#if TOKENSEL_DETAIL_VECTOR_DOT_TILE
    if (full == n) {
      for (int r = rows; r < W; ++r) trees[r] = tokensel::detail::f32_vector{};
      tokensel::detail::reduce_lane_trees(trees);
      for (int r = 0; r < rows; ++r) out[r] = trees[0][r];
    }
#endif
  }
#endif
  (void)q, (void)q_step, (void)k, (void)rows, (void)n, (void)out, (void)next;
}

/// x / max(|x|, 1e-12) of one row (torch's F.normalize), into unit.
inline void unit_row(const float* x, index_t dim, float* unit) noexcept {
  const float norm = std::sqrt(canonical_dot(x, x, dim));
  const float denom = std::max(norm, 1e-12f);
  for (index_t c = 0; c < dim; ++c) unit[c] = x[c] / denom;
}

/// Logits e[j] = (q . k_j) * scale of the CLS query against the n+1 keys, each key row read once
/// as stored (no fp32 copy of the keys); with unit, also the unit patch keys (rows 1..n) into
/// unit[(j - 1) * D]. A NaN/Inf in q or k_j makes e[j] non-finite, so the keys are searched for
/// the offending value (the first in row-major order, the error it always gave) only then.
template <class Policy, class T>
void cls_logits(const Policy& policy, const tensor_view<const T, 2>& queries, const tensor_view<const T, 2>& keys,
                float scale, float* unit, std::span<float> e) {
  const index_t rows = keys.extent(0), dim = keys.extent(1);
  tokensel::detail::scratch_scope scratch;
  auto q = scratch.take<float>(static_cast<std::size_t>(dim));
  to_float_rows(queries, 0, 1, q.data(), "prumerge.queries");
  const std::size_t bytes = tokensel::detail::bytes_of<T>(rows * dim);
  if constexpr (widened_dots<T>) {
    if (unit == nullptr && keys.inner_contiguous() && dim > 0) {  // selection only: no fp32 row needed
      constexpr index_t block = tokensel::detail::f32_vector_width;  // the rows of one set of lane trees
      const index_t blocks = (rows + block - 1) / block;
      const float* q_step = q.data();
#if defined(__GNUC__)
      if constexpr (split_widened<T>) {
        auto split = scratch.take<float>(static_cast<std::size_t>(dim));
        split_query(q.data(), dim - dim % tokensel::detail::canonical_lanes, split.data());
        q_step = split.data();
      }
#endif
      tokensel::detail::parallel_for(policy, blocks, bytes, [&](index_t b) {
        const index_t j0 = b * block, count = std::min(block, rows - j0);
        const T* k[block];
        const T* next[block];
        for (index_t r = 0; r < block; ++r) {
          if (r < count) k[r] = &keys(j0 + r, 0);
          next[r] = &keys(std::min(j0 + block + r, rows - 1), 0);  // the last block refetches the last row
        }
        float dots[block];
        canonical_dots_widened(q.data(), q_step, k, static_cast<int>(count), dim, dots, next);
        for (index_t r = 0; r < count; ++r) e[j0 + r] = dots[r] * scale;
      });
      if (!tokensel::detail::all_finite(e.data(), rows)) locate_non_finite(keys, 0, rows, "prumerge.keys");
      return;
    }
  }
  tokensel::detail::parallel_for(policy, rows, bytes, [&](index_t j) {
    tokensel::detail::scratch_scope local;
    auto buffer = local.take<float>(static_cast<std::size_t>(dim));
    const float* k = tokensel::detail::row_f32(keys, j, buffer.data());
    e[j] = canonical_dot(q.data(), k, dim) * scale;
    if (unit != nullptr && j > 0) unit_row(k, dim, unit + (j - 1) * dim);
  });
  if (!tokensel::detail::all_finite(e.data(), rows)) locate_non_finite(keys, 0, rows, "prumerge.keys");
}

/// CLS-row attention over the patches from the n+1 logits (overwritten):
/// attn[j] = softmax_j'(e)[j + 1].
inline void cls_softmax(std::span<float> e, std::span<float> attn) {
  const auto n = static_cast<index_t>(attn.size());
  float m = e[0];
  for (index_t j = 0; j <= n; ++j) {
    if (!std::isfinite(e[j])) tokensel::detail::fail(errc::non_finite, tokensel::detail::at_index("prumerge.logits", j), e[j], "Q K^T overflows fp32");
    m = std::max(m, e[j]);
  }
  // Portable expf (glibc's FMA rounding everywhere): the CUDA backend reproduces these bits.
  for (index_t j = 0; j <= n; ++j) e[j] = tokensel::detail::expf_nonpositive(e[j] - m);
  const float z = tokensel::detail::canonical_sum(e.data(), n + 1);
  for (index_t j = 0; j < n; ++j) attn[j] = e[j + 1] / z;
}

struct no_features {};

/// The kept tokens of the patch attention: IQR outliers (top-Kc, descending), PruMerge+'s stride
/// grid after them, into order[0, res.count) in parity order (spatial order with mode::fixed);
/// kept[i] = 1 for a kept patch. Fills res's counts.
inline void choose_tokens(std::span<const float> attn, const config& cfg, std::span<token_index> order,
                          std::span<unsigned char> kept, result& res) {
  const auto n = static_cast<index_t>(attn.size());
  res.iqr = iqr_fences<float>(as_view(attn, "prumerge.attention"), iqr_config{.multiplier = cfg.iqr_multiplier});
  res.outliers = res.iqr.count;
  top_k<float>(as_view(attn, "prumerge.attention"), res.outliers, order, index_order::ranked);
  for (index_t r = 0; r < res.outliers; ++r) kept[order[r]] = 1;
  res.count = res.outliers;
  if (cfg.plus && res.outliers > 0) {
    res.stride = grid_stride(n, res.outliers);
    for (index_t g = 0; g <= n - 2; g += res.stride) {
      if (!kept[g]) {
        kept[g] = 1;
        order[res.count++] = static_cast<token_index>(g);
      }
    }
    res.grid = res.count - res.outliers;
  }
  if (cfg.mode == mode::fixed) {
    index_t r = 0;
    for (index_t i = 0; i < n; ++i) {
      if (kept[i]) order[r++] = static_cast<token_index>(i);
    }
  }
}

/// The m patches j != i of highest cosine[j] (ties: lower index), in ascending index order, into
/// out[0, m), 0 < m <= n - 1. Only patches at or above t, the smallest of the maxima of the m
/// blocks {j != i : j mod m = k}, can be among the m (those maxima are m distinct patches at or
/// above t), so only they get the top-k rule's 64-bit rank key (the score above the complemented
/// index: all distinct, ordered as the rule; -0 equal to +0, as in the filter) and go to
/// nth_element: about 100 of n = 576 at m = 32, where keying and selecting all n took 3.6 us per
/// kept token. The strided blocks make the maxima one vectorised pass; maxima holds m floats.
inline void nearest_ascending(const float* cosine, index_t n, index_t i, index_t m, std::span<token_index> out,
                              std::span<std::uint64_t> keys, std::span<float> maxima) {
  using rank = tokensel::detail::rank_high_first;
  float t = -std::numeric_limits<float>::infinity();
  if (n / m >= 2) {  // every block then holds a patch besides i
    float* mx = maxima.data();
    std::copy(cosine, cosine + m, mx);
    if (i < m) mx[i] = -std::numeric_limits<float>::infinity();
    for (index_t j0 = m; j0 < n; j0 += m) {
      const float* x = cosine + j0;
      const index_t width = std::min(m, n - j0), skip = i - j0;
      if (skip >= 0 && skip < width) {
        for (index_t k = 0; k < width; ++k) mx[k] = x[k] > mx[k] && k != skip ? x[k] : mx[k];
      } else {
        for (index_t k = 0; k < width; ++k) mx[k] = x[k] > mx[k] ? x[k] : mx[k];
      }
    }
    t = *std::min_element(mx, mx + m);
  }
  std::size_t count = 0;  // branch-free: whether a patch passes is a coin flip to the predictor
  for (index_t j = 0; j < n; ++j) {
    keys[count] = tokensel::detail::rank_key<rank>(cosine[j], j);
    count += static_cast<std::size_t>(j != i) & static_cast<std::size_t>(cosine[j] >= t);
  }
  std::nth_element(keys.begin(), keys.begin() + (m - 1), keys.begin() + static_cast<std::ptrdiff_t>(count), std::greater<>());
  for (index_t r = 0; r < m; ++r) out[static_cast<std::size_t>(r)] = tokensel::detail::key_index<rank>(keys[static_cast<std::size_t>(r)]);
  std::sort(out.begin(), out.begin() + m);  // accumulate in ascending index order
}

/// merged[r] = features[order[r]] + sum over its m nearest other patches (by cosine, accumulated
/// in ascending index order) of attn[j] features[j]; m = 0: the kept row itself.
template <class Policy, class Features, class Merged>
void merge_neighbours(const Policy& policy, std::span<const float> attn, const Features& features,
                      std::span<const token_index> order, std::span<const float> cosine, index_t m,
                      const Merged& merged) {
  const auto n = static_cast<index_t>(attn.size());
  const index_t d = features.extent(1);
  const auto count = static_cast<index_t>(order.size());
  const std::size_t bytes = tokensel::detail::bytes_of<float>(count * (m + 1) * d + count * n);
  tokensel::detail::parallel_for(policy, count, bytes, [&](index_t r) {
    tokensel::detail::scratch_scope local;
    auto near = local.take<token_index>(static_cast<std::size_t>(m));
    auto keys = local.take<std::uint64_t>(static_cast<std::size_t>(m > 0 ? n : 0));
    auto maxima = local.take<float>(static_cast<std::size_t>(m));
    auto acc = local.take_zeroed<float>(static_cast<std::size_t>(d));
    auto buffer = local.take<float>(static_cast<std::size_t>(d));
    const index_t i = order[r];
    if (m > 0) {
      nearest_ascending(cosine.data() + r * n, n, i, m, near, keys, maxima);
      for (index_t t = 0; t < m; ++t) {
        const index_t j = near[t];
        const float w = attn[j];
        const float* x = tokensel::detail::row_f32(features, j, buffer.data());
        for (index_t col = 0; col < d; ++col) acc[col] += w * x[col];
      }
    }
    const float* xi = tokensel::detail::row_f32(features, i, buffer.data());
    for (index_t col = 0; col < d; ++col) acc[col] = xi[col] + acc[col];
    tokensel::detail::store_row(merged, r, acc.data());
  });
}

/// The extra row: sum over the patches not kept of attn[j] features[j], into merged[row].
template <class Features, class Merged>
void extra_row(std::span<const float> attn, const Features& features, std::span<const unsigned char> kept, index_t row,
               const Merged& merged, tokensel::detail::scratch_scope& scratch) {
  const index_t d = features.extent(1);
  auto acc = scratch.take_zeroed<float>(static_cast<std::size_t>(d));
  auto buffer = scratch.take<float>(static_cast<std::size_t>(d));
  for (index_t j = 0; j < static_cast<index_t>(attn.size()); ++j) {
    if (kept[j]) continue;
    const float w = attn[j];
    const float* x = tokensel::detail::row_f32(features, j, buffer.data());
    for (index_t col = 0; col < d; ++col) acc[col] += w * x[col];
  }
  tokensel::detail::store_row(merged, row, acc.data());
}

/// The output rows of the kept tokens order[0, res.count): copied (no merge), or merged with
/// their nearest neighbours, then the extra row.
template <class Policy, class Features, class Merged>
void write_rows(const Policy& policy, std::span<const float> attn, const float* unit_keys, index_t dim,
                const Features& features, const config& cfg, std::span<const token_index> order,
                std::span<const unsigned char> kept, const result& res, const Merged& merged,
                tokensel::detail::scratch_scope& scratch) {
  const auto n = static_cast<index_t>(attn.size());
  const auto chosen = order.first(static_cast<std::size_t>(res.count));
  if (!cfg.merge) {
    auto buffer = scratch.take<float>(static_cast<std::size_t>(features.extent(1)));
    for (index_t r = 0; r < res.count; ++r) tokensel::detail::store_row(merged, r, tokensel::detail::row_f32(features, order[r], buffer.data()));
    return;
  }
  const index_t m = res.neighbours;
  auto cosine = scratch.take<float>(static_cast<std::size_t>(m > 0 ? res.count * n : 0));
  if (m > 0) tokensel::detail::cosine_rows(policy, unit_keys, dim, n, chosen, cosine);
  merge_neighbours(policy, attn, features, chosen, cosine, m, merged);
  if (res.extra_token) extra_row(attn, features, kept, res.count, merged, scratch);
}

/// Selection (and, when features are given, merge) from the patch attention a[n] (finite) and,
/// for the merge, the unit patch keys [n, dim].
template <class Policy, class Features, class Merged>
result run(const Policy& policy, std::span<const float> attn, const float* unit_keys, index_t dim,
           const Features& features, const config& cfg, std::span<token_index> out, const Merged& merged) {
  constexpr bool with_features = !std::is_same_v<Features, no_features>;
  const auto n = static_cast<index_t>(attn.size());
  result res;
  if (n == 0) return res;

  tokensel::detail::scratch_scope scratch;
  // order[0, count): kept indices in parity order (top-Kc descending, then grid ascending).
  auto order = scratch.take<token_index>(static_cast<std::size_t>(n));
  auto kept = scratch.take_zeroed<unsigned char>(static_cast<std::size_t>(n));
  choose_tokens(attn, cfg, order, kept, res);
  if constexpr (with_features) {
    res.extra_token = cfg.merge && cfg.extra_token;
    if (cfg.merge) res.neighbours = std::min(cfg.neighbours, n - 1);
  }

  // Every capacity is checked before anything is written.
  tokensel::detail::check_capacity(out.size(), res.count, "prumerge.out.size()");
  if constexpr (with_features) {
    if (merged.extent(0) < res.rows()) {
      tokensel::detail::fail(errc::shape_mismatch, "prumerge.merged.extent(0)", merged.extent(0),
                             "below the " + std::to_string(res.rows()) + " rows needed (size it with max_rows)");
    }
  }
  std::copy(order.begin(), order.begin() + res.count, out.begin());
  if constexpr (with_features) write_rows(policy, attn, unit_keys, dim, features, cfg, order, kept, res, merged, scratch);
  return res;
}

/// Q/K path: the logits (and, for the merge, the unit patch keys) in one pass over the keys,
/// the CLS attention, then runs.
template <class Policy, class T, class Features, class Merged>
result run_qk(const Policy& policy, const tensor_view<const T, 2>& queries, const tensor_view<const T, 2>& keys,
              const Features& features, const config& cfg, std::span<token_index> out, const Merged& merged) {
  const index_t n = keys.extent(0) - 1;
  const index_t dim = keys.extent(1);
  const bool need_keys = !std::is_same_v<Features, no_features> && cfg.merge;
  tokensel::detail::scratch_scope scratch;
  auto unit = scratch.take<float>(static_cast<std::size_t>(need_keys ? n * dim : 0));
  auto e = scratch.take<float>(static_cast<std::size_t>(n + 1));
  auto attn = scratch.take<float>(static_cast<std::size_t>(n));
  cls_logits(policy, queries, keys, softmax_scale(cfg, dim), need_keys ? unit.data() : nullptr, e);
  cls_softmax(e, attn);
  return run(policy, std::span<const float>(attn), unit.data(), dim, features, cfg, out, merged);
}

/// CLS-row path: checks and widens the given attention, normalises the patch keys, then runs.
template <class Policy, class A, class K, class Features, class Merged>
result run_attention(const Policy& policy, const tensor_view<const A, 1>& attention,
                     const tensor_view<const K, 2>* patch_keys, const Features& features, const config& cfg,
                     std::span<token_index> out, const Merged& merged) {
  const index_t n = attention.extent(0);
  tokensel::detail::scratch_scope scratch;
  auto attn = scratch.take<float>(static_cast<std::size_t>(n));
  for (index_t j = 0; j < n; ++j) {
    const float v = to_float(attention(j));
    if (!std::isfinite(v)) tokensel::detail::fail(errc::non_finite, tokensel::detail::at_index("prumerge.attention", j), v, "scores must be finite");
    attn[j] = v;
  }
  float* unit = nullptr;
  index_t dim = 0;
  if (patch_keys != nullptr && cfg.merge) {
    dim = patch_keys->extent(1);
    unit = scratch.take<float>(static_cast<std::size_t>(n * dim)).data();
    tokensel::detail::parallel_for(policy, n, tokensel::detail::bytes_of<K>(n * dim), [&](index_t j) {
      tokensel::detail::scratch_scope local;
      auto buffer = local.take<float>(static_cast<std::size_t>(dim));
      const float* k = tokensel::detail::row_f32(*patch_keys, j, buffer.data());
      if (!tokensel::detail::all_finite(k, dim)) locate_non_finite(*patch_keys, j, 1, "prumerge.patch_keys");
      unit_row(k, dim, unit + j * dim);
    });
  }
  return run(policy, std::span<const float>(attn), unit, dim, features, cfg, out, merged);
}

}  // namespace detail

/// Most kept indices n patches can give under cfg (the count itself is data-dependent).
/// PruMerge: the most IQR outliers of n values, n - 1 - floor(3(n-1)/4) (144 for n = 576).
/// PruMerge+: the largest Kc + grid size over the possible Kc, capped at n (loose: up to n).
inline index_t max_count(index_t n, const config& cfg) {
  validate(cfg);
  if (n < 0) tokensel::detail::fail(errc::invalid_argument, "prumerge.n", n, "must be >= 0");
  const index_t kmax = iqr_max_count(n, iqr_config{.multiplier = cfg.iqr_multiplier});
  if (!cfg.plus) return kmax;
  // Descending, stopping at the cap n: the same maximum, reached at once for large n (the loop
  // from kc = 1 took O(n) steps, a hang for huge n).
  index_t best = kmax;
  for (index_t kc = kmax; kc >= 1 && best < n; --kc) {
    const index_t grid = detail::grid_size(n, grid_stride(n, kc));
    best = std::max(best, grid >= n - kc ? n : kc + grid);  // min(n, kc + grid) without overflow
  }
  return best;
}

/// Rows of the merged-feature output to allocate: max_count plus the extra row (when merging).
inline index_t max_rows(index_t n, const config& cfg) {
  const index_t k = max_count(n, cfg);
  const index_t extra = (n > 0 && cfg.merge && cfg.extra_token) ? 1 : 0;
  if (k > std::numeric_limits<index_t>::max() - extra) {
    tokensel::detail::fail(errc::invalid_argument, "prumerge.n", n, "too large: the row count with the extra row overflows");
  }
  return k + extra;
}

/// PruMerge keeps an adaptive count (IQR outliers of the CLS attention): no budget applies.
[[nodiscard]] inline config with_budget(const budget& b, index_t, config = {}) {
  tokensel::detail::fail(errc::invalid_argument, "prumerge.budget", b.describe(),
                         "PruMerge is adaptive (IQR outliers of the CLS attention): a budget does not apply");
}

/// What PruMerge reads: the CLS query row and the keys of the layer AFTER the feature layer (the
/// official code takes the last CLIP layer's Q and K of the features, hidden_states[-2], without
/// running that layer further); with merge, the hidden states it folds into the kept rows. The
/// count is adaptive, at most max_count(n).
[[nodiscard]] inline method_requirements requirements(const config& cfg, const model_shape& shape) {
  tokensel::detail::check_feature_layer(shape, "prumerge");
  if (!shape.cls) tokensel::detail::fail(errc::invalid_argument, "prumerge.model", "needs a CLS token (its attention row ranks the tokens)");
  if (shape.encoder_layers != 0 && shape.feature_layer + 1 >= shape.encoder_layers) {
    tokensel::detail::fail(errc::invalid_argument, "prumerge.shape.feature_layer", shape.feature_layer,
                           "must be below the last of the " + std::to_string(shape.encoder_layers) +
                               " encoder layers (PruMerge reads the layer after it)");
  }
  method_requirements r;
  r.layers = {shape.feature_layer + 1, shape.feature_layer + 1};
  r.cls_row = true;
  r.keys = true;
  r.hidden_states = cfg.merge;
  r.adaptive = true;
  r.keep = max_count(shape.visual_tokens, cfg);
  r.output_rows = max_rows(shape.visual_tokens, cfg);
  return r;
}

/// The CLS row of softmax(Q K^T * scale) over the n patches (columns 1..n of row 0; the softmax
/// runs over all n+1 keys). queries [n+1 or 1, D] (row 0 = CLS), keys [n+1, D], out [n].
/// scale <= 0 means 1/sqrt(D).
template <cpu_policy Policy, element T>
void cls_attention(const Policy& policy, const matrix_view<const T>& queries, const matrix_view<const T>& keys,
                   double scale, const vector_view<float>& out) {
  detail::check_qk(queries, keys);
  if (!std::isfinite(scale)) tokensel::detail::fail(errc::invalid_argument, "prumerge.scale", scale, "must be finite");
  const index_t n = keys.extent(0) - 1;
  const index_t dim = keys.extent(1);
  detail::check_extent(out.extent(0), n, "prumerge.cls_attention.out.extent(0)");
  tokensel::detail::scratch_scope scratch;
  auto e = scratch.take<float>(static_cast<std::size_t>(n + 1));
  auto attn = scratch.take<float>(static_cast<std::size_t>(n));
  const double s = scale > 0.0 ? scale : 1.0 / std::sqrt(static_cast<double>(dim));
  detail::cls_logits(policy, queries, keys, static_cast<float>(s), nullptr, e);
  detail::cls_softmax(e, attn);
  for (index_t j = 0; j < n; ++j) out(j) = attn[j];
}

// ---- single sample ------------------------------------------------------------------------

/// Selection only, from Q/K of the last CLIP layer: queries [n+1 or 1, D] (row 0 = CLS), keys
/// [n+1, D]. Writes result.count patch indices (max_count(n) fit) in the mode's order.
template <cpu_policy Policy, element T>
result select(const Policy& policy, const matrix_view<const T>& queries, const matrix_view<const T>& keys,
              const config& cfg, std::span<token_index> out) {
  validate(cfg);
  detail::check_qk(queries, keys);
  return detail::run_qk(policy, queries, keys, detail::no_features{}, cfg, out, detail::no_features{});
}

/// Selection and merge: features [n, d] (hidden_states[-2] without CLS), merged [>= rows, d]
/// (max_rows(n) fit). Row r of merged is the (merged) feature of out[r]; row count is the extra
/// token when result.extra_token. Rows beyond result.rows() are left untouched.
template <cpu_policy Policy, element T, element F, element O>
result select(const Policy& policy, const matrix_view<const T>& queries, const matrix_view<const T>& keys,
              const matrix_view<const F>& features, const config& cfg, std::span<token_index> out,
              const matrix_view<O>& merged) {
  validate(cfg);
  detail::check_qk(queries, keys);
  detail::check_features(features, merged, keys.extent(0) - 1);
  if (cfg.merge) detail::check_finite_rows(features, "prumerge.features");
  return detail::run_qk(policy, queries, keys, features, cfg, out, merged);
}

/// Selection only, from an already computed CLS attention row over the patches [n] (softmax over
/// all n+1 tokens, CLS column dropped afterwards, as the official code slices it).
template <cpu_policy Policy, element A>
result select_from_attention(const Policy& policy, const vector_view<const A>& attention, const config& cfg,
                             std::span<token_index> out) {
  validate(cfg);
  return detail::run_attention(policy, attention, static_cast<const matrix_view<const A>*>(nullptr),
                               detail::no_features{}, cfg, out, detail::no_features{});
}

/// Selection and merge from a CLS attention row [n], the patch keys [n, D] (CLS row excluded; used
/// only when cfg.merge) and the features [n, d].
template <cpu_policy Policy, element A, element K, element F, element O>
result select_from_attention(const Policy& policy, const vector_view<const A>& attention,
                             const matrix_view<const K>& patch_keys, const matrix_view<const F>& features,
                             const config& cfg, std::span<token_index> out, const matrix_view<O>& merged) {
  validate(cfg);
  const index_t n = attention.extent(0);
  detail::check_features(features, merged, n);
  if (cfg.merge) {
    detail::check_extent(patch_keys.extent(0), n, "prumerge.patch_keys.extent(0)");
    if (n > 0 && patch_keys.extent(1) < 1) {
      tokensel::detail::fail(errc::shape_mismatch, "prumerge.patch_keys.extent(1)", patch_keys.extent(1), "must be >= 1");
    }
    detail::check_finite_rows(features, "prumerge.features");
  }
  return detail::run_attention(policy, attention, &patch_keys, features, cfg, out, merged);
}

// ---- batches ------------------------------------------------------------------------------

/// One sample's last-layer projections (sizes may differ between samples).
template <element T>
struct qk_input {
  matrix_view<const T> queries;  ///< [n+1 or 1, D]
  matrix_view<const T> keys;     ///< [n+1, D]
};

/// Ragged batch, selection only: out.indices rows need max_count(n_b) entries.
template <cpu_policy Policy, element T>
void select(const Policy& policy, std::span<const qk_input<T>> batch, const config& cfg, const selection_batch& out,
            std::span<result> results = {}) {
  validate(cfg);
  tokensel::detail::run_batch(policy, static_cast<index_t>(batch.size()), out, results, "prumerge",
                              [&](index_t b, std::span<token_index> row, const auto& inner) {
                                return select(inner, batch[b].queries, batch[b].keys, cfg, row);
                              });
}

/// Ragged batch with merge: features[b] [n_b, d_b], merged[b] [>= max_rows(n_b), d_b].
template <cpu_policy Policy, element T, element F, element O>
void select(const Policy& policy, std::span<const qk_input<T>> batch, std::span<const matrix_view<const F>> features,
            const config& cfg, const selection_batch& out, std::span<const matrix_view<O>> merged,
            std::span<result> results = {}) {
  validate(cfg);
  detail::check_extent(static_cast<index_t>(features.size()), static_cast<index_t>(batch.size()), "prumerge.features.size()");
  detail::check_extent(static_cast<index_t>(merged.size()), static_cast<index_t>(batch.size()), "prumerge.merged.size()");
  tokensel::detail::run_batch(policy, static_cast<index_t>(batch.size()), out, results, "prumerge",
                              [&](index_t b, std::span<token_index> row, const auto& inner) {
                                return select(inner, batch[b].queries, batch[b].keys, features[b], cfg, row, merged[b]);
                              });
}

/// Dense batch with merge: queries [B, n+1 or 1, D], keys [B, n+1, D], features [B, n, d],
/// merged [B, >= max_rows(n), d].
template <cpu_policy Policy, element T, element F, element O>
void select(const Policy& policy, const tensor_view<const T, 3>& queries, const tensor_view<const T, 3>& keys,
            const tensor_view<const F, 3>& features, const config& cfg, const selection_batch& out,
            const tensor_view<O, 3>& merged, std::span<result> results = {}) {
  validate(cfg);
  const index_t batch = keys.extent(0);
  detail::check_extent(queries.extent(0), batch, "prumerge.queries.extent(0)");
  detail::check_extent(features.extent(0), batch, "prumerge.features.extent(0)");
  detail::check_extent(merged.extent(0), batch, "prumerge.merged.extent(0)");
  tokensel::detail::run_batch(policy, batch, out, results, "prumerge",
                              [&](index_t b, std::span<token_index> row, const auto& inner) {
                                return select(inner, queries[b], keys[b], features[b], cfg, row, merged[b]);
                              });
}

/// Dense batch from CLS attention rows [B, n], selection only.
template <cpu_policy Policy, element A>
void select_from_attention(const Policy& policy, const score_view<A>& attention, const config& cfg,
                           const selection_batch& out, std::span<result> results = {}) {
  validate(cfg);
  tokensel::detail::run_batch(policy, attention.extent(0), out, results, "prumerge",
                              [&](index_t b, std::span<token_index> row, const auto& inner) {
                                return select_from_attention(inner, attention[b], cfg, row);
                              });
}

}  // namespace prumerge
TOKENSEL_END_NAMESPACE
