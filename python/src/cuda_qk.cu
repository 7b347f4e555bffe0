// tokensel Python extension: FoPru and FastV from a tokensel.qk_source whose queries and keys (and
// lse) are CUDA tensors (cuda_dispatch.hpp; nvcc, TOKENSEL_PYTHON_WITH_CUDA=ON): the library's Q/K
// path on the device (tiles of Q K^T, no [heads, N, N] map), one source per call. The device sums
// agree with the CPU Q/K path to ~1e-5 relative (not bit for bit), so the indices are the CPU's
// wherever the top-k cut has a margin above that.
#include "cuda_run.cuh"

#include <tokensel/cuda/methods/fastv.cuh>
#include <tokensel/cuda/methods/fopru.cuh>

namespace tsp {

using cuda_run::run;
using rows_view = tokensel::tensor_view<float, 3>;

nb::object fopru_select_cuda_qk(const py_qk& q, const tokensel::fopru::config& cfg, bool return_result) {
  namespace fo = tokensel::fopru;
  return dispatch(q.dtype(/*cuda=*/true), [&](auto tag) {
    using T = decltype(tag);
    const tokensel::qk_source<T> one = q.template source<T>(/*cuda=*/true);
    const std::span<const tokensel::qk_source<T>> src(&one, 1);
    const index_t tokens = one.query_count();
    const index_t k = fo::keep_count(cfg.skip_cls ? (tokens > 0 ? tokens - 1 : 0) : tokens, cfg);
    return run<fo::result>(q.queries, 1, k, fo::workspace_size(src, cfg), /*single=*/true, return_result, {},
                           [&](const tokensel::cuda_policy& p, const tokensel::selection_batch& out, std::span<fo::result> r, rows_view) {
                             fo::select(p, src, cfg, out, r);
                           });
  });
}

nb::object fastv_select_cuda_qk(const py_qk& q, const tokensel::token_range& visual, const tokensel::fastv::config& cfg, bool return_result) {
  namespace fv = tokensel::fastv;
  return dispatch(q.dtype(/*cuda=*/true), [&](auto tag) {
    using T = decltype(tag);
    const tokensel::qk_source<T> one = q.template source<T>(/*cuda=*/true);
    const std::span<const tokensel::qk_source<T>> src(&one, 1);
    const std::span<const tokensel::token_range> spans(&visual, 1);
    return run<fv::result>(q.queries, 1, fv::keep_count(visual.count, cfg), fv::workspace_size(src, spans, cfg), /*single=*/true,
                           return_result, {},
                           [&](const tokensel::cuda_policy& p, const tokensel::selection_batch& out, std::span<fv::result> r, rows_view) {
                             fv::select(p, src, spans, cfg, out, r);
                           });
  });
}

}  // namespace tsp
