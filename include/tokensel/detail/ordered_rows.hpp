// tokensel internals: rows computed one at a time and folded into column accumulators in
// ascending row order (column sums of a head-reduced map, FitPrune's region masses). The fold
// order is what keeps every policy's column sums bit-identical to the sequential pass.
#pragma once

#include <algorithm>
#include <cstddef>

#include "tokensel/core/config.hpp"
#include "tokensel/core/policy.hpp"
#include "tokensel/detail/parallel.hpp"
#include "tokensel/detail/scratch.hpp"

TOKENSEL_BEGIN_NAMESPACE
namespace detail {

/// Rows per chunk of the threaded pipeline: about 384 kB of input each (every chunk restarts
/// the hardware prefetchers' per-head streams: at f16 llava15, chunks of 4 rows took 1.4x the
/// time of chunks of 16-24), and at least 16 chunks, so that the last one leaves no thread idle
/// for long.
inline index_t ordered_rows_chunk(index_t rows, std::size_t input_bytes_per_row) noexcept {
  const auto by_bytes = static_cast<index_t>((std::size_t{384} << 10) / std::max<std::size_t>(1, input_bytes_per_row));
  return std::max<index_t>(1, std::min(by_bytes, (rows + 15) / 16));
}

/// Chunks in flight (the ring of computed rows): enough for two threads to run ahead of the one
/// that folds them in.
inline constexpr index_t ordered_rows_window = 8;

/// For i in [0, rows): compute(i, row) writes row i (cols floats) into row, then fold(i, row)
/// adds it to the caller's accumulators. fold runs in ascending i, one call at a time, under
/// every policy. Sequential: one row buffer, compute and fold alternate (a single streaming
/// pass). Threaded: chunks of rows are computed in parallel into a ring of window chunks and
/// folded in order as they finish (parallel_ordered_chunks): no stored map, no second pass.
/// compute may throw (the lowest row's error is rethrown); `input_bytes_per_row` sizes the chunks
/// and, with rows, decides whether threads pay off (parallel_min_bytes).
template <cpu_policy Policy, class Compute, class Fold>
void compute_rows_fold_in_order(const Policy& policy, index_t rows, index_t cols, std::size_t input_bytes_per_row,
                                Compute&& compute, Fold&& fold) {
  scratch_scope scratch;
  const std::size_t bytes = input_bytes_per_row * static_cast<std::size_t>(std::max<index_t>(rows, 0));
  if (rows <= 1 || !runs_threaded(policy, bytes)) {
    auto row = scratch.take<float>(static_cast<std::size_t>(cols));
    for (index_t i = 0; i < rows; ++i) {
      compute(i, row.data());
      fold(i, static_cast<const float*>(row.data()));
    }
    return;
  }
  const index_t chunk = ordered_rows_chunk(rows, input_bytes_per_row), chunks = (rows + chunk - 1) / chunk;
  const index_t window = std::min(chunks, ordered_rows_window);
  auto ring = scratch.take<float>(static_cast<std::size_t>(window * chunk * cols));
  auto for_rows = [&](index_t c, index_t slot, auto&& f) {
    const index_t first = c * chunk, last = std::min(rows, first + chunk);
    for (index_t i = first; i < last; ++i) f(i, ring.data() + (slot * chunk + (i - first)) * cols);
  };
  parallel_ordered_chunks(
      policy, chunks, window, bytes, [&](index_t c, index_t slot) { for_rows(c, slot, compute); },
      [&](index_t c, index_t slot) {
        for_rows(c, slot, [&](index_t i, float* row) { fold(i, static_cast<const float*>(row)); });
      });
}

}  // namespace detail
TOKENSEL_END_NAMESPACE
