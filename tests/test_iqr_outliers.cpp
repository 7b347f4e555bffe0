// Tests of the IQR outlier primitive (spec 1.4). Expected quartiles and fences come from numpy's
// np.percentile (default method) via tools/reference/iqr_reference.py (numpy 2.4.6); the numbers
// below are pasted from its output and compared bit for bit.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "tokensel/stats/iqr_outliers.hpp"

using namespace tokensel;

namespace {

std::vector<token_index> outliers_of(const std::vector<float>& x, const iqr_config& cfg = {}) {
  std::vector<token_index> out(x.size());
  const iqr_result r = iqr_outliers(std::span<const float>(x), cfg, out);
  out.resize(static_cast<std::size_t>(r.count));
  return out;
}

void expect_result(const iqr_result& r, double q1, double q3, double up, double lo, index_t count) {
  EXPECT_EQ(r.q1, q1);
  EXPECT_EQ(r.q3, q3);
  EXPECT_EQ(r.upper_fence, up);
  EXPECT_EQ(r.lower_fence, lo);
  EXPECT_EQ(r.count, count);
}

template <class F>
void expect_error(F&& f, errc code, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error thrown, expected " << needle;
  } catch (const error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

}  // namespace

TEST(Percentile, OddLength) {
  const std::vector<float> x{3, 1, 4, 1, 5, 9, 2};
  EXPECT_EQ(percentile_linear(x, 0.25), 1.5);
  EXPECT_EQ(percentile_linear(x, 0.75), 4.5);
  EXPECT_EQ(percentile_linear(x, 0.0), 1.0);
  EXPECT_EQ(percentile_linear(x, 1.0), 9.0);
  EXPECT_EQ(percentile_linear(x, 0.5), 3.0);
  expect_result(iqr_fences(x), 1.5, 4.5, 9.0, -3.0, 0);  // 9 sits on the fence
}

TEST(Percentile, EvenLengthBothLerpBranches) {
  // n = 8: Q1 at position 1.75 (t >= 0.5 branch), Q3 at 5.25 (t < 0.5 branch).
  const std::vector<float> x{0.5f, 7.25f, 1.5f, 3.0f, 2.0f, 10.0f, 4.5f, 100.0f};
  expect_result(iqr_fences(x), 1.875, 7.9375, 17.03125, -7.21875, 1);
  EXPECT_EQ(outliers_of(x), (std::vector<token_index>{7}));
}

TEST(Percentile, NumpySecondLerpFormIsFollowed) {
  // q = 0.3, n = 10: position 2.6999999999999997. numpy gives -0.10319676399230959; the naive
  // a + (b-a)*t would give -0.1031967639923096 (one ulp apart).
  const std::vector<float> x{0.7622597217559814f, -1.1992888450622559f, 0.07451622933149338f, 0.576689600944519f,
                             -0.18878212571144104f, 0.6829102635383606f, -0.06651732325553894f, 0.6672475337982178f,
                             1.4385225772857666f, -0.6756622791290283f};
  EXPECT_EQ(percentile_linear(x, 0.3), -0.10319676399230959);
  EXPECT_NE(percentile_linear(x, 0.3), -0.1031967639923096);
}

TEST(IqrOutliers, Ties) {
  const std::vector<float> x{1, 1, 1, 1, 2, 2, 2, 2, 2, 50};
  expect_result(iqr_fences(x), 1.0, 2.0, 3.5, -0.5, 1);
  EXPECT_EQ(outliers_of(x), (std::vector<token_index>{9}));
}

TEST(IqrOutliers, StrictUpperFence) {
  const std::vector<float> on{0, 1, 2, 3, 6};  // fence = 3 + 1.5 * 2 = 6 exactly
  expect_result(iqr_fences(on), 1.0, 3.0, 6.0, -2.0, 0);
  EXPECT_TRUE(outliers_of(on).empty());
  const std::vector<float> above{0, 1, 2, 3, std::nextafter(6.0f, 7.0f)};  // 6.000000476837158
  expect_result(iqr_fences(above), 1.0, 3.0, 6.0, -2.0, 1);
  EXPECT_EQ(outliers_of(above), (std::vector<token_index>{4}));
}

TEST(IqrOutliers, LowerFenceOptional) {
  const std::vector<float> x{-40, 10, 11, 12, 13, 14, 15, 60};
  expect_result(iqr_fences(x), 10.75, 14.25, 19.5, 5.5, 1);
  EXPECT_EQ(outliers_of(x), (std::vector<token_index>{7}));
  const iqr_config both{.lower_fence = true};
  expect_result(iqr_fences(x, both), 10.75, 14.25, 19.5, 5.5, 2);
  EXPECT_EQ(outliers_of(x, both), (std::vector<token_index>{0, 7}));
}

TEST(IqrOutliers, MultiplierZero) {
  const std::vector<float> x{1, 2, 3, 4, 5, 6};
  const iqr_config c0{.multiplier = 0.0};
  expect_result(iqr_fences(x, c0), 2.25, 4.75, 4.75, 2.25, 2);
  EXPECT_EQ(outliers_of(x, c0), (std::vector<token_index>{4, 5}));
}

TEST(IqrOutliers, SingleValueAndEmpty) {
  const std::vector<float> one{2.5f};
  expect_result(iqr_fences(one), 2.5, 2.5, 2.5, 2.5, 0);
  const std::vector<float> none;
  expect_result(iqr_fences(none), 0, 0, 0, 0, 0);
  std::vector<token_index> out;
  EXPECT_EQ(iqr_outliers(std::span<const float>(none), {}, out).count, 0);
}

TEST(IqrOutliers, AttentionLikeRow) {
  const std::vector<float> x{0.028208235278725624f, 0.00028451476828195155f, 0.0055666519328951836f, 0.0020770018454641104f, 0.1272362321615219f, 0.002953815506771207f, 0.00048612416139803827f, 0.0029059569351375103f, 0.001542619545944035f, 0.101666159927845f, 0.00459276232868433f, 0.0025755532551556826f, 0.0027660150080919266f, 0.0018788283923640847f, 0.001275763032026589f, 0.002479095943272114f, 0.005933655891567469f, 0.15761280059814453f, 0.009549164213240147f, 0.003000842407345772f, 0.00375449750572443f, 0.017193228006362915f, 0.006320512853562832f, 0.0022110464051365852f, 0.0030521799344569445f, 0.00629162834957242f, 0.025375472381711006f, 0.0027984746266156435f, 0.0028723657596856356f, 0.009984245523810387f, 0.0015101893804967403f, 0.002737306524068117f, 0.008857227861881256f, 0.3574676513671875f, 0.004015698563307524f, 0.007162072695791721f, 0.00021665105305146426f, 0.010175693780183792f, 0.0014036135980859399f, 0.0006907859351485968f, 0.004831421189010143f, 0.007383441086858511f, 0.0023488537408411503f, 0.0012489320943132043f, 0.0037615078035742044f, 0.0034762276336550713f, 0.014943749643862247f, 0.007737687323242426f, 0.004448249004781246f, 0.011137615889310837f};
  ASSERT_EQ(x.size(), 50u);
  expect_result(iqr_fences(x), 0.002381414291448891, 0.008577342727221549, 0.017871235380880535,
                -0.006912478362210095, 6);
  EXPECT_EQ(outliers_of(x), (std::vector<token_index>{0, 4, 9, 17, 26, 33}));
}

TEST(IqrOutliers, StridedHalfAndBf16Views) {
  // The even-8 case stored every other element, as fp16 and bf16 (all values exact in both).
  const std::vector<float> v{0.5f, 7.25f, 1.5f, 3.0f, 2.0f, 10.0f, 4.5f, 100.0f};
  std::vector<Eigen::half> h(16, Eigen::half(-1.0f));
  std::vector<Eigen::bfloat16> b(16, Eigen::bfloat16(-1.0f));
  for (std::size_t i = 0; i < v.size(); ++i) {
    h[2 * i] = Eigen::half(v[i]);
    b[2 * i] = Eigen::bfloat16(v[i]);
  }
  const tensor_view<const Eigen::half, 1> hv(h.data(), {8}, {2});
  const tensor_view<Eigen::bfloat16, 1> bv(b.data(), {8}, {2});  // mutable view overload
  expect_result(iqr_fences(hv), 1.875, 7.9375, 17.03125, -7.21875, 1);
  expect_result(iqr_fences(bv), 1.875, 7.9375, 17.03125, -7.21875, 1);
  std::vector<token_index> out(1);
  EXPECT_EQ(iqr_outliers(bv, {}, out).count, 1);
  EXPECT_EQ(out[0], 7);
  EXPECT_EQ(percentile_linear(hv, 0.25), 1.875);
}

TEST(IqrOutliers, BadInput) {
  const std::vector<float> x{1, 2, std::numeric_limits<float>::quiet_NaN(), 4};
  expect_error([&] { (void)iqr_fences(x); }, errc::non_finite, "iqr.x[2]");
  const std::vector<float> inf{1, std::numeric_limits<float>::infinity()};
  expect_error([&] { percentile_linear(inf, 0.5); }, errc::non_finite, "percentile.x[1]");
  const std::vector<float> ok{1, 2, 3, 4, 100, 200};
  expect_error([&] { (void)iqr_fences(ok, {.multiplier = -1.0}); }, errc::invalid_argument, "iqr.multiplier = -1");
  expect_error([&] { (void)iqr_fences(ok, {.multiplier = std::numeric_limits<double>::infinity()}); },
               errc::invalid_argument, "iqr.multiplier");
  expect_error([&] { validate(iqr_config{.multiplier = std::nan("")}); }, errc::invalid_argument, "iqr.multiplier");
  expect_error([&] { percentile_linear(ok, 1.5); }, errc::invalid_argument, "percentile.q = 1.5");
  expect_error([&] { percentile_linear(ok, -0.1); }, errc::invalid_argument, "percentile.q");
  expect_error([&] { percentile_linear(std::vector<float>{}, 0.5); }, errc::invalid_argument, "percentile.x.extent(0)");
  std::vector<token_index> small(1);  // room for one index; the data below has two outliers (Q3 = 3, fence 6)
  const std::vector<float> two{1, 1, 1, 1, 1, 1, 9, 9};
  ASSERT_EQ(iqr_fences(two).count, 2);
  expect_error([&] { (void)iqr_outliers(std::span<const float>(two), {}, small); }, errc::shape_mismatch, "iqr.out.size()");
}

TEST(IqrOutliers, MaxCountBoundsEveryVector) {
  EXPECT_EQ(iqr_max_count(0), 0);
  EXPECT_EQ(iqr_max_count(1), 0);
  EXPECT_EQ(iqr_max_count(8), 2);    // positions beyond floor(3 * 7 / 4) = 5
  EXPECT_EQ(iqr_max_count(576), 144);
  EXPECT_EQ(iqr_max_count(9, {.lower_fence = true}), 5);  // 2 above + positions 0..2 below
  // Reached: two large values among eight.
  EXPECT_EQ(iqr_fences(std::vector<float>{0, 0, 0, 0, 0, 0, 9, 9}).count, 2);
  EXPECT_EQ(iqr_fences(std::vector<float>{-9, -9, 0, 0, 0, 0, 0, 9, 9}, {.lower_fence = true}).count, 4);
  std::uint32_t state = 12345;
  auto next = [&] {
    state = state * 1664525u + 1013904223u;
    return static_cast<float>(state >> 8) / 16777216.0f;
  };
  for (index_t n = 1; n <= 100; ++n) {
    std::vector<float> x(static_cast<std::size_t>(n));
    for (auto& v : x) v = std::pow(next(), 6.0f) * (next() < 0.5f ? -1.0f : 1.0f);  // heavy tails both sides
    for (bool lower : {false, true}) {
      const iqr_config cfg{.lower_fence = lower};
      EXPECT_LE(iqr_fences(x, cfg).count, iqr_max_count(n, cfg)) << n;
    }
  }
}

// The quartiles come from selected order statistics (nth_element, then the least value above):
// bit for bit the values of a full sort with numpy's linear interpolation, for every length
// 1..200 (all floor/lerp position cases), with ties, signed zeros and a wide range of values.
TEST(IqrOutliers, SelectedQuartilesEqualFullSortBitForBit) {
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> small(-3, 3);
  std::normal_distribution<float> wide(0.0f, 1e3f);
  auto sorted_quantile = [](std::vector<double> v, double q) {
    std::sort(v.begin(), v.end());
    const auto p = tokensel::detail::quantile_at(static_cast<long long>(v.size()), q);
    return tokensel::detail::quantile_value(p, v[static_cast<std::size_t>(p.lo)],
                                            p.lerp ? v[static_cast<std::size_t>(p.lo + 1)] : v[static_cast<std::size_t>(p.lo)]);
  };
  for (int n = 1; n <= 200; ++n) {
    for (int kind = 0; kind < 3; ++kind) {
      std::vector<float> x(static_cast<std::size_t>(n));
      for (auto& v : x) v = kind == 0 ? static_cast<float>(small(rng)) : kind == 1 ? wide(rng) : (small(rng) > 0 ? 0.0f : -0.0f);
      std::vector<double> d(x.begin(), x.end());
      for (auto& v : d) v += 0.0;  // zeros are reported as +0 (the sign of an equal zero is arbitrary)
      const auto r = iqr_fences(std::span<const float>(x));
      EXPECT_EQ(std::bit_cast<std::uint64_t>(r.q1), std::bit_cast<std::uint64_t>(sorted_quantile(d, 0.25))) << "n " << n << " kind " << kind;
      EXPECT_EQ(std::bit_cast<std::uint64_t>(r.q3), std::bit_cast<std::uint64_t>(sorted_quantile(d, 0.75))) << "n " << n << " kind " << kind;
      for (double q : {0.0, 0.1, 0.5, 0.9, 1.0}) {
        EXPECT_EQ(std::bit_cast<std::uint64_t>(percentile_linear(std::span<const float>(x), q)),
                  std::bit_cast<std::uint64_t>(sorted_quantile(d, q))) << "n " << n << " q " << q;
      }
    }
  }
}
