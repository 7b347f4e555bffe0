// One budget vocabulary (core/budget.hpp): budget validation, every method's with_budget contract
// (its own rounding, exact counts or a clear refusal) and requirements(config, shape).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "tokensel/core/budget.hpp"
#include "tokensel/methods/baselines.hpp"
#include "tokensel/methods/fastv.hpp"
#include "tokensel/methods/fitprune.hpp"
#include "tokensel/methods/fopru.hpp"
#include "tokensel/methods/freepruner.hpp"
#include "tokensel/methods/prumerge.hpp"
#include "tokensel/methods/visionzip.hpp"

namespace {

namespace ts = tokensel;
using ts::budget;
using ts::index_t;

/// The message of the tokensel::error f throws ("" when it throws none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const ts::error& e) {
    return e.what();
  }
  return "";
}

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

/// LLaVA-1.5 with CLIP ViT-L/14-336: 576 patches after CLS, features from layer 22 of 24.
constexpr ts::model_shape llava15{576, true, 22, 24};

// ---- budget ------------------------------------------------------------------------------------

TEST(Budget, FractionAndCountValidation) {
  for (const double bad : {0.0, -0.25, 1.0000001, 2.0, std::numeric_limits<double>::quiet_NaN(),
                           std::numeric_limits<double>::infinity()}) {
    const auto e = error_of([&] { (void)budget::fraction(bad); });
    EXPECT_TRUE(has(e, "budget.fraction") && has(e, "must be in (0, 1]")) << bad << ": " << e;
  }
  for (const index_t bad : {index_t{0}, index_t{-1}}) {
    const auto e = error_of([&] { (void)budget::count(bad); });
    EXPECT_TRUE(has(e, "budget.count") && has(e, "must be >= 1")) << bad << ": " << e;
  }
  const auto over = error_of([] { (void)budget::count(65).tokens(64, "fopru"); });
  EXPECT_TRUE(has(over, "budget.count = 65") && has(over, "exceeds the 64 visual tokens of fopru")) << over;

  EXPECT_TRUE(budget::fraction(0.5).is_fraction());
  EXPECT_FALSE(budget::count(3).is_fraction());
  EXPECT_EQ(budget::count(64).tokens(64, "x"), 64);
  EXPECT_EQ(budget::fraction(0.25).tokens(64, "x"), 16);
  EXPECT_EQ(budget::fraction(0.01).tokens(64, "x"), 1);  // at least one token
  EXPECT_EQ(budget::fraction(1.0).tokens(64, "x"), 64);
  EXPECT_EQ(budget::fraction(0.3).tokens(10, "x"), 3);   // floor(10 * 0.3) = floor(3.0000000000000004)
  EXPECT_EQ(budget::fraction(0.5).tokens(0, "x"), 0);
  EXPECT_EQ(budget::fraction(0.25).describe(), "0.25");
  EXPECT_EQ(budget::count(144).describe(), "144 tokens");
}

// ---- with_budget ----------------------------------------------------------------------------------

/// For every n in 1..300 and k in 1..n: keep_count(n, with_budget(count k)) == k, or a refusal
/// naming `param`. Returns the number refused.
template <class WithBudget, class KeepCount>
int exact_or_refused(WithBudget with_budget, KeepCount keep_count, const std::string& param) {
  int refused = 0;
  for (index_t n = 1; n <= 300; ++n) {
    for (index_t k = 1; k <= n; ++k) {
      try {
        const auto cfg = with_budget(budget::count(k), n);
        EXPECT_EQ(keep_count(n, cfg), k) << "n " << n << " k " << k;
      } catch (const ts::error& e) {
        ++refused;
        EXPECT_TRUE(has(e.what(), param)) << e.what();
      }
    }
  }
  return refused;
}

TEST(WithBudget, FoPruRankKeepsEveryCountExactly) {
  const int refused = exact_or_refused([](const budget& b, index_t n) { return ts::fopru::with_budget(b, n); },
                                       [](index_t n, const ts::fopru::config& c) { return ts::fopru::keep_count(n, c); },
                                       "fopru.budget");
  EXPECT_EQ(refused, 0);  // floor(n r) with r = k / n (or the next double up) reaches every k
  // A fraction is the ratio itself (the method's floor rule applies).
  EXPECT_EQ(ts::fopru::with_budget(budget::fraction(0.3), 10).ratio, 0.3);
  EXPECT_EQ(ts::fopru::keep_count(576, ts::fopru::with_budget(budget::fraction(0.25), 576)), 144);
}

TEST(WithBudget, FastVKeepsEveryCountExactly) {
  const int refused = exact_or_refused([](const budget& b, index_t n) { return ts::fastv::with_budget(b, n, {}); },
                                       [](index_t n, const ts::fastv::config& c) { return ts::fastv::keep_count(n, c); },
                                       "fastv.budget");
  EXPECT_EQ(refused, 0);  // the neighbouring doubles of 1 - k / n cover the half-to-even rounding
  // FastV's ratio is the dropped fraction; the layer comes from the base.
  ts::fastv::config base;
  base.layer = 3;
  const auto c = ts::fastv::with_budget(budget::fraction(0.25), 576, base);
  EXPECT_EQ(c.ratio, 0.75);
  EXPECT_EQ(c.layer, 3);
  EXPECT_EQ(ts::fastv::keep_count(576, c), 144);
}

TEST(WithBudget, FoPruRowKeepsWholeRowsOnly) {
  ts::fopru::config base;
  base.strategy = ts::fopru::strategy::row;  // 8x8 grid of 64 patches
  for (index_t k = 1; k <= 64; ++k) {
    if (k % 8 == 0) {
      EXPECT_EQ(ts::fopru::keep_count(64, ts::fopru::with_budget(budget::count(k), 64, base)), k);
    } else {
      const auto e = error_of([&] { (void)ts::fopru::with_budget(budget::count(k), 64, base); });
      EXPECT_TRUE(has(e, "fopru.budget = " + std::to_string(k) + " tokens") && has(e, "row strategy cannot keep exactly"))
          << e;
    }
  }
}

TEST(WithBudget, FreePrunerFixedBudget) {
  ts::freepruner::config base;
  base.first_layer = 2;
  base.last_layer = 5;
  const auto c = ts::freepruner::with_budget(budget::count(20), 64, base);
  EXPECT_EQ(c.mode, ts::freepruner::mode::fixed);
  EXPECT_EQ(c.budget, 20);
  EXPECT_EQ(c.first_layer, 2);  // the rest comes from the base
  EXPECT_EQ(c.last_layer, 5);
  EXPECT_EQ(ts::freepruner::keep_count(64, c), 20);
  EXPECT_EQ(ts::freepruner::with_budget(budget::fraction(0.25), 64).budget, 16);
  EXPECT_EQ(ts::freepruner::with_budget(budget::fraction(0.001), 64).budget, 1);
  EXPECT_TRUE(has(error_of([] { (void)ts::freepruner::with_budget(budget::count(65), 64); }), "exceeds the 64"));
}

TEST(WithBudget, VisionZipSplitsFiftyFourToTen) {
  struct split {
    index_t keep, dominant, contextual;
  };
  for (const auto& s : {split{64, 54, 10}, split{32, 27, 5}, split{16, 14, 2}, split{6, 6, 0}, split{192, 162, 30}}) {
    const auto c = ts::visionzip::with_budget(budget::count(s.keep), 576);
    EXPECT_EQ(c.dominant, s.dominant) << s.keep;
    EXPECT_EQ(c.contextual, s.contextual) << s.keep;
    EXPECT_EQ(ts::visionzip::keep_count(577, c), s.keep);
  }
  const auto q = ts::visionzip::with_budget(budget::fraction(0.25), 64);  // 16 rows
  EXPECT_EQ(q.dominant + q.contextual, 16);
  EXPECT_EQ(q.contextual, 2);
}

TEST(WithBudget, PruMergeRefusesAnyBudget) {
  for (const auto& b : {budget::fraction(0.5), budget::count(16)}) {
    const auto e = error_of([&] { (void)ts::prumerge::with_budget(b, 64); });
    EXPECT_TRUE(has(e, "prumerge.budget") && has(e, "adaptive")) << e;
  }
}

TEST(WithBudget, PoolPicksTheExactWindowOrNamesTheNearest) {
  const ts::token_grid g8{8, 8};
  struct exact {
    index_t keep, window;
  };
  for (const auto& x : {exact{64, 1}, exact{16, 2}, exact{9, 3}, exact{4, 4}, exact{1, 8}}) {
    const auto c = ts::baselines::pool::with_budget(budget::count(x.keep), g8);
    EXPECT_EQ(c.window, x.window) << x.keep;
    EXPECT_EQ(ts::baselines::pool::keep_count(g8, c), x.keep);
  }
  EXPECT_EQ(ts::baselines::pool::with_budget(budget::fraction(0.25), ts::token_grid{24, 24}).window, 2);  // 144
  // Half of an 8x8 grid is no window's output: refused with the achievable counts around it (the
  // runtime's old rule, window round(sqrt(2)) = 1, silently kept all 64).
  const auto e = error_of([&] { (void)ts::baselines::pool::with_budget(budget::fraction(0.5), g8); });
  EXPECT_TRUE(has(e, "pool.budget = 0.5: pooling 8x8 keeps 64 or 16 tokens, not 32: give one of those")) << e;
  const auto e10 = error_of([&] { (void)ts::baselines::pool::with_budget(budget::count(10), g8); });
  EXPECT_TRUE(has(e10, "keeps 16 or 9 tokens, not 10")) << e10;
  // Without partial windows only divisors of the grid are windows.
  ts::baselines::pool::config whole;
  whole.partial_windows = false;
  EXPECT_TRUE(has(error_of([&] { (void)ts::baselines::pool::with_budget(budget::count(9), g8, whole); }), "not 9"));
}

TEST(WithBudget, RandomAndUniformTakeTheBudgetAsIs) {
  ts::baselines::random::config base;
  base.seed = 7;
  base.count = 3;  // replaced
  const auto f = ts::baselines::random::with_budget(budget::fraction(0.25), 64, base);
  EXPECT_EQ(f.ratio, 0.25);
  EXPECT_FALSE(f.count.has_value());
  EXPECT_EQ(f.seed, 7u);
  EXPECT_EQ(ts::baselines::random::keep_count(64, f), 16);
  const auto c = ts::baselines::random::with_budget(budget::count(5), 64, base);
  EXPECT_EQ(c.count, 5);
  EXPECT_FALSE(c.ratio.has_value());
  const auto u = ts::baselines::uniform::with_budget(budget::count(10), 64);
  EXPECT_EQ(ts::baselines::uniform::keep_count(64, u), 10);
  EXPECT_EQ(ts::baselines::uniform::keep_count(64, ts::baselines::uniform::with_budget(budget::fraction(0.5), 64)), 32);
  EXPECT_TRUE(has(error_of([] { (void)ts::baselines::uniform::with_budget(budget::count(65), 64); }), "exceeds"));
}

// ---- requirements --------------------------------------------------------------------------------

TEST(Requirements, FoPruReadsTheFeatureLayersFullMap) {
  const auto c = ts::fopru::with_budget(budget::fraction(0.25), 576);
  const auto r = ts::fopru::requirements(c, llava15);
  EXPECT_EQ(r.stage, ts::stage::encoder);
  EXPECT_EQ(r.layers.first, 22);
  EXPECT_EQ(r.layers.last, 22);
  EXPECT_TRUE(r.extra_layer.empty());
  EXPECT_TRUE(r.full_maps);
  EXPECT_FALSE(r.cls_row || r.last_query_row || r.keys || r.hidden_states || r.adaptive);
  EXPECT_EQ(r.keep, 144);
  EXPECT_EQ(r.output_rows, 144);
  // skip_cls must match the model.
  auto no_cls = llava15;
  no_cls.cls = false;
  const auto e = error_of([&] { (void)ts::fopru::requirements(c, no_cls); });
  EXPECT_TRUE(has(e, "fopru.skip_cls") && has(e, "must match the model")) << e;
  auto sig = c;
  sig.skip_cls = false;
  EXPECT_EQ(ts::fopru::requirements(sig, no_cls).keep, 144);
  // The feature layer must be given and exist.
  auto deep = llava15;
  deep.feature_layer = 24;
  EXPECT_TRUE(has(error_of([&] { (void)ts::fopru::requirements(c, deep); }), "must be below the 24 encoder layers"));
  deep.feature_layer = -1;
  EXPECT_TRUE(has(error_of([&] { (void)ts::fopru::requirements(c, deep); }), "fopru.shape.feature_layer"));
}

TEST(Requirements, FreePrunerLayersAndAdaptiveMaximum) {
  ts::freepruner::config c;  // adaptive, pivotal 6..22, complementary 22 (defaults)
  const auto r = ts::freepruner::requirements(c, llava15);
  EXPECT_EQ(r.layers.first, c.first_layer);
  EXPECT_EQ(r.layers.last, c.last_layer);
  EXPECT_TRUE(r.full_maps);
  EXPECT_TRUE(r.adaptive);
  EXPECT_EQ(r.keep, 576);  // at most every patch
  EXPECT_EQ(r.output_rows, 576);
  c.complementary_layer = 23;  // outside the pivotal range: one more layer
  const auto x = ts::freepruner::requirements(c, llava15);
  EXPECT_EQ(x.extra_layer.first, 23);
  EXPECT_EQ(x.extra_layer.last, 23);
  const auto fixed = ts::freepruner::requirements(ts::freepruner::with_budget(budget::count(64), 576, c), llava15);
  EXPECT_FALSE(fixed.adaptive);
  EXPECT_EQ(fixed.keep, 64);
  c.complementary_layer = 24;
  EXPECT_TRUE(has(error_of([&] { (void)ts::freepruner::requirements(c, llava15); }), "freepruner.complementary_layer"));
  auto no_cls = llava15;
  no_cls.cls = false;
  EXPECT_TRUE(has(error_of([&] { (void)ts::freepruner::requirements(ts::freepruner::config{}, no_cls); }), "freepruner.skip_cls"));
}

TEST(Requirements, VisionZipReadsTheClsRowKeysAndHiddenStates) {
  const auto r = ts::visionzip::requirements(ts::visionzip::config{}, llava15);
  EXPECT_EQ(r.layers.first, 22);
  EXPECT_EQ(r.layers.last, 22);
  EXPECT_TRUE(r.cls_row && r.keys && r.hidden_states);
  EXPECT_FALSE(r.full_maps || r.adaptive);
  EXPECT_EQ(r.keep, 64);
  EXPECT_EQ(r.output_rows, 64);
  auto no_cls = llava15;
  no_cls.cls = false;
  EXPECT_TRUE(has(error_of([&] { (void)ts::visionzip::requirements(ts::visionzip::config{}, no_cls); }), "visionzip.model"));
  auto deep = llava15;
  deep.feature_layer = 30;
  EXPECT_TRUE(has(error_of([&] { (void)ts::visionzip::requirements(ts::visionzip::config{}, deep); }), "encoder layers"));
}

TEST(Requirements, PruMergeReadsTheLayerAfterTheFeatureLayer) {
  ts::prumerge::config c;
  const auto r = ts::prumerge::requirements(c, llava15);
  EXPECT_EQ(r.layers.first, 23);  // the last CLIP layer's Q/K of the features (official code)
  EXPECT_EQ(r.layers.last, 23);
  EXPECT_TRUE(r.cls_row && r.keys && r.hidden_states && r.adaptive);
  EXPECT_EQ(r.keep, ts::prumerge::max_count(576, c));
  EXPECT_EQ(r.output_rows, ts::prumerge::max_rows(576, c));
  EXPECT_EQ(r.output_rows, r.keep + 1);  // the extra row
  auto last = llava15;
  last.feature_layer = 23;  // no layer after it
  EXPECT_TRUE(has(error_of([&] { (void)ts::prumerge::requirements(c, last); }), "prumerge.shape.feature_layer"));
  auto no_cls = llava15;
  no_cls.cls = false;
  EXPECT_TRUE(has(error_of([&] { (void)ts::prumerge::requirements(c, no_cls); }), "prumerge.model"));
}

TEST(Requirements, FastVReadsOneLlmRow) {
  ts::fastv::config base;
  base.layer = 2;
  const auto r = ts::fastv::requirements(ts::fastv::with_budget(budget::fraction(0.25), 576, base), llava15);
  EXPECT_EQ(r.stage, ts::stage::llm);
  EXPECT_EQ(r.layers.first, 1);
  EXPECT_EQ(r.layers.last, 1);
  EXPECT_TRUE(r.last_query_row);
  EXPECT_FALSE(r.full_maps || r.cls_row || r.keys);
  EXPECT_EQ(r.keep, 144);
}

TEST(Requirements, FitPruneLayersFromTheRecipe) {
  ts::fitprune::recipe rec;
  rec.geometry = {64, 128, 6, 64};
  rec.drops = {0, 3, 2, 0, 1, 0};
  rec.reduction = 0.1;
  const auto r = ts::fitprune::requirements(rec, ts::model_shape{64, true, 2, 4});
  EXPECT_EQ(r.stage, ts::stage::llm);
  EXPECT_EQ(r.layers.first, 1);
  EXPECT_EQ(r.layers.last, 4);
  EXPECT_TRUE(r.full_maps);
  EXPECT_EQ(r.keep, 58);
  EXPECT_EQ(r.output_rows, 58);
  // Scaled to fewer tokens (floor(k n / n_fit)): 32 tokens drop 1 + 1 + 0.
  const auto half = ts::fitprune::requirements(rec, ts::model_shape{32, true, 2, 4});
  EXPECT_EQ(half.layers.first, 1);
  EXPECT_EQ(half.layers.last, 2);
  EXPECT_EQ(half.keep, 30);
  rec.drops.assign(6, 0);
  const auto none = ts::fitprune::requirements(rec, ts::model_shape{64, true, 2, 4});
  EXPECT_TRUE(none.layers.empty());
  EXPECT_FALSE(none.full_maps);
  EXPECT_EQ(none.keep, 64);
}

TEST(Requirements, BaselinesReadNothingButPooledRows) {
  const auto rr = ts::baselines::random::requirements(ts::baselines::random::with_budget(budget::count(10), 576), llava15);
  EXPECT_TRUE(rr.layers.empty());
  EXPECT_FALSE(rr.full_maps || rr.cls_row || rr.keys || rr.hidden_states);
  EXPECT_EQ(rr.keep, 10);
  const auto ur = ts::baselines::uniform::requirements(ts::baselines::uniform::with_budget(budget::fraction(0.5), 576), llava15);
  EXPECT_EQ(ur.keep, 288);
  const ts::token_grid g{24, 24};
  const auto pr = ts::baselines::pool::requirements(ts::baselines::pool::with_budget(budget::count(144), g), g, llava15);
  EXPECT_TRUE(pr.hidden_states);
  EXPECT_TRUE(pr.layers.empty());
  EXPECT_EQ(pr.keep, 144);
  EXPECT_EQ(pr.output_rows, 144);
  EXPECT_TRUE(has(error_of([&] { (void)ts::baselines::pool::requirements({}, ts::token_grid{8, 8}, llava15); }),
                  "must hold the 576 visual tokens"));
}

TEST(Requirements, BadShapes) {
  auto bad = llava15;
  bad.visual_tokens = -1;
  EXPECT_TRUE(has(error_of([&] { (void)ts::fastv::requirements({}, bad); }), "fastv.shape.visual_tokens"));
  bad = llava15;
  bad.encoder_layers = -2;
  EXPECT_TRUE(has(error_of([&] { (void)ts::fopru::requirements({}, bad); }), "fopru.shape.encoder_layers"));
}

}  // namespace
