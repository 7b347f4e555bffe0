// tokensel CLI adapter: FastV (include/tokensel/fastv.hpp).
#include <tokensel/methods/fastv.hpp>

#include "cli.hpp"

namespace tokensel_cli {

/// --visual-start / --visual-count: the visual span among the LLM sequence's tokens.
tokensel::token_range visual_span(const options& o, const char* method) {
  const auto s0 = o.integer("visual-start");
  const auto n = o.integer("visual-count");
  if (!s0 || !n) {
    throw usage_error(std::string(method) + " needs the visual span: --visual-start S --visual-count N (LLaVA-1.5: "
                      "the position of the image placeholder and 576)");
  }
  if (*s0 < 0) throw usage_error("--visual-start = " + std::to_string(*s0) + ": must be >= 0");
  if (*n < 0) throw usage_error("--visual-count = " + std::to_string(*n) + ": must be >= 0");
  return {*s0, *n};
}

void reject_cls_flags(const options& o, const char* method) {
  if (o.has("skip-cls") || o.has("no-cls")) {
    throw usage_error(std::string("--skip-cls / --no-cls do not apply to ") + method +
                      " (LLM attention; the visual span is given by --visual-start/--visual-count)");
  }
}

method make_fastv() {
  namespace fv = tokensel::fastv;
  const fv::config d{};
  method m;
  m.name = "fastv";
  m.summary = "FastV: keep the visual tokens the last prompt token attends to most, from LLM layer K-1's "
              "attention [heads, L, L] (or [heads, 1, L]: the last query row)";
  m.params = {
      {"ratio", "R", fmt(d.ratio), "fraction of the visual tokens dropped, in [0, 1)"},
      {"prune-layer", "K", fmt(d.layer), "LLM layer K where pruning happens (scores from layer K-1)"},
      {"heads", "mean|sum|max", tokensel::to_string(d.heads), "head reduction"},
      {"visual-start", "S", "", "first visual token in the sequence (required)"},
      {"visual-count", "N", "", "number of visual tokens (required)"},
      {"layer", "L", "K-1", "layer of a [layers, heads, L, L] stack (negative: from the end)"},
  };
  m.run = [](context& ctx) -> json {
    const options& o = ctx.opts();
    fv::config cfg{};
    cfg.ratio = o.number("ratio", cfg.ratio);
    cfg.layer = o.integer("prune-layer", cfg.layer);
    cfg.heads = static_cast<tokensel::head_reduction>(o.choice("heads", {"mean", "sum", "max"}, static_cast<std::size_t>(cfg.heads)));
    fv::validate(cfg);
    reject_cls_flags(o, "fastv");
    const auto visual = visual_span(o, "fastv");
    json out;
    out["input"] = ctx.describe_attention();
    const index_t layer = ctx.pick_layer(cfg.layer - 1);
    const attention_input& a = ctx.attention();
    // The span against the input before anything is sized by it (a span of 10^9 on 80 tokens).
    tokensel::check_range(visual, a.tokens(), "fastv.visual");
    out["n"] = visual.count;
    out["config"] = {{"ratio", cfg.ratio}, {"prune_layer", cfg.layer}, {"heads", tokensel::to_string(cfg.heads)},
                     {"visual_start", visual.begin}, {"visual_count", visual.count}};
    if (a.is_stack()) out["layer"] = layer;
    std::vector<tokensel::token_index> kept(static_cast<std::size_t>(fv::keep_count(visual.count, cfg)));
    const json r = with_policy(ctx.threads(), [&](const auto& policy) {
      return with_dtype(a.type(), [&](auto tag) -> json {
        using T = typename decltype(tag)::type;
        const auto res = fv::select(policy, a.layer<T>(layer), visual, cfg, std::span(kept));
        return {{"count", res.count}, {"visual_mass", res.visual_mass}, {"kept_mass", res.kept_mass}};
      });
    });
    kept.resize(static_cast<std::size_t>(r["count"].get<index_t>()));
    out["count"] = kept.size();
    out["kept"] = indices(kept);  // indices into the visual span; sequence position = S + index
    json stats = r;
    stats.erase("count");
    out["stats"] = stats;
    return out;
  };
  return m;
}

}  // namespace tokensel_cli
