// tokensel: region masses of one LLM layer's attention around the visual span (spec section 4).
//
// An LLM prefill sequence is [prefix | visual span [s0, s0 + n) | text after the image]. With
// M = reduce_heads(A) (FitPrune: max over heads) and T = L - s0 - n text rows after the span:
//   cross[j] = sum_{i >= s0+n} M[i, s0+j]              (attention the text pays to visual token j)
//   self[j]  = (1/n) sum_{i in span} M[i, s0+j]        (attention the image pays to visual token j)
//   cross_mass (Wc) = (1/T) sum_{i >= s0+n} sum_j M[i, s0+j]   (mean visual mass of a text row)
//   self_mass  (Ws) = (1/n) sum_{i in span} sum_j M[i, s0+j]   (mean visual mass of a visual row)
// Only rows >= s0 and the n visual columns are read; the head-reduced map is never stored
// (rows are reduced one at a time into a scratch row). The span comes from the caller (located
// from the image placeholder of the prompt), never from a constant.
//
// Summation order (bit-identical under every policy and the future CUDA backend): column sums
// ascending over rows; every row total is detail::canonical_sum over the n visual columns; the
// masses are canonical_sum over the row totals, then one division.
//
// From Q/K (qk_source, FlashAttention engines): the max over heads is not linear, so the masses
// cannot come from per-head sums; the rows s0 .. L-1 are computed as head-reduced tiles (the
// softmax over every visible key, then the reduction) and read with the same orders as above, so
// the results equal the materialised map's to fp32 rounding. Memory: heads x 64 x L floats.
#pragma once

#include <algorithm>
#include <cmath>
#include <span>
#include <string>
#include <type_traits>

#include "tokensel/core/attention_source.hpp"
#include "tokensel/core/config.hpp"
#include "tokensel/detail/ordered_rows.hpp"
#include "tokensel/detail/parallel.hpp"
#include "tokensel/detail/reduce.hpp"
#include "tokensel/detail/scratch.hpp"
#include "tokensel/detail/validate.hpp"
#include "tokensel/core/element.hpp"
#include "tokensel/core/error.hpp"
#include "tokensel/stats/head_reduction.hpp"
#include "tokensel/core/policy.hpp"
#include "tokensel/core/qk_source.hpp"
#include "tokensel/stats/qk_statistics.hpp"
#include "tokensel/core/tensor_view.hpp"
#include "tokensel/core/token_range.hpp"

TOKENSEL_BEGIN_NAMESPACE

/// Caller-owned per-token outputs of region_mass; either may be empty (not computed), else sized n.
struct region_mass_out {
  std::span<float> cross;  ///< cross[j] = sum over text rows of M[i, s0+j]  (a_c, not divided by T)
  std::span<float> self;   ///< self[j]  = mean over visual rows of M[i, s0+j] (a_s)
};

/// Scalar statistics of one sample and layer.
struct [[nodiscard]] region_mass_result {
  float cross_mass = 0.0f;  ///< Wc: mean over text rows of the mass on visual columns (0 when T = 0)
  float self_mass = 0.0f;   ///< Ws: mean over visual rows of the mass on visual columns (0 when n = 0)
  index_t text_rows = 0;    ///< T = L - s0 - n
};

namespace detail {

inline void check_llm_attention(index_t queries, index_t keys, const token_range& visual, std::string_view method) {
  if (queries != keys) {
    fail(errc::shape_mismatch, std::string(method) + ".attention",
         std::to_string(queries) + "x" + std::to_string(keys), "queries and keys must be the same tokens (prefill)");
  }
  // The name is built only on failure: this runs on every prefill layer's hot path.
  if (!range_within(visual, keys)) check_range(visual, keys, std::string(method) + ".visual");
}

/// Reduces heads of row i over the visual columns (view already sliced to them) and rejects
/// non-finite values, naming the sequence position.
template <class T>
void reduced_visual_row(const head_attention_view<T>& columns, index_t i, index_t s0, head_reduction op, float* row,
                        std::string_view method) {
  reduce_heads_row(columns, i, op, row);
  const index_t n = columns.extent(2);
  for (index_t j = 0; j < n; ++j) {
    if (!std::isfinite(row[j])) {
      fail(errc::non_finite,
           std::string(method) + ".attention[" + std::to_string(i) + ", " + std::to_string(s0 + j) + "]", row[j],
           "attention values must be finite");
    }
  }
}

}  // namespace detail

namespace detail {
/// The output spans of region_mass: empty, or n values each (both backends).
inline void check_region_mass_outputs(const region_mass_out& out, index_t n) {
  if (!out.cross.empty() && static_cast<index_t>(out.cross.size()) != n) {
    fail(errc::shape_mismatch, "region_mass.out.cross.size()", out.cross.size(), "must be empty or " + std::to_string(n));
  }
  if (!out.self.empty() && static_cast<index_t>(out.self.size()) != n) {
    fail(errc::shape_mismatch, "region_mass.out.self.size()", out.self.size(), "must be empty or " + std::to_string(n));
  }
}
}  // namespace detail

/// Region masses of attention [heads, L, L] (probabilities of one prefill layer, any strides,
/// fp32/fp16/bf16) around the visual span `visual` = [s0, s0 + n), heads combined by `op`.
/// Throws on a non-square map, a span outside [0, L), a missing head, a non-finite value in the
/// rows and columns read, or output spans of the wrong size.
template <cpu_policy Policy, element T>
region_mass_result region_mass(const Policy& policy, const head_attention_view<T>& attention,
                               const token_range& visual, head_reduction op, const region_mass_out& out = {}) {
  const index_t heads = attention.extent(0), L = attention.extent(1);
  detail::check_llm_attention(L, attention.extent(2), visual, "region_mass");
  const index_t s0 = visual.begin, n = visual.count, text = L - visual.end();
  detail::check_region_mass_outputs(out, n);
  region_mass_result res;
  res.text_rows = text;
  if (n == 0) return res;
  detail::check_heads_present(heads, L, L);

  // Rows s0 .. L-1 (visual, then text) restricted to the visual columns.
  const auto columns = attention.slice(2, s0, n, "region_mass.attention");
  const index_t rows = n + text;
  detail::scratch_scope scratch;
  auto totals = scratch.take<float>(static_cast<std::size_t>(rows));  // row totals, visual rows first
  auto self_acc = scratch.take_zeroed<float>(static_cast<std::size_t>(n));
  auto cross_acc = scratch.take_zeroed<float>(static_cast<std::size_t>(n));

  // One streaming pass (threaded: chunks of rows in parallel): reduce a row, total it, add it to
  // its column accumulator in ascending row order (the same bits under every policy).
  detail::compute_rows_fold_in_order(
      policy, rows, n, detail::bytes_of<T>(heads * n),
      [&](index_t r, float* row) {
        detail::reduced_visual_row(columns, s0 + r, s0, op, row, "region_mass");
        totals[r] = detail::canonical_sum(row, n);
      },
      [&](index_t r, const float* row) {
        float* acc = r < n ? self_acc.data() : cross_acc.data();
        for (index_t j = 0; j < n; ++j) acc[j] += row[j];
      });

  const auto nf = static_cast<float>(n);
  if (!out.self.empty()) {
    for (index_t j = 0; j < n; ++j) out.self[j] = self_acc[j] / nf;
  }
  if (!out.cross.empty()) std::copy(cross_acc.begin(), cross_acc.end(), out.cross.begin());
  res.self_mass = detail::canonical_sum(totals.data(), n) / nf;
  if (text > 0) res.cross_mass = detail::canonical_sum(totals.data() + n, text) / static_cast<float>(text);
  return res;
}

/// The same from the layer's queries and keys (prefill: queries and keys are the same L tokens
/// after the source's windows; set causal for an LLM; GQA and an engine LSE are honoured). One
/// tiled pass over the query rows s0 .. L-1: each row's softmax runs over every visible key, the
/// heads are reduced, and the n visual columns are read exactly as on the view path (column sums
/// ascending over rows, canonical row totals).
template <cpu_policy Policy, element T>
region_mass_result region_mass(const Policy& policy, const qk_source<T>& attention, const token_range& visual,
                               head_reduction op, const region_mass_out& out = {}) {
  validate(attention, "region_mass.qk");
  const index_t L = query_tokens(attention);
  detail::check_llm_attention(L, key_tokens(attention), visual, "region_mass");
  const index_t s0 = visual.begin, n = visual.count, text = L - visual.end();
  detail::check_region_mass_outputs(out, n);
  region_mass_result res;
  res.text_rows = text;
  if (n == 0) return res;
  detail::check_heads_present(attention.heads(), L, L);

  // Window-relative positions -> absolute query rows and key columns of the source.
  const index_t row0 = attention.rows().begin + s0, col0 = attention.cols().begin + s0;
  const index_t rows = n + text, nk = attention.key_count();
  detail::scratch_scope scratch;
  auto ids = scratch.take<index_t>(static_cast<std::size_t>(rows));
  for (index_t r = 0; r < rows; ++r) ids[r] = row0 + r;
  auto totals = scratch.take<float>(static_cast<std::size_t>(rows));  // row totals, visual rows first
  auto self_acc = scratch.take_zeroed<float>(static_cast<std::size_t>(n));
  auto cross_acc = scratch.take_zeroed<float>(static_cast<std::size_t>(n));
  detail::for_each_reduced_tile(policy, attention, std::span<const index_t>(ids), op,
                                [&](index_t first, index_t count, const float* m) {
    detail::parallel_for(policy, count, [&](index_t r) {
      totals[first + r] = detail::canonical_sum(m + r * nk + col0, n);
    });
    // Columns in blocks, each walking the tile's rows in ascending order (visual rows feed self,
    // text rows cross), continuing the sums of the previous tiles.
    constexpr index_t block = 64;
    detail::parallel_for(policy, (n + block - 1) / block, [&](index_t b) {
      const index_t j0 = b * block, j1 = std::min(n, j0 + block);
      for (index_t r = 0; r < count; ++r) {
        const float* row = m + r * nk + col0;
        float* acc = first + r < n ? self_acc.data() : cross_acc.data();
        for (index_t j = j0; j < j1; ++j) acc[j] += row[j];
      }
    });
  });

  const auto nf = static_cast<float>(n);
  if (!out.self.empty()) {
    for (index_t j = 0; j < n; ++j) out.self[j] = self_acc[j] / nf;
  }
  if (!out.cross.empty()) std::copy(cross_acc.begin(), cross_acc.end(), out.cross.begin());
  res.self_mass = detail::canonical_sum(totals.data(), n) / nf;
  if (text > 0) res.cross_mass = detail::canonical_sum(totals.data() + n, text) / static_cast<float>(text);
  return res;
}

TOKENSEL_END_NAMESPACE
