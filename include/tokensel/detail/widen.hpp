// tokensel internals: bulk widening of fp16 / bf16 rows to fp32. Converting one element at a
// time keeps the surrounding loops scalar (the half->float call does not vectorise); converting
// a block into a small fp32 buffer first lets the reduction loops run on full vectors.
// The conversion is exact, so results are bit-identical to the element-wise path.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#endif

#include "tokensel/core/config.hpp"
#include "tokensel/core/element.hpp"

TOKENSEL_BEGIN_NAMESPACE
namespace detail {

/// out[j] = float(src[j]) for j in [0, n), src contiguous.
template <element T>
inline void widen(const T* src, index_t n, float* out) noexcept {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_same_v<U, float>) {
    if (n > 0) std::memcpy(out, src, static_cast<std::size_t>(n) * sizeof(float));
  } else if constexpr (std::is_same_v<U, Eigen::bfloat16>) {
    // bf16 is the upper half of an fp32: a shift, which vectorises.
    for (index_t j = 0; j < n; ++j) {
      std::uint16_t b;
      std::memcpy(&b, src + j, sizeof b);
      const std::uint32_t w = static_cast<std::uint32_t>(b) << 16;
      std::memcpy(out + j, &w, sizeof w);
    }
  } else {
    index_t j = 0;
#if defined(__F16C__) && defined(__AVX__)
    for (; j + 8 <= n; j += 8) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j));
      _mm256_storeu_ps(out + j, _mm256_cvtph_ps(h));
    }
#endif
    for (; j < n; ++j) out[j] = to_float(src[j]);
  }
}

/// out[j] = T(src[j]) for j in [0, n), rounded to nearest even as from_float. fp16 narrows 8 at a
/// time with F16C where the target has it; a block holding a NaN goes through from_float, whose
/// NaN encoding is the library's (F16C would keep the payload bits). bf16 is Eigen's rounding
/// written on the bits without a branch, so it vectorises: the upper half after adding
/// 0x7fff + (bit 16), and a NaN becomes the quiet NaN of its sign (0x7fc0 / 0xffc0).
template <element T>
inline void narrow(const float* src, index_t n, T* out) noexcept {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_same_v<U, float>) {
    if (n > 0) std::memcpy(out, src, static_cast<std::size_t>(n) * sizeof(float));
  } else if constexpr (std::is_same_v<U, Eigen::bfloat16>) {
    for (index_t j = 0; j < n; ++j) {
      std::uint32_t u;
      std::memcpy(&u, src + j, sizeof u);
      const std::uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
      const std::uint32_t nan = ((u >> 16) & 0x8000u) | 0x7fc0u;
      const auto b = static_cast<std::uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
      std::memcpy(static_cast<void*>(out + j), &b, sizeof b);
    }
  } else {
    index_t j = 0;
#if defined(__F16C__) && defined(__AVX__)
    if constexpr (std::is_same_v<U, Eigen::half>) {
      for (; j + 8 <= n; j += 8) {
        const __m256 v = _mm256_loadu_ps(src + j);
        if (_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) != 0) {
          for (index_t t = j; t < j + 8; ++t) out[t] = from_float<U>(src[t]);
          continue;
        }
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + j), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
      }
    }
#endif
    for (; j < n; ++j) out[j] = from_float<U>(src[j]);
  }
}

/// True when every x[j], j in [0, n), is finite: an exponent-bits test that vectorises (callers
/// locate the offending element only when it fails).
inline bool all_finite(const float* x, index_t n) noexcept {
  std::uint32_t bad = 0;
  for (index_t j = 0; j < n; ++j) {
    std::uint32_t b;
    std::memcpy(&b, x + j, sizeof b);
    bad |= static_cast<std::uint32_t>((b & 0x7f800000u) == 0x7f800000u);
  }
  return bad == 0;
}

/// acc[j] += float(src[j]) for j in [0, n), src contiguous: fp16 widened 8 at a time in
/// registers (F16C) where the target has it, bf16 by a shift, fp32 as is; the same adds as the
/// element-wise loop, in the same order per element.
template <element T>
inline void accumulate(const T* src, index_t n, float* acc) noexcept {
  using U = std::remove_cv_t<T>;
  index_t j = 0;
#if defined(__F16C__) && defined(__AVX__)
  if constexpr (std::is_same_v<U, Eigen::half>) {
    for (; j + 8 <= n; j += 8) {
      const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j)));
      _mm256_storeu_ps(acc + j, _mm256_add_ps(_mm256_loadu_ps(acc + j), x));
    }
  }
#endif
  if constexpr (std::is_same_v<U, Eigen::bfloat16>) {
    for (; j < n; ++j) {
      std::uint16_t b;
      std::memcpy(&b, src + j, sizeof b);
      const std::uint32_t w = static_cast<std::uint32_t>(b) << 16;
      float x;
      std::memcpy(&x, &w, sizeof x);
      acc[j] += x;
    }
  }
  for (; j < n; ++j) acc[j] += to_float(src[j]);
}

/// Row i of a matrix view as contiguous fp32: the row itself when it already is (fp32, unit
/// stride), else widened into buffer (at least extent(1) floats).
template <class View>
inline const float* row_f32(const View& m, index_t i, float* buffer) noexcept {
  using U = std::remove_cv_t<typename View::value_type>;
  const index_t d = m.extent(1);
  if (d == 0) return buffer;
  if (m.inner_contiguous()) {
    if constexpr (std::is_same_v<U, float>) {
      return &m(i, 0);
    } else {
      widen(&m(i, 0), d, buffer);
      return buffer;
    }
  }
  for (index_t c = 0; c < d; ++c) buffer[c] = to_float(m(i, c));
  return buffer;
}

/// Row r of a matrix view out = narrowed src[0, extent(1)): in bulk (narrow) when the row is
/// contiguous, else element by element; the same values either way.
template <class View>
inline void store_row(const View& out, index_t r, const float* src) noexcept {
  using O = typename View::value_type;
  const index_t d = out.extent(1);
  if (d > 0 && out.inner_contiguous()) {
    narrow(src, d, &out(r, 0));
  } else {
    for (index_t c = 0; c < d; ++c) out(r, c) = from_float<O>(src[c]);
  }
}

}  // namespace detail
TOKENSEL_END_NAMESPACE
