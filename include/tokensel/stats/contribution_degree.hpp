// tokensel: contribution degree (spec 1.2, freePruner eq. 3).
//   r[i] = sum_j M[j, i] - M[i, i]
// The attention token i receives from every other token of a head-reduced map M [n, n] (column
// sum minus the self-attention on the diagonal).
//
// Summation order (shared with the CUDA backend, so both give the same bits): each column sum is a
// plain fp32 loop over the rows j = 0, 1, ..., n-1 starting from 0, then the diagonal is
// subtracted. Threads split the columns, never the rows, so every policy gives the same bits.
#pragma once

#include <algorithm>
#include <cmath>
#include <span>
#include <string>

#include "tokensel/core/attention_source.hpp"
#include "tokensel/core/config.hpp"
#include "tokensel/detail/parallel.hpp"
#include "tokensel/detail/scratch.hpp"
#include "tokensel/detail/validate.hpp"
#include "tokensel/core/element.hpp"
#include "tokensel/core/error.hpp"
#include "tokensel/stats/head_reduction.hpp"
#include "tokensel/stats/map_sums.hpp"
#include "tokensel/stats/qk_statistics.hpp"
#include "tokensel/core/policy.hpp"
#include "tokensel/core/tensor_view.hpp"
#include "tokensel/core/token_range.hpp"

TOKENSEL_BEGIN_NAMESPACE

namespace detail {

inline void check_contribution_shapes(index_t rows, index_t cols, index_t out_size) {
  if (rows != cols) {
    fail(errc::shape_mismatch, "contribution_degree.map", std::to_string(rows) + "x" + std::to_string(cols),
         "map must be square");
  }
  if (out_size != rows) {
    fail(errc::shape_mismatch, "contribution_degree.out.extent(0)", out_size, "must be " + std::to_string(rows));
  }
}

/// A non-finite r[i] means column i of the map holds NaN/Inf (or its sum overflowed): every
/// non-finite entry reaches the r of its column, so checking the n results checks the map.
inline void check_contribution_finite(const vector_view<float>& r) {
  for (index_t i = 0; i < r.extent(0); ++i) {
    const float v = r(i);
    if (!std::isfinite(v)) {
      fail(errc::non_finite, "contribution_degree.r[" + std::to_string(i) + "]", v,
           "column " + std::to_string(i) + " of the map holds NaN/Inf (or its sum overflows)");
    }
  }
}

inline constexpr index_t contribution_column_block = 64;

}  // namespace detail

/// Writes r[i] = sum_j map(j, i) - map(i, i) for a square head-reduced map [n, n] (any strides)
/// into out [n]. Throws errc::shape_mismatch for a non-square map or a wrong out size and
/// errc::non_finite when the map holds NaN/Inf (named by column).
template <cpu_policy Policy>
void contribution_degree(const Policy& policy, const matrix_view<const float>& map, const vector_view<float>& out) {
  const index_t n = map.extent(0);
  detail::check_contribution_shapes(n, map.extent(1), out.extent(0));
  if (n == 0) return;
  const bool fast = map.inner_contiguous() && out.inner_contiguous();
  const index_t blocks = (n + detail::contribution_column_block - 1) / detail::contribution_column_block;
  // Each block of columns is summed row by row (j ascending): row-major reads, one pass per block.
  detail::parallel_for(policy, blocks, detail::bytes_of<float>(n * n), [&](index_t b) {
    const index_t i0 = b * detail::contribution_column_block;
    const index_t i1 = std::min(n, i0 + detail::contribution_column_block);
    if (fast) {
      float* r = &out(0);
      for (index_t i = i0; i < i1; ++i) r[i] = 0.0f;
      for (index_t j = 0; j < n; ++j) {
        const float* row = &map(j, 0);
        for (index_t i = i0; i < i1; ++i) r[i] += row[i];
      }
      for (index_t i = i0; i < i1; ++i) r[i] -= map(i, i);
    } else {
      for (index_t i = i0; i < i1; ++i) out(i) = 0.0f;
      for (index_t j = 0; j < n; ++j) {
        for (index_t i = i0; i < i1; ++i) out(i) += map(j, i);
      }
      for (index_t i = i0; i < i1; ++i) out(i) -= map(i, i);
    }
  });
  detail::check_contribution_finite(out);
}

template <cpu_policy Policy>
void contribution_degree(const Policy& policy, const matrix_view<const float>& map, std::span<float> out) {
  contribution_degree(policy, map, vector_view<float>(out.data(), {static_cast<index_t>(out.size())}, "contribution_degree.out"));
}

/// Sequential forms.
inline void contribution_degree(const matrix_view<const float>& map, const vector_view<float>& out) {
  contribution_degree(seq, map, out);
}
inline void contribution_degree(const matrix_view<const float>& map, std::span<float> out) {
  contribution_degree(seq, map, out);
}

/// One sample's attention [heads, N, N] (a materialised view, or a qk_source whose queries and
/// keys are the same N tokens): reduces the heads with op over the square sub-map range x range
/// (CLS-free patch submatrix by default; not renormalised) and writes the contribution degree of
/// its range.count tokens into out. For a view: bit-identical to reduce_heads on the restricted
/// attention followed by contribution_degree on that map; the reduced map itself is never stored
/// on the sequential path (map_sums streams it row by row). For a qk_source: the same column sums
/// and diagonal, tile by tile from Q and K (O(n) memory per head, never the n x n map).
template <cpu_policy Policy, attention_source Source>
void contribution_degree(const Policy& policy, const Source& attention, head_reduction op,
                         const token_range& range, std::span<float> out) {
  if (query_tokens(attention) != key_tokens(attention)) {
    detail::fail(errc::shape_mismatch, "contribution_degree.attention",
                 std::to_string(query_tokens(attention)) + "x" + std::to_string(key_tokens(attention)),
                 "queries and keys must be the same tokens");
  }
  const auto sub = restrict_tokens(attention, range);
  const index_t n = range.count;
  detail::check_contribution_shapes(n, n, static_cast<index_t>(out.size()));
  if (n == 0) return;
  detail::scratch_scope scratch;
  auto diagonal = scratch.take<float>(static_cast<std::size_t>(n));
  map_sums(policy, sub, op, {.row_sums = {}, .column_sums = out, .diagonal = diagonal});
  for (index_t i = 0; i < n; ++i) out[i] -= diagonal[i];
  detail::check_contribution_finite(vector_view<float>(out.data(), {n}, "contribution_degree.out"));
}

/// Same over the patches of a CLIP-style sequence (CLS at index 0 skipped): out has N - 1 entries.
template <cpu_policy Policy, attention_source Source>
void contribution_degree(const Policy& policy, const Source& attention, head_reduction op, std::span<float> out) {
  contribution_degree(policy, attention, op, token_range::skip_cls(query_tokens(attention)), out);
}

TOKENSEL_END_NAMESPACE
