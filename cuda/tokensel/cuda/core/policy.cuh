// tokensel CUDA backend: the execution policy. A CUDA call runs asynchronously on `stream` and
// uses only the caller's `workspace` (device memory of at least the bytes the method's
// workspace_size(...) reports). Nothing inside a call allocates, synchronises with the host or
// copies pageable memory, so a call can be captured in a CUDA graph.
#pragma once

#include <cstddef>

#include <cuda_runtime_api.h>

#include "tokensel/core/config.hpp"
#include "tokensel/cuda/core/abi.cuh"

TOKENSEL_BEGIN_NAMESPACE
// In the architecture-tagged namespace: every public CUDA overload takes this type, so their
// mangled names carry the architectures too (see core/abi.cuh).
inline namespace TOKENSEL_CUDA_ARCH_TAG {

/// Selects the CUDA backend: the same call shape as the CPU policies (seq, par).
struct cuda_policy {
  cudaStream_t stream = nullptr;    ///< stream every kernel and memset of the call is enqueued on
  void* workspace = nullptr;        ///< caller-owned device memory (256-byte aligned, e.g. cudaMalloc)
  std::size_t workspace_bytes = 0;  ///< its size; must be >= workspace_size(...) of the call
};

}  // namespace TOKENSEL_CUDA_ARCH_TAG
TOKENSEL_END_NAMESPACE
