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
#include <utility>

#include "tokensel/core/config.hpp"
#include "tokensel/core/element.hpp"
#include "tokensel/detail/arith.hpp"
#include "tokensel/detail/widen.hpp"

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

// The vector tile needs __builtin_shufflevector, which nvcc's front end does not parse: CUDA
// translation units take the plain loops for host-side tiles. Both bodies compute the same bits,
// so whichever definition the linker keeps in a mixed program gives the same results.
#if defined(__GNUC__) && !defined(__CUDACC__)
#define TOKENSEL_DETAIL_VECTOR_DOT_TILE 1
#else
#define TOKENSEL_DETAIL_VECTOR_DOT_TILE 0
#endif

#if TOKENSEL_DETAIL_VECTOR_DOT_TILE
/// The lane tree of several dots at once, across vectors. A tree step at width w pairs two
/// vectors that each hold W / (2w) dots of 2w tree lanes; the result holds twice the dots, w lanes
/// each: output position p is dot p / w (the first vector's dots first), lane q = p % w, and gets
/// lane q + lane q + w, the warp tree's add. `upper` picks the lane q + w operand.
constexpr int lane_tree_source(int p, int w, bool upper) {
  constexpr int W = f32_vector_width;
  const int per_vector = W / (2 * w), dot = p / w;
  return (dot < per_vector ? 0 : W) + (dot % per_vector) * 2 * w + p % w + (upper ? w : 0);
}
template <int w, std::size_t... P>
inline void lane_tree_step(const f32_vector& x, const f32_vector& y, f32_vector& out, std::index_sequence<P...>) noexcept {
  out = __builtin_shufflevector(x, y, lane_tree_source(static_cast<int>(P), w, false)...) +
        __builtin_shufflevector(x, y, lane_tree_source(static_cast<int>(P), w, true)...);
}
/// v[k], k < W: tree lanes 0 .. W-1 of dot k (the whole-vector steps done). Leaves the W sums in
/// v[0], dot k's in lane k, from the same adds as combine_lane_tree. (Vectors go by reference:
/// without AVX a 32-byte vector returned by value changes the ABI.)
template <int w = f32_vector_width / 2>
inline void reduce_lane_trees(f32_vector* v, int count = f32_vector_width) noexcept {
  if constexpr (w > 0) {
    for (int k = 0; k < count / 2; ++k) {
      lane_tree_step<w>(v[2 * k], v[2 * k + 1], v[k], std::make_index_sequence<f32_vector_width>{});
    }
    reduce_lane_trees<w / 2>(v, count / 2);
  }
}
#endif

#if TOKENSEL_DETAIL_VECTOR_DOT_TILE
/// tails[r] = row r's values [full, n) then zeros, 32 in all, for r < count.
inline void pad_tails(const float* const* row, int count, index_t full, index_t n, float (*tails)[canonical_lanes]) noexcept {
  for (int r = 0; r < count; ++r) {
    for (int l = 0; l < canonical_lanes; ++l) tails[r][l] = full + l < n ? row[r][full + l] : 0.0f;
  }
}

/// The lane trees of a tile's dots from their lane vectors (lanes[g][r * C + c]: lanes g W ..
/// g W + W - 1 of dot (r, c)): the whole-vector steps (widths 16 down to W: lane l += lane l + w),
/// then the rest for W dots at a time across vectors; out[r * out_stride + c] for the real dots.
inline void finish_dot_tile(f32_vector (*lanes)[dot_tile_rows * dot_tile_cols], int rows, int cols, float* out,
                            index_t out_stride) noexcept {
  constexpr int C = dot_tile_cols, D = dot_tile_rows * dot_tile_cols, W = f32_vector_width, V = canonical_lanes / W;
  for (int v = V / 2; v >= 1; v /= 2) {
    for (int k = 0; k < v; ++k) {
      for (int d = 0; d < D; ++d) lanes[k][d] += lanes[k + v][d];
    }
  }
  for (int d0 = 0; d0 < D; d0 += W) {
    f32_vector group[W];
    const int count = D - d0 < W ? D - d0 : W;
    for (int k = 0; k < W; ++k) group[k] = k < count ? lanes[0][d0 + k] : f32_vector{};
    reduce_lane_trees(group);
    for (int k = 0; k < count; ++k) {
      const int r = (d0 + k) / C, c = (d0 + k) % C;
      if (r < rows && c < cols) out[r * out_stride + c] = group[0][k];
    }
  }
}
#endif

/// out[r * out_stride + c] = canonical_dot(a[r], b[c], n) for r < rows <= dot_tile_rows and
/// c < cols <= dot_tile_cols: the same bits, but each loaded vector feeds several dot products
/// (a register-blocked product, which the one-pair loop cannot be: it does two loads per
/// multiply-add). Lane l of every dot still adds its products i = l mod 32 in ascending order;
/// only which lanes advance together changes, and lanes are independent until the tree, which
/// runs for W dots at a time across vectors (the one-dot tree through memory cost as much as
/// 300 of the D multiply-adds per dot).
inline void canonical_dot_tile(const float* const* a, int rows, const float* const* b, int cols, index_t n,
                               float* out, index_t out_stride) noexcept {
  constexpr int R = dot_tile_rows, C = dot_tile_cols, L = canonical_lanes;
  const float* pa[R];
  const float* pb[C];
  for (int r = 0; r < R; ++r) pa[r] = a[r < rows ? r : 0];  // padding rows repeat row 0, never stored
  for (int c = 0; c < C; ++c) pb[c] = b[c < cols ? c : 0];
  const index_t full = n - n % L;
#if TOKENSEL_DETAIL_VECTOR_DOT_TILE
  constexpr int W = f32_vector_width, V = L / W;  // V vectors per dot
  using vec = f32_vector;
  using vec_unaligned = f32_vector_unaligned;
  // The last partial step reads zero-padded copies: a padded product is +0, and a lane plus +0 is
  // the lane (a lane starts at +0 and so is never -0), so the padding adds nothing.
  const bool tail = full < n;
  alignas(64) float tail_a[R][L];
  alignas(64) float tail_b[C][L];
  if (tail) {
    pad_tails(pa, R, full, n, tail_a);
    pad_tails(pb, C, full, n, tail_b);
  }
  vec lanes[V][R * C];
  // The pragmas unroll the tile fully so that the accumulators live in registers.
  for (int g = 0; g < V; ++g) {  // lanes g W .. g W + W - 1 of every dot
    vec acc[R][C];
TOKENSEL_UNROLL(8)
    for (int r = 0; r < R; ++r) {
TOKENSEL_UNROLL(8)
      for (int c = 0; c < C; ++c) acc[r][c] = vec{};
    }
    const auto step = [&acc](const float* const* xa, const float* const* xb, index_t i) __attribute__((always_inline)) {
      vec va[R], vb[C];
TOKENSEL_UNROLL(8)
      for (int r = 0; r < R; ++r) va[r] = *reinterpret_cast<const vec_unaligned*>(xa[r] + i);
TOKENSEL_UNROLL(8)
      for (int c = 0; c < C; ++c) vb[c] = *reinterpret_cast<const vec_unaligned*>(xb[c] + i);
TOKENSEL_UNROLL(8)
      for (int r = 0; r < R; ++r) {
TOKENSEL_UNROLL(8)
        for (int c = 0; c < C; ++c) acc[r][c] += va[r] * vb[c];
      }
    };
    for (index_t i = g * W; i < full; i += L) step(pa, pb, i);
    if (tail) {
      const float* ta[R];
      const float* tb[C];
      for (int r = 0; r < R; ++r) ta[r] = tail_a[r];
      for (int c = 0; c < C; ++c) tb[c] = tail_b[c];
      step(ta, tb, g * W);
    }
TOKENSEL_UNROLL(8)
    for (int r = 0; r < R; ++r) {
TOKENSEL_UNROLL(8)
      for (int c = 0; c < C; ++c) lanes[g][r * C + c] = acc[r][c];
    }
  }
  finish_dot_tile(lanes, rows, cols, out, out_stride);
#else
  float lane[R][C][L];
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      for (int l = 0; l < L; ++l) lane[r][c][l] = 0.0f;
      for (index_t i = 0; i < full; i += L) {
        for (int l = 0; l < L; ++l) lane[r][c][l] += pa[r][i + l] * pb[c][i + l];
      }
    }
  }
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) {
      for (int l = 0; full + l < n; ++l) lane[r][c][l] += pa[r][full + l] * pb[c][full + l];
      out[r * out_stride + c] = combine_lanes_unrolled(lane[r][c]);
    }
  }
#endif
}

/// x / count, count >= 1, for a scalar or a vector of fp32. A power-of-two count multiplies by
/// its reciprocal instead: x / 2^k and x * 2^-k round the same exact value (2^-k is exact in fp32
/// for any index_t count), so the bits are the divide's and the divides are gone (they were a
/// third of a 2 x 2 pooling call).
class count_divisor {
 public:
  explicit count_divisor(index_t count) noexcept
      : count_(static_cast<float>(count)), inverse_(1.0f / count_), power_of_two_(count > 0 && (count & (count - 1)) == 0) {}
  template <class X>
  X operator()(X x) const noexcept { return power_of_two_ ? x * inverse_ : x / count_; }
  bool power_of_two() const noexcept { return power_of_two_; }

 private:
  float count_, inverse_;
  bool power_of_two_;
};

/// x[0, n) /= count (count_divisor's rule), count >= 1.
inline void divide_by_count(float* x, index_t n, index_t count) noexcept {
  const count_divisor divide(count);
  // One loop per case: with the test inside, GCC computes both the product and the quotient of
  // every vector and blends them (the divides it was meant to avoid).
  if (divide.power_of_two()) {
    for (index_t c = 0; c < n; ++c) x[c] = divide(x[c]);
  } else {
    for (index_t c = 0; c < n; ++c) x[c] = divide(x[c]);
  }
}

}  // namespace detail
TOKENSEL_END_NAMESPACE
