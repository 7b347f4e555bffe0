// tokensel: the patch grid of an image (rows x cols, row-major token order).
#pragma once

#include <cmath>
#include <string>

#include "tokensel/core/config.hpp"
#include "tokensel/core/error.hpp"

TOKENSEL_BEGIN_NAMESPACE

/// rows x cols patches in row-major order: token t sits at (t / cols, t % cols).
struct token_grid {
  index_t rows = 0;
  index_t cols = 0;

  index_t size() const noexcept { return rows * cols; }
  index_t row_of(index_t t) const noexcept { return t / cols; }
  index_t col_of(index_t t) const noexcept { return t % cols; }
  index_t at(index_t r, index_t c) const noexcept { return r * cols + c; }

  /// The square grid of n tokens; throws when n is not a perfect square.
  static token_grid square(index_t n, std::string_view name = "grid") {
    if (n < 0) detail::fail(errc::invalid_argument, std::string(name) + ".n", n, "must be >= 0");
    auto side = static_cast<index_t>(std::llround(std::sqrt(static_cast<double>(n))));
    // Compare by division: side * side can overflow for n near the index_t maximum.
    while (side > 0 && side > n / side) --side;
    while (side + 1 <= n / (side + 1)) ++side;
    if (side * side != n) {
      detail::fail(errc::shape_mismatch, std::string(name) + ".n", n,
                   "not a square number of tokens; pass an explicit rows x cols grid");
    }
    return {side, side};
  }
};

/// Throws unless grid is valid for n tokens (rows, cols >= 0 and rows * cols == n).
inline void check_grid(const token_grid& grid, index_t n, std::string_view name = "grid") {
  // rows * cols == n, tested by division (the product of fuzzed extents can overflow).
  const bool covers = grid.rows >= 0 && grid.cols >= 0 &&
                      (grid.rows == 0 ? n == 0 : (n % grid.rows == 0 && n / grid.rows == grid.cols));
  if (!covers) {
    detail::fail(errc::shape_mismatch, name,
                 std::to_string(grid.rows) + "x" + std::to_string(grid.cols),
                 "does not cover the " + std::to_string(n) + " tokens");
  }
}

TOKENSEL_END_NAMESPACE
