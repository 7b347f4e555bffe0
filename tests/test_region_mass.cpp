// Region masses around a visual span of an LLM attention map, and sequence_keep.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "tokensel/select/sequence.hpp"
#include "tokensel/stats/region_mass.hpp"

using namespace tokensel;

namespace {

// Tiny causal map: L = 7, visual span [2, 5), 2 heads; every row sums to 1 over j <= i. All values
// are multiples of 1/16, exact in fp32, fp16 and bf16. tools/reference/fitprune_reference.py
// builds the same map and prints the numbers pinned below; by hand, the max over heads on the
// visual columns (rows 2..6) is
//   row 2: .5   0    0        row 5: .125 .5   .125     (text)
//   row 3: .25  .5   0        row 6: .25  .125 .25      (text)
//   row 4: .25  .25  .375
// so cross = rows 5 + 6 = (.375, .625, .375), self = (rows 2..4) / 3 = (1/3, .25, .125),
// Wc = (.75 + .625) / 2 = .6875, Ws = (.5 + .75 + .875) / 3 = 2.125 / 3.
std::vector<float> tiny_map() {
  const std::vector<std::vector<float>> h0 = {{1},
                                              {.5f, .5f},
                                              {.25f, .25f, .5f},
                                              {.125f, .125f, .25f, .5f},
                                              {.125f, .125f, .25f, .25f, .25f},
                                              {.25f, .125f, .125f, .25f, .125f, .125f},
                                              {.125f, .125f, .25f, .125f, .0625f, .0625f, .25f}};
  const std::vector<std::vector<float>> h1 = {{1},
                                              {.25f, .75f},
                                              {.5f, .25f, .25f},
                                              {.25f, .25f, .125f, .375f},
                                              {.25f, .125f, .125f, .125f, .375f},
                                              {.125f, .125f, .0625f, .5f, .0625f, .125f},
                                              {.25f, .125f, .125f, .0625f, .25f, .0625f, .125f}};
  std::vector<float> a(2 * 7 * 7, 0.0f);
  for (int h = 0; h < 2; ++h) {
    const auto& rows = h == 0 ? h0 : h1;
    for (int i = 0; i < 7; ++i) {
      for (std::size_t j = 0; j < rows[i].size(); ++j) a[h * 49 + i * 7 + j] = rows[i][j];
    }
  }
  return a;
}

template <class T>
std::vector<T> convert(const std::vector<float>& a) {
  std::vector<T> out(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) out[i] = from_float<T>(a[i]);
  return out;
}

// Random causal softmax map [heads, L, L].
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

}  // namespace

TEST(RegionMass, HandComputedTinyMap) {
  const auto a = tiny_map();
  head_attention_view<float> view(a.data(), {2, 7, 7});
  std::vector<float> cross(3), self(3);
  const auto r = region_mass(seq, view, token_range::visual_span(2, 3), head_reduction::max, {cross, self});
  EXPECT_EQ(cross, (std::vector<float>{.375f, .625f, .375f}));
  EXPECT_EQ(self, (std::vector<float>{1.0f / 3.0f, .25f, .125f}));
  EXPECT_EQ(r.cross_mass, .6875f);
  EXPECT_EQ(r.self_mass, 2.125f / 3.0f);
  EXPECT_EQ(r.text_rows, 2);
}

TEST(RegionMass, MeanAndSumReductions) {
  // Head mean on the visual columns: rows 5, 6 -> cross = ((.125+.0625)/2 + (.125+.125)/2, ...).
  const auto a = tiny_map();
  head_attention_view<float> view(a.data(), {2, 7, 7});
  std::vector<float> cross(3), self(3);
  (void)region_mass(seq, view, {2, 3}, head_reduction::mean, {cross, self});
  EXPECT_EQ(cross, (std::vector<float>{(.1875f + .375f) / 2, (.75f + .1875f) / 2, (.1875f + .3125f) / 2}));
  // sum = 2 * mean exactly (dyadic values)
  std::vector<float> cross_sum(3);
  (void)region_mass(seq, view, {2, 3}, head_reduction::sum, {cross_sum, {}});
  for (int j = 0; j < 3; ++j) EXPECT_EQ(cross_sum[j], 2 * cross[j]);
  // self of the mean: visual rows 2..4, columns 2..4, each summed over heads, / 2 / 3.
  EXPECT_FLOAT_EQ(self[0], (1.0f + .5f) / 2 / 3);
}

TEST(RegionMass, HalfPrecisionAndStridesGiveTheSameNumbers) {
  const auto a = tiny_map();
  std::vector<float> ref_c(3), ref_s(3);
  const auto ref = region_mass(seq, head_attention_view<float>(a.data(), {2, 7, 7}), {2, 3}, head_reduction::max, {ref_c, ref_s});

  const auto h = convert<Eigen::half>(a);
  const auto b = convert<Eigen::bfloat16>(a);
  std::vector<float> c(3), s(3);
  auto r = region_mass(seq, head_attention_view<Eigen::half>(h.data(), {2, 7, 7}), {2, 3}, head_reduction::max, {c, s});
  EXPECT_EQ(c, ref_c);
  EXPECT_EQ(s, ref_s);
  EXPECT_EQ(r.cross_mass, ref.cross_mass);
  r = region_mass(seq, head_attention_view<Eigen::bfloat16>(b.data(), {2, 7, 7}), {2, 3}, head_reduction::max, {c, s});
  EXPECT_EQ(c, ref_c);
  EXPECT_EQ(r.self_mass, ref.self_mass);

  // Layout [L(keys), heads, L(queries)] viewed as [heads, q, k] through strides.
  std::vector<float> t(a.size());
  for (int hh = 0; hh < 2; ++hh)
    for (int i = 0; i < 7; ++i)
      for (int j = 0; j < 7; ++j) t[j * 14 + hh * 7 + i] = a[hh * 49 + i * 7 + j];
  head_attention_view<float> strided(t.data(), {2, 7, 7}, {7, 1, 14});
  r = region_mass(par, strided, {2, 3}, head_reduction::max, {c, s});
  EXPECT_EQ(c, ref_c);
  EXPECT_EQ(s, ref_s);
  EXPECT_EQ(r.cross_mass, ref.cross_mass);
  EXPECT_EQ(r.self_mass, ref.self_mass);
}

TEST(RegionMass, SequentialAndThreadedAreBitIdentical) {
  const index_t heads = 4, L = 300;
  const auto a = random_causal(heads, L, 11);
  head_attention_view<float> view(a.data(), {heads, L, L});
  for (auto op : {head_reduction::max, head_reduction::mean}) {
    const token_range vis{17, 203};
    std::vector<float> c1(203), s1(203), c2(203), s2(203);
    const auto r1 = region_mass(seq, view, vis, op, {c1, s1});
    const auto r2 = region_mass(threaded_policy{.threads = 3}, view, vis, op, {c2, s2});
    EXPECT_EQ(std::memcmp(c1.data(), c2.data(), c1.size() * sizeof(float)), 0);
    EXPECT_EQ(std::memcmp(s1.data(), s2.data(), s1.size() * sizeof(float)), 0);
    EXPECT_EQ(std::memcmp(&r1.cross_mass, &r2.cross_mass, sizeof(float)), 0);
    EXPECT_EQ(std::memcmp(&r1.self_mass, &r2.self_mass, sizeof(float)), 0);
    // And both agree with a double-precision brute force.
    double wc = 0.0;
    for (index_t i = vis.end(); i < L; ++i) {
      for (index_t j = 0; j < vis.count; ++j) {
        float m = op == head_reduction::max ? -1.0f : 0.0f;
        for (index_t h = 0; h < heads; ++h) {
          const float x = a[static_cast<std::size_t>((h * L + i) * L + vis.begin + j)];
          m = op == head_reduction::max ? std::max(m, x) : m + x;
        }
        wc += op == head_reduction::max ? m : m / heads;
      }
    }
    EXPECT_NEAR(r1.cross_mass, wc / static_cast<double>(L - vis.end()), 1e-5);
  }
}

TEST(RegionMass, EdgeCases) {
  const auto a = tiny_map();
  head_attention_view<float> view(a.data(), {2, 7, 7});
  // Empty span: nothing read, zeros.
  auto r = region_mass(seq, view, {3, 0}, head_reduction::max);
  EXPECT_EQ(r.cross_mass, 0.0f);
  EXPECT_EQ(r.self_mass, 0.0f);
  EXPECT_EQ(r.text_rows, 4);
  // Span at the end: no text rows, Wc = 0, cross = 0.
  std::vector<float> c(2, -1.0f), s(2);
  r = region_mass(seq, view, {5, 2}, head_reduction::max, {c, s});
  EXPECT_EQ(r.text_rows, 0);
  EXPECT_EQ(r.cross_mass, 0.0f);
  EXPECT_EQ(c, (std::vector<float>{0.0f, 0.0f}));
  // self over rows 5, 6 and columns 5, 6: (max(.125, .125) + max(.0625, .0625), max(.25, .125)) / 2
  EXPECT_EQ(s, (std::vector<float>{(.125f + .0625f) / 2, .125f}));
  // Outputs are optional.
  r = region_mass(seq, view, {2, 3}, head_reduction::max, {});
  EXPECT_EQ(r.cross_mass, .6875f);
}

TEST(RegionMass, RejectsBadInput) {
  auto a = tiny_map();
  head_attention_view<float> view(a.data(), {2, 7, 7});
  auto expect = [](auto&& f, errc code, const char* name) {
    try {
      f();
      FAIL() << "no throw for " << name;
    } catch (const error& e) {
      EXPECT_EQ(e.code(), code) << e.what();
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
  };
  expect([&] { (void)region_mass(seq, view, {5, 3}, head_reduction::max); }, errc::invalid_argument, "region_mass.visual");
  expect([&] { (void)region_mass(seq, view, {-1, 2}, head_reduction::max); }, errc::invalid_argument, "region_mass.visual");
  expect([&] { (void)region_mass(seq, view.slice(1, 0, 6), {2, 3}, head_reduction::max); }, errc::shape_mismatch, "region_mass.attention");
  std::vector<float> small(2);
  expect([&] { (void)region_mass(seq, view, {2, 3}, head_reduction::max, {small, {}}); }, errc::shape_mismatch, "region_mass.out.cross");
  expect([&] { (void)region_mass(seq, view, {2, 3}, head_reduction::max, {{}, small}); }, errc::shape_mismatch, "region_mass.out.self");
  a[1 * 49 + 6 * 7 + 3] = std::numeric_limits<float>::quiet_NaN();  // head 1, row 6, key 3
  expect([&] { (void)region_mass(seq, view, {2, 3}, head_reduction::max); }, errc::non_finite, "region_mass.attention[6, 3]");
  expect([&] { (void)region_mass(par, view, {2, 3}, head_reduction::mean); }, errc::non_finite, "region_mass.attention[6, 3]");
  a[1 * 49 + 6 * 7 + 3] = std::numeric_limits<float>::infinity();
  expect([&] { (void)region_mass(seq, view, {2, 3}, head_reduction::sum); }, errc::non_finite, "region_mass.attention[6, 3]");
  // Values outside the rows and columns read are not inspected (row 1 lies before the span).
  a[1 * 49 + 6 * 7 + 3] = .0625f;
  a[1 * 7 + 0] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_NO_THROW((void)region_mass(seq, view, {2, 3}, head_reduction::max));
}

TEST(SequenceKeep, ExpandsKeptVisualTokens) {
  std::vector<token_index> out(10);
  const std::vector<token_index> kept = {1, 3};
  const index_t w = sequence_keep(9, {2, 5}, kept, out);
  out.resize(static_cast<std::size_t>(w));
  EXPECT_EQ(out, (std::vector<token_index>{0, 1, 3, 5, 7, 8}));
  std::vector<token_index> bad = {3, 1};
  std::vector<token_index> room(9);
  EXPECT_THROW(sequence_keep(9, {2, 5}, bad, room), error);
  std::vector<token_index> outside = {5};
  EXPECT_THROW(sequence_keep(9, {2, 5}, outside, room), error);
  std::vector<token_index> tiny(3);
  EXPECT_THROW(sequence_keep(9, {2, 5}, kept, tiny), error);
}

// Large enough for the threaded pipeline (several chunks of rows in flight): the same bits as the
// sequential pass, and a non-finite value reported at the first bad row, as the sequential loop
// meets it, wherever the threads are.
TEST(RegionMass, ThreadedEqualsSequentialAndReportsTheFirstBadRow) {
  const index_t heads = 4, L = 240;
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> a(static_cast<std::size_t>(heads * L * L));
  for (auto& v : a) v = u(rng);
  head_attention_view<float> view(a.data(), {heads, L, L});
  const token_range visual{20, 180};
  for (auto op : {head_reduction::mean, head_reduction::max}) {
    std::vector<float> c1(180), s1(180), c2(180), s2(180);
    const auto r1 = region_mass(seq, view, visual, op, {c1, s1});
    for (int threads = 2; threads <= 4; ++threads) {
      const auto r2 = region_mass(threaded_policy{.threads = threads}, view, visual, op, {c2, s2});
      EXPECT_EQ(r1.self_mass, r2.self_mass);
      EXPECT_EQ(r1.cross_mass, r2.cross_mass);
      EXPECT_EQ(c1, c2);
      EXPECT_EQ(s1, s2);
    }
  }
  a[static_cast<std::size_t>((2 * L + 215) * L + 40)] = std::numeric_limits<float>::quiet_NaN();  // head 2, row 215
  a[static_cast<std::size_t>((1 * L + 90) * L + 33)] = std::numeric_limits<float>::infinity();    // head 1, row 90
  for (int threads = 1; threads <= 4; ++threads) {
    try {
      (void)region_mass(threaded_policy{.threads = threads}, view, visual, head_reduction::mean);
      FAIL() << "no throw";
    } catch (const error& e) {
      EXPECT_EQ(e.code(), errc::non_finite);
      EXPECT_NE(std::string(e.what()).find("region_mass.attention[90, 33]"), std::string::npos) << e.what();
    }
  }
}
