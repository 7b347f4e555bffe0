// FitPrune: FLOPs model, recipes (scaling, validation, JSON), runtime drop, position tracking,
// calibration (FIT + bisection). Expected numbers come from hand computation or from
// tools/reference/fitprune_reference.py (its printed output is quoted where used).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "tokensel/methods/fitprune.hpp"
#include "tokensel/io/fitprune_json.hpp"

#include "support/tiny_causal_map.hpp"

using namespace tokensel;

namespace {

const std::filesystem::path kDataDir = TOKENSEL_FITPRUNE_DATA_DIR;

// The tiny causal map of test_region_mass.cpp (L = 7, span [2, 5), 2 heads).
// Max over heads: cross = (.375, .625, .375), self = (1/3, .25, .125),
// cross * self = (.125, .15625, .046875): token 2 is dropped first, then token 0.

std::vector<float> random_causal(index_t heads, index_t L, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> z(0.0f, 2.0f);
  std::vector<float> a(static_cast<std::size_t>(heads * L * L), 0.0f);
  for (index_t h = 0; h < heads; ++h) {
    for (index_t i = 0; i < L; ++i) {
      float* row = a.data() + (h * L + i) * L;
      float sum = 0.0f;
      for (index_t j = 0; j <= i; ++j) sum += (row[j] = std::exp(z(rng)));
      for (index_t j = 0; j <= i; ++j) row[j] /= sum;
    }
  }
  return a;
}

template <class F>
void expect_error(F&& f, errc code, const std::string& name) {
  try {
    f();
    FAIL() << "no throw, expected " << name;
  } catch (const error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
  }
}

std::vector<token_index> prune(const std::vector<float>& a, index_t heads, index_t L, token_range vis, index_t drop,
                               fitprune::layer_result* res = nullptr) {
  head_attention_view<float> view(a.data(), {heads, L, L});
  std::vector<token_index> kept(static_cast<std::size_t>(vis.count));
  const auto r = fitprune::prune_layer(seq, view, vis, drop, kept);
  kept.resize(static_cast<std::size_t>(r.count));
  if (res != nullptr) *res = r;
  return kept;
}

fitprune::recipe small_recipe() {
  fitprune::recipe r;
  r.geometry = {.hidden = 8, .ffn = 16, .layers = 3, .visual_tokens = 10};
  r.drops = {3, 4, 2};
  r.reduction = 0.5;
  return r;
}

}  // namespace

// ---- FLOPs model ------------------------------------------------------------------------------

TEST(FitPruneFlops, Vicuna7BDefaultsByHand) {
  // d = 4096, m = 11008, n = 576:
  //   3 n d^2 = 3 * 576 * 16777216 = 28991029248;  2 n^2 d = 2 * 331776 * 4096 = 2717908992
  //   n d^2 = 9663676416;  3 n d m = 3 * 2359296 * 11008 = 77913391104
  const fitprune::flops_model f;
  EXPECT_EQ(f.before(576), 28991029248LL + 2717908992LL);
  EXPECT_EQ(f.after(576), 9663676416LL + 77913391104LL);
  EXPECT_EQ(f.layer(576), 119286005760LL);
  EXPECT_EQ(f.original(), 32 * 119286005760LL);  // 3817152184320, as the official script's constant
  EXPECT_EQ(f.before(0), 0);
  EXPECT_EQ(f.after(1), 4096LL * 4096 + 3LL * 4096 * 11008);
  // cost of "no drops" is the original
  std::vector<index_t> none(32, 0);
  EXPECT_EQ(f.cost(none, 576), f.original());
}

TEST(FitPruneFlops, OfficialRecipeRatio) {
  // fitprune_reference.py: "official 50% recipe: cost ratio 0.5034182992497912 keep 173"
  const auto r = fitprune::load_recipe((kDataDir / "llava-v1.5-7b-50.json").string());
  EXPECT_EQ(fitprune::flops_ratio(r, 576), 0.5034182992497912);
  EXPECT_EQ(fitprune::keep_count(576, r), 173);
}

// ---- recipes ----------------------------------------------------------------------------------

TEST(FitPruneRecipe, ScalingFloorsPerLayer) {
  const auto r = small_recipe();  // drops {3, 4, 2} fitted for 10 tokens
  // n = 7: floor(21/10) = 2, floor(28/10) = 2, floor(14/10) = 1 -> keep 2
  EXPECT_EQ(fitprune::drops_at(r, 0, 7), 2);
  EXPECT_EQ(fitprune::drops_at(r, 1, 7), 2);
  EXPECT_EQ(fitprune::drops_at(r, 2, 7), 1);
  EXPECT_EQ(fitprune::keep_count(7, r), 2);
  EXPECT_EQ(fitprune::remaining_after(7, r, 0), 7);
  EXPECT_EQ(fitprune::remaining_after(7, r, 1), 5);
  EXPECT_EQ(fitprune::keep_count(10, r), 1);
  // n = 25: 7, 10, 5 -> keep 3;  n = 0 -> 0
  std::vector<index_t> d(3);
  fitprune::scaled_drops(r, 25, d);
  EXPECT_EQ(d, (std::vector<index_t>{7, 10, 5}));
  EXPECT_EQ(fitprune::keep_count(25, r), 3);
  EXPECT_EQ(fitprune::keep_count(0, r), 0);
  // Official LLaVA-NeXT table (fitted for 2880): k = 162 at n = 2000 -> floor(112.5) = 112.
  const auto next = fitprune::load_recipe((kDataDir / "llava-v1.6-vicuna-7b-40.json").string());
  EXPECT_EQ(fitprune::drops_at(next, 2, 2000), 112);
  EXPECT_EQ(fitprune::drops_at(next, 0, 2000), 4);  // 7 * 2000 / 2880 = 4.86
  EXPECT_EQ(fitprune::keep_count(2880, next), 2880 - 1512);

  expect_error([&] { fitprune::drops_at(r, 3, 7); }, errc::invalid_argument, "fitprune.layer");
  expect_error([&] { (void)fitprune::keep_count(-1, r); }, errc::invalid_argument, "fitprune.n");
  std::vector<index_t> wrong(2);
  expect_error([&] { fitprune::scaled_drops(r, 7, wrong); }, errc::shape_mismatch, "fitprune.scaled_drops.out.size()");
}

TEST(FitPruneRecipe, Validation) {
  auto r = small_recipe();
  EXPECT_NO_THROW(fitprune::validate(r));
  r.drops[1] = -1;
  expect_error([&] { fitprune::validate(r); }, errc::invalid_argument, "fitprune.recipe.drops[1] = -1");
  r = small_recipe();
  r.drops.push_back(0);
  expect_error([&] { fitprune::validate(r); }, errc::invalid_argument, "fitprune.recipe.drops.size() = 4");
  r = small_recipe();
  r.drops = {5, 5, 1};
  expect_error([&] { fitprune::validate(r); }, errc::invalid_argument, "fitprune.recipe.drops");
  r = small_recipe();
  r.reduction = 1.0;
  expect_error([&] { fitprune::validate(r); }, errc::invalid_argument, "fitprune.recipe.reduction = 1");
  r.reduction = std::numeric_limits<double>::quiet_NaN();
  expect_error([&] { fitprune::validate(r); }, errc::invalid_argument, "fitprune.recipe.reduction");
  r = small_recipe();
  r.alpha = 1.5;
  expect_error([&] { fitprune::validate(r); }, errc::invalid_argument, "fitprune.recipe.alpha = 1.5");
  r = small_recipe();
  r.geometry.layers = 0;
  expect_error([&] { fitprune::validate(r); }, errc::invalid_argument, "fitprune.recipe.geometry.layers = 0");
  r = small_recipe();
  r.geometry.visual_tokens = 0;
  expect_error([&] { (void)fitprune::keep_count(5, r); }, errc::invalid_argument, "fitprune.recipe.geometry.visual_tokens");
  // The identity recipe (reduction 0, no drops) is valid.
  r = small_recipe();
  r.drops = {0, 0, 0};
  r.reduction = 0.0;
  EXPECT_EQ(fitprune::keep_count(10, r), 10);
}

// ---- JSON -------------------------------------------------------------------------------------

TEST(FitPruneJson, RoundTrip) {
  auto r = small_recipe();
  r.alpha = 0.3125;
  r.model = "tiny";
  r.source = "test";
  const std::string text = fitprune::recipe_to_json(r);
  EXPECT_NE(text.find("\"drops\": [3, 4, 2]"), std::string::npos) << text;
  const auto back = fitprune::recipe_from_json(text);
  EXPECT_EQ(back.drops, r.drops);
  EXPECT_EQ(back.geometry.hidden, 8);
  EXPECT_EQ(back.geometry.ffn, 16);
  EXPECT_EQ(back.geometry.layers, 3);
  EXPECT_EQ(back.geometry.visual_tokens, 10);
  EXPECT_EQ(back.reduction, 0.5);
  ASSERT_TRUE(back.alpha.has_value());
  EXPECT_EQ(*back.alpha, 0.3125);
  EXPECT_EQ(back.model, "tiny");
  EXPECT_EQ(back.source, "test");
  // alpha absent -> null -> absent; compact form parses too.
  r.alpha.reset();
  const auto compact = fitprune::recipe_to_json(r, -1);
  EXPECT_EQ(compact.find('\n'), std::string::npos);
  EXPECT_NE(compact.find("\"alpha\":null"), std::string::npos) << compact;
  EXPECT_FALSE(fitprune::recipe_from_json(compact).alpha.has_value());
  // Through a file.
  const auto path = (std::filesystem::temp_directory_path() / "tokensel_fitprune_roundtrip.json").string();
  fitprune::save_recipe(r, path);
  EXPECT_EQ(fitprune::load_recipe(path).drops, r.drops);
  std::filesystem::remove(path);
}

TEST(FitPruneJson, RejectsMalformedInput) {
  const std::string good =
      R"({"geometry": {"hidden": 8, "ffn": 16, "layers": 3, "visual_tokens": 10}, "reduction": 0.5, "drops": [3, 4, 2]})";
  EXPECT_EQ(fitprune::recipe_from_json(good).drops, (std::vector<index_t>{3, 4, 2}));
  auto with = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    s.replace(s.find(from), from.size(), to);
    return s;
  };
  struct bad_case {
    std::string text;
    std::string field;
  };
  const std::vector<bad_case> cases = {
      {"{\"geometry\": ", "fitprune.recipe.json"},
      {"[1, 2]", "fitprune.recipe.json"},
      {with("\"drops\": [3, 4, 2]", "\"dropz\": [3, 4, 2]"), "fitprune.recipe.drops"},
      {with("\"layers\": 3, ", ""), "fitprune.recipe.geometry.layers"},
      {with("[3, 4, 2]", "[3, -4, 2]"), "fitprune.recipe.drops[1]"},
      {with("[3, 4, 2]", "[3, 4]"), "fitprune.recipe.drops.size()"},
      {with("[3, 4, 2]", "[3, 4, 2, 0]"), "fitprune.recipe.drops.size()"},
      {with("[3, 4, 2]", "[3, 4, 4]"), "fitprune.recipe.drops"},
      {with("[3, 4, 2]", "[3, 4.5, 2]"), "fitprune.recipe.drops[1]"},
      {with("[3, 4, 2]", "\"3 4 2\""), "fitprune.recipe.drops"},
      {with("0.5", "\"half\""), "fitprune.recipe.reduction"},
      {with("0.5", "1.5"), "fitprune.recipe.reduction"},
      {with("\"hidden\": 8", "\"hidden\": -8"), "fitprune.recipe.geometry.hidden"},
      {with("\"hidden\": 8", "\"hidden\": 99999999999"), "fitprune.recipe.geometry.hidden"},
      {with("{\"geometry\"", "{\"format\": \"other\", \"geometry\""), "fitprune.recipe.format"},
      {with("{\"geometry\"", "{\"version\": 2, \"geometry\""), "fitprune.recipe.version"},
      {with("{\"geometry\"", "{\"alpha\": \"x\", \"geometry\""), "fitprune.recipe.alpha"},
      {with("{\"geometry\"", "{\"model\": 7, \"geometry\""), "fitprune.recipe.model"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.text);
    expect_error([&] { fitprune::recipe_from_json(c.text); }, errc::parse_error, c.field);
  }
  expect_error([&] { fitprune::load_recipe("/nonexistent/dir/recipe.json"); }, errc::io_error, "fitprune.recipe.path");
}

TEST(FitPruneJson, OfficialRecipesLoad) {
  // The official LLaVA-1.5-7B tables (reduction -> total drops) and the LLaVA-NeXT ones (2880).
  const std::vector<std::pair<int, index_t>> v15 = {{10, 66}, {20, 149}, {30, 264}, {40, 336}, {50, 403},
                                                    {55, 424}, {60, 449}, {70, 488}, {80, 514}, {90, 539}};
  for (const auto& [pct, total] : v15) {
    const auto r = fitprune::load_recipe((kDataDir / ("llava-v1.5-7b-" + std::to_string(pct) + ".json")).string());
    EXPECT_EQ(r.geometry.visual_tokens, 576);
    EXPECT_EQ(r.geometry.layers, 32);
    EXPECT_DOUBLE_EQ(r.reduction, pct / 100.0);
    EXPECT_EQ(std::accumulate(r.drops.begin(), r.drops.end(), index_t{0}), total) << pct;
    EXPECT_FALSE(r.alpha.has_value());
    EXPECT_EQ(r.model, "llava-v1.5-7b");
  }
  const auto r90 = fitprune::load_recipe((kDataDir / "llava-v1.5-7b-90.json").string());
  EXPECT_EQ(r90.drops[0], 262);
  EXPECT_EQ(r90.drops[1], 153);
  EXPECT_EQ(fitprune::load_recipe((kDataDir / "llava-v1.6-vicuna-7b-60.json").string()).geometry.visual_tokens, 2880);
}

// ---- runtime ----------------------------------------------------------------------------------

TEST(FitPruneRuntime, HandComputedDrops) {
  const auto a = tokensel_test::tiny_causal_map();
  fitprune::layer_result res;
  EXPECT_EQ(prune(a, 2, 7, {2, 3}, 0, &res), (std::vector<token_index>{0, 1, 2}));
  EXPECT_EQ(res.cross_mass, 0.0f);  // drop 0: attention not read
  EXPECT_EQ(prune(a, 2, 7, {2, 3}, 1, &res), (std::vector<token_index>{0, 1}));
  EXPECT_EQ(res.count, 2);
  EXPECT_EQ(res.dropped, 1);
  EXPECT_EQ(res.cross_mass, .6875f);
  EXPECT_EQ(res.self_mass, 2.125f / 3.0f);
  EXPECT_EQ(prune(a, 2, 7, {2, 3}, 2), (std::vector<token_index>{1}));
  EXPECT_EQ(prune(a, 2, 7, {2, 3}, 3), (std::vector<token_index>{}));
  // Head mean instead of max: cross = (.28125, .46875, .25), self = (.75, .625, .3125) / 3:
  // products (.0703, .0977, .0260) -> token 2 dropped first, then 0.
  head_attention_view<float> view(a.data(), {2, 7, 7});
  std::vector<token_index> kept(3);
  auto r = fitprune::prune_layer(seq, view, {2, 3}, 2, {.heads = head_reduction::mean}, kept);
  EXPECT_EQ(r.count, 1);
  EXPECT_EQ(kept[0], 1);
}

TEST(FitPruneRuntime, TiesDropTheLowerIndexFirst) {
  // A constant map: every visual token has cross = 2 * .125 and self = .125, all products tie.
  const index_t L = 8;
  std::vector<float> a(static_cast<std::size_t>(L * L), 0.125f);
  const auto kept = prune(a, 1, L, {2, 4}, 2);
  EXPECT_EQ(kept, (std::vector<token_index>{2, 3}));
  EXPECT_EQ(prune(a, 1, L, {2, 4}, 3), (std::vector<token_index>{3}));
}

TEST(FitPruneRuntime, MatchesBruteForceAndPolicies) {
  const index_t heads = 3, L = 160;
  const token_range vis{9, 120};
  const auto a = random_causal(heads, L, 5);
  // Brute force: max over heads, products, stable sort ascending by (score, index).
  std::vector<double> score(static_cast<std::size_t>(vis.count));
  for (index_t j = 0; j < vis.count; ++j) {
    double c = 0, s = 0;
    for (index_t i = vis.begin; i < L; ++i) {
      float m = 0.0f;
      for (index_t h = 0; h < heads; ++h) m = std::max(m, a[static_cast<std::size_t>((h * L + i) * L + vis.begin + j)]);
      (i < vis.end() ? s : c) += m;
    }
    score[j] = c * s / vis.count;
  }
  std::vector<token_index> order(static_cast<std::size_t>(vis.count));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](token_index x, token_index y) { return score[x] < score[y]; });
  const index_t drop = 45;
  std::vector<token_index> expect(order.begin() + drop, order.end());
  std::sort(expect.begin(), expect.end());

  head_attention_view<float> view(a.data(), {heads, L, L});
  std::vector<token_index> k1(static_cast<std::size_t>(vis.count)), k2(k1.size());
  const auto r1 = fitprune::prune_layer(seq, view, vis, drop, k1);
  const auto r2 = fitprune::prune_layer(threaded_policy{.threads = 2}, view, vis, drop, k2);
  k1.resize(static_cast<std::size_t>(r1.count));
  k2.resize(static_cast<std::size_t>(r2.count));
  EXPECT_EQ(r1.count, vis.count - drop);
  EXPECT_EQ(k1, expect);
  EXPECT_EQ(k1, k2);
  EXPECT_EQ(std::memcmp(&r1.cross_mass, &r2.cross_mass, sizeof(float)), 0);
  EXPECT_TRUE(std::is_sorted(k1.begin(), k1.end()));

  // fp16 copy: scores well separated at this size -> same selection.
  std::vector<Eigen::half> h(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) h[i] = Eigen::half(a[i]);
  std::vector<token_index> k3(static_cast<std::size_t>(vis.count));
  const auto r3 = fitprune::prune_layer(seq, head_attention_view<Eigen::half>(h.data(), {heads, L, L}), vis, drop, k3);
  k3.resize(static_cast<std::size_t>(r3.count));
  std::size_t same = 0;
  for (auto x : k3) same += std::binary_search(k1.begin(), k1.end(), x) ? 1 : 0;
  EXPECT_GE(same + 2, k1.size());  // at most a near-tie or two may flip under fp16 rounding
}

TEST(FitPruneRuntime, BatchedForms) {
  const auto a = tokensel_test::tiny_causal_map();
  // Batch of 2 identical samples, drop 1 each.
  std::vector<float> two(a);
  two.insert(two.end(), a.begin(), a.end());
  attention_view<float> batch(two.data(), {2, 2, 7, 7});
  std::vector<token_index> idx(6, -1), counts(2);
  std::vector<fitprune::layer_result> res(2);
  fitprune::prune_layer(par, batch, {2, 3}, 1, {}, selection_batch{{idx.data(), {2, 3}}, counts}, std::span(res));
  EXPECT_EQ(counts, (std::vector<token_index>{2, 2}));
  EXPECT_EQ(idx[0], 0);
  EXPECT_EQ(idx[1], 1);
  EXPECT_EQ(idx[3], 0);
  EXPECT_EQ(idx[4], 1);
  EXPECT_EQ(res[1].cross_mass, .6875f);
  // Ragged: different drops; second sample sees the span [2, 4) only.
  std::vector<head_attention_view<float>> views = {head_attention_view<float>(a.data(), {2, 7, 7}),
                                                   head_attention_view<float>(a.data(), {2, 7, 7})};
  std::vector<token_range> spans = {{2, 3}, {2, 2}};
  std::vector<index_t> drops = {2, 0};
  std::fill(idx.begin(), idx.end(), -1);
  fitprune::prune_layer(seq, std::span<const head_attention_view<float>>(views), std::span<const token_range>(spans),
                        std::span<const index_t>(drops), {}, selection_batch{{idx.data(), {2, 3}}, counts});
  EXPECT_EQ(counts, (std::vector<token_index>{1, 2}));
  EXPECT_EQ(idx[0], 1);
  EXPECT_EQ(idx[3], 0);
  EXPECT_EQ(idx[4], 1);
  std::vector<index_t> one_drop = {1};
  expect_error([&] {
    fitprune::prune_layer(seq, std::span<const head_attention_view<float>>(views), std::span<const token_range>(spans),
                          std::span<const index_t>(one_drop), {}, selection_batch{{idx.data(), {2, 3}}, counts});
  }, errc::shape_mismatch, "fitprune.drops.size()");
  // Empty batch is valid.
  fitprune::prune_layer(seq, attention_view<float>(nullptr, {0, 2, 7, 7}), {2, 3}, 1, {},
                        selection_batch{{nullptr, {0, 3}}, std::span<token_index>()});
}

TEST(FitPruneRuntime, RejectsBadInput) {
  auto a = tokensel_test::tiny_causal_map();
  head_attention_view<float> view(a.data(), {2, 7, 7});
  std::vector<token_index> kept(3), small(1);
  expect_error([&] { (void)fitprune::prune_layer(seq, view, {2, 3}, 4, kept); }, errc::invalid_argument, "fitprune.drop = 4");
  expect_error([&] { (void)fitprune::prune_layer(seq, view, {2, 3}, -1, kept); }, errc::invalid_argument, "fitprune.drop = -1");
  expect_error([&] { (void)fitprune::prune_layer(seq, view, {2, 3}, 1, small); }, errc::shape_mismatch, "fitprune.kept.size()");
  expect_error([&] { (void)fitprune::prune_layer(seq, view, {6, 3}, 1, kept); }, errc::invalid_argument, "fitprune.visual");
  expect_error([&] { (void)fitprune::prune_layer(seq, view.slice(2, 0, 6), {2, 3}, 1, kept); }, errc::shape_mismatch, "fitprune.attention");
  a[0 * 49 + 5 * 7 + 4] = std::numeric_limits<float>::quiet_NaN();
  expect_error([&] { (void)fitprune::prune_layer(seq, view, {2, 3}, 1, kept); }, errc::non_finite, "region_mass.attention[5, 4]");
  // n = 0 is valid.
  EXPECT_EQ(fitprune::prune_layer(seq, view, {3, 0}, 0, std::span<token_index>()).count, 0);
}

TEST(FitPrunePositions, TrackOriginalPositionsAcrossLayers) {
  fitprune::position_tracker pos(6);
  std::vector<token_index> k1 = {0, 2, 3, 5};
  pos.keep(k1);
  EXPECT_EQ(std::vector<token_index>(pos.positions().begin(), pos.positions().end()), (std::vector<token_index>{0, 2, 3, 5}));
  std::vector<token_index> k2 = {1, 3};
  pos.keep(k2);
  EXPECT_EQ(std::vector<token_index>(pos.positions().begin(), pos.positions().end()), (std::vector<token_index>{2, 5}));
  // Sequence positions: start at s0 = 35.
  fitprune::position_tracker seqpos(6, 35);
  seqpos.keep(k1);
  seqpos.keep(k2);
  EXPECT_EQ(seqpos.positions()[0], 37);
  EXPECT_EQ(seqpos.positions()[1], 40);
  // Bad kept sets.
  std::vector<token_index> unsorted = {1, 0};
  expect_error([&] { pos.keep(unsorted); }, errc::invalid_argument, "fitprune.kept[1]");
  std::vector<token_index> outside = {2};
  expect_error([&] { pos.keep(outside); }, errc::invalid_argument, "fitprune.kept[0]");
  pos.reset(3);
  EXPECT_EQ(pos.size(), 3);
  // Runtime loop over a recipe: the tiny map at two layers with drops {1, 1} keeps original token 1.
  const auto a = tokensel_test::tiny_causal_map();
  head_attention_view<float> view(a.data(), {2, 7, 7});
  fitprune::position_tracker p(3);
  std::vector<token_index> kept(3);
  auto r = fitprune::prune_layer(seq, view, {2, 3}, 1, kept);
  p.keep(std::span<const token_index>(kept.data(), static_cast<std::size_t>(r.count)));
  EXPECT_EQ(p.positions()[1], 1);
}

// ---- calibration ------------------------------------------------------------------------------

namespace {

// Synthetic calibration set of fitprune_reference.py: d = m = 1, 2 layers, 4 visual tokens;
// original = 2 * layer(4) = 120 FLOPs. Layer 1 is flat (.25 each) in every sample.
const fitprune::flops_model kTinyGeometry{.hidden = 1, .ffn = 1, .layers = 2, .visual_tokens = 4};

void add_sample(fitprune::calibrator& cal, std::vector<float> c0, std::vector<float> s0) {
  const index_t id = cal.add_sample();
  cal.add_layer(id, 0, {.cross = c0, .self = s0, .text_rows = 1, .cross_mass = 1.0, .self_mass = 1.0});
  const std::vector<float> flat(4, .25f);
  cal.add_layer(id, 1, {.cross = flat, .self = flat, .text_rows = 1, .cross_mass = 1.0, .self_mass = 1.0});
}

fitprune::calibrator sample_a() {
  fitprune::calibrator cal(kTinyGeometry);
  add_sample(cal, {.1f, .2f, .3f, .4f}, {.4f, .1f, .2f, .3f});
  return cal;
}

}  // namespace

TEST(FitPruneCalibration, FitOnceByHand) {
  // Sample A, layer 0: cross order 0,1,2,3 and self order 1,2,3,0, both with suffix masses
  // (1, .9, .7, .4, 0). alpha = .5 keeps >= .5: 2 removable each, {0,1} n {1,2} = {1}.
  // alpha = .75: 3 each, {0,1,2} n {1,2,3} = {1,2}. alpha = 1: all 4.
  // Cost at the layer-1 check with n tokens left: 44 + 11 n + 2 n^2 (n = 3: 95, 2: 74, 0: 44).
  // fitprune_reference.py:
  //   FIT A alpha=0.25 r=0.3: ([0, 1], False, 2, 0.9666666666666667)
  //   FIT A alpha=0.5 r=0.3: ([1, 1], False, 2, 0.7583333333333333)
  //   FIT A alpha=0.75 r=0.3: ([2, 0], True, 1, 0.6166666666666667)
  //   FIT A alpha=1.0 r=0.3: ([4, 0], True, 1, 0.36666666666666664)
  const auto cal = sample_a();
  struct row {
    double alpha;
    std::vector<index_t> drops;
    bool reached;
    index_t stop;
    double ratio;
  };
  for (const row& x : {row{.25, {0, 1}, false, 2, 0.9666666666666667}, row{.5, {1, 1}, false, 2, 0.7583333333333333},
                       row{.75, {2, 0}, true, 1, 0.6166666666666667}, row{1.0, {4, 0}, true, 1, 0.36666666666666664}}) {
    SCOPED_TRACE(x.alpha);
    const auto p = cal.fit_once(x.alpha, 0.3);
    EXPECT_EQ(p.drops, x.drops);
    EXPECT_EQ(p.reached, x.reached);
    EXPECT_EQ(p.stop_layer, x.stop);
    EXPECT_DOUBLE_EQ(p.flops_ratio, x.ratio);
  }
}

TEST(FitPruneCalibration, MeanCostAndFloorOfMeanOverSamples) {
  // Sample B: cross order 3,2,1,0, self order 0,1,2,3: alpha = .5 -> {3,2} n {0,1} = {} ;
  // alpha = .75 -> {3,2,1} n {0,1,2} = {1,2}. With A (1 and 2 removed):
  //   alpha .5: floor((1 + 0) / 2) = 0 per layer, mean cost (95 + 120) / 2 = 107.5 <= 108 -> reached
  // fitprune_reference.py:
  //   FIT {A,B} alpha=0.5 r=0.1: ([0, 0], True, 1, 0.8958333333333334)
  //   FIT {A,B} alpha=0.75 r=0.1: ([2, 0], True, 1, 0.6166666666666667)
  auto cal = sample_a();
  add_sample(cal, {.4f, .3f, .2f, .1f}, {.1f, .2f, .3f, .4f});
  auto p = cal.fit_once(.5, .1);
  EXPECT_EQ(p.drops, (std::vector<index_t>{0, 0}));
  EXPECT_TRUE(p.reached);
  EXPECT_EQ(p.stop_layer, 1);
  EXPECT_DOUBLE_EQ(p.flops_ratio, 0.8958333333333334);
  p = cal.fit_once(.75, .1);
  EXPECT_EQ(p.drops, (std::vector<index_t>{2, 0}));
}

TEST(FitPruneCalibration, BisectionTerminatesAndPicksUpper) {
  // fitprune_reference.py: bisection A r=0.3: lo 0.59375, hi 0.6015625, 7 iterations,
  // upper ([2, 0], True, 1, 0.6166666666666667)
  const auto cal = sample_a();
  const auto res = cal.fit(0.3);
  EXPECT_EQ(res.iterations, 7);
  EXPECT_EQ(res.lower, 0.59375);
  EXPECT_EQ(res.upper, 0.6015625);
  EXPECT_LE(res.upper - res.lower, 0.01);
  EXPECT_GT(2 * (res.upper - res.lower), 0.01);  // stopped at the first width <= 0.01
  EXPECT_EQ(res.alpha, 0.6015625);
  EXPECT_TRUE(res.reached);
  EXPECT_EQ(res.recipe.drops, (std::vector<index_t>{2, 0}));
  EXPECT_EQ(res.recipe.reduction, 0.3);
  ASSERT_TRUE(res.recipe.alpha.has_value());
  EXPECT_EQ(*res.recipe.alpha, 0.6015625);
  EXPECT_EQ(res.recipe.geometry.visual_tokens, 4);
  EXPECT_NO_THROW(fitprune::validate(res.recipe));
  EXPECT_DOUBLE_EQ(res.flops_ratio, 0.6166666666666667);
  // Coarser tolerance: fewer iterations (widths 1/2, 1/4, 1/8 -> stops at 0.125 <= 0.2).
  EXPECT_EQ(cal.fit(0.3, {.tolerance = 0.2}).iterations, 3);
  // A tolerance below the spacing of doubles (found by fuzzing: it looped forever) stops when
  // the bracket cannot shrink any more: at most ~1075 halvings, same recipe.
  const auto tiny = cal.fit(0.3, {.tolerance = 5e-324});
  EXPECT_LT(tiny.iterations, 1100);
  EXPECT_EQ(tiny.recipe.drops, (std::vector<index_t>{2, 0}));
}

TEST(FitPruneCalibration, UpperVersusOfficialLastIterate) {
  // r = 0.45 needs n <= 1 after layer 0: only alpha = 1 reaches it. Every mid fails, so the
  // recipe is FIT(1) = [4, 0]; the official script would print the last mid's recipe [2, 1].
  // fitprune_reference.py: bisection A r=0.45: lo 0.9921875, hi 1.0, 7 iterations,
  //   upper ([4, 0], True, 1, ...), last (0.9921875, ([2, 1], False, 2, ...))
  const auto cal = sample_a();
  const auto upper = cal.fit(0.45);
  EXPECT_EQ(upper.recipe.drops, (std::vector<index_t>{4, 0}));
  EXPECT_EQ(upper.alpha, 1.0);
  EXPECT_EQ(upper.lower, 0.9921875);
  EXPECT_TRUE(upper.reached);
  const auto last = cal.fit(0.45, {.pick = fitprune::recipe_pick::last_iterate});
  EXPECT_EQ(last.recipe.drops, (std::vector<index_t>{2, 1}));
  EXPECT_EQ(last.alpha, 0.9921875);
  EXPECT_FALSE(last.reached);
  EXPECT_EQ(last.iterations, 7);
}

TEST(FitPruneCalibration, FromAttentionViews) {
  // Two layers that both see the tiny map: cross is stored per text row (a_c / 2).
  fitprune::calibrator cal({.hidden = 1, .ffn = 1, .layers = 2, .visual_tokens = 3});
  const auto a = tokensel_test::tiny_causal_map();
  head_attention_view<float> view(a.data(), {2, 7, 7});
  const index_t id = cal.add_sample();
  EXPECT_FALSE(cal.complete());
  cal.add_layer(seq, id, 0, view, {2, 3});
  cal.add_layer(par, id, 1, view, {2, 3});
  EXPECT_TRUE(cal.complete());
  std::vector<token_index> present = {0, 2};
  std::vector<float> c(2), s(2);
  cal.scores(id, 1, present, c, s);
  EXPECT_EQ(c, (std::vector<float>{.1875f, .1875f}));
  EXPECT_EQ(s, (std::vector<float>{1.0f / 3.0f, .125f}));
  EXPECT_EQ(cal.cross_mass(id, 0), .6875);
  EXPECT_DOUBLE_EQ(cal.self_mass(id, 1), 2.125f / 3.0f);
  const auto res = cal.fit(0.5);
  EXPECT_TRUE(res.reached);
  EXPECT_NO_THROW(fitprune::validate(res.recipe));
  expect_error([&] { cal.add_layer(seq, id, 0, view, {2, 2}); }, errc::shape_mismatch, "fitprune.visual.count = 2");
}

namespace {
// A calibration source that records the call order and renormalises the scores over the tokens
// present (standing in for a model re-run layer by layer).
struct recording_source {
  std::vector<std::tuple<index_t, index_t, std::size_t>> calls;  // (sample, layer, present)
  bool first_layer_full = true;
  index_t samples() const { return 2; }
  double cross_mass(index_t, index_t) const { return 1.0; }
  double self_mass(index_t, index_t) const { return 1.0; }
  void scores(index_t s, index_t l, std::span<const token_index> present, std::span<float> cross, std::span<float> self) {
    calls.emplace_back(s, l, present.size());
    if (l == 0 && present.size() != 4) first_layer_full = false;
    for (std::size_t i = 0; i < present.size(); ++i) {
      cross[i] = static_cast<float>(present[i] + 1) / 10.0f;
      self[i] = static_cast<float>(4 - present[i]) / 10.0f;
    }
  }
};
static_assert(fitprune::calibration_source<recording_source>);
static_assert(fitprune::calibration_source<const fitprune::calibrator>);
}  // namespace

TEST(FitPruneCalibration, CustomSourceCallOrder) {
  recording_source src;
  const auto res = fitprune::fit(src, kTinyGeometry, 0.3);
  EXPECT_TRUE(src.first_layer_full);
  ASSERT_GE(src.calls.size(), 2u);
  // Layer-major within a pass: (0,0), (1,0), then layer 1 (if reached) ...
  EXPECT_EQ(std::get<0>(src.calls[0]), 0);
  EXPECT_EQ(std::get<1>(src.calls[0]), 0);
  EXPECT_EQ(std::get<0>(src.calls[1]), 1);
  EXPECT_EQ(std::get<1>(src.calls[1]), 0);
  for (std::size_t i = 1; i < src.calls.size(); ++i) {
    const auto [s, l, n] = src.calls[i];
    const auto [ps, pl, pn] = src.calls[i - 1];
    // Either the next sample of the same layer, the first sample of the next layer, or a new pass.
    const bool next_sample = l == pl && s == ps + 1;
    const bool next_layer = l == pl + 1 && s == 0 && ps == 1;
    const bool new_pass = l == 0 && s == 0;
    EXPECT_TRUE(next_sample || next_layer || new_pass) << i;
  }
  EXPECT_EQ(res.iterations, 7);
}

TEST(FitPruneCalibration, RejectsBadRequests) {
  auto cal = sample_a();
  expect_error([&] { (void)cal.fit(0.0); }, errc::invalid_argument, "fitprune.reduction = 0");
  expect_error([&] { (void)cal.fit(1.0); }, errc::invalid_argument, "fitprune.reduction = 1");
  expect_error([&] { (void)cal.fit(std::numeric_limits<double>::quiet_NaN()); }, errc::invalid_argument, "fitprune.reduction");
  expect_error([&] { (void)cal.fit(0.3, {.tolerance = 0.0}); }, errc::invalid_argument, "fitprune.fit_options.tolerance = 0");
  expect_error([&] { cal.fit_once(1.5, 0.3); }, errc::invalid_argument, "fitprune.alpha = 1.5");
  // Budget unreachable even at alpha = 1 (everything removed at layer 0 still costs 44/120).
  expect_error([&] { (void)cal.fit(0.7); }, errc::invalid_argument, "fitprune.reduction = 0.7");
  // Missing layer, no samples, bad sample / layer ids, wrong sizes, non-finite statistics.
  fitprune::calibrator empty(kTinyGeometry);
  expect_error([&] { (void)empty.fit(0.3); }, errc::invalid_argument, "fitprune.samples");
  const index_t id = empty.add_sample();
  const std::vector<float> flat(4, .25f), three(3, .25f);
  empty.add_layer(id, 0, {.cross = flat, .self = flat, .text_rows = 1, .cross_mass = 1.0, .self_mass = 1.0});
  expect_error([&] { (void)empty.fit(0.3); }, errc::invalid_argument, "sample 0 has no statistics for layer 1");
  expect_error([&] { empty.add_layer(1, 0, {.cross = flat, .self = flat}); }, errc::invalid_argument, "fitprune.sample = 1");
  expect_error([&] { empty.add_layer(0, 2, {.cross = flat, .self = flat}); }, errc::invalid_argument, "fitprune.layer = 2");
  expect_error([&] { empty.add_layer(0, 1, {.cross = three, .self = flat}); }, errc::shape_mismatch, "fitprune.layer_statistics.cross.size()");
  std::vector<float> nan = flat;
  nan[2] = std::numeric_limits<float>::quiet_NaN();
  expect_error([&] { empty.add_layer(0, 1, {.cross = flat, .self = nan}); }, errc::non_finite, "fitprune.layer_statistics.self[2]");
  expect_error([&] { empty.add_layer(0, 1, {.cross = flat, .self = flat, .cross_mass = std::numeric_limits<double>::infinity()}); },
               errc::non_finite, "fitprune.layer_statistics.cross_mass");
  expect_error([] { fitprune::calibrator bad({.layers = 0}); }, errc::invalid_argument, "fitprune.geometry.layers = 0");
}
