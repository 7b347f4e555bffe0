// tokensel Python extension: the CUDA dispatch of DivPrune, VisPruner, DART and VisionZip
// (cuda_dispatch.hpp; nvcc, TOKENSEL_PYTHON_WITH_CUDA=ON). Each builds [batch, ...] views of its
// CUDA inputs (a sample becomes a batch of one), checks the companions' device and dtype, and runs
// the library's batched cuda select through cuda_run::run.
#include "cuda_run.cuh"

#include <tokensel/cuda/methods/dart.cuh>
#include <tokensel/cuda/methods/divprune.cuh>
#include <tokensel/cuda/methods/visionzip.cuh>
#include <tokensel/cuda/methods/vispruner.cuh>

namespace tsp {

using cuda_run::batched;
using cuda_run::check_companion;
using cuda_run::run;
using rows_view = tokensel::tensor_view<float, 3>;
using tokensel::cuda_policy;
using tokensel::selection_batch;

nb::object divprune_select_cuda(const array& features, const tokensel::divprune::config& base, const opt_budget& keep, bool return_result,
                                const std::string& where) {
  namespace dp = tokensel::divprune;
  return dispatch(dtype_of(features, "divprune.features" + where, /*allow_cuda=*/true), [&](auto tag) {
    using T = decltype(tag);
    const auto f = batched<T, 2>(features, "divprune.features" + where, "[n, D] or [batch, n, D]");
    const index_t n = f.extent(1);
    const dp::config cfg = keep ? dp::with_budget(*keep, n, base) : base;
    return run<dp::result>(features, f.extent(0), dp::keep_count(n, cfg), dp::workspace_size(f, cfg), features.ndim() == 2, return_result, {},
                           [&](const cuda_policy& p, const selection_batch& out, std::span<dp::result> r, rows_view) {
                             dp::select(p, f, cfg, out, r);
                           });
  });
}

nb::object vispruner_select_cuda(const array& attention, const array& features, const tokensel::vispruner::config& base,
                                 const opt_budget& keep, bool return_result, const std::string& where) {
  namespace vp = tokensel::vispruner;
  const dt t = dtype_of(attention, "vispruner.attention" + where, /*allow_cuda=*/true);
  check_companion(features, attention, t, "vispruner.features" + where, "the attention");
  const bool single = attention.ndim() == 3;
  check_rank(features, single ? 2 : 3, "vispruner.features" + where, single ? "[N - 1, D]" : "[batch, N - 1, D]");
  return dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    const auto a = batched<T, 3>(attention, "vispruner.attention" + where, "[heads, N, N] or [batch, heads, N, N]");
    const auto f = batched<T, 2>(features, "vispruner.features" + where, "[N - 1, D]");
    const index_t n = a.extent(3) > 0 ? a.extent(3) - 1 : 0;
    const vp::config cfg = keep ? vp::with_budget(*keep, n, base) : base;
    return run<vp::result>(attention, a.extent(0), vp::keep_count(n, cfg), vp::workspace_size(a, f, cfg), single, return_result, {},
                           [&](const cuda_policy& p, const selection_batch& out, std::span<vp::result> r, rows_view) {
                             vp::select(p, a, f, cfg, out, r);
                           });
  });
}

namespace {

/// DART's RMSNorm weight on the device: empty (None) or a float32 CUDA tensor [D] on hidden's device.
tokensel::vector_view<const float> dart_weight(nb::handle h, const array& hidden, std::optional<array>& keep_alive, const std::string& where) {
  if (h.is_none()) return {};
  keep_alive = array_arg(h, "dart.norm_weight");
  const dt t = dtype_of(*keep_alive, "dart.norm_weight", /*allow_cuda=*/true);
  if (t != dt::f32) fail(errc::unsupported, "dart.norm_weight.dtype", dt_name(t), "must be float32 with CUDA inputs (read as f32 on the device: .float())");
  check_companion(*keep_alive, hidden, dt::f32, "dart.norm_weight", "dart.hidden" + where);
  check_rank(*keep_alive, 1, "dart.norm_weight", "[D]");
  return view<float, 1>(*keep_alive, "dart.norm_weight");
}

}  // namespace

nb::object dart_select_cuda(const array& keys, const array& hidden, nb::handle norm_weight, const tokensel::token_range& visual,
                            const tokensel::dart::config& base, const opt_budget& keep, bool return_result, const std::string& where) {
  namespace da = tokensel::dart;
  const dt t = dtype_of(hidden, "dart.hidden" + where, /*allow_cuda=*/true);
  check_companion(keys, hidden, t, "dart.keys" + where, "dart.hidden" + where);
  const bool single = hidden.ndim() == 2;
  check_rank(keys, single ? 3 : 4, "dart.keys" + where, single ? "[kv_heads, L, d_head]" : "[batch, kv_heads, L, d_head]");
  std::optional<array> weight_owner;
  const auto w = dart_weight(norm_weight, hidden, weight_owner, where);
  const da::config cfg = keep ? da::with_budget(*keep, visual.count, base) : base;
  return dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    const auto kv = batched<T, 3>(keys, "dart.keys" + where, "[kv_heads, L, d_head]");
    const auto hv = batched<T, 2>(hidden, "dart.hidden" + where, "[L, D] or [batch, L, D]");
    return run<da::result>(hidden, hv.extent(0), da::keep_count(visual.count, cfg), da::workspace_size(kv, hv, visual, cfg), single,
                           return_result, {},
                           [&](const cuda_policy& p, const selection_batch& out, std::span<da::result> r, rows_view) {
                             da::select(p, kv, hv, w, visual, cfg, out, r);
                           });
  });
}

nb::object visionzip_select_cuda(const array& attention, nb::handle keys, const array& hidden, const tokensel::visionzip::config& base,
                                 const opt_budget& keep, bool return_result, const std::string& where) {
  namespace vz = tokensel::visionzip;
  const dt t = dtype_of(attention, "visionzip.attention" + where, /*allow_cuda=*/true);
  const bool single = attention.ndim() == 3;
  check_companion(hidden, attention, t, "visionzip.hidden" + where, "the attention");
  check_rank(hidden, single ? 2 : 3, "visionzip.hidden" + where, single ? "[N, D]" : "[batch, N, D]");
  const std::optional<array> karr = cuda_run::optional_companion(keys, attention, t, "visionzip.keys" + where, "the attention",
                                                                 single ? 3 : 4, single ? "[heads, N, head_dim]" : "[batch, heads, N, head_dim]");
  return dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    const auto a = batched<T, 3>(attention, "visionzip.attention" + where, "[heads, N, N] or [batch, heads, N, N]");
    const auto kv = karr ? batched<T, 3>(*karr, "visionzip.keys" + where, "[heads, N, head_dim]") : tokensel::tensor_view<const T, 4>{};
    const auto hv = batched<T, 2>(hidden, "visionzip.hidden" + where, "[N, D]");
    const index_t tokens = a.extent(3);
    const vz::config cfg = keep ? vz::with_budget(*keep, tokens > 0 ? tokens - 1 : 0, base) : base;
    return run<vz::result>(attention, a.extent(0), vz::keep_count(tokens, cfg), vz::workspace_size(a, kv, cfg), single, return_result,
                           {hv.extent(2)},
                           [&](const cuda_policy& p, const selection_batch& out, std::span<vz::result> r, rows_view rows) {
                             vz::select(p, a, kv, hv, cfg, out, rows, r);
                           });
  });
}

}  // namespace tsp
