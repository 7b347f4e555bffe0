// tokensel Python extension: the CUDA dispatch of FoPru and FastV (cuda_dispatch.hpp; compiled only
// with TOKENSEL_PYTHON_WITH_CUDA=ON, by nvcc). The other methods' dispatches are cuda_<method>.cu.
#include "cuda_run.cuh"

#include <tokensel/cuda/methods/fastv.cuh>
#include <tokensel/cuda/methods/fopru.cuh>

namespace tsp {

using cuda_run::batched;
using cuda_run::run;
using rows_view = tokensel::tensor_view<float, 3>;

nb::object fopru_select_cuda(const array& attention, const tokensel::fopru::config& cfg, bool return_result, const std::string& where) {
  namespace fo = tokensel::fopru;
  return dispatch(dtype_of(attention, "fopru.attention" + where, /*allow_cuda=*/true), [&](auto tag) {
    using T = decltype(tag);
    const auto v = batched<T, 3>(attention, "fopru.attention" + where, "[heads, N, N] or [batch, heads, N, N]");
    const index_t tokens = v.extent(2);
    const index_t k = fo::keep_count(cfg.skip_cls ? (tokens > 0 ? tokens - 1 : 0) : tokens, cfg);
    return run<fo::result>(attention, v.extent(0), k, fo::workspace_size(v, cfg), attention.ndim() == 3, return_result, {},
                           [&](const tokensel::cuda_policy& p, const tokensel::selection_batch& out, std::span<fo::result> r, rows_view) {
                             fo::select(p, v, cfg, out, r);
                           });
  });
}

nb::object fastv_select_cuda(const array& attention, const tokensel::token_range& visual, const tokensel::fastv::config& cfg,
                             bool return_result, const std::string& where) {
  namespace fv = tokensel::fastv;
  return dispatch(dtype_of(attention, "fastv.attention" + where, /*allow_cuda=*/true), [&](auto tag) {
    using T = decltype(tag);
    const auto v = batched<T, 3>(attention, "fastv.attention" + where, "[heads, q, L] or [batch, heads, q, L]");
    const index_t k = fv::keep_count(visual.count, cfg);
    return run<fv::result>(attention, v.extent(0), k, fv::workspace_size(v, visual, cfg), attention.ndim() == 3, return_result, {},
                           [&](const tokensel::cuda_policy& p, const tokensel::selection_batch& out, std::span<fv::result> r, rows_view) {
                             fv::select(p, v, visual, cfg, out, r);
                           });
  });
}

}  // namespace tsp
