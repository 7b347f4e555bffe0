// tokensel CLI adapter: LLaVA-PruMerge / PruMerge+ (include/tokensel/prumerge.hpp).
#include <tokensel/methods/prumerge.hpp>

#include "cli.hpp"

namespace tokensel_cli {

namespace {

namespace pm = tokensel::prumerge;

pm::config read_config(const options& o) {
  pm::config cfg{};
  cfg.mode = static_cast<pm::mode>(o.choice("mode", {"fixed", "parity"}, static_cast<std::size_t>(cfg.mode)));
  cfg.plus = o.flag("plus");
  cfg.neighbours = o.integer("neighbours", cfg.neighbours);
  cfg.iqr_multiplier = o.number("iqr-multiplier", cfg.iqr_multiplier);
  cfg.merge = o.choice("merge", {"false", "true"}, cfg.merge ? 1 : 0) == 1;
  cfg.extra_token = o.choice("extra-token", {"false", "true"}, cfg.extra_token ? 1 : 0) == 1;
  cfg.scale = o.number("scale", cfg.scale);
  pm::validate(cfg);
  return cfg;
}

/// One run of the adapter: the selection from --queries/--keys or from --attn, with or without
/// --features to merge; builds the JSON report in `out` (keys in the order they are set).
struct prumerge_run {
  prumerge_run(context& c, const pm::config& conf) : ctx(c), o(c.opts()), cfg(conf) {}

  context& ctx;
  const options& o;
  const pm::config& cfg;
  json config;
  json out;
  index_t n = 0;
  std::vector<tokensel::token_index> kept;
  std::optional<host_tensor> merged;
  json stats;

  // Features: [n, d] patches, or [n + 1, d] with the CLS row (dropped).
  std::optional<tokensel::matrix_view<const float>> patch_features() {
    if (!o.has("features")) return std::nullopt;
    const auto& f = ctx.features();
    if (f.tensor.rank() != 2 || (f.tensor.extent(0) != n && f.tensor.extent(0) != n + 1)) {
      throw usage_error("--features = " + f.source + ": expected [" + std::to_string(n) + ", D] or [" +
                        std::to_string(n + 1) + ", D] (with CLS), got " + f.tensor.shape_string());
    }
    auto v = f.tensor.view<float, 2>();
    const bool with_cls = f.tensor.extent(0) == n + 1;
    out["input_features"] = {{"file", f.source}, {"shape", f.tensor.shape()}, {"cls_row_dropped", with_cls}};
    return tokensel::matrix_view<const float>(with_cls ? v.slice(0, 1, n, "features") : v);
  }

  void record(const pm::result& r) {
    stats = {{"outliers", r.outliers}, {"grid", r.grid}, {"stride", r.stride}, {"neighbours", r.neighbours},
             {"extra_token", r.extra_token},
             {"iqr", {{"q1", r.iqr.q1}, {"q3", r.iqr.q3}, {"upper_fence", r.iqr.upper_fence}}}};
    kept.resize(static_cast<std::size_t>(r.count));
  }

  /// The merged rows of r (the first r.rows() of rows [max_rows, d]) and its statistics.
  void record_merged(const host_tensor& rows, const pm::result& r) {
    merged = host_tensor(dtype::f32, {r.rows(), rows.extent(1)});
    std::copy_n(rows.data<float>().begin(), merged->size(), merged->data<float>().begin());
    record(r);
  }

  /// The official input: the last layer's queries and keys.
  void from_qk() {
    loaded q = load_tensor(o.text("queries", ""), o.text("queries-tensor", ""), "queries");
    if (q.tensor.type() != dtype::f32) q.tensor = q.tensor.converted(dtype::f32);
    const auto& k = ctx.keys();
    if (q.tensor.rank() != 2 || k.tensor.rank() != 2) {
      throw usage_error("--queries/--keys: expected [N, D] matrices, got " + q.tensor.shape_string() + " and " +
                        k.tensor.shape_string());
    }
    out["input"] = {{"queries", q.source}, {"keys", k.source}, {"shape", k.tensor.shape()}};
    n = k.tensor.extent(0) - 1;
    if (n < 0) throw usage_error("--keys = " + k.source + ": no tokens");
    out["n"] = n;
    out["config"] = config;
    kept.resize(static_cast<std::size_t>(pm::max_count(n, cfg)));
    const auto qv = tokensel::matrix_view<const float>(q.tensor.view<float, 2>());
    const auto kv = tokensel::matrix_view<const float>(k.tensor.view<float, 2>());
    with_policy(ctx.threads(), [&](const auto& policy) -> json {
      if (auto f = patch_features()) {
        host_tensor rows(dtype::f32, {pm::max_rows(n, cfg), f->extent(1)});
        record_merged(rows, pm::select(policy, qv, kv, *f, cfg, std::span(kept), rows.view<float, 2>()));
      } else {
        record(pm::select(policy, qv, kv, cfg, std::span(kept)));
      }
      return nullptr;
    });
  }

  /// The CLS row over the patches of an --attn layer, head mean (exact for a single 1024-wide head).
  host_tensor cls_head_mean(const attention_input& a, index_t layer) const {
    host_tensor cls(dtype::f32, {n});
    with_dtype(a.type(), [&](auto tag) -> json {
      using T = typename decltype(tag)::type;
      const auto v = a.layer<T>(layer);
      if (v.extent(0) < 1 || v.extent(1) < 1) throw usage_error("--attn: no heads or no query rows");
      auto c = cls.data<float>();
      for (index_t j = 0; j < n; ++j) {
        float s = 0.0f;
        for (index_t h = 0; h < v.extent(0); ++h) s += tokensel::to_float(v(h, 0, j + 1));
        c[static_cast<std::size_t>(j)] = s / static_cast<float>(v.extent(0));
      }
      return nullptr;
    });
    return cls;
  }

  /// --keys [n, D] or [n + 1, D] (the CLS row dropped), for merging after an --attn selection.
  tokensel::matrix_view<const float> patch_keys() const {
    const auto& k = ctx.keys();
    if (k.tensor.rank() != 2 || (k.tensor.extent(0) != n && k.tensor.extent(0) != n + 1)) {
      throw usage_error("--keys = " + k.source + ": expected [" + std::to_string(n) + ", D] or [" +
                        std::to_string(n + 1) + ", D] (with CLS), got " + k.tensor.shape_string());
    }
    auto kv = k.tensor.view<float, 2>();
    if (kv.extent(0) == n + 1) kv = kv.slice(0, 1, n, "keys");
    return tokensel::matrix_view<const float>(kv);
  }

  /// From an --attn layer's CLS row (head mean).
  void from_attention() {
    out["input"] = ctx.describe_attention();
    const index_t layer = ctx.pick_layer(-1);
    const attention_input& a = ctx.attention();
    n = a.tokens() - 1;
    if (n < 0) throw usage_error("--attn: no tokens");
    out["n"] = n;
    out["config"] = config;
    if (a.is_stack()) out["layer"] = layer;
    const host_tensor cls = cls_head_mean(a, layer);
    out["config"]["attention_heads_averaged"] = a.shape()[a.shape().size() - 3];
    kept.resize(static_cast<std::size_t>(pm::max_count(n, cfg)));
    const auto av = tokensel::vector_view<const float>(cls.view<float, 1>());
    with_policy(ctx.threads(), [&](const auto& policy) -> json {
      const auto f = patch_features();
      if (f && cfg.merge) {
        const auto kv = patch_keys();
        host_tensor rows(dtype::f32, {pm::max_rows(n, cfg), f->extent(1)});
        record_merged(rows, pm::select_from_attention(policy, av, kv, *f, cfg, std::span(kept), rows.view<float, 2>()));
      } else if (f) {
        // merge = false: the kept rows are gathered unchanged; keys are not needed.
        host_tensor no_keys(dtype::f32, {n, 0});
        host_tensor rows(dtype::f32, {pm::max_rows(n, cfg), f->extent(1)});
        record_merged(rows, pm::select_from_attention(policy, av,
                                                      tokensel::matrix_view<const float>(no_keys.view<float, 2>()), *f,
                                                      cfg, std::span(kept), rows.view<float, 2>()));
      } else {
        record(pm::select_from_attention(policy, av, cfg, std::span(kept)));
      }
      return nullptr;
    });
  }
};

json run_prumerge(context& ctx) {
  const options& o = ctx.opts();
  const pm::config cfg = read_config(o);
  if (!ctx.skip_cls(true)) throw usage_error("--no-cls: prumerge needs the CLS token at index 0");
  const bool qk = o.has("queries");
  if (qk == ctx.has_attention()) {
    throw usage_error("prumerge reads either --queries and --keys (official) or --attn: give exactly one");
  }
  if (o.has("out") && !o.has("features")) throw usage_error("--out needs --features (the rows to merge)");

  prumerge_run run(ctx, cfg);
  run.config = {{"mode", pm::to_string(cfg.mode)}, {"plus", cfg.plus}, {"neighbours", cfg.neighbours},
                {"iqr_multiplier", cfg.iqr_multiplier}, {"merge", cfg.merge}, {"extra_token", cfg.extra_token},
                {"scale", cfg.scale}};
  if (qk) {
    run.from_qk();
  } else {
    run.from_attention();
  }
  json& out = run.out;
  out["count"] = run.kept.size();
  out["kept"] = indices(run.kept);
  out["stats"] = run.stats;
  if (run.merged) {
    out["stats"]["rows"] = run.merged->extent(0);
    out["output"] = write_output(o, *run.merged);
  }
  return std::move(out);
}

}  // namespace

method make_prumerge() {
  const pm::config d{};
  method m;
  m.name = "prumerge";
  m.summary = "LLaVA-PruMerge(+): IQR outliers of the CLS attention of the last layer, optional merge. Exact "
              "(official) input: --queries and --keys [N, D] of the last layer; or --attn (CLS row, head mean)";
  m.params = {
      {"queries", "FILE", "", "last-layer queries [N, D] or [1, D] (row 0 = CLS); with --keys [N, D]"},
      {"queries-tensor", "NAME", "the only float tensor", "tensor of --queries inside a .safetensors file"},
      {"mode", "fixed|parity", pm::to_string(d.mode), "ascending indices, or the official order"},
      {"plus", "", "off", "PruMerge+: add the spatially uniform stride grid"},
      {"neighbours", "K", fmt(d.neighbours), "nearest tokens merged into each kept token"},
      {"iqr-multiplier", "C", fmt(d.iqr_multiplier), "fence Q3 + C (Q3 - Q1), strict >"},
      {"merge", "true|false", fmt(d.merge), "merge neighbours into the kept rows (with --features)"},
      {"extra-token", "true|false", fmt(d.extra_token), "append the extra token of the pruned rest (with merge)"},
      {"scale", "S", fmt(d.scale), "softmax scale of Q K^T (0: 1/sqrt(D))"},
      {"layer", "L", "-1", "layer of a [layers, heads, N, N] --attn stack (negative: from the end)"},
  };
  m.run = run_prumerge;
  return m;
}

}  // namespace tokensel_cli
