// tokensel: row aggregation on a token grid (spec 1.6): score each grid row by the sum (or mean)
// of its tokens' scores, keep the top-R rows (tie rule: lower row first), expand to tokens.
#pragma once

#include <span>
#include <string>

#include "tokensel/core/config.hpp"
#include "tokensel/detail/reduce.hpp"
#include "tokensel/detail/scratch.hpp"
#include "tokensel/detail/validate.hpp"
#include "tokensel/core/element.hpp"
#include "tokensel/core/tensor_view.hpp"
#include "tokensel/core/token_grid.hpp"
#include "tokensel/select/top_k.hpp"

TOKENSEL_BEGIN_NAMESPACE

enum class row_reduction { sum, mean };

/// row_scores[r] = sum (or mean) over the grid row r of scores (canonical summation order).
template <element T>
void row_scores(const tensor_view<const T, 1>& scores, const token_grid& grid, row_reduction op,
                std::span<float> out) {
  check_grid(grid, scores.extent(0), "row_scores.grid");
  if (static_cast<index_t>(out.size()) != grid.rows) {
    detail::fail(errc::shape_mismatch, "row_scores.out.size()", out.size(), "must equal grid.rows = " + std::to_string(grid.rows));
  }
  for (index_t r = 0; r < grid.rows; ++r) {
    const T* first = grid.cols == 0 ? nullptr : &scores(grid.at(r, 0));
    float s = detail::canonical_sum(first, grid.cols, scores.stride(0));
    if (op == row_reduction::mean && grid.cols > 0) s = s / static_cast<float>(grid.cols);
    out[r] = s;
  }
}

/// Keeps the `rows_kept` best rows and writes all their tokens, ascending, into out.
/// Returns rows_kept * grid.cols.
template <element T>
index_t select_rows(const tensor_view<const T, 1>& scores, const token_grid& grid, index_t rows_kept,
                    row_reduction op, std::span<token_index> out) {
  check_grid(grid, scores.extent(0), "select_rows.grid");
  detail::check_count(rows_kept, grid.rows, "select_rows.rows_kept");
  detail::check_capacity(out.size(), rows_kept * grid.cols, "select_rows.out.size()");
  detail::check_finite(scores, "select_rows.scores");
  detail::scratch_scope scratch;
  auto per_row = scratch.take<float>(static_cast<std::size_t>(grid.rows));
  auto rows = scratch.take<token_index>(static_cast<std::size_t>(rows_kept));
  row_scores(scores, grid, op, per_row);
  top_k<float>(as_view(std::span<const float>(per_row), "row_scores"), rows_kept, rows, index_order::ascending);
  index_t written = 0;
  for (index_t r = 0; r < rows_kept; ++r) {
    for (index_t c = 0; c < grid.cols; ++c) out[written++] = static_cast<token_index>(grid.at(rows[r], c));
  }
  return written;
}

TOKENSEL_END_NAMESPACE
