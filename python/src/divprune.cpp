// tokensel Python extension: DivPrune (features only, no attention).
#include "common.hpp"
#include "cuda_dispatch.hpp"

#include <tokensel/methods/divprune.hpp>

namespace tsp {
namespace dp = tokensel::divprune;

namespace {

/// Single sample: features [n, D] -> (ascending indices, result).
std::pair<nb::object, nb::object> one(nb::handle h, const dp::config& base, const std::optional<tokensel::budget>& b,
                                      const tokensel::threaded_policy& pol, const std::string& name) {
  const array f = array_arg(h, name);
#if defined(TOKENSEL_PYTHON_CUDA)
  if (is_cuda_device(f.device_type())) {  // a ragged list's sample: one device call
    check_rank(f, 2, name, "[n, D]");
    return index_and_result(divprune_select_cuda(f, base, b, true, name.substr(std::strlen("divprune.features"))));
  }
#endif
  const dt t = dtype_of(f, name);
  check_rank(f, 2, name, "[n, D]");
  return dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    const auto fv = view<T, 2>(f, name);
    const index_t n = fv.extent(0);
    const dp::config cfg = b ? dp::with_budget(*b, n, base) : base;
    std::vector<token_index> out(static_cast<std::size_t>(dp::keep_count(n, cfg)));
    dp::result r;
    {
      nb::gil_scoped_release rel;
      r = dp::select(pol, tokensel::matrix_view<const T>(fv), cfg, std::span<token_index>(out));
    }
    out.resize(static_cast<std::size_t>(r.count));
    return std::pair<nb::object, nb::object>(nb::cast(to_indices(std::move(out))), nb::cast(r));
  });
}

nb::object select(nb::handle features, std::optional<dp::config> cfg_in, nb::handle keep, int threads, bool return_result) {
  const dp::config base = cfg_in.value_or(dp::config{});
  dp::validate(base);
  const auto b = budget_of(keep);
  const auto pol = policy(threads);
  auto wrap = [&](nb::object idx, nb::object res) { return return_result ? nb::make_tuple(idx, res) : idx; };
#if defined(TOKENSEL_PYTHON_CUDA)
  if (on_cuda(features)) return divprune_select_cuda(nb::cast<array>(features), base, b, return_result);
#endif
  if (is_sequence(features)) {  // ragged: one [n_b, D_b] array per sample, each with its own keep count
    nb::list idx, res;
    std::size_t i = 0;
    for (nb::handle h : features) {
      auto [x, r] = one(h, base, b, pol, "divprune.features[" + std::to_string(i++) + "]");
      idx.append(x);
      res.append(r);
    }
    return wrap(idx, res);
  }
  array arr;
  if (nb::try_cast(features, arr) && arr.ndim() == 3) {
    return dispatch(dtype_of(arr, "divprune.features"), [&](auto tag) {
      using T = decltype(tag);
      const auto v = view<T, 3>(arr, "divprune.features");
      const index_t batch = v.extent(0), n = v.extent(1);
      const dp::config cfg = b ? dp::with_budget(*b, n, base) : base;
      const index_t k = dp::keep_count(n, cfg);
      std::vector<token_index> out(static_cast<std::size_t>(batch * k)), counts(static_cast<std::size_t>(batch));
      std::vector<dp::result> res(static_cast<std::size_t>(batch));
      {
        nb::gil_scoped_release rel;
        dp::select(pol, tokensel::feature_view<const T>(v), cfg,
                   tokensel::selection_batch{tokensel::tensor_view<token_index, 2>(out.data(), {batch, k}), counts}, std::span<dp::result>(res));
      }
      return wrap(nb::cast(to_indices(std::move(out), static_cast<std::size_t>(batch), static_cast<std::size_t>(k))), nb::cast(res));
    });
  }
  auto [x, r] = one(features, base, b, pol, "divprune.features");
  return wrap(x, r);
}

}  // namespace

void bind_divprune(nb::module_& parent) {
  nb::module_ m = parent.def_submodule("divprune", "DivPrune: greedy max-min cosine diversity over the token features.");
  nb::class_<dp::config>(m, "config", "Budget: ratio (keep round(n ratio), half to even, at least 1) or count; neither: ratio 0.098.")
      .def("__init__",
           [](dp::config* c, std::optional<double> ratio, std::optional<index_t> count) { new (c) dp::config{ratio, count}; },
           nb::kw_only(), nb::arg("ratio").none() = nb::none(), nb::arg("count").none() = nb::none())
      .def_rw("ratio", &dp::config::ratio)
      .def_rw("count", &dp::config::count);
  m.attr("default_ratio") = dp::default_ratio;
  nb::class_<dp::result>(m, "result")
      .def_ro("count", &dp::result::count)
      .def_ro("min_distance", &dp::result::min_distance);
  m.def("validate", [](const dp::config& c) { dp::validate(c); }, nb::arg("config"));
  m.def("keep_count", [](index_t n, const dp::config& c) { return dp::keep_count(n, c); }, nb::arg("n"), nb::arg("config") = dp::config{},
        "Tokens kept of n.");
  m.def("with_budget", [](const tokensel::budget& b, index_t n, const dp::config& base) { return dp::with_budget(b, n, base); },
        nb::arg("budget"), nb::arg("n"), nb::arg("base") = dp::config{}, "A fraction becomes the ratio, a count the count.");
  m.def("requirements", [](const dp::config& c, const tokensel::model_shape& s) { return dp::requirements(c, s); },
        nb::arg("config"), nb::arg("shape"));
  m.def("select", &select, nb::arg("features").none(), nb::arg("config") = nb::none(), nb::kw_only(), nb::arg("keep").none() = nb::none(),
        nb::arg("threads") = 0, nb::arg("return_result") = false,
        "features [n, D] (e.g. the projected image features), a [batch, n, D] batch or a list of [n_b, D_b] arrays. "
        "Returns the kept indices ascending (int32); with return_result also the result (count, min_distance).");
}

}  // namespace tsp
