// tokensel CUDA backend internals: the CPU backend's expf (tokensel/detail/expf.hpp) on the
// device, with its table in constant memory (a local array indexed at run time would live on the
// stack). Same bits as the CPU's PruMerge softmax by construction: one shared definition.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "tokensel/cuda/core/abi.cuh"
#include "tokensel/core/config.hpp"
#include "tokensel/cuda/detail/arith.cuh"
#include "tokensel/detail/expf.hpp"

TOKENSEL_BEGIN_NAMESPACE
TOKENSEL_CUDA_BEGIN_DETAIL

// Internal linkage: every translation unit has its own copy, as without -rdc anyway.
static __constant__ std::uint64_t expf_table_device[32] = TOKENSEL_DETAIL_EXPF_TABLE;

struct expf_table_lookup {
  TOKENSEL_HD std::uint64_t operator()(unsigned i) const {
#if defined(__CUDA_ARCH__)
    return expf_table_device[i & 31u];
#else
    return detail::expf_impl::host_table[i & 31u];
#endif
  }
};

/// expf(x) for x <= 0, bit-identical to the CPU backend's tokensel::detail::expf_nonpositive.
TOKENSEL_HD float libm_expf_nonpositive(float x) {
  return detail::expf_nonpositive(x, expf_table_lookup{});
}

TOKENSEL_CUDA_END_DETAIL  // cuda_detail
TOKENSEL_END_NAMESPACE
