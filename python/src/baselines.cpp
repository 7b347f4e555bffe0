// tokensel Python extension: baselines (random, uniform, pool).
#include "common.hpp"
#include "cuda_dispatch.hpp"

#include <tokensel/methods/baselines.hpp>

namespace tsp {
namespace bl = tokensel::baselines;

namespace {

nb::object random_select(index_t n, std::optional<bl::random::config> cfg_in, nb::handle keep, std::uint64_t stream) {
  const auto b = budget_of(keep);
  const bl::random::config base = cfg_in.value_or(bl::random::config{});
  const bl::random::config cfg = b ? bl::random::with_budget(*b, n, base) : base;
  std::vector<token_index> out(static_cast<std::size_t>(bl::random::keep_count(n, cfg)));
  const auto r = bl::random::select(tokensel::seq, n, cfg, std::span<token_index>(out), stream);
  out.resize(static_cast<std::size_t>(r.count));
  return nb::cast(to_indices(std::move(out)));
}

nb::object uniform_select(nb::handle n_or_grid, std::optional<bl::uniform::config> cfg_in, nb::handle keep) {
  const auto b = budget_of(keep);
  const bl::uniform::config base = cfg_in.value_or(bl::uniform::config{});
  tokensel::token_grid grid;
  if (nb::isinstance<tokensel::token_grid>(n_or_grid)) {
    grid = nb::cast<tokensel::token_grid>(n_or_grid);
  } else {
    const auto n = nb::cast<index_t>(n_or_grid);
    if (n < 0) fail(errc::invalid_argument, "uniform.n", std::to_string(n), "must be >= 0");
    grid = {n == 0 ? 0 : 1, n};
  }
  const bl::uniform::config cfg = b ? bl::uniform::with_budget(*b, grid.size(), base) : base;
  std::vector<token_index> out(static_cast<std::size_t>(bl::uniform::keep_count(grid.size(), cfg)));
  const auto r = bl::uniform::select(tokensel::seq, grid, cfg, std::span<token_index>(out));
  out.resize(static_cast<std::size_t>(r.count));
  return nb::cast(to_indices(std::move(out)));
}

nb::object pool_apply(const array& features, std::optional<tokensel::token_grid> grid_in, std::optional<bl::pool::config> cfg_in,
                      nb::handle keep, int threads) {
  const auto pol = policy(threads);
#if defined(TOKENSEL_PYTHON_CUDA)
  if (is_cuda_device(features.device_type())) return pool_apply_cuda(features, grid_in, cfg_in.value_or(bl::pool::config{}), budget_of(keep));
#endif
  const dt t = dtype_of(features, "pool.features");
  if (features.ndim() != 2 && features.ndim() != 3) {
    fail(errc::shape_mismatch, "pool.features.ndim", std::to_string(features.ndim()), "must be 2 ([n, d]) or 3 ([batch, n, d])");
  }
  const bool batched = features.ndim() == 3;
  const index_t n = static_cast<index_t>(features.shape(batched ? 1 : 0));
  const tokensel::token_grid grid = grid_in ? *grid_in : tokensel::token_grid::square(n, "pool.grid");
  const auto b = budget_of(keep);
  const bl::pool::config base = cfg_in.value_or(bl::pool::config{});
  const bl::pool::config cfg = b ? bl::pool::with_budget(*b, grid, base) : base;
  const index_t k = bl::pool::keep_count(grid, cfg);
  return dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    if (!batched) {
      const auto fv = view<T, 2>(features, "pool.features");
      const index_t d = fv.extent(1);
      std::vector<float> rows(static_cast<std::size_t>(k * d));
      {
        nb::gil_scoped_release rel;
        (void)bl::pool::apply(pol, fv, grid, cfg, tokensel::matrix_view<float>(rows.data(), {k, d}, "pool.out"));
      }
      return nb::cast(to_floats(std::move(rows), static_cast<std::size_t>(k), static_cast<std::size_t>(d)));
    }
    const auto fv = view<T, 3>(features, "pool.features");
    const index_t batch = fv.extent(0), d = fv.extent(2);
    std::vector<float> rows(static_cast<std::size_t>(batch * k * d));
    {
      nb::gil_scoped_release rel;
      bl::pool::apply(pol, fv, grid, cfg, tokensel::feature_view<float>(rows.data(), {batch, k, d}, "pool.out"));
    }
    return nb::cast(to_floats3(std::move(rows), static_cast<std::size_t>(batch), static_cast<std::size_t>(k), static_cast<std::size_t>(d)));
  });
}

}  // namespace

void bind_baselines(nb::module_& parent) {
  nb::module_ base = parent.def_submodule("baselines", "Baselines: random, uniform (spatially even) and pooling.");

  nb::module_ r = base.def_submodule("random", "Uniformly random tokens (seeded, reproducible).");
  using rc = bl::random::config;
  nb::class_<rc>(r, "config")
      .def("__init__", [](rc* c, std::optional<double> ratio, std::optional<index_t> count, std::uint64_t seed) { new (c) rc{ratio, count, seed}; },
           nb::kw_only(), nb::arg("ratio") = nb::none(), nb::arg("count") = nb::none(), nb::arg("seed") = 0)
      .def_rw("ratio", &rc::ratio, nb::arg("ratio").none())
      .def_rw("count", &rc::count, nb::arg("count").none())
      .def_rw("seed", &rc::seed);
  r.def("keep_count", [](index_t n, const rc& c) { return bl::random::keep_count(n, c); }, nb::arg("n"), nb::arg("config"));
  r.def("with_budget", [](const tokensel::budget& b, index_t n, const rc& c) { return bl::random::with_budget(b, n, c); },
        nb::arg("budget"), nb::arg("n"), nb::arg("base") = rc{});
  r.def("requirements", [](const rc& c, const tokensel::model_shape& s) { return bl::random::requirements(c, s); }, nb::arg("config"), nb::arg("shape"));
  r.def("select", &random_select, nb::arg("n"), nb::arg("config") = nb::none(), nb::kw_only(), nb::arg("keep").none() = nb::none(),
        nb::arg("stream") = 0, "keep_count(n) distinct indices of [0, n), ascending (sample b of a batch uses stream b).");

  nb::module_ u = base.def_submodule("uniform", "Spatially uniform tokens over the grid.");
  using uc = bl::uniform::config;
  nb::class_<uc>(u, "config")
      .def("__init__", [](uc* c, std::optional<double> ratio, std::optional<index_t> count) { new (c) uc{ratio, count}; },
           nb::kw_only(), nb::arg("ratio") = nb::none(), nb::arg("count") = nb::none())
      .def_rw("ratio", &uc::ratio, nb::arg("ratio").none())
      .def_rw("count", &uc::count, nb::arg("count").none());
  u.def("keep_count", [](index_t n, const uc& c) { return bl::uniform::keep_count(n, c); }, nb::arg("n"), nb::arg("config"));
  u.def("with_budget", [](const tokensel::budget& b, index_t n, const uc& c) { return bl::uniform::with_budget(b, n, c); },
        nb::arg("budget"), nb::arg("n"), nb::arg("base") = uc{});
  u.def("requirements", [](const uc& c, const tokensel::model_shape& s) { return bl::uniform::requirements(c, s); }, nb::arg("config"), nb::arg("shape"));
  u.def("select", &uniform_select, nb::arg("n"), nb::arg("config") = nb::none(), nb::kw_only(), nb::arg("keep").none() = nb::none(),
        "n: a token count (one row) or a token_grid. Returns ascending indices.");

  nb::module_ p = base.def_submodule("pool", "w x w average pooling of the patch features.");
  using pc = bl::pool::config;
  nb::class_<pc>(p, "config")
      .def("__init__", [](pc* c, index_t window, bool partial_windows) { new (c) pc{window, partial_windows}; },
           nb::kw_only(), nb::arg("window") = 2, nb::arg("partial_windows") = true)
      .def_rw("window", &pc::window)
      .def_rw("partial_windows", &pc::partial_windows);
  p.def("keep_count", [](const tokensel::token_grid& g, const pc& c) { return bl::pool::keep_count(g, c); }, nb::arg("grid"), nb::arg("config") = pc{});
  p.def("output_grid", [](const tokensel::token_grid& g, const pc& c) { return bl::pool::output_grid(g, c); }, nb::arg("grid"), nb::arg("config") = pc{});
  p.def("with_budget", [](const tokensel::budget& b, const tokensel::token_grid& g, const pc& c) { return bl::pool::with_budget(b, g, c); },
        nb::arg("budget"), nb::arg("grid"), nb::arg("base") = pc{});
  p.def("requirements", [](const pc& c, const tokensel::token_grid& g, const tokensel::model_shape& s) { return bl::pool::requirements(c, g, s); },
        nb::arg("config"), nb::arg("grid"), nb::arg("shape"));
  p.def("apply", &pool_apply, nb::arg("features"), nb::arg("grid") = nb::none(), nb::arg("config") = nb::none(), nb::kw_only(),
        nb::arg("keep").none() = nb::none(), nb::arg("threads") = 0,
        "features [n, d] or [batch, n, d] on grid (square by default) -> float32 pooled rows [k, d] (row-major over the pooled grid).");
}

}  // namespace tsp
