// tokensel Python extension: FastV.
#include "common.hpp"
#include "cuda_dispatch.hpp"

#include <tokensel/methods/fastv.hpp>

namespace tsp {
namespace fv = tokensel::fastv;

namespace {

tokensel::token_range span_of(std::pair<index_t, index_t> visual) { return {visual.first, visual.second}; }

nb::object select(nb::handle attention, std::pair<index_t, index_t> visual_in, std::optional<fv::config> cfg_in, nb::handle keep,
                  int threads, bool return_result) {
  const tokensel::token_range visual = span_of(visual_in);
  const fv::config base = cfg_in.value_or(fv::config{});
  const auto b = budget_of(keep);
  const auto pol = policy(threads);
  const fv::config cfg = b ? fv::with_budget(*b, visual.count, base) : base;
  auto wrap = [&](nb::object idx, nb::object res) { return return_result ? nb::make_tuple(idx, res) : idx; };
#if defined(TOKENSEL_PYTHON_CUDA)
  if (on_cuda(attention)) return fastv_select_cuda(nb::cast<array>(attention), visual, cfg, return_result);
#endif
  auto one = [&](nb::handle h, const std::string& name) {
#if defined(TOKENSEL_PYTHON_CUDA)
    if (on_cuda(h)) {  // a ragged list's sample: one device call
      const array arr = nb::cast<array>(h);
      check_rank(arr, 3, name, "[heads, q, L]");
      return index_and_result(fastv_select_cuda(arr, visual, cfg, true, name.substr(std::strlen("fastv.attention"))));
    }
    if (const py_qk* q = cuda_qk(h)) return index_and_result(fastv_select_cuda_qk(*q, visual, cfg, true));  // Q/K on the device
#endif
    const attention_arg a = attention_of(h, name);
    return with_source(a, name, [&](const auto& src) {
      std::vector<token_index> out(static_cast<std::size_t>(fv::keep_count(visual.count, cfg)));
      fv::result r;
      {
        nb::gil_scoped_release rel;
        r = fv::select(pol, src, visual, cfg, std::span<token_index>(out));
      }
      out.resize(static_cast<std::size_t>(r.count));
      return std::pair<nb::object, nb::object>(nb::cast(to_indices(std::move(out))), nb::cast(r));
    });
  };
  if (is_sequence(attention)) {
    nb::list idx, res;
    std::size_t i = 0;
    for (nb::handle h : attention) {
      auto [x, r] = one(h, "fastv.attention[" + std::to_string(i++) + "]");
      idx.append(x);
      res.append(r);
    }
    return wrap(idx, res);
  }
  array arr;
  if (nb::try_cast(attention, arr) && arr.ndim() == 4) {
    return dispatch(dtype_of(arr, "fastv.attention"), [&](auto tag) {
      using T = decltype(tag);
      const auto v = view<T, 4>(arr, "fastv.attention");
      const index_t batch = v.extent(0), k = fv::keep_count(visual.count, cfg);
      std::vector<token_index> out(static_cast<std::size_t>(batch * k)), counts(static_cast<std::size_t>(batch));
      std::vector<fv::result> res(static_cast<std::size_t>(batch));
      {
        nb::gil_scoped_release rel;
        fv::select(pol, v, visual, cfg, tokensel::selection_batch{tokensel::tensor_view<token_index, 2>(out.data(), {batch, k}), counts},
                   std::span<fv::result>(res));
      }
      return wrap(nb::cast(to_indices(std::move(out), static_cast<std::size_t>(batch), static_cast<std::size_t>(k))), nb::cast(res));
    });
  }
  auto [x, r] = one(attention, "fastv.attention");
  return wrap(x, r);
}

nb::object select_scores(const array& scores, std::optional<fv::config> cfg_in, nb::handle keep) {
  if (is_cuda_device(scores.device_type()) && built_with_cuda()) {
    fail(errc::unsupported, "fastv.scores", "a CUDA tensor", "fastv.select_scores runs on the CPU only (n scores: pass them with .cpu())");
  }
  check_rank(scores, 1, "fastv.scores", "[n]");
  const fv::config base = cfg_in.value_or(fv::config{});
  const auto b = budget_of(keep);
  const index_t n = static_cast<index_t>(scores.shape(0));
  const fv::config cfg = b ? fv::with_budget(*b, n, base) : base;
  return dispatch(dtype_of(scores, "fastv.scores"), [&](auto tag) {
    using T = decltype(tag);
    std::vector<token_index> out(static_cast<std::size_t>(fv::keep_count(n, cfg)));
    const auto r = fv::select_scores<T>(view<T, 1>(scores, "fastv.scores"), cfg, std::span<token_index>(out));
    out.resize(static_cast<std::size_t>(r.count));
    return nb::cast(to_indices(std::move(out)));
  });
}

}  // namespace

void bind_fastv(nb::module_& parent) {
  nb::module_ m = parent.def_submodule("fastv", "FastV: drop visual tokens inside the LLM by the last query row of layer K-1.");
  nb::class_<fv::config>(m, "config")
      .def("__init__",
           [](fv::config* c, double ratio, index_t layer, tokensel::head_reduction heads) { new (c) fv::config{ratio, layer, heads}; },
           nb::kw_only(), nb::arg("ratio") = 0.5, nb::arg("layer") = 2, nb::arg("heads") = tokensel::head_reduction::mean)
      .def_rw("ratio", &fv::config::ratio)
      .def_rw("layer", &fv::config::layer)
      .def_rw("heads", &fv::config::heads);
  nb::class_<fv::result>(m, "result")
      .def_ro("count", &fv::result::count)
      .def_ro("visual_mass", &fv::result::visual_mass)
      .def_ro("kept_mass", &fv::result::kept_mass);
  m.def("validate", [](const fv::config& c) { fv::validate(c); }, nb::arg("config"));
  m.def("keep_count", [](index_t n, const fv::config& c) { return fv::keep_count(n, c); }, nb::arg("n"), nb::arg("config") = fv::config{});
  m.def("with_budget", [](const tokensel::budget& b, index_t n, const fv::config& base) { return fv::with_budget(b, n, base); },
        nb::arg("budget"), nb::arg("n"), nb::arg("base") = fv::config{});
  m.def("requirements", [](const fv::config& c, const tokensel::model_shape& s) { return fv::requirements(c, s); },
        nb::arg("config"), nb::arg("shape"));
  m.def("select", &select, nb::arg("attention"), nb::arg("visual"), nb::arg("config") = nb::none(), nb::kw_only(),
        nb::arg("keep").none() = nb::none(), nb::arg("threads") = 0, nb::arg("return_result") = false,
        "attention of layer K-1: [heads, q, L] (q = L, or 1: the last query row), a qk_source (set causal), a "
        "[batch, heads, q, L] batch or a list; visual = (start, count) among the L keys. Returns ascending indices into "
        "the visual span (int32). CUDA tensors (or a qk_source of them) run on the device when built_with_cuda() and "
        "return CUDA int32 tensors.");
  m.def("select_scores", &select_scores, nb::arg("scores"), nb::arg("config") = nb::none(), nb::kw_only(), nb::arg("keep").none() = nb::none(),
        "From precomputed head-reduced scores of the visual tokens [n]: the keep_count(n) highest, ascending.");
}

}  // namespace tsp
