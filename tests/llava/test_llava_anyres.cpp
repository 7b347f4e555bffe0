// LLaVA-NeXT (AnyRes) in the runtime against transformers (issue 15).
//
// tests/data/llava-next-tiny-bf16 (tools/llava/make_tiny_llava_next.py): a random
// LlavaNextForConditionalGeneration with 56-pixel tiles (4 x 4 patches), grid pinpoints
// [[56,112],[112,56],[112,112],[168,56],[56,168]], bf16 weights; goldens computed by transformers
// (LlavaNextImageProcessorPil + the model in fp32 on the upcast weights) for five images of
// different aspect ratios and one ragged batch of two images with different tile counts.
// Relative error = max |a - b| / max |b|, bound 1e-4 (as the v1.5 tests).
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

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
  // methods that merge or pool rows (no grid position): a clear refusal naming the method
  for (auto m : {llava::method::visionzip, llava::method::prumerge, llava::method::prumerge_plus, llava::method::pool}) {
    o.selection.name = m;
    try {
      (void)t.model.run(tiles, ids, o);
      ADD_FAILURE() << "no error for " << llava::to_string(m);
    } catch (const llava::error& e) {
      EXPECT_NE(std::string(e.what()).find(std::string(llava::to_string(m)) + ": merged or pooled rows"), std::string::npos)
          << e.what();
    }
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
