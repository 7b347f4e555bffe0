// tokensel Python extension: the CUDA dispatch of PruMerge / PruMerge+ (cuda_dispatch.hpp; nvcc,
// TOKENSEL_PYTHON_WITH_CUDA=ON): queries and keys (with the merge when features are given), or CLS
// attention rows (selection only: the CUDA backend merges from queries and keys). The counts are
// adaptive, so every sample comes back as the CPU gives it: its indices cut to its count, its
// merged rows cut to result.rows(), its result; a batch as a list of those.
#include "cuda_run.cuh"

#include <tokensel/cuda/methods/prumerge.cuh>

namespace tsp {

namespace pm = tokensel::prumerge;
using cuda_run::batched;
using cuda_run::check_companion;
using cuda_run::cut;
using cuda_run::launch;
using rows_view = tokensel::tensor_view<float, 3>;
using tokensel::cuda_policy;
using tokensel::selection_batch;

namespace {

/// The CPU binding's outputs (prumerge.cpp: finish) of every sample of a launch: one sample's
/// indices [, merged rows][, result], or a list of them for a batch.
nb::object per_sample(const cuda_run::launched<pm::result>& l, bool single, bool with_rows, bool return_result) {
  auto sample = [&](std::size_t b) -> nb::object {
    const pm::result& r = l.results[b];
    nb::list items;
    items.append(cut(l.indices, b, static_cast<std::size_t>(r.count)));
    if (with_rows) items.append(cut(l.rows, b, static_cast<std::size_t>(r.rows())));
    if (return_result) items.append(nb::cast(r));
    return items.size() == 1 ? nb::object(items[0]) : nb::object(nb::tuple(items));
  };
  if (single) return sample(0);
  nb::list out;
  for (std::size_t b = 0; b < l.results.size(); ++b) out.append(sample(b));
  return out;
}

/// PruMerge's own status reader: the CPU backend's parameter names (prumerge.keys[t, c], ...).
void raise_prumerge(const cuda_policy& p) { pm::throw_on_error(p); }

}  // namespace

nb::object prumerge_select_cuda(const array& queries, const array& keys, nb::handle features, const pm::config& cfg, bool return_result,
                                const std::string& where) {
  const dt t = dtype_of(queries, "prumerge.queries" + where, /*allow_cuda=*/true);
  check_companion(keys, queries, t, "prumerge.keys" + where, "prumerge.queries");
  const bool single = queries.ndim() == 2;
  check_rank(keys, single ? 2 : 3, "prumerge.keys" + where, single ? "[n+1, D]" : "[batch, n+1, D]");
  const std::optional<array> f = cuda_run::optional_companion(features, queries, t, "prumerge.features" + where, "prumerge.queries",
                                                              single ? 2 : 3, single ? "[n, d]" : "[batch, n, d]");
  return dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    const auto qv = batched<T, 2>(queries, "prumerge.queries", "[n+1 or 1, D] or [batch, n+1 or 1, D]");
    const auto kv = batched<T, 2>(keys, "prumerge.keys", "[n+1, D]");
    const auto fv = f ? batched<T, 2>(*f, "prumerge.features", "[n, d]") : tokensel::tensor_view<const T, 3>{};
    const index_t n = kv.extent(1) > 0 ? kv.extent(1) - 1 : 0;
    const std::size_t ws = f ? pm::workspace_size(qv, kv, fv, cfg) : pm::workspace_size(qv, kv, cfg);
    const cuda_run::outputs extra{f ? fv.extent(2) : 0, pm::max_rows(n, cfg), false, false, raise_prumerge};
    const auto l = launch<pm::result>(queries, kv.extent(0), pm::max_count(n, cfg), ws, extra,
                                      [&](const cuda_policy& p, const selection_batch& out, std::span<pm::result> r, rows_view rows) {
                                        if (f) {
                                          pm::select(p, qv, kv, fv, cfg, out, rows, r);
                                        } else {
                                          pm::select(p, qv, kv, cfg, out, r);
                                        }
                                      });
    return per_sample(l, single, f.has_value(), return_result);
  });
}

nb::object prumerge_from_attention_cuda(const array& attention, const pm::config& cfg, bool return_result) {
  const dt t = dtype_of(attention, "prumerge.attention", /*allow_cuda=*/true);
  return dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    const auto a = batched<T, 1>(attention, "prumerge.attention", "[n] or [batch, n]: CLS attention rows over the patches");
    const index_t n = a.extent(1);
    const auto l = launch<pm::result>(attention, a.extent(0), pm::max_count(n, cfg), pm::workspace_size(a, cfg),
                                      {0, 0, false, false, raise_prumerge},
                                      [&](const cuda_policy& p, const selection_batch& out, std::span<pm::result> r, rows_view) {
                                        pm::select_from_attention(p, a, cfg, out, r);
                                      });
    return per_sample(l, attention.ndim() == 1, false, return_result);
  });
}

}  // namespace tsp
