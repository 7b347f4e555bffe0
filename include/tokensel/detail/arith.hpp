// tokensel internals: the arithmetic both backends must agree on bit for bit, written once.
//
// Every rule whose result the CPU and CUDA backends must reproduce identically lives here as a
// host/device function: the rounded operations, the tie rules, the canonical lane tree, the
// population variance of FoPru, numpy's lerp, quantile positions and IQR fences. The CPU headers
// (stats/, select/) and the CUDA kernels (cuda/tokensel/cuda/detail/arith.cuh re-exports these
// names into cuda_detail) call the same definitions, so a rule changes in one place.
//
// Rounding: on the device the operations are the round-to-nearest intrinsics (__fadd_rn, ...),
// which nvcc never contracts into an FMA whatever -fmad says. On the host they are the plain
// operators, and a double product that feeds an add goes through a volatile so that no
// -ffp-contract setting can fuse it (numpy rounds the product and the sum separately); the
// library's own targets compile with -ffp-contract=off as well (TOKENSEL_STRICT_FP).
#pragma once

#include <cmath>

#include "tokensel/core/config.hpp"

#if defined(__CUDACC__)
#define TOKENSEL_PORTABLE_HD __host__ __device__ __forceinline__
#else
#define TOKENSEL_PORTABLE_HD inline
#endif

TOKENSEL_BEGIN_NAMESPACE
namespace detail {

// ---- rounded operations -------------------------------------------------------------------------

TOKENSEL_PORTABLE_HD float fadd(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
TOKENSEL_PORTABLE_HD float fsub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
TOKENSEL_PORTABLE_HD float fmul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
TOKENSEL_PORTABLE_HD float fdiv(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
TOKENSEL_PORTABLE_HD double dadd(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
TOKENSEL_PORTABLE_HD double dsub(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
TOKENSEL_PORTABLE_HD double dmul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  volatile double product = a * b;  // rounded on its own: never fused into the caller's add
  return product;
#endif
}
TOKENSEL_PORTABLE_HD double ddiv(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}

TOKENSEL_PORTABLE_HD bool finite_f32(float x) {
#if defined(__CUDA_ARCH__)
  return isfinite(x);
#else
  return std::isfinite(x);
#endif
}

// ---- comparisons and tie rules ------------------------------------------------------------------

/// max over heads that keeps a NaN (a NaN head makes the reduced entry NaN, as torch.max does).
TOKENSEL_PORTABLE_HD float max_nan(float a, float b) { return (b > a || b != b) ? b : a; }

/// std::max(a, b) = (a < b) ? b : a, spelled out so both backends pick the same operand.
TOKENSEL_PORTABLE_HD float std_max(float a, float b) { return (a < b) ? b : a; }
TOKENSEL_PORTABLE_HD double std_max(double a, double b) { return (a < b) ? b : a; }

/// Top-k rule: (key j, index j) ranks before (key i, index i) when its key is higher, or equal
/// with a lower index (float == treats -0 and +0 as equal).
template <class Index>
TOKENSEL_PORTABLE_HD bool beats_high(float kj, Index j, float ki, Index i) {
  return kj > ki || (kj == ki && j < i);
}
/// Bottom-k rule: lower key first, equal keys by lower index.
template <class Index>
TOKENSEL_PORTABLE_HD bool beats_low(float kj, Index j, float ki, Index i) {
  return kj < ki || (kj == ki && j < i);
}

// ---- the canonical fp32 summation order (detail/reduce.hpp) -------------------------------------

inline constexpr int canonical_lanes = 32;

/// The pairwise tree over 32 lane partials (lane l += lane l + w for w = 16, 8, 4, 2, 1), the
/// order of a warp's shuffle-down reduction. Returns lane[0]; overwrites the lanes.
TOKENSEL_PORTABLE_HD float combine_lane_tree(float* lane) {
  for (int width = canonical_lanes / 2; width >= 1; width /= 2) {
    for (int l = 0; l < width; ++l) lane[l] = fadd(lane[l], lane[l + width]);
  }
  return lane[0];
}

/// The canonical sum of x[0 .. n) (unit stride) in one thread: 32 lane partials in ascending
/// order, then the lane tree. Equals detail::canonical_sum and a warp's canonical sum.
TOKENSEL_PORTABLE_HD float canonical_sum_serial(const float* x, int n) {
  float lane[canonical_lanes];
  for (int l = 0; l < canonical_lanes; ++l) lane[l] = 0.0f;
  int i = 0;
  for (; i + canonical_lanes <= n; i += canonical_lanes) {
    for (int l = 0; l < canonical_lanes; ++l) lane[l] = fadd(lane[l], x[i + l]);
  }
  for (int l = 0; i + l < n; ++l) lane[l] = fadd(lane[l], x[i + l]);
  return combine_lane_tree(lane);
}

// ---- FoPru's variance (spec section 3) ----------------------------------------------------------

/// Population variance of x[0 .. n) in double: sequential sum, divide; sequential sum of squared
/// deviations, divide. 0 for n = 0. One thread: the order is the contract.
TOKENSEL_PORTABLE_HD double sequential_variance(const float* x, long long n) {
  if (n <= 0) return 0.0;
  double mean = 0.0;
  for (long long i = 0; i < n; ++i) mean = dadd(mean, static_cast<double>(x[i]));
  mean = ddiv(mean, static_cast<double>(n));
  double acc = 0.0;
  for (long long i = 0; i < n; ++i) {
    const double dv = dsub(static_cast<double>(x[i]), mean);
    acc = dadd(acc, dmul(dv, dv));
  }
  return ddiv(acc, static_cast<double>(n));
}

// ---- numpy's linear percentiles and the IQR fences (spec sections 2 and 5) ----------------------

/// numpy's _lerp: a + (b - a) t for t < 0.5, b - (b - a)(1 - t) otherwise (exact at t = 1).
TOKENSEL_PORTABLE_HD double numpy_lerp(double a, double b, double t) {
  const double diff = dsub(b, a);
  if (t >= 0.5) return dsub(b, dmul(diff, dsub(1.0, t)));
  return dadd(a, dmul(diff, t));
}

/// Where percentile q of n >= 1 ascending values comes from: the value at sorted position lo, or
/// the lerp between positions lo and lo + 1 with weight t (numpy's _quantile, method "linear").
struct quantile_position {
  long long lo = 0;
  bool lerp = false;  ///< false: the value at lo itself (lo = n - 1)
  double t = 0.0;
};

TOKENSEL_PORTABLE_HD quantile_position quantile_at(long long n, double q) {
  quantile_position p;
  const double last = static_cast<double>(n - 1);
  const double v = dmul(last, q);
  if (v >= last) {
    p.lo = n - 1;
    return p;
  }
#if defined(__CUDA_ARCH__)
  const double lo = floor(v);
#else
  const double lo = std::floor(v);
#endif
  p.lo = static_cast<long long>(lo);
  p.lerp = true;
  p.t = dsub(v, lo);
  return p;
}

TOKENSEL_PORTABLE_HD double quantile_value(const quantile_position& p, double at_lo, double at_next) {
  return p.lerp ? numpy_lerp(at_lo, at_next, p.t) : at_lo;
}

/// Q3 + c (Q3 - Q1) and Q1 - c (Q3 - Q1), in numpy's order (the product rounded on its own).
TOKENSEL_PORTABLE_HD double upper_fence(double q1, double q3, double c) { return dadd(q3, dmul(c, dsub(q3, q1))); }
TOKENSEL_PORTABLE_HD double lower_fence(double q1, double q3, double c) { return dsub(q1, dmul(c, dsub(q3, q1))); }

}  // namespace detail
TOKENSEL_END_NAMESPACE
