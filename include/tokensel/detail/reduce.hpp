// tokensel internals: the canonical fp32 summation order.
//
// Bit-identical CPU and CUDA results need one summation order that both backends follow. A
// contiguous sum of n values uses 32 lanes: lane l accumulates x[l], x[l+32], x[l+64], ... in
// ascending order, then the lanes are combined pairwise as a warp shuffle-down tree does
// (l += l+16, then l+8, l+4, l+2, l+1). On the CPU the 32 independent lanes vectorise; on the GPU
// they are the 32 threads of a warp. Column sums (down the rows of a row-major map) are plain
// ascending loops per column, which both backends do the same way.
#pragma once

#include <array>
#include <cstring>

#include "tokensel/core/config.hpp"
#include "tokensel/core/element.hpp"
#include "tokensel/detail/arith.hpp"

TOKENSEL_BEGIN_NAMESPACE
namespace detail {

/// Combines 32 lane partials in the warp-tree order.
inline float combine_lanes(std::array<float, canonical_lanes>& lane) noexcept { return combine_lane_tree(lane.data()); }

/// Canonical sum of f(x[i * stride]) for i in [0, n), f widening to fp32.
template <class T, class F>
inline float canonical_sum(const T* x, index_t n, index_t stride, F&& f) noexcept {
  std::array<float, canonical_lanes> lane{};
  index_t i = 0;
  if (stride == 1) {
    for (; i + canonical_lanes <= n; i += canonical_lanes) {
      for (int l = 0; l < canonical_lanes; ++l) lane[l] += f(x[i + l]);
    }
  } else {
    for (; i + canonical_lanes <= n; i += canonical_lanes) {
      for (int l = 0; l < canonical_lanes; ++l) lane[l] += f(x[(i + l) * stride]);
    }
  }
  for (int l = 0; i + l < n; ++l) lane[l] += f(x[(i + l) * stride]);
  return combine_lanes(lane);
}

template <class T>
inline float canonical_sum(const T* x, index_t n, index_t stride = 1) noexcept {
  return canonical_sum(x, n, stride, [](T v) { return to_float(v); });
}

/// Dot product of two contiguous fp32 rows in the canonical order (lane l accumulates the
/// products a[i] * b[i] for i = l mod 32, each product rounded before the add).
inline float canonical_dot(const float* a, const float* b, index_t n) noexcept {
  std::array<float, canonical_lanes> lane{};
  index_t i = 0;
  for (; i + canonical_lanes <= n; i += canonical_lanes) {
    for (int l = 0; l < canonical_lanes; ++l) lane[l] += a[i + l] * b[i + l];
  }
  for (int l = 0; i + l < n; ++l) lane[l] += a[i + l] * b[i + l];
  return combine_lanes(lane);
}

/// combine_lane_tree with its widths fixed, so that the compiler vectorises the wide steps (the
/// same adds in the same order: lane l += lane l + w, w = 16, 8, 4, 2, 1).
inline float combine_lanes_unrolled(float* lane) noexcept {
  for (int l = 0; l < 16; ++l) lane[l] += lane[l + 16];
  for (int l = 0; l < 8; ++l) lane[l] += lane[l + 8];
  for (int l = 0; l < 4; ++l) lane[l] += lane[l + 4];
  for (int l = 0; l < 2; ++l) lane[l] += lane[l + 2];
  return lane[0] + lane[1];
}
static_assert(canonical_lanes == 32, "combine_lanes_unrolled spells out the 32-lane tree");

/// Rows of a and b per tile of canonical_dot_tile: 4 x 6 (24 accumulators) with 32 vector
/// registers (AVX-512), 3 x 4 (12) with 16.
#if defined(__AVX512F__)
inline constexpr int dot_tile_rows = 4, dot_tile_cols = 6;
#else
inline constexpr int dot_tile_rows = 3, dot_tile_cols = 4;
#endif

/// out[r * out_stride + c] = canonical_dot(a[r], b[c], n) for r < rows <= dot_tile_rows and
/// c < cols <= dot_tile_cols: the same bits, but each loaded vector feeds several dot products
/// (a register-blocked product, which the one-pair loop cannot be: it does two loads per
/// multiply-add). Lane l of every dot still adds its products i = l mod 32 in ascending order;
/// only which lanes advance together changes, and lanes are independent until the tree.
inline void canonical_dot_tile(const float* const* a, int rows, const float* const* b, int cols, index_t n,
                               float* out, index_t out_stride) noexcept {
  constexpr int R = dot_tile_rows, C = dot_tile_cols, L = canonical_lanes;
  const float* pa[R];
  const float* pb[C];
  for (int r = 0; r < R; ++r) pa[r] = a[r < rows ? r : 0];  // padding rows repeat row 0, never stored
  for (int c = 0; c < C; ++c) pb[c] = b[c < cols ? c : 0];
  float lane[R][C][L];
  const index_t full = n - n % L;
#if defined(__GNUC__)
#if defined(__AVX512F__)
  constexpr int W = 16;
#else
  constexpr int W = 8;
#endif
  using vec = float __attribute__((vector_size(W * sizeof(float))));
  using vec_unaligned = float __attribute__((vector_size(W * sizeof(float)), aligned(4), may_alias));
  // The pragmas unroll the tile fully so that the accumulators live in registers.
  for (int g = 0; g < L; g += W) {  // lanes g .. g + W - 1 of every dot
    vec acc[R][C];
TOKENSEL_UNROLL(8)
    for (int r = 0; r < R; ++r) {
TOKENSEL_UNROLL(8)
      for (int c = 0; c < C; ++c) acc[r][c] = vec{};
    }
    for (index_t i = g; i < full; i += L) {
      vec va[R], vb[C];
TOKENSEL_UNROLL(8)
      for (int r = 0; r < R; ++r) va[r] = *reinterpret_cast<const vec_unaligned*>(pa[r] + i);
TOKENSEL_UNROLL(8)
      for (int c = 0; c < C; ++c) vb[c] = *reinterpret_cast<const vec_unaligned*>(pb[c] + i);
TOKENSEL_UNROLL(8)
      for (int r = 0; r < R; ++r) {
TOKENSEL_UNROLL(8)
        for (int c = 0; c < C; ++c) acc[r][c] += va[r] * vb[c];
      }
    }
TOKENSEL_UNROLL(8)
    for (int r = 0; r < R; ++r) {
TOKENSEL_UNROLL(8)
      for (int c = 0; c < C; ++c) std::memcpy(&lane[r][c][g], &acc[r][c], sizeof(vec));
    }
  }
#else
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      for (int l = 0; l < L; ++l) lane[r][c][l] = 0.0f;
      for (index_t i = 0; i < full; i += L) {
        for (int l = 0; l < L; ++l) lane[r][c][l] += pa[r][i + l] * pb[c][i + l];
      }
    }
  }
#endif
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) {
      for (int l = 0; full + l < n; ++l) lane[r][c][l] += pa[r][full + l] * pb[c][full + l];
      out[r * out_stride + c] = combine_lanes_unrolled(lane[r][c]);
    }
  }
}

/// x[0, n) /= count, count >= 1. A power-of-two count multiplies by its reciprocal instead: x / 2^k
/// and x * 2^-k round the same exact value (2^-k is exact in fp32 for any index_t count), so the
/// bits are the divide's and the divides are gone (they were a third of a 2 x 2 pooling call).
inline void divide_by_count(float* x, index_t n, index_t count) noexcept {
  const auto cnt = static_cast<float>(count);
  if (count > 0 && (count & (count - 1)) == 0) {
    const float inv = 1.0f / cnt;
    for (index_t c = 0; c < n; ++c) x[c] = x[c] * inv;
  } else {
    for (index_t c = 0; c < n; ++c) x[c] = x[c] / cnt;
  }
}

}  // namespace detail
TOKENSEL_END_NAMESPACE
