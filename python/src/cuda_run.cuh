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
#include <optional>
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
  check_device(a, like, name, ref);
  check_same(d, dtype_of(a, name, /*allow_cuda=*/true), name, ref);
}

/// An optional companion (None: none): read, checked as above, and of rank `rank`.
inline std::optional<array> optional_companion(nb::handle h, const array& like, dt d, const std::string& name, const std::string& ref,
                                               std::size_t rank, const char* shape) {
  if (h.is_none()) return std::nullopt;
  array a = array_arg(h, name);
  check_companion(a, like, d, name, ref);
  check_rank(a, rank, name, shape);
  return a;
}

/// What a dispatch asks for besides the indices [batch, k]. row_width > 0: float32 rows
/// [batch, row_count (0: k), row_width] too (VisionZip's features, pooling, PruMerge's merged rows);
/// rows_only: only them (pooling selects no indices). per_sample: a batch's indices as a list of
/// 1-D tensors, each cut to its sample's count (adaptive methods, like the CPU). raise: reads the
/// status the kernels recorded and throws it (synchronises); PruMerge's names the CPU's parameters.
struct outputs {
  index_t row_width = 0;
  index_t row_count = 0;
  bool rows_only = false;
  bool per_sample = false;
  void (*raise)(const tokensel::cuda_policy&) = nullptr;  // null: tokensel::throw_on_error
};

/// One launch's results: the device outputs as torch CUDA tensors (indices int32 [batch, k]; rows
/// float32 [batch, row_count, row_width] or None), the counts and results copied to the host.
template <class Result>
struct launched {
  nb::object indices, rows;
  std::vector<token_index> counts;
  std::vector<Result> results;
};

/// Sample b of a [batch, m, ...] device tensor cut to its first count entries (a view).
inline nb::object cut(const nb::object& t, std::size_t b, std::size_t count) {
  return t[nb::int_(b)].attr("narrow")(0, 0, count);
}

/// Runs select(policy, out, results, rows) for `batch` samples keeping at most k each on like's
/// device: workspace, indices, counts, results and rows in device memory, the counts and results
/// copied back, one synchronisation, the recorded status raised.
template <class Result, class Select>
launched<Result> launch(const array& like, index_t batch, index_t k, std::size_t workspace, const outputs& extra, Select&& select) {
  const int device = like.device_id();
  const device_guard guard(device);
  const cudaStream_t stream = current_stream(device);
  const index_t row_count = extra.row_count > 0 ? extra.row_count : k;
  const auto n_out = static_cast<std::size_t>(batch * k), n_rows = static_cast<std::size_t>(batch * row_count * extra.row_width);
  stream_buffer ws(workspace, stream, "cudaMallocAsync(workspace)");
  stream_buffer out(n_out * sizeof(token_index), stream, "cudaMallocAsync(indices)");
  stream_buffer counts(static_cast<std::size_t>(batch) * sizeof(token_index), stream, "cudaMallocAsync(counts)");
  stream_buffer results(static_cast<std::size_t>(batch) * sizeof(Result), stream, "cudaMallocAsync(results)");
  stream_buffer rows(n_rows * sizeof(float), stream, "cudaMallocAsync(rows)");
  const tokensel::cuda_policy policy{stream, ws.ptr, workspace};
  launched<Result> l{nb::none(), nb::none(), std::vector<token_index>(static_cast<std::size_t>(batch)),
                     std::vector<Result>(static_cast<std::size_t>(batch))};
  {
    nb::gil_scoped_release rel;
    select(policy,
           tokensel::selection_batch{tokensel::tensor_view<token_index, 2>(static_cast<token_index*>(out.ptr), {batch, k}),
                                     std::span<token_index>(static_cast<token_index*>(counts.ptr), static_cast<std::size_t>(batch))},
           std::span<Result>(static_cast<Result*>(results.ptr), static_cast<std::size_t>(batch)),
           tokensel::tensor_view<float, 3>(static_cast<float*>(rows.ptr), {batch, row_count, extra.row_width}, "rows"));
    check_cuda(cudaMemcpyAsync(l.results.data(), results.ptr, l.results.size() * sizeof(Result), cudaMemcpyDeviceToHost, stream),
               "cudaMemcpyAsync(results)");
    check_cuda(cudaMemcpyAsync(l.counts.data(), counts.ptr, l.counts.size() * sizeof(token_index), cudaMemcpyDeviceToHost, stream),
               "cudaMemcpyAsync(counts)");
    if (extra.raise != nullptr) {
      extra.raise(policy);
    } else {
      tokensel::throw_on_error(policy);  // synchronises the stream
    }
  }
  const std::size_t ishape[2] = {static_cast<std::size_t>(batch), static_cast<std::size_t>(k)};
  l.indices = device_tensor<token_index>(out.release(), device, 2, ishape);
  if (extra.row_width > 0) {
    const std::size_t fshape[3] = {static_cast<std::size_t>(batch), static_cast<std::size_t>(row_count), static_cast<std::size_t>(extra.row_width)};
    l.rows = device_tensor<float>(rows.release(), device, 3, fshape);
  }
  return l;
}

/// launch, then the CPU binding's outputs: single: the one sample's 1-D indices (cut to its count)
/// [and rows], else [batch, k] (a list when per_sample); then the rows when asked for, then the
/// result(s) when return_result.
template <class Result, class Select>
nb::object run(const array& like, index_t batch, index_t k, std::size_t workspace, bool single, bool return_result, outputs extra,
               Select&& select) {
  const launched<Result> l = launch<Result>(like, batch, k, workspace, extra, select);
  // Pooling writes no counts: its row count is k.
  const auto count = [&](std::size_t b) { return static_cast<std::size_t>(extra.rows_only ? k : l.counts[b]); };
  nb::object idx = l.indices, feats = l.rows;
  if (single) {
    idx = cut(l.indices, 0, count(0));
    if (extra.row_width > 0) feats = cut(l.rows, 0, count(0));
  } else if (extra.per_sample) {
    nb::list each;
    for (std::size_t b = 0; b < l.counts.size(); ++b) each.append(cut(l.indices, b, count(b)));
    idx = each;
  }
  if (!return_result) return extra.rows_only ? feats : extra.row_width > 0 ? nb::object(nb::make_tuple(idx, feats)) : idx;
  nb::object res = single ? nb::cast(l.results[0]) : nb::cast(l.results);
  if (extra.rows_only) return nb::make_tuple(feats, res);
  return extra.row_width > 0 ? nb::make_tuple(idx, feats, res) : nb::make_tuple(idx, res);
}

}  // namespace tsp::cuda_run
