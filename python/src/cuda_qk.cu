// tokensel Python extension: FoPru, FastV, VisPruner and VisionZip from a tokensel.qk_source whose
// queries and keys (and lse) are CUDA tensors (cuda_dispatch.hpp; nvcc, TOKENSEL_PYTHON_WITH_CUDA=ON): the library's Q/K
// path on the device (tiles of Q K^T, no [heads, N, N] map), one source per call. The device sums
// agree with the CPU Q/K path to ~1e-5 relative (not bit for bit), so the indices are the CPU's
// wherever the top-k cut has a margin above that.
#include "cuda_run.cuh"

#include <tokensel/cuda/methods/fastv.cuh>
#include <tokensel/cuda/methods/fopru.cuh>
#include <tokensel/cuda/methods/visionzip.cuh>
#include <tokensel/cuda/methods/vispruner.cuh>

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

namespace {

/// VisPruner's and VisionZip's device Q/K paths take a dense batch: the one source as a batch of
/// one (stride 0).
template <class T, std::size_t R>
tokensel::tensor_view<const T, R + 1> as_batch(const tokensel::tensor_view<const T, R>& v) {
  std::array<index_t, R + 1> ext{1}, str{0};
  for (std::size_t k = 0; k < R; ++k) {
    ext[k + 1] = v.extent(k);
    str[k + 1] = v.stride(k);
  }
  return tokensel::tensor_view<const T, R + 1>(v.data(), ext, str, "qk_source");
}

/// The dense batch of one of a CUDA qk_source.
template <class T>
tokensel::qk_batch<T> batch_of(const tokensel::qk_source<T>& one) {
  tokensel::qk_batch<T> src{.queries = as_batch(one.queries), .keys = as_batch(one.keys), .scale = one.scale, .causal = one.causal,
                            .causal_offset = one.causal_offset};
  if (one.lse.data() != nullptr) src.lse = as_batch(one.lse);
  return src;
}

}  // namespace

nb::object vispruner_select_cuda_qk(const py_qk& q, const array& features, const tokensel::vispruner::config& base, const opt_budget& keep,
                                    bool return_result, const std::string& where) {
  namespace vp = tokensel::vispruner;
  const dt t = q.dtype(/*cuda=*/true);
  cuda_run::check_companion(features, q.queries, t, "vispruner.features" + where, "qk_source.queries");
  check_rank(features, 2, "vispruner.features" + where, "[N - 1, D]");
  return dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    const tokensel::qk_source<T> one = q.template source<T>(/*cuda=*/true);
    const tokensel::qk_batch<T> src = batch_of(one);
    const auto f = cuda_run::batched<T, 2>(features, "vispruner.features" + where, "[N - 1, D]");
    const index_t big_n = one.key_count(), n = big_n > 0 ? big_n - 1 : 0;
    const vp::config cfg = keep ? vp::with_budget(*keep, n, base) : base;
    return run<vp::result>(q.queries, 1, vp::keep_count(n, cfg), vp::workspace_size(src, f, cfg), /*single=*/true, return_result, {},
                           [&](const tokensel::cuda_policy& p, const tokensel::selection_batch& out, std::span<vp::result> r, rows_view) {
                             vp::select(p, src, f, cfg, out, r);
                           });
  });
}

nb::object visionzip_select_cuda_qk(const py_qk& q, nb::handle keys, const array& hidden, const tokensel::visionzip::config& base,
                                    const opt_budget& keep, bool return_result, const std::string& where) {
  namespace vz = tokensel::visionzip;
  const dt t = q.dtype(/*cuda=*/true);
  cuda_run::check_companion(hidden, q.queries, t, "visionzip.hidden" + where, "qk_source.queries");
  check_rank(hidden, 2, "visionzip.hidden" + where, "[N, D]");
  const std::optional<array> karr =
      cuda_run::optional_companion(keys, q.queries, t, "visionzip.keys" + where, "qk_source.queries", 3, "[heads, N, head_dim]");
  return dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    const tokensel::qk_source<T> one = q.template source<T>(/*cuda=*/true);
    const tokensel::qk_batch<T> src = batch_of(one);
    const auto kv = karr ? cuda_run::batched<T, 3>(*karr, "visionzip.keys" + where, "[heads, N, head_dim]") : tokensel::tensor_view<const T, 4>{};
    const auto hv = cuda_run::batched<T, 2>(hidden, "visionzip.hidden" + where, "[N, D]");
    const index_t tokens = one.key_count();
    const vz::config cfg = keep ? vz::with_budget(*keep, tokens > 0 ? tokens - 1 : 0, base) : base;
    return run<vz::result>(q.queries, 1, vz::keep_count(tokens, cfg), vz::workspace_size(src, kv, cfg), /*single=*/true, return_result,
                           {hv.extent(2)},
                           [&](const tokensel::cuda_policy& p, const tokensel::selection_batch& out, std::span<vz::result> r, rows_view rows) {
                             vz::select(p, src, kv, hv, cfg, out, rows, r);
                           });
  });
}

}  // namespace tsp
