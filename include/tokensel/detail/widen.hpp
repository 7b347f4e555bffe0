// tokensel internals: bulk widening of fp16 / bf16 rows to fp32. Converting one element at a
// time keeps the surrounding loops scalar (the half->float call does not vectorise); converting
// a block into a small fp32 buffer first lets the reduction loops run on full vectors.
// The conversion is exact, so results are bit-identical to the element-wise path.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__AVX2__) || (defined(__F16C__) && defined(__AVX__))
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

#if defined(__GNUC__) && (!defined(__F16C__) || !defined(__AVX__))
/// Whether T widens a vector at a time in registers (load_f32): where fp16 cannot (no F16C),
/// fp16 rows keep the block-widening path (widen into a buffer).
template <class T>
inline constexpr bool widens_in_registers = !std::is_same_v<std::remove_cv_t<T>, Eigen::half>;
#elif defined(__GNUC__)
template <class T>
inline constexpr bool widens_in_registers = true;
#else
template <class T>
inline constexpr bool widens_in_registers = false;
#endif

#if defined(__GNUC__)
#if defined(__AVX512F__)
inline constexpr int f32_vector_width = 16;
#else
inline constexpr int f32_vector_width = 8;
#endif
using f32_vector = float __attribute__((vector_size(f32_vector_width * sizeof(float))));
/// f32_vector at any float's address (rows carry no vector alignment). A typedef, not a `using`:
/// Clang ignores an alignment-lowering attribute on an alias declaration and would emit aligned
/// loads (a crash on a row that does not start on a vector boundary).
typedef float f32_vector_unaligned __attribute__((vector_size(f32_vector_width * sizeof(float)), aligned(4), may_alias));

/// f32_vector_width values of a contiguous row as fp32 (exact widening), into out: an out
/// parameter, not a return value, because returning a 32-byte vector from a function compiled
/// without AVX draws GCC's ABI note (-Wpsabi) in every consumer's portable build.
template <element T>
inline void load_f32(const T* p, f32_vector& out) noexcept {
  using U = std::remove_cv_t<T>;
  [[maybe_unused]] constexpr int W = f32_vector_width;  // the portable paths' width
  if constexpr (std::is_same_v<U, float>) {
    out = *reinterpret_cast<const f32_vector_unaligned*>(p);
  } else if constexpr (std::is_same_v<U, Eigen::bfloat16>) {
    // bf16 is the upper half of an fp32: zero-extend and shift. Written out because GCC 12 lowers
    // the generic convert of a 16 x u16 vector as two 8-wide extends and an insert (a fifth of a
    // bf16 pooling call).
#if defined(__AVX512F__)
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    out = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
#elif defined(__AVX2__)
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    out = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
#else
    typedef std::uint16_t u16 __attribute__((vector_size(W * 2), aligned(2), may_alias));
    using u32 = std::uint32_t __attribute__((vector_size(W * 4)));
    const u32 w = __builtin_convertvector(*reinterpret_cast<const u16*>(p), u32) << 16;
    std::memcpy(&out, &w, sizeof out);
#endif
  } else {
#if defined(__F16C__) && defined(__AVX__)
#if defined(__AVX512F__)
    out = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#else
    out = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#endif
#else
    for (int l = 0; l < W; ++l) out[l] = to_float(p[l]);
#endif
  }
}
#endif  // __GNUC__

/// acc[j] += float(src[j]) for j in [0, n), src contiguous: a vector at a time where T widens in
/// registers (load_f32), the rest element-wise; the same add per element either way. The same
/// columns of the row at `next` (nullptr: none) are prefetched a cache line at a time, for callers
/// that add rows in an order the hardware prefetchers cannot guess.
template <element T>
inline void accumulate(const T* src, index_t n, float* acc, const T* next = nullptr) noexcept {
  index_t j = 0;
#if defined(__GNUC__)
  if constexpr (widens_in_registers<T>) {
    constexpr int W = f32_vector_width;
    constexpr index_t line = 64 / sizeof(T);  // values per cache line
    for (; j + W <= n; j += W) {
      if (next != nullptr && j % line == 0) __builtin_prefetch(next + j);
      f32_vector x;
      load_f32(src + j, x);
      *reinterpret_cast<f32_vector_unaligned*>(acc + j) += x;
    }
  }
#endif
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
