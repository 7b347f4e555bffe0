// tokensel Python extension: the CUDA dispatch of freePruner (layer stacks), FitPrune's
// prune_layer and pooling (cuda_dispatch.hpp; nvcc, TOKENSEL_PYTHON_WITH_CUDA=ON), through the
// same cuda_run::run as the other methods.
#include "cuda_run.cuh"

#include <tokensel/cuda/methods/baselines.cuh>
#include <tokensel/cuda/methods/fitprune.cuh>
#include <tokensel/cuda/methods/freepruner.cuh>

namespace tsp {

using cuda_run::batched;
using cuda_run::check_companion;
using cuda_run::run;
using rows_view = tokensel::tensor_view<float, 3>;
using tokensel::cuda_policy;
using tokensel::selection_batch;

namespace {

/// The [batch, heads, N, N] device view of every layer of a CUDA stack: one [L, heads, N, N]
/// (a sample) or [L, batch, heads, N, N] array, or a list of [heads, N, N] / [batch, heads, N, N]
/// arrays (checked: one device, one dtype, one rank). arrays keeps the inputs alive.
template <class T>
std::vector<tokensel::attention_view<T>> layer_views(const std::vector<array>& arrays, bool whole, bool single) {
  std::vector<tokensel::attention_view<T>> views;
  if (whole) {
    const array& a = arrays[0];
    std::array<index_t, 5> ext{}, str{};  // a sample (rank 4) gets a batch extent of 1 (stride 0) after L
    for (std::size_t k = 0, j = 0; k < 5; ++k) {
      const bool inserted = single && k == 1;
      ext[k] = inserted ? 1 : static_cast<index_t>(a.shape(j));
      str[k] = inserted ? 0 : static_cast<index_t>(a.stride(j));
      if (!inserted) ++j;
    }
    const tokensel::tensor_view<const T, 5> v(static_cast<const T*>(a.data()), ext, str, "freepruner.layers");
    for (index_t l = 0; l < v.extent(0); ++l) views.push_back(v[l]);
    return views;
  }
  for (std::size_t i = 0; i < arrays.size(); ++i) {
    const std::string name = "freepruner.layers[" + std::to_string(i) + "]";
    check_rank(arrays[i], single ? 3 : 4, name, single ? "[heads, N, N] (every layer of a sample)" : "[batch, heads, N, N] (every layer of a batch)");
    views.push_back(batched<T, 3>(arrays[i], name, "[heads, N, N]"));
  }
  return views;
}

}  // namespace

nb::object freepruner_select_cuda(nb::handle layers, const tokensel::freepruner::config& base, const opt_budget& keep, index_t offset,
                                  bool return_result) {
  namespace fp = tokensel::freepruner;
  const bool whole = !is_sequence(layers);
  std::vector<array> arrays;
  if (whole) {
    arrays.push_back(nb::cast<array>(layers));
    if (arrays[0].ndim() != 4 && arrays[0].ndim() != 5) {
      fail(errc::shape_mismatch, "freepruner.layers.ndim", std::to_string(arrays[0].ndim()),
           "must be 4 ([layers, heads, N, N]) or 5 ([layers, batch, heads, N, N]), or a list of per-layer arrays");
    }
  } else {
    for (std::size_t i = 0; i < nb::len(layers); ++i) arrays.push_back(array_arg(layers[i], "freepruner.layers[" + std::to_string(i) + "]"));
  }
  if (arrays.empty() || (whole && arrays[0].shape(0) == 0)) fail(errc::invalid_argument, "freepruner.layers", "[]", "needs the layers the config reads");
  const dt t = dtype_of(arrays[0], whole ? "freepruner.layers" : "freepruner.layers[0]", /*allow_cuda=*/true);
  for (std::size_t i = 1; i < arrays.size(); ++i) {
    check_companion(arrays[i], arrays[0], t, "freepruner.layers[" + std::to_string(i) + "]", "freepruner.layers[0]");
  }
  const bool single = arrays[0].ndim() == (whole ? 4u : 3u);
  return dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    const auto views = layer_views<T>(arrays, whole, single);
    const index_t tokens = views[0].extent(3), patches = base.skip_cls ? (tokens > 0 ? tokens - 1 : 0) : tokens;
    const fp::config cfg = keep ? fp::with_budget(*keep, patches, base) : base;
    const fp::device_batch_layer_stack<T> stack{std::span<const tokensel::attention_view<T>>(views), offset};
    return run<fp::result>(arrays[0], views[0].extent(0), fp::max_count(patches, cfg), fp::workspace_size(stack, cfg), single,
                           return_result, {0, false, /*per_sample=*/true},
                           [&](const cuda_policy& p, const selection_batch& out, std::span<fp::result> r, rows_view) {
                             fp::select(p, stack, cfg, out, r);
                           });
  });
}

nb::object fitprune_prune_layer_cuda(const array& attention, const tokensel::token_range& visual, index_t drop,
                                     const tokensel::fitprune::config& cfg, bool return_result) {
  namespace ft = tokensel::fitprune;
  return dispatch(dtype_of(attention, "fitprune.attention", /*allow_cuda=*/true), [&](auto tag) {
    using T = decltype(tag);
    const auto a = batched<T, 3>(attention, "fitprune.attention", "[heads, L, L] or [batch, heads, L, L]");
    const index_t k = visual.count > drop ? visual.count - drop : 0;
    return run<ft::layer_result>(attention, a.extent(0), k, ft::workspace_size(a, visual, drop), attention.ndim() == 3, return_result, {},
                                 [&](const cuda_policy& p, const selection_batch& out, std::span<ft::layer_result> r, rows_view) {
                                   ft::prune_layer(p, a, visual, drop, cfg, out, r);
                                 });
  });
}

nb::object pool_apply_cuda(const array& features, const std::optional<tokensel::token_grid>& grid_in,
                           const tokensel::baselines::pool::config& base, const opt_budget& keep) {
  namespace pl = tokensel::baselines::pool;
  const dt t = dtype_of(features, "pool.features", /*allow_cuda=*/true);
  if (features.ndim() != 2 && features.ndim() != 3) {
    fail(errc::shape_mismatch, "pool.features.ndim", std::to_string(features.ndim()), "must be 2 ([n, d]) or 3 ([batch, n, d])");
  }
  const bool single = features.ndim() == 2;
  const index_t n = static_cast<index_t>(features.shape(single ? 0 : 1));
  const tokensel::token_grid grid = grid_in ? *grid_in : tokensel::token_grid::square(n, "pool.grid");
  const pl::config cfg = keep ? pl::with_budget(*keep, grid, base) : base;
  const index_t k = pl::keep_count(grid, cfg);
  return dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    const auto f = batched<T, 2>(features, "pool.features", "[n, d] or [batch, n, d]");
    return run<pl::result>(features, f.extent(0), k, pl::workspace_size(), single, /*return_result=*/false,
                           {f.extent(2), /*rows_only=*/true, false},
                           [&](const cuda_policy& p, const selection_batch&, std::span<pl::result> r, rows_view rows) {
                             pl::apply(p, f, grid, cfg, rows, r);
                           });
  });
}

}  // namespace tsp
