// tokensel CLI adapters: the baselines random, uniform and pool (include/tokensel/baselines.hpp).
#include <cmath>

#include <tokensel/methods/baselines.hpp>

#include "cli.hpp"

namespace tokensel_cli {

namespace {

/// Token count of a baseline: --n, else the patches of --attn (CLS dropped unless --no-cls), else
/// the rows of --features (CLS dropped only with --skip-cls).
index_t baseline_n(context& ctx, json& out) {
  const options& o = ctx.opts();
  if (const auto n = o.integer("n")) {
    if (ctx.has_attention() || o.has("features")) throw usage_error("--n and an input file are exclusive: give one");
    if (o.has("skip-cls") || o.has("no-cls")) throw usage_error("--skip-cls / --no-cls need an input file, not --n");
    out["source"] = "--n";
    return *n;
  }
  if (ctx.has_attention()) {
    const bool skip = ctx.skip_cls(true);
    out["input"] = ctx.describe_attention();
    return ctx.attention().tokens() - (skip ? 1 : 0);
  }
  if (o.has("features")) {
    const auto& f = ctx.features();
    if (f.tensor.rank() != 2) throw usage_error("--features = " + f.source + ": expected [N, D], got " + f.tensor.shape_string());
    out["input"] = {{"file", f.source}, {"shape", f.tensor.shape()}};
    return f.tensor.extent(0) - (ctx.skip_cls(false) ? 1 : 0);
  }
  throw usage_error("give the token count with --n N, or an input (--attn or --features) to take it from");
}

/// --grid, else the square grid of n when n is a perfect square, else none.
std::optional<tokensel::token_grid> baseline_grid(const options& o, index_t n) {
  if (auto g = o.grid("grid")) return g;
  if (n <= 0) return std::nullopt;
  const auto side = static_cast<index_t>(std::llround(std::sqrt(static_cast<double>(n))));
  if (side * side == n) return tokensel::token_grid{side, side};
  return std::nullopt;
}

method make_random() {
  const tokensel::baselines::random::config d{};
  method m;
  m.name = "random";
  m.summary = "baseline: tokens drawn uniformly without replacement (seeded, platform-independent)";
  m.params = {
      {"ratio", "R", "", "keep max(1, floor(n R)) tokens, R in (0, 1] (give --ratio or --count)"},
      {"count", "K", "", "keep exactly K tokens"},
      {"seed", "S", std::to_string(d.seed), "generator seed"},
      {"n", "N", "", "token count, when no input file is given"},
  };
  m.run = [](context& ctx) -> json {
    const options& o = ctx.opts();
    tokensel::baselines::random::config cfg{};
    cfg.ratio = o.number("ratio");
    cfg.count = o.integer("count");
    cfg.seed = o.unsigned_integer("seed", cfg.seed);
    tokensel::baselines::random::validate(cfg);
    json out;
    const index_t n = baseline_n(ctx, out);
    std::vector<tokensel::token_index> kept(static_cast<std::size_t>(tokensel::baselines::random::keep_count(n, cfg)));
    const auto r = tokensel::baselines::random::select(tokensel::seq, n, cfg, std::span(kept));
    kept.resize(static_cast<std::size_t>(r.count));
    out["n"] = n;
    out["config"] = {{"seed", cfg.seed}};
    if (cfg.ratio) out["config"]["ratio"] = *cfg.ratio;
    if (cfg.count) out["config"]["count"] = *cfg.count;
    out["count"] = kept.size();
    out["kept"] = indices(kept);
    out["stats"] = json::object();
    return out;
  };
  return m;
}

method make_uniform() {
  method m;
  m.name = "uniform";
  m.summary = "baseline: tokens evenly spread over the patch grid (or the sequence)";
  m.params = {
      {"ratio", "R", "", "keep max(1, floor(n R)) tokens, R in (0, 1] (give --ratio or --count)"},
      {"count", "K", "", "keep exactly K tokens"},
      {"grid", "RxC", "square if n is, else 1xn", "token grid"},
      {"n", "N", "", "token count, when no input file is given"},
  };
  m.run = [](context& ctx) -> json {
    const options& o = ctx.opts();
    tokensel::baselines::uniform::config cfg{};
    cfg.ratio = o.number("ratio");
    cfg.count = o.integer("count");
    tokensel::baselines::uniform::validate(cfg);
    json out;
    const index_t n = baseline_n(ctx, out);
    if (n < 0) throw usage_error("the input has no tokens after the CLS token");
    const auto grid = baseline_grid(o, n);
    if (grid) tokensel::check_grid(*grid, n, "uniform.grid");
    std::vector<tokensel::token_index> kept(static_cast<std::size_t>(tokensel::baselines::uniform::keep_count(n, cfg)));
    const auto r = grid ? tokensel::baselines::uniform::select(tokensel::seq, *grid, cfg, std::span(kept))
                        : tokensel::baselines::uniform::select(tokensel::seq, n, cfg, std::span(kept));
    kept.resize(static_cast<std::size_t>(r.count));
    out["n"] = n;
    out["config"] = {{"grid", grid ? fmt(*grid) : "1x" + std::to_string(n)}};
    if (cfg.ratio) out["config"]["ratio"] = *cfg.ratio;
    if (cfg.count) out["config"]["count"] = *cfg.count;
    out["count"] = kept.size();
    out["kept"] = indices(kept);
    out["stats"] = {{"rows_used", r.rows_used}};
    return out;
  };
  return m;
}

method make_pool() {
  const tokensel::baselines::pool::config d{};
  method m;
  m.name = "pool";
  m.summary = "baseline: w x w average pooling of --features on the patch grid (no indices; --out writes the rows)";
  m.params = {
      {"window", "W", fmt(d.window), "pooling window and stride"},
      {"partial-windows", "true|false", fmt(d.partial_windows), "average partial edge windows (false: error)"},
      {"grid", "RxC", "square", "patch grid"},
  };
  m.run = [](context& ctx) -> json {
    const options& o = ctx.opts();
    tokensel::baselines::pool::config cfg{};
    cfg.window = o.integer("window", cfg.window);
    cfg.partial_windows = o.choice("partial-windows", {"false", "true"}, cfg.partial_windows ? 1 : 0) == 1;
    tokensel::baselines::pool::validate(cfg);
    if (ctx.has_attention()) throw usage_error("pool reads --features [N, D], not --attn");
    const auto& f = ctx.features();
    if (f.tensor.rank() != 2) throw usage_error("--features = " + f.source + ": expected [N, D], got " + f.tensor.shape_string());
    const bool skip = ctx.skip_cls(false);
    auto features = f.tensor.view<float, 2>();
    if (skip) features = features.slice(0, 1, features.extent(0) - (features.extent(0) > 0 ? 1 : 0), "features");
    const index_t n = features.extent(0);
    const auto given = o.grid("grid");
    const auto grid = given ? *given : tokensel::token_grid::square(n, "pool.grid");
    const auto k = tokensel::baselines::pool::keep_count(grid, cfg);
    host_tensor pooled(dtype::f32, {k, features.extent(1)});
    const auto r = with_policy(ctx.threads(), [&](const auto& policy) -> json {
      const auto res = tokensel::baselines::pool::apply(policy, tokensel::matrix_view<const float>(features), grid, cfg,
                                                        pooled.view<float, 2>());
      return {{"count", res.count}, {"grid", fmt(res.grid)}};
    });
    json out;
    out["input"] = {{"file", f.source}, {"shape", f.tensor.shape()}};
    out["n"] = n;
    out["config"] = {{"window", cfg.window}, {"partial_windows", cfg.partial_windows}, {"grid", fmt(grid)}, {"skip_cls", skip}};
    out["count"] = r["count"];
    out["stats"] = {{"output_grid", r["grid"]}};
    out["output"] = write_output(o, pooled);
    return out;
  };
  return m;
}

}  // namespace

std::vector<method> make_baselines() { return {make_random(), make_uniform(), make_pool()}; }

}  // namespace tokensel_cli
