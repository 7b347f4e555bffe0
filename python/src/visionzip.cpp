// tokensel Python extension: VisionZip.
#include "common.hpp"
#include "cuda_dispatch.hpp"

#include <tokensel/methods/visionzip.hpp>

namespace tsp {
namespace vz = tokensel::visionzip;

namespace {

struct inputs {
  nb::handle attention, keys, hidden;
};

nb::object one(const inputs& in, const vz::config& base, const std::optional<tokensel::budget>& b, const tokensel::threaded_policy& pol,
               bool return_result, const std::string& where) {
#if defined(TOKENSEL_PYTHON_CUDA)
  if (on_cuda(in.attention)) {  // a ragged list's sample: one device call
    const array arr = nb::cast<array>(in.attention);
    check_rank(arr, 3, "visionzip.attention" + where, "[heads, N, N]");
    return visionzip_select_cuda(arr, in.keys, array_arg(in.hidden, "visionzip.hidden" + where), base, b, return_result, where);
  }
  if (const py_qk* q = cuda_qk(in.attention)) {  // Q/K of the feature layer on the device
    return visionzip_select_cuda_qk(*q, in.keys, array_arg(in.hidden, "visionzip.hidden" + where), base, b, return_result, where);
  }
#endif
  const attention_arg a = attention_of(in.attention, "visionzip.attention" + where);
  array hidden = nb::cast<array>(in.hidden);
  check_same(a.type, dtype_of(hidden, "visionzip.hidden" + where), "visionzip.hidden" + where, "the attention");
  check_rank(hidden, 2, "visionzip.hidden" + where, "[N, D]");
  std::optional<array> keys;
  if (!in.keys.is_none()) {
    keys = nb::cast<array>(in.keys);
    check_same(a.type, dtype_of(*keys, "visionzip.keys" + where), "visionzip.keys" + where, "the attention");
    check_rank(*keys, 3, "visionzip.keys" + where, "[heads, N, head_dim]");
  }
  return with_source(a, "visionzip.attention" + where, [&](const auto& src) {
    using T = typename std::remove_cvref_t<decltype(src)>::element_type;
    using S = std::remove_cvref_t<T>;
    const index_t tokens = tokensel::key_tokens(src);
    const vz::config cfg = b ? vz::with_budget(*b, tokens > 0 ? tokens - 1 : 0, base) : base;
    const index_t k = vz::keep_count(tokens, cfg);
    const auto hv = view<S, 2>(hidden, "visionzip.hidden");
    const index_t d = hv.extent(1);
    const auto kv = keys ? view<S, 3>(*keys, "visionzip.keys") : tokensel::tensor_view<const S, 3>{};
    std::vector<token_index> out(static_cast<std::size_t>(k));
    std::vector<float> rows(static_cast<std::size_t>(k * d));
    vz::result r;
    {
      nb::gil_scoped_release rel;
      r = vz::select(pol, src, kv, hv, cfg, std::span<token_index>(out), tokensel::matrix_view<float>(rows.data(), {k, d}, "visionzip.features"));
    }
    out.resize(static_cast<std::size_t>(r.count));
    rows.resize(static_cast<std::size_t>(r.count * d));
    nb::object idx = nb::cast(to_indices(std::move(out)));
    nb::object feats = nb::cast(to_floats(std::move(rows), static_cast<std::size_t>(r.count), static_cast<std::size_t>(d)));
    return return_result ? nb::make_tuple(idx, feats, nb::cast(r)) : nb::make_tuple(idx, feats);
  });
}

nb::object select(nb::handle attention, nb::handle keys, nb::handle hidden, std::optional<vz::config> cfg_in, nb::handle keep, int threads,
                  bool return_result) {
  const vz::config base = cfg_in.value_or(vz::config{});
  const auto b = budget_of(keep);
  const auto pol = policy(threads);
#if defined(TOKENSEL_PYTHON_CUDA)
  if (on_cuda(attention)) {
    return visionzip_select_cuda(nb::cast<array>(attention), keys, array_arg(hidden, "visionzip.hidden"), base, b, return_result);
  }
#endif
  if (is_sequence(attention)) {
    nb::list out;
    const auto n = nb::len(attention);
    if (!is_sequence(hidden) || nb::len(hidden) != n) fail(errc::shape_mismatch, "visionzip.hidden", "?", "must be a list as long as the attention list");
    if (!keys.is_none() && (!is_sequence(keys) || nb::len(keys) != n)) fail(errc::shape_mismatch, "visionzip.keys", "?", "must be None or a list as long as the attention list");
    for (std::size_t i = 0; i < n; ++i) {
      out.append(one({attention[i], keys.is_none() ? nb::handle(Py_None) : keys[i], hidden[i]}, base, b, pol, return_result,
                     "[" + std::to_string(i) + "]"));
    }
    return out;
  }
  array arr;
  if (nb::try_cast(attention, arr) && arr.ndim() == 4) {
    const dt t = dtype_of(arr, "visionzip.attention");
    array hid = nb::cast<array>(hidden);
    check_same(t, dtype_of(hid, "visionzip.hidden"), "visionzip.hidden", "the attention");
    check_rank(hid, 3, "visionzip.hidden", "[batch, N, D]");
    std::optional<array> key;
    if (!keys.is_none()) {
      key = nb::cast<array>(keys);
      check_same(t, dtype_of(*key, "visionzip.keys"), "visionzip.keys", "the attention");
      check_rank(*key, 4, "visionzip.keys", "[batch, heads, N, head_dim]");
    }
    return dispatch(t, [&](auto tag) {
      using T = decltype(tag);
      const auto av = view<T, 4>(arr, "visionzip.attention");
      const auto hv = view<T, 3>(hid, "visionzip.hidden");
      const auto kv = key ? view<T, 4>(*key, "visionzip.keys") : tokensel::tensor_view<const T, 4>{};
      const index_t batch = av.extent(0), tokens = av.extent(3), d = hv.extent(2);
      const vz::config cfg = b ? vz::with_budget(*b, tokens > 0 ? tokens - 1 : 0, base) : base;
      const index_t k = vz::keep_count(tokens, cfg);
      std::vector<token_index> out(static_cast<std::size_t>(batch * k)), counts(static_cast<std::size_t>(batch));
      std::vector<float> rows(static_cast<std::size_t>(batch * k * d));
      std::vector<vz::result> res(static_cast<std::size_t>(batch));
      {
        nb::gil_scoped_release rel;
        vz::select(pol, av, kv, hv, cfg, tokensel::selection_batch{tokensel::tensor_view<token_index, 2>(out.data(), {batch, k}), counts},
                   tokensel::feature_view<float>(rows.data(), {batch, k, d}, "visionzip.features"), std::span<vz::result>(res));
      }
      nb::object idx = nb::cast(to_indices(std::move(out), static_cast<std::size_t>(batch), static_cast<std::size_t>(k)));
      nb::object feats = nb::cast(to_floats3(std::move(rows), static_cast<std::size_t>(batch), static_cast<std::size_t>(k), static_cast<std::size_t>(d)));
      return return_result ? nb::make_tuple(idx, feats, nb::cast(res)) : nb::make_tuple(idx, feats);
    });
  }
  return one({attention, keys, hidden}, base, b, pol, return_result, "");
}

}  // namespace

void bind_visionzip(nb::module_& parent) {
  nb::module_ m = parent.def_submodule("visionzip", "VisionZip: dominant tokens by CLS attention plus merged contextual tokens.");
  nb::class_<vz::config>(m, "config")
      .def("__init__", [](vz::config* c, index_t dominant, index_t contextual) { new (c) vz::config{dominant, contextual}; },
           nb::kw_only(), nb::arg("dominant") = 54, nb::arg("contextual") = 10)
      .def_rw("dominant", &vz::config::dominant)
      .def_rw("contextual", &vz::config::contextual);
  nb::class_<vz::result>(m, "result")
      .def_ro("count", &vz::result::count)
      .def_ro("dominant", &vz::result::dominant)
      .def_ro("contextual", &vz::result::contextual)
      .def_ro("merged", &vz::result::merged);
  m.def("validate", [](const vz::config& c) { vz::validate(c); }, nb::arg("config"));
  m.def("keep_count", [](index_t n, const vz::config& c) { return vz::keep_count(n, c); }, nb::arg("n"), nb::arg("config") = vz::config{},
        "Output rows for a sample of n tokens (CLS included).");
  m.def("with_budget", [](const tokensel::budget& b, index_t n, const vz::config& base) { return vz::with_budget(b, n, base); },
        nb::arg("budget"), nb::arg("n"), nb::arg("base") = vz::config{}, "The config keeping budget of n patches (54 : 10 split).");
  m.def("requirements", [](const vz::config& c, const tokensel::model_shape& s) { return vz::requirements(c, s); },
        nb::arg("config"), nb::arg("shape"));
  m.def("select", &select, nb::arg("attention"), nb::arg("keys").none(), nb::arg("hidden"), nb::arg("config") = nb::none(), nb::kw_only(),
        nb::arg("keep").none() = nb::none(), nb::arg("threads") = 0, nb::arg("return_result") = false,
        "attention [heads, N, N] or [heads, 1, N] (CLS = token 0) or a qk_source; keys [heads, N, head_dim] (None when "
        "contextual = 0); hidden [N, D]. Returns (indices, features): full-sequence indices (dominant ascending with CLS = 0, "
        "then each contextual token's anchor) and the float32 output rows [count, D]. Batches: [batch, ...] arrays or lists.");
}

}  // namespace tsp
