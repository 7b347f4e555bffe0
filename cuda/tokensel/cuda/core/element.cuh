// tokensel CUDA backend: element types of device views and their widening to fp32.
// Views over device memory reuse tokensel::tensor_view (host objects holding device pointers).
// Accepted: float, __half, __nv_bfloat16, and the CPU backend's Eigen::half / Eigen::bfloat16
// (same bits; they are read as __half / __nv_bfloat16).
#pragma once

#include <concepts>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "tokensel/cuda/core/abi.cuh"
#include "tokensel/core/config.hpp"
#include "tokensel/core/element.hpp"

TOKENSEL_BEGIN_NAMESPACE

/// Storage types the CUDA backend reads.
template <class T>
concept cuda_element = std::same_as<std::remove_cv_t<T>, float> || std::same_as<std::remove_cv_t<T>, __half> ||
                       std::same_as<std::remove_cv_t<T>, __nv_bfloat16> ||
                       std::same_as<std::remove_cv_t<T>, Eigen::half> ||
                       std::same_as<std::remove_cv_t<T>, Eigen::bfloat16>;

TOKENSEL_CUDA_BEGIN_DETAIL

/// The CUDA type a storage type is read as (kernels are instantiated for these three only).
template <class T>
struct device_type {
  using type = std::remove_cv_t<T>;
};
template <>
struct device_type<Eigen::half> {
  using type = __half;
};
template <>
struct device_type<const Eigen::half> {
  using type = __half;
};
template <>
struct device_type<Eigen::bfloat16> {
  using type = __nv_bfloat16;
};
template <>
struct device_type<const Eigen::bfloat16> {
  using type = __nv_bfloat16;
};
template <class T>
using device_type_t = typename device_type<T>::type;

static_assert(sizeof(Eigen::half) == sizeof(__half) && sizeof(Eigen::bfloat16) == sizeof(__nv_bfloat16),
              "Eigen and CUDA 16-bit types must share their layout");

/// Exact widening to fp32 (every fp16 / bf16 value is representable in fp32).
__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

/// Read-only load through the non-coherent cache, widened to fp32.
template <class T>
__device__ __forceinline__ float load_f32(const T* p) {
  return to_f32(__ldg(p));
}

/// Narrowing from fp32, round to nearest even (as the CPU backend's from_float).
template <class T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

/// Name of a storage type (benchmark labels, messages).
template <class T>
constexpr const char* cuda_element_name() noexcept {
  using D = device_type_t<T>;
  if constexpr (std::same_as<D, float>) return "f32";
  else if constexpr (std::same_as<D, __half>) return "f16";
  else return "bf16";
}

TOKENSEL_CUDA_END_DETAIL  // cuda_detail
TOKENSEL_END_NAMESPACE
