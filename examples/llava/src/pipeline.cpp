// llava: the whole model with token selection (see pipeline.hpp for the per-method rules).
#include "llava/pipeline.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <numeric>

#include <tokensel/methods/baselines.hpp>
#include <tokensel/methods/fastv.hpp>
#include <tokensel/methods/fitprune.hpp>
#include <tokensel/io/fitprune_json.hpp>
#include <tokensel/methods/fopru.hpp>
#include <tokensel/methods/freepruner.hpp>
#include <tokensel/methods/prumerge.hpp>
#include <tokensel/stats/region_mass.hpp>
#include <tokensel/methods/visionzip.hpp>

namespace llava {

namespace ts = tokensel;

namespace {

using clock_type = std::chrono::steady_clock;
double cpu_ms() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) * 1e-6;
}
double ms_since(clock_type::time_point t0) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
}

struct method_name {
  method m;
  const char* name;
};
constexpr method_name method_names[] = {
    {method::none, "none"},           {method::fopru, "fopru"},         {method::freepruner, "freepruner"},
    {method::prumerge, "prumerge"},   {method::prumerge_plus, "prumerge+"}, {method::visionzip, "visionzip"},
    {method::fastv, "fastv"},         {method::fitprune, "fitprune"},   {method::random, "random"},
    {method::uniform, "uniform"},     {method::pool, "pool"},
};

}  // namespace

method parse_method(std::string_view name) {
  for (const auto& m : method_names)
    if (name == m.name) return m.m;
  std::string all;
  for (const auto& m : method_names) all += std::string(all.empty() ? "" : ", ") + m.name;
  throw error("llava: unknown method '" + std::string(name) + "' (known: " + all + ")");
}

const char* to_string(method m) noexcept {
  for (const auto& x : method_names)
    if (x.m == m) return x.name;
  return "?";
}

bool encoder_side(method m) noexcept { return m != method::none && m != method::fastv && m != method::fitprune; }

keep_spec keep_spec::parse(std::string_view text) {
  keep_spec k;
  const std::string s(text);
  if (s.empty()) throw error("llava: --keep: empty value (a ratio in (0, 1] or a token count)");
  char* end = nullptr;
  if (s.find_first_of(".eE") != std::string::npos) {
    const double r = std::strtod(s.c_str(), &end);
    if (end != s.c_str() + s.size() || !(r > 0.0 && r <= 1.0)) {
      throw error("llava: --keep = " + s + ": a ratio must be in (0, 1]");
    }
    k.ratio = r;
  } else {
    const long long c = std::strtoll(s.c_str(), &end, 10);
    if (end != s.c_str() + s.size() || c < 1) throw error("llava: --keep = " + s + ": a count must be an integer >= 1");
    k.count = c;
  }
  return k;
}

std::int64_t keep_spec::tokens(std::int64_t n) const {
  if (count) {
    if (*count > n) throw error("llava: --keep = " + std::to_string(*count) + ": exceeds the " + std::to_string(n) + " visual tokens");
    return *count;
  }
  if (ratio) return std::max<std::int64_t>(1, static_cast<std::int64_t>(std::floor(static_cast<double>(n) * *ratio)));
  return n;
}

llava_model::llava_model(const std::filesystem::path& dir, weight_store::progress_fn progress) : dir_(dir) {
  const auto t0 = clock_type::now();
  cfg_ = load_config(dir / "config.json");
  weights_ = std::make_unique<weight_store>(dir, std::move(progress));
  clip_ = std::make_unique<clip_model>(cfg_, *weights_);
  projector_ = std::make_unique<projector>(cfg_, *weights_);
  llama_ = std::make_unique<llama_model>(cfg_.text, *weights_);
  load_ms_ = ms_since(t0);
}

llava_model::~llava_model() = default;

// tokensel's own errors (a bad --keep for a method, a recipe that does not fit) leave as
// llava::error, so callers catch one type; the message keeps tokensel's parameter name.
run_result llava_model::run(const float* pixels, std::span<const std::int32_t> ids, const run_options& o) const {
  try {
    return run_impl(pixels, ids, o.selection, o.max_new_tokens, true, o.record_intermediates);
  } catch (const ts::error& e) {
    throw error(std::string("llava: ") + to_string(o.selection.name) + ": " + e.what());
  }
}

run_result llava_model::prefill(const float* pixels, std::span<const std::int32_t> ids, const selection_options& s) const {
  try {
    return run_impl(pixels, ids, s, 0, false);
  } catch (const ts::error& e) {
    throw error(std::string("llava: ") + to_string(s.name) + ": " + e.what());
  }
}

namespace {

/// freePruner's layers scaled to a tower whose feature attention layer is f (6..22 for f = 22).
ts::freepruner::config freepruner_config(int f, const keep_spec& keep, std::int64_t n) {
  ts::freepruner::config c;
  c.last_layer = f;
  c.complementary_layer = f;
  c.first_layer = static_cast<ts::index_t>(std::lround(6.0 * f / 22.0));
  c.k_pivotal = std::min<ts::index_t>(c.k_pivotal, n);
  if (!keep.empty()) {
    c.mode = ts::freepruner::mode::fixed;
    c.budget = keep.tokens(n);
  }
  return c;
}

/// The FitPrune recipe: from a JSON file, or synthetic from keep (see pipeline.hpp).
ts::fitprune::recipe fitprune_recipe(const selection_options& s, const llava_config& cfg, std::int64_t n) {
  if (!s.fitprune_recipe.empty()) {
    if (!s.keep.empty()) throw error("llava: fitprune: give either a recipe file or --keep, not both");
    ts::fitprune::recipe r;
    try {
      r = ts::fitprune::load_recipe(s.fitprune_recipe);
    } catch (const std::exception& e) {
      throw error(std::string("llava: fitprune recipe: ") + e.what());
    }
    if (r.geometry.layers != cfg.text.layers) {
      throw error("llava: fitprune recipe " + s.fitprune_recipe + " is for " + std::to_string(r.geometry.layers) +
                  " LLM layers, the model has " + std::to_string(cfg.text.layers));
    }
    return r;
  }
  if (s.keep.empty()) throw error("llava: fitprune needs --keep (ratio or count) or a recipe file");
  const std::int64_t keep = s.keep.tokens(n);
  ts::fitprune::recipe r;
  r.geometry = {cfg.text.hidden, cfg.text.intermediate, cfg.text.layers, n};
  r.drops.assign(static_cast<std::size_t>(cfg.text.layers), 0);
  const std::int64_t total = n - keep;
  const std::int64_t m = std::max(1, cfg.text.layers / 2);
  for (std::int64_t l = 0; l < m; ++l) r.drops[static_cast<std::size_t>(l)] = total / m + (l < total % m ? 1 : 0);
  r.reduction = std::min(0.99, 1.0 - static_cast<double>(keep) / static_cast<double>(n));
  r.model = "synthetic";
  r.source = "llava runtime: n - keep drops spread evenly over the first half of the layers";
  return r;
}

}  // namespace

run_result llava_model::run_impl(const float* pixels, std::span<const std::int32_t> ids, const selection_options& sel,
                                 int max_new, bool decode, bool record) const {
  run_result res;
  res.time.load = load_ms_;
  const auto& vc = cfg_.vision;
  const std::int64_t n = vc.patches(), N = vc.tokens(), D = vc.hidden, G = vc.grid(), Dt = cfg_.text.hidden;
  const std::int64_t n_img = cfg_.image_tokens();
  const method m = sel.name;
  if (m != method::none && cfg_.vision_feature_select_strategy != "default") {
    throw error("llava: token selection needs vision_feature_select_strategy = default (CLS dropped)");
  }

  // ---- the image slot ------------------------------------------------------------------------
  std::vector<std::int64_t> slots;
  for (std::size_t i = 0; i < ids.size(); ++i)
    if (ids[i] == cfg_.image_token_index) slots.push_back(static_cast<std::int64_t>(i));
  std::int64_t s0 = 0, slot_len = 0;
  if (slots.size() == 1) {
    s0 = slots[0];
    slot_len = 1;
  } else if (static_cast<std::int64_t>(slots.size()) == n_img && slots.back() - slots.front() + 1 == n_img) {
    s0 = slots[0];
    slot_len = n_img;
  } else if (slots.empty()) {
    throw error("llava: the prompt has no <image> token (id " + std::to_string(cfg_.image_token_index) + ")");
  } else {
    throw error("llava: the prompt has " + std::to_string(slots.size()) + " image tokens; expected 1 or " +
                std::to_string(n_img) + " consecutive");
  }
  std::vector<std::int32_t> prefix(ids.begin(), ids.begin() + s0);
  std::vector<std::int32_t> text(ids.begin() + s0 + slot_len, ids.end());

  // ---- vision ----------------------------------------------------------------------------------
  const int f = cfg_.feature_hidden_index() - 1;  // attention layer that produces the features
  clip_options copt;
  std::unique_ptr<ts::freepruner::selector> fp;
  // FoPru and freePruner reduce the heads by their mean (the configs here keep that default), so
  // they read CLIP's fused head-mean maps as 1-head views: the mean over one head is x / 1 = x, so
  // the selection is bit for bit the one from the full [heads, N, N] maps, reading N * N floats per
  // layer instead of heads * N * N.
  static_assert(ts::fopru::config{}.heads == ts::head_reduction::mean &&
                    ts::freepruner::config{}.heads == ts::head_reduction::mean,
                "the fused CLIP maps are head means; another reduction needs the full maps");
  const bool qk = sel.from_qk;
  if (m == method::fopru) (qk ? copt.qk_layers : copt.head_mean_layers) = {f};
  if (m == method::visionzip) {
    if (qk) {
      copt.qk_layers = {f};  // the keys VisionZip averages are the source's keys
    } else {
      copt.attention_layers = {f};
      copt.keys_layer = f;
    }
  }
  if (m == method::prumerge || m == method::prumerge_plus) copt.last_layer_qk = true;
  double in_vision_selection = 0;
  if (m == method::freepruner) {
    fp = std::make_unique<ts::freepruner::selector>(N, freepruner_config(f, sel.keep, n));
    for (int l = 0; l < cfg_.feature_hidden_index(); ++l)
      if (fp->needs(l)) (qk ? copt.qk_layers : copt.head_mean_layers).push_back(l);
    if (qk) {
      copt.on_qk = [&](int layer, const ts::qk_source<float>& src) {
        const auto t = clock_type::now();
        fp->add_layer(ts::par, layer, src);
        in_vision_selection += ms_since(t);
      };
    } else {
      copt.on_head_mean = [&](int layer, const float* mean) {
        const auto t = clock_type::now();
        fp->add_layer(ts::par, layer, ts::head_attention_view<float>(mean, {1, N, N}));
        in_vision_selection += ms_since(t);
      };
    }
  }
  auto t0 = clock_type::now();
  clip_output co = clip_->encode(pixels, copt);
  res.time.vision = ms_since(t0) - in_vision_selection;

  // ---- encoder-side selection -------------------------------------------------------------------
  t0 = clock_type::now();
  const float* patches = co.features.data() + (cfg_.vision_feature_select_strategy == "default" ? D : 0);
  const ts::matrix_view<const float> patch_view(patches, {n_img, D});
  std::vector<float> rows;  // vision features fed to the projector [k, D]
  std::vector<ts::token_index> kept;
  auto gather = [&](std::span<const ts::token_index> idx) {
    rows.resize(idx.size() * static_cast<std::size_t>(D));
    for (std::size_t r = 0; r < idx.size(); ++r)
      std::copy_n(patches + idx[r] * D, D, rows.data() + r * static_cast<std::size_t>(D));
  };
  switch (m) {
    case method::none:
    case method::fastv:
    case method::fitprune:
      rows.assign(patches, patches + n_img * D);
      break;
    case method::fopru: {
      ts::fopru::config c;
      if (sel.keep.count) {
        c.ratio = static_cast<double>(*sel.keep.count) / static_cast<double>(n);
        if (ts::fopru::keep_count(n, c) != *sel.keep.count) {
          throw error("llava: fopru cannot keep exactly " + std::to_string(*sel.keep.count) + " of " + std::to_string(n) +
                      " tokens; give a ratio");
        }
      } else if (sel.keep.ratio) {
        c.ratio = *sel.keep.ratio;
      }
      kept.resize(static_cast<std::size_t>(ts::fopru::keep_count(n, c)));
      const auto r = qk ? ts::fopru::select(ts::par, co.qk_source(f), c, kept)
                        : ts::fopru::select(ts::par, ts::head_attention_view<float>(co.head_mean.at(f).data(), {1, N, N}), c, kept);
      kept.resize(static_cast<std::size_t>(r.count));
      gather(kept);
      break;
    }
    case method::freepruner: {
      kept.resize(static_cast<std::size_t>(ts::freepruner::max_count(n, fp->settings())));
      const auto r = fp->finish(kept);
      kept.resize(static_cast<std::size_t>(r.count));
      gather(kept);
      break;
    }
    case method::prumerge:
    case method::prumerge_plus: {
      if (!sel.keep.empty()) throw error("llava: prumerge is adaptive (IQR outliers): --keep does not apply");
      ts::prumerge::config c;
      c.plus = m == method::prumerge_plus;
      // The official order (LLaVA-PruMerge feeds the merged rows to the projector as torch.topk
      // ranks them, then the PruMerge+ grid, then the extra row): the LLM sees these rows at these
      // positions, so the spatial order (mode::fixed) would give another model output.
      c.mode = ts::prumerge::mode::parity;
      kept.resize(static_cast<std::size_t>(ts::prumerge::max_count(n, c)));
      std::vector<float> merged(static_cast<std::size_t>(ts::prumerge::max_rows(n, c) * D));
      const auto r = ts::prumerge::select(ts::par, ts::matrix_view<const float>(co.last_q.data(), {N, D}),
                                          ts::matrix_view<const float>(co.last_k.data(), {N, D}), patch_view, c, kept,
                                          ts::matrix_view<float>(merged.data(), {ts::prumerge::max_rows(n, c), D}));
      kept.resize(static_cast<std::size_t>(r.count));
      merged.resize(static_cast<std::size_t>(r.rows() * D));
      rows = std::move(merged);
      std::sort(kept.begin(), kept.end());
      break;
    }
    case method::visionzip: {
      ts::visionzip::config c;
      if (!sel.keep.empty()) {
        const std::int64_t k = sel.keep.tokens(n);
        c.contextual = k * 10 / 64;
        c.dominant = k - c.contextual;
      }
      const auto k = ts::visionzip::keep_count(N, c);
      std::vector<ts::token_index> out(static_cast<std::size_t>(k));
      rows.resize(static_cast<std::size_t>(k * D));
      const ts::matrix_view<const float> hidden(co.features.data(), {N, D});
      const ts::matrix_view<float> features(rows.data(), {k, D});
      ts::visionzip::result r;
      if (qk) {
        // Only the CLS query row is read: the source holds that row of Q and every key.
        auto src = co.qk_source(f);
        src.queries = src.queries.slice(1, 0, 1);
        r = ts::visionzip::select(ts::par, src, src.keys, hidden, c, out, features);
      } else {
        r = ts::visionzip::select(ts::par, ts::head_attention_view<float>(co.attention.at(f).data(), {vc.heads, N, N}),
                                  ts::tensor_view<const float, 3>(co.keys.data(), {vc.heads, N, vc.head_dim()}), hidden, c,
                                  out, features);
      }
      rows.resize(static_cast<std::size_t>(r.count * D));
      for (ts::index_t i = 0; i < r.count; ++i)
        if (out[static_cast<std::size_t>(i)] > 0) kept.push_back(out[static_cast<std::size_t>(i)] - 1);
      std::sort(kept.begin(), kept.end());
      kept.erase(std::unique(kept.begin(), kept.end()), kept.end());
      break;
    }
    case method::random: {
      ts::baselines::random::config c;
      c.seed = sel.seed;
      if (sel.keep.count) c.count = *sel.keep.count;
      else c.ratio = sel.keep.ratio.value_or(0.5);
      kept.resize(static_cast<std::size_t>(ts::baselines::random::keep_count(n, c)));
      const auto r = ts::baselines::random::select(ts::par, n, c, kept);
      kept.resize(static_cast<std::size_t>(r.count));
      gather(kept);
      break;
    }
    case method::uniform: {
      ts::baselines::uniform::config c;
      if (sel.keep.count) c.count = *sel.keep.count;
      else c.ratio = sel.keep.ratio.value_or(0.5);
      kept.resize(static_cast<std::size_t>(ts::baselines::uniform::keep_count(n, c)));
      const auto r = ts::baselines::uniform::select(ts::par, ts::token_grid{G, G}, c, kept);
      kept.resize(static_cast<std::size_t>(r.count));
      gather(kept);
      break;
    }
    case method::pool: {
      ts::baselines::pool::config c;
      if (!sel.keep.empty()) {
        const double k = static_cast<double>(sel.keep.tokens(n));
        c.window = std::max<ts::index_t>(1, std::lround(std::sqrt(static_cast<double>(n) / k)));
      }
      const ts::token_grid grid{G, G};
      const auto k = ts::baselines::pool::keep_count(grid, c);
      rows.resize(static_cast<std::size_t>(k * D));
      const auto r = ts::baselines::pool::apply(ts::par, patch_view, grid, c, ts::matrix_view<float>(rows.data(), {k, D}));
      for (ts::index_t o = 0; o < r.count; ++o)
        kept.push_back(static_cast<ts::token_index>(r.grid.row_of(o) * c.window * G + r.grid.col_of(o) * c.window));
      break;
    }
  }
  res.time.selection = ms_since(t0) + in_vision_selection;
  const std::int64_t k_rows = static_cast<std::int64_t>(rows.size()) / D;
  if (record) res.projector_input = rows;

  // ---- projector and the LLM sequence ---------------------------------------------------------------
  t0 = clock_type::now();
  const std::int64_t L = static_cast<std::int64_t>(prefix.size()) + k_rows + static_cast<std::int64_t>(text.size());
  std::vector<float> seq(static_cast<std::size_t>(L * Dt));
  llama_->embed(prefix, seq.data());
  projector_->forward(rows.data(), k_rows, seq.data() + static_cast<std::int64_t>(prefix.size()) * Dt);
  llama_->embed(text, seq.data() + (static_cast<std::int64_t>(prefix.size()) + k_rows) * Dt);
  res.time.projector = ms_since(t0);
  std::vector<std::int32_t> positions(static_cast<std::size_t>(L));
  std::iota(positions.begin(), positions.end(), 0);
  res.sequence_length = L;
  res.visual_begin = s0;
  res.total_tokens = n_img;

  // ---- LLM-side selection hooks ----------------------------------------------------------------------
  prefill_hook hook;
  const prefill_hook* hook_ptr = nullptr;
  double hook_ms = 0;
  const int H = cfg_.text.heads;
  ts::fitprune::recipe recipe;
  ts::fitprune::position_tracker tracker;
  std::int64_t visual_now = k_rows;
  // After an in-LLM selection: the sequence rows to keep (prefix, kept visual, text) and the new
  // visual count; the hook's time is accounted to selection.
  auto survivors = [&](std::vector<ts::token_index>& keep, std::int64_t count, std::int64_t len,
                       clock_type::time_point started) {
    keep.resize(static_cast<std::size_t>(count));
    std::vector<std::int32_t> out(static_cast<std::size_t>(len - visual_now + count));
    ts::sequence_keep(len, ts::token_range{s0, visual_now}, keep, out);
    visual_now = count;
    hook_ms += ms_since(started);
    return out;
  };
  if (m == method::fastv) {
    ts::fastv::config c;
    c.layer = sel.fastv_layer;
    if (sel.keep.count) {
      c.ratio = 1.0 - static_cast<double>(*sel.keep.count) / static_cast<double>(n_img);
      if (ts::fastv::keep_count(n_img, c) != *sel.keep.count) {
        throw error("llava: fastv cannot keep exactly " + std::to_string(*sel.keep.count) + " tokens; give a ratio");
      }
    } else if (sel.keep.ratio) {
      c.ratio = 1.0 - *sel.keep.ratio;
    }
    ts::fastv::validate(c);
    if (c.layer >= cfg_.text.layers) {
      throw error("llava: fastv layer K = " + std::to_string(c.layer) + " must be below the " +
                  std::to_string(cfg_.text.layers) + " LLM layers");
    }
    hook.wants_attention = [c](int l) { return l == c.layer - 1; };
    if (qk) {
      hook.after_qk = [&, c](int, const ts::qk_source<float>& src) -> prefill_hook::keep_rows {
        const auto t = clock_type::now();
        const std::int64_t len = src.key_count();
        // FastV reads the last query row only: a 1-row source sees every key (causal offset L-1).
        auto last = src;
        last.queries = src.queries.slice(1, len - 1, 1);
        std::vector<ts::token_index> keep(static_cast<std::size_t>(ts::fastv::keep_count(visual_now, c)));
        const auto r = ts::fastv::select(ts::par, last, ts::token_range{s0, visual_now}, c, keep);
        return survivors(keep, r.count, len, t);
      };
    } else {
      hook.after_attention = [&, c](int, const float* probs, std::int64_t len) -> std::optional<std::vector<std::int32_t>> {
        const auto t = clock_type::now();
        std::vector<ts::token_index> keep(static_cast<std::size_t>(ts::fastv::keep_count(visual_now, c)));
        const auto r = ts::fastv::select(ts::par, ts::head_attention_view<float>(probs, {H, len, len}), ts::token_range{s0, visual_now}, c, keep);
        return survivors(keep, r.count, len, t);
      };
    }
    hook_ptr = &hook;
  } else if (m == method::fitprune) {
    recipe = fitprune_recipe(sel, cfg_, n_img);
    tracker.reset(n_img);
    hook.wants_attention = [&](int l) { return ts::fitprune::drops_at(recipe, l, n_img) > 0; };
    if (qk) {
      hook.after_qk = [&](int l, const ts::qk_source<float>& src) -> prefill_hook::keep_rows {
        const auto t = clock_type::now();
        const std::int64_t len = src.key_count();
        const auto drop = std::min<std::int64_t>(ts::fitprune::drops_at(recipe, l, n_img), visual_now);
        std::vector<ts::token_index> keep(static_cast<std::size_t>(visual_now - drop));
        const auto r = ts::fitprune::prune_layer(ts::par, src, ts::token_range{s0, visual_now}, drop, ts::fitprune::config{}, keep);
        return survivors(keep, r.count, len, t);
      };
    } else {
      hook.after_attention = [&](int l, const float* probs, std::int64_t len) -> std::optional<std::vector<std::int32_t>> {
        const auto t = clock_type::now();
        const auto drop = std::min<std::int64_t>(ts::fitprune::drops_at(recipe, l, n_img), visual_now);
        std::vector<ts::token_index> keep(static_cast<std::size_t>(visual_now - drop));
        const auto r = ts::fitprune::prune_layer(ts::par, ts::head_attention_view<float>(probs, {H, len, len}),
                                                 ts::token_range{s0, visual_now}, drop, ts::fitprune::config{}, keep);
        return survivors(keep, r.count, len, t);
      };
    }
    hook_ptr = &hook;
  }

  auto cache = llama_->make_cache(L + std::max(0, max_new));
  const double cpu0 = cpu_ms();
  t0 = clock_type::now();
  std::vector<std::int32_t> final_rows;
  res.logits = llama_->prefill(seq.data(), positions, cache, hook_ptr, &final_rows, &res.layer_rows);
  res.time.prefill = ms_since(t0) - hook_ms;
  res.time.prefill_cpu = cpu_ms() - cpu0;
  res.attention_maps = co.maps_materialised + hook.maps_materialised;
  res.time.selection += hook_ms;
  res.final_length = static_cast<std::int64_t>(final_rows.size());
  if (m == method::fastv || m == method::fitprune) {
    for (auto r : final_rows)
      if (r >= s0 && r < s0 + k_rows) kept.push_back(r - static_cast<std::int32_t>(s0));
    res.kept_tokens = static_cast<std::int64_t>(kept.size());
  } else {
    res.kept_tokens = k_rows;
    if (m == method::none) {
      kept.resize(static_cast<std::size_t>(n_img));
      std::iota(kept.begin(), kept.end(), 0);
    }
  }
  res.kept.assign(kept.begin(), kept.end());

  if (decode && max_new > 0) {
    t0 = clock_type::now();
    res.answer_ids = llama_->generate(res.logits, static_cast<std::int32_t>(L), max_new, cache,
                                      record ? &res.decode_logits : nullptr);
    res.time.decode = ms_since(t0);
  }
  return res;
}

}  // namespace llava
