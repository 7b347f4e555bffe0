// LLaVA-NeXT (AnyRes) in the runtime against transformers (issue 15).
//
// tests/data/llava-next-tiny-bf16 (tools/llava/make_tiny_llava_next.py): a random
// LlavaNextForConditionalGeneration with 56-pixel tiles (4 x 4 patches), grid pinpoints
// [[56,112],[112,56],[112,112],[168,56],[56,168]], bf16 weights; goldens computed by transformers
// (LlavaNextImageProcessorPil + the model in fp32 on the upcast weights) for five images of
// different aspect ratios and one ragged batch of two images with different tile counts.
// Relative error = max |a - b| / max |b|, bound 1e-4 (as the v1.5 tests).
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include <unistd.h>

#include <tokensel/methods/baselines.hpp>
#include <tokensel/methods/prumerge.hpp>
#include <tokensel/methods/visionzip.hpp>

#include "llava/anyres.hpp"
#include "llava/image.hpp"
#include "llava/pipeline.hpp"
#include "llava/tokenizer.hpp"
#include "tiny_checkpoint.hpp"

namespace {

namespace fs = std::filesystem;
using llava_test::golden;

constexpr double tol = 1e-4;
const fs::path next_dir = llava_test::data_dir / "llava-next-tiny-bf16";

double rel_err(const float* a, const float* b, std::size_t n) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < n; ++i) {
    num = std::max(num, std::abs(static_cast<double>(a[i]) - b[i]));
    den = std::max(den, std::abs(static_cast<double>(b[i])));
  }
  return num / den;
}

void expect_close(const std::string& what, const std::vector<float>& got, const std::vector<float>& want) {
  ASSERT_EQ(got.size(), want.size()) << what << ": size";
  const double e = rel_err(got.data(), want.data(), want.size());
  std::printf("  rel_err %-36s = %.3g\n", what.c_str(), e);
  EXPECT_LE(e, tol) << what;
}

struct next_model {
  llava::llava_model model{next_dir};
  golden g = llava_test::read_golden(next_dir, "golden");
};

next_model& tiny() {
  static next_model m;
  return m;
}

fs::path image_of(const std::string& name) {
  return name == "shapes.png" || name == "scene.jpg" ? llava_test::data_dir / "llava-images" / name : next_dir / name;
}

llava::run_result run_case(const std::string& stem, bool record = true) {
  auto& t = tiny();
  const auto& c = t.g.meta["cases"][stem];
  const auto tiles = llava::preprocess_anyres(llava::load_image(image_of(c["image"].get<std::string>())), t.model.config());
  llava::run_options o;
  o.max_new_tokens = static_cast<int>(c["greedy_tokens"].size());
  o.record_intermediates = record;
  return t.model.run(tiles, c["input_ids"].get<std::vector<std::int32_t>>(), o);
}

// transformers' select_best_resolution / get_patch_output_size on llava-v1.6's pinpoints (values
// printed by transformers 5.23 for these sizes), including the ties (336 x 336: the first of the
// equally good pinpoints) and the cases where only the waste decides.
TEST(AnyResGeometry, BestResolutionAndResizeAsTransformers) {
  const std::vector<std::array<int, 2>> v16{{336, 672}, {672, 336}, {672, 672}, {1008, 336}, {336, 1008}};
  struct c {
    int h, w;
    std::array<int, 2> best, resized;
  };
  for (const auto& x : {c{480, 640, {672, 672}, {504, 672}}, c{640, 480, {672, 672}, {672, 504}},
                        c{100, 1000, {336, 1008}, {101, 1008}}, c{1000, 100, {1008, 336}, {1008, 101}},
                        c{336, 336, {336, 672}, {336, 336}}, c{1200, 1600, {672, 672}, {504, 672}},
                        c{50, 60, {336, 672}, {336, 404}}, c{500, 300, {672, 336}, {560, 336}}}) {
    const auto best = llava::select_best_resolution(x.h, x.w, v16);
    EXPECT_EQ(best, x.best) << x.h << "x" << x.w;
    EXPECT_EQ(llava::patch_output_size(x.h, x.w, best[0], best[1]), x.resized) << x.h << "x" << x.w;
  }
  EXPECT_THROW((void)llava::select_best_resolution(0, 10, v16), llava::error);
  EXPECT_THROW((void)llava::select_best_resolution(10, 10, {}), llava::error);
}

// Layout of every golden image: best resolution, tiles, unpadded grid, token count (transformers'
// processor count = the packed features' rows).
TEST(AnyResGeometry, LayoutOfEveryGoldenImage) {
  auto& t = tiny();
  ASSERT_TRUE(t.model.config().anyres());
  for (const auto& [stem, c] : t.g.meta["cases"].items()) {
    const auto a = llava::make_anyres_layout(t.model.config(), c["height"].get<int>(), c["width"].get<int>());
    using pair = std::array<int, 2>;
    EXPECT_EQ((pair{a.best_height, a.best_width}), (c["best_resolution"].get<pair>())) << stem;
    EXPECT_EQ((pair{a.tiles_y, a.tiles_x}), (c["tiles"].get<pair>())) << stem;
    EXPECT_EQ((pair{a.rows, a.cols}), (c["unpadded_grid"].get<pair>())) << stem;
    EXPECT_EQ(a.image_tokens(), c["image_tokens"].get<std::int64_t>()) << stem;
    EXPECT_EQ(a.image_tokens(), t.g.shape.at(stem + ".image_features")[0]) << stem;
  }
}

// LlavaNextImageProcessorPil's pixel_values (base image, then the tiles of the padded resize).
TEST(AnyResPreprocess, PixelValuesAsTransformers) {
  auto& t = tiny();
  const auto tiles = llava::preprocess_anyres(llava::load_image(image_of("shapes.png")), t.model.config());
  const auto& want = t.g["shapes.pixel_values"];
  ASSERT_EQ(tiles.pixels.size(), want.size());
  double worst = 0;
  for (std::size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::abs(static_cast<double>(tiles.pixels[i]) - want[i]));
  std::printf("  max |pixel - golden| = %.3g over %zu values\n", worst, want.size());
  EXPECT_LE(worst, 1e-6);
}

// The prompt the runtime's tokenizer makes is the golden's (one <image> id, expanded in the run).
TEST(AnyResModel, TokenizerGivesTheGoldenPrompt) {
  auto& t = tiny();
  llava::tokenizer tok(next_dir, t.model.config().image_token_index, t.model.config().pad_token_id);
  const auto ids = tok.encode_prompt(llava::format_prompt(llava::parse_template("llava-hf"), t.g.meta["question"].get<std::string>()));
  EXPECT_EQ(ids, t.g.meta["cases"]["shapes"]["input_ids"].get<std::vector<std::int32_t>>());
}

class AnyRes : public ::testing::TestWithParam<std::string> {};

// Packed image features (base, unpadded grid, image_newline), last-position logits, greedy tokens.
TEST_P(AnyRes, MatchesTransformers) {
  const std::string stem = GetParam();
  auto& t = tiny();
  const auto& c = t.g.meta["cases"][stem];
  const auto r = run_case(stem);
  EXPECT_EQ(r.total_tokens, c["image_tokens"].get<std::int64_t>());
  EXPECT_EQ(r.sequence_length, c["sequence_length"].get<std::int64_t>());
  expect_close(stem + ".image_features", r.image_features, t.g[stem + ".image_features"]);
  expect_close(stem + ".logits_last", r.logits, t.g[stem + ".logits_last"]);
  EXPECT_EQ(r.answer_ids, c["greedy_tokens"].get<std::vector<std::int32_t>>()) << stem;
}

INSTANTIATE_TEST_SUITE_P(Tiny, AnyRes, ::testing::Values("shapes", "scene", "wide", "tall", "square"));

// Pruning under AnyRes against transformers, with tools/llava/make_pruned_goldens.py's independent
// reimplementations applied by make_tiny_llava_next.py: the LLM-stage methods over the whole image
// span (newline rows included) on transformers' packed sequence (FastV 0.5, DART 0.5, FitPrune 0.25
// with the synthetic recipe), the patch-keeping encoder methods per tile (VisPruner 0.5 on each
// tile's CLS attention and features, DivPrune 0.25 on each tile's projected rows), and DivPrune 0.25
// over the whole image (scope image: the packed patch tokens at once), the packed tokens of kept
// patches and every newline row going on. kept: positions among the image tokens.
TEST(AnyResPruned, MethodsMatchTransformers) {
  auto& t = tiny();
  ASSERT_EQ(t.g.meta["pruned"].size(), 6u);
  for (const auto& [name, c] : t.g.meta["pruned"].items()) {
    const auto& img = t.g.meta["cases"][c["case"].get<std::string>()];
    const auto tiles = llava::preprocess_anyres(llava::load_image(image_of(img["image"].get<std::string>())), t.model.config());
    llava::run_options o;
    o.selection.name = llava::parse_method(c["method"].get<std::string>());
    o.selection.keep = llava::keep_spec::parse(c["keep"].get<std::string>());
    if (const auto scope = c["anyres_scope"].get<std::string>(); !scope.empty()) o.selection.anyres = llava::parse_anyres_scope(scope);
    o.max_new_tokens = static_cast<int>(c["greedy_tokens"].size());
    const auto r = t.model.run(tiles, img["input_ids"].get<std::vector<std::int32_t>>(), o);
    EXPECT_EQ(r.kept, c["kept"].get<std::vector<std::int32_t>>()) << name;
    EXPECT_EQ(r.layer_rows, c["layer_rows"].get<std::vector<std::int64_t>>()) << name;
    EXPECT_EQ(r.sequence_length, c["sequence_length"].get<std::int64_t>()) << name;
    EXPECT_EQ(r.total_tokens, img["image_tokens"].get<std::int64_t>()) << name;
    expect_close(name + ".logits_last", r.logits, t.g[name + ".logits_last"]);
    EXPECT_EQ(r.answer_ids, c["greedy_tokens"].get<std::vector<std::int32_t>>()) << name;
  }
}

// A ragged batch through transformers (two images with different tile counts, pixel_values padded
// to the larger count, right-padded prompts) gives each sample the logits of its own run here.
TEST(AnyResModel, RaggedBatchMatchesPerImageRuns) {
  auto& t = tiny();
  const auto& batch = t.g.meta["batch"];
  ASSERT_EQ(batch.size(), 2u);
  EXPECT_NE(t.g.meta["cases"][batch[0]["case"].get<std::string>()]["tiles"],
            t.g.meta["cases"][batch[1]["case"].get<std::string>()]["tiles"]);
  for (std::size_t b = 0; b < batch.size(); ++b) {
    const auto r = run_case(batch[b]["case"].get<std::string>(), false);
    EXPECT_EQ(r.sequence_length, batch[b]["sequence_length"].get<std::int64_t>());
    expect_close("batch." + std::to_string(b) + ".logits_last", r.logits, t.g["batch." + std::to_string(b) + ".logits_last"]);
  }
}

// The prompt may hold the image slot already expanded to image_tokens() ids (same result).
TEST(AnyResModel, ExpandedImageSlotGivesTheSameLogits) {
  auto& t = tiny();
  const auto& c = t.g.meta["cases"]["wide"];
  const auto tiles = llava::preprocess_anyres(llava::load_image(image_of("wide.png")), t.model.config());
  auto ids = c["input_ids"].get<std::vector<std::int32_t>>();
  const auto pos = c["image_token_position"].get<std::size_t>();
  ids.insert(ids.begin() + static_cast<std::ptrdiff_t>(pos), static_cast<std::size_t>(tiles.layout.image_tokens() - 1),
             t.model.config().image_token_index);
  llava::run_options o;
  o.max_new_tokens = 0;
  const auto a = t.model.run(tiles, ids, o);
  const auto b = run_case("wide", false);
  EXPECT_EQ(a.logits, b.logits);
}

TEST(AnyResModel, ErrorsNameTheProblem) {
  auto& t = tiny();
  const auto& ids = t.g.meta["cases"]["wide"]["input_ids"].get<std::vector<std::int32_t>>();
  auto tiles = llava::preprocess_anyres(llava::load_image(image_of("wide.png")), t.model.config());
  llava::run_options o;
  o.max_new_tokens = 1;
  // one square image for a LLaVA-NeXT model
  std::vector<float> square(static_cast<std::size_t>(3 * 56 * 56), 0.0f);
  try {
    (void)t.model.run(square.data(), ids, o);
    ADD_FAILURE() << "no error";
  } catch (const llava::error& e) {
    EXPECT_NE(std::string(e.what()).find("anyres_image"), std::string::npos) << e.what();
  }
  // pixels that do not hold the layout's tiles
  o.selection.name = llava::method::none;
  tiles.pixels.pop_back();
  EXPECT_THROW((void)t.model.run(tiles, ids, o), llava::error);
  // an AnyRes image for a LLaVA-1.5 model
  auto& v15 = llava_test::load("fp32");
  EXPECT_THROW((void)v15.model->run(tiles, v15.ids, o), llava::error);
}

// FitPrune's shipped LLaVA-v1.6 recipe (fitted for 2880 visual tokens) scales to an AnyRes image's
// own token count: its first 4 layers' drops as a 4-layer recipe file, each drop
// floor(k * n / 2880) with n = the image tokens (newline rows included).
TEST(AnyResPruned, FitPruneV16RecipeScalesToTheImageTokens) {
  auto& t = tiny();
  std::ifstream in(fs::path(LLAVA_TEST_DATA) / ".." / ".." / "data" / "fitprune" / "llava-v1.6-vicuna-7b-40.json");
  ASSERT_TRUE(in) << "data/fitprune/llava-v1.6-vicuna-7b-40.json";
  auto j = nlohmann::json::parse(in);
  ASSERT_EQ(j["geometry"]["visual_tokens"].get<std::int64_t>(), 2880);
  std::vector<std::int64_t> drops = j["drops"].get<std::vector<std::int64_t>>();
  drops.resize(4);
  j["drops"] = drops;
  j["geometry"]["layers"] = 4;
  const fs::path recipe = fs::temp_directory_path() / ("tokensel-anyres-recipe-" + std::to_string(::getpid()) + ".json");
  std::ofstream(recipe) << j.dump();
  const auto& c = t.g.meta["cases"]["square"];
  const auto tiles = llava::preprocess_anyres(llava::load_image(image_of("square.png")), t.model.config());
  llava::run_options o;
  o.selection.name = llava::method::fitprune;
  o.selection.fitprune_recipe = recipe.string();
  o.max_new_tokens = 1;
  const auto r = t.model.run(tiles, c["input_ids"].get<std::vector<std::int32_t>>(), o);
  fs::remove(recipe);
  const std::int64_t n = tiles.layout.image_tokens();
  std::int64_t rows = r.sequence_length, kept = n;
  for (std::size_t l = 0; l < 4; ++l) {
    rows -= drops[l] * n / 2880;
    kept -= drops[l] * n / 2880;
    EXPECT_EQ(r.layer_rows[l], rows) << "layer " << l;
  }
  EXPECT_EQ(r.kept_tokens, kept);
  EXPECT_LT(kept, n);
}

// The AnyRes scope: where it does not apply, a clear error naming the method and the scope; per
// tile and over the whole image give different selections (same budget fraction).
TEST(AnyResScope, AppliesWhereItCanAndSaysWhyNot) {
  auto& t = tiny();
  const auto& c = t.g.meta["cases"]["wide"];
  const auto ids = c["input_ids"].get<std::vector<std::int32_t>>();
  const auto tiles = llava::preprocess_anyres(llava::load_image(image_of("wide.png")), t.model.config());
  llava::run_options o;
  o.max_new_tokens = 0;
  auto expect_error = [&](llava::method m, llava::anyres_scope s, const std::string& part) {
    o.selection = {};
    o.selection.name = m;
    o.selection.anyres = s;
    try {
      (void)t.model.run(tiles, ids, o);
      ADD_FAILURE() << "no error for " << llava::to_string(m);
    } catch (const llava::error& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  expect_error(llava::method::fopru, llava::anyres_scope::image, "fopru: AnyRes scope image applies to divprune and random only");
  expect_error(llava::method::vispruner, llava::anyres_scope::image, "vispruner: AnyRes scope image applies");
  expect_error(llava::method::fastv, llava::anyres_scope::tile, "fastv runs inside the LLM over the whole image span");
  expect_error(llava::method::none, llava::anyres_scope::tile, "needs a selection method");
  EXPECT_THROW((void)llava::parse_anyres_scope("tiles"), llava::error);
  // LLaVA-1.5 has no AnyRes scope
  auto& v15 = llava_test::load("fp32");
  o.selection = {};
  o.selection.name = llava::method::random;
  o.selection.anyres = llava::anyres_scope::tile;
  EXPECT_THROW((void)v15.model->run(v15.pixels, v15.ids, o), llava::error);
  // random 0.25 per tile keeps 4 of every tile's 16 patches; over the image 16 of its 64 patch tokens
  o.selection = {};
  o.selection.name = llava::method::random;
  o.selection.keep = llava::keep_spec::parse("0.25");
  const auto per_tile = t.model.run(tiles, ids, o);
  o.selection.anyres = llava::anyres_scope::image;
  const auto whole = t.model.run(tiles, ids, o);
  const auto& a = tiles.layout;
  EXPECT_EQ(whole.kept_tokens, 16 + a.rows);  // 16 patches + every newline row
  EXPECT_EQ(per_tile.kept_tokens, 4 + (4 * a.rows * a.cols / 16) + a.rows);  // wide: every grid tile fully inside the window
  EXPECT_NE(per_tile.kept, whole.kept);
}

// A pinpoint that is not a multiple of the tower's image size is refused by name.
TEST(AnyResConfig, PinpointsMustBeMultiplesOfTheTile) {
  const fs::path dir = fs::temp_directory_path() / ("tokensel-anyres-config-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ifstream in(next_dir / "config.json");
  auto j = nlohmann::json::parse(in);
  j["image_grid_pinpoints"] = {{56, 112}, {100, 56}};
  std::ofstream(dir / "config.json") << j.dump();
  try {
    (void)llava::load_config(dir / "config.json");
    ADD_FAILURE() << "no error";
  } catch (const llava::error& e) {
    EXPECT_NE(std::string(e.what()).find("image_grid_pinpoints[1]"), std::string::npos) << e.what();
  }
  j.erase("image_grid_pinpoints");
  std::ofstream(dir / "config.json") << j.dump();
  EXPECT_THROW((void)llava::load_config(dir / "config.json"), llava::error);
  fs::remove_all(dir);
}

}  // namespace

// ---- merging methods under AnyRes (prumerge, prumerge+, visionzip, pool) -------------------------
// Each runs per tile on the tile's own CLIP outputs; the reference below calls the library on every
// tile's CLIP outputs itself, projects the rows and lays them out by docs/llava.md's rule, written
// out here again: prumerge(+) every tile's rows in the method's order, base first; visionzip
// VisionZip's own LLaVA-NeXT layout (base rows, the crops' dominant patches on their joint grid
// row-major, the crops' CLS rows, their contextual rows); pool the base's pooled grid, then the
// crops' joint pooled grid unpadded (unpad_image at the pooled size) with a newline per row.
namespace merged {

namespace ts = tokensel;

/// transformers' unpad_image on a ch x cw grid for an image of h x w: {row0, rows, col0, cols}.
std::array<int, 4> unpad(int h, int w, int ch, int cw) {
  if (static_cast<double>(w) / h > static_cast<double>(cw) / ch) {
    const int new_h = static_cast<int>(std::round(h * (static_cast<double>(cw) / w) * 1e7) / 1e7);
    const int pad = (ch - new_h) / 2;
    return {pad, ch - 2 * pad, 0, cw};
  }
  const int new_w = static_cast<int>(std::round(w * (static_cast<double>(ch) / h) * 1e7) / 1e7);
  const int pad = (cw - new_w) / 2;
  return {0, ch, pad, cw - 2 * pad};
}

/// One tile through the library: rows [r, Dt] projected, each row's source token (CLS 0, patch j:
/// j + 1; -1 for PruMerge's extra row) and the dominant count (visionzip).
struct tile_ref {
  std::vector<float> rows;
  std::vector<std::int32_t> source;
  std::int64_t dominant = 0;
};

tile_ref library_tile(const llava::llava_model& m, llava::method method, const float* pixels) {
  const auto& cfg = m.config();
  const auto& vc = cfg.vision;
  const int f = cfg.feature_hidden_index() - 1;
  const std::int64_t N = vc.tokens(), n = vc.patches(), D = vc.hidden, g = vc.grid();
  llava::clip_options o;
  if (method == llava::method::visionzip) {
    o.attention_layers = {f};
    o.keys_layer = f;
  }
  o.last_layer_qk = method == llava::method::prumerge || method == llava::method::prumerge_plus;
  const auto co = m.vision().encode(pixels, o);
  const ts::matrix_view<const float> patches(co.features.data() + D, {n, D});
  std::vector<float> rows;
  tile_ref t;
  if (method == llava::method::pool) {
    rows.resize(static_cast<std::size_t>(n * D));
    const auto r = ts::baselines::pool::apply(ts::seq, patches, {g, g}, {}, ts::matrix_view<float>(rows.data(), {n, D}));
    rows.resize(static_cast<std::size_t>(r.count * D));
  } else if (method == llava::method::visionzip) {
    const auto c = ts::visionzip::with_budget(ts::budget::count(12), n, {});
    std::vector<ts::token_index> out(12);
    rows.resize(static_cast<std::size_t>(12 * D));
    const auto r = ts::visionzip::select(
        ts::seq, ts::head_attention_view<float>(co.attention.at(f).data(), {vc.heads, N, N}),
        ts::tensor_view<const float, 3>(co.keys.data(), {vc.heads, N, vc.head_dim()}),
        ts::matrix_view<const float>(co.features.data(), {N, D}), c, out, ts::matrix_view<float>(rows.data(), {12, D}));
    t.source.assign(out.begin(), out.begin() + r.count);
    t.dominant = r.dominant;
  } else {
    ts::prumerge::config c;
    c.plus = method == llava::method::prumerge_plus;
    c.mode = ts::prumerge::mode::parity;
    const auto req = ts::prumerge::requirements(c, ts::model_shape{n, true, f, vc.layers});
    std::vector<ts::token_index> kept(static_cast<std::size_t>(req.keep));
    rows.resize(static_cast<std::size_t>(req.output_rows * D));
    const auto r = ts::prumerge::select(ts::seq, ts::matrix_view<const float>(co.last_q.data(), {N, D}),
                                        ts::matrix_view<const float>(co.last_k.data(), {N, D}), patches, c, kept,
                                        ts::matrix_view<float>(rows.data(), {req.output_rows, D}));
    for (ts::index_t i = 0; i < r.count; ++i) t.source.push_back(kept[static_cast<std::size_t>(i)] + 1);
    if (r.extra_token) t.source.push_back(-1);
    rows.resize(static_cast<std::size_t>(r.rows() * D));
  }
  const std::int64_t k = static_cast<std::int64_t>(rows.size()) / D, Dt = m.mm_projector().out_features();
  t.rows.resize(static_cast<std::size_t>(k * Dt));
  m.mm_projector().forward(rows.data(), k, t.rows.data());
  return t;
}

/// The image rows the LLM should see, and the anchors (tile * g^2 + patch, ascending).
struct expected {
  std::vector<float> rows;
  std::vector<std::int32_t> kept;
};

void append_row(std::vector<float>& out, const std::vector<float>& rows, std::int64_t r, std::int64_t Dt) {
  out.insert(out.end(), rows.begin() + r * Dt, rows.begin() + (r + 1) * Dt);
}

expected layout(const llava::llava_model& m, llava::method method, const llava::anyres_image& img, const std::vector<tile_ref>& tiles) {
  const auto& a = img.layout;
  const std::int64_t Dt = m.mm_projector().out_features(), g = a.grid, T = a.tile_count();
  expected e;
  if (method == llava::method::pool) {
    const int p = (a.grid + 1) / 2;  // 2 x 2 windows
    const auto nl = m.weights().get("model.image_newline", {Dt}).to_float();
    e.rows = tiles[0].rows;
    const auto [r0, rows, c0, cols] = unpad(a.height, a.width, a.tiles_y * p, a.tiles_x * p);
    for (int r = r0; r < r0 + rows; ++r) {
      for (int c = c0; c < c0 + cols; ++c) {
        const auto t = 1 + (r / p) * a.tiles_x + c / p;
        append_row(e.rows, tiles[static_cast<std::size_t>(t)].rows, (r % p) * p + c % p, Dt);
        e.kept.push_back(static_cast<std::int32_t>(t * g * g + (r % p) * 2 * g + (c % p) * 2));
      }
      e.rows.insert(e.rows.end(), nl.begin(), nl.end());
    }
    for (int j = 0; j < p * p; ++j) e.kept.push_back((j / p) * 2 * static_cast<int>(g) + (j % p) * 2);
  } else if (method == llava::method::visionzip) {
    e.rows = tiles[0].rows;
    for (int r = 0; r < a.tiles_y * g; ++r) {
      for (int c = 0; c < a.tiles_x * g; ++c) {
        const auto& t = tiles[static_cast<std::size_t>(1 + (r / g) * a.tiles_x + c / g)];
        const auto end = t.source.begin() + t.dominant;
        const auto it = std::find(t.source.begin() + 1, end, static_cast<std::int32_t>((r % g) * g + c % g + 1));
        if (it != end) append_row(e.rows, t.rows, it - t.source.begin(), Dt);
      }
    }
    for (std::int64_t t = 1; t < T; ++t) append_row(e.rows, tiles[static_cast<std::size_t>(t)].rows, 0, Dt);
    for (std::int64_t t = 1; t < T; ++t)
      for (std::int64_t r = tiles[static_cast<std::size_t>(t)].dominant; r < 12; ++r) append_row(e.rows, tiles[static_cast<std::size_t>(t)].rows, r, Dt);
  } else {
    for (const auto& t : tiles) e.rows.insert(e.rows.end(), t.rows.begin(), t.rows.end());
  }
  if (method != llava::method::pool) {
    for (std::int64_t t = 0; t < T; ++t)
      for (const auto s : tiles[static_cast<std::size_t>(t)].source)
        if (s > 0) e.kept.push_back(static_cast<std::int32_t>(t * g * g + s - 1));
  }
  std::sort(e.kept.begin(), e.kept.end());
  e.kept.erase(std::unique(e.kept.begin(), e.kept.end()), e.kept.end());
  return e;
}

}  // namespace merged

// coarser_layout (pooling's grid): unpad_image's window recomputed at the pooled size, equal to the
// reference above for every image size from 1 to 120 pixels a side on the tiny model's pinpoints
// and every pooled side; a side outside [1, g] is refused. pack_anyres_visionzip refuses a
// dominant list that is not ascending.
TEST(AnyResGeometry, CoarserLayoutUnpadsAtThePooledSize) {
  auto& t = tiny();
  for (int h = 1; h <= 120; ++h) {
    for (int w = 1; w <= 120; ++w) {
      const auto a = llava::make_anyres_layout(t.model.config(), h, w);
      for (int p = 1; p <= a.grid; ++p) {
        const auto c = llava::coarser_layout(a, p);
        const auto want = merged::unpad(h, w, a.tiles_y * p, a.tiles_x * p);
        ASSERT_EQ((std::array<int, 4>{c.row0, c.rows, c.col0, c.cols}), want) << h << "x" << w << " p " << p;
        ASSERT_EQ(c.image_tokens(), p * p + c.rows * c.cols + c.rows);
      }
    }
  }
  const auto a = llava::make_anyres_layout(t.model.config(), 60, 230);
  EXPECT_THROW((void)llava::coarser_layout(a, 0), llava::error);
  EXPECT_THROW((void)llava::coarser_layout(a, a.grid + 1), llava::error);
  const std::int64_t D = 2;
  std::vector<std::vector<float>> rows(static_cast<std::size_t>(a.tile_count()), std::vector<float>(6, 0.0f));
  std::vector<std::vector<std::int32_t>> dominant(rows.size(), std::vector<std::int32_t>{1, 3});
  EXPECT_EQ(llava::pack_anyres_visionzip(a, rows, dominant, D).size(), static_cast<std::size_t>(a.tile_count() * 3 * D));
  dominant[1] = {3, 1};
  EXPECT_THROW((void)llava::pack_anyres_visionzip(a, rows, dominant, D), llava::error);
}

// Every merging method runs end to end on the wide, tall and square images: the LLM's image rows
// are the library's per-tile rows laid out by the documented rule (within 1e-6: the same
// arithmetic, another call), the sequence length is the prompt's plus that row count (prumerge:
// the sum of the tiles' adaptive counts; visionzip: tile_count * 12; pool: p^2 + rows' (cols' + 1)
// on the pooled grid), and kept holds the anchors as tile * g^2 + patch.
TEST(AnyResMerged, EveryTileAsTheLibraryLaidOutAsDocumented) {
  auto& t = tiny();
  for (const char* stem : {"wide", "tall", "square"}) {
    const auto& c = t.g.meta["cases"][stem];
    const auto img = llava::preprocess_anyres(llava::load_image(image_of(c["image"].get<std::string>())), t.model.config());
    const auto ids = c["input_ids"].get<std::vector<std::int32_t>>();
    const std::int64_t S = t.model.config().vision.image_size;
    for (auto m : {llava::method::prumerge, llava::method::prumerge_plus, llava::method::visionzip, llava::method::pool}) {
      const std::string what = std::string(stem) + "." + llava::to_string(m);
      std::vector<merged::tile_ref> tiles;
      for (int i = 0; i < img.layout.tile_count(); ++i) tiles.push_back(merged::library_tile(t.model, m, img.pixels.data() + i * 3 * S * S));
      const auto e = merged::layout(t.model, m, img, tiles);
      llava::run_options o;
      o.selection.name = m;
      if (m == llava::method::visionzip) o.selection.keep = llava::keep_spec::parse("12");
      o.max_new_tokens = 2;
      o.record_intermediates = true;
      const auto r = t.model.run(img, ids, o);
      const std::int64_t k = static_cast<std::int64_t>(e.rows.size()) / t.model.config().text.hidden;
      if (m == llava::method::visionzip) {
        EXPECT_EQ(k, img.layout.tile_count() * 12) << what;
      }
      EXPECT_EQ(r.kept_tokens, k) << what;
      EXPECT_EQ(r.sequence_length, static_cast<std::int64_t>(ids.size()) - 1 + k) << what;
      EXPECT_EQ(r.total_tokens, img.layout.image_tokens()) << what;
      EXPECT_EQ(r.kept, e.kept) << what;
      expect_close(what + ".image_features", r.image_features, e.rows);
      EXPECT_LE(rel_err(r.image_features.data(), e.rows.data(), std::min(r.image_features.size(), e.rows.size())), 1e-6) << what;
      EXPECT_EQ(r.answer_ids.size(), 2u) << what;
    }
  }
}

// --keep under AnyRes is per tile and behaves as on LLaVA-1.5: visionzip's count is each tile's
// output rows (the default 54 + 10 does not fit a 17-token tile and is refused by name), pool keeps
// the pooled grid of that count (5 of 16 is refused with the achievable 4 and 16), prumerge is
// adaptive (a budget is refused), and the image scope does not apply to a merging method.
TEST(AnyResMerged, KeepBudgetsPerTileAndRefusals) {
  auto& t = tiny();
  const auto& c = t.g.meta["cases"]["square"];
  const auto ids = c["input_ids"].get<std::vector<std::int32_t>>();
  const auto img = llava::preprocess_anyres(llava::load_image(image_of("square.png")), t.model.config());
  auto run = [&](llava::method m, const char* keep, std::optional<llava::anyres_scope> scope = {}) {
    llava::run_options o;
    o.selection.name = m;
    if (*keep) o.selection.keep = llava::keep_spec::parse(keep);
    o.selection.anyres = scope;
    o.max_new_tokens = 0;
    return t.model.run(img, ids, o);
  };
  auto refused = [&](llava::method m, const char* keep, const std::string& part, std::optional<llava::anyres_scope> scope = {}) {
    try {
      (void)run(m, keep, scope);
      ADD_FAILURE() << "no error for " << llava::to_string(m) << " keep " << keep;
    } catch (const llava::error& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  const auto& a = img.layout;  // square: 2 x 2 crops, 8 x 8 grid kept whole
  ASSERT_EQ(a.tile_count(), 5);
  EXPECT_EQ(run(llava::method::visionzip, "6").kept_tokens, 5 * 6);
  EXPECT_EQ(run(llava::method::visionzip, "0.5").kept_tokens, 5 * 8);  // floor(16 * 0.5) patches per tile
  refused(llava::method::visionzip, "", "exceeds the 17 tokens of the sample");
  EXPECT_EQ(run(llava::method::pool, "0.25").kept_tokens, 4 + 4 * 4 + 4);  // 2 x 2 base, 4 x 4 crops grid + 4 newlines
  EXPECT_EQ(run(llava::method::pool, "1").kept_tokens, 1 + 2 * 2 + 2);     // 4 x 4 windows: one row per tile
  refused(llava::method::pool, "5", "keeps 16 or 4 tokens, not 5");
  refused(llava::method::prumerge, "0.5", "PruMerge is adaptive");
  refused(llava::method::prumerge_plus, "8", "PruMerge is adaptive");
  refused(llava::method::pool, "0.25", "AnyRes scope image applies to divprune and random only", llava::anyres_scope::image);
  refused(llava::method::visionzip, "6", "AnyRes scope image applies", llava::anyres_scope::image);
}
