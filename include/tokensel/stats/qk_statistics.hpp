// tokensel: attention statistics straight from Q and K, never materialising the N x N map.
//
// Queries are processed in tiles of qk_tile_rows rows, in ascending order. For each tile and
// head: S = scale * Q_tile K^T (Eigen GEMM, fp32), causal mask, softmax over all keys (row max and
// canonical-order sum, or the engine's log-sum-exp when given), then the heads are reduced
// (mean / sum / max, ascending heads) into the tile of M. Statistics read the tile and move on, so
// the extra memory is heads x tile x n_k floats (O(n) per head) plus the outputs.
// The statistics are those of the materialised softmax up to fp32 rounding; materialize_attention
// runs the same pipeline to produce the map itself (for checks and debugging).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <string>

#include <Eigen/Core>

#include "tokensel/core/config.hpp"
#include "tokensel/detail/fast_exp.hpp"
#include "tokensel/detail/parallel.hpp"
#include "tokensel/detail/reduce.hpp"
#include "tokensel/detail/scratch.hpp"
#include "tokensel/detail/validate.hpp"
#include "tokensel/core/element.hpp"
#include "tokensel/stats/head_reduction.hpp"
#include "tokensel/stats/map_sums.hpp"
#include "tokensel/core/policy.hpp"
#include "tokensel/core/qk_source.hpp"
#include "tokensel/core/tensor_view.hpp"

TOKENSEL_BEGIN_NAMESPACE

/// Query rows per tile of the Q/K pipeline (a fixed number, so results never depend on threads).
inline constexpr index_t qk_tile_rows = 64;

namespace detail {

using row_major_f32 = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
/// Logit blocks of at most 32 query rows: Eigen parallelises (OpenMP) and heap-allocates a
/// product only when the destination may have more than 32 rows at compile time, so this type
/// keeps every product single-threaded under sequential_policy and allocation-free.
inline constexpr index_t qk_gemm_rows = 32;
using logit_block_f32 = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor, qk_gemm_rows, Eigen::Dynamic>;

/// Copies a [n, d] slice of a [heads, n, d] tensor into a row-major fp32 buffer, scaled.
template <element T>
void load_rows_f32(const tensor_view<const T, 3>& t, index_t head, std::span<const index_t> rows, float* out) {
  const index_t d = t.extent(2);
  for (std::size_t r = 0; r < rows.size(); ++r) {
    for (index_t c = 0; c < d; ++c) out[static_cast<index_t>(r) * d + c] = to_float(t(head, rows[r], c));
  }
}

/// The Q/K tile engine. visit(first, count, probabilities) is called once per tile, in
/// ascending tile order, with probabilities = [heads, count, n_k] fp32 (row r is the query
/// row_ids[first + r]). Columns cover every key (masked ones are 0).
template <cpu_policy Policy, element T, class Visit>
void for_each_probability_tile(const Policy& policy, const qk_source<T>& src, std::span<const index_t> row_ids,
                               Visit&& visit) {
  const index_t heads = src.heads(), kv_heads = src.kv_heads(), nk = src.key_count(), d = src.head_dim();
  const index_t group = kv_heads == 0 ? 1 : heads / kv_heads;
  const auto total = static_cast<index_t>(row_ids.size());
  if (total == 0 || heads == 0) return;
  const float scale = src.effective_scale();
  const index_t offset = src.effective_causal_offset();
  const bool has_lse = src.lse.data() != nullptr;

  scratch_scope scratch;
  // Keys once, as fp32 row-major [kv_heads, n_k, d].
  auto keys = scratch.take<float>(static_cast<std::size_t>(kv_heads * nk * d));
  {
    auto all = scratch.take<index_t>(static_cast<std::size_t>(nk));
    for (index_t j = 0; j < nk; ++j) all[j] = j;
    parallel_for(policy, kv_heads, [&](index_t g) { load_rows_f32(src.keys, g, all, keys.data() + g * nk * d); });
  }
  const index_t tile = std::min(qk_tile_rows, total);
  // Keys per product: few enough that Eigen packs the key block on the stack (kc x nc floats;
  // above EIGEN_STACK_ALLOCATION_LIMIT it would malloc on every product). A multiple of 8.
  const index_t key_block =
      std::max<index_t>(8, static_cast<index_t>(EIGEN_STACK_ALLOCATION_LIMIT / sizeof(float)) / std::max<index_t>(d, 1) / 8 * 8);
  auto queries = scratch.take<float>(static_cast<std::size_t>(heads * tile * d));
  auto probs = scratch.take<float>(static_cast<std::size_t>(heads * tile * nk));

  for (index_t first = 0; first < total; first += tile) {
    const index_t count = std::min(tile, total - first);
    const std::span<const index_t> ids = row_ids.subspan(static_cast<std::size_t>(first), static_cast<std::size_t>(count));
    parallel_for(policy, heads, [&](index_t h) {
      float* q = queries.data() + h * tile * d;
      float* p = probs.data() + h * count * nk;
      load_rows_f32(src.queries, h, ids, q);
      Eigen::Map<const row_major_f32> km(keys.data() + (h / group) * nk * d, nk, d);
      for (index_t r0 = 0; r0 < count; r0 += qk_gemm_rows) {
        const index_t rows = std::min(qk_gemm_rows, count - r0);
        Eigen::Map<const row_major_f32> qm(q + r0 * d, rows, d);
        Eigen::Map<logit_block_f32> pm(p + r0 * nk, rows, nk);
        for (index_t j0 = 0; j0 < nk; j0 += key_block) {
          const index_t w = std::min(key_block, nk - j0);
          pm.middleCols(j0, w).noalias() = qm * km.middleRows(j0, w).transpose();
        }
      }
      for (index_t r = 0; r < count; ++r) {
        float* row = p + r * nk;
        const index_t i = ids[r];
        const index_t visible = src.causal ? std::clamp<index_t>(i + offset + 1, 0, nk) : nk;
        for (index_t j = 0; j < visible; ++j) row[j] *= scale;
        for (index_t j = visible; j < nk; ++j) row[j] = 0.0f;
        if (visible == 0) continue;  // a fully masked row has no probabilities
        if (has_lse) {
          const float lse = src.lse(h, i);
          for (index_t j = 0; j < visible; ++j) row[j] = fast_exp(row[j] - lse);
        } else {
          float m = row[0];
          for (index_t j = 1; j < visible; ++j) m = std::max(m, row[j]);
          for (index_t j = 0; j < visible; ++j) row[j] = fast_exp(row[j] - m);
          const float sum = canonical_sum(row, visible);
          for (index_t j = 0; j < visible; ++j) row[j] = row[j] / sum;
        }
      }
    });
    visit(first, count, std::span<const float>(probs.data(), static_cast<std::size_t>(heads * count * nk)));
  }
}

/// Head reduction of one probability tile [heads, count, n_k] into m [count, n_k], with the
/// arithmetic of reduce_heads (ascending heads, fp32, mean = sum / heads).
template <cpu_policy Policy>
void reduce_probability_tile(const Policy& policy, std::span<const float> probs, index_t heads, index_t count,
                             index_t nk, head_reduction op, float* m) {
  parallel_for(policy, count, [&](index_t r) {
    float* out = m + r * nk;
    for (index_t h = 0; h < heads; ++h) {
      const float* p = probs.data() + (h * count + r) * nk;
      if (h == 0) {
        std::copy(p, p + nk, out);
      } else if (op == head_reduction::max) {
        for (index_t j = 0; j < nk; ++j) out[j] = max_nan(out[j], p[j]);
      } else {
        for (index_t j = 0; j < nk; ++j) out[j] += p[j];
      }
    }
    if (op == head_reduction::mean) {
      const auto hf = static_cast<float>(heads);
      for (index_t j = 0; j < nk; ++j) out[j] = out[j] / hf;
    }
  });
}

/// Calls visit(first, count, m) with tiles of the head-reduced map M over the given query rows
/// (m is [count, n_k], every key).
template <cpu_policy Policy, element T, class Visit>
void for_each_reduced_tile(const Policy& policy, const qk_source<T>& src, std::span<const index_t> row_ids,
                           head_reduction op, Visit&& visit) {
  scratch_scope scratch;
  const index_t nk = src.key_count();
  const index_t tile = std::min<index_t>(qk_tile_rows, static_cast<index_t>(row_ids.size()));
  auto m = scratch.take<float>(static_cast<std::size_t>(tile * nk));
  for_each_probability_tile(policy, src, row_ids, [&](index_t first, index_t count, std::span<const float> probs) {
    reduce_probability_tile(policy, probs, src.heads(), count, nk, op, m.data());
    visit(first, count, static_cast<const float*>(m.data()));
  });
}

/// The query rows of a window, as explicit indices (in scratch owned by the caller's scope).
inline std::span<index_t> window_rows(scratch_scope& scratch, const token_range& rows) {
  auto ids = scratch.take<index_t>(static_cast<std::size_t>(rows.count));
  for (index_t r = 0; r < rows.count; ++r) ids[r] = rows.begin + r;
  return ids;
}

}  // namespace detail

/// map_sums for a Q/K source: row sums, column sums and diagonal of the head-reduced
/// probabilities over the source's window (rows x columns), computed tile by tile.
/// Column sums ascend over rows, row sums use the canonical order: the same arithmetic as
/// map_sums on the materialised map.
template <cpu_policy Policy, element T>
void map_sums(const Policy& policy, const qk_source<T>& src, head_reduction op, const map_sums_out& out) {
  validate(src);
  const token_range rows = src.rows(), cols = src.cols();
  detail::check_span(out.row_sums, rows.count, "map_sums.row_sums.size()");
  detail::check_span(out.column_sums, cols.count, "map_sums.column_sums.size()");
  detail::check_span(out.diagonal, std::min(rows.count, cols.count), "map_sums.diagonal.size()");
  detail::check_heads_present(src.heads(), rows.count, cols.count);
  if (!out.column_sums.empty()) std::fill(out.column_sums.begin(), out.column_sums.end(), 0.0f);
  if (!out.row_sums.empty()) std::fill(out.row_sums.begin(), out.row_sums.end(), 0.0f);
  if (rows.count == 0 || cols.count == 0) return;
  const index_t nk = src.key_count();
  detail::scratch_scope scratch;
  const auto ids = detail::window_rows(scratch, rows);
  detail::for_each_reduced_tile(policy, src, ids, op, [&](index_t first, index_t count, const float* m) {
    detail::parallel_for(policy, count, [&](index_t r) {
      const float* row = m + r * nk + cols.begin;
      const index_t i = first + r;
      if (!out.row_sums.empty()) out.row_sums[i] = detail::canonical_sum(row, cols.count);
      if (!out.diagonal.empty() && i < cols.count) out.diagonal[i] = row[i];
    });
    if (out.column_sums.empty()) return;
    constexpr index_t block = 64;
    detail::parallel_for(policy, (cols.count + block - 1) / block, [&](index_t b) {
      const index_t j0 = b * block, j1 = std::min(cols.count, j0 + block);
      float* col = out.column_sums.data();
      for (index_t r = 0; r < count; ++r) {
        const float* row = m + r * nk + cols.begin;
        for (index_t j = j0; j < j1; ++j) col[j] += row[j];
      }
    });
  });
}

/// Rows of the head-reduced probabilities: out(r, :) = M[rows[r], window columns], for query
/// indices relative to the source's row window (e.g. {0} = the CLS row, {n_q - 1} = last token).
template <cpu_policy Policy, element T>
void reduced_rows(const Policy& policy, const qk_source<T>& src, head_reduction op, std::span<const index_t> rows,
                  const matrix_view<float>& out) {
  validate(src);
  const token_range win = src.rows(), cols = src.cols();
  if (out.extent(0) != static_cast<index_t>(rows.size()) || out.extent(1) != cols.count) {
    detail::fail(errc::shape_mismatch, "reduced_rows.out", std::to_string(out.extent(0)) + "x" + std::to_string(out.extent(1)),
                 "must be " + std::to_string(rows.size()) + "x" + std::to_string(cols.count));
  }
  detail::scratch_scope scratch;
  auto ids = scratch.take<index_t>(rows.size());
  for (std::size_t r = 0; r < rows.size(); ++r) {
    if (rows[r] < 0 || rows[r] >= win.count) {
      detail::fail(errc::invalid_argument, detail::at_index("reduced_rows.rows", static_cast<index_t>(r)), rows[r],
                   "row outside the " + std::to_string(win.count) + " query rows");
    }
    ids[r] = win.begin + rows[r];
  }
  const index_t nk = src.key_count();
  detail::for_each_reduced_tile(policy, src, ids, op, [&](index_t first, index_t count, const float* m) {
    for (index_t r = 0; r < count; ++r)
      for (index_t j = 0; j < cols.count; ++j) out(first + r, j) = m[r * nk + cols.begin + j];
  });
}

/// Same for a materialised attention view [heads, q, k].
template <cpu_policy Policy, element T>
void reduced_rows(const Policy& policy, const head_attention_view<T>& attention, head_reduction op,
                  std::span<const index_t> rows, const matrix_view<float>& out) {
  const index_t q = attention.extent(1), k = attention.extent(2);
  if (out.extent(0) != static_cast<index_t>(rows.size()) || out.extent(1) != k) {
    detail::fail(errc::shape_mismatch, "reduced_rows.out", std::to_string(out.extent(0)) + "x" + std::to_string(out.extent(1)),
                 "must be " + std::to_string(rows.size()) + "x" + std::to_string(k));
  }
  detail::check_heads_present(attention.extent(0), static_cast<index_t>(rows.size()), k);
  for (std::size_t r = 0; r < rows.size(); ++r) {
    if (rows[r] < 0 || rows[r] >= q) {
      detail::fail(errc::invalid_argument, detail::at_index("reduced_rows.rows", static_cast<index_t>(r)), rows[r],
                   "row outside the " + std::to_string(q) + " query rows");
    }
  }
  if (k == 0) return;
  detail::parallel_for(policy, static_cast<index_t>(rows.size()), [&](index_t r) {
    detail::scratch_scope scratch;
    auto row = scratch.take<float>(static_cast<std::size_t>(k));
    detail::reduce_heads_row(attention, rows[r], op, row.data());
    for (index_t j = 0; j < k; ++j) out(r, j) = row[j];
  });
}

/// Writes the per-head probabilities of the source's window into out [heads, rows, cols]
/// (the materialised map the statistics describe; O(n^2) by nature, for checks and debugging).
template <cpu_policy Policy, element T>
void materialize_attention(const Policy& policy, const qk_source<T>& src, const tensor_view<float, 3>& out) {
  validate(src);
  const token_range rows = src.rows(), cols = src.cols();
  if (out.extent(0) != src.heads() || out.extent(1) != rows.count || out.extent(2) != cols.count) {
    detail::fail(errc::shape_mismatch, "materialize_attention.out",
                 std::to_string(out.extent(0)) + "x" + std::to_string(out.extent(1)) + "x" + std::to_string(out.extent(2)),
                 "must be heads x window rows x window cols");
  }
  const index_t nk = src.key_count();
  detail::scratch_scope scratch;
  const auto ids = detail::window_rows(scratch, rows);
  detail::for_each_probability_tile(policy, src, ids, [&](index_t first, index_t count, std::span<const float> probs) {
    for (index_t h = 0; h < src.heads(); ++h)
      for (index_t r = 0; r < count; ++r)
        for (index_t j = 0; j < cols.count; ++j) out(h, first + r, j) = probs[(h * count + r) * nk + cols.begin + j];
  });
}

TOKENSEL_END_NAMESPACE
