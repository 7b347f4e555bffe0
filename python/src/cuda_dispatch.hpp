// tokensel Python extension: CUDA tensors. With TOKENSEL_PYTHON_WITH_CUDA=ON, FoPru and FastV run
// on the CUDA backend when their attention is a CUDA tensor (same dtypes and shapes as on the
// CPU, same indices: the backends agree bit for bit). The call runs on PyTorch's current stream
// of the tensor's device (the default stream when torch is not importable), allocates its
// workspace and output with cudaMallocAsync on that stream, synchronises once (to raise any
// problem the kernels recorded, e.g. NaN, as tokensel.Error) and returns int32 CUDA tensors.
// Other methods refuse CUDA tensors by name; everything else takes CPU arrays.
#pragma once

#include "common.hpp"

#include <tokensel/methods/fastv.hpp>
#include <tokensel/methods/fopru.hpp>

namespace tsp {

/// True for an ndarray in CUDA (or managed) memory.
inline bool on_cuda(nb::handle h) {
  array a;
  if (!nb::try_cast(h, a)) return false;
  return is_cuda_device(a.device_type());
}

#if defined(TOKENSEL_PYTHON_CUDA)
/// FoPru of a CUDA [heads, N, N] sample (1-D indices) or [batch, heads, N, N] batch ([batch, k]).
nb::object fopru_select_cuda(const array& attention, const tokensel::fopru::config& cfg, bool return_result);
/// FastV of a CUDA [heads, L, L] sample or [batch, heads, L, L] batch.
nb::object fastv_select_cuda(const array& attention, const tokensel::token_range& visual, const tokensel::fastv::config& cfg,
                             bool return_result);
#endif

}  // namespace tsp
