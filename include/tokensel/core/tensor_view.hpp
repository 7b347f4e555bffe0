// tokensel: non-owning strided views over caller memory (the mdspan idea, with a strided layout
// and the few sub-view operations the methods need). Nothing here copies or allocates.
#pragma once

#include <array>
#include <cstddef>
#include <limits>
#include <span>
#include <string>
#include <type_traits>

#include "tokensel/core/config.hpp"
#include "tokensel/core/error.hpp"

TOKENSEL_BEGIN_NAMESPACE

/// A rank-R view of T over caller memory with element strides (any sign, any order).
/// Constructors validate: extents are >= 0, and data is non-null when the view is non-empty.
template <class T, std::size_t Rank>
class tensor_view {
  static_assert(Rank >= 1, "tensor_view needs rank >= 1");

 public:
  using element_type = T;
  using value_type = std::remove_cv_t<T>;
  using extents_type = std::array<index_t, Rank>;
  static constexpr std::size_t rank = Rank;

  tensor_view() noexcept : data_(nullptr), extents_{}, strides_{} {}

  /// Contiguous row-major view (the last extent varies fastest).
  tensor_view(T* data, const extents_type& extents, std::string_view name = "view")
      : tensor_view(data, extents, row_major_strides(extents), name) {}

  /// Strided view: element (i0, ..., iR-1) lives at data[sum_k i_k * strides[k]].
  tensor_view(T* data, const extents_type& extents, const extents_type& strides,
              std::string_view name = "view")
      : data_(data), extents_(extents), strides_(strides) {
    for (std::size_t k = 0; k < Rank; ++k) {
      if (extents_[k] < 0) {
        detail::fail(errc::invalid_argument, std::string(name) + ".extent(" + std::to_string(k) + ")",
                     extents_[k], "extents must be >= 0");
      }
    }
    if (data_ == nullptr && size() != 0) {
      detail::fail(errc::null_data, std::string(name) + ".data", "null pointer with a non-zero extent");
    }
  }

  /// A view of const T from a view of T.
  template <class U>
    requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>)
  tensor_view(const tensor_view<U, Rank>& other) noexcept  // NOLINT(google-explicit-constructor)
      : data_(other.data()), extents_(other.extents()), strides_(other.strides()) {}

  static extents_type row_major_strides(const extents_type& extents) noexcept {
    extents_type s{};
    index_t step = 1;
    for (std::size_t k = Rank; k-- > 0;) {
      s[k] = step;
      const index_t e = extents[k] > 0 ? extents[k] : 1;
      // Saturate: an empty view may have huge other extents (its strides are never used).
      step = step > std::numeric_limits<index_t>::max() / e ? std::numeric_limits<index_t>::max() : step * e;
    }
    return s;
  }

  T* data() const noexcept { return data_; }
  const extents_type& extents() const noexcept { return extents_; }
  const extents_type& strides() const noexcept { return strides_; }
  index_t extent(std::size_t k) const noexcept { return extents_[k]; }
  index_t stride(std::size_t k) const noexcept { return strides_[k]; }

  /// Number of elements viewed.
  /// 0 when any extent is 0, however large the others are; saturates at the index_t maximum
  /// instead of overflowing (such a view cannot describe real memory).
  index_t size() const noexcept {
    for (index_t e : extents_) {
      if (e == 0) return 0;
    }
    index_t n = 1;
    for (index_t e : extents_) {
      if (e > std::numeric_limits<index_t>::max() / n) return std::numeric_limits<index_t>::max();
      n *= e;
    }
    return n;
  }
  bool empty() const noexcept { return size() == 0; }

  /// True when the last dimension is unit-stride (fast paths use this).
  bool inner_contiguous() const noexcept { return extents_[Rank - 1] <= 1 || strides_[Rank - 1] == 1; }

  template <class... Idx>
    requires(sizeof...(Idx) == Rank)
  T& operator()(Idx... idx) const noexcept {
    const std::array<index_t, Rank> i{static_cast<index_t>(idx)...};
    index_t off = 0;
    for (std::size_t k = 0; k < Rank; ++k) off += i[k] * strides_[k];
    return data_[off];
  }

  /// The rank-(R-1) view at position i of the leading dimension (a sample, a head, a row).
  auto operator[](index_t i) const noexcept
    requires(Rank > 1)
  {
    tensor_view<T, Rank - 1> sub;
    sub.data_ = data_ == nullptr ? nullptr : data_ + i * strides_[0];
    for (std::size_t k = 1; k < Rank; ++k) {
      sub.extents_[k - 1] = extents_[k];
      sub.strides_[k - 1] = strides_[k];
    }
    return sub;
  }

  /// The same view restricted to [begin, begin + count) along dimension dim.
  /// Throws when the range does not lie inside the extent.
  tensor_view slice(std::size_t dim, index_t begin, index_t count, std::string_view name = "view") const {
    if (dim >= Rank) detail::fail(errc::invalid_argument, std::string(name) + ".slice.dim", dim, "beyond the rank");
    if (begin < 0 || count < 0 || begin + count > extents_[dim]) {
      detail::fail(errc::invalid_argument, std::string(name) + ".slice(" + std::to_string(dim) + ")",
                   "[" + std::to_string(begin) + ", " + std::to_string(begin + count) + ")",
                   "range outside the extent " + std::to_string(extents_[dim]));
    }
    tensor_view out = *this;
    out.data_ = (data_ == nullptr || count == 0) ? data_ : data_ + begin * strides_[dim];
    out.extents_[dim] = count;
    return out;
  }

 private:
  template <class, std::size_t>
  friend class tensor_view;

  T* data_;
  extents_type extents_;
  extents_type strides_;
};

/// Rank-1 view over a std::span (unit stride).
template <class T>
tensor_view<T, 1> as_view(std::span<T> s, std::string_view name = "view") {
  return tensor_view<T, 1>(s.data(), {static_cast<index_t>(s.size())}, name);
}

// ---- the named views of the design card ---------------------------------------------------

/// Attention probabilities (or logits) of one layer for a batch: [batch, heads, queries, keys].
template <class T>
using attention_view = tensor_view<const T, 4>;
/// One sample's attention: [heads, queries, keys].
template <class T>
using head_attention_view = tensor_view<const T, 3>;
/// Score vectors for a batch: [batch, n].
template <class T>
using score_view = tensor_view<const T, 2>;
/// Token features for a batch: [batch, n, d] (mutable for outputs).
template <class T>
using feature_view = tensor_view<T, 3>;
/// A 2-D matrix, e.g. a head-reduced attention map [queries, keys] or one sample's features [n, d].
template <class T>
using matrix_view = tensor_view<T, 2>;
/// A 1-D vector, e.g. one sample's scores [n].
template <class T>
using vector_view = tensor_view<T, 1>;

TOKENSEL_END_NAMESPACE
