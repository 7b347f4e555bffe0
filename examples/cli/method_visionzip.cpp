// tokensel CLI adapter: VisionZip (include/tokensel/visionzip.hpp).
#include <tokensel/methods/visionzip.hpp>

#include "cli.hpp"

namespace tokensel_cli {

method make_visionzip() {
  namespace vz = tokensel::visionzip;
  const vz::config d{};
  method m;
  m.name = "visionzip";
  m.summary = "VisionZip: dominant tokens by CLS attention summed over heads, plus contextual tokens merged "
              "by key similarity (needs --keys [heads, N, d_head] when --contextual > 0; --features [N, D] for merged rows)";
  m.params = {
      {"dominant", "K", fmt(d.dominant), "dominant tokens, CLS included"},
      {"contextual", "K", fmt(d.contextual), "contextual (merged) tokens"},
      {"layer", "L", "-2", "layer of a [layers, heads, N, N] stack (negative: from the end)"},
  };
  m.run = [](context& ctx) -> json {
    const options& o = ctx.opts();
    vz::config cfg{};
    cfg.dominant = o.integer("dominant", cfg.dominant);
    cfg.contextual = o.integer("contextual", cfg.contextual);
    vz::validate(cfg);
    if (!ctx.skip_cls(true)) throw usage_error("--no-cls: visionzip needs the CLS token at index 0");

    json out;
    out["input"] = ctx.describe_attention();
    const index_t layer = ctx.pick_layer(-2);
    const attention_input& a = ctx.attention();
    const index_t n = a.tokens();

    // Keys [heads, N, d_head] (only read when contextual > 0); features [N, D] (optional: without
    // them the output rows have width 0 and only the indices are reported).
    host_tensor no_keys(dtype::f32, {0, 0, 0});
    const host_tensor* keys = &no_keys;
    if (cfg.contextual > 0 || o.has("keys")) {
      const auto& k = ctx.keys();
      if (k.tensor.rank() != 3) {
        throw usage_error("--keys = " + k.source + ": expected [heads, N, d_head], got " + k.tensor.shape_string());
      }
      keys = &k.tensor;
      out["input_keys"] = {{"file", k.source}, {"shape", k.tensor.shape()}};
    }
    host_tensor no_features(dtype::f32, {n, 0});
    const host_tensor* hidden = &no_features;
    if (o.has("features")) {
      const auto& f = ctx.features();
      if (f.tensor.rank() != 2) throw usage_error("--features = " + f.source + ": expected [N, D], got " + f.tensor.shape_string());
      hidden = &f.tensor;
      out["input_features"] = {{"file", f.source}, {"shape", f.tensor.shape()}};
    } else if (o.has("out")) {
      throw usage_error("--out needs --features (the rows to merge)");
    }
    out["n"] = n;
    out["config"] = {{"dominant", cfg.dominant}, {"contextual", cfg.contextual}};
    if (a.is_stack()) out["layer"] = layer;

    const index_t k = vz::keep_count(n, cfg);
    std::vector<tokensel::token_index> kept(static_cast<std::size_t>(k));
    host_tensor rows(dtype::f32, {k, hidden->extent(1)});
    const json r = with_policy(ctx.threads(), [&](const auto& policy) {
      return with_dtype(a.type(), [&](auto tag) -> json {
        using T = typename decltype(tag)::type;
        const auto res = vz::select(policy, a.layer<T>(layer), keys->view<float, 3>(),
                                    tokensel::matrix_view<const float>(hidden->view<float, 2>()), cfg, std::span(kept),
                                    rows.view<float, 2>());
        return {{"count", res.count}, {"dominant", res.dominant}, {"contextual", res.contextual}, {"merged", res.merged}};
      });
    });
    const auto count = static_cast<std::size_t>(r["count"].get<index_t>());
    kept.resize(count);
    out["count"] = count;
    // Full-sequence indices (CLS = 0): the dominant tokens ascending, then the contextual targets.
    out["kept"] = indices(kept);
    json stats = r;
    stats.erase("count");
    stats["note"] = "kept are full-sequence indices (CLS = 0): dominant first, then contextual anchors";
    out["stats"] = stats;
    if (o.has("features")) out["output"] = write_output(o, rows);
    return out;
  };
  return m;
}

}  // namespace tokensel_cli
