// tokensel CLI adapter: VisPruner (include/tokensel/methods/vispruner.hpp): the CLS attention row of
// the feature layer and the patch features.
#include <tokensel/methods/vispruner.hpp>

#include "cli.hpp"

namespace tokensel_cli {

method make_vispruner() {
  namespace vp = tokensel::vispruner;
  const vp::config d{};
  method m;
  m.name = "vispruner";
  m.summary = "VisPruner: important patches by CLS attention (head mean), the rest by repeated removal of the most "
              "duplicated (cosine of --features [N - 1, D], the patch features without CLS)";
  m.params = {
      {"ratio", "R", "", "keep max(1, floor(n R)) patches; R in (0, 1]"},
      {"count", "K", fmt(vp::default_count), "or keep exactly K patches"},
      {"important-ratio", "R", fmt(d.important_ratio), "share of the kept patches chosen by CLS attention, in [0, 1]"},
      {"rounds-drop", "D", fmt(d.rounds_drop), "patches dropped per duplicate-removal round"},
      {"layer", "L", "-2", "layer of a [layers, heads, N, N] stack (negative: from the end)"},
  };
  m.run = [](context& ctx) -> json {
    const options& o = ctx.opts();
    vp::config cfg{};
    cfg.ratio = o.number("ratio");
    cfg.count = o.integer("count");
    cfg.important_ratio = o.number("important-ratio", cfg.important_ratio);
    cfg.rounds_drop = o.integer("rounds-drop", cfg.rounds_drop);
    vp::validate(cfg);
    if (!ctx.skip_cls(true)) throw usage_error("--no-cls: vispruner needs the CLS token at index 0 (its attention row ranks the patches)");
    json out;
    out["input"] = ctx.describe_attention();
    const index_t layer = ctx.pick_layer(-2);
    const attention_input& a = ctx.attention();
    const auto& f = ctx.features();
    if (f.tensor.rank() != 2) throw usage_error("--features = " + f.source + ": expected [N - 1, D], got " + f.tensor.shape_string());
    out["input_features"] = {{"file", f.source}, {"shape", f.tensor.shape()}};
    const index_t n = a.tokens() > 0 ? a.tokens() - 1 : 0;
    out["n"] = n;
    out["config"] = {{"important_ratio", cfg.important_ratio}, {"rounds_drop", cfg.rounds_drop}};
    if (cfg.ratio) out["config"]["ratio"] = *cfg.ratio;
    else out["config"]["count"] = cfg.count.value_or(vp::default_count);
    if (a.is_stack()) out["layer"] = layer;
    std::vector<tokensel::token_index> kept(static_cast<std::size_t>(vp::keep_count(n, cfg)));
    const json r = with_policy(ctx.threads(), [&](const auto& policy) {
      return with_dtype(a.type(), [&](auto tag) -> json {
        using T = typename decltype(tag)::type;
        const auto res = vp::select(policy, a.layer<T>(layer), tokensel::matrix_view<const float>(f.tensor.view<float, 2>()), cfg, std::span(kept));
        return {{"count", res.count}, {"important", res.important}, {"diverse", res.diverse}, {"rounds", res.rounds}};
      });
    });
    out["count"] = r["count"];
    out["kept"] = indices(kept);  // patch indices (CLS excluded)
    json stats = r;
    stats.erase("count");
    out["stats"] = stats;
    return out;
  };
  return m;
}

}  // namespace tokensel_cli
