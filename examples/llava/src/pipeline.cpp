// llava: the whole model with token selection (see pipeline.hpp for the per-method rules).
#include "llava/pipeline.hpp"

#include "llava/anyres.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <memory>
#include <numeric>
#include <span>
#include <utility>

#include <tokensel/methods/baselines.hpp>
#include <tokensel/methods/dart.hpp>
#include <tokensel/methods/divprune.hpp>
#include <tokensel/methods/vispruner.hpp>
#include <tokensel/methods/fastv.hpp>
#include <tokensel/methods/fitprune.hpp>
#include <tokensel/io/fitprune_json.hpp>
#include <tokensel/methods/fopru.hpp>
#include <tokensel/methods/freepruner.hpp>
#include <tokensel/methods/prumerge.hpp>
#include <tokensel/methods/visionzip.hpp>
#include <tokensel/select/gather.hpp>
#include <tokensel/select/sequence.hpp>

namespace llava {

namespace ts = tokensel;

namespace {

using clock_type = std::chrono::steady_clock;
double cpu_ms() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) * 1e-6;
}

struct method_name {
  method m;
  const char* name;
};
constexpr method_name method_names[] = {
    {method::none, "none"},           {method::fopru, "fopru"},         {method::freepruner, "freepruner"},
    {method::prumerge, "prumerge"},   {method::prumerge_plus, "prumerge+"}, {method::visionzip, "visionzip"},
    {method::fastv, "fastv"},         {method::fitprune, "fitprune"},   {method::random, "random"},
    {method::uniform, "uniform"},     {method::pool, "pool"},           {method::divprune, "divprune"},
    {method::dart, "dart"},           {method::vispruner, "vispruner"},
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

anyres_scope parse_anyres_scope(std::string_view name) {
  if (name == "tile") return anyres_scope::tile;
  if (name == "image") return anyres_scope::image;
  throw error("llava: unknown AnyRes scope '" + std::string(name) + "' (known: tile, image)");
}

ts::fopru::strategy parse_fopru_strategy(std::string_view name) {
  if (name == "rank") return ts::fopru::strategy::rank;
  if (name == "row") return ts::fopru::strategy::row;
  throw error("llava: unknown FoPru strategy '" + std::string(name) + "' (known: rank, row)");
}

keep_spec keep_spec::parse(std::string_view text) {
  const std::string s(text);
  if (s.empty()) throw error("llava: --keep: empty value (a ratio in (0, 1] or a token count)");
  char* end = nullptr;
  keep_spec k;
  try {
    if (s.find_first_of(".eE") != std::string::npos) {
      const double r = std::strtod(s.c_str(), &end);
      if (end != s.c_str() + s.size()) throw error("llava: --keep = " + s + ": not a number (a ratio in (0, 1])");
      k.value = ts::budget::fraction(r);
    } else {
      const long long c = std::strtoll(s.c_str(), &end, 10);
      if (end != s.c_str() + s.size()) throw error("llava: --keep = " + s + ": a count must be an integer >= 1");
      k.value = ts::budget::count(c);
    }
  } catch (const ts::error& e) {
    throw error("llava: --keep = " + s + ": " + e.what());
  }
  return k;
}

llava_model::llava_model(const std::filesystem::path& dir, weight_store::progress_fn progress) : dir_(dir) {
  const auto t0 = clock_type::now();
  cfg_ = load_config(dir / "config.json");
  weights_ = std::make_unique<weight_store>(dir, std::move(progress));
  clip_ = std::make_unique<clip_model>(cfg_, *weights_);
  projector_ = std::make_unique<projector>(cfg_, *weights_);
  llama_ = std::make_unique<llama_model>(cfg_.text, *weights_);
  if (cfg_.anyres()) newline_ = weights_->get("model.image_newline", {cfg_.text.hidden}).to_float();
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

run_result llava_model::run(const model_image& image, std::span<const std::int32_t> ids, const run_options& o) const {
  return image.anyres ? run(image.tiles, ids, o) : run(image.square.pixels.data(), ids, o);
}

run_result llava_model::prefill(const float* pixels, std::span<const std::int32_t> ids, const selection_options& s) const {
  try {
    return run_impl(pixels, ids, s, 0, false);
  } catch (const ts::error& e) {
    throw error(std::string("llava: ") + to_string(s.name) + ": " + e.what());
  }
}

run_result llava_model::calibrate_fitprune(const float* pixels, std::span<const std::int32_t> ids,
                                           ts::fitprune::calibrator& cal, bool from_qk) const {
  const auto& g = cal.geometry();
  if (cfg_.anyres()) throw error("llava: fitprune calibration needs a LLaVA-1.5 model (an AnyRes image's token count varies)");
  if (g.layers != cfg_.text.layers || g.visual_tokens != cfg_.image_tokens()) {
    throw error("llava: fitprune calibration: the calibrator is for " + std::to_string(g.layers) + " layers and " +
                std::to_string(g.visual_tokens) + " visual tokens; the model has " + std::to_string(cfg_.text.layers) +
                " LLM layers and " + std::to_string(cfg_.image_tokens()) + " image tokens");
  }
  selection_options unpruned;
  unpruned.from_qk = from_qk;
  try {
    return run_impl(pixels, ids, unpruned, 0, false, false, &cal);
  } catch (const ts::error& e) {
    throw error(std::string("llava: fitprune calibration: ") + e.what());
  }
}

namespace {

/// One selection, settled before anything runs: the method's config (the runtime's defaults, then
/// --keep through the method's with_budget) and what the method requires (requirements), which
/// decides what CLIP and the LLM prefill hand over and sizes every output.
struct plan {
  method m = method::none;
  bool qk = false;  ///< statistics from Q/K (--from-qk)
  ts::model_shape shape;
  ts::token_grid grid;
  ts::method_requirements req;
  ts::fopru::config fopru;
  ts::freepruner::config freepruner;
  ts::prumerge::config prumerge;
  ts::visionzip::config visionzip;
  ts::fastv::config fastv;
  ts::fitprune::recipe fitprune;
  ts::baselines::random::config random;
  ts::baselines::uniform::config uniform;
  ts::baselines::pool::config pool;
  ts::divprune::config divprune;
  ts::dart::config dart;
  ts::vispruner::config vispruner;
};

/// base, or base with the budget of --keep (the method's own rounding and refusals).
template <class Config>
Config budgeted(const keep_spec& keep, std::int64_t n, Config base) {
  return keep.empty() ? base : with_budget(*keep.value, n, base);
}

/// freePruner's layers scaled to a tower whose feature attention layer is f (6..22 for f = 22).
ts::freepruner::config freepruner_base(int f, std::int64_t n) {
  ts::freepruner::config c;
  c.last_layer = f;
  c.complementary_layer = f;
  c.first_layer = static_cast<ts::index_t>(std::lround(6.0 * f / 22.0));
  c.k_pivotal = std::min<ts::index_t>(c.k_pivotal, n);
  return c;
}

ts::fitprune::recipe load_fitprune_recipe(const std::string& path, const llava_config& cfg) {
  ts::fitprune::recipe r;
  try {
    r = ts::fitprune::load_recipe(path);
  } catch (const std::exception& e) {
    throw error(std::string("llava: fitprune recipe: ") + e.what());
  }
  if (r.geometry.layers != cfg.text.layers) {
    throw error("llava: fitprune recipe " + path + " is for " + std::to_string(r.geometry.layers) +
                " LLM layers, the model has " + std::to_string(cfg.text.layers));
  }
  return r;
}

/// An LLM-stage method dropping tokens after layer K (FastV, DART) needs K below the layer count:
/// dropping after the last layer would prune nothing.
void check_drop_layer(const char* method, std::int64_t layer, const llava_config& cfg) {
  if (layer >= cfg.text.layers) {
    throw error(std::string("llava: ") + method + " layer K = " + std::to_string(layer) + " must be below the " +
                std::to_string(cfg.text.layers) + " LLM layers");
  }
}

/// The FitPrune recipe: from a JSON file, or synthetic from keep (see pipeline.hpp).
ts::fitprune::recipe fitprune_recipe(const selection_options& s, const llava_config& cfg, std::int64_t n) {
  if (!s.fitprune_recipe.empty()) {
    if (!s.keep.empty()) throw error("llava: fitprune: give either a recipe file or --keep, not both");
    return load_fitprune_recipe(s.fitprune_recipe, cfg);
  }
  if (s.keep.empty()) throw error("llava: fitprune needs --keep (ratio or count) or a recipe file");
  const std::int64_t keep = s.keep.value->tokens(n, "fitprune");
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

/// Each method: its config through with_budget, then requirements(config, shape).
void configure(plan& p, const selection_options& s, const llava_config& cfg) {
  const std::int64_t n = p.shape.visual_tokens;
  switch (p.m) {
    case method::none:  // every image token (with strategy full, LLaVA-1.5's CLS row too)
      p.req.keep = p.req.output_rows = cfg.anyres() ? n : cfg.image_tokens();
      return;
    case method::fopru:
      p.fopru = budgeted(s.keep, n, ts::fopru::config{.strategy = s.fopru_strategy});
      p.req = requirements(p.fopru, p.shape);
      return;
    case method::freepruner:
      p.freepruner = budgeted(s.keep, n, freepruner_base(static_cast<int>(p.shape.feature_layer), n));
      p.req = requirements(p.freepruner, p.shape);
      return;
    case method::prumerge:
    case method::prumerge_plus:
      // The official order (LLaVA-PruMerge feeds the merged rows to the projector as torch.topk
      // ranks them, then the PruMerge+ grid, then the extra row): the LLM sees these rows at these
      // positions, so the spatial order (mode::fixed) would give another model output.
      p.prumerge.plus = p.m == method::prumerge_plus;
      p.prumerge.mode = ts::prumerge::mode::parity;
      p.prumerge = budgeted(s.keep, n, p.prumerge);  // refuses any budget: adaptive
      p.req = requirements(p.prumerge, p.shape);
      return;
    case method::visionzip:
      p.visionzip = budgeted(s.keep, n, ts::visionzip::config{});
      p.req = requirements(p.visionzip, p.shape);
      return;
    case method::fastv:
      p.fastv.layer = s.fastv_layer;
      p.fastv = budgeted(s.keep, n, p.fastv);
      p.req = requirements(p.fastv, p.shape);
      check_drop_layer("fastv", p.fastv.layer, cfg);
      return;
    case method::fitprune:
      p.fitprune = fitprune_recipe(s, cfg, n);
      p.req = requirements(p.fitprune, p.shape);
      return;
    case method::random:
      p.random.seed = s.seed;
      p.random = with_budget(s.keep.empty() ? ts::budget::fraction(0.5) : *s.keep.value, n, p.random);
      p.req = requirements(p.random, p.shape);
      return;
    case method::uniform:
      p.uniform = with_budget(s.keep.empty() ? ts::budget::fraction(0.5) : *s.keep.value, n, p.uniform);
      p.req = requirements(p.uniform, p.shape);
      return;
    case method::pool:
      if (!s.keep.empty()) p.pool = ts::baselines::pool::with_budget(*s.keep.value, p.grid, p.pool);
      p.req = ts::baselines::pool::requirements(p.pool, p.grid, p.shape);
      return;
    case method::divprune:
      p.divprune = budgeted(s.keep, n, ts::divprune::config{});
      p.req = requirements(p.divprune, p.shape);
      return;
    case method::vispruner:
      p.vispruner = budgeted(s.keep, n, ts::vispruner::config{});
      p.req = requirements(p.vispruner, p.shape);
      return;
    case method::dart:
      p.dart.layer = s.dart_layer;
      p.dart = budgeted(s.keep, n, p.dart);
      p.req = requirements(p.dart, p.shape);
      check_drop_layer("dart", p.dart.layer, cfg);
      return;
  }
}

/// n_img: the visual tokens of the image span (AnyRes: the packed tokens of the image).
plan make_plan(const selection_options& s, const llava_config& cfg, std::int64_t n_img) {
  if (s.name != method::none && cfg.vision_feature_select_strategy != "default") {
    throw error("llava: token selection needs vision_feature_select_strategy = default (CLS dropped)");
  }
  plan p;
  p.m = s.name;
  p.qk = s.from_qk;
  const auto& vc = cfg.vision;
  // the attention layer that produces the features (CLIP runs up to it)
  p.shape = {cfg.anyres() ? n_img : vc.patches(), true, cfg.feature_hidden_index() - 1, vc.layers};
  p.grid = {vc.grid(), vc.grid()};
  configure(p, s, cfg);
  if (p.req.stage == ts::stage::llm && !p.req.layers.empty() && p.req.layers.last >= cfg.text.layers) {
    throw error(std::string("llava: ") + to_string(p.m) + " reads LLM layer " + std::to_string(p.req.layers.last) +
                "; the model has " + std::to_string(cfg.text.layers) + " LLM layers");
  }
  return p;
}

// ---- encoder side ------------------------------------------------------------------------------

// FoPru and freePruner reduce the heads by their mean (the configs here keep that default), so
// they read CLIP's fused head-mean maps as 1-head views: the mean over one head is x / 1 = x, so
// the selection is bit for bit the one from the full [heads, N, N] maps, reading N * N floats per
// layer instead of heads * N * N.
static_assert(ts::fopru::config{}.heads == ts::head_reduction::mean &&
                  ts::freepruner::config{}.heads == ts::head_reduction::mean,
              "the fused CLIP maps are head means; another reduction needs the full maps");

/// What CLIP hands over, from the plan's requirements: full maps of every required layer (as head
/// means, or Q/K), or the CLS row and keys of one layer (the attention map and keys, or Q/K; the
/// layer after the feature layer as the last layer's Q/K, computed without running it).
clip_options clip_inputs(const plan& p, int layers_run, int encoder_layers) {
  clip_options o;
  const auto& r = p.req;
  if (p.m == method::none || r.stage != ts::stage::encoder || r.layers.empty()) return o;
  if (r.full_maps) {
    for (int l = 0; l < layers_run; ++l)
      if (r.layers.contains(l) || r.extra_layer.contains(l)) (p.qk ? o.qk_layers : o.head_mean_layers).push_back(l);
    return o;
  }
  const int layer = static_cast<int>(r.layers.first);
  if (layer >= layers_run) {
    if (layer != encoder_layers - 1 || !r.keys) {
      throw error(std::string("llava: ") + to_string(p.m) + " reads CLIP layer " + std::to_string(layer) +
                  ": past the feature layer only the last layer's Q/K are available");
    }
    o.last_layer_qk = true;
  } else if (p.qk) {
    o.qk_layers = {layer};  // only the CLS query row is read; the keys are the source's keys
  } else {
    o.attention_layers = {layer};
    if (r.keys) o.keys_layer = layer;
  }
  return o;
}

/// The vision rows fed to the projector [k, D] and the kept patch indices (anchors), ascending
/// (pool: each window's top-left patch, in pooled-grid order).
struct vision_rows {
  std::vector<float> rows;
  std::vector<ts::token_index> kept;
  std::vector<ts::token_index> order;  ///< visionzip: each output row's token (CLS 0, patch j: j + 1)
  ts::index_t dominant = 0;            ///< visionzip: the dominant rows (CLS included)
  ts::index_t pooled = 0;              ///< pool: the pooled grid's side (square grids)
};

/// The library's gather: the kept patches' features, in kept order.
vision_rows gathered(const ts::matrix_view<const float>& patches, std::vector<ts::token_index> kept) {
  vision_rows v;
  const ts::index_t k = static_cast<ts::index_t>(kept.size()), D = patches.extent(1);
  v.rows.resize(static_cast<std::size_t>(k * D));
  ts::gather_rows(patches, std::span<const ts::token_index>(kept), ts::matrix_view<float>(v.rows.data(), {k, D}));
  v.kept = std::move(kept);
  return v;
}

/// Everything an encoder-side method reads: the plan, CLIP's output and the patch rows.
struct encoder_inputs {
  const plan& p;
  const clip_output& co;
  const ts::matrix_view<const float> patches;  ///< [n, D], CLS dropped
  const clip_config& vc;
  const projector& proj;                       ///< DivPrune selects on the projected rows
};

vision_rows select_fopru(const encoder_inputs& in, int f) {
  const auto N = in.vc.tokens();
  std::vector<ts::token_index> kept(static_cast<std::size_t>(in.p.req.keep));
  const auto r = in.p.qk ? ts::fopru::select(ts::par, in.co.qk_source(f), in.p.fopru, kept)
                         : ts::fopru::select(ts::par, ts::head_attention_view<float>(in.co.head_mean.at(f).data(), {1, N, N}),
                                             in.p.fopru, kept);
  kept.resize(static_cast<std::size_t>(r.count));
  return gathered(in.patches, std::move(kept));
}

vision_rows select_freepruner(const encoder_inputs& in, ts::freepruner::selector& fp) {
  std::vector<ts::token_index> kept(static_cast<std::size_t>(in.p.req.keep));
  const auto r = fp.finish(kept);
  kept.resize(static_cast<std::size_t>(r.count));
  return gathered(in.patches, std::move(kept));
}

vision_rows select_prumerge(const encoder_inputs& in) {
  const auto N = in.vc.tokens(), D = in.vc.hidden;
  vision_rows v;
  v.kept.resize(static_cast<std::size_t>(in.p.req.keep));
  v.rows.resize(static_cast<std::size_t>(in.p.req.output_rows * D));
  const auto r = ts::prumerge::select(ts::par, ts::matrix_view<const float>(in.co.last_q.data(), {N, D}),
                                      ts::matrix_view<const float>(in.co.last_k.data(), {N, D}), in.patches, in.p.prumerge,
                                      v.kept, ts::matrix_view<float>(v.rows.data(), {in.p.req.output_rows, D}));
  v.kept.resize(static_cast<std::size_t>(r.count));
  v.rows.resize(static_cast<std::size_t>(r.rows() * D));
  std::sort(v.kept.begin(), v.kept.end());
  return v;
}

vision_rows select_visionzip(const encoder_inputs& in, int f) {
  const auto& vc = in.vc;
  const std::int64_t N = vc.tokens(), D = vc.hidden, k = in.p.req.output_rows;
  std::vector<ts::token_index> out(static_cast<std::size_t>(k));
  vision_rows v;
  v.rows.resize(static_cast<std::size_t>(k * D));
  const ts::matrix_view<const float> hidden(in.co.features.data(), {N, D});
  const ts::matrix_view<float> features(v.rows.data(), {k, D});
  ts::visionzip::result r;
  if (in.p.qk) {
    // Only the CLS query row is read: the source holds that row of Q and every key.
    auto src = in.co.qk_source(f);
    src.queries = src.queries.slice(1, 0, 1);
    r = ts::visionzip::select(ts::par, src, src.keys, hidden, in.p.visionzip, out, features);
  } else {
    r = ts::visionzip::select(ts::par, ts::head_attention_view<float>(in.co.attention.at(f).data(), {vc.heads, N, N}),
                              ts::tensor_view<const float, 3>(in.co.keys.data(), {vc.heads, N, vc.head_dim()}), hidden,
                              in.p.visionzip, out, features);
  }
  v.rows.resize(static_cast<std::size_t>(r.count * D));
  v.order.assign(out.begin(), out.begin() + r.count);
  v.dominant = r.dominant;
  for (ts::index_t i = 0; i < r.count; ++i)
    if (out[static_cast<std::size_t>(i)] > 0) v.kept.push_back(out[static_cast<std::size_t>(i)] - 1);
  std::sort(v.kept.begin(), v.kept.end());
  v.kept.erase(std::unique(v.kept.begin(), v.kept.end()), v.kept.end());
  return v;
}

/// VisPruner: the feature layer's CLS attention row (maps, or the CLS query row of its Q/K) and
/// the CLIP patch features.
vision_rows select_vispruner(const encoder_inputs& in, int f) {
  const auto& vc = in.vc;
  const std::int64_t N = vc.tokens();
  std::vector<ts::token_index> kept(static_cast<std::size_t>(in.p.req.keep));
  ts::vispruner::result r;
  if (in.p.qk) {
    auto src = in.co.qk_source(f);
    src.queries = src.queries.slice(1, 0, 1);
    r = ts::vispruner::select(ts::par, src, in.patches, in.p.vispruner, kept);
  } else {
    r = ts::vispruner::select(ts::par, ts::head_attention_view<float>(in.co.attention.at(f).data(), {vc.heads, N, N}),
                              in.patches, in.p.vispruner, kept);
  }
  kept.resize(static_cast<std::size_t>(r.count));
  return gathered(in.patches, std::move(kept));
}

/// DivPrune on the projected rows (the LLM input embeddings of the image, as the official LLaVA
/// code); the kept CLIP rows then go through the projector again with the rest of the sequence
/// (the projector is per-row, so those are the same rows).
vision_rows select_divprune(const encoder_inputs& in) {
  const std::int64_t n = in.patches.extent(0), Dt = in.proj.out_features();
  std::vector<float> projected(static_cast<std::size_t>(n * Dt));
  in.proj.forward(in.patches.data(), n, projected.data());
  std::vector<ts::token_index> kept(static_cast<std::size_t>(in.p.req.keep));
  const auto r = ts::divprune::select(ts::par, ts::matrix_view<const float>(projected.data(), {n, Dt}), in.p.divprune, kept);
  kept.resize(static_cast<std::size_t>(r.count));
  return gathered(in.patches, std::move(kept));
}

vision_rows select_pool(const encoder_inputs& in) {
  const auto D = in.vc.hidden;
  const auto& c = in.p.pool;
  const auto& grid = in.p.grid;
  vision_rows v;
  v.rows.resize(static_cast<std::size_t>(in.p.req.output_rows * D));
  const auto r = ts::baselines::pool::apply(ts::par, in.patches, grid, c,
                                            ts::matrix_view<float>(v.rows.data(), {in.p.req.output_rows, D}));
  for (ts::index_t o = 0; o < r.count; ++o)
    v.kept.push_back(static_cast<ts::token_index>(r.grid.row_of(o) * c.window * grid.cols + r.grid.col_of(o) * c.window));
  v.pooled = r.grid.rows;
  return v;
}

/// random and uniform: indices from the plan alone, then the gather.
vision_rows select_baseline(const encoder_inputs& in) {
  std::vector<ts::token_index> kept(static_cast<std::size_t>(in.p.req.keep));
  const auto count = in.p.m == method::random
                         ? ts::baselines::random::select(ts::par, in.p.shape.visual_tokens, in.p.random, kept).count
                         : ts::baselines::uniform::select(ts::par, in.p.grid, in.p.uniform, kept).count;
  kept.resize(static_cast<std::size_t>(count));
  return gathered(in.patches, std::move(kept));
}

/// freePruner adds each required layer as CLIP produces it (streamed; nothing is stored).
class freepruner_stream {
 public:
  freepruner_stream(const plan& p, std::int64_t tokens, clip_options& o) {
    if (p.m != method::freepruner) return;
    fp_ = std::make_unique<ts::freepruner::selector>(tokens, p.freepruner);
    if (p.qk) {
      o.on_qk = [this](int layer, const ts::qk_source<float>& src) { timed([&] { fp_->add_layer(ts::par, layer, src); }); };
    } else {
      o.on_head_mean = [this, tokens](int layer, const float* mean) {
        timed([&] { fp_->add_layer(ts::par, layer, ts::head_attention_view<float>(mean, {1, tokens, tokens})); });
      };
    }
  }
  ts::freepruner::selector& selector() { return *fp_; }
  double ms() const noexcept { return ms_; }

 private:
  template <class F>
  void timed(F&& f) {
    const auto t = clock_type::now();
    f();
    ms_ += ms_since(t);
  }
  std::unique_ptr<ts::freepruner::selector> fp_;
  double ms_ = 0;
};

/// Runs the plan's encoder-side method; the other methods pass every image row on.
vision_rows select_encoder(const encoder_inputs& in, freepruner_stream& fp, int f, std::int64_t image_rows) {
  switch (in.p.m) {
    case method::none:
    case method::fastv:
    case method::fitprune:
    case method::dart: {
      vision_rows v;
      v.rows.assign(in.patches.data(), in.patches.data() + image_rows * in.vc.hidden);
      return v;
    }
    case method::fopru: return select_fopru(in, f);
    case method::freepruner: return select_freepruner(in, fp.selector());
    case method::prumerge:
    case method::prumerge_plus: return select_prumerge(in);
    case method::visionzip: return select_visionzip(in, f);
    case method::random:
    case method::uniform: return select_baseline(in);
    case method::pool: return select_pool(in);
    case method::divprune: return select_divprune(in);
    case method::vispruner: return select_vispruner(in, f);
  }
  return {};
}

// ---- LLM side ----------------------------------------------------------------------------------

/// The prefill hook of an LLM-stage method (FastV, FitPrune, DART): at each layer the requirements
/// name (and, for FitPrune, that drops tokens) it selects the visual rows to keep and the prefill
/// goes on with the survivors. Holds the running visual count and the time spent selecting.
class llm_selection {
 public:
  /// norm_weight: the LLM's final RMSNorm weight (DART's cosine; empty for the others).
  /// calibration: instead of selecting, hand every layer's attention to this FitPrune calibrator.
  llm_selection(const plan& p, std::int64_t s0, std::int64_t visual, int heads, std::vector<float> norm_weight,
                ts::fitprune::calibrator* calibration = nullptr)
      : p_(p), s0_(s0), n_(visual), visual_now_(visual), heads_(heads), norm_(std::move(norm_weight)) {
    if (calibration) {
      calibrate(*calibration);
      return;
    }
    if (p.req.stage != ts::stage::llm) return;
    active_ = true;
    if (p.m == method::dart) {  // end of layer K - 1: its keys and the hidden states leaving it
      hook_.wants_attention = [this](int l) { return p_.req.layers.contains(l); };
      hook_.after_layer = [this](int, const float* hidden, std::int64_t len, const ts::tensor_view<const float, 3>& keys) {
        return dart(len, hidden, keys);
      };
      return;
    }
    hook_.wants_attention = [this](int l) { return p_.req.layers.contains(l) && drop_at(l) > 0; };
    if (p.qk) {
      hook_.after_qk = [this](int l, const ts::qk_source<float>& src) { return run(l, src.key_count(), src); };
    } else {
      hook_.after_attention = [this](int l, const float* probs, std::int64_t len) {
        return run(l, len, ts::head_attention_view<float>(probs, {heads_, len, len}));
      };
    }
  }
  llm_selection(const llm_selection&) = delete;
  llm_selection& operator=(const llm_selection&) = delete;

  const prefill_hook* hook() const noexcept { return active_ ? &hook_ : nullptr; }
  std::int64_t maps() const noexcept { return hook_.maps_materialised; }
  double ms() const noexcept { return ms_; }

 private:
  /// One new calibrator sample; every layer's attention (its map or, with --from-qk, its Q/K) over
  /// the unpruned visual span is added to it with FitPrune's head reduction; nothing is dropped.
  void calibrate(ts::fitprune::calibrator& cal) {
    active_ = true;
    const ts::index_t sample = cal.add_sample();
    auto add = [this, &cal, sample](int l, const auto& src) -> prefill_hook::keep_rows {
      const auto t = clock_type::now();
      cal.add_layer(ts::par, sample, l, src, ts::token_range{s0_, n_}, ts::fitprune::config{}.heads);
      ms_ += ms_since(t);
      return std::nullopt;
    };
    hook_.wants_attention = [](int) { return true; };
    if (p_.qk) {
      hook_.after_qk = [add](int l, const ts::qk_source<float>& src) { return add(l, src); };
    } else {
      hook_.after_attention = [this, add](int l, const float* probs, std::int64_t len) {
        return add(l, ts::head_attention_view<float>(probs, {heads_, len, len}));
      };
    }
  }

  /// Visual tokens the method drops after layer l (FastV: all but its keep count at layer K - 1).
  std::int64_t drop_at(int l) const {
    if (p_.m == method::fastv) return 1;  // wants its one layer; the count is its keep_count
    return ts::fitprune::drops_at(p_.fitprune, l, n_);
  }

  template <class Source>
  prefill_hook::keep_rows run(int l, std::int64_t len, const Source& src) {
    const auto t = clock_type::now();
    const ts::token_range visual{s0_, visual_now_};
    std::vector<ts::token_index> keep;
    ts::index_t count = 0;
    if (p_.m == method::fastv) {
      keep.resize(static_cast<std::size_t>(ts::fastv::keep_count(visual_now_, p_.fastv)));
      count = fastv(src, len, visual, keep);
    } else {
      const auto drop = std::min<std::int64_t>(drop_at(l), visual_now_);
      keep.resize(static_cast<std::size_t>(visual_now_ - drop));
      count = ts::fitprune::prune_layer(ts::par, src, visual, drop, ts::fitprune::config{}, keep).count;
    }
    return survivors(len, visual, std::move(keep), count, t);
  }

  prefill_hook::keep_rows dart(std::int64_t len, const float* hidden, const ts::tensor_view<const float, 3>& keys) {
    const auto t = clock_type::now();
    const ts::token_range visual{s0_, visual_now_};
    const auto D = static_cast<ts::index_t>(norm_.size());
    std::vector<ts::token_index> keep(static_cast<std::size_t>(ts::dart::keep_count(visual_now_, p_.dart)));
    const auto count = ts::dart::select(ts::par, keys, ts::matrix_view<const float>(hidden, {len, D}),
                                        ts::vector_view<const float>(norm_.data(), {D}), visual, p_.dart, keep)
                           .count;
    return survivors(len, visual, std::move(keep), count, t);
  }

  /// The sequence rows that go on: every non-visual row and the kept visual ones.
  prefill_hook::keep_rows survivors(std::int64_t len, const ts::token_range& visual, std::vector<ts::token_index> keep,
                                    ts::index_t count, clock_type::time_point t) {
    keep.resize(static_cast<std::size_t>(count));
    std::vector<std::int32_t> rows(static_cast<std::size_t>(len - visual_now_ + count));
    ts::sequence_keep(len, visual, keep, rows);
    visual_now_ = count;
    ms_ += ms_since(t);
    return rows;
  }

  ts::index_t fastv(const ts::qk_source<float>& src, std::int64_t len, const ts::token_range& visual,
                    std::span<ts::token_index> keep) const {
    // FastV reads the last query row only: a 1-row source sees every key (causal offset L-1).
    auto last = src;
    last.queries = src.queries.slice(1, len - 1, 1);
    return ts::fastv::select(ts::par, last, visual, p_.fastv, keep).count;
  }
  ts::index_t fastv(const ts::head_attention_view<float>& probs, std::int64_t, const ts::token_range& visual,
                    std::span<ts::token_index> keep) const {
    return ts::fastv::select(ts::par, probs, visual, p_.fastv, keep).count;
  }

  const plan& p_;
  std::int64_t s0_, n_, visual_now_;
  int heads_;
  std::vector<float> norm_;
  prefill_hook hook_;
  bool active_ = false;
  double ms_ = 0;
};

/// The image slot of the prompt: first index and length (1, or the expanded n_img copies).
std::pair<std::int64_t, std::int64_t> image_slot(std::span<const std::int32_t> ids, const llava_config& cfg,
                                                 std::int64_t n_img) {
  std::vector<std::int64_t> slots;
  for (std::size_t i = 0; i < ids.size(); ++i)
    if (ids[i] == cfg.image_token_index) slots.push_back(static_cast<std::int64_t>(i));
  if (slots.size() == 1) return {slots[0], 1};
  if (static_cast<std::int64_t>(slots.size()) == n_img && slots.back() - slots.front() + 1 == n_img) return {slots[0], n_img};
  if (slots.empty()) {
    throw error("llava: the prompt has no <image> token (id " + std::to_string(cfg.image_token_index) + ")");
  }
  throw error("llava: the prompt has " + std::to_string(slots.size()) + " image tokens; expected 1 or " +
              std::to_string(n_img) + " consecutive");
}


/// CLIP with the inputs the plan requires, then the encoder-side selection (times and maps into res).
vision_rows encode_and_select(const clip_model& clip, const projector& proj, const llava_config& cfg, const plan& p,
                              const float* pixels, run_result& res) {
  const auto& vc = cfg.vision;
  clip_options copt = clip_inputs(p, cfg.feature_hidden_index(), vc.layers);
  freepruner_stream fp(p, vc.tokens(), copt);
  auto t0 = clock_type::now();
  const clip_output co = clip.encode(pixels, copt);
  res.time.vision = ms_since(t0) - fp.ms();
  res.attention_maps = co.maps_materialised;

  t0 = clock_type::now();
  const std::int64_t n_img = cfg.image_tokens();
  const float* patches = co.features.data() + (cfg.vision_feature_select_strategy == "default" ? vc.hidden : 0);
  const encoder_inputs in{p, co, ts::matrix_view<const float>(patches, {n_img, vc.hidden}), vc, proj};
  vision_rows v = select_encoder(in, fp, static_cast<int>(p.shape.feature_layer), n_img);
  res.time.selection = ms_since(t0) + fp.ms();
  return v;
}

/// The LLM input: prefix embeddings, the projected vision rows, text embeddings [L, Dt].
std::vector<float> build_sequence(const llama_model& llama, const projector& proj, std::span<const std::int32_t> prefix,
                                  const std::vector<float>& rows, std::int64_t k_rows, std::span<const std::int32_t> text,
                                  std::int64_t Dt) {
  const auto P = static_cast<std::int64_t>(prefix.size());
  const std::int64_t L = P + k_rows + static_cast<std::int64_t>(text.size());
  std::vector<float> seq(static_cast<std::size_t>(L * Dt));
  llama.embed(prefix, seq.data());
  proj.forward(rows.data(), k_rows, seq.data() + P * Dt);
  llama.embed(text, seq.data() + (P + k_rows) * Dt);
  return seq;
}

/// run_result::kept / kept_tokens: the encoder's anchors, or the visual rows that reached the last
/// LLM layer (LLM-stage methods), or every token (no method).
void record_kept(const plan& p, std::span<const std::int32_t> final_rows, std::int64_t s0, std::int64_t k_rows,
                 std::int64_t n_img, std::vector<ts::token_index> kept, run_result& res) {
  if (p.req.stage == ts::stage::llm) {
    for (auto r : final_rows)
      if (r >= s0 && r < s0 + k_rows) kept.push_back(r - static_cast<std::int32_t>(s0));
    res.kept_tokens = static_cast<std::int64_t>(kept.size());
  } else {
    res.kept_tokens = k_rows;
    if (p.m == method::none) {
      kept.resize(static_cast<std::size_t>(n_img));
      std::iota(kept.begin(), kept.end(), 0);
    }
  }
  res.kept.assign(kept.begin(), kept.end());
}

/// Everything after the LLM input is built: the prefill with the plan's hook, the kept bookkeeping,
/// the decoding (times into res).
void run_llm(const llama_model& llama, const plan& p, const std::vector<float>& seq, std::int64_t s0, std::int64_t k_rows,
             std::vector<ts::token_index> kept, int max_new, bool decode, bool record, run_result& res,
             ts::fitprune::calibrator* calibration = nullptr) {
  const auto& tc = llama.config();
  const std::int64_t L = static_cast<std::int64_t>(seq.size()) / tc.hidden;
  std::vector<std::int32_t> positions(static_cast<std::size_t>(L));
  std::iota(positions.begin(), positions.end(), 0);
  res.sequence_length = L;
  res.visual_begin = s0;
  if (record) res.image_features.assign(seq.begin() + s0 * tc.hidden, seq.begin() + (s0 + k_rows) * tc.hidden);

  llm_selection llm(p, s0, k_rows, tc.heads, p.m == method::dart ? llama.final_norm_weight() : std::vector<float>{},
                    calibration);
  auto cache = llama.make_cache(L + std::max(0, max_new));
  const double cpu0 = cpu_ms();
  auto t0 = clock_type::now();
  std::vector<std::int32_t> final_rows;
  res.logits = llama.prefill(seq.data(), positions, cache, llm.hook(), &final_rows, &res.layer_rows);
  res.time.prefill = ms_since(t0) - llm.ms();
  res.time.prefill_cpu = cpu_ms() - cpu0;
  res.attention_maps += llm.maps();
  res.time.selection += llm.ms();
  res.final_length = static_cast<std::int64_t>(final_rows.size());
  record_kept(p, final_rows, s0, k_rows, res.total_tokens, std::move(kept), res);

  if (decode && max_new > 0) {
    t0 = clock_type::now();
    res.answer_ids = llama.generate(res.logits, static_cast<std::int32_t>(L), max_new, cache,
                                    record ? &res.decode_logits : nullptr);
    res.time.decode = ms_since(t0);
  }
}

}  // namespace

run_result llava_model::run_impl(const float* pixels, std::span<const std::int32_t> ids, const selection_options& sel,
                                 int max_new, bool decode, bool record, ts::fitprune::calibrator* calibration) const {
  if (cfg_.anyres()) throw error("llava: a LLaVA-NeXT (AnyRes) model takes an anyres_image (preprocess_anyres)");
  if (sel.anyres) throw error("llava: an AnyRes scope needs a LLaVA-NeXT model (model_type llava_next)");
  run_result res;
  res.time.load = load_ms_;
  const plan p = make_plan(sel, cfg_, cfg_.image_tokens());
  const auto [s0, slot_len] = image_slot(ids, cfg_, cfg_.image_tokens());
  const std::vector<std::int32_t> prefix(ids.begin(), ids.begin() + s0);
  const std::vector<std::int32_t> text(ids.begin() + s0 + slot_len, ids.end());

  vision_rows v = encode_and_select(*clip_, *projector_, cfg_, p, pixels, res);
  const std::int64_t k_rows = static_cast<std::int64_t>(v.rows.size()) / cfg_.vision.hidden;
  if (record) res.projector_input = v.rows;

  auto t0 = clock_type::now();
  const std::vector<float> seq = build_sequence(*llama_, *projector_, prefix, v.rows, k_rows, text, cfg_.text.hidden);
  res.time.projector = ms_since(t0);
  res.total_tokens = cfg_.image_tokens();
  run_llm(*llama_, p, seq, s0, k_rows, std::move(v.kept), max_new, decode, record, res, calibration);
  return res;
}

namespace {

bool llm_stage(method m) noexcept { return m == method::fastv || m == method::fitprune || m == method::dart; }

/// The encoder-side methods whose rows are merged or pooled (not a subset of the tile's patches).
bool merges(method m) noexcept {
  return m == method::prumerge || m == method::prumerge_plus || m == method::visionzip || m == method::pool;
}

/// One AnyRes tile's selection: the kept patches (ascending; pool: each window's top-left patch in
/// pooled-grid order) and, for a merging method, its rows projected [r, Dt] in the method's order.
struct tile_selection {
  std::vector<ts::token_index> kept;
  std::vector<float> merged;
  std::vector<ts::token_index> order;  ///< visionzip: each row's token (CLS 0, patch j: j + 1)
  ts::index_t dominant = 0;            ///< visionzip: dominant rows, CLS included
  ts::index_t pooled = 0;              ///< pool: pooled grid side
};

/// One AnyRes tile: CLIP with the tile plan's inputs, then the plan's encoder-side method on the
/// tile's own outputs (its CLS row, grid and features, as on a LLaVA-1.5 image). A patch-keeping
/// method (or none) projects every patch row into out [g^2, Dt]; a merging one projects its own
/// rows into the selection. Times and maps add up in res.
tile_selection anyres_tile(const clip_model& clip, const projector& proj, const llava_config& cfg, const plan& tp,
                           const float* pixels, float* out, run_result& res) {
  const auto& vc = cfg.vision;
  clip_options copt = clip_inputs(tp, cfg.feature_hidden_index(), vc.layers);
  freepruner_stream fp(tp, vc.tokens(), copt);
  auto t0 = clock_type::now();
  const clip_output co = clip.encode(pixels, copt);
  res.time.vision += ms_since(t0) - fp.ms();
  res.attention_maps += co.maps_materialised;
  const std::int64_t n = vc.patches();
  const ts::matrix_view<const float> patches(co.features.data() + vc.hidden, {n, vc.hidden});  // CLS dropped
  tile_selection tile;
  if (!merges(tp.m)) {
    t0 = clock_type::now();
    proj.forward(patches.data(), n, out);
    res.time.projector += ms_since(t0);
  }
  if (tp.m == method::none || llm_stage(tp.m)) {
    tile.kept.resize(static_cast<std::size_t>(n));
    std::iota(tile.kept.begin(), tile.kept.end(), 0);
    return tile;
  }
  t0 = clock_type::now();
  const encoder_inputs in{tp, co, patches, vc, proj};
  vision_rows v = select_encoder(in, fp, static_cast<int>(tp.shape.feature_layer), n);
  res.time.selection += ms_since(t0) + fp.ms();
  if (merges(tp.m)) {
    t0 = clock_type::now();
    const std::int64_t r = static_cast<std::int64_t>(v.rows.size()) / vc.hidden;
    tile.merged.resize(static_cast<std::size_t>(r * proj.out_features()));
    proj.forward(v.rows.data(), r, tile.merged.data());
    res.time.projector += ms_since(t0);
  }
  tile.kept = std::move(v.kept);
  tile.order = std::move(v.order);
  tile.dominant = v.dominant;
  tile.pooled = v.pooled;
  return tile;
}

/// The packed image rows [k, Dt] the LLM sees: every tile's projected rows packed (base, unpadded
/// grid, newlines), then only the tokens whose tile kept their patch, and every newline row;
/// kept receives their positions among the layout's image_tokens().
std::vector<float> anyres_rows(const anyres_layout& a, const std::vector<float>& tiles,
                               const std::vector<tile_selection>& tile_kept, const std::vector<float>& newline,
                               std::int64_t Dt, std::vector<ts::token_index>& kept) {
  const std::int64_t n_img = a.image_tokens(), per_tile = a.base_tokens();
  std::vector<float> packed(static_cast<std::size_t>(n_img * Dt));
  pack_anyres(a, tiles.data(), newline.data(), Dt, packed.data());
  std::vector<char> keep(static_cast<std::size_t>(a.tile_count() * per_tile), 0);
  for (std::size_t t = 0; t < tile_kept.size(); ++t)
    for (auto j : tile_kept[t].kept) keep[t * static_cast<std::size_t>(per_tile) + static_cast<std::size_t>(j)] = 1;
  const auto sources = anyres_token_sources(a);
  std::vector<float> rows;
  rows.reserve(packed.size());
  kept.clear();
  for (std::int64_t i = 0; i < n_img; ++i) {
    const auto s = sources[static_cast<std::size_t>(i)];
    if (s >= 0 && !keep[static_cast<std::size_t>(s)]) continue;
    kept.push_back(static_cast<ts::token_index>(i));
    rows.insert(rows.end(), packed.begin() + i * Dt, packed.begin() + (i + 1) * Dt);
  }
  return rows;
}

/// Pooling under AnyRes: every tile's pooled grid packed as pack_anyres packs the patch grids (the
/// base tile's pooled rows, then the crops' joint pooled grid unpadded by unpad_image's rule at the
/// pooled size, one image_newline per pooled row); kept: each packed cell's window anchor.
std::vector<float> pooled_rows(const anyres_layout& a, const std::vector<tile_selection>& tiles,
                               const std::vector<float>& newline, std::int64_t Dt, std::vector<ts::token_index>& kept) {
  const anyres_layout c = coarser_layout(a, static_cast<int>(tiles[0].pooled));
  const std::int64_t cells = static_cast<std::int64_t>(c.grid) * c.grid;
  std::vector<float> pooled;
  for (const auto& t : tiles) pooled.insert(pooled.end(), t.merged.begin(), t.merged.end());
  std::vector<float> rows(static_cast<std::size_t>(c.image_tokens() * Dt));
  pack_anyres(c, pooled.data(), newline.data(), Dt, rows.data());
  for (const auto s : anyres_token_sources(c)) {
    if (s < 0) continue;
    const auto t = static_cast<std::size_t>(s / cells);
    kept.push_back(static_cast<ts::token_index>(static_cast<std::int64_t>(t) * a.base_tokens() +
                                                tiles[t].kept[static_cast<std::size_t>(s % cells)]));
  }
  return rows;
}

/// A merging method's image rows under AnyRes (pipeline.hpp, docs/llava.md#merging-methods-under-anyres):
/// prumerge(+) every tile's rows in the method's order, base tile first; visionzip VisionZip's own
/// LLaVA-NeXT layout (pack_anyres_visionzip); pool the pooled grids packed (pooled_rows). kept:
/// the anchors as tile * g^2 + patch (anyres_token_sources' encoding), ascending.
std::vector<float> anyres_merged_rows(method m, const anyres_layout& a, const std::vector<tile_selection>& tiles,
                                      const std::vector<float>& newline, std::int64_t Dt, std::vector<ts::token_index>& kept) {
  const std::int64_t per_tile = a.base_tokens();
  std::vector<float> rows;
  kept.clear();
  if (m == method::pool) {
    rows = pooled_rows(a, tiles, newline, Dt, kept);
  } else if (m == method::visionzip) {
    std::vector<std::vector<float>> tile_rows;
    std::vector<std::vector<std::int32_t>> dominant(tiles.size());
    for (std::size_t t = 0; t < tiles.size(); ++t) {
      tile_rows.push_back(tiles[t].merged);
      for (ts::index_t i = 1; i < tiles[t].dominant; ++i) dominant[t].push_back(tiles[t].order[static_cast<std::size_t>(i)] - 1);
      for (const auto o : tiles[t].order)
        if (o > 0) kept.push_back(static_cast<ts::token_index>(static_cast<std::int64_t>(t) * per_tile + o - 1));
    }
    rows = pack_anyres_visionzip(a, tile_rows, dominant, Dt);
  } else {
    for (std::size_t t = 0; t < tiles.size(); ++t) {
      rows.insert(rows.end(), tiles[t].merged.begin(), tiles[t].merged.end());
      for (const auto j : tiles[t].kept) kept.push_back(static_cast<ts::token_index>(static_cast<std::int64_t>(t) * per_tile + j));
    }
  }
  std::sort(kept.begin(), kept.end());
  kept.erase(std::unique(kept.begin(), kept.end()), kept.end());
  return rows;
}

/// The scope of sel under AnyRes: the explicit one where it applies to the method, else the
/// method's natural one (tile for the encoder-side methods, image for the LLM-stage ones).
anyres_scope scope_of(const selection_options& sel) {
  const std::string m = to_string(sel.name);
  const bool llm = llm_stage(sel.name);
  if (sel.name == method::none) {
    if (sel.anyres) throw error("llava: an AnyRes scope needs a selection method");
    return anyres_scope::image;
  }
  if (!sel.anyres) return llm ? anyres_scope::image : anyres_scope::tile;
  if (*sel.anyres == anyres_scope::tile && llm) {
    throw error("llava: " + m + " runs inside the LLM over the whole image span: AnyRes scope tile does not apply (image)");
  }
  if (*sel.anyres == anyres_scope::image && !llm && sel.name != method::divprune && sel.name != method::random) {
    throw error("llava: " + m + ": AnyRes scope image applies to divprune and random only (" + m +
                " reads each tile's own attention or patch grid); use scope tile");
  }
  return *sel.anyres;
}

/// Scope image for an encoder-side method (divprune, random): the method over the image's packed
/// patch tokens at once (the newline rows are no patches: they all go on). rows [n_img, Dt] and
/// kept (every position) in; the survivors' rows and positions out.
std::vector<float> select_whole_image(const plan& p, const anyres_layout& a, const std::vector<float>& rows,
                                      std::int64_t Dt, std::vector<ts::token_index>& kept, run_result& res) {
  const auto t0 = clock_type::now();
  const auto sources = anyres_token_sources(a);
  std::vector<std::int64_t> patch;  // positions of the patch tokens
  for (std::size_t i = 0; i < sources.size(); ++i)
    if (sources[i] >= 0) patch.push_back(static_cast<std::int64_t>(i));
  const auto n = static_cast<std::int64_t>(patch.size());
  std::vector<float> patch_rows(static_cast<std::size_t>(n * Dt));
  for (std::int64_t j = 0; j < n; ++j)
    std::copy_n(rows.begin() + patch[static_cast<std::size_t>(j)] * Dt, Dt, patch_rows.begin() + j * Dt);
  std::vector<ts::token_index> chosen(static_cast<std::size_t>(p.req.keep));
  const auto count = p.m == method::divprune
                         ? ts::divprune::select(ts::par, ts::matrix_view<const float>(patch_rows.data(), {n, Dt}), p.divprune,
                                                chosen).count
                         : ts::baselines::random::select(ts::par, n, p.random, chosen).count;
  std::vector<char> keep(sources.size(), 0);
  for (std::size_t i = 0; i < sources.size(); ++i) keep[i] = sources[i] < 0;
  for (ts::index_t j = 0; j < count; ++j) keep[static_cast<std::size_t>(patch[static_cast<std::size_t>(chosen[static_cast<std::size_t>(j)])])] = 1;
  std::vector<float> out;
  kept.clear();
  for (std::size_t i = 0; i < sources.size(); ++i) {
    if (!keep[i]) continue;
    kept.push_back(static_cast<ts::token_index>(i));
    out.insert(out.end(), rows.begin() + static_cast<std::int64_t>(i) * Dt, rows.begin() + static_cast<std::int64_t>(i + 1) * Dt);
  }
  res.time.selection += ms_since(t0);
  return out;
}

}  // namespace

run_result llava_model::run_anyres_impl(const anyres_image& image, std::span<const std::int32_t> ids,
                                        const selection_options& sel, int max_new, bool decode, bool record) const {
  if (!cfg_.anyres()) throw error("llava: an anyres_image needs a LLaVA-NeXT model (model_type llava_next)");
  const auto& a = image.layout;
  const std::int64_t n_img = a.image_tokens(), S = cfg_.vision.image_size, Dt = cfg_.text.hidden;
  if (a.tile != S || static_cast<std::int64_t>(image.pixels.size()) != a.tile_count() * 3 * S * S) {
    throw error("llava: anyres_image: " + std::to_string(image.pixels.size()) + " pixel values do not hold the layout's " +
                std::to_string(a.tile_count()) + " tiles of 3 x " + std::to_string(S) + " x " + std::to_string(S));
  }
  run_result res;
  res.time.load = load_ms_;
  // Encoder-side methods per tile: one plan per tile (n = g^2 patches, the budget per tile); over
  // the whole image: n = the packed patch tokens; the LLM-stage ones: the whole image span
  // (n = image_tokens(), newline rows included).
  const bool whole = scope_of(sel) == anyres_scope::image && sel.name != method::none && !llm_stage(sel.name);
  const std::int64_t n_patch = a.base_tokens() + static_cast<std::int64_t>(a.rows) * a.cols;
  const plan p = make_plan(sel, cfg_, llm_stage(sel.name) || sel.name == method::none ? n_img : whole ? n_patch : a.base_tokens());
  const plan tile_plan = whole ? make_plan(selection_options{}, cfg_, a.base_tokens()) : p;
  const auto [s0, slot_len] = image_slot(ids, cfg_, n_img);
  const std::vector<std::int32_t> prefix(ids.begin(), ids.begin() + s0);
  const std::vector<std::int32_t> text(ids.begin() + s0 + slot_len, ids.end());

  const std::int64_t per_tile = a.base_tokens();
  std::vector<float> tiles(merges(p.m) ? 0 : static_cast<std::size_t>(a.tile_count() * per_tile * Dt));
  std::vector<tile_selection> tile_sel;
  for (int t = 0; t < a.tile_count(); ++t) {
    tile_sel.push_back(anyres_tile(*clip_, *projector_, cfg_, tile_plan, image.pixels.data() + t * 3 * S * S,
                                   tiles.empty() ? nullptr : tiles.data() + t * per_tile * Dt, res));
  }
  std::vector<ts::token_index> kept;
  std::vector<float> rows = merges(p.m) ? anyres_merged_rows(p.m, a, tile_sel, newline_, Dt, kept)
                                        : anyres_rows(a, tiles, tile_sel, newline_, Dt, kept);
  if (whole) rows = select_whole_image(p, a, rows, Dt, kept, res);
  const std::int64_t k_rows = static_cast<std::int64_t>(rows.size()) / Dt;
  const auto P = static_cast<std::int64_t>(prefix.size());
  std::vector<float> seq(static_cast<std::size_t>((P + k_rows + static_cast<std::int64_t>(text.size())) * Dt));
  llama_->embed(prefix, seq.data());
  std::copy(rows.begin(), rows.end(), seq.begin() + P * Dt);
  llama_->embed(text, seq.data() + (P + k_rows) * Dt);
  res.total_tokens = n_img;
  run_llm(*llama_, p, seq, s0, k_rows, p.m == method::none || llm_stage(p.m) ? std::vector<ts::token_index>{} : kept,
          max_new, decode, record, res);
  return res;
}

run_result llava_model::run(const anyres_image& image, std::span<const std::int32_t> ids, const run_options& o) const {
  try {
    return run_anyres_impl(image, ids, o.selection, o.max_new_tokens, true, o.record_intermediates);
  } catch (const ts::error& e) {
    throw error(std::string("llava: ") + to_string(o.selection.name) + ": " + e.what());
  }
}

}  // namespace llava
