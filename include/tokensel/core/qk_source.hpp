// tokensel: a "QK source" describes one layer's attention by its queries and keys instead of the
// materialised map, so statistics can be computed where the engine never builds the N x N
// probabilities (FlashAttention / SDPA). The probabilities it stands for are
//   P[h, i, j] = softmax_j(scale * <Q[h, i], K[kv(h), j]>)    (masked keys excluded)
// with grouped-query attention (kv(h) = h / (heads / kv_heads)) and an optional causal mask.
#pragma once

#include <cmath>
#include <string>

#include "tokensel/core/config.hpp"
#include "tokensel/detail/validate.hpp"
#include "tokensel/core/element.hpp"
#include "tokensel/core/tensor_view.hpp"
#include "tokensel/core/token_range.hpp"

TOKENSEL_BEGIN_NAMESPACE

template <element T>
struct qk_source {
  using element_type = T;

  tensor_view<const T, 3> queries;  ///< [heads, n_q, d]
  tensor_view<const T, 3> keys;     ///< [kv_heads, n_k, d]; heads % kv_heads == 0
  float scale = 0.0f;               ///< logit scale, usually 1/sqrt(d); 0 means 1/sqrt(d)
  /// Optional per-row natural-log sum-exp of the scaled logits, [heads, n_q], as FlashAttention
  /// returns it (softmax_lse). When given, P = exp(scale * QK^T - lse) and pass 1 is skipped.
  tensor_view<const float, 2> lse{};
  /// Causal mask: query i sees keys j <= i + causal_offset. The default offset (-1) means
  /// n_k - n_q (bottom-right aligned, FlashAttention's convention for n_q <= n_k).
  bool causal = false;
  index_t causal_offset = -1;
  /// The part of the map the statistics describe: rows (queries) and columns (keys). The softmax
  /// always normalises over every key; the window only restricts what is reported (the patch
  /// submatrix, not renormalised, exactly like restrict_tokens on a materialised view).
  token_range row_window{0, -1};
  token_range col_window{0, -1};

  index_t heads() const noexcept { return queries.extent(0); }
  index_t kv_heads() const noexcept { return keys.extent(0); }
  index_t query_count() const noexcept { return queries.extent(1); }
  index_t key_count() const noexcept { return keys.extent(1); }
  index_t head_dim() const noexcept { return queries.extent(2); }
  float effective_scale() const noexcept {
    return scale != 0.0f ? scale : 1.0f / std::sqrt(static_cast<float>(head_dim()));
  }
  index_t effective_causal_offset() const noexcept {
    return causal_offset >= 0 ? causal_offset : key_count() - query_count();
  }
  token_range rows() const noexcept { return row_window.count < 0 ? token_range::all(query_count()) : row_window; }
  token_range cols() const noexcept { return col_window.count < 0 ? token_range::all(key_count()) : col_window; }
};

/// Throws unless shapes, scale and windows are consistent (no element is read: the CUDA backend
/// runs this on device views).
template <class T>
void validate_shape(const qk_source<T>& src, std::string_view name = "qk") {
  const std::string n(name);
  if (src.keys.extent(2) != src.head_dim()) {
    detail::fail(errc::shape_mismatch, n + ".keys.extent(2)", src.keys.extent(2), "must equal the query head dim " + std::to_string(src.head_dim()));
  }
  if (src.kv_heads() == 0 ? src.heads() != 0 : src.heads() % src.kv_heads() != 0) {
    detail::fail(errc::shape_mismatch, n + ".keys.extent(0)", src.kv_heads(), "must divide the query heads " + std::to_string(src.heads()));
  }
  if (!std::isfinite(src.scale)) detail::fail(errc::invalid_argument, n + ".scale", src.scale, "must be finite");
  if (!src.lse.empty() || src.lse.data() != nullptr) {
    if (src.lse.extent(0) != src.heads() || src.lse.extent(1) != src.query_count()) {
      detail::fail(errc::shape_mismatch, n + ".lse", std::to_string(src.lse.extent(0)) + "x" + std::to_string(src.lse.extent(1)),
                   "must be heads x queries = " + std::to_string(src.heads()) + "x" + std::to_string(src.query_count()));
    }
  }
  check_range(src.rows(), src.query_count(), n + ".row_window");
  check_range(src.cols(), src.key_count(), n + ".col_window");
}

/// Throws unless the source is consistent (shapes, finite values, windows inside the map).
template <element T>
void validate(const qk_source<T>& src, std::string_view name = "qk") {
  validate_shape(src, name);
  const std::string n(name);
  auto check_values = [&](const auto& t, const std::string& what) {
    for (index_t a = 0; a < t.extent(0); ++a)
      for (index_t b = 0; b < t.extent(1); ++b)
        for (index_t c = 0; c < t.extent(2); ++c) {
          const float v = to_float(t(a, b, c));
          if (!std::isfinite(v)) {
            detail::fail(errc::non_finite, n + "." + what + "[" + std::to_string(a) + ", " + std::to_string(b) + ", " + std::to_string(c) + "]", v,
                         "values must be finite");
          }
        }
  };
  check_values(src.queries, "queries");
  check_values(src.keys, "keys");
  for (index_t h = 0; h < src.lse.extent(0); ++h)
    for (index_t i = 0; i < src.lse.extent(1); ++i)
      if (!std::isfinite(src.lse(h, i))) detail::fail(errc::non_finite, n + ".lse[" + std::to_string(h) + ", " + std::to_string(i) + "]", src.lse(h, i), "values must be finite");
}

/// The square window range x range (e.g. the patch submatrix): the softmax still runs over every
/// key, as restrict_tokens on a materialised map keeps the original probabilities.
template <element T>
qk_source<T> restrict_tokens(qk_source<T> src, const token_range& range) {
  const token_range rows = src.rows(), cols = src.cols();
  check_range(range, rows.count, "range(queries)");
  check_range(range, cols.count, "range(keys)");
  src.row_window = {rows.begin + range.begin, range.count};
  src.col_window = {cols.begin + range.begin, range.count};
  return src;
}

/// A window of rows and a window of columns (both relative to the current windows).
template <element T>
qk_source<T> restrict_window(qk_source<T> src, const token_range& rows, const token_range& cols) {
  const token_range r = src.rows(), c = src.cols();
  check_range(rows, r.count, "window(queries)");
  check_range(cols, c.count, "window(keys)");
  src.row_window = {r.begin + rows.begin, rows.count};
  src.col_window = {c.begin + cols.begin, cols.count};
  return src;
}

TOKENSEL_END_NAMESPACE
