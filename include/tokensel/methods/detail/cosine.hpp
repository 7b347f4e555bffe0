// tokensel internals: unit rows and cosine similarities of feature rows, shared by the
// feature-similarity methods (DivPrune, DART, VisPruner).
//
// A row x (widened to fp32, optionally scaled channel-wise by w) becomes u = x / ||x||, the norm
// being sqrt of the canonical fp32 dot of x with itself (detail/reduce.hpp) and each element
// divided by it (one rounded division, as the CUDA backend's fdiv). A zero row stays zero, so its
// cosine with every row is 0 (the official codes would divide by zero). The cosine of two rows
// is the canonical dot of their unit rows: symmetric bit for bit (products commute), so a table of
// all of them (cosine_table) computes each pair once.
#pragma once

#include <algorithm>
#include <cmath>
#include <span>
#include <string>
#include <string_view>

#include "tokensel/core/config.hpp"
#include "tokensel/core/element.hpp"
#include "tokensel/core/error.hpp"
#include "tokensel/core/tensor_view.hpp"
#include "tokensel/detail/arith.hpp"
#include "tokensel/detail/parallel.hpp"
#include "tokensel/detail/reduce.hpp"
#include "tokensel/detail/widen.hpp"
#include "tokensel/methods/detail/feature_rules.hpp"

TOKENSEL_BEGIN_NAMESPACE
namespace detail {

/// u[0, d) scaled to unit length (a zero row stays zero); a norm that overflows fp32 is an error
/// naming row t.
inline void normalise_row(float* u, index_t d, index_t t, std::string_view name) {
  const float norm = detail::row_norm(detail::canonical_dot(u, u, d));
  const norm_kind kind = detail::classify_norm(norm);
  if (kind == norm_kind::scale) {
    for (index_t c = 0; c < d; ++c) u[c] = detail::fdiv(u[c], norm);
  } else if (kind == norm_kind::zero) {
    for (index_t c = 0; c < d; ++c) u[c] = 0.0f;
  } else {
    detail::fail(errc::non_finite, std::string(name) + "[" + std::to_string(t) + ", :]", norm, "the row's norm overflows fp32");
  }
}

/// unit[r * D, (r + 1) * D) = the unit vector of x(rows[r], :) (scaled by `weight` when it is not
/// empty). rows may be null: then row r is x's row r. Non-finite inputs throw, naming `name`
/// and the element's (row, channel).
template <class Policy, element X, element W = float>
void unit_feature_rows(const Policy& policy, const matrix_view<const X>& x, const token_index* rows, index_t count,
               std::span<float> unit, std::string_view name,
               const vector_view<const W>& weight = vector_view<const W>{}) {
  const index_t d = x.extent(1);
  const bool weighted = weight.extent(0) > 0;
  detail::parallel_for(policy, count, [&](index_t r) {
    const index_t t = rows ? static_cast<index_t>(rows[r]) : r;
    float* u = unit.data() + r * d;
    // A contiguous row is widened in bulk (F16C for fp16: Eigen's scalar half -> float is a
    // software conversion under GCC) and checked in one pass; the element loop below then only
    // runs to name a non-finite value. The values are the same (the widening is exact).
    if (d > 0 && x.inner_contiguous()) {
      widen(&x(t, 0), d, u);
      if (all_finite(u, d)) {
        for (index_t c = 0; c < d; ++c) u[c] = detail::weighted_feature(u[c], weighted ? to_float(weight(c)) : 1.0f, weighted);
        normalise_row(u, d, t, name);
        return;
      }
    }
    for (index_t c = 0; c < d; ++c) {
      const float v = to_float(x(t, c));
      if (!std::isfinite(v)) {
        detail::fail(errc::non_finite, std::string(name) + "[" + std::to_string(t) + ", " + std::to_string(c) + "]",
                               v, "values must be finite");
      }
      u[c] = detail::weighted_feature(v, weighted ? to_float(weight(c)) : 1.0f, weighted);
    }
    normalise_row(u, d, t, name);
  });
}

/// cosine[r * n + j] = canonical_dot(row rows[r], row j) for r < rows.size(), j < n, of the unit
/// rows `unit` (width d; rows[r] may index past n): register-blocked tiles of canonical dots (the
/// same bits as one dot per pair) over blocks of columns that stay in cache across the rows, so
/// the columns are read once, not once per row.
template <class Policy>
void cosine_rows(const Policy& policy, const float* unit, index_t d, index_t n, std::span<const token_index> rows,
                 std::span<float> cosine) {
  constexpr index_t R = detail::dot_tile_rows, C = detail::dot_tile_cols;
  constexpr index_t block = 8 * C;  // columns per task: 8 tiles wide
  const auto count = static_cast<index_t>(rows.size());
  // The multiply-adds, count x n x d, stand for the bytes: compute-bound work.
  const std::size_t work = detail::bytes_of<float>(count * n * d);
  detail::parallel_for(policy, (n + block - 1) / block, work, [&](index_t blk) {
    const index_t j1 = std::min(n, (blk + 1) * block);
    for (index_t r0 = 0; r0 < count; r0 += R) {
      const float* a[R];
      const auto nr = static_cast<int>(std::min(R, count - r0));
      for (int r = 0; r < nr; ++r) a[r] = unit + static_cast<index_t>(rows[static_cast<std::size_t>(r0 + r)]) * d;
      for (index_t j = blk * block; j < j1; j += C) {
        const float* b[C];
        const auto nc = static_cast<int>(std::min(C, j1 - j));
        for (int c = 0; c < nc; ++c) b[c] = unit + (j + c) * d;
        detail::canonical_dot_tile(a, nr, b, nc, d, cosine.data() + r0 * n + j, n);
      }
    }
  });
}

/// Row tiles per task of cosine_table: a band of 8 tiles keeps its rows (32 x 16 kB at D = 4096)
/// in the L2 cache next to the column tile they all meet (measured at llava15, 2 MB of L2 per
/// core: 4 tiles 34 ms, 8 tiles 29 ms, 16 tiles 28-29 ms, 32 tiles 37-44 ms, one tile 44 ms; under load).
inline constexpr index_t cosine_band_tiles = 8;

/// Writes the cells (i0 + r, j0 + c) of a tile with j >= i, and their mirror (j, i).
inline void mirror_upper_cells(const float* tile, index_t tile_stride, index_t i0, int nr, index_t j0, int nc, index_t n,
                               std::span<float> table) noexcept {
  for (int r = 0; r < nr; ++r) {
    for (int c = 0; c < nc; ++c) {
      const index_t i = i0 + r, j = j0 + c;
      if (j < i) continue;  // below the diagonal: the pair (j, i) holds it
      table[static_cast<std::size_t>(i * n + j)] = tile[r * tile_stride + c];
      table[static_cast<std::size_t>(j * n + i)] = tile[r * tile_stride + c];
    }
  }
}

/// table[i * n + j] = canonical_dot(row i, row j) for all i, j < n of the unit rows [n, d]: the same
/// bits (canonical_dot_tile), each pair computed once and mirrored (a cosine is symmetric bit for
/// bit: its products commute). A task is a band of cosine_band_tiles row tiles against the columns
/// from its first row on: each column tile, read once from memory, serves every row tile of the
/// band from cache (one row tile per column tile made the column rows the bottleneck, read n / R
/// times). The last (lightest) band runs first, so that OpenMP's guided schedule hands out the
/// heavy first rows in small pieces. Each cell has one writer: the band of min(i, j).
template <class Policy>
void cosine_table(const Policy& policy, const float* unit, index_t n, index_t d, std::span<float> table) {
  constexpr index_t R = detail::dot_tile_rows, C = detail::dot_tile_cols, band = cosine_band_tiles * R;
  const index_t bands = (n + band - 1) / band;
  // The multiply-adds, n^2 / 2 x d, stand for the bytes: compute-bound work.
  detail::parallel_for(policy, bands, detail::bytes_of<float>(n * (n / 2) * d), [&](index_t task) {
    const index_t b0 = (bands - 1 - task) * band, b1 = std::min(n, b0 + band);
    float tile[R * C];
    for (index_t j0 = b0; j0 < n; j0 += C) {
      const auto nc = static_cast<int>(std::min(C, n - j0));
      const float* cols[C];
      for (int c = 0; c < nc; ++c) cols[c] = unit + (j0 + c) * d;
      // Row tiles that hold a cell with j >= i: those starting before the column tile ends.
      for (index_t i0 = b0; i0 < b1 && i0 < j0 + nc; i0 += R) {
        const auto nr = static_cast<int>(std::min(R, b1 - i0));
        const float* rows[R];
        for (int r = 0; r < nr; ++r) rows[r] = unit + (i0 + r) * d;
        detail::canonical_dot_tile(rows, nr, cols, nc, d, tile, C);
        mirror_upper_cells(tile, C, i0, nr, j0, nc, n, table);
      }
    }
  });
}

/// Checks a channel weight: empty, or d finite values.
template <element W>
void check_channel_weight(const vector_view<const W>& weight, index_t d, std::string_view name) {
  if (weight.extent(0) == 0) return;
  if (weight.extent(0) != d) {
    detail::fail(errc::shape_mismatch, std::string(name) + ".extent(0)", weight.extent(0),
                           "must be 0 (no weight) or the feature width " + std::to_string(d));
  }
  for (index_t c = 0; c < d; ++c) {
    const float w = to_float(weight(c));
    if (!std::isfinite(w)) detail::fail(errc::non_finite, std::string(name) + "[" + std::to_string(c) + "]", w, "must be finite");
  }
}

}  // namespace detail
TOKENSEL_END_NAMESPACE
