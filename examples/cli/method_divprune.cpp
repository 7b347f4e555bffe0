// tokensel CLI adapter: DivPrune (include/tokensel/methods/divprune.hpp): features only.
#include <tokensel/methods/divprune.hpp>

#include "cli.hpp"

namespace tokensel_cli {

method make_divprune() {
  namespace dp = tokensel::divprune;
  method m;
  m.name = "divprune";
  m.summary = "DivPrune: greedy max-min cosine diversity over the token features (--features [n, D], e.g. the "
              "projected image features; no attention)";
  m.params = {
      {"ratio", "R", fmt(dp::default_ratio), "keep round(n R) tokens (half to even), at least 1; R in (0, 1]"},
      {"count", "K", "", "or keep exactly K tokens"},
  };
  m.run = [](context& ctx) -> json {
    const options& o = ctx.opts();
    dp::config cfg{};
    cfg.ratio = o.number("ratio");
    cfg.count = o.integer("count");
    dp::validate(cfg);
    const auto& f = ctx.features();
    if (f.tensor.rank() != 2) throw usage_error("--features = " + f.source + ": expected [n, D], got " + f.tensor.shape_string());
    const index_t n = f.tensor.extent(0);
    json out;
    out["input_features"] = {{"file", f.source}, {"shape", f.tensor.shape()}};
    out["n"] = n;
    if (cfg.count) out["config"] = {{"count", *cfg.count}};
    else out["config"] = {{"ratio", cfg.ratio.value_or(dp::default_ratio)}};
    std::vector<tokensel::token_index> kept(static_cast<std::size_t>(dp::keep_count(n, cfg)));
    const json r = with_policy(ctx.threads(), [&](const auto& policy) -> json {
      const auto res = dp::select(policy, tokensel::matrix_view<const float>(f.tensor.view<float, 2>()), cfg, std::span(kept));
      return {{"count", res.count}, {"min_distance", res.min_distance}};
    });
    out["count"] = r["count"];
    out["kept"] = indices(kept);
    out["stats"] = {{"min_distance", r["min_distance"]}};
    return out;
  };
  return m;
}

}  // namespace tokensel_cli
