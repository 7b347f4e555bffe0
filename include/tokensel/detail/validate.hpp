// tokensel internals: the checks every entry point shares, each throwing tokensel::error with
// the parameter's name and value.
#pragma once

#include <cmath>
#include <string>
#include <string_view>

#include "tokensel/core/element.hpp"
#include "tokensel/core/error.hpp"
#include "tokensel/core/tensor_view.hpp"
#include "tokensel/detail/widen.hpp"

TOKENSEL_BEGIN_NAMESPACE
namespace detail {

/// ratio must lie in (0, 1] (NaN fails too).
inline void check_ratio(double ratio, std::string_view name) {
  if (!(ratio > 0.0 && ratio <= 1.0)) fail(errc::invalid_argument, name, ratio, "must be in (0, 1]");
}

/// 0 <= k <= n.
inline void check_count(index_t k, index_t n, std::string_view name) {
  if (k < 0 || k > n) {
    fail(errc::invalid_argument, name, k, "must be in [0, " + std::to_string(n) + "]");
  }
}

inline void check_finite_param(double value, std::string_view name) {
  if (!std::isfinite(value)) fail(errc::invalid_argument, name, value, "must be finite");
}

inline std::string at_index(std::string_view name, index_t i) {
  return std::string(name) + "[" + std::to_string(i) + "]";
}

/// True when every element of a vector is finite: one branch-free pass for contiguous fp32 (the
/// common case: scores the library computed), else element by element.
template <class T>
bool all_finite(const tensor_view<T, 1>& v) noexcept {
  if constexpr (std::is_same_v<std::remove_cv_t<T>, float>) {
    if (v.stride(0) == 1) return all_finite(v.data(), v.extent(0));
  }
  for (index_t i = 0; i < v.extent(0); ++i) {
    if (!std::isfinite(to_float(v(i)))) return false;
  }
  return true;
}

/// Every element of a vector is finite (the first one that is not is named).
template <class T>
void check_finite(const tensor_view<T, 1>& v, std::string_view name) {
  if (all_finite(v)) return;
  for (index_t i = 0; i < v.extent(0); ++i) {
    const float x = to_float(v(i));
    if (!std::isfinite(x)) fail(errc::non_finite, at_index(name, i), x, "scores must be finite");
  }
}

/// Every element of a matrix is finite.
template <class T>
void check_finite(const tensor_view<T, 2>& m, std::string_view name) {
  for (index_t i = 0; i < m.extent(0); ++i) {
    for (index_t j = 0; j < m.extent(1); ++j) {
      const float x = to_float(m(i, j));
      if (!std::isfinite(x)) {
        fail(errc::non_finite, std::string(name) + "[" + std::to_string(i) + ", " + std::to_string(j) + "]", x,
             "values must be finite");
      }
    }
  }
}

/// The output span has room for `needed` indices.
inline void check_capacity(std::size_t capacity, index_t needed, std::string_view name) {
  if (static_cast<index_t>(capacity) < needed) {
    fail(errc::shape_mismatch, name, capacity, "output capacity below the " + std::to_string(needed) + " indices needed");
  }
}

}  // namespace detail
TOKENSEL_END_NAMESPACE
