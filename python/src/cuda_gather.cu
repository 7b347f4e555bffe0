// tokensel Python extension: gather on CUDA tensors (cuda_dispatch.hpp; nvcc,
// TOKENSEL_PYTHON_WITH_CUDA=ON): the kept rows of CUDA features, named by CUDA int32 indices (the
// output of a CUDA selection), moved on the device by the library's batched gather_rows; no host
// round trip. An index outside [0, n) is found on the device and raised like the CPU's.
#include "cuda_run.cuh"

#include <tokensel/cuda/select/gather.cuh>

namespace tsp {

using cuda_run::check_cuda;

namespace {

/// The [batch, ...] (rank R + 1) view of a mutable CUDA array (gather's out).
template <class T, std::size_t R>
tokensel::tensor_view<T, R + 1> batched_out(const out_array& a, const std::string& name) {
  std::array<index_t, R + 1> ext{1}, str{0};
  const std::size_t skip = a.ndim() == R ? 1 : 0;  // a sample: batch of one (stride 0)
  for (std::size_t k = skip; k < R + 1; ++k) {
    ext[k] = static_cast<index_t>(a.shape(k - skip));
    str[k] = static_cast<index_t>(a.stride(k - skip));
  }
  return tokensel::tensor_view<T, R + 1>(static_cast<T*>(a.data()), ext, str, name);
}

/// The indices as a CUDA int32 [k] (a sample) or [batch, k] array on src's device, rows contiguous
/// (the kernels read them with unit stride).
array device_indices(nb::handle h, const array& src) {
  if (is_sequence(h)) {
    fail(errc::unsupported, "gather.indices", "a list",
         "must be a CUDA int32 tensor with a CUDA gather.src (a CUDA selection's output, or torch.tensor(..., dtype=torch.int32, device=src.device))");
  }
  const array idx = array_arg(h, "gather.indices");
  check_device(idx, src, "gather.indices", "gather.src");
  if (const auto t = idx.dtype(); t != nb::dtype<token_index>()) {
    fail(errc::unsupported, "gather.indices.dtype", "code " + std::to_string(t.code) + " bits " + std::to_string(t.bits),
         "must be int32 with CUDA tensors (.int())");
  }
  const std::size_t rank = src.ndim() - 1;
  check_rank(idx, rank, "gather.indices", rank == 1 ? "[k]" : "[batch, k]");
  if (idx.shape(rank - 1) > 1 && idx.stride(rank - 1) != 1) {
    fail(errc::unsupported, "gather.indices.stride", std::to_string(idx.stride(rank - 1)), "must be 1 with CUDA tensors (.contiguous())");
  }
  return idx;
}

}  // namespace

nb::object gather_cuda(const array& src, nb::handle idx_h, nb::handle out_h) {
  const dt s = dtype_of(src, "gather.src", /*allow_cuda=*/true);
  if (src.ndim() != 2 && src.ndim() != 3) {
    fail(errc::shape_mismatch, "gather.src.ndim", std::to_string(src.ndim()), "must be 2 ([n, d]) or 3 ([batch, n, d]) with CUDA tensors");
  }
  const bool single = src.ndim() == 2;
  const array idx = device_indices(idx_h, src);
  const index_t batch = single ? 1 : static_cast<index_t>(src.shape(0)), k = static_cast<index_t>(idx.shape(single ? 0 : 1));
  const index_t d = static_cast<index_t>(src.shape(single ? 1 : 2));
  std::optional<out_array> out;
  dt o = dt::f32;
  if (!out_h.is_none()) {
    out = nb::cast<out_array>(out_h);
    o = dtype_of(array(*out), "gather.out", /*allow_cuda=*/true);
    check_device(array(*out), src, "gather.out", "gather.src");  // any of the three dtypes, like on the CPU
    check_rank(array(*out), src.ndim(), "gather.out", single ? "[k, d]" : "[batch, k, d]");
  }
  const int device = src.device_id();
  const cuda_run::device_guard guard(device);
  const cudaStream_t stream = cuda_run::current_stream(device);
  const std::size_t ws_bytes = tokensel::gather_workspace_size();
  cuda_run::stream_buffer ws(ws_bytes, stream, "cudaMallocAsync(workspace)");
  cuda_run::stream_buffer counts(static_cast<std::size_t>(batch) * sizeof(token_index), stream, "cudaMallocAsync(counts)");
  cuda_run::stream_buffer rows(out ? 0 : static_cast<std::size_t>(batch * k * d) * sizeof(float), stream, "cudaMallocAsync(rows)");
  const std::vector<token_index> host_counts(static_cast<std::size_t>(batch), static_cast<token_index>(k));
  const tokensel::cuda_policy policy{stream, ws.ptr, ws_bytes};
  // The kernels only read the indices (selection_batch's view is mutable for the selections' sake).
  const tokensel::selection_batch sel{
      tokensel::tensor_view<token_index, 2>(const_cast<token_index*>(static_cast<const token_index*>(idx.data())), {batch, k},
                                            {single ? 0 : static_cast<index_t>(idx.stride(0)), 1}, "gather.indices"),
      std::span<token_index>(static_cast<token_index*>(counts.ptr), static_cast<std::size_t>(batch))};
  {
    nb::gil_scoped_release rel;
    check_cuda(cudaMemcpyAsync(counts.ptr, host_counts.data(), host_counts.size() * sizeof(token_index), cudaMemcpyHostToDevice, stream),
               "cudaMemcpyAsync(counts)");
    dispatch(s, [&](auto stag) {
      using S = decltype(stag);
      const auto sv = cuda_run::batched<S, 2>(src, "gather.src", "[n, d]");
      if (!out) {
        tokensel::gather_rows(policy, sv, sel, tokensel::tensor_view<float, 3>(static_cast<float*>(rows.ptr), {batch, k, d}, "gather.out"));
        return;
      }
      dispatch(o, [&](auto otag) { tokensel::gather_rows(policy, sv, sel, batched_out<decltype(otag), 2>(*out, "gather.out")); });
    });
    tokensel::throw_on_error(policy);  // synchronises the stream (so host_counts may go)
  }
  if (out) return nb::borrow(out_h);
  const std::size_t shape[3] = {static_cast<std::size_t>(batch), static_cast<std::size_t>(k), static_cast<std::size_t>(d)};
  return cuda_run::device_tensor<float>(rows.release(), device, single ? 2 : 3, single ? shape + 1 : shape);
}

}  // namespace tsp
