// tokensel: what a method can read attention statistics from: a materialised attention view
// [heads, q, k] (probabilities or logits) or a Q/K source (statistics computed tile by tile from
// queries and keys; FlashAttention engines). Both give the same statistics up to fp32 rounding,
// and methods written against this concept select the same tokens from either.
#pragma once

#include <type_traits>

#include "tokensel/core/config.hpp"
#include "tokensel/core/element.hpp"
#include "tokensel/core/qk_source.hpp"
#include "tokensel/core/tensor_view.hpp"

TOKENSEL_BEGIN_NAMESPACE

namespace detail {
template <class S>
struct source_traits : std::false_type {};
template <element T>
struct source_traits<tensor_view<const T, 3>> : std::true_type {
  static index_t queries(const tensor_view<const T, 3>& s) noexcept { return s.extent(1); }
  static index_t keys(const tensor_view<const T, 3>& s) noexcept { return s.extent(2); }
};
template <element T>
struct source_traits<qk_source<T>> : std::true_type {
  static index_t queries(const qk_source<T>& s) noexcept { return s.rows().count; }
  static index_t keys(const qk_source<T>& s) noexcept { return s.cols().count; }
};
}  // namespace detail

/// head_attention_view<T> or qk_source<T>.
template <class S>
concept attention_source = detail::source_traits<std::remove_cvref_t<S>>::value;

/// Query rows / key columns the source describes (after any restriction).
template <attention_source S>
index_t query_tokens(const S& s) noexcept { return detail::source_traits<S>::queries(s); }
template <attention_source S>
index_t key_tokens(const S& s) noexcept { return detail::source_traits<S>::keys(s); }

TOKENSEL_END_NAMESPACE
