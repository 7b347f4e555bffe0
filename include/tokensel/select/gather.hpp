// tokensel: order-preserving gather of kept feature rows, and the inverse scatter.
#pragma once

#include <span>
#include <string>

#include "tokensel/core/config.hpp"
#include "tokensel/detail/validate.hpp"
#include "tokensel/core/element.hpp"
#include "tokensel/core/tensor_view.hpp"

TOKENSEL_BEGIN_NAMESPACE

namespace detail {
inline void check_indices(std::span<const token_index> indices, index_t n, std::string_view name) {
  for (std::size_t r = 0; r < indices.size(); ++r) {
    if (indices[r] < 0 || indices[r] >= n) {
      fail(errc::invalid_argument, at_index(name, static_cast<index_t>(r)), indices[r],
           "index outside [0, " + std::to_string(n) + ")");
    }
  }
}
}  // namespace detail

/// dst[r, :] = src[indices[r], :] for r in [0, k): the kept tokens' features in the order given
/// (ascending indices keep the original spatial order). src [n, d], dst [k, d], any strides,
/// any element types (converted through fp32 when they differ).
template <class S, class D>
void gather_rows(const tensor_view<const S, 2>& src, std::span<const token_index> indices,
                 const tensor_view<D, 2>& dst) {
  const auto k = static_cast<index_t>(indices.size());
  if (dst.extent(0) != k) detail::fail(errc::shape_mismatch, "gather_rows.dst.extent(0)", dst.extent(0), "must equal the number of indices " + std::to_string(k));
  if (dst.extent(1) != src.extent(1)) detail::fail(errc::shape_mismatch, "gather_rows.dst.extent(1)", dst.extent(1), "must equal src.extent(1) = " + std::to_string(src.extent(1)));
  detail::check_indices(indices, src.extent(0), "gather_rows.indices");
  const index_t d = src.extent(1);
  for (index_t r = 0; r < k; ++r) {
    for (index_t c = 0; c < d; ++c) {
      if constexpr (std::is_same_v<S, std::remove_cv_t<D>>) {
        dst(r, c) = src(indices[r], c);
      } else {
        dst(r, c) = from_float<D>(to_float(src(indices[r], c)));
      }
    }
  }
}

/// dst[indices[r], :] = src[r, :]: puts k rows back at their original positions (rows of dst not
/// named by indices are left untouched). Indices must be unique.
template <class S, class D>
void scatter_rows(const tensor_view<const S, 2>& src, std::span<const token_index> indices,
                  const tensor_view<D, 2>& dst) {
  const auto k = static_cast<index_t>(indices.size());
  if (src.extent(0) != k) detail::fail(errc::shape_mismatch, "scatter_rows.src.extent(0)", src.extent(0), "must equal the number of indices " + std::to_string(k));
  if (dst.extent(1) != src.extent(1)) detail::fail(errc::shape_mismatch, "scatter_rows.dst.extent(1)", dst.extent(1), "must equal src.extent(1) = " + std::to_string(src.extent(1)));
  detail::check_indices(indices, dst.extent(0), "scatter_rows.indices");
  const index_t d = src.extent(1);
  for (index_t r = 0; r < k; ++r) {
    for (index_t c = 0; c < d; ++c) {
      if constexpr (std::is_same_v<S, std::remove_cv_t<D>>) {
        dst(indices[r], c) = src(r, c);
      } else {
        dst(indices[r], c) = from_float<D>(to_float(src(r, c)));
      }
    }
  }
}

TOKENSEL_END_NAMESPACE
