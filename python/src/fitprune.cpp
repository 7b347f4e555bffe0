// tokensel Python extension: FitPrune (per-layer pruning, recipes and the recipe search).
#include "common.hpp"
#include "cuda_dispatch.hpp"

#include <tokensel/io/fitprune_json.hpp>
#include <tokensel/methods/fitprune.hpp>

namespace tsp {
namespace ft = tokensel::fitprune;

namespace {

nb::object prune_layer(nb::handle attention, std::pair<index_t, index_t> visual_in, index_t drop, std::optional<ft::config> cfg_in, int threads,
                       bool return_result) {
  const tokensel::token_range visual{visual_in.first, visual_in.second};
  const ft::config cfg = cfg_in.value_or(ft::config{});
  const auto pol = policy(threads);
#if defined(TOKENSEL_PYTHON_CUDA)
  if (on_cuda(attention)) return fitprune_prune_layer_cuda(nb::cast<array>(attention), visual, drop, cfg, return_result);
#endif
  const attention_arg a = attention_of(attention, "fitprune.attention");
  return with_source(a, "fitprune.attention", [&](const auto& src) {
    const index_t keep = visual.count - drop;
    std::vector<token_index> out(static_cast<std::size_t>(keep > 0 ? keep : 0));
    ft::layer_result r;
    {
      nb::gil_scoped_release rel;
      r = ft::prune_layer(pol, src, visual, drop, cfg, std::span<token_index>(out));
    }
    out.resize(static_cast<std::size_t>(r.count));
    nb::object idx = nb::cast(to_indices(std::move(out)));
    return return_result ? nb::object(nb::make_tuple(idx, nb::cast(r))) : idx;
  });
}

void calibrator_add_layer(ft::calibrator& c, index_t sample, index_t layer, nb::handle attention, std::pair<index_t, index_t> visual_in,
                          tokensel::head_reduction heads, int threads) {
  const tokensel::token_range visual{visual_in.first, visual_in.second};
  const auto pol = policy(threads);
  const attention_arg a = attention_of(attention, "fitprune.attention");
  with_source(a, "fitprune.attention", [&](const auto& src) {
    nb::gil_scoped_release rel;
    c.add_layer(pol, sample, layer, src, visual, heads);
    return 0;
  });
}

}  // namespace

void bind_fitprune(nb::module_& parent) {
  nb::module_ m = parent.def_submodule("fitprune", "FitPrune: per-layer drops inside the LLM from a recipe fitted offline.");
  using fm = ft::flops_model;
  nb::class_<fm>(m, "flops_model", "LLM geometry for the FLOPs estimate (LLaVA-1.5-7B defaults).")
      .def("__init__", [](fm* f, index_t hidden, index_t ffn, index_t layers, index_t visual_tokens) { new (f) fm{hidden, ffn, layers, visual_tokens}; },
           nb::kw_only(), nb::arg("hidden") = 4096, nb::arg("ffn") = 11008, nb::arg("layers") = 32, nb::arg("visual_tokens") = 576)
      .def_rw("hidden", &fm::hidden)
      .def_rw("ffn", &fm::ffn)
      .def_rw("layers", &fm::layers)
      .def_rw("visual_tokens", &fm::visual_tokens)
      .def("original", &fm::original)
      .def("cost", [](const fm& f, std::vector<index_t> drops, index_t n) { return f.cost(drops, n); }, nb::arg("drops"), nb::arg("n"));
  nb::class_<ft::recipe>(m, "recipe", "Per-layer drop counts fitted for geometry.visual_tokens tokens.")
      .def("__init__",
           [](ft::recipe* r, std::vector<index_t> drops, const fm& geometry, double reduction, std::optional<double> alpha, std::string model,
              std::string source) { new (r) ft::recipe{std::move(drops), geometry, reduction, alpha, std::move(model), std::move(source)}; },
           nb::kw_only(), nb::arg("drops"), nb::arg("geometry") = fm{}, nb::arg("reduction") = 0.0, nb::arg("alpha") = nb::none(),
           nb::arg("model") = "", nb::arg("source") = "")
      .def_rw("drops", &ft::recipe::drops)
      .def_rw("geometry", &ft::recipe::geometry)
      .def_rw("reduction", &ft::recipe::reduction)
      .def_rw("alpha", &ft::recipe::alpha, nb::arg("alpha").none())
      .def_rw("model", &ft::recipe::model)
      .def_rw("source", &ft::recipe::source)
      .def("to_json", [](const ft::recipe& r, int indent) { return tokensel::fitprune::recipe_to_json(r, indent); }, nb::arg("indent") = 2)
      .def_static("from_json", [](const std::string& text) { return tokensel::fitprune::recipe_from_json(text); }, nb::arg("text"));
  nb::class_<ft::config>(m, "config")
      .def("__init__", [](ft::config* c, tokensel::head_reduction heads) { new (c) ft::config{heads}; }, nb::kw_only(),
           nb::arg("heads") = tokensel::head_reduction::max)
      .def_rw("heads", &ft::config::heads);
  nb::class_<ft::layer_result>(m, "layer_result")
      .def_ro("count", &ft::layer_result::count)
      .def_ro("dropped", &ft::layer_result::dropped)
      .def_ro("cross_mass", &ft::layer_result::cross_mass)
      .def_ro("self_mass", &ft::layer_result::self_mass);
  nb::enum_<ft::recipe_pick>(m, "recipe_pick").value("upper", ft::recipe_pick::upper).value("last_iterate", ft::recipe_pick::last_iterate);
  nb::class_<ft::fit_pass>(m, "fit_pass")
      .def_ro("drops", &ft::fit_pass::drops)
      .def_ro("reached", &ft::fit_pass::reached)
      .def_ro("stop_layer", &ft::fit_pass::stop_layer)
      .def_ro("flops_ratio", &ft::fit_pass::flops_ratio);
  nb::class_<ft::fit_result>(m, "fit_result")
      .def_ro("recipe", &ft::fit_result::recipe)
      .def_ro("alpha", &ft::fit_result::alpha)
      .def_ro("lower", &ft::fit_result::lower)
      .def_ro("upper", &ft::fit_result::upper)
      .def_ro("iterations", &ft::fit_result::iterations)
      .def_ro("reached", &ft::fit_result::reached)
      .def_ro("stop_layer", &ft::fit_result::stop_layer)
      .def_ro("flops_ratio", &ft::fit_result::flops_ratio);
  nb::class_<ft::calibrator>(m, "calibrator",
                             "The FitPrune recipe search: stores the unpruned model's statistics of a calibration set "
                             "(add_sample, add_layer for every layer) and fits recipes by bisection on alpha (fit).")
      .def(nb::init<const fm&>(), nb::arg("geometry") = fm{})
      .def_prop_ro("geometry", &ft::calibrator::geometry)
      .def_prop_ro("samples", &ft::calibrator::samples)
      .def("add_sample", &ft::calibrator::add_sample)
      .def("add_layer", &calibrator_add_layer, nb::arg("sample"), nb::arg("layer"), nb::arg("attention"), nb::arg("visual"),
           nb::arg("heads") = tokensel::head_reduction::max, nb::arg("threads") = 0,
           "That layer's prefill attention [heads, L, L] (or a qk_source) of the unpruned model; visual = (start, count).")
      .def("complete", &ft::calibrator::complete)
      .def("fit",
           [](const ft::calibrator& c, double reduction, double tolerance, ft::recipe_pick pick, std::string model) {
             ft::fit_options o;
             o.tolerance = tolerance;
             o.pick = pick;
             o.model = std::move(model);
             nb::gil_scoped_release rel;
             return c.fit(reduction, o);
           },
           nb::arg("reduction"), nb::kw_only(), nb::arg("tolerance") = 0.01, nb::arg("pick") = ft::recipe_pick::upper, nb::arg("model") = "")
      .def("fit_once", [](const ft::calibrator& c, double alpha, double reduction) { return c.fit_once(alpha, reduction); },
           nb::arg("alpha"), nb::arg("reduction"));
  m.def("validate", [](const ft::recipe& r) { ft::validate(r); }, nb::arg("recipe"));
  m.def("keep_count", [](index_t n, const ft::recipe& r) { return ft::keep_count(n, r); }, nb::arg("n"), nb::arg("recipe"),
        "Visual tokens that reach the end of the LLM.");
  m.def("drops_at", [](const ft::recipe& r, index_t layer, index_t n) { return ft::drops_at(r, layer, n); }, nb::arg("recipe"), nb::arg("layer"), nb::arg("n"),
        "floor(k_l n / n_fit): the drop count of layer for n visual tokens.");
  m.def("remaining_after", [](index_t n, const ft::recipe& r, index_t done) { return ft::remaining_after(n, r, done); }, nb::arg("n"),
        nb::arg("recipe"), nb::arg("layers_done"));
  m.def("flops_ratio", [](const ft::recipe& r, index_t n) { return ft::flops_ratio(r, n); }, nb::arg("recipe"), nb::arg("n"));
  m.def("requirements", [](const ft::recipe& r, const tokensel::model_shape& s) { return ft::requirements(r, s); }, nb::arg("recipe"), nb::arg("shape"));
  m.def("prune_layer", &prune_layer, nb::arg("attention"), nb::arg("visual"), nb::arg("drop"), nb::arg("config") = nb::none(), nb::kw_only(),
        nb::arg("threads") = 0, nb::arg("return_result") = false,
        "One layer: its prefill attention [heads, L, L] over the current sequence (or a causal qk_source), visual = (start, count) "
        "of the present visual tokens, drop = the layer's count. Returns the kept indices into the visual set, ascending.");
}

}  // namespace tsp
