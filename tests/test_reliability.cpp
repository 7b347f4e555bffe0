// Reliability: the exact error a user gets for each class of bad input (the table in
// docs/reliability.md names these tests), and regression tests for the bugs the fuzzers and
// sanitizers found (overflows on huge or fuzzed sizes, escaping exception types).
#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <limits>
#include <string>
#include <vector>

#include "tokensel/methods/baselines.hpp"
#include "tokensel/methods/fastv.hpp"
#include "tokensel/methods/fitprune.hpp"
#include "tokensel/io/fitprune_json.hpp"
#include "tokensel/methods/fopru.hpp"
#include "tokensel/methods/freepruner.hpp"
#include "tokensel/select/gather.hpp"
#include "tokensel/stats/iqr_outliers.hpp"
#include "tokensel/io/npy.hpp"
#include "tokensel/methods/prumerge.hpp"
#include "tokensel/io/safetensors.hpp"
#include "tokensel/select/top_k.hpp"
#include "tokensel/methods/visionzip.hpp"

using namespace tokensel;

namespace {

constexpr index_t kMax = std::numeric_limits<index_t>::max();

/// fn() must throw tokensel::error with this code and exactly this message.
template <class F>
void expect_error(F&& fn, errc code, const std::string& message) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected: " << message;
  } catch (const error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    EXPECT_EQ(std::string(e.what()), message);
  }
}

/// A CLS + 4 patch map, 1 head (rows all equal; column means 0.3 0.1 0.4 0.2 over the patches).
std::vector<float> small_map() {
  std::vector<float> a(25, 0.2f);
  for (int r = 1; r < 5; ++r) {
    a[r * 5 + 0] = 0.0f;
    a[r * 5 + 1] = 0.3f;
    a[r * 5 + 2] = 0.1f;
    a[r * 5 + 3] = 0.4f;
    a[r * 5 + 4] = 0.2f;
  }
  return a;
}

std::span<const std::byte> bytes(const std::string& s) { return std::as_bytes(std::span<const char>(s.data(), s.size())); }

}  // namespace

// ---- parameters ---------------------------------------------------------------------------

TEST(Reliability, RatioOutsideItsDomain) {
  expect_error([] { (void)fopru::keep_count(10, {.ratio = 1.5}); }, errc::invalid_argument,
               "tokensel: fopru.ratio = 1.5: must be in (0, 1]");
  expect_error([] { (void)fopru::keep_count(10, {.ratio = 0.0}); }, errc::invalid_argument,
               "tokensel: fopru.ratio = 0: must be in (0, 1]");
  expect_error([] { (void)fastv::keep_count(10, {.ratio = 1.0}); }, errc::invalid_argument,
               "tokensel: fastv.ratio = 1: must be in [0, 1)");
}

TEST(Reliability, NonFiniteParameter) {
  expect_error([] { (void)fopru::keep_count(10, {.ratio = std::nan("")}); }, errc::invalid_argument,
               "tokensel: fopru.ratio = nan: must be in (0, 1]");
  expect_error([] { (void)prumerge::max_count(10, {.iqr_multiplier = INFINITY}); }, errc::invalid_argument,
               "tokensel: prumerge.iqr_multiplier = inf: must be finite and >= 0");
  expect_error([] { iqr_config c{.multiplier = -1.0}; validate(c); }, errc::invalid_argument,
               "tokensel: iqr.multiplier = -1: must be finite and >= 0");
}

TEST(Reliability, CountAboveTheTokens) {
  const std::vector<float> s{1, 2};
  std::vector<token_index> out(3);
  expect_error([&] { (void)top_k<float>(std::span<const float>(s), 3, out); }, errc::invalid_argument,
               "tokensel: top_k.k = 3: must be in [0, 2]");
  expect_error([] { (void)freepruner::keep_count(10, {.mode = freepruner::mode::fixed, .budget = 11}); },
               errc::invalid_argument, "tokensel: freepruner.budget = 11: exceeds the 10 patches");
  expect_error([] { (void)visionzip::keep_count(10, {.dominant = 8, .contextual = 4}); }, errc::invalid_argument,
               "tokensel: visionzip.dominant + visionzip.contextual = 12: exceeds the 10 tokens of the sample (CLS included)");
}

TEST(Reliability, NegativeCount) {
  const std::vector<float> s{1, 2};
  std::vector<token_index> out(3);
  expect_error([&] { (void)top_k<float>(std::span<const float>(s), -1, out); }, errc::invalid_argument,
               "tokensel: top_k.k = -1: must be in [0, 2]");
  expect_error([] { (void)fopru::keep_count(-1, {}); }, errc::invalid_argument, "tokensel: fopru.n = -1: must be >= 0");
  expect_error([] { (void)prumerge::max_count(4, {.neighbours = -1}); }, errc::invalid_argument,
               "tokensel: prumerge.neighbours = -1: must be >= 0");
}

TEST(Reliability, AdaptiveMethodHasNoKeepCount) {
  expect_error([] { (void)freepruner::keep_count(10, {}); }, errc::invalid_argument,
               "tokensel: freepruner.mode = adaptive: the count is data-dependent: use max_count(n, cfg) for the output capacity");
}

TEST(Reliability, InvalidEnumValue) {
  expect_error([] { freepruner::validate({.heads = static_cast<head_reduction>(7)}); }, errc::invalid_argument,
               "tokensel: freepruner.heads = 7: not a head_reduction");
  expect_error([] { prumerge::validate({.mode = static_cast<prumerge::mode>(5)}); }, errc::invalid_argument,
               "tokensel: prumerge.mode = 5: unknown mode");
}

// ---- data ---------------------------------------------------------------------------------

TEST(Reliability, NaNAndInfInTheData) {
  auto a = small_map();
  a[7] = std::numeric_limits<float>::quiet_NaN();
  std::vector<token_index> out(2);
  expect_error([&] { (void)fopru::select(seq, head_attention_view<float>(a.data(), {1, 5, 5}), {}, out); }, errc::non_finite,
               "tokensel: variance_axis.row_mean[0] = nan: scores must be finite");
  const std::vector<float> scores{1.0f, INFINITY, 0.5f};
  expect_error([&] { (void)fastv::select_scores<float>(as_view(std::span<const float>(scores)), {}, out); }, errc::non_finite,
               "tokensel: fastv.scores[1] = inf: scores must be finite");
}

TEST(Reliability, HalfPrecisionOverflowIsInf) {
  // 1e5 does not fit in fp16: the stored value is Inf, rejected like any Inf.
  std::vector<Eigen::half> s{Eigen::half(1.0f), Eigen::half(100000.0f)};
  std::vector<token_index> out(1);
  expect_error([&] { (void)top_k<Eigen::half>(std::span<const Eigen::half>(s), 1, out); }, errc::non_finite,
               "tokensel: top_k.scores[1] = inf: scores must be finite");
}

TEST(Reliability, DenormalsAreOrdinaryValues) {
  const float d = std::numeric_limits<float>::denorm_min();
  const std::vector<float> s{0.0f, d, 2 * d, -d};
  std::vector<token_index> out(2);
  ASSERT_EQ(top_k<float>(std::span<const float>(s), 2, out, index_order::ranked), 2);
  EXPECT_EQ(out[0], 2);
  EXPECT_EQ(out[1], 1);
}

// ---- shapes and views ---------------------------------------------------------------------

TEST(Reliability, NegativeExtent) {
  float x = 0;
  expect_error([&] { (void)head_attention_view<float>(&x, {1, -2, 2}, "attention"); }, errc::invalid_argument,
               "tokensel: attention.extent(1) = -2: extents must be >= 0");
}

TEST(Reliability, NullDataWithElements) {
  expect_error([] { (void)head_attention_view<float>(nullptr, {1, 2, 2}, "attention"); }, errc::null_data,
               "tokensel: attention.data: null pointer with a non-zero extent");
}

TEST(Reliability, NonSquareAttention) {
  std::vector<float> a(1 * 5 * 4, 0.1f);
  std::vector<token_index> out(4);
  expect_error([&] { (void)fopru::select(seq, head_attention_view<float>(a.data(), {1, 5, 4}), {}, out); }, errc::shape_mismatch,
               "tokensel: fopru.attention = 5x4: queries and keys must be the same tokens");
}

TEST(Reliability, OutputTooSmall) {
  const auto a = small_map();
  std::vector<token_index> out(1);
  expect_error([&] { (void)fopru::select(seq, head_attention_view<float>(a.data(), {1, 5, 5}), {.ratio = 0.5}, out); },
               errc::shape_mismatch, "tokensel: fopru.out.size() = 1: output capacity below the 2 indices needed");
}

TEST(Reliability, GridDoesNotCoverTheTokens) {
  expect_error([] { (void)fopru::keep_count(10, {.strategy = fopru::strategy::row}); }, errc::shape_mismatch,
               "tokensel: fopru.grid.n = 10: not a square number of tokens; pass an explicit rows x cols grid");
  expect_error([] { (void)fopru::keep_count(10, {.strategy = fopru::strategy::row, .grid = token_grid{3, 3}}); },
               errc::shape_mismatch, "tokensel: fopru.grid = 3x3: does not cover the 10 tokens");
}

TEST(Reliability, NoHeads) {
  std::vector<token_index> out(2);
  expect_error([&] { (void)fopru::select(seq, head_attention_view<float>(nullptr, {0, 5, 5}), {}, out); }, errc::shape_mismatch,
               "tokensel: attention.extent(0) = 0: no heads to reduce");
}

TEST(Reliability, TokenRangeOutsideTheSequence) {
  std::vector<float> a(1 * 6 * 6, 1.0f / 6);
  std::vector<token_index> out(6);
  expect_error([&] { (void)fastv::select(seq, head_attention_view<float>(a.data(), {1, 6, 6}), token_range{2, 5}, {}, out); },
               errc::invalid_argument, "tokensel: fastv.visual = [2, 7): token range outside the 6 tokens");
}

TEST(Reliability, BatchOutputOfTheWrongSize) {
  std::vector<float> a(2 * 25, 0.04f);
  std::vector<token_index> idx(2), counts(1);
  const selection_batch out{tensor_view<token_index, 2>(idx.data(), {1, 2}), counts};
  expect_error([&] { fopru::select(seq, attention_view<float>(a.data(), {2, 1, 5, 5}), {}, out); }, errc::shape_mismatch,
               "tokensel: fopru.out.indices.extent(0) = 1: must equal the batch size 2");
}

TEST(Reliability, IndexOutOfRange) {
  std::vector<float> src(4 * 2, 1.0f), dst(2 * 2);
  const std::vector<token_index> idx{1, 4};
  expect_error([&] { gather_rows(matrix_view<const float>(src.data(), {4, 2}), idx, matrix_view<float>(dst.data(), {2, 2})); },
               errc::invalid_argument, "tokensel: gather_rows.indices[1] = 4: index outside [0, 4)");
}

TEST(Reliability, DropAboveTheVisualTokens) {
  std::vector<float> a(1 * 6 * 6, 1.0f / 6);
  std::vector<token_index> kept(6);
  expect_error([&] { (void)fitprune::prune_layer(seq, head_attention_view<float>(a.data(), {1, 6, 6}), token_range{1, 4}, 5, kept); },
               errc::invalid_argument, "tokensel: fitprune.drop = 5: must be in [0, 4]");
}

// ---- files --------------------------------------------------------------------------------

TEST(Reliability, NpyBadMagic) {
  expect_error([] { (void)npy::read_buffer(bytes("NOTNUMPY-file")); }, errc::parse_error,
               "tokensel: npy.magic: bad magic: not a .npy file (in buffer)");
}

TEST(Reliability, NpyUnsupportedDtype) {
  // A well-formed file of int32: the writer's image of a float tensor with the dtype patched.
  const auto image = npy::write_buffer(host_tensor(dtype::f32, {1}));
  std::string file(reinterpret_cast<const char*>(image.data()), image.size());
  file.replace(file.find("<f4"), 3, "<i4");
  expect_error([&] { (void)npy::read_buffer(bytes(file)); }, errc::unsupported,
               "tokensel: npy.descr = '<i4': unsupported dtype (f4, f2 and f8 are; bfloat16 has no NumPy dtype) (in buffer)");
}

TEST(Reliability, NpyMissingFile) {
  expect_error([] { (void)npy::read("/nonexistent/tokensel.npy"); }, errc::io_error,
               "tokensel: file = /nonexistent/tokensel.npy: cannot open: no such file");
}

TEST(Reliability, SafetensorsHeaderBeyondTheFile) {
  std::string file(8, '\0');
  file[0] = 100;
  expect_error([&] { (void)safetensors::file::from_buffer(bytes(file)); }, errc::parse_error,
               "tokensel: safetensors.header_len: header length 100 runs beyond the end of the file (8 bytes) (in buffer)");
}

TEST(Reliability, SafetensorsUnknownTensor) {
  const auto image = safetensors::write_buffer({{"a", host_tensor(dtype::f32, {1})}});
  const auto f = safetensors::file::from_buffer(image);
  expect_error([&] { (void)f.load("b"); }, errc::invalid_argument,
               "tokensel: safetensors.tensor = 'b': no such tensor in buffer (it has: a)");
}

TEST(Reliability, RecipeJsonMalformed) {
  expect_error([] { (void)fitprune::recipe_from_json("{"); }, errc::parse_error,
               "tokensel: fitprune.recipe.json: malformed JSON: [json.exception.parse_error.101] parse error at line 1, "
               "column 2: syntax error while parsing object key - unexpected end of input; expected string literal");
}

// ---- regressions (found by the fuzzers) ----------------------------------------------------

TEST(Reliability, RecipeJsonNumberOverflowIsAParseError) {
  // fuzz_fitprune_json: nlohmann's out_of_range (406) used to escape recipe_from_json.
  try {
    (void)fitprune::recipe_from_json("{\"drops\": [7E1566]}");
    FAIL();
  } catch (const error& e) {
    EXPECT_EQ(e.code(), errc::parse_error);
    EXPECT_NE(std::string(e.what()).find("number overflow"), std::string::npos) << e.what();
  }
}

TEST(Reliability, SquareGridOfHugeCountDoesNotOverflow) {
  // fuzz_fopru: side * side overflowed for n near the index_t maximum.
  expect_error([] { (void)token_grid::square(kMax); }, errc::shape_mismatch,
               "tokensel: grid.n = 9223372036854775807: not a square number of tokens; pass an explicit rows x cols grid");
  const index_t side = 3037000499;  // the largest square below 2^63
  EXPECT_EQ(token_grid::square(side * side).rows, side);
}

TEST(Reliability, GridProductDoesNotOverflow) {
  // fuzz_fopru: rows * cols overflowed for fuzzed grids.
  expect_error([] { check_grid(token_grid{kMax, kMax}, 16, "g"); }, errc::shape_mismatch,
               "tokensel: g = 9223372036854775807x9223372036854775807: does not cover the 16 tokens");
  expect_error([] { check_grid(token_grid{-1, -16}, 16, "g"); }, errc::shape_mismatch,
               "tokensel: g = -1x-16: does not cover the 16 tokens");
  EXPECT_NO_THROW(check_grid(token_grid{4, 4}, 16, "g"));
  EXPECT_NO_THROW(check_grid(token_grid{0, 7}, 0, "g"));
}

TEST(Reliability, KeepCountOfHugeN) {
  // fuzz_fopru: floor(n * ratio) was cast from 2^63 (out of range) for n = index_t max, ratio 1.
  EXPECT_EQ(fopru::keep_count(kMax, {.ratio = 1.0}), kMax);
  EXPECT_EQ(fopru::keep_count(index_t{1} << 40, {.ratio = 0.5}), index_t{1} << 39);
  EXPECT_EQ(iqr_max_count(kMax), kMax - 1 - ((kMax - 1) / 4 * 3 + (kMax - 1) % 4 * 3 / 4));
  EXPECT_EQ(iqr_max_count(577), 144);
}

TEST(Reliability, EmptyViewWithHugeExtents) {
  // fuzz_fopru: size() overflowed for [2^63-1, 2^63-1, 0]; strides overflowed for [0, huge, huge];
  // fopru sized its scratch by n before noticing that there are no heads.
  const tensor_view<const float, 3> v(nullptr, {kMax, kMax, 0});
  EXPECT_EQ(v.size(), 0);
  const head_attention_view<float> no_heads(nullptr, {0, index_t{1} << 40, index_t{1} << 40});
  EXPECT_EQ(no_heads.size(), 0);
  std::vector<token_index> out(1);
  expect_error([&] { (void)fopru::select(seq, no_heads, {.ratio = 1e-12}, out); }, errc::shape_mismatch,
               "tokensel: attention.extent(0) = 0: no heads to reduce");
}

TEST(Reliability, TokenRangeEndDoesNotOverflow) {
  // fuzz_fastv: begin + count overflowed in check_range.
  expect_error([] { check_range(token_range{kMax, 8}, 10, "r"); }, errc::invalid_argument,
               "tokensel: r = [9223372036854775807, 9223372036854775807 + 8): token range outside the 10 tokens");
  expect_error([] { check_range(token_range{2, kMax}, 10, "r"); }, errc::invalid_argument,
               "tokensel: r = [2, 2 + 9223372036854775807): token range outside the 10 tokens");
  EXPECT_NO_THROW(check_range(token_range{2, 8}, 10, "r"));
}

TEST(Reliability, ThreadedErrorIsTheSequentialOne) {
  // fuzz_baselines: under par, a batch whose samples fail differently rethrew whichever error a
  // thread caught first; it is now the lowest sample's, as under seq, for every thread count.
  std::vector<float> a(2 * 25, 0.04f);
  a[25 + 7] = INFINITY;  // sample 1: non-finite
  std::vector<token_index> idx(2 * 3), counts(2);
  const selection_batch out{tensor_view<token_index, 2>(idx.data(), {2, 3}), counts};
  const attention_view<float> batch(a.data(), {2, 1, 5, 5});
  // Only sample 1 fails.
  for (int t = 1; t <= 4; ++t) {
    for (int rep = 0; rep < 20; ++rep) {
      try {
        fopru::select(threaded_policy{.threads = t}, batch, fopru::config{.ratio = 0.5}, out);
        FAIL();
      } catch (const error& e) {
        ASSERT_EQ(e.code(), errc::non_finite) << e.what();
      }
    }
  }
  // Both samples fail, differently: sample 0 on its capacity (keep 3 of 4 > 2 slots), sample 1 on Inf.
  std::vector<token_index> idx2(2 * 2), counts2(2);
  const selection_batch small{tensor_view<token_index, 2>(idx2.data(), {2, 2}), counts2};
  for (int t = 1; t <= 4; ++t) {
    for (int rep = 0; rep < 20; ++rep) {
      try {
        fopru::select(threaded_policy{.threads = t}, batch, fopru::config{.ratio = 0.75}, small);
        FAIL();
      } catch (const error& e) {
        ASSERT_EQ(std::string(e.what()), "tokensel: fopru.out.size() = 2: output capacity below the 3 indices needed");
      }
    }
  }
}

// ---- fixed open findings of the fuzzers (formerly bounded inputs in fuzz/) ----------------------

TEST(Reliability, FastVKeepCountOfHugeN) {
  // round(n * (1 - R)) was cast from a double that rounds to 2^63 for n = index_t max.
  EXPECT_EQ(fastv::keep_count(kMax, {.ratio = 0.0}), kMax);
  EXPECT_EQ(fastv::keep_count(index_t{1} << 40, {.ratio = 0.5}), index_t{1} << 39);
  EXPECT_EQ(fastv::keep_count(5, {.ratio = 0.5}), 2);  // Python round(2.5) = 2 (half to even)
}

TEST(Reliability, FreePrunerLayerIndexBound) {
  // layers_end = max(last, complementary) + 1 overflowed for index_t max; the streaming selector
  // also sized one flag per layer.
  expect_error([] { freepruner::validate({.last_layer = kMax}); }, errc::invalid_argument,
               "tokensel: freepruner.last_layer = 9223372036854775807: must be <= 4095 (max_layer_index)");
  expect_error([] { freepruner::validate({.first_layer = 0, .last_layer = 1, .complementary_layer = 4096}); },
               errc::invalid_argument,
               "tokensel: freepruner.complementary_layer = 4096: must be <= 4095 (max_layer_index)");
}

TEST(Reliability, FreePrunerHugeKWithoutPatches) {
  // A one-token stack (CLS only: n = 0 patches) with k_pivotal = 2^40 sized its scratch by
  // layers * k before k was checked against n (a 4 TB request). n = 0 selects nothing.
  std::vector<float> a(1, 1.0f);
  std::vector<head_attention_view<float>> layers(2, head_attention_view<float>(a.data(), {1, 1, 1}));
  const freepruner::config cfg{.first_layer = 0, .last_layer = 1, .k_pivotal = index_t{1} << 40, .complementary_layer = 1};
  std::vector<token_index> out;
  const auto r = freepruner::select(seq, freepruner::layer_stack<float>{layers, 0}, cfg, out);
  EXPECT_EQ(r.count, 0);
  freepruner::selector streaming(1, cfg, 1);
  EXPECT_EQ(streaming.patches(), 0);
}

TEST(Reliability, FitPruneArithmeticOfHugeN) {
  // k_l * n overflowed int64 for huge n; the FLOPs model's int64 products overflowed for huge
  // geometries. Scaling is now exact (k q + k r / n_fit) and FLOPs are doubles.
  fitprune::recipe r;
  r.geometry = {.hidden = 4096, .ffn = 11008, .layers = 2, .visual_tokens = 576};
  r.drops = {288, 144};
  r.reduction = 0.5;
  // floor(288 n / 576) = n / 2 and floor(144 n / 576) = n / 4 for n = index_t max (odd).
  EXPECT_EQ(fitprune::drops_at(r, 0, kMax), kMax / 2);
  EXPECT_EQ(fitprune::drops_at(r, 1, kMax), kMax / 4);
  EXPECT_EQ(fitprune::keep_count(kMax, r), kMax - kMax / 2 - kMax / 4);
  EXPECT_EQ(fitprune::keep_count(577, r), 577 - 288 - 144);
  const double ratio = fitprune::flops_ratio(r, kMax);
  EXPECT_TRUE(std::isfinite(ratio) && ratio > 0.0 && ratio < 1.0) << ratio;
  // The running drop sum of validate(recipe) overflowed for a huge count after a small one.
  fitprune::recipe bad = r;
  bad.drops = {4, kMax};
  expect_error([&] { fitprune::validate(bad); }, errc::invalid_argument,
               "tokensel: fitprune.recipe.drops = sum 4 + 9223372036854775807 (through layer 1): drops more than "
               "geometry.visual_tokens = 576");
  fitprune::flops_model huge{.hidden = kMax, .ffn = kMax, .layers = 1, .visual_tokens = 1};
  EXPECT_TRUE(std::isfinite(huge.original()));
  expect_error([] { fitprune::validate(fitprune::flops_model{.visual_tokens = index_t{1} << 31}); },
               errc::invalid_argument,
               "tokensel: fitprune.geometry.visual_tokens = 2147483648: must fit a token_index (<= 2147483647)");
}

TEST(Reliability, FitPruneBisectionWithATinyTolerance) {
  // A tolerance below the spacing of doubles in the bracket cannot be met: the bisection stops
  // when the bracket no longer shrinks instead of looping forever.
  fitprune::calibrator cal(fitprune::flops_model{.hidden = 8, .ffn = 16, .layers = 2, .visual_tokens = 4});
  const index_t s = cal.add_sample();
  for (index_t l = 0; l < 2; ++l) {
    const std::vector<float> c{0.1f, 0.2f, 0.3f, 0.4f}, v{0.4f, 0.3f, 0.2f, 0.1f};
    cal.add_layer(s, l, {.cross = c, .self = v, .text_rows = 2, .cross_mass = 1.0, .self_mass = 1.0});
  }
  const auto res = cal.fit(0.3, {.tolerance = 5e-324});
  fitprune::validate(res.recipe);
  EXPECT_GT(res.iterations, 50);
  EXPECT_LT(res.iterations, 2000);
}

TEST(Reliability, PruMergeMaxRowsOfHugeN) {
  // max_count = n = index_t max plus the extra merged row overflowed.
  expect_error([] { (void)prumerge::max_rows(kMax, {.plus = true, .merge = true, .extra_token = true}); },
               errc::invalid_argument,
               "tokensel: prumerge.n = 9223372036854775807: too large: the row count with the extra row overflows");
  EXPECT_EQ(prumerge::max_rows(kMax, {.plus = true, .merge = false}), prumerge::max_count(kMax, {.plus = true}));
}

TEST(Reliability, NpyFloat64BeyondFloat32) {
  // fuzz_npy: a float64 value beyond the float32 range is rejected as non_finite (it would be Inf).
  host_tensor t(dtype::f32, {2});
  auto image = npy::write_buffer(t);
  std::string file(reinterpret_cast<const char*>(image.data()), image.size());
  file.replace(file.find("<f4"), 3, "<f8");
  file.resize(file.size() - 8);
  const double values[2] = {0.5, 1e300};
  file.append(reinterpret_cast<const char*>(values), sizeof values);
  expect_error([&] { (void)npy::read_buffer(bytes(file)); }, errc::non_finite,
               "tokensel: npy.data[1] = 1e+300: float64 value overflows float32 (in buffer)");
}
