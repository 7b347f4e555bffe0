// tokensel CLI adapter: DART (include/tokensel/methods/dart.hpp): LLM layer K-1's keys and the
// hidden states entering layer K; no attention map.
#include <tokensel/methods/dart.hpp>

#include "cli.hpp"

namespace tokensel_cli {

tokensel::token_range visual_span(const options& o, const char* method);
void reject_cls_flags(const options& o, const char* method);

namespace {

/// --norm-weight FILE: the final RMSNorm weight [D] (f32), or an empty vector without the flag.
host_tensor norm_weight(const options& o, index_t d, json& out) {
  if (!o.has("norm-weight")) return host_tensor(dtype::f32, {0});
  loaded w = load_tensor(o.text("norm-weight", ""), o.text("norm-weight-tensor", ""), "norm-weight");
  if (w.tensor.rank() != 1 || w.tensor.extent(0) != d) {
    throw usage_error("--norm-weight = " + w.source + ": expected [" + std::to_string(d) + "] (the width of --features), got " +
                      w.tensor.shape_string());
  }
  if (w.tensor.type() != dtype::f32) w.tensor = w.tensor.converted(dtype::f32);
  out["input_norm_weight"] = {{"file", w.source}, {"shape", w.tensor.shape()}};
  return std::move(w.tensor);
}

tokensel::dart::config read_config(const options& o) {
  tokensel::dart::config cfg{};
  cfg.ratio = o.number("ratio");
  cfg.count = o.integer("count");
  cfg.layer = o.integer("prune-layer", cfg.layer);
  cfg.image_pivots = o.integer("image-pivots", cfg.image_pivots);
  cfg.text_pivots = o.integer("text-pivots", cfg.text_pivots);
  tokensel::dart::validate(cfg);
  return cfg;
}

}  // namespace

method make_dart() {
  namespace dt = tokensel::dart;
  const dt::config d{};
  method m;
  m.name = "dart";
  m.summary = "DART: pivots by key L1 norm (visual and text), then each pivot takes the visual tokens least similar to "
              "it (--keys [kv_heads, L, d_head] of LLM layer K-1, --features [L, D] the hidden states entering layer K; "
              "no attention)";
  m.params = {
      {"ratio", "R", fmt(dt::default_ratio), "keep max(1, floor(n R)) visual tokens; R in (0, 1]"},
      {"count", "K", "", "or keep exactly K visual tokens"},
      {"prune-layer", "K", fmt(d.layer), "LLM layer K where pruning happens (recorded; the inputs are layer K-1's)"},
      {"image-pivots", "P", fmt(d.image_pivots), "visual pivots (kept)"},
      {"text-pivots", "P", fmt(d.text_pivots), "text pivots (tokens after the visual span)"},
      {"visual-start", "S", "", "first visual token in the sequence (required)"},
      {"visual-count", "N", "", "number of visual tokens (required)"},
      {"norm-weight", "FILE", "", "the final RMSNorm weight [D] applied before the cosine (default: none)"},
      {"norm-weight-tensor", "NAME", "the only float tensor", "tensor of --norm-weight inside a .safetensors file"},
  };
  m.run = [](context& ctx) -> json {
    const options& o = ctx.opts();
    const dt::config cfg = read_config(o);
    reject_cls_flags(o, "dart");
    const auto visual = visual_span(o, "dart");
    const auto& k = ctx.keys();
    if (k.tensor.rank() != 3) throw usage_error("--keys = " + k.source + ": expected [kv_heads, L, d_head], got " + k.tensor.shape_string());
    const auto& f = ctx.features();
    if (f.tensor.rank() != 2) throw usage_error("--features = " + f.source + ": expected [L, D], got " + f.tensor.shape_string());
    // The span against the input before anything is sized by it.
    tokensel::check_range(visual, f.tensor.extent(0), "dart.visual");
    json out;
    out["input_keys"] = {{"file", k.source}, {"shape", k.tensor.shape()}};
    out["input_features"] = {{"file", f.source}, {"shape", f.tensor.shape()}};
    const host_tensor weight = norm_weight(o, f.tensor.extent(1), out);
    out["n"] = visual.count;
    out["config"] = {{"prune_layer", cfg.layer}, {"image_pivots", cfg.image_pivots}, {"text_pivots", cfg.text_pivots},
                     {"visual_start", visual.begin}, {"visual_count", visual.count}};
    if (cfg.count) out["config"]["count"] = *cfg.count;
    else out["config"]["ratio"] = cfg.ratio.value_or(dt::default_ratio);
    std::vector<tokensel::token_index> kept(static_cast<std::size_t>(dt::keep_count(visual.count, cfg)));
    const json r = with_policy(ctx.threads(), [&](const auto& policy) -> json {
      const auto res = dt::select(policy, k.tensor.view<float, 3>(), tokensel::matrix_view<const float>(f.tensor.view<float, 2>()),
                                  weight.view<float, 1>(), visual, cfg, std::span(kept));
      return {{"count", res.count}, {"image_pivots", res.image_pivots}, {"text_pivots", res.text_pivots}};
    });
    out["count"] = r["count"];
    out["kept"] = indices(kept);  // indices into the visual span; sequence position = S + index
    out["stats"] = {{"image_pivots", r["image_pivots"]}, {"text_pivots", r["text_pivots"]}};
    return out;
  };
  return m;
}

}  // namespace tokensel_cli
