// tokensel: head reduction M[i, j] = op_h A[h, i, j] (spec 1.1), accumulated in fp32.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "tokensel/core/config.hpp"
#include "tokensel/detail/arith.hpp"
#include "tokensel/detail/parallel.hpp"
#include "tokensel/detail/scratch.hpp"
#include "tokensel/detail/widen.hpp"
#include "tokensel/core/element.hpp"
#include "tokensel/core/error.hpp"
#include "tokensel/core/policy.hpp"
#include "tokensel/core/tensor_view.hpp"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

TOKENSEL_BEGIN_NAMESPACE

/// How heads are combined: mean (sum / heads), sum, or elementwise max.
enum class head_reduction { mean, sum, max };

inline const char* to_string(head_reduction op) noexcept {
  switch (op) {
    case head_reduction::mean: return "mean";
    case head_reduction::sum: return "sum";
    case head_reduction::max: return "max";
  }
  return "?";
}

namespace detail {
inline void check_heads_present(index_t heads, index_t rows, index_t cols) {
  if (heads == 0 && rows != 0 && cols != 0) fail(errc::shape_mismatch, "attention.extent(0)", heads, "no heads to reduce");
}
}  // namespace detail

namespace detail {

#if defined(__GNUC__) && (!defined(__F16C__) || !defined(__AVX__))
/// Where fp16 cannot be widened a vector at a time, fp16 rows keep the block-widening path.
template <class T>
inline constexpr bool register_blocked_heads = !std::is_same_v<std::remove_cv_t<T>, Eigen::half>;
#elif defined(__GNUC__)
template <class T>
inline constexpr bool register_blocked_heads = true;
#else
template <class T>
inline constexpr bool register_blocked_heads = false;
#endif

#if defined(__GNUC__)
#if defined(__AVX512F__)
inline constexpr int head_vector_width = 16;
#else
inline constexpr int head_vector_width = 8;
#endif
using head_vector = float __attribute__((vector_size(head_vector_width * sizeof(float))));

/// head_vector_width values of a contiguous row as fp32 (exact widening), into out: an out
/// parameter, not a return value, because returning a 32-byte vector from a function compiled
/// without AVX draws GCC's ABI note (-Wpsabi) in every consumer's portable build.
template <element T>
inline void load_f32(const T* p, head_vector& out) noexcept {
  using U = std::remove_cv_t<T>;
  constexpr int W = head_vector_width;
  if constexpr (std::is_same_v<U, float>) {
    using unaligned = float __attribute__((vector_size(W * sizeof(float)), aligned(4), may_alias));
    out = *reinterpret_cast<const unaligned*>(p);
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
    using u16 = std::uint16_t __attribute__((vector_size(W * 2), aligned(2), may_alias));
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

/// Columns [0, full) of row i, full a multiple of 4 vectors: each chunk of 4 vectors stays in
/// registers while the heads are combined into it (ascending heads, the same per-element
/// operations as the row loop: x_0, then + x_h or max_nan, then / heads), then is stored once.
template <element T>
void reduce_heads_chunks(const head_attention_view<T>& attention, index_t i, head_reduction op, float* row,
                         index_t full) noexcept {
  constexpr int V = 4, W = head_vector_width;
  const index_t heads = attention.extent(0), hstride = attention.stride(0);
  const auto hf = static_cast<float>(heads);
  for (index_t j0 = 0; j0 < full; j0 += V * W) {
    const T* a = &attention(0, i, j0);
    head_vector acc[V];
TOKENSEL_UNROLL(4)
    for (int v = 0; v < V; ++v) load_f32(a + v * W, acc[v]);
    for (index_t h = 1; h < heads; ++h) {
      const T* ah = a + h * hstride;
TOKENSEL_UNROLL(4)
      for (int v = 0; v < V; ++v) {
        head_vector x;
        load_f32(ah + v * W, x);
        if (op == head_reduction::max) {
          acc[v] = (x > acc[v] || x != x) ? x : acc[v];  // max_nan, lane by lane
        } else {
          acc[v] += x;
        }
      }
    }
TOKENSEL_UNROLL(4)
    for (int v = 0; v < V; ++v) {
      if (op == head_reduction::mean) acc[v] = acc[v] / hf;
      std::memcpy(row + j0 + v * W, &acc[v], sizeof(head_vector));
    }
  }
}
#endif

/// Row i of the head-reduced map into row[0, cols): the same arithmetic as reduce_heads
/// (ascending heads, fp32, mean = sum / heads), so fused statistics match the two-pass path.
template <element T>
void reduce_heads_row(const head_attention_view<T>& attention, index_t i, head_reduction op, float* row) {
  const index_t heads = attention.extent(0), cols = attention.extent(2);
  const index_t astride = attention.stride(2);
#if defined(__GNUC__)
  if constexpr (register_blocked_heads<T>) {
    constexpr index_t chunk = 4 * head_vector_width;
    if (astride == 1 && heads > 0 && cols >= chunk) {
      const index_t full = cols - cols % chunk;
      reduce_heads_chunks(attention, i, op, row, full);
      if (full == cols) return;
      // The remaining columns: the same arithmetic through the row loop below.
      const auto tail = attention.slice(2, full, cols - full, "attention");
      reduce_heads_row(tail, i, op, row + full);
      return;
    }
  }
#endif
  constexpr bool narrow = !std::is_same_v<std::remove_cv_t<T>, float>;
  // fp16 / bf16 rows are widened a block at a time (exactly), so the loops below vectorise.
  constexpr index_t block = 512;
  float buffer[narrow ? block : 1];
  for (index_t h = 0; h < heads; ++h) {
    const T* a = &attention(h, i, 0);
    if (astride == 1 && narrow) {
      for (index_t j0 = 0; j0 < cols; j0 += block) {
        const index_t len = cols - j0 < block ? cols - j0 : block;
        float* dst = row + j0;
        if (h == 0) {
          widen(a + j0, len, dst);
          continue;
        }
        widen(a + j0, len, buffer);
        if (op == head_reduction::max) {
          for (index_t j = 0; j < len; ++j) dst[j] = max_nan(dst[j], buffer[j]);
        } else {
          for (index_t j = 0; j < len; ++j) dst[j] += buffer[j];
        }
      }
      continue;
    }
    if (h == 0) {
      if (astride == 1) {
        for (index_t j = 0; j < cols; ++j) row[j] = to_float(a[j]);
      } else {
        for (index_t j = 0; j < cols; ++j) row[j] = to_float(a[j * astride]);
      }
    } else if (op == head_reduction::max) {
      for (index_t j = 0; j < cols; ++j) row[j] = max_nan(row[j], to_float(a[j * astride]));
    } else if (astride == 1) {
      for (index_t j = 0; j < cols; ++j) row[j] += to_float(a[j]);
    } else {
      for (index_t j = 0; j < cols; ++j) row[j] += to_float(a[j * astride]);
    }
  }
  if (op == head_reduction::mean) {
    const auto hf = static_cast<float>(heads);
    for (index_t j = 0; j < cols; ++j) row[j] = row[j] / hf;
  }
}
}  // namespace detail

/// Writes M = op over heads of attention [heads, q, k] into out [q, k].
/// Sums run over heads in ascending order (fp32); mean divides the sum by the head count.
/// Rows are independent, so every policy gives the same bits.
template <cpu_policy Policy, element T>
void reduce_heads(const Policy& policy, const head_attention_view<T>& attention, head_reduction op,
                  const matrix_view<float>& out) {
  const index_t heads = attention.extent(0), rows = attention.extent(1), cols = attention.extent(2);
  if (out.extent(0) != rows || out.extent(1) != cols) {
    detail::fail(errc::shape_mismatch, "reduce_heads.out",
                 std::to_string(out.extent(0)) + "x" + std::to_string(out.extent(1)),
                 "must be " + std::to_string(rows) + "x" + std::to_string(cols));
  }
  detail::check_heads_present(heads, rows, cols);
  if (cols == 0) return;
  detail::parallel_for(policy, rows, detail::bytes_of<T>(heads * rows * cols), [&](index_t i) {
    if (out.inner_contiguous()) {
      detail::reduce_heads_row(attention, i, op, &out(i, 0));
    } else {
      detail::scratch_scope scratch;
      auto row = scratch.take<float>(static_cast<std::size_t>(cols));
      detail::reduce_heads_row(attention, i, op, row.data());
      for (index_t j = 0; j < cols; ++j) out(i, j) = row[j];
    }
  });
}

TOKENSEL_END_NAMESPACE
