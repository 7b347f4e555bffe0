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

}  // namespace detail
TOKENSEL_END_NAMESPACE
