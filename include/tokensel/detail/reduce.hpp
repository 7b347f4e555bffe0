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

}  // namespace detail
TOKENSEL_END_NAMESPACE
