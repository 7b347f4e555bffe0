// tokensel CLI adapter: FitPrune, one pruning layer (include/tokensel/fitprune.hpp and
// fitprune_json.hpp for recipes).
#include <tokensel/methods/fitprune.hpp>
#include <tokensel/io/fitprune_json.hpp>

#include "cli.hpp"

namespace tokensel_cli {

tokensel::token_range visual_span(const options& o, const char* method);
void reject_cls_flags(const options& o, const char* method);

method make_fitprune() {
  namespace fit = tokensel::fitprune;
  const fit::config d{};
  method m;
  m.name = "fitprune";
  m.summary = "FitPrune, one LLM layer: drop the visual tokens with the smallest cross x self attention mass "
              "from that layer's prefill attention [heads, L, L]; the count comes from --drop or a --recipe";
  m.params = {
      {"drop", "K", "", "visual tokens to drop at this layer (or give --recipe)"},
      {"recipe", "FILE", "", "FitPrune recipe JSON (tokensel.fitprune.recipe); drop = floor(k_l n / n_fit)"},
      {"layer", "L", "", "model layer of the attention: picks the stack entry and the recipe's k_l"},
      {"heads", "mean|sum|max", tokensel::to_string(d.heads), "head reduction"},
      {"visual-start", "S", "", "first visual token in the sequence (required)"},
      {"visual-count", "N", "", "number of visual tokens (required)"},
  };
  m.run = [](context& ctx) -> json {
    const options& o = ctx.opts();
    fit::config cfg{};
    cfg.heads = static_cast<tokensel::head_reduction>(o.choice("heads", {"mean", "sum", "max"}, static_cast<std::size_t>(cfg.heads)));
    fit::validate(cfg);
    reject_cls_flags(o, "fitprune");
    const auto visual = visual_span(o, "fitprune");
    if (o.has("drop") == o.has("recipe")) throw usage_error("fitprune needs exactly one of --drop K and --recipe FILE");

    json out;
    out["input"] = ctx.describe_attention();
    const attention_input& a = ctx.attention();
    // The span against the input before anything is sized by it (a span of 10^9 on 80 tokens).
    tokensel::check_range(visual, a.tokens(), "fitprune.visual");
    const auto model_layer = o.integer("layer");
    index_t stack_index = 0;
    if (a.is_stack()) {
      if (!model_layer) throw usage_error("--layer L is required with a [layers, heads, L, L] stack");
      stack_index = ctx.pick_layer(*model_layer);
    }
    index_t drop = 0;
    json config = {{"heads", tokensel::to_string(cfg.heads)}, {"visual_start", visual.begin}, {"visual_count", visual.count}};
    json recipe_info;
    if (o.has("recipe")) {
      if (!model_layer) throw usage_error("--recipe needs --layer L (the model layer of the attention)");
      const fit::recipe r = fit::load_recipe(o.text("recipe", ""));
      drop = fit::drops_at(r, *model_layer, visual.count);
      config["recipe"] = o.text("recipe", "");
      recipe_info = {{"reduction", r.reduction},
                     {"fitted_visual_tokens", r.geometry.visual_tokens},
                     {"keep_count_end", fit::keep_count(visual.count, r)},
                     {"flops_ratio", fit::flops_ratio(r, visual.count)}};
    } else {
      drop = *o.integer("drop");
    }
    config["drop"] = drop;
    if (model_layer) config["layer"] = *model_layer;
    out["n"] = visual.count;
    out["config"] = config;
    if (drop < 0 || drop > visual.count) {
      throw usage_error("--drop = " + std::to_string(drop) + ": must be in [0, " + std::to_string(visual.count) + "]");
    }
    std::vector<tokensel::token_index> kept(static_cast<std::size_t>(visual.count - drop));
    const json r = with_policy(ctx.threads(), [&](const auto& policy) {
      return with_dtype(a.type(), [&](auto tag) -> json {
        using T = typename decltype(tag)::type;
        const auto res = fit::prune_layer(policy, a.layer<T>(stack_index), visual, drop, cfg, std::span(kept));
        return {{"count", res.count}, {"dropped", res.dropped}, {"cross_mass", res.cross_mass}, {"self_mass", res.self_mass}};
      });
    });
    kept.resize(static_cast<std::size_t>(r["count"].get<index_t>()));
    out["count"] = kept.size();
    out["kept"] = indices(kept);  // indices into the visual span; sequence position = S + index
    json stats = r;
    stats.erase("count");
    if (!recipe_info.is_null()) stats["recipe"] = recipe_info;
    out["stats"] = stats;
    return out;
  };
  return m;
}

}  // namespace tokensel_cli
