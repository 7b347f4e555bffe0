// tokensel: row sums, column sums and the diagonal of a head-reduced attention map in one pass
// over the attention (the reduced map is never stored on the sequential path). These three
// vectors are what FoPru (row and column means) and freePruner (column sum minus diagonal) need.
#pragma once

#include <algorithm>
#include <span>
#include <string>

#include "tokensel/core/config.hpp"
#include "tokensel/detail/ordered_rows.hpp"
#include "tokensel/detail/reduce.hpp"
#include "tokensel/detail/validate.hpp"
#include "tokensel/core/element.hpp"
#include "tokensel/stats/head_reduction.hpp"
#include "tokensel/core/policy.hpp"
#include "tokensel/core/tensor_view.hpp"

TOKENSEL_BEGIN_NAMESPACE

/// Caller-owned outputs of map_sums; any may be empty (not computed), else sized q (rows),
/// k (columns) and min(q, k) (diagonal).
struct map_sums_out {
  std::span<float> row_sums;     ///< row_sums[i] = sum_j M[i, j]  (canonical 32-lane order)
  std::span<float> column_sums;  ///< column_sums[j] = sum_i M[i, j] (ascending i)
  std::span<float> diagonal;     ///< diagonal[i] = M[i, i]
};

namespace detail {
inline void check_span(std::span<float> s, index_t n, std::string_view name) {
  if (!s.empty() && static_cast<index_t>(s.size()) != n) {
    fail(errc::shape_mismatch, name, s.size(), "must be empty or " + std::to_string(n));
  }
}
}  // namespace detail

/// Computes the requested sums of M = reduce_heads(attention, op) for attention [heads, q, k]
/// (restrict it first with restrict_tokens for the patch submatrix). Results are bit-identical
/// under every policy: the sequential path fuses everything into one streaming pass; the
/// threaded path reduces chunks of rows in parallel and adds their columns in ascending row
/// order as the chunks finish.
template <cpu_policy Policy, element T>
void map_sums(const Policy& policy, const head_attention_view<T>& attention, head_reduction op,
              const map_sums_out& out) {
  const index_t heads = attention.extent(0), rows = attention.extent(1), cols = attention.extent(2);
  detail::check_span(out.row_sums, rows, "map_sums.row_sums.size()");
  detail::check_span(out.column_sums, cols, "map_sums.column_sums.size()");
  detail::check_span(out.diagonal, std::min(rows, cols), "map_sums.diagonal.size()");
  detail::check_heads_present(heads, rows, cols);
  if (!out.column_sums.empty()) std::fill(out.column_sums.begin(), out.column_sums.end(), 0.0f);
  if (rows == 0 || cols == 0) {
    if (!out.row_sums.empty()) std::fill(out.row_sums.begin(), out.row_sums.end(), 0.0f);
    return;
  }

  float* col = out.column_sums.empty() ? nullptr : out.column_sums.data();
  detail::compute_rows_fold_in_order(
      policy, rows, cols, detail::bytes_of<T>(heads * cols),
      [&](index_t i, float* row) {
        detail::reduce_heads_row(attention, i, op, row);
        if (!out.row_sums.empty()) out.row_sums[i] = detail::canonical_sum(row, cols);
        if (!out.diagonal.empty() && i < cols) out.diagonal[i] = row[i];
      },
      [&](index_t, const float* row) {
        if (col != nullptr) {
          for (index_t j = 0; j < cols; ++j) col[j] += row[j];
        }
      });
}

TOKENSEL_END_NAMESPACE
