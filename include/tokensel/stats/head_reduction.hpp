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

#if defined(__GNUC__)
/// Columns [0, full) of row i, full a multiple of 4 vectors: each chunk of 4 vectors stays in
/// registers while the heads are combined into it (ascending heads, the same per-element
/// operations as the row loop: x_0, then + x_h or max_nan, then / heads), then is stored once.
template <element T>
void reduce_heads_chunks(const head_attention_view<T>& attention, index_t i, head_reduction op, float* row,
                         index_t full) noexcept {
  constexpr int V = 4, W = f32_vector_width;
  const index_t heads = attention.extent(0), hstride = attention.stride(0);
  const auto hf = static_cast<float>(heads);
  for (index_t j0 = 0; j0 < full; j0 += V * W) {
    const T* a = &attention(0, i, j0);
    f32_vector acc[V];
TOKENSEL_UNROLL(4)
    for (int v = 0; v < V; ++v) load_f32(a + v * W, acc[v]);
    for (index_t h = 1; h < heads; ++h) {
      const T* ah = a + h * hstride;
TOKENSEL_UNROLL(4)
      for (int v = 0; v < V; ++v) {
        f32_vector x;
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
      std::memcpy(row + j0 + v * W, &acc[v], sizeof(f32_vector));
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
  if constexpr (widens_in_registers<T>) {
    constexpr index_t chunk = 4 * f32_vector_width;
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
