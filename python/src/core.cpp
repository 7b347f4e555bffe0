// tokensel Python extension: module, errors, shared types (budget, model_shape, requirements,
// token_grid, enums), qk_source and gather.
#include "common.hpp"
#include "cuda_dispatch.hpp"

#include <tokensel/select/gather.hpp>
#include <tokensel/stats/head_reduction.hpp>
#include <tokensel/select/row_aggregation.hpp>
#include <tokensel/stats/variance_axis.hpp>

namespace tsp {

bool built_with_cuda() {
#if defined(TOKENSEL_PYTHON_CUDA)
  return true;
#else
  return false;
#endif
}

namespace {

std::string grid_repr(const tokensel::token_grid& g) {
  return "token_grid(rows=" + std::to_string(g.rows) + ", cols=" + std::to_string(g.cols) + ")";
}

nb::object gather_with(const array& src, dt s, std::vector<token_index> indices, nb::handle out_h);

nb::object gather(nb::handle src_h, nb::handle idx_h, nb::handle out_h) {
  array src = array_arg(src_h, "gather.src");
#if defined(TOKENSEL_PYTHON_CUDA)
  if (is_cuda_device(src.device_type())) return gather_cuda(src, idx_h, out_h);
#endif
  const dt s = dtype_of(src, "gather.src");
  check_rank(src, 2, "gather.src", "[n, d]");
  // Indices: any integer array (converted to int32 here; they are few).
  std::vector<token_index> indices;
  nb::ndarray<nb::ro, nb::device::cpu> idx;
  if (is_sequence(idx_h)) {
    for (nb::handle v : idx_h) {
      const auto i = nb::cast<std::int64_t>(v);
      if (i < 0 || i > std::numeric_limits<token_index>::max()) fail(errc::invalid_argument, "gather.indices", std::to_string(i), "out of range");
      indices.push_back(static_cast<token_index>(i));
    }
    return gather_with(src, s, std::move(indices), out_h);
  }
  if (!nb::try_cast(idx_h, idx)) fail(errc::invalid_argument, "gather.indices", nb::cast<std::string>(nb::str(idx_h.type())), "must be a 1-D integer array or a list");
  if (idx.ndim() != 1) fail(errc::shape_mismatch, "gather.indices.ndim", std::to_string(idx.ndim()), "must be 1");
  const auto t = idx.dtype();
  if (t.code != static_cast<std::uint8_t>(nb::dlpack::dtype_code::Int) || (t.bits != 32 && t.bits != 64)) {
    fail(errc::invalid_argument, "gather.indices.dtype", "code " + std::to_string(t.code) + " bits " + std::to_string(t.bits), "must be int32 or int64");
  }
  indices.resize(idx.shape(0));
  for (std::size_t i = 0; i < indices.size(); ++i) {
    const auto* base = static_cast<const std::uint8_t*>(idx.data()) + static_cast<std::ptrdiff_t>(i) * idx.stride(0) * (t.bits / 8);
    std::int64_t v = 0;
    if (t.bits == 32) { std::int32_t x; std::memcpy(&x, base, 4); v = x; } else { std::memcpy(&v, base, 8); }
    if (v < 0 || v > std::numeric_limits<token_index>::max()) fail(errc::invalid_argument, "gather.indices[" + std::to_string(i) + "]", std::to_string(v), "out of range");
    indices[i] = static_cast<token_index>(v);
  }
  return gather_with(src, s, std::move(indices), out_h);
}

nb::object gather_with(const array& src, dt s, std::vector<token_index> indices, nb::handle out_h) {
  const auto k = static_cast<index_t>(indices.size());
  const auto d = static_cast<index_t>(src.shape(1));
  if (out_h.is_none()) {
    std::vector<float> buf(static_cast<std::size_t>(k * d));
    dispatch(s, [&](auto tag) {
      using S = decltype(tag);
      auto sv = view<S, 2>(src, "gather.src");
      nb::gil_scoped_release rel;
      tokensel::gather_rows<S, float>(sv, indices, tokensel::tensor_view<float, 2>(buf.data(), {k, d}, "gather.out"));
    });
    return nb::cast(to_floats(std::move(buf), static_cast<std::size_t>(k), static_cast<std::size_t>(d)));
  }
  out_array out = nb::cast<out_array>(out_h);
  const dt o = dtype_of(array(out), "gather.out");
  if (out.ndim() != 2) fail(errc::shape_mismatch, "gather.out.ndim", std::to_string(out.ndim()), "must be 2 ([k, d])");
  dispatch(s, [&](auto stag) {
    using S = decltype(stag);
    dispatch(o, [&](auto otag) {
      using O = decltype(otag);
      auto sv = view<S, 2>(src, "gather.src");
      tokensel::tensor_view<O, 2> ov(static_cast<O*>(out.data()), {static_cast<index_t>(out.shape(0)), static_cast<index_t>(out.shape(1))},
                                     {static_cast<index_t>(out.stride(0)), static_cast<index_t>(out.stride(1))}, "gather.out");
      nb::gil_scoped_release rel;
      tokensel::gather_rows<S, O>(sv, indices, ov);
    });
  });
  return nb::borrow(out_h);
}

}  // namespace

void bind_core(nb::module_& m) {
  nb::exception<tokensel::error>(m, "Error", PyExc_ValueError);

  nb::enum_<tokensel::head_reduction>(m, "head_reduction", "How a method reduces attention over heads.")
      .value("mean", tokensel::head_reduction::mean)
      .value("sum", tokensel::head_reduction::sum)
      .value("max", tokensel::head_reduction::max);
  nb::enum_<tokensel::row_reduction>(m, "row_reduction", "How grid rows aggregate token scores.")
      .value("sum", tokensel::row_reduction::sum)
      .value("mean", tokensel::row_reduction::mean);
  nb::enum_<tokensel::significance_axis>(m, "significance_axis")
      .value("row_mean", tokensel::significance_axis::row_mean)
      .value("column_mean", tokensel::significance_axis::column_mean);
  nb::enum_<tokensel::stage>(m, "stage", "Where a method selects.")
      .value("encoder", tokensel::stage::encoder)
      .value("llm", tokensel::stage::llm);

  nb::class_<tokensel::token_grid>(m, "token_grid", "rows x cols patches in row-major order.")
      .def(nb::init<>())
      .def("__init__", [](tokensel::token_grid* g, index_t rows, index_t cols) { new (g) tokensel::token_grid{rows, cols}; },
           nb::arg("rows"), nb::arg("cols"))
      .def_rw("rows", &tokensel::token_grid::rows)
      .def_rw("cols", &tokensel::token_grid::cols)
      .def("size", &tokensel::token_grid::size)
      .def_static("square", [](index_t n) { return tokensel::token_grid::square(n); }, nb::arg("n"),
                  "The square grid of n tokens; raises when n is not a perfect square.")
      .def("__eq__", [](const tokensel::token_grid& a, const tokensel::token_grid& b) { return a.rows == b.rows && a.cols == b.cols; })
      .def("__repr__", &grid_repr);

  nb::class_<tokensel::budget>(m, "budget",
                               "How many visual tokens to keep: budget.fraction(f) with f in (0, 1] or budget.count(k) with k >= 1.")
      .def_static("fraction", &tokensel::budget::fraction, nb::arg("keep"))
      .def_static("count", &tokensel::budget::count, nb::arg("keep"))
      .def_prop_ro("is_fraction", &tokensel::budget::is_fraction)
      .def_prop_ro("fraction_value", &tokensel::budget::fraction_value)
      .def_prop_ro("count_value", &tokensel::budget::count_value)
      .def("tokens", &tokensel::budget::tokens, nb::arg("n"), nb::arg("method") = "budget",
           "Tokens kept of n: the count (at most n), or max(1, floor(n f)).")
      .def("describe", &tokensel::budget::describe)
      .def("__repr__", [](const tokensel::budget& b) {
        return b.is_fraction() ? "budget.fraction(" + b.describe() + ")" : "budget.count(" + std::to_string(b.count_value()) + ")";
      });

  nb::class_<tokensel::model_shape>(m, "model_shape", "What an engine knows about the model before the encoder runs.")
      .def("__init__",
           [](tokensel::model_shape* s, index_t visual_tokens, bool cls, index_t feature_layer, index_t encoder_layers) {
             new (s) tokensel::model_shape{visual_tokens, cls, feature_layer, encoder_layers};
           },
           nb::kw_only(), nb::arg("visual_tokens") = 0, nb::arg("cls") = true, nb::arg("feature_layer") = -1,
           nb::arg("encoder_layers") = 0)
      .def_rw("visual_tokens", &tokensel::model_shape::visual_tokens)
      .def_rw("cls", &tokensel::model_shape::cls)
      .def_rw("feature_layer", &tokensel::model_shape::feature_layer)
      .def_rw("encoder_layers", &tokensel::model_shape::encoder_layers);

  nb::class_<tokensel::layer_span>(m, "layer_span", "Inclusive range of layer indices; empty when last < first.")
      .def_ro("first", &tokensel::layer_span::first)
      .def_ro("last", &tokensel::layer_span::last)
      .def("empty", &tokensel::layer_span::empty)
      .def("contains", &tokensel::layer_span::contains, nb::arg("layer"))
      .def("__repr__", [](const tokensel::layer_span& s) {
        return "layer_span(first=" + std::to_string(s.first) + ", last=" + std::to_string(s.last) + ")";
      });

  using req = tokensel::method_requirements;
  nb::class_<req>(m, "method_requirements", "What a method reads and what it produces, known before anything runs.")
      .def_ro("stage", &req::stage)
      .def_ro("layers", &req::layers)
      .def_ro("extra_layer", &req::extra_layer)
      .def_ro("full_maps", &req::full_maps)
      .def_ro("cls_row", &req::cls_row)
      .def_ro("last_query_row", &req::last_query_row)
      .def_ro("keys", &req::keys)
      .def_ro("hidden_states", &req::hidden_states)
      .def_ro("adaptive", &req::adaptive)
      .def_ro("keep", &req::keep)
      .def_ro("output_rows", &req::output_rows);

  nb::class_<py_qk>(m, "qk_source",
                    "One layer's attention as its queries [heads, n_q, d] and keys [kv_heads, n_k, d] (no map is "
                    "materialised). The arrays are referenced, not copied.")
      .def("__init__",
           [](py_qk* q, array queries, array keys, float scale, std::optional<array> lse, bool causal, index_t causal_offset) {
             new (q) py_qk{std::move(queries), std::move(keys), std::move(lse), scale, causal, causal_offset};
             const bool cuda = q->on_cuda();  // validated here; the CPU paths refuse it when they read it
             const dt t = q->dtype(cuda);
             dispatch(t, [&](auto tag) { (void)q->template source<decltype(tag)>(cuda); });
           },
           nb::arg("queries"), nb::arg("keys"), nb::kw_only(), nb::arg("scale") = 0.0f, nb::arg("lse") = nb::none(),
           nb::arg("causal") = false, nb::arg("causal_offset") = -1)
      .def_prop_ro("queries", [](const py_qk& q) { return q.queries; })
      .def_prop_ro("keys", [](const py_qk& q) { return q.keys; })
      .def_ro("scale", &py_qk::scale)
      .def_ro("causal", &py_qk::causal)
      .def_ro("causal_offset", &py_qk::causal_offset)
      .def_prop_ro("heads", [](const py_qk& q) { return q.queries.shape(0); })
      .def_prop_ro("kv_heads", [](const py_qk& q) { return q.keys.shape(0); })
      .def_prop_ro("query_count", [](const py_qk& q) { return q.queries.shape(1); })
      .def_prop_ro("key_count", [](const py_qk& q) { return q.keys.shape(1); })
      .def_prop_ro("head_dim", [](const py_qk& q) { return q.queries.shape(2); });

  m.def("gather", &gather, nb::arg("src"), nb::arg("indices"), nb::arg("out").none() = nb::none(),
        "dst[r, :] = src[indices[r], :]. src [n, d] (f32/f16/bf16, any strides); without out returns a new "
        "float32 [k, d] array, with out (a writable [k, d] f32/f16/bf16 array) writes into it and returns it. CUDA src (CUDA "
        "build): indices a CUDA int32 tensor [k] (a CUDA selection's output) on its device, src may be a [batch, n, d] batch "
        "with [batch, k] indices; the rows (float32, or out) stay on the device.");
  m.def("built_with_cuda", &built_with_cuda, "Whether this extension dispatches CUDA tensors to the CUDA backend.");
  m.def("cuda_methods", [] { return std::vector<std::string>(cuda_methods.begin(), cuda_methods.end()); },
        "The methods (and gather) that run CUDA tensors on the CUDA backend when built_with_cuda(): one array per input "
        "(a sample or a [batch, ...] batch) or a ragged list of samples. A qk_source of CUDA tensors runs for fopru, fastv, vispruner and visionzip; "
        "the other methods' qk_source and FitPrune's calibrator raise for CUDA tensors.");
  m.def("threading_available", &tokensel::threading_available, "Whether threads > 1 really run in parallel (OpenMP).");
}

}  // namespace tsp

NB_MODULE(_core, m) {
  m.doc() = "tokensel: training-free visual-token selection (C++ core; use the tokensel package)";
  tsp::bind_core(m);
  tsp::bind_fopru(m);
  tsp::bind_freepruner(m);
  tsp::bind_fitprune(m);
  tsp::bind_fastv(m);
  tsp::bind_prumerge(m);
  tsp::bind_visionzip(m);
  tsp::bind_baselines(m);
  tsp::bind_divprune(m);
  tsp::bind_dart(m);
  tsp::bind_vispruner(m);
}
