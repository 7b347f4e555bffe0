// tokensel Python extension: VisPruner (CLS attention of the feature layer + patch features).
#include "common.hpp"
#include "cuda_dispatch.hpp"

#include <tokensel/methods/vispruner.hpp>

namespace tsp {
namespace vp = tokensel::vispruner;

namespace {

std::pair<nb::object, nb::object> one(nb::handle attention, nb::handle features, const vp::config& base, const std::optional<tokensel::budget>& b,
                                      const tokensel::threaded_policy& pol, const std::string& where) {
#if defined(TOKENSEL_PYTHON_CUDA)
  if (on_cuda(attention)) {  // a ragged list's sample: one device call
    const array arr = nb::cast<array>(attention);
    check_rank(arr, 3, "vispruner.attention" + where, "[heads, N, N]");
    return index_and_result(vispruner_select_cuda(arr, array_arg(features, "vispruner.features" + where), base, b, true, where));
  }
  if (const py_qk* q = cuda_qk(attention)) {  // Q/K of the feature layer on the device
    return index_and_result(vispruner_select_cuda_qk(*q, array_arg(features, "vispruner.features" + where), base, b, true, where));
  }
#endif
  const attention_arg a = attention_of(attention, "vispruner.attention" + where);
  const array f = array_arg(features, "vispruner.features" + where);
  check_same(a.type, dtype_of(f, "vispruner.features" + where), "vispruner.features" + where, "the attention");
  check_rank(f, 2, "vispruner.features" + where, "[N - 1, D]");
  return with_source(a, "vispruner.attention" + where, [&](const auto& src) {
    using T = typename std::remove_cvref_t<decltype(src)>::element_type;
    using S = std::remove_cvref_t<T>;
    const index_t big_n = tokensel::key_tokens(src), n = big_n > 0 ? big_n - 1 : 0;
    const vp::config cfg = b ? vp::with_budget(*b, n, base) : base;
    const auto fv = view<S, 2>(f, "vispruner.features" + where);
    std::vector<token_index> out(static_cast<std::size_t>(vp::keep_count(n, cfg)));
    vp::result r;
    {
      nb::gil_scoped_release rel;
      r = vp::select(pol, src, tokensel::matrix_view<const S>(fv), cfg, std::span<token_index>(out));
    }
    out.resize(static_cast<std::size_t>(r.count));
    return std::pair<nb::object, nb::object>(nb::cast(to_indices(std::move(out))), nb::cast(r));
  });
}

nb::object select(nb::handle attention, nb::handle features, std::optional<vp::config> cfg_in, nb::handle keep, int threads, bool return_result) {
  const vp::config base = cfg_in.value_or(vp::config{});
  vp::validate(base);
  const auto b = budget_of(keep);
  const auto pol = policy(threads);
  auto wrap = [&](nb::object idx, nb::object res) { return return_result ? nb::make_tuple(idx, res) : idx; };
#if defined(TOKENSEL_PYTHON_CUDA)
  if (on_cuda(attention)) {
    return vispruner_select_cuda(nb::cast<array>(attention), array_arg(features, "vispruner.features"), base, b, return_result);
  }
#endif
  if (is_sequence(attention)) {  // ragged: one attention (array or qk_source) and one feature array per image
    const auto n = nb::len(attention);
    if (!is_sequence(features) || nb::len(features) != n) fail(errc::shape_mismatch, "vispruner.features", "?", "must be a list as long as the attention list");
    nb::list idx, res;
    for (std::size_t i = 0; i < n; ++i) {
      auto [x, r] = one(attention[i], features[i], base, b, pol, "[" + std::to_string(i) + "]");
      idx.append(x);
      res.append(r);
    }
    return wrap(idx, res);
  }
  array arr;
  if (nb::try_cast(attention, arr) && arr.ndim() == 4) {
    const dt t = dtype_of(arr, "vispruner.attention");
    const array f = array_arg(features, "vispruner.features");
    check_same(t, dtype_of(f, "vispruner.features"), "vispruner.features", "the attention");
    check_rank(f, 3, "vispruner.features", "[batch, N - 1, D]");
    return dispatch(t, [&](auto tag) {
      using T = decltype(tag);
      const auto av = view<T, 4>(arr, "vispruner.attention");
      const auto fv = view<T, 3>(f, "vispruner.features");
      const index_t batch = av.extent(0), n = av.extent(3) > 0 ? av.extent(3) - 1 : 0;
      const vp::config cfg = b ? vp::with_budget(*b, n, base) : base;
      const index_t k = vp::keep_count(n, cfg);
      std::vector<token_index> out(static_cast<std::size_t>(batch * k)), counts(static_cast<std::size_t>(batch));
      std::vector<vp::result> res(static_cast<std::size_t>(batch));
      {
        nb::gil_scoped_release rel;
        vp::select(pol, av, tokensel::feature_view<const T>(fv), cfg,
                   tokensel::selection_batch{tokensel::tensor_view<token_index, 2>(out.data(), {batch, k}), counts}, std::span<vp::result>(res));
      }
      return wrap(nb::cast(to_indices(std::move(out), static_cast<std::size_t>(batch), static_cast<std::size_t>(k))), nb::cast(res));
    });
  }
  auto [x, r] = one(attention, features, base, b, pol, "");
  return wrap(x, r);
}

}  // namespace

void bind_vispruner(nb::module_& parent) {
  nb::module_ m = parent.def_submodule("vispruner", "VisPruner: important patches by CLS attention, the rest by duplicate removal.");
  nb::class_<vp::config>(m, "config", "Budget: ratio (max(1, floor(n ratio))) or count; neither: 64 patches.")
      .def("__init__",
           [](vp::config* c, std::optional<double> ratio, std::optional<index_t> count, double important_ratio, index_t rounds_drop) {
             new (c) vp::config{ratio, count, important_ratio, rounds_drop};
           },
           nb::kw_only(), nb::arg("ratio").none() = nb::none(), nb::arg("count").none() = nb::none(), nb::arg("important_ratio") = 0.5,
           nb::arg("rounds_drop") = 8)
      .def_rw("ratio", &vp::config::ratio)
      .def_rw("count", &vp::config::count)
      .def_rw("important_ratio", &vp::config::important_ratio)
      .def_rw("rounds_drop", &vp::config::rounds_drop);
  m.attr("default_count") = vp::default_count;
  nb::class_<vp::result>(m, "result")
      .def_ro("count", &vp::result::count)
      .def_ro("important", &vp::result::important)
      .def_ro("diverse", &vp::result::diverse)
      .def_ro("rounds", &vp::result::rounds);
  m.def("validate", [](const vp::config& c) { vp::validate(c); }, nb::arg("config"));
  m.def("keep_count", [](index_t n, const vp::config& c) { return vp::keep_count(n, c); }, nb::arg("n"), nb::arg("config") = vp::config{},
        "Patches kept of n (CLS excluded).");
  m.def("important_count", [](index_t kept, const vp::config& c) { return vp::important_count(kept, c); }, nb::arg("kept"),
        nb::arg("config") = vp::config{}, "Of kept patches, those chosen by CLS attention: int(kept * important_ratio).");
  m.def("with_budget", [](const tokensel::budget& b, index_t n, const vp::config& base) { return vp::with_budget(b, n, base); },
        nb::arg("budget"), nb::arg("n"), nb::arg("base") = vp::config{}, "A fraction becomes the ratio, a count the count.");
  m.def("requirements", [](const vp::config& c, const tokensel::model_shape& s) { return vp::requirements(c, s); },
        nb::arg("config"), nb::arg("shape"));
  m.def("select", &select, nb::arg("attention").none(), nb::arg("features").none(), nb::arg("config") = nb::none(), nb::kw_only(),
        nb::arg("keep").none() = nb::none(), nb::arg("threads") = 0, nb::arg("return_result") = false,
        "attention of the feature layer: [heads, N, N] or [heads, 1, N] (CLS = token 0; only its query row is read) or a "
        "qk_source; features [N - 1, D] the patch features (CLS excluded, same dtype). Batches: [batch, ...] arrays or lists. "
        "Returns ascending patch indices (CLS excluded, int32).");
}

}  // namespace tsp
