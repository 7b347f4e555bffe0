// tokensel CUDA backend internals: the arithmetic both backends must agree on bit for bit.
//
// The rules themselves (rounded operations, tie rules, the canonical lane tree, FoPru's variance,
// numpy's lerp and quantile positions, the IQR fences) are written once, for host and device, in
// tokensel/detail/arith.hpp, which the CPU backend calls too. This header puts them into
// cuda_detail, where the kernels and the host-side tests of the kernels' decomposition use them.
#pragma once

#include <cuda_runtime_api.h>

#include "tokensel/cuda/core/abi.cuh"
#include "tokensel/core/config.hpp"
#include "tokensel/detail/arith.hpp"

#define TOKENSEL_HD __host__ __device__ __forceinline__

TOKENSEL_BEGIN_NAMESPACE
TOKENSEL_CUDA_BEGIN_DETAIL

using detail::beats_high;
using detail::beats_low;
using detail::canonical_sum_serial;
using detail::dadd;
using detail::ddiv;
using detail::dmul;
using detail::dsub;
using detail::fadd;
using detail::fdiv;
using detail::finite_f32;
using detail::fmul;
using detail::fsub;
using detail::lower_fence;
using detail::max_nan;
using detail::numpy_lerp;
using detail::quantile_at;
using detail::quantile_position;
using detail::quantile_value;
using detail::sequential_variance;
using detail::std_max;
using detail::upper_fence;

TOKENSEL_CUDA_END_DETAIL  // cuda_detail
TOKENSEL_END_NAMESPACE
