// tokensel Python extension: DART (LLM layer K-1's keys and the hidden states entering layer K).
#include "common.hpp"
#include "cuda_dispatch.hpp"

#include <tokensel/methods/dart.hpp>

namespace tsp {
namespace da = tokensel::dart;

namespace {

tokensel::token_range span_of(nb::handle h, const std::string& name) {
  std::pair<index_t, index_t> p;
  if (!nb::try_cast(h, p)) fail(errc::invalid_argument, name, nb::cast<std::string>(nb::str(h)), "must be a (start, count) pair");
  return {p.first, p.second};
}

/// The RMSNorm weight [D] as f32 (None: empty). Copied: D values, widened exactly from f16/bf16.
std::vector<float> weight_of(nb::handle h) {
  std::vector<float> w;
  if (h.is_none()) return w;
  const array a = array_arg(h, "dart.norm_weight");
  const dt t = dtype_of(a, "dart.norm_weight");
  check_rank(a, 1, "dart.norm_weight", "[D]");
  dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    const auto v = view<T, 1>(a, "dart.norm_weight");
    w.resize(static_cast<std::size_t>(v.extent(0)));
    for (index_t i = 0; i < v.extent(0); ++i) w[static_cast<std::size_t>(i)] = tokensel::to_float(v(i));
  });
  return w;
}

tokensel::vector_view<const float> weight_view(const std::vector<float>& w) {
  return tokensel::vector_view<const float>(w.data(), {static_cast<index_t>(w.size())}, "dart.norm_weight");
}

/// keys and hidden of one call: their dtype (shared), after the rank checks.
dt checked_pair(const array& keys, const array& hidden, std::size_t rank, const std::string& where) {
  const dt t = dtype_of(hidden, "dart.hidden" + where);
  check_same(t, dtype_of(keys, "dart.keys" + where), "dart.keys" + where, "dart.hidden");
  check_rank(keys, rank + 1, "dart.keys" + where, rank == 2 ? "[kv_heads, L, d_head]" : "[batch, kv_heads, L, d_head]");
  check_rank(hidden, rank, "dart.hidden" + where, rank == 2 ? "[L, D]" : "[batch, L, D]");
  return t;
}

std::pair<nb::object, nb::object> one(nb::handle keys_h, nb::handle hidden_h, const tokensel::token_range& visual, const std::vector<float>& w,
                                      const da::config& base, const std::optional<tokensel::budget>& b, const tokensel::threaded_policy& pol,
                                      const std::string& where) {
  const array keys = array_arg(keys_h, "dart.keys" + where), hidden = array_arg(hidden_h, "dart.hidden" + where);
  const dt t = checked_pair(keys, hidden, 2, where);
  const da::config cfg = b ? da::with_budget(*b, visual.count, base) : base;
  return dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    const auto kv = view<T, 3>(keys, "dart.keys" + where);
    const auto hv = view<T, 2>(hidden, "dart.hidden" + where);
    std::vector<token_index> out(static_cast<std::size_t>(da::keep_count(visual.count, cfg)));
    da::result r;
    {
      nb::gil_scoped_release rel;
      r = da::select(pol, kv, tokensel::matrix_view<const T>(hv), weight_view(w), visual, cfg, std::span<token_index>(out));
    }
    out.resize(static_cast<std::size_t>(r.count));
    return std::pair<nb::object, nb::object>(nb::cast(to_indices(std::move(out))), nb::cast(r));
  });
}

nb::object select(nb::handle keys, nb::handle hidden, nb::handle visual, std::optional<da::config> cfg_in, nb::handle norm_weight,
                  nb::handle keep, int threads, bool return_result) {
  const da::config base = cfg_in.value_or(da::config{});
  da::validate(base);
  const auto b = budget_of(keep);
  const auto pol = policy(threads);
#if defined(TOKENSEL_PYTHON_CUDA)
  if (on_cuda(hidden)) {
    return dart_select_cuda(array_arg(keys, "dart.keys"), nb::cast<array>(hidden), norm_weight, span_of(visual, "dart.visual"), base, b,
                            return_result);
  }
#endif
  // The weight as f32 on the host, read when a sample runs on the CPU (a CUDA sample reads it on the device).
  std::optional<std::vector<float>> w_host;
  auto w = [&]() -> const std::vector<float>& { return w_host ? *w_host : w_host.emplace(weight_of(norm_weight)); };
  auto wrap = [&](nb::object idx, nb::object res) { return return_result ? nb::make_tuple(idx, res) : idx; };
  if (is_sequence(hidden)) {  // ragged: one sequence per sample; visual one span for all or one per sample
    const auto n = nb::len(hidden);
    if (!is_sequence(keys) || nb::len(keys) != n) fail(errc::shape_mismatch, "dart.keys", "?", "must be a list as long as the hidden list");
    const bool per_sample = is_sequence(visual) && nb::len(visual) == n && n > 0 && is_sequence(visual[0]);
    nb::list idx, res;
    for (std::size_t i = 0; i < n; ++i) {
      const std::string where = "[" + std::to_string(i) + "]";
      const auto span = per_sample ? span_of(visual[i], "dart.visual" + where) : span_of(visual, "dart.visual");
#if defined(TOKENSEL_PYTHON_CUDA)
      if (on_cuda(hidden[i])) {  // one device call for this sample
        const array h = nb::cast<array>(hidden[i]);
        check_rank(h, 2, "dart.hidden" + where, "[L, D]");
        auto [x, r] = index_and_result(dart_select_cuda(array_arg(keys[i], "dart.keys" + where), h, norm_weight, span, base, b, true, where));
        idx.append(x);
        res.append(r);
        continue;
      }
#endif
      auto [x, r] = one(keys[i], hidden[i], span, w(), base, b, pol, where);
      idx.append(x);
      res.append(r);
    }
    return wrap(idx, res);
  }
  const tokensel::token_range span = span_of(visual, "dart.visual");
  array harr;
  if (nb::try_cast(hidden, harr) && harr.ndim() == 3) {
    const array karr = array_arg(keys, "dart.keys");
    const dt t = checked_pair(karr, harr, 3, "");
    const std::vector<float>& weight = w();
    const da::config cfg = b ? da::with_budget(*b, span.count, base) : base;
    return dispatch(t, [&](auto tag) {
      using T = decltype(tag);
      const auto kv = view<T, 4>(karr, "dart.keys");
      const auto hv = view<T, 3>(harr, "dart.hidden");
      const index_t batch = hv.extent(0), k = da::keep_count(span.count, cfg);
      std::vector<token_index> out(static_cast<std::size_t>(batch * k)), counts(static_cast<std::size_t>(batch));
      std::vector<da::result> res(static_cast<std::size_t>(batch));
      {
        nb::gil_scoped_release rel;
        da::select(pol, kv, tokensel::feature_view<const T>(hv), weight_view(weight), span, cfg,
                   tokensel::selection_batch{tokensel::tensor_view<token_index, 2>(out.data(), {batch, k}), counts}, std::span<da::result>(res));
      }
      return wrap(nb::cast(to_indices(std::move(out), static_cast<std::size_t>(batch), static_cast<std::size_t>(k))), nb::cast(res));
    });
  }
  auto [x, r] = one(keys, hidden, span, w(), base, b, pol, "");
  return wrap(x, r);
}

}  // namespace

void bind_dart(nb::module_& parent) {
  nb::module_ m = parent.def_submodule("dart", "DART: pivots by key L1 norm, then the visual tokens least similar to each pivot.");
  nb::class_<da::config>(m, "config", "Budget: ratio (max(1, floor(n ratio))) or count; neither: ratio 0.222.")
      .def("__init__",
           [](da::config* c, std::optional<double> ratio, std::optional<index_t> count, index_t layer, index_t image_pivots, index_t text_pivots) {
             new (c) da::config{ratio, count, layer, image_pivots, text_pivots};
           },
           nb::kw_only(), nb::arg("ratio").none() = nb::none(), nb::arg("count").none() = nb::none(), nb::arg("layer") = 2,
           nb::arg("image_pivots") = 4, nb::arg("text_pivots") = 4)
      .def_rw("ratio", &da::config::ratio)
      .def_rw("count", &da::config::count)
      .def_rw("layer", &da::config::layer)
      .def_rw("image_pivots", &da::config::image_pivots)
      .def_rw("text_pivots", &da::config::text_pivots);
  m.attr("default_ratio") = da::default_ratio;
  nb::class_<da::result>(m, "result")
      .def_ro("count", &da::result::count)
      .def_ro("image_pivots", &da::result::image_pivots)
      .def_ro("text_pivots", &da::result::text_pivots);
  m.def("validate", [](const da::config& c) { da::validate(c); }, nb::arg("config"));
  m.def("keep_count", [](index_t n, const da::config& c) { return da::keep_count(n, c); }, nb::arg("n"), nb::arg("config") = da::config{},
        "Visual tokens kept of n.");
  m.def("with_budget", [](const tokensel::budget& b, index_t n, const da::config& base) { return da::with_budget(b, n, base); },
        nb::arg("budget"), nb::arg("n"), nb::arg("base") = da::config{}, "A fraction becomes the ratio, a count the count.");
  m.def("requirements", [](const da::config& c, const tokensel::model_shape& s) { return da::requirements(c, s); },
        nb::arg("config"), nb::arg("shape"));
  m.def("select", &select, nb::arg("keys").none(), nb::arg("hidden").none(), nb::arg("visual").none(), nb::arg("config") = nb::none(), nb::kw_only(),
        nb::arg("norm_weight").none() = nb::none(), nb::arg("keep").none() = nb::none(), nb::arg("threads") = 0,
        nb::arg("return_result") = false,
        "keys [kv_heads, L, d_head] of LLM layer K-1 (after RoPE), hidden [L, D] entering layer K (same dtype), visual = "
        "(start, count); norm_weight [D] the final RMSNorm weight (or None). Batches: keys [batch, kv_heads, L, d_head] and "
        "hidden [batch, L, D] with one span, or lists (visual one span or a list of spans). Returns ascending indices "
        "into the visual span (int32).");
}

}  // namespace tsp
