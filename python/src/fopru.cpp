// tokensel Python extension: FoPru.
#include "common.hpp"
#include "cuda_dispatch.hpp"

#include <tokensel/methods/fopru.hpp>

namespace tsp {
namespace fo = tokensel::fopru;

namespace {

index_t patches(index_t tokens, const fo::config& cfg) { return cfg.skip_cls ? (tokens > 0 ? tokens - 1 : 0) : tokens; }

nb::object select(nb::handle attention, std::optional<fo::config> cfg_in, nb::handle keep, int threads, bool return_result) {
  const fo::config base = cfg_in.value_or(fo::config{});
  const auto b = budget_of(keep);
  const auto pol = policy(threads);
  auto cfg_for = [&](index_t tokens) { return b ? fo::with_budget(*b, patches(tokens, base), base) : base; };
  auto wrap = [&](nb::object idx, nb::object res) { return return_result ? nb::make_tuple(idx, res) : idx; };
#if defined(TOKENSEL_PYTHON_CUDA)
  if (on_cuda(attention)) {
    const array arr = nb::cast<array>(attention);
    const index_t tokens = arr.ndim() >= 3 ? static_cast<index_t>(arr.shape(arr.ndim() - 1)) : 0;  // rank checked there
    return fopru_select_cuda(arr, cfg_for(tokens), return_result);
  }
#endif
  auto one = [&](nb::handle h, const std::string& name) {
#if defined(TOKENSEL_PYTHON_CUDA)
    if (on_cuda(h)) {  // a ragged list's sample: one device call
      const array arr = nb::cast<array>(h);
      check_rank(arr, 3, name, "[heads, N, N]");
      return index_and_result(fopru_select_cuda(arr, cfg_for(static_cast<index_t>(arr.shape(2))), true, name.substr(std::strlen("fopru.attention"))));
    }
    if (const py_qk* q = cuda_qk(h)) {  // Q/K on the device (rank checked there)
      return index_and_result(fopru_select_cuda_qk(*q, cfg_for(q->queries.ndim() == 3 ? static_cast<index_t>(q->queries.shape(1)) : 0), true));
    }
#endif
    const attention_arg a = attention_of(h, name);
    return with_source(a, name, [&](const auto& src) {
      const fo::config cfg = cfg_for(tokensel::query_tokens(src));
      std::vector<token_index> out(static_cast<std::size_t>(fo::keep_count(patches(tokensel::query_tokens(src), cfg), cfg)));
      fo::result r;
      {
        nb::gil_scoped_release rel;
        r = fo::select(pol, src, cfg, std::span<token_index>(out));
      }
      out.resize(static_cast<std::size_t>(r.count));
      return std::pair<nb::object, nb::object>(nb::cast(to_indices(std::move(out))), nb::cast(r));
    });
  };
  if (is_sequence(attention)) {
    nb::list idx, res;
    std::size_t i = 0;
    for (nb::handle h : attention) {
      auto [x, r] = one(h, "fopru.attention[" + std::to_string(i++) + "]");
      idx.append(x);
      res.append(r);
    }
    return wrap(idx, res);
  }
  array arr;
  if (nb::try_cast(attention, arr) && arr.ndim() == 4) {
    const dt t = dtype_of(arr, "fopru.attention");
    return dispatch(t, [&](auto tag) {
      using T = decltype(tag);
      const auto v = view<T, 4>(arr, "fopru.attention");
      const index_t batch = v.extent(0);
      const fo::config cfg = cfg_for(v.extent(2));
      const index_t k = fo::keep_count(patches(v.extent(2), cfg), cfg);
      std::vector<token_index> out(static_cast<std::size_t>(batch * k)), counts(static_cast<std::size_t>(batch));
      std::vector<fo::result> res(static_cast<std::size_t>(batch));
      {
        nb::gil_scoped_release rel;
        fo::select(pol, v, cfg, tokensel::selection_batch{tokensel::tensor_view<token_index, 2>(out.data(), {batch, k}), counts},
                   std::span<fo::result>(res));
      }
      return wrap(nb::cast(to_indices(std::move(out), static_cast<std::size_t>(batch), static_cast<std::size_t>(k))), nb::cast(res));
    });
  }
  auto [x, r] = one(attention, "fopru.attention");
  return wrap(x, r);
}

}  // namespace

void bind_fopru(nb::module_& parent) {
  nb::module_ m = parent.def_submodule("fopru", "FoPru (arXiv 2411.14164): variance-axis significance of the feature layer's attention.");
  nb::enum_<fo::strategy>(m, "strategy").value("rank", fo::strategy::rank).value("row", fo::strategy::row);
  nb::class_<fo::config>(m, "config")
      .def("__init__",
           [](fo::config* c, double ratio, fo::strategy strategy, tokensel::head_reduction heads, bool skip_cls,
              std::optional<tokensel::token_grid> grid, tokensel::row_reduction row_score) {
             new (c) fo::config{ratio, strategy, heads, skip_cls, grid, row_score};
           },
           nb::kw_only(), nb::arg("ratio") = 0.5, nb::arg("strategy") = fo::strategy::rank,
           nb::arg("heads") = tokensel::head_reduction::mean, nb::arg("skip_cls") = true, nb::arg("grid") = nb::none(),
           nb::arg("row_score") = tokensel::row_reduction::sum)
      .def_rw("ratio", &fo::config::ratio)
      .def_rw("strategy", &fo::config::strategy)
      .def_rw("heads", &fo::config::heads)
      .def_rw("skip_cls", &fo::config::skip_cls)
      .def_rw("grid", &fo::config::grid, nb::arg("grid").none())
      .def_rw("row_score", &fo::config::row_score);
  nb::class_<fo::result>(m, "result")
      .def_ro("count", &fo::result::count)
      .def_ro("axis", &fo::result::axis)
      .def_ro("row_variance", &fo::result::row_variance)
      .def_ro("column_variance", &fo::result::column_variance)
      .def_ro("rows_kept", &fo::result::rows_kept);
  m.def("validate", [](const fo::config& c) { fo::validate(c); }, nb::arg("config"));
  m.def("keep_count", [](index_t n, const fo::config& c) { return fo::keep_count(n, c); }, nb::arg("n"), nb::arg("config") = fo::config{},
        "Tokens kept of n patches (CLS excluded), known before any attention is computed.");
  m.def("with_budget", [](const tokensel::budget& b, index_t n, const fo::config& base) { return fo::with_budget(b, n, base); },
        nb::arg("budget"), nb::arg("n"), nb::arg("base") = fo::config{}, "The config that keeps budget of n patches.");
  m.def("requirements", [](const fo::config& c, const tokensel::model_shape& s) { return fo::requirements(c, s); },
        nb::arg("config"), nb::arg("shape"));
  m.def("select", &select, nb::arg("attention"), nb::arg("config") = nb::none(), nb::kw_only(), nb::arg("keep").none() = nb::none(),
        nb::arg("threads") = 0, nb::arg("return_result") = false,
        "attention: [heads, N, N] (CLS first when skip_cls), a qk_source, a [batch, heads, N, N] batch or a list of samples "
        "(ragged). Returns ascending patch indices (int32): 1-D, [batch, k], or a list. keep: a fraction or count "
        "(with_budget applied to config). return_result: also return the statistics. CUDA tensors (or a qk_source of "
        "them) run on the device when built_with_cuda() and return CUDA int32 tensors.");
}

}  // namespace tsp
