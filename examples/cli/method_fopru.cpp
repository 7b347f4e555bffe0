// tokensel CLI adapter: FoPru (include/tokensel/fopru.hpp).
#include <tokensel/methods/fopru.hpp>

#include "cli.hpp"

namespace tokensel_cli {

method make_fopru() {
  const tokensel::fopru::config d{};
  method m;
  m.name = "fopru";
  m.summary = "FoPru: variance-axis significance of one layer's head-mean patch attention (rank or row)";
  m.params = {
      {"ratio", "R", fmt(d.ratio), "retention ratio in (0, 1]"},
      {"strategy", "rank|row", tokensel::fopru::to_string(d.strategy), "keep top tokens, or whole grid rows"},
      {"heads", "mean|sum|max", tokensel::to_string(d.heads), "head reduction"},
      {"grid", "RxC", "square", "patch grid for --strategy row"},
      {"row-score", "sum|mean", d.row_score == tokensel::row_reduction::sum ? "sum" : "mean",
       "row aggregation for --strategy row"},
      {"layer", "L", "-2", "layer of a [layers, heads, N, N] stack (negative: from the end; -2 = penultimate)"},
  };
  m.run = [](context& ctx) -> json {
    const options& o = ctx.opts();
    tokensel::fopru::config cfg{};
    cfg.ratio = o.number("ratio", cfg.ratio);
    cfg.strategy = static_cast<tokensel::fopru::strategy>(o.choice("strategy", {"rank", "row"}, static_cast<std::size_t>(cfg.strategy)));
    cfg.heads = static_cast<tokensel::head_reduction>(o.choice("heads", {"mean", "sum", "max"}, static_cast<std::size_t>(cfg.heads)));
    cfg.grid = o.grid("grid");
    cfg.row_score = static_cast<tokensel::row_reduction>(o.choice("row-score", {"sum", "mean"}, static_cast<std::size_t>(cfg.row_score)));
    cfg.skip_cls = ctx.skip_cls(cfg.skip_cls);
    tokensel::fopru::validate(cfg);

    const index_t layer = ctx.pick_layer(-2);
    const attention_input& a = ctx.attention();
    const index_t n = cfg.skip_cls ? a.tokens() - 1 : a.tokens();
    std::vector<tokensel::token_index> kept(static_cast<std::size_t>(std::max<index_t>(
        0, tokensel::fopru::keep_count(std::max<index_t>(n, 0), cfg))));

    json out;
    out["input"] = ctx.describe_attention();
    out["n"] = n;
    out["config"] = {{"ratio", cfg.ratio},
                     {"strategy", tokensel::fopru::to_string(cfg.strategy)},
                     {"heads", tokensel::to_string(cfg.heads)},
                     {"skip_cls", cfg.skip_cls},
                     {"row_score", cfg.row_score == tokensel::row_reduction::sum ? "sum" : "mean"}};
    if (cfg.grid) out["config"]["grid"] = fmt(*cfg.grid);
    if (a.is_stack()) out["layer"] = layer;
    const auto r = with_policy(ctx.threads(), [&](const auto& policy) {
      return with_dtype(a.type(), [&](auto tag) {
        using T = typename decltype(tag)::type;
        const auto res = tokensel::fopru::select(policy, a.layer<T>(layer), cfg, std::span(kept));
        json s = {{"axis", tokensel::to_string(res.axis)},
                  {"row_variance", res.row_variance},
                  {"column_variance", res.column_variance},
                  {"count", res.count}};
        if (cfg.strategy == tokensel::fopru::strategy::row) s["rows_kept"] = res.rows_kept;
        return s;
      });
    });
    kept.resize(static_cast<std::size_t>(r["count"].get<index_t>()));
    out["count"] = kept.size();
    out["kept"] = indices(kept);
    json stats = r;
    stats.erase("count");
    out["stats"] = stats;
    return out;
  };
  return m;
}

}  // namespace tokensel_cli
