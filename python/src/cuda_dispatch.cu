// tokensel Python extension: the CUDA dispatch of cuda_dispatch.hpp (compiled only with
// TOKENSEL_PYTHON_WITH_CUDA=ON, by nvcc).
#include "cuda_dispatch.hpp"

#include <cuda_runtime_api.h>

#include <tokensel/cuda/methods/fastv.cuh>
#include <tokensel/cuda/methods/fopru.cuh>

namespace tsp {
namespace {

void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail(errc::cuda_runtime, what, cudaGetErrorName(e), cudaGetErrorString(e));
}

/// PyTorch's current stream on the tensor's device, so the call orders after the kernels that
/// produced the attention; the legacy default stream when torch is not importable.
cudaStream_t current_stream(int device) {
  try {
    nb::module_ torch = nb::module_::import_("torch");
    nb::object stream = torch.attr("cuda").attr("current_stream")(device);
    return reinterpret_cast<cudaStream_t>(nb::cast<std::uintptr_t>(stream.attr("cuda_stream")));
  } catch (const nb::python_error&) {
    return nullptr;
  }
}

/// Device memory of one call, freed (stream-ordered) when it goes out of scope.
struct stream_buffer {
  void* ptr = nullptr;
  cudaStream_t stream = nullptr;
  stream_buffer(std::size_t bytes, cudaStream_t s, const char* what) : stream(s) {
    check_cuda(cudaMallocAsync(&ptr, bytes == 0 ? 1 : bytes, s), what);
  }
  ~stream_buffer() {
    if (ptr != nullptr) cudaFreeAsync(ptr, stream);
  }
  stream_buffer(const stream_buffer&) = delete;
  stream_buffer& operator=(const stream_buffer&) = delete;
  void* release() { return std::exchange(ptr, nullptr); }
};

/// A CUDA int32 tensor of shape (ndim 1: {k}, ndim 2: {batch, k}) that owns ptr (cudaFree on
/// deletion; the stream was synchronised before it is handed out).
nb::object indices_tensor(void* ptr, int device, std::size_t ndim, const std::size_t* shape) {
  nb::capsule owner(ptr, [](void* p) noexcept { cudaFree(p); });
  return nb::cast(nb::ndarray<nb::pytorch, token_index>(ptr, ndim, shape, owner, nullptr, nb::dtype<token_index>(),
                                                        nb::device::cuda::value, device));
}

/// Runs select(policy, out, results) for a batch of `batch` samples keeping k each, on the
/// tensor's device: workspace, output and results in device memory, one synchronisation, the
/// recorded status raised. single: return 1-D indices of the first sample (count from the device).
template <class Result, class Select>
nb::object run(const array& like, index_t batch, index_t k, std::size_t workspace, bool single, bool return_result,
               Select&& select) {
  const int device = like.device_id();
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  const cudaStream_t stream = current_stream(device);
  const auto n_out = static_cast<std::size_t>(batch * k);
  stream_buffer ws(workspace, stream, "cudaMallocAsync(workspace)");
  stream_buffer out(n_out * sizeof(token_index), stream, "cudaMallocAsync(indices)");
  stream_buffer counts(static_cast<std::size_t>(batch) * sizeof(token_index), stream, "cudaMallocAsync(counts)");
  stream_buffer results(static_cast<std::size_t>(batch) * sizeof(Result), stream, "cudaMallocAsync(results)");
  const tokensel::cuda_policy policy{stream, ws.ptr, workspace};
  std::vector<Result> host_results(static_cast<std::size_t>(batch));
  std::vector<token_index> host_counts(static_cast<std::size_t>(batch));
  {
    nb::gil_scoped_release rel;
    auto* idx = static_cast<token_index*>(out.ptr);
    select(policy, tokensel::selection_batch{tokensel::tensor_view<token_index, 2>(idx, {batch, k}),
                                             std::span<token_index>(static_cast<token_index*>(counts.ptr), batch)},
           std::span<Result>(static_cast<Result*>(results.ptr), static_cast<std::size_t>(batch)));
    check_cuda(cudaMemcpyAsync(host_results.data(), results.ptr, host_results.size() * sizeof(Result), cudaMemcpyDeviceToHost, stream),
               "cudaMemcpyAsync(results)");
    check_cuda(cudaMemcpyAsync(host_counts.data(), counts.ptr, host_counts.size() * sizeof(token_index), cudaMemcpyDeviceToHost, stream),
               "cudaMemcpyAsync(counts)");
    tokensel::throw_on_error(policy);  // synchronises the stream
  }
  nb::object idx;
  if (single) {
    const std::size_t shape[1] = {static_cast<std::size_t>(host_counts[0])};
    idx = indices_tensor(out.release(), device, 1, shape);
  } else {
    const std::size_t shape[2] = {static_cast<std::size_t>(batch), static_cast<std::size_t>(k)};
    idx = indices_tensor(out.release(), device, 2, shape);
  }
  if (!return_result) return idx;
  return nb::make_tuple(idx, single ? nb::cast(host_results[0]) : nb::cast(host_results));
}

/// The [batch, heads, q, k] view of a CUDA sample (rank 3, batch 1) or batch (rank 4).
template <class T>
tokensel::tensor_view<const T, 4> batch_view(const array& a, const std::string& name) {
  if (a.ndim() == 4) return view<T, 4>(a, name);
  check_rank(a, 3, name, "[heads, queries, keys] or [batch, heads, queries, keys]");
  const auto v = view<T, 3>(a, name);
  return tokensel::tensor_view<const T, 4>(v.data(), {1, v.extent(0), v.extent(1), v.extent(2)},
                                           {0, v.stride(0), v.stride(1), v.stride(2)}, name);
}

}  // namespace

nb::object fopru_select_cuda(const array& attention, const tokensel::fopru::config& cfg, bool return_result) {
  namespace fo = tokensel::fopru;
  return dispatch(dtype_of(attention, "fopru.attention", /*allow_cuda=*/true), [&](auto tag) {
    using T = decltype(tag);
    const auto v = batch_view<T>(attention, "fopru.attention");
    const index_t tokens = v.extent(2);
    const index_t k = fo::keep_count(cfg.skip_cls ? (tokens > 0 ? tokens - 1 : 0) : tokens, cfg);
    return run<fo::result>(attention, v.extent(0), k, fo::workspace_size(v, cfg), attention.ndim() == 3, return_result,
                           [&](const tokensel::cuda_policy& p, const tokensel::selection_batch& out, std::span<fo::result> r) {
                             fo::select(p, v, cfg, out, r);
                           });
  });
}

nb::object fastv_select_cuda(const array& attention, const tokensel::token_range& visual, const tokensel::fastv::config& cfg,
                             bool return_result) {
  namespace fv = tokensel::fastv;
  return dispatch(dtype_of(attention, "fastv.attention", /*allow_cuda=*/true), [&](auto tag) {
    using T = decltype(tag);
    const auto v = batch_view<T>(attention, "fastv.attention");
    const index_t k = fv::keep_count(visual.count, cfg);
    return run<fv::result>(attention, v.extent(0), k, fv::workspace_size(v, visual, cfg), attention.ndim() == 3, return_result,
                           [&](const tokensel::cuda_policy& p, const tokensel::selection_batch& out, std::span<fv::result> r) {
                             fv::select(p, v, visual, cfg, out, r);
                           });
  });
}

}  // namespace tsp
