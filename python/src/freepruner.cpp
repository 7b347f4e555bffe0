// tokensel Python extension: freePruner.
#include "common.hpp"
#include "cuda_dispatch.hpp"

#include <tokensel/methods/freepruner.hpp>

namespace tsp {
namespace fp = tokensel::freepruner;

namespace {

index_t patches(index_t tokens, const fp::config& cfg) { return cfg.skip_cls ? (tokens > 0 ? tokens - 1 : 0) : tokens; }

nb::object finish(std::vector<token_index>&& out, const fp::result& r, bool return_result) {
  out.resize(static_cast<std::size_t>(r.count));
  nb::object idx = nb::cast(to_indices(std::move(out)));
  return return_result ? nb::object(nb::make_tuple(idx, nb::cast(r))) : idx;
}

nb::object select(nb::handle layers, std::optional<fp::config> cfg_in, index_t offset, nb::handle keep, int threads, bool return_result) {
  const fp::config base = cfg_in.value_or(fp::config{});
  const auto b = budget_of(keep);
  const auto pol = policy(threads);
  auto cfg_for = [&](index_t tokens) { return b ? fp::with_budget(*b, patches(tokens, base), base) : base; };
#if defined(TOKENSEL_PYTHON_CUDA)
  if (on_cuda(layers) || (is_sequence(layers) && nb::len(layers) > 0 && on_cuda(layers[0]))) {
    return freepruner_select_cuda(layers, base, b, offset, return_result);
  }
#endif

  // One [L, heads, N, N] array or [L, batch, heads, N, N] array.
  array whole;
  if (!is_sequence(layers) && nb::try_cast(layers, whole)) {
    const dt t = dtype_of(whole, "freepruner.layers");
    if (whole.ndim() != 4 && whole.ndim() != 5) {
      fail(errc::shape_mismatch, "freepruner.layers.ndim", std::to_string(whole.ndim()),
           "must be 4 ([layers, heads, N, N]) or 5 ([layers, batch, heads, N, N]), or a list of per-layer arrays");
    }
    return dispatch(t, [&](auto tag) -> nb::object {
      using T = decltype(tag);
      if (whole.ndim() == 4) {
        const auto v = view<T, 4>(whole, "freepruner.layers");
        std::vector<tokensel::head_attention_view<T>> views;
        for (index_t l = 0; l < v.extent(0); ++l) views.push_back(v[l]);
        const fp::config cfg = cfg_for(v.extent(2));
        std::vector<token_index> out(static_cast<std::size_t>(fp::max_count(patches(v.extent(2), cfg), cfg)));
        fp::result r;
        {
          nb::gil_scoped_release rel;
          r = fp::select(pol, fp::layer_stack<T>{views, offset}, cfg, std::span<token_index>(out));
        }
        return finish(std::move(out), r, return_result);
      }
      const auto v = tokensel::tensor_view<const T, 5>(static_cast<const T*>(whole.data()),
                                                       {static_cast<index_t>(whole.shape(0)), static_cast<index_t>(whole.shape(1)),
                                                        static_cast<index_t>(whole.shape(2)), static_cast<index_t>(whole.shape(3)),
                                                        static_cast<index_t>(whole.shape(4))},
                                                       {static_cast<index_t>(whole.stride(0)), static_cast<index_t>(whole.stride(1)),
                                                        static_cast<index_t>(whole.stride(2)), static_cast<index_t>(whole.stride(3)),
                                                        static_cast<index_t>(whole.stride(4))},
                                                       "freepruner.layers");
      std::vector<tokensel::attention_view<T>> views;
      for (index_t l = 0; l < v.extent(0); ++l) views.push_back(v[l]);
      const index_t batch = v.extent(1), tokens = v.extent(3);
      const fp::config cfg = cfg_for(tokens);
      const index_t cap = fp::max_count(patches(tokens, cfg), cfg);
      std::vector<token_index> out(static_cast<std::size_t>(batch * cap)), counts(static_cast<std::size_t>(batch));
      std::vector<fp::result> res(static_cast<std::size_t>(batch));
      {
        nb::gil_scoped_release rel;
        fp::select(pol, fp::batch_layer_stack<T>{views, offset}, cfg,
                   tokensel::selection_batch{tokensel::tensor_view<token_index, 2>(out.data(), {batch, cap}), counts}, std::span<fp::result>(res));
      }
      nb::list idx, rs;
      for (index_t i = 0; i < batch; ++i) {
        std::vector<token_index> row(out.begin() + i * cap, out.begin() + i * cap + counts[static_cast<std::size_t>(i)]);
        idx.append(nb::cast(to_indices(std::move(row))));
        rs.append(nb::cast(res[static_cast<std::size_t>(i)]));
      }
      return return_result ? nb::object(nb::make_tuple(idx, rs)) : nb::object(idx);
    });
  }

  // A list: [heads, N, N] arrays or qk_sources (one sample), or [batch, heads, N, N] arrays (a batch).
  const std::size_t count = nb::len(layers);
  if (count == 0) fail(errc::invalid_argument, "freepruner.layers", "[]", "needs the layers the config reads");
  std::vector<attention_arg> args;
  for (std::size_t i = 0; i < count; ++i) args.push_back(attention_of(layers[i], "freepruner.layers[" + std::to_string(i) + "]"));
  const dt t = args[0].type;
  for (std::size_t i = 1; i < count; ++i) check_same(t, args[i].type, "freepruner.layers[" + std::to_string(i) + "]", "freepruner.layers[0]");
  const bool qk = args[0].qk != nullptr;
  for (std::size_t i = 1; i < count; ++i) {
    if ((args[i].qk != nullptr) != qk) fail(errc::invalid_argument, "freepruner.layers[" + std::to_string(i) + "]", "?", "every layer must be an array or every layer a qk_source");
  }
  return dispatch(t, [&](auto tag) -> nb::object {
    using T = decltype(tag);
    if (qk) {
      std::vector<tokensel::qk_source<T>> src;
      for (const auto& a : args) src.push_back(a.qk->template source<T>());
      const fp::config cfg = cfg_for(src[0].query_count());
      std::vector<token_index> out(static_cast<std::size_t>(fp::max_count(patches(src[0].query_count(), cfg), cfg)));
      fp::result r;
      {
        nb::gil_scoped_release rel;
        r = fp::select(pol, fp::layer_stack<tokensel::qk_source<T>>{src, offset}, cfg, std::span<token_index>(out));
      }
      return finish(std::move(out), r, return_result);
    }
    const std::size_t rank = args[0].map->ndim();
    if (rank == 3) {
      std::vector<tokensel::head_attention_view<T>> views;
      for (std::size_t i = 0; i < count; ++i) {
        const std::string name = "freepruner.layers[" + std::to_string(i) + "]";
        check_rank(*args[i].map, 3, name, "[heads, N, N]");
        views.push_back(view<T, 3>(*args[i].map, name));
      }
      const fp::config cfg = cfg_for(views[0].extent(1));
      std::vector<token_index> out(static_cast<std::size_t>(fp::max_count(patches(views[0].extent(1), cfg), cfg)));
      fp::result r;
      {
        nb::gil_scoped_release rel;
        r = fp::select(pol, fp::layer_stack<T>{views, offset}, cfg, std::span<token_index>(out));
      }
      return finish(std::move(out), r, return_result);
    }
    std::vector<tokensel::attention_view<T>> views;
    for (std::size_t i = 0; i < count; ++i) {
      const std::string name = "freepruner.layers[" + std::to_string(i) + "]";
      check_rank(*args[i].map, 4, name, "[batch, heads, N, N] (every layer of a batch)");
      views.push_back(view<T, 4>(*args[i].map, name));
    }
    const index_t batch = views[0].extent(0), tokens = views[0].extent(2);
    const fp::config cfg = cfg_for(tokens);
    const index_t cap = fp::max_count(patches(tokens, cfg), cfg);
    std::vector<token_index> out(static_cast<std::size_t>(batch * cap)), counts(static_cast<std::size_t>(batch));
    std::vector<fp::result> res(static_cast<std::size_t>(batch));
    {
      nb::gil_scoped_release rel;
      fp::select(pol, fp::batch_layer_stack<T>{views, offset}, cfg,
                 tokensel::selection_batch{tokensel::tensor_view<token_index, 2>(out.data(), {batch, cap}), counts}, std::span<fp::result>(res));
    }
    nb::list idx, rs;
    for (index_t i = 0; i < batch; ++i) {
      std::vector<token_index> row(out.begin() + i * cap, out.begin() + i * cap + counts[static_cast<std::size_t>(i)]);
      idx.append(nb::cast(to_indices(std::move(row))));
      rs.append(nb::cast(res[static_cast<std::size_t>(i)]));
    }
    return return_result ? nb::object(nb::make_tuple(idx, rs)) : nb::object(idx);
  });
}

}  // namespace

void bind_freepruner(nb::module_& parent) {
  nb::module_ m = parent.def_submodule("freepruner", "freePruner: pivotal tokens over a layer range plus IQR complementary tokens.");
  nb::enum_<fp::mode>(m, "mode").value("adaptive", fp::mode::adaptive).value("fixed", fp::mode::fixed);
  nb::class_<fp::config>(m, "config")
      .def("__init__",
           [](fp::config* c, tokensel::head_reduction heads, index_t first_layer, index_t last_layer, index_t k_pivotal,
              index_t complementary_layer, double iqr_multiplier, fp::mode mode, index_t budget, bool skip_cls) {
             new (c) fp::config{heads, first_layer, last_layer, k_pivotal, complementary_layer, iqr_multiplier, mode, budget, skip_cls};
           },
           nb::kw_only(), nb::arg("heads") = tokensel::head_reduction::mean, nb::arg("first_layer") = 6, nb::arg("last_layer") = 22,
           nb::arg("k_pivotal") = 8, nb::arg("complementary_layer") = 22, nb::arg("iqr_multiplier") = 1.5,
           nb::arg("mode") = fp::mode::adaptive, nb::arg("budget") = 0, nb::arg("skip_cls") = true)
      .def_rw("heads", &fp::config::heads)
      .def_rw("first_layer", &fp::config::first_layer)
      .def_rw("last_layer", &fp::config::last_layer)
      .def_rw("k_pivotal", &fp::config::k_pivotal)
      .def_rw("complementary_layer", &fp::config::complementary_layer)
      .def_rw("iqr_multiplier", &fp::config::iqr_multiplier)
      .def_rw("mode", &fp::config::mode)
      .def_rw("budget", &fp::config::budget)
      .def_rw("skip_cls", &fp::config::skip_cls);
  nb::class_<fp::result>(m, "result")
      .def_ro("count", &fp::result::count)
      .def_ro("pivotal", &fp::result::pivotal)
      .def_ro("complementary", &fp::result::complementary)
      .def_ro("candidates", &fp::result::candidates)
      .def_ro("dropped", &fp::result::dropped)
      .def_ro("filled", &fp::result::filled);
  m.def("validate", [](const fp::config& c) { fp::validate(c); }, nb::arg("config"));
  m.def("keep_count", [](index_t n, const fp::config& c) { return fp::keep_count(n, c); }, nb::arg("n"), nb::arg("config"),
        "Fixed mode: the budget. Adaptive mode raises (use max_count).");
  m.def("max_count", [](index_t n, const fp::config& c) { return fp::max_count(n, c); }, nb::arg("n"), nb::arg("config") = fp::config{});
  m.def("with_budget", [](const tokensel::budget& b, index_t n, const fp::config& base) { return fp::with_budget(b, n, base); },
        nb::arg("budget"), nb::arg("n"), nb::arg("base") = fp::config{});
  m.def("requirements", [](const fp::config& c, const tokensel::model_shape& s) { return fp::requirements(c, s); },
        nb::arg("config"), nb::arg("shape"));
  m.def("select", &select, nb::arg("layers"), nb::arg("config") = nb::none(), nb::kw_only(), nb::arg("layer_offset") = 0,
        nb::arg("keep").none() = nb::none(), nb::arg("threads") = 0, nb::arg("return_result") = false,
        "layers: one sample's stack, [layers, heads, N, N] or a list of [heads, N, N] arrays or qk_sources (entry i is model "
        "layer layer_offset + i); or a batch, [layers, batch, heads, N, N] or a list of [batch, heads, N, N] arrays. Returns "
        "ascending patch indices (int32), a list of them for a batch.");
}

}  // namespace tsp
