// tokensel Python extension: the pieces every CUDA dispatch shares (compiled by nvcc only, with
// TOKENSEL_PYTHON_WITH_CUDA=ON). A method's dispatch (cuda_<method>.cu, cuda_dispatch.cu) builds
// [batch, ...] views of its CUDA inputs and hands run() a lambda that calls the library's batched
// cuda select; run() does the rest the same way for every method: device and stream, workspace and
// outputs (stream-ordered), one synchronisation, the recorded status raised, torch tensors returned.
#pragma once

#include "cuda_dispatch.hpp"

#include <cuda_runtime_api.h>

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <tokensel/cuda/core/error.cuh>
#include <tokensel/cuda/core/policy.cuh>

namespace tsp::cuda_run {

inline void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail(errc::cuda_runtime, what, cudaGetErrorName(e), cudaGetErrorString(e));
}

/// PyTorch's current stream on the tensor's device, so the call orders after the kernels that
/// produced the inputs; the legacy default stream when torch is not importable.
inline cudaStream_t current_stream(int device) {
  try {
    nb::module_ torch = nb::module_::import_("torch");
    nb::object stream = torch.attr("cuda").attr("current_stream")(device);
    return reinterpret_cast<cudaStream_t>(nb::cast<std::uintptr_t>(stream.attr("cuda_stream")));
  } catch (const nb::python_error&) {
    return nullptr;
  }
}

/// Makes `device` current for the call and restores the caller's device afterwards.
struct device_guard {
  int previous = 0;
  explicit device_guard(int device) {
    check_cuda(cudaGetDevice(&previous), "cudaGetDevice");
    check_cuda(cudaSetDevice(device), "cudaSetDevice");
  }
  ~device_guard() { cudaSetDevice(previous); }
  device_guard(const device_guard&) = delete;
  device_guard& operator=(const device_guard&) = delete;
};

/// Device memory of one call, freed (stream-ordered) when it goes out of scope unless released.
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

/// A torch CUDA tensor of T over ptr (shape `shape`), owning it (cudaFree on deletion; the stream
/// was synchronised before it is handed out).
template <class T>
nb::object device_tensor(void* ptr, int device, std::size_t ndim, const std::size_t* shape) {
  nb::capsule owner(ptr, [](void* p) noexcept { cudaFree(p); });
  return nb::cast(nb::ndarray<nb::pytorch, T>(ptr, ndim, shape, owner, nullptr, nb::dtype<T>(), nb::device::cuda::value, device));
}

/// The [batch, ...] (rank R + 1) view of a CUDA input: a batch as it is (rank R + 1), or one
/// sample (rank R) as a batch of one (stride 0). shape names both forms for the rank error.
template <class T, std::size_t R>
tokensel::tensor_view<const T, R + 1> batched(const array& a, const std::string& name, const char* shape) {
  if (a.ndim() == R + 1) return view<T, R + 1>(a, name);
  check_rank(a, R, name, shape);
  const auto v = view<T, R>(a, name);
  std::array<index_t, R + 1> ext{1}, str{0};
  for (std::size_t k = 0; k < R; ++k) {
    ext[k + 1] = v.extent(k);
    str[k + 1] = v.stride(k);
  }
  return tokensel::tensor_view<const T, R + 1>(v.data(), ext, str, name);
}

/// Another input of a call whose main input `like` is a CUDA tensor: on the same device, with
/// like's dtype d (the checks the CPU path does, plus the device).
inline void check_companion(const array& a, const array& like, dt d, const std::string& name, const std::string& ref) {
  if (!is_cuda_device(a.device_type()) || a.device_id() != like.device_id()) {
    fail(errc::unsupported, name + ".device", is_cuda_device(a.device_type()) ? "cuda:" + std::to_string(a.device_id()) : "cpu",
         "must be on the device of " + ref + " (cuda:" + std::to_string(like.device_id()) + ")");
  }
  check_same(d, dtype_of(a, name, /*allow_cuda=*/true), name, ref);
}

/// What a dispatch returns. row_width > 0: float32 rows [batch, k, row_width] too (VisionZip's
/// features), or only them (rows_only: pooling, which selects no indices). per_sample: a batch's
/// indices as a list of 1-D tensors, each its sample's count long (adaptive methods, like the CPU).
struct outputs {
  index_t row_width = 0;
  bool rows_only = false;
  bool per_sample = false;
};

/// The indices tensor idx ([batch, k]) as a list of its rows, row b cut to counts[b].
inline nb::object rows_of(const nb::object& idx, const std::vector<token_index>& counts) {
  nb::list rows;
  for (std::size_t b = 0; b < counts.size(); ++b) rows.append(idx[nb::int_(b)].attr("narrow")(0, 0, counts[b]));
  return rows;
}

/// Runs select(policy, out, results, rows) for `batch` samples keeping at most k each on like's
/// device: workspace, indices, counts, results and rows in device memory, one synchronisation, the
/// recorded status raised. single: 1-D indices of the one sample (its count read back) instead of
/// [batch, k]. Returns the indices (a torch int32 CUDA tensor), then the rows when asked for, then
/// the results (copied to the host) when return_result.
template <class Result, class Select>
nb::object run(const array& like, index_t batch, index_t k, std::size_t workspace, bool single, bool return_result, outputs extra,
               Select&& select) {
  const int device = like.device_id();
  const device_guard guard(device);
  const cudaStream_t stream = current_stream(device);
  const auto n_out = static_cast<std::size_t>(batch * k), n_rows = n_out * static_cast<std::size_t>(extra.row_width);
  stream_buffer ws(workspace, stream, "cudaMallocAsync(workspace)");
  stream_buffer out(n_out * sizeof(token_index), stream, "cudaMallocAsync(indices)");
  stream_buffer counts(static_cast<std::size_t>(batch) * sizeof(token_index), stream, "cudaMallocAsync(counts)");
  stream_buffer results(static_cast<std::size_t>(batch) * sizeof(Result), stream, "cudaMallocAsync(results)");
  stream_buffer rows(n_rows * sizeof(float), stream, "cudaMallocAsync(rows)");
  const tokensel::cuda_policy policy{stream, ws.ptr, workspace};
  std::vector<Result> host_results(static_cast<std::size_t>(batch));
  std::vector<token_index> host_counts(static_cast<std::size_t>(batch));
  {
    nb::gil_scoped_release rel;
    auto* idx = static_cast<token_index*>(out.ptr);
    select(policy,
           tokensel::selection_batch{tokensel::tensor_view<token_index, 2>(idx, {batch, k}),
                                     std::span<token_index>(static_cast<token_index*>(counts.ptr), static_cast<std::size_t>(batch))},
           std::span<Result>(static_cast<Result*>(results.ptr), static_cast<std::size_t>(batch)),
           tokensel::tensor_view<float, 3>(static_cast<float*>(rows.ptr), {batch, k, extra.row_width}, "features"));
    check_cuda(cudaMemcpyAsync(host_results.data(), results.ptr, host_results.size() * sizeof(Result), cudaMemcpyDeviceToHost, stream),
               "cudaMemcpyAsync(results)");
    check_cuda(cudaMemcpyAsync(host_counts.data(), counts.ptr, host_counts.size() * sizeof(token_index), cudaMemcpyDeviceToHost, stream),
               "cudaMemcpyAsync(counts)");
    tokensel::throw_on_error(policy);  // synchronises the stream
  }
  // Pooling writes no counts: its row count is k.
  const std::size_t count = !single || batch == 0 ? 0 : extra.rows_only ? static_cast<std::size_t>(k) : static_cast<std::size_t>(host_counts[0]);
  const std::size_t ishape[2] = {static_cast<std::size_t>(batch), static_cast<std::size_t>(k)};
  const std::size_t one_shape[1] = {count};
  nb::object idx = single ? device_tensor<token_index>(out.release(), device, 1, one_shape) : device_tensor<token_index>(out.release(), device, 2, ishape);
  nb::object feats;
  if (extra.row_width > 0) {
    const std::size_t d = static_cast<std::size_t>(extra.row_width);
    const std::size_t fshape[3] = {static_cast<std::size_t>(batch), static_cast<std::size_t>(k), d};
    const std::size_t fone[2] = {count, d};
    feats = single ? device_tensor<float>(rows.release(), device, 2, fone) : device_tensor<float>(rows.release(), device, 3, fshape);
  }
  if (extra.per_sample && !single) idx = rows_of(idx, host_counts);
  if (!return_result) return extra.rows_only ? feats : extra.row_width > 0 ? nb::object(nb::make_tuple(idx, feats)) : idx;
  nb::object res = single ? nb::cast(host_results.empty() ? Result{} : host_results[0]) : nb::cast(host_results);
  if (extra.rows_only) return nb::make_tuple(feats, res);
  return extra.row_width > 0 ? nb::make_tuple(idx, feats, res) : nb::make_tuple(idx, res);
}

}  // namespace tsp::cuda_run
