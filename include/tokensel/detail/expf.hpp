// tokensel internals: expf on x <= 0 with the same bits on every platform and on the GPU.
//
// PruMerge's CLS softmax feeds its exponentials into IQR fences and ties, so the CPU and CUDA
// backends must round them identically. This is the algorithm of glibc's expf (since 2.28, from
// ARM's optimized-routines: 2^(k/32) from a 32-entry table, a cubic in double for the rest) with
// every multiply-add of the range reduction and the polynomial fused, as glibc's x86-64 FMA
// variant runs it: on such machines it equals std::exp(float) bit for bit (checked on every float
// in [-104, 0] by tests/test_prumerge.cpp's sweep and the CUDA host test), and unlike std::exp it
// does not depend on the C library (musl, MSVC, glibc without FMA round differently).
// Host and device share this one definition; the CUDA backend supplies a constant-memory table.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "tokensel/core/config.hpp"
#include "tokensel/detail/arith.hpp"  // TOKENSEL_PORTABLE_HD


/// 2^(i/32) as doubles with i << 47 subtracted from their bits (glibc's __exp2f_data.tab).
#define TOKENSEL_DETAIL_EXPF_TABLE                                                                         \
  {0x3ff0000000000000ull, 0x3fefd9b0d3158574ull, 0x3fefb5586cf9890full, 0x3fef9301d0125b51ull,      \
   0x3fef72b83c7d517bull, 0x3fef54873168b9aaull, 0x3fef387a6e756238ull, 0x3fef1e9df51fdee1ull,      \
   0x3fef06fe0a31b715ull, 0x3feef1a7373aa9cbull, 0x3feedea64c123422ull, 0x3feece086061892dull,      \
   0x3feebfdad5362a27ull, 0x3feeb42b569d4f82ull, 0x3feeab07dd485429ull, 0x3feea47eb03a5585ull,      \
   0x3feea09e667f3bcdull, 0x3fee9f75e8ec5f74ull, 0x3feea11473eb0187ull, 0x3feea589994cce13ull,      \
   0x3feeace5422aa0dbull, 0x3feeb737b0cdc5e5ull, 0x3feec49182a3f090ull, 0x3feed503b23e255dull,      \
   0x3feee89f995ad3adull, 0x3feeff76f2fb5e47ull, 0x3fef199bdd85529cull, 0x3fef3720dcef9069ull,      \
   0x3fef5818dcfba487ull, 0x3fef7c97337b9b5full, 0x3fefa4afa2a490daull, 0x3fefd0765b6e4540ull}

TOKENSEL_BEGIN_NAMESPACE
namespace detail {
namespace expf_impl {

inline constexpr std::uint64_t host_table[32] = TOKENSEL_DETAIL_EXPF_TABLE;

struct host_table_lookup {
  std::uint64_t operator()(unsigned i) const noexcept { return host_table[i & 31u]; }
};

// Round-to-nearest operations that no compiler may contract or reassociate.
TOKENSEL_PORTABLE_HD double fma_rn(double a, double b, double c) {
#if defined(__CUDA_ARCH__)
  return __fma_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}
TOKENSEL_PORTABLE_HD double sub_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
TOKENSEL_PORTABLE_HD double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
TOKENSEL_PORTABLE_HD double bits_to_double(std::uint64_t u) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(u));
#else
  double d;
  std::memcpy(&d, &u, sizeof d);
  return d;
#endif
}
TOKENSEL_PORTABLE_HD std::uint64_t double_to_bits(double d) {
#if defined(__CUDA_ARCH__)
  return static_cast<std::uint64_t>(__double_as_longlong(d));
#else
  std::uint64_t u;
  std::memcpy(&u, &d, sizeof u);
  return u;
#endif
}

}  // namespace expf_impl

/// expf(x) for x <= 0 (a softmax's exp(e_j - max); -inf gives +0), glibc's FMA rounding.
/// Table(i) returns entry i of TOKENSEL_DETAIL_EXPF_TABLE. Not for x > 0.
#if defined(__CUDACC__)
#pragma nv_exec_check_disable  // Table may be host-only (host_table_lookup): fine where only the host calls it
#endif
template <class Table>
TOKENSEL_PORTABLE_HD float expf_nonpositive(float x, Table table) {
  using namespace expf_impl;
  if (!(x >= -0x1.9fe368p6f)) return 0.0f;  // below log(2^-150) (and -inf): rounds to +0
  constexpr double n = 32.0;
  constexpr double inv_ln2_n = 0x1.71547652b82fep+0 * n;
  constexpr double shift = 0x1.8p+52;
  constexpr double c0 = 0x1.c6af84b912394p-5 / n / n / n, c1 = 0x1.ebfce50fac4f3p-3 / n / n,
                   c2 = 0x1.62e42ff0c52d6p-1 / n;
  const double xd = static_cast<double>(x);
  // x * 32 / ln 2 = k + r: k rounded with the shift trick; r from the exact product (fused).
  double kd = fma_rn(inv_ln2_n, xd, shift);
  const std::uint64_t ki = double_to_bits(kd);
  kd = sub_rn(kd, shift);
  const double r = fma_rn(inv_ln2_n, xd, -kd);
  std::uint64_t t = table(static_cast<unsigned>(ki % 32u));
  t += ki << 47;
  const double s = bits_to_double(t);
  const double z = fma_rn(c0, r, c1);
  const double r2 = mul_rn(r, r);
  double y = fma_rn(c2, r, 1.0);
  y = fma_rn(z, r2, y);
  y = mul_rn(y, s);
#if defined(__CUDA_ARCH__)
  return __double2float_rn(y);
#else
  return static_cast<float>(y);
#endif
}

/// Host form (the CPU backend's PruMerge softmax).
inline float expf_nonpositive(float x) { return expf_nonpositive(x, expf_impl::host_table_lookup{}); }

}  // namespace detail
TOKENSEL_END_NAMESPACE
