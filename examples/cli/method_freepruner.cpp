// tokensel CLI adapter: freePruner (include/tokensel/freepruner.hpp).
#include <tokensel/methods/freepruner.hpp>

#include "cli.hpp"

namespace tokensel_cli {

namespace {

namespace fp = tokensel::freepruner;

fp::config read_config(context& ctx) {
  const options& o = ctx.opts();
  fp::config cfg{};
  cfg.heads = static_cast<tokensel::head_reduction>(o.choice("heads", {"mean", "sum", "max"}, static_cast<std::size_t>(cfg.heads)));
  cfg.first_layer = o.integer("first-layer", cfg.first_layer);
  cfg.last_layer = o.integer("last-layer", cfg.last_layer);
  cfg.k_pivotal = o.integer("k-pivotal", cfg.k_pivotal);
  cfg.complementary_layer = o.integer("complementary-layer", cfg.complementary_layer);
  cfg.iqr_multiplier = o.number("iqr-multiplier", cfg.iqr_multiplier);
  cfg.mode = static_cast<fp::mode>(o.choice("mode", {"adaptive", "fixed"}, static_cast<std::size_t>(cfg.mode)));
  cfg.budget = o.integer("budget", cfg.budget);
  cfg.skip_cls = ctx.skip_cls(cfg.skip_cls);
  fp::validate(cfg);
  return cfg;
}

/// The counts of the selection (less "count") and what inspection recorded.
json stats_of(json r, const fp::inspection& info) {
  json stats = std::move(r);
  stats.erase("count");
  json per_layer = json::object();
  for (std::size_t k = 0; k < info.pivotal_per_layer.size(); ++k) {
    per_layer[std::to_string(info.first_layer + static_cast<index_t>(k))] = indices(info.pivotal_per_layer[k]);
  }
  stats["pivotal_per_layer"] = per_layer;
  stats["pivotal_set"] = indices(info.pivotal);
  stats["complementary_set"] = indices(info.complementary);
  json fences = json::array();
  for (const auto& f : info.fences) {
    fences.push_back({{"token", f.token}, {"outliers", f.outliers}, {"q1", f.q1}, {"q3", f.q3}, {"upper_fence", f.upper_fence}});
  }
  stats["fences"] = fences;
  return stats;
}

json run_freepruner(context& ctx) {
  const options& o = ctx.opts();
  const fp::config cfg = read_config(ctx);
  const index_t offset = o.integer("layer-offset", 0);
  if (offset < 0) throw usage_error("--layer-offset = " + std::to_string(offset) + ": must be >= 0");

  json out;
  out["input"] = ctx.describe_attention();
  const attention_input& a = ctx.attention();
  if (!a.is_stack()) {
    throw usage_error("freepruner reads many layers: give --attn a [layers, heads, N, N] tensor or use --layers-file (" +
                      a.source() + " is one layer)");
  }
  const index_t n = cfg.skip_cls ? a.tokens() - 1 : a.tokens();
  out["n"] = n;
  out["config"] = {{"heads", tokensel::to_string(cfg.heads)},
                   {"first_layer", cfg.first_layer},
                   {"last_layer", cfg.last_layer},
                   {"k_pivotal", cfg.k_pivotal},
                   {"complementary_layer", cfg.complementary_layer},
                   {"iqr_multiplier", cfg.iqr_multiplier},
                   {"mode", fp::to_string(cfg.mode)},
                   {"budget", cfg.budget},
                   {"skip_cls", cfg.skip_cls},
                   {"layer_offset", offset}};
  std::vector<tokensel::token_index> kept(static_cast<std::size_t>(fp::max_count(std::max<index_t>(n, 0), cfg)));
  fp::inspection info;
  const json r = with_policy(ctx.threads(), [&](const auto& policy) {
    return with_dtype(a.type(), [&](auto tag) -> json {
      using T = typename decltype(tag)::type;
      std::vector<tokensel::head_attention_view<T>> layers;
      for (index_t l = 0; l < a.layer_count(); ++l) layers.push_back(a.layer<T>(l));
      const fp::layer_stack<T> stack{std::span<const tokensel::head_attention_view<T>>(layers), offset};
      const auto res = fp::select(policy, stack, cfg, std::span(kept), info);
      return {{"count", res.count},
              {"pivotal", res.pivotal},
              {"complementary", res.complementary},
              {"candidates", res.candidates},
              {"dropped", res.dropped},
              {"filled", res.filled}};
    });
  });
  kept.resize(static_cast<std::size_t>(r["count"].get<index_t>()));
  out["count"] = kept.size();
  out["kept"] = indices(kept);
  out["stats"] = stats_of(r, info);
  return out;
}

}  // namespace

method make_freepruner() {
  const fp::config d{};
  method m;
  m.name = "freepruner";
  m.summary = "freePruner: pivotal tokens by contribution degree over a range of layers, plus IQR "
              "complementary tokens at one layer (needs a [layers, heads, N, N] stack)";
  m.params = {
      {"heads", "mean|sum|max", tokensel::to_string(d.heads), "head reduction"},
      {"first-layer", "L", fmt(d.first_layer), "first layer of the pivotal range (model layer index)"},
      {"last-layer", "L", fmt(d.last_layer), "last layer of the pivotal range (inclusive)"},
      {"k-pivotal", "K", fmt(d.k_pivotal), "pivotal tokens per layer"},
      {"complementary-layer", "L", fmt(d.complementary_layer), "layer of the complementary (IQR) stage"},
      {"iqr-multiplier", "C", fmt(d.iqr_multiplier), "fence Q3 + C (Q3 - Q1), strict >"},
      {"mode", "adaptive|fixed", fp::to_string(d.mode), "adaptive count, or a fixed budget"},
      {"budget", "B", fmt(d.budget), "tokens kept in fixed mode (>= 1); must stay 0 in adaptive mode"},
      {"layer-offset", "L", "0", "model layer of the first layer in the stack"},
  };
  m.run = run_freepruner;
  return m;
}

}  // namespace tokensel_cli
