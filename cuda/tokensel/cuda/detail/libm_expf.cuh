// tokensel CUDA backend internals: the host C library's expf, reproduced bit for bit.
//
// The CPU backend's softmax (prumerge::detail::cls_softmax) calls std::exp(float), i.e. glibc's
// expf. CUDA's expf is a different approximation (up to 2 ulp) and would change the CLS
// attention in the last bits, and with it fences and ties. This is glibc's algorithm (since 2.28,
// from ARM's optimized-routines: 2^(k/32) from a 32-entry table, a cubic in double for the rest)
// as its x86-64 FMA variant runs it (the one glibc picks on every CPU with FMA and AVX2): all
// three multiply-adds of the polynomial and the two of the range reduction are fused. The
// host-side test checks it against std::exp on every float the softmax can pass (x <= 0).
// Without FMA, glibc's plain variant differs from this in one input in about 10^9.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include <cuda_runtime_api.h>

#include "tokensel/config.hpp"
#include "tokensel/cuda/detail/arith.cuh"

TOKENSEL_BEGIN_NAMESPACE
namespace cuda_detail {

TOKENSEL_HD double dfma(double a, double b, double c) {
#if defined(__CUDA_ARCH__)
  return __fma_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

/// 2^(i/32) as doubles with i << 47 subtracted from their bits (glibc's __exp2f_data.tab).
#define TOKENSEL_EXPF_TABLE                                                                         \
  {0x3ff0000000000000ull, 0x3fefd9b0d3158574ull, 0x3fefb5586cf9890full, 0x3fef9301d0125b51ull,      \
   0x3fef72b83c7d517bull, 0x3fef54873168b9aaull, 0x3fef387a6e756238ull, 0x3fef1e9df51fdee1ull,      \
   0x3fef06fe0a31b715ull, 0x3feef1a7373aa9cbull, 0x3feedea64c123422ull, 0x3feece086061892dull,      \
   0x3feebfdad5362a27ull, 0x3feeb42b569d4f82ull, 0x3feeab07dd485429ull, 0x3feea47eb03a5585ull,      \
   0x3feea09e667f3bcdull, 0x3fee9f75e8ec5f74ull, 0x3feea11473eb0187ull, 0x3feea589994cce13ull,      \
   0x3feeace5422aa0dbull, 0x3feeb737b0cdc5e5ull, 0x3feec49182a3f090ull, 0x3feed503b23e255dull,      \
   0x3feee89f995ad3adull, 0x3feeff76f2fb5e47ull, 0x3fef199bdd85529cull, 0x3fef3720dcef9069ull,      \
   0x3fef5818dcfba487ull, 0x3fef7c97337b9b5full, 0x3fefa4afa2a490daull, 0x3fefd0765b6e4540ull}

// Device: constant memory (a local array indexed at run time would live on the stack).
// Internal linkage: every translation unit has its own copy, as without -rdc anyway.
static __constant__ std::uint64_t expf_table_device[32] = TOKENSEL_EXPF_TABLE;
inline constexpr std::uint64_t expf_table_host[32] = TOKENSEL_EXPF_TABLE;
#undef TOKENSEL_EXPF_TABLE

TOKENSEL_HD std::uint64_t expf_table(unsigned i) {
#if defined(__CUDA_ARCH__)
  return expf_table_device[i & 31u];
#else
  return expf_table_host[i & 31u];
#endif
}

TOKENSEL_HD double bits_to_double(std::uint64_t u) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(u));
#else
  double d;
  std::memcpy(&d, &u, sizeof d);
  return d;
#endif
}

TOKENSEL_HD std::uint64_t double_to_bits(double d) {
#if defined(__CUDA_ARCH__)
  return static_cast<std::uint64_t>(__double_as_longlong(d));
#else
  std::uint64_t u;
  std::memcpy(&u, &d, sizeof u);
  return u;
#endif
}

/// glibc's expf(x) for x <= 0 (the softmax's exp(e_j - max); -inf included). Not for x > 0.
TOKENSEL_HD float libm_expf_nonpositive(float x) {
  if (!(x >= -0x1.9fe368p6f)) return 0.0f;  // below log(2^-150) (and -inf): rounds to +0
  constexpr double n = 32.0;
  constexpr double inv_ln2_n = 0x1.71547652b82fep+0 * n;
  constexpr double shift = 0x1.8p+52;
  constexpr double c0 = 0x1.c6af84b912394p-5 / n / n / n, c1 = 0x1.ebfce50fac4f3p-3 / n / n,
                   c2 = 0x1.62e42ff0c52d6p-1 / n;
  const double xd = static_cast<double>(x);
  // x * 32 / ln 2 = k + r: k rounded with the shift trick; r from the exact product (fused).
  double kd = dfma(inv_ln2_n, xd, shift);
  const std::uint64_t ki = double_to_bits(kd);
  kd = dsub(kd, shift);
  const double r = dfma(inv_ln2_n, xd, -kd);
  std::uint64_t t = expf_table(static_cast<unsigned>(ki % 32u));
  t += ki << 47;
  const double s = bits_to_double(t);
  const double z = dfma(c0, r, c1);
  const double r2 = dmul(r, r);
  double y = dfma(c2, r, 1.0);
  y = dfma(z, r2, y);
  y = dmul(y, s);
#if defined(__CUDA_ARCH__)
  return __double2float_rn(y);
#else
  return static_cast<float>(y);
#endif
}

}  // namespace cuda_detail
TOKENSEL_END_NAMESPACE
