// tokensel CUDA backend internals: the arithmetic both backends must agree on bit for bit.
//
// Every fp32/fp64 operation whose result reaches an output goes through these helpers. On the
// device they are the round-to-nearest intrinsics (__fadd_rn, ...), which the compiler never
// contracts into an FMA, so the results do not depend on -fmad; on the host they are the plain
// operators (the library compiles host code with -ffp-contract=off). The same functions serve the
// host-side tests that check the kernels' decomposition against the CPU backend without a GPU.
#pragma once

#include <cmath>

#include <cuda_runtime_api.h>

#include "tokensel/core/config.hpp"

#define TOKENSEL_HD __host__ __device__ __forceinline__

TOKENSEL_BEGIN_NAMESPACE
namespace cuda_detail {

TOKENSEL_HD float fadd(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
TOKENSEL_HD float fsub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
TOKENSEL_HD float fmul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
TOKENSEL_HD float fdiv(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
TOKENSEL_HD double dadd(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
TOKENSEL_HD double dsub(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
TOKENSEL_HD double dmul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
TOKENSEL_HD double ddiv(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}

TOKENSEL_HD bool finite_f32(float x) {
#if defined(__CUDA_ARCH__)
  return isfinite(x);
#else
  return std::isfinite(x);
#endif
}

/// detail::canonical_sum of x[0 .. n) (unit stride) run by one thread: 32 lane partials in
/// ascending order, then the pairwise tree. The same operations in the same order as the CPU's
/// and as a warp's shuffle-down tree, so all three give the same bits. For short vectors and
/// one-off totals (a warp is faster for long ones).
TOKENSEL_HD float canonical_sum_serial(const float* x, int n) {
  float lane[32];
  for (int l = 0; l < 32; ++l) lane[l] = 0.0f;
  int i = 0;
  for (; i + 32 <= n; i += 32) {
    for (int l = 0; l < 32; ++l) lane[l] = fadd(lane[l], x[i + l]);
  }
  for (int l = 0; i + l < n; ++l) lane[l] = fadd(lane[l], x[i + l]);
  for (int w = 16; w >= 1; w /= 2) {
    for (int l = 0; l < w; ++l) lane[l] = fadd(lane[l], lane[l + w]);
  }
  return lane[0];
}

/// Population variance in double with the CPU's order (population_variance in variance_axis.hpp):
/// sequential sum, divide; sequential sum of squared deviations, divide. n >= 1. One thread: the
/// order is the contract.
TOKENSEL_HD double sequential_variance(const float* x, int n) {
  double mean = 0.0;
  for (int i = 0; i < n; ++i) mean = dadd(mean, static_cast<double>(x[i]));
  mean = ddiv(mean, static_cast<double>(n));
  double acc = 0.0;
  for (int i = 0; i < n; ++i) {
    const double dv = dsub(static_cast<double>(x[i]), mean);
    acc = dadd(acc, dmul(dv, dv));
  }
  return ddiv(acc, static_cast<double>(n));
}

/// The CPU backend's max that keeps a NaN (detail::max_nan in head_reduction.hpp).
TOKENSEL_HD float max_nan(float a, float b) { return (b > a || b != b) ? b : a; }

/// std::max(a, b) = (a < b) ? b : a, spelled out so both backends pick the same operand.
TOKENSEL_HD float std_max(float a, float b) { return (a < b) ? b : a; }
TOKENSEL_HD double std_max(double a, double b) { return (a < b) ? b : a; }

/// Top-k rule: (key j, index j) ranks before (key i, index i) when its key is higher, or equal
/// with a lower index (detail::rank_high_first; float == treats -0 and +0 as equal, like the CPU).
TOKENSEL_HD bool beats_high(float kj, int j, float ki, int i) { return kj > ki || (kj == ki && j < i); }
/// Bottom-k rule: lower key first, equal keys by lower index (detail::rank_low_first).
TOKENSEL_HD bool beats_low(float kj, int j, float ki, int i) { return kj < ki || (kj == ki && j < i); }

/// numpy's _lerp as the CPU's detail::numpy_lerp (no contraction).
TOKENSEL_HD double numpy_lerp(double a, double b, double t) {
  const double diff = dsub(b, a);
  if (t >= 0.5) return dsub(b, dmul(diff, dsub(1.0, t)));
  return dadd(a, dmul(diff, t));
}

/// Where percentile q of n >= 1 sorted values comes from: the value at sorted position lo, or the
/// lerp between positions lo and lo + 1 with weight t (percentile_sorted of iqr_outliers.hpp).
struct quantile_position {
  int lo = 0;
  bool lerp = false;  ///< false: the value at lo itself (lo = n - 1)
  double t = 0.0;
};

TOKENSEL_HD quantile_position quantile_at(int n, double q) {
  quantile_position p;
  const double last = static_cast<double>(n - 1);
  const double v = dmul(last, q);
  if (v >= last) {
    p.lo = n - 1;
    return p;
  }
  const double lo = floor(v);
  p.lo = static_cast<int>(lo);
  p.lerp = true;
  p.t = dsub(v, lo);
  return p;
}

TOKENSEL_HD double quantile_value(const quantile_position& p, double at_lo, double at_next) {
  return p.lerp ? numpy_lerp(at_lo, at_next, p.t) : at_lo;
}

/// Q3 + c (Q3 - Q1) and Q1 - c (Q3 - Q1), in numpy's order (detail::upper_fence / lower_fence).
TOKENSEL_HD double upper_fence(double q1, double q3, double c) { return dadd(q3, dmul(c, dsub(q3, q1))); }
TOKENSEL_HD double lower_fence(double q1, double q3, double c) { return dsub(q1, dmul(c, dsub(q3, q1))); }

}  // namespace cuda_detail
TOKENSEL_END_NAMESPACE
