// tokensel: element types accepted by the views (fp32, fp16, bf16) and their conversion to the
// fp32 accumulation type.
#pragma once

#include <concepts>
#include <type_traits>

#include <Eigen/Core>

#include "tokensel/core/config.hpp"

TOKENSEL_BEGIN_NAMESPACE

/// Storage types of attention, scores and features: float, Eigen::half, Eigen::bfloat16.
template <class T>
concept element = std::same_as<std::remove_cv_t<T>, float> ||
                  std::same_as<std::remove_cv_t<T>, Eigen::half> ||
                  std::same_as<std::remove_cv_t<T>, Eigen::bfloat16>;

/// Widens a stored element to the fp32 accumulation type (exact for all three types).
template <element T>
inline float to_float(T value) noexcept {
  if constexpr (std::same_as<std::remove_cv_t<T>, float>) {
    return value;
  } else {
    return static_cast<float>(value);
  }
}

/// Narrows an fp32 value to a storage type (round to nearest even).
template <element T>
inline std::remove_cv_t<T> from_float(float value) noexcept {
  return static_cast<std::remove_cv_t<T>>(value);
}

/// Name of an element type for messages and benchmark labels.
template <element T>
constexpr const char* element_name() noexcept {
  if constexpr (std::same_as<std::remove_cv_t<T>, float>) return "f32";
  else if constexpr (std::same_as<std::remove_cv_t<T>, Eigen::half>) return "f16";
  else return "bf16";
}

TOKENSEL_END_NAMESPACE
