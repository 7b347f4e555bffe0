// tokensel Python extension: PruMerge / PruMerge+.
#include "common.hpp"
#include "cuda_dispatch.hpp"

#include <tokensel/methods/prumerge.hpp>

namespace tsp {
namespace pm = tokensel::prumerge;

namespace {

nb::object finish(std::vector<token_index>&& out, std::vector<float>* rows, index_t d, const pm::result& r, bool with_rows,
                  bool return_result) {
  out.resize(static_cast<std::size_t>(r.count));
  nb::object idx = nb::cast(to_indices(std::move(out)));
  nb::list items;
  items.append(idx);
  if (with_rows) {
    rows->resize(static_cast<std::size_t>(r.rows() * d));
    items.append(nb::cast(to_floats(std::move(*rows), static_cast<std::size_t>(r.rows()), static_cast<std::size_t>(d))));
  }
  if (return_result) items.append(nb::cast(r));
  return items.size() == 1 ? idx : nb::object(nb::tuple(items));
}

nb::object one_qk(nb::handle q_h, nb::handle k_h, nb::handle f_h, const pm::config& cfg, const tokensel::threaded_policy& pol,
                  bool return_result, const std::string& where) {
  array q = array_arg(q_h, "prumerge.queries" + where), k = array_arg(k_h, "prumerge.keys" + where);
#if defined(TOKENSEL_PYTHON_CUDA)
  if (is_cuda_device(q.device_type())) return prumerge_select_cuda(q, k, f_h, cfg, return_result, where);
#endif
  const dt t = dtype_of(q, "prumerge.queries" + where);
  check_same(t, dtype_of(k, "prumerge.keys" + where), "prumerge.keys" + where, "prumerge.queries");
  check_rank(q, 2, "prumerge.queries" + where, "[n+1 or 1, D]");
  check_rank(k, 2, "prumerge.keys" + where, "[n+1, D]");
  std::optional<array> f;
  if (!f_h.is_none()) {
    f = nb::cast<array>(f_h);
    check_same(t, dtype_of(*f, "prumerge.features" + where), "prumerge.features" + where, "prumerge.queries");
    check_rank(*f, 2, "prumerge.features" + where, "[n, d]");
  }
  return dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    const auto qv = view<T, 2>(q, "prumerge.queries"), kv = view<T, 2>(k, "prumerge.keys");
    const index_t n = kv.extent(0) > 0 ? kv.extent(0) - 1 : 0;
    std::vector<token_index> out(static_cast<std::size_t>(pm::max_count(n, cfg)));
    pm::result r;
    if (!f) {
      {
        nb::gil_scoped_release rel;
        r = pm::select(pol, qv, kv, cfg, std::span<token_index>(out));
      }
      return finish(std::move(out), nullptr, 0, r, false, return_result);
    }
    const auto fv = view<T, 2>(*f, "prumerge.features");
    const index_t d = fv.extent(1), rows_cap = pm::max_rows(n, cfg);
    std::vector<float> rows(static_cast<std::size_t>(rows_cap * d));
    {
      nb::gil_scoped_release rel;
      r = pm::select(pol, qv, kv, fv, cfg, std::span<token_index>(out), tokensel::matrix_view<float>(rows.data(), {rows_cap, d}, "prumerge.merged"));
    }
    return finish(std::move(out), &rows, d, r, true, return_result);
  });
}

nb::object select(nb::handle queries, nb::handle keys, std::optional<pm::config> cfg_in, nb::handle features, int threads, bool return_result) {
  const pm::config cfg = cfg_in.value_or(pm::config{});
  const auto pol = policy(threads);
  array q;
  const bool dense = !is_sequence(queries) && nb::try_cast(queries, q) && q.ndim() == 3;
  if (dense) {
#if defined(TOKENSEL_PYTHON_CUDA)
    // The whole [batch, ...] batch in one device call.
    if (is_cuda_device(q.device_type())) return prumerge_select_cuda(q, array_arg(keys, "prumerge.keys"), features, cfg, return_result, "");
#endif
    (void)dtype_of(q, "prumerge.queries");  // a CUDA tensor in a CPU-only build is refused before it is indexed
  }
  if (is_sequence(queries) || dense) {  // a batch: one sample at a time (counts are adaptive)
    const std::size_t n = dense ? q.shape(0) : nb::len(queries);
    if (nb::len(keys) != n) fail(errc::shape_mismatch, "prumerge.keys", std::to_string(nb::len(keys)), "must have one entry per sample (" + std::to_string(n) + ")");
    if (!features.is_none() && nb::len(features) != n) fail(errc::shape_mismatch, "prumerge.features", std::to_string(nb::len(features)), "must have one entry per sample");
    nb::list out;
    for (std::size_t i = 0; i < n; ++i) {
      const nb::int_ at(i);  // an object key: PyObject_GetItem (a torch tensor is no Python sequence)
      out.append(one_qk(queries[at], keys[at], features.is_none() ? nb::object(nb::none()) : nb::object(features[at]), cfg, pol, return_result,
                        "[" + std::to_string(i) + "]"));
    }
    return out;
  }
  return one_qk(queries, keys, features, cfg, pol, return_result, "");
}

nb::object select_from_attention(const array& attention, std::optional<pm::config> cfg_in, nb::handle patch_keys, nb::handle features,
                                 int threads, bool return_result) {
  const pm::config cfg = cfg_in.value_or(pm::config{});
  const auto pol = policy(threads);
#if defined(TOKENSEL_PYTHON_CUDA)
  if (is_cuda_device(attention.device_type())) {
    if (!features.is_none() || !patch_keys.is_none()) {
      fail(errc::unsupported, features.is_none() ? "prumerge.patch_keys" : "prumerge.features", "given with CUDA attention",
           "select_from_attention merges on the CPU only (the CUDA backend merges from queries and keys: prumerge.select with features, "
           "or pass CPU tensors: .cpu())");
    }
    return prumerge_from_attention_cuda(attention, cfg, return_result);
  }
#endif
  const dt t = dtype_of(attention, "prumerge.attention");
  check_rank(attention, 1, "prumerge.attention", "[n]: the CLS row over the patches");
  return dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    const auto av = view<T, 1>(attention, "prumerge.attention");
    const index_t n = av.extent(0);
    std::vector<token_index> out(static_cast<std::size_t>(pm::max_count(n, cfg)));
    pm::result r;
    if (features.is_none()) {
      {
        nb::gil_scoped_release rel;
        r = pm::select_from_attention(pol, av, cfg, std::span<token_index>(out));
      }
      return finish(std::move(out), nullptr, 0, r, false, return_result);
    }
    array f = nb::cast<array>(features);
    check_same(t, dtype_of(f, "prumerge.features"), "prumerge.features", "the attention");
    check_rank(f, 2, "prumerge.features", "[n, d]");
    tokensel::matrix_view<const T> kv;
    std::optional<array> keys;
    if (!patch_keys.is_none()) {
      keys = nb::cast<array>(patch_keys);
      check_same(t, dtype_of(*keys, "prumerge.patch_keys"), "prumerge.patch_keys", "the attention");
      check_rank(*keys, 2, "prumerge.patch_keys", "[n, D]");
      kv = view<T, 2>(*keys, "prumerge.patch_keys");
    }
    const auto fv = view<T, 2>(f, "prumerge.features");
    const index_t d = fv.extent(1), rows_cap = pm::max_rows(n, cfg);
    std::vector<float> rows(static_cast<std::size_t>(rows_cap * d));
    {
      nb::gil_scoped_release rel;
      r = pm::select_from_attention(pol, av, kv, fv, cfg, std::span<token_index>(out),
                                    tokensel::matrix_view<float>(rows.data(), {rows_cap, d}, "prumerge.merged"));
    }
    return finish(std::move(out), &rows, d, r, true, return_result);
  });
}

}  // namespace

void bind_prumerge(nb::module_& parent) {
  nb::module_ m = parent.def_submodule("prumerge", "LLaVA-PruMerge(+): IQR outliers of the CLS attention, merged with their neighbours.");
  nb::enum_<pm::mode>(m, "mode").value("fixed", pm::mode::fixed).value("parity", pm::mode::parity);
  nb::class_<pm::config>(m, "config")
      .def("__init__",
           [](pm::config* c, pm::mode mode, bool plus, index_t neighbours, double iqr_multiplier, bool merge, bool extra_token, double scale) {
             new (c) pm::config{mode, plus, neighbours, iqr_multiplier, merge, extra_token, scale};
           },
           nb::kw_only(), nb::arg("mode") = pm::mode::fixed, nb::arg("plus") = false, nb::arg("neighbours") = 32,
           nb::arg("iqr_multiplier") = 1.5, nb::arg("merge") = true, nb::arg("extra_token") = true, nb::arg("scale") = 0.0)
      .def_rw("mode", &pm::config::mode)
      .def_rw("plus", &pm::config::plus)
      .def_rw("neighbours", &pm::config::neighbours)
      .def_rw("iqr_multiplier", &pm::config::iqr_multiplier)
      .def_rw("merge", &pm::config::merge)
      .def_rw("extra_token", &pm::config::extra_token)
      .def_rw("scale", &pm::config::scale);
  nb::class_<tokensel::iqr_result>(m, "iqr_result")
      .def_ro("count", &tokensel::iqr_result::count)
      .def_ro("q1", &tokensel::iqr_result::q1)
      .def_ro("q3", &tokensel::iqr_result::q3)
      .def_ro("upper_fence", &tokensel::iqr_result::upper_fence)
      .def_ro("lower_fence", &tokensel::iqr_result::lower_fence);
  nb::class_<pm::result>(m, "result")
      .def_ro("count", &pm::result::count)
      .def_ro("outliers", &pm::result::outliers)
      .def_ro("grid", &pm::result::grid)
      .def_ro("stride", &pm::result::stride)
      .def_ro("neighbours", &pm::result::neighbours)
      .def_ro("extra_token", &pm::result::extra_token)
      .def_ro("iqr", &pm::result::iqr)
      .def("rows", &pm::result::rows);
  m.def("validate", [](const pm::config& c) { pm::validate(c); }, nb::arg("config"));
  m.def("max_count", [](index_t n, const pm::config& c) { return pm::max_count(n, c); }, nb::arg("n"), nb::arg("config") = pm::config{},
        "Most patch indices a sample of n patches can keep (the count is adaptive).");
  m.def("max_rows", [](index_t n, const pm::config& c) { return pm::max_rows(n, c); }, nb::arg("n"), nb::arg("config") = pm::config{});
  m.def("with_budget", [](const tokensel::budget& b, index_t n, const pm::config& base) { return pm::with_budget(b, n, base); },
        nb::arg("budget"), nb::arg("n"), nb::arg("base") = pm::config{}, "Always raises: PruMerge is adaptive.");
  m.def("requirements", [](const pm::config& c, const tokensel::model_shape& s) { return pm::requirements(c, s); },
        nb::arg("config"), nb::arg("shape"));
  m.def("select", &select, nb::arg("queries"), nb::arg("keys"), nb::arg("config") = nb::none(), nb::kw_only(),
        nb::arg("features").none() = nb::none(), nb::arg("threads") = 0, nb::arg("return_result") = false,
        "queries [n+1 or 1, D] (row 0 = CLS) and keys [n+1, D] of the last encoder layer. Returns the kept patch indices; "
        "with features [n, d] also the float32 merged rows [result.rows(), d]. Batches ([batch, ...] arrays or lists) give a list.");
  m.def("select_from_attention", &select_from_attention, nb::arg("attention"), nb::arg("config") = nb::none(), nb::kw_only(),
        nb::arg("patch_keys").none() = nb::none(), nb::arg("features").none() = nb::none(), nb::arg("threads") = 0, nb::arg("return_result") = false,
        "From a CLS attention row over the patches [n]; with features (and patch_keys [n, D] when merging) also the merged rows.");
}

}  // namespace tsp
