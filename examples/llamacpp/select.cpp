// tokensel-llamacpp: method configuration and selection (see select.hpp).
#include "select.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <stdexcept>

#include <tokensel/methods/baselines.hpp>
#include <tokensel/methods/divprune.hpp>
#include <tokensel/methods/fopru.hpp>
#include <tokensel/methods/freepruner.hpp>
#include <tokensel/methods/visionzip.hpp>
#include <tokensel/methods/vispruner.hpp>

namespace tsl {

namespace ts = tokensel;

namespace {

struct method_name {
  method m;
  const char* name;
};
constexpr method_name served[] = {
    {method::none, "none"},         {method::fopru, "fopru"},     {method::freepruner, "freepruner"},
    {method::visionzip, "visionzip"}, {method::random, "random"}, {method::uniform, "uniform"},
    {method::divprune, "divprune"}, {method::vispruner, "vispruner"}, {method::pool, "pool"},
};

struct refusal {
  const char* name;
  const char* why;
};
// Methods the public API cannot serve, and the reason (one line each).
constexpr refusal refused[] = {
    {"prumerge", "reads the CLS query of CLIP's last layer, which the LLaVA mmproj does not contain (the converter "
                 "drops every layer after the feature layer)"},
    {"prumerge+", "reads the CLS query of CLIP's last layer, which the LLaVA mmproj does not contain (the converter "
                  "drops every layer after the feature layer)"},
    {"fastv", "drops tokens after LLM layer K inside the prefill; llama.cpp runs the prefill as one llama_decode with "
              "no way to remove rows between layers"},
    {"fitprune", "drops tokens between LLM layers inside the prefill; llama.cpp runs the prefill as one llama_decode "
                 "with no way to remove rows between layers"},
    {"dart", "drops tokens after LLM layer K - 1 inside the prefill; llama.cpp runs the prefill as one llama_decode "
             "with no way to remove rows between layers"},
};

ts::model_shape shape_of(const vision_shape& v) { return {v.patches, true, v.feature_layer, v.layers}; }

/// examples/llava's freePruner layers, scaled to a tower whose feature attention layer is f.
ts::freepruner::config freepruner_base(int f, std::int64_t n) {
  ts::freepruner::config c;
  c.last_layer = f;
  c.complementary_layer = f;
  c.first_layer = static_cast<ts::index_t>(std::lround(6.0 * f / 22.0));
  c.k_pivotal = std::min<ts::index_t>(c.k_pivotal, n);
  return c;
}

template <class Config>
Config budgeted(const selection_options& s, std::int64_t n, Config base) {
  return s.keep ? with_budget(*s.keep, n, base) : base;
}

ts::visionzip::config visionzip_config(const selection_options& s, std::int64_t n) {
  return budgeted(s, n, ts::visionzip::config{});
}

ts::qk_source<float> qk_of(const capture& c, int layer) {
  const auto& l = c.qk.at(layer);
  const ts::index_t H = c.heads, N = c.tokens, d = c.head_dim;
  ts::qk_source<float> src;
  src.queries = ts::tensor_view<const float, 3>(l.q.data(), {H, N, d});
  src.keys = ts::tensor_view<const float, 3>(l.k.data(), {H, N, d});
  return src;
}

ts::head_attention_view<float> map_of(const capture& c, int layer) {
  return ts::head_attention_view<float>(c.probs.at(layer).data(), {c.heads, c.tokens, c.tokens});
}

std::vector<std::int32_t> finish(std::vector<ts::token_index> kept, ts::index_t count) {
  kept.resize(static_cast<std::size_t>(count));
  return {kept.begin(), kept.end()};
}

std::vector<std::int32_t> run_freepruner(const selection_options& s, const vision_shape& v, const capture& c) {
  const auto cfg = budgeted(s, v.patches, freepruner_base(v.feature_layer, v.patches));
  ts::freepruner::selector fp(c.tokens, cfg);
  for (int l = 0; l < v.layers; ++l) {
    if (!fp.needs(l)) continue;
    if (s.from_qk) {
      fp.add_layer(ts::par, l, qk_of(c, l));
    } else {
      fp.add_layer(ts::par, l, map_of(c, l));
    }
  }
  std::vector<ts::token_index> kept(static_cast<std::size_t>(requirements(cfg, shape_of(v)).keep));
  return finish(kept, fp.finish(kept).count);
}

/// VisionZip: its own rows (CLS, dominant patches, merged contextual tokens), projected by the
/// caller; kept = the anchors that are patches, ascending (as examples/llava reports them).
selection run_visionzip(const selection_options& s, const vision_shape& v, const capture& c) {
  const auto cfg = visionzip_config(s, v.patches);
  const ts::index_t N = c.tokens, D = c.width, k = requirements(cfg, shape_of(v)).output_rows;
  std::vector<ts::token_index> out(static_cast<std::size_t>(k));
  selection sel;
  sel.features.resize(static_cast<std::size_t>(k * D));
  const ts::matrix_view<const float> hidden(c.hidden.data(), {N, D});
  const ts::matrix_view<float> features(sel.features.data(), {k, D});
  auto src = qk_of(c, v.feature_layer);
  ts::visionzip::result r;
  if (s.from_qk) {
    src.queries = src.queries.slice(1, 0, 1);  // the CLS query row is all it reads
    r = ts::visionzip::select(ts::par, src, src.keys, hidden, cfg, out, features);
  } else {
    r = ts::visionzip::select(ts::par, map_of(c, v.feature_layer), src.keys, hidden, cfg, out, features);
  }
  sel.feature_rows = static_cast<int>(r.count);
  sel.features.resize(static_cast<std::size_t>(r.count * D));
  for (ts::index_t i = 0; i < r.count; ++i)
    if (out[static_cast<std::size_t>(i)] > 0) sel.kept.push_back(out[static_cast<std::size_t>(i)] - 1);
  std::sort(sel.kept.begin(), sel.kept.end());
  sel.kept.erase(std::unique(sel.kept.begin(), sel.kept.end()), sel.kept.end());
  return sel;
}

/// pool: averaged CLIP feature rows (projected by the caller); kept = each window's top-left patch.
selection run_pool(const selection_options& s, const vision_shape& v, const capture& c) {
  const ts::token_grid grid{v.grid, v.grid};
  ts::baselines::pool::config cfg;
  if (s.keep) cfg = ts::baselines::pool::with_budget(*s.keep, grid, cfg);
  const ts::index_t rows = ts::baselines::pool::requirements(cfg, grid, shape_of(v)).output_rows, D = c.width;
  selection sel;
  sel.features.resize(static_cast<std::size_t>(rows * D));
  const ts::matrix_view<const float> patches(c.hidden.data() + D, {v.patches, D});
  const auto r = ts::baselines::pool::apply(ts::par, patches, grid, cfg, ts::matrix_view<float>(sel.features.data(), {rows, D}));
  for (ts::index_t o = 0; o < r.count; ++o)
    sel.kept.push_back(static_cast<std::int32_t>(r.grid.row_of(o) * cfg.window * grid.cols + r.grid.col_of(o) * cfg.window));
  sel.feature_rows = static_cast<int>(r.count);
  sel.features.resize(static_cast<std::size_t>(r.count * D));
  return sel;
}

std::vector<std::int32_t> run_vispruner(const selection_options& s, const vision_shape& v, const capture& c) {
  const auto cfg = budgeted(s, v.patches, ts::vispruner::config{});
  const ts::matrix_view<const float> patches(c.hidden.data() + c.width, {v.patches, c.width});
  std::vector<ts::token_index> kept(static_cast<std::size_t>(requirements(cfg, shape_of(v)).keep));
  ts::vispruner::result r;
  if (s.from_qk) {
    auto src = qk_of(c, v.feature_layer);
    src.queries = src.queries.slice(1, 0, 1);
    r = ts::vispruner::select(ts::par, src, patches, cfg, kept);
  } else {
    r = ts::vispruner::select(ts::par, map_of(c, v.feature_layer), patches, cfg, kept);
  }
  return finish(kept, r.count);
}

std::vector<std::int32_t> run_fopru(const selection_options& s, const vision_shape& v, const capture& c) {
  const auto cfg = budgeted(s, v.patches, ts::fopru::config{});
  std::vector<ts::token_index> kept(static_cast<std::size_t>(requirements(cfg, shape_of(v)).keep));
  const auto r = s.from_qk ? ts::fopru::select(ts::par, qk_of(c, v.feature_layer), cfg, kept)
                           : ts::fopru::select(ts::par, map_of(c, v.feature_layer), cfg, kept);
  return finish(kept, r.count);
}

std::vector<std::int32_t> run_baseline(const selection_options& s, const vision_shape& v) {
  const auto b = s.keep ? *s.keep : ts::budget::fraction(0.5);
  if (s.name == method::random) {
    ts::baselines::random::config cfg;
    cfg.seed = s.seed;
    cfg = with_budget(b, v.patches, cfg);
    std::vector<ts::token_index> kept(static_cast<std::size_t>(requirements(cfg, shape_of(v)).keep));
    return finish(kept, ts::baselines::random::select(ts::par, v.patches, cfg, kept).count);
  }
  const auto cfg = with_budget(b, v.patches, ts::baselines::uniform::config{});
  std::vector<ts::token_index> kept(static_cast<std::size_t>(requirements(cfg, shape_of(v)).keep));
  return finish(kept, ts::baselines::uniform::select(ts::par, ts::token_grid{v.grid, v.grid}, cfg, kept).count);
}

}  // namespace

method parse_method(std::string_view name) {
  for (const auto& m : served)
    if (name == m.name) return m.m;
  for (const auto& r : refused)
    if (name == r.name) throw std::runtime_error("--method " + std::string(name) + ": not servable through llama.cpp's API: it " + r.why);
  std::string all;
  for (const auto& m : served) all += std::string(all.empty() ? "" : ", ") + m.name;
  throw std::runtime_error("--method " + std::string(name) + ": unknown method (served here: " + all + ")");
}

const char* to_string(method m) noexcept {
  for (const auto& x : served)
    if (x.m == m) return x.name;
  return "?";
}

tokensel::budget parse_keep(std::string_view text) {
  const std::string s(text);
  if (s.empty()) throw std::runtime_error("--keep: empty value (a ratio in (0, 1] or a token count)");
  char* end = nullptr;
  try {
    if (s.find_first_of(".eE") != std::string::npos) {
      const double r = std::strtod(s.c_str(), &end);
      if (end != s.c_str() + s.size()) throw std::runtime_error("--keep = " + s + ": not a number (a ratio in (0, 1])");
      return ts::budget::fraction(r);
    }
    const long long c = std::strtoll(s.c_str(), &end, 10);
    if (end != s.c_str() + s.size()) throw std::runtime_error("--keep = " + s + ": a count must be an integer >= 1");
    return ts::budget::count(c);
  } catch (const ts::error& e) {
    throw std::runtime_error("--keep = " + s + ": " + e.what());
  }
}

void plan_capture(const selection_options& s, const vision_shape& v, capture& c) {
  const int f = v.feature_layer;
  auto& stats = s.from_qk ? c.qk_layers : c.softmax_layers;
  switch (s.name) {
    case method::fopru: stats.insert(f); break;
    case method::freepruner: {
      const auto cfg = budgeted(s, v.patches, freepruner_base(f, v.patches));
      const auto req = requirements(cfg, shape_of(v));
      for (int l = 0; l < v.layers; ++l)
        if (req.layers.contains(l) || req.extra_layer.contains(l)) stats.insert(l);
      break;
    }
    case method::visionzip:
      (void)requirements(visionzip_config(s, v.patches), shape_of(v));  // budget errors before the encode
      stats.insert(f);
      c.qk_layers.insert(f);  // its keys (contextual similarity)
      c.hidden_layer = f;
      break;
    case method::vispruner:
      stats.insert(f);
      c.hidden_layer = f;
      break;
    case method::pool: {
      ts::baselines::pool::config cfg;
      const ts::token_grid grid{v.grid, v.grid};
      if (s.keep) cfg = ts::baselines::pool::with_budget(*s.keep, grid, cfg);  // budget errors before the encode
      (void)ts::baselines::pool::requirements(cfg, grid, shape_of(v));
      c.hidden_layer = f;
      break;
    }
    default: break;
  }
}

selection select_tokens(const selection_options& s, const vision_shape& v, const capture& c, const float* projected,
                        int projected_width) {
  selection sel;
  switch (s.name) {
    case method::none:
      sel.kept.resize(static_cast<std::size_t>(v.patches));
      for (int i = 0; i < v.patches; ++i) sel.kept[static_cast<std::size_t>(i)] = i;
      break;
    case method::fopru: sel.kept = run_fopru(s, v, c); break;
    case method::freepruner: sel.kept = run_freepruner(s, v, c); break;
    case method::visionzip: return run_visionzip(s, v, c);
    case method::pool: return run_pool(s, v, c);
    case method::vispruner: sel.kept = run_vispruner(s, v, c); break;
    case method::random:
    case method::uniform: sel.kept = run_baseline(s, v); break;
    case method::divprune: {  // on the projected rows: the official LLaVA placement
      const auto cfg = budgeted(s, v.patches, ts::divprune::config{});
      std::vector<ts::token_index> kept(static_cast<std::size_t>(requirements(cfg, shape_of(v)).keep));
      const ts::matrix_view<const float> rows(projected, {v.patches, projected_width});
      sel.kept = finish(kept, ts::divprune::select(ts::par, rows, cfg, kept).count);
      break;
    }
  }
  return sel;
}

}  // namespace tsl
