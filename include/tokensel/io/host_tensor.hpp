// tokensel: an owning, dtype-tagged host tensor (the result of the .npy and .safetensors
// readers) with typed views. Not used by the methods themselves, which only take views.
#pragma once

#include <cstddef>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <Eigen/Core>

#include "tokensel/core/config.hpp"
#include "tokensel/core/element.hpp"
#include "tokensel/core/error.hpp"
#include "tokensel/core/tensor_view.hpp"

TOKENSEL_BEGIN_NAMESPACE

/// Storage type of a host_tensor: the three element types of the library.
enum class dtype { f32, f16, bf16 };

inline const char* to_string(dtype t) noexcept {
  switch (t) {
    case dtype::f32: return "f32";
    case dtype::f16: return "f16";
    case dtype::bf16: return "bf16";
  }
  return "?";
}

constexpr std::size_t dtype_size(dtype t) noexcept { return t == dtype::f32 ? 4 : 2; }

template <element T>
constexpr dtype dtype_of() noexcept {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_same_v<U, float>) return dtype::f32;
  else if constexpr (std::is_same_v<U, Eigen::half>) return dtype::f16;
  else return dtype::bf16;
}

static_assert(std::is_trivially_copyable_v<Eigen::half> && sizeof(Eigen::half) == 2);
static_assert(std::is_trivially_copyable_v<Eigen::bfloat16> && sizeof(Eigen::bfloat16) == 2);

namespace detail {

/// a * b, or false when the product of two non-negative extents overflows index_t.
inline bool checked_mul(index_t a, index_t b, index_t& out) noexcept {
  if (a < 0 || b < 0) return false;
  if (a != 0 && b > std::numeric_limits<index_t>::max() / a) return false;
  out = a * b;
  return true;
}

/// Product of the extents, or -1 when it (or its size in bytes, itemsize) overflows.
inline index_t checked_element_count(std::span<const index_t> shape, std::size_t itemsize) noexcept {
  index_t n = 1;
  for (index_t e : shape) {
    if (!checked_mul(n, e, n)) return -1;
  }
  index_t bytes = 0;
  if (!checked_mul(n, static_cast<index_t>(itemsize), bytes)) return -1;
  return n;
}

}  // namespace detail

/// A dense row-major (C order) tensor of f32, f16 or bf16 elements that owns its storage.
/// Any rank, including 0 (one element). Views are non-owning and valid while the tensor lives
/// and is not resized.
class host_tensor {
 public:
  host_tensor() : host_tensor(dtype::f32, {0}) {}

  /// A zero-filled tensor of the given type and shape (extents >= 0).
  host_tensor(dtype type, std::vector<index_t> shape) : type_(type), shape_(std::move(shape)) {
    const index_t n = detail::checked_element_count(shape_, dtype_size(type_));
    if (n < 0) {
      for (index_t e : shape_) {
        if (e < 0) detail::fail(errc::invalid_argument, "host_tensor.shape", e, "extents must be >= 0");
      }
      detail::fail(errc::invalid_argument, "host_tensor.shape", shape_string(), "element count overflows");
    }
    const auto count = static_cast<std::size_t>(n);
    switch (type_) {
      case dtype::f32: storage_ = std::vector<float>(count); break;
      case dtype::f16: storage_ = std::vector<Eigen::half>(count); break;
      case dtype::bf16: storage_ = std::vector<Eigen::bfloat16>(count); break;
    }
  }

  /// A tensor that takes over values; values.size() must equal the product of the shape.
  template <element T>
  static host_tensor from(std::vector<T> values, std::vector<index_t> shape) {
    host_tensor t(dtype_of<T>(), std::move(shape));
    if (values.size() != static_cast<std::size_t>(t.size())) {
      detail::fail(errc::shape_mismatch, "host_tensor.values.size()", values.size(),
                   "must equal the product of the shape " + t.shape_string());
    }
    t.storage_ = std::move(values);
    return t;
  }

  dtype type() const noexcept { return type_; }
  const std::vector<index_t>& shape() const noexcept { return shape_; }
  std::size_t rank() const noexcept { return shape_.size(); }
  index_t extent(std::size_t k) const noexcept { return shape_[k]; }
  /// Number of elements (1 for rank 0).
  index_t size() const noexcept {
    return std::visit([](const auto& v) { return static_cast<index_t>(v.size()); }, storage_);
  }
  std::size_t nbytes() const noexcept { return static_cast<std::size_t>(size()) * dtype_size(type_); }

  /// "[2, 3, 4]"
  std::string shape_string() const {
    std::string s = "[";
    for (std::size_t k = 0; k < shape_.size(); ++k) {
      if (k) s += ", ";
      s += std::to_string(shape_[k]);
    }
    return s + "]";
  }

  /// The elements as T; throws errc::invalid_argument when T is not the stored type.
  template <element T>
  std::span<T> data() {
    check_type<T>();
    return std::span<T>(std::get<std::vector<T>>(storage_));
  }
  template <element T>
  std::span<const T> data() const {
    check_type<T>();
    return std::span<const T>(std::get<std::vector<T>>(storage_));
  }

  /// The raw little-endian (on little-endian hosts) bytes of the elements.
  std::span<const std::byte> bytes() const noexcept {
    return std::visit([](const auto& v) { return std::as_bytes(std::span(v)); }, storage_);
  }
  std::span<std::byte> bytes() noexcept {
    return std::visit([](auto& v) { return std::as_writable_bytes(std::span(v)); }, storage_);
  }

  /// A row-major view of rank R; throws when the type or the rank differs.
  template <element T, std::size_t R>
  tensor_view<const T, R> view() const {
    return tensor_view<const T, R>(data<T>().data(), extents<R>(), "host_tensor");
  }
  template <element T, std::size_t R>
  tensor_view<T, R> view() {
    return tensor_view<T, R>(data<T>().data(), extents<R>(), "host_tensor");
  }

  /// A copy converted to another element type (round to nearest even when narrowing).
  host_tensor converted(dtype to) const {
    if (to == type_) return *this;
    host_tensor out(to, shape_);
    std::visit(
        [&](const auto& src) {
          std::visit(
              [&](auto& dst) {
                using D = typename std::remove_reference_t<decltype(dst)>::value_type;
                for (std::size_t i = 0; i < src.size(); ++i) dst[i] = from_float<D>(to_float(src[i]));
              },
              out.storage_);
        },
        storage_);
    return out;
  }

  /// Same elements, new shape with the same element count.
  void reshape(std::vector<index_t> shape) {
    const index_t n = detail::checked_element_count(shape, dtype_size(type_));
    if (n != size()) {
      std::string s = "[";
      for (std::size_t k = 0; k < shape.size(); ++k) s += (k ? ", " : "") + std::to_string(shape[k]);
      detail::fail(errc::shape_mismatch, "host_tensor.reshape", s + "]",
                   "element count differs from " + shape_string());
    }
    shape_ = std::move(shape);
  }

 private:
  template <element T>
  void check_type() const {
    if (dtype_of<T>() != type_) {
      detail::fail(errc::invalid_argument, "host_tensor.dtype", to_string(type_),
                   std::string("requested as ") + to_string(dtype_of<T>()));
    }
  }

  template <std::size_t R>
  std::array<index_t, R> extents() const {
    if (shape_.size() != R) {
      detail::fail(errc::shape_mismatch, "host_tensor.shape", shape_string(),
                   "requested as a rank-" + std::to_string(R) + " view");
    }
    std::array<index_t, R> e{};
    for (std::size_t k = 0; k < R; ++k) e[k] = shape_[k];
    return e;
  }

  dtype type_;
  std::vector<index_t> shape_;
  std::variant<std::vector<float>, std::vector<Eigen::half>, std::vector<Eigen::bfloat16>> storage_;
};

TOKENSEL_END_NAMESPACE
