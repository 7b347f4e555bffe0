// FastV: keep count (Python's round, half to even), last-row selection, batches, bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "tokensel/methods/fastv.hpp"

#include "support/tiny_causal_map.hpp"

using namespace tokensel;

namespace {

// The tiny causal map of test_region_mass.cpp (L = 7, visual span [2, 5), 2 heads). Last row
// (row 6) on the visual columns: head 0 (.25, .125, .0625), head 1 (.125, .0625, .25);
// mean (.1875, .09375, .15625) (fitprune_reference.py: "FastV mean-head last row").

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

std::vector<token_index> run(const head_attention_view<float>& view, token_range vis, const fastv::config& cfg,
                             fastv::result* res = nullptr) {
  std::vector<token_index> out(static_cast<std::size_t>(fastv::keep_count(vis.count, cfg)));
  const auto r = fastv::select(seq, view, vis, cfg, out);
  if (res != nullptr) *res = r;
  out.resize(static_cast<std::size_t>(r.count));
  return out;
}

}  // namespace

TEST(FastV, KeepCountIsPythonRound) {
  // Python: round(n * (1 - R)) on the double product (tools/reference/fitprune_reference.py):
  //   576,.5 -> 288; 576,.75 -> 144; 576,.25 -> 432; 5,.5 -> 2 (2.5); 7,.5 -> 4 (3.5); 3,.5 -> 2 (1.5)
  //   15,.9 -> 1 (1.4999999999999996); 25,.9 -> 2 (2.4999999999999996); 5,.3 -> 4 (3.5)
  //   1,.6 -> 0; 0,.5 -> 0; 576,0 -> 576
  struct row {
    index_t n;
    double r;
    index_t keep;
  };
  for (const row& x : {row{576, .5, 288}, row{576, .75, 144}, row{576, .25, 432}, row{5, .5, 2}, row{7, .5, 4},
                       row{3, .5, 2}, row{15, .9, 1}, row{25, .9, 2}, row{5, .3, 4}, row{1, .6, 0}, row{0, .5, 0},
                       row{576, 0.0, 576}}) {
    EXPECT_EQ(fastv::keep_count(x.n, {.ratio = x.r}), x.keep) << x.n << " " << x.r;
  }
  EXPECT_EQ(fastv::keep_count(576, {}), 288);  // defaults: R = 0.5, K = 2
  EXPECT_EQ(fastv::detail::round_half_even(4.5), 4);
  EXPECT_EQ(fastv::detail::round_half_even(5.5), 6);
  EXPECT_EQ(fastv::detail::round_half_even(5.4999), 5);
  EXPECT_EQ(fastv::detail::round_half_even(0.5), 0);
}

TEST(FastV, HandComputedLastRowSelection) {
  const auto a = tokensel_test::tiny_causal_map();
  head_attention_view<float> view(a.data(), {2, 7, 7});
  fastv::result res;
  // R = 0.5 of 3 -> keep round(1.5) = 2: the two highest, .1875 (0) and .15625 (2).
  EXPECT_EQ(run(view, {2, 3}, {}, &res), (std::vector<token_index>{0, 2}));
  EXPECT_EQ(res.count, 2);
  EXPECT_EQ(res.visual_mass, .1875f + .09375f + .15625f);
  EXPECT_EQ(res.kept_mass, .1875f + .15625f);
  // R = 0.6 -> round(1.2) = 1: token 0.
  EXPECT_EQ(run(view, {2, 3}, {.ratio = 0.6}), (std::vector<token_index>{0}));
  // Max over heads instead: (.25, .125, .25) -> tie between 0 and 2 at R = 0.6: lower index wins.
  EXPECT_EQ(run(view, {2, 3}, {.ratio = 0.6, .heads = head_reduction::max}), (std::vector<token_index>{0}));
  // R = 0 keeps everything.
  EXPECT_EQ(run(view, {2, 3}, {.ratio = 0.0}), (std::vector<token_index>{0, 1, 2}));
  // Only the last query row is needed: a [heads, 1, L] view gives the same result.
  EXPECT_EQ(run(view.slice(1, 6, 1), {2, 3}, {}), (std::vector<token_index>{0, 2}));
}

TEST(FastV, TiesKeepTheLowerIndex) {
  std::vector<float> a(4 * 10, 0.1f);  // 4 heads, one query row, 10 keys, all equal
  head_attention_view<float> view(a.data(), {4, 1, 10});
  EXPECT_EQ(run(view, {1, 8}, {.ratio = 0.5}), (std::vector<token_index>{0, 1, 2, 3}));
}

TEST(FastV, ScoresAndPrecisionsAndStrides) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  const index_t heads = 8, q = 4, L = 700;
  std::vector<float> a(static_cast<std::size_t>(heads * q * L));
  for (auto& x : a) x = u(rng);
  const token_range vis{35, 576};
  head_attention_view<float> view(a.data(), {heads, q, L});
  const auto ref = run(view, vis, {});
  ASSERT_EQ(ref.size(), 288u);
  EXPECT_TRUE(std::is_sorted(ref.begin(), ref.end()));
  // Brute force over the mean of the last row.
  std::vector<float> score(576);
  for (index_t j = 0; j < 576; ++j) {
    float s = 0.0f;
    for (index_t h = 0; h < heads; ++h) s += a[static_cast<std::size_t>((h * q + q - 1) * L + 35 + j)];
    score[static_cast<std::size_t>(j)] = s / heads;
  }
  std::vector<token_index> out(288);
  (void)fastv::select_scores<float>(as_view(std::span<const float>(score)), {}, out);
  EXPECT_EQ(out, ref);
  // seq == par through the batch form; strided copy [L, heads, q]; fp16 near-identical.
  std::vector<float> t(a.size());
  for (index_t h = 0; h < heads; ++h)
    for (index_t i = 0; i < q; ++i)
      for (index_t j = 0; j < L; ++j) t[static_cast<std::size_t>(j * heads * q + h * q + i)] = a[static_cast<std::size_t>((h * q + i) * L + j)];
  head_attention_view<float> strided(t.data(), {heads, q, L}, {q, 1, heads * q});
  EXPECT_EQ(run(strided, vis, {}), ref);
  std::vector<Eigen::bfloat16> b(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) b[i] = Eigen::bfloat16(a[i]);
  std::vector<token_index> ob(288);
  (void)fastv::select(seq, head_attention_view<Eigen::bfloat16>(b.data(), {heads, q, L}), vis, {}, ob);
  std::size_t same = 0;
  for (auto x : ob) same += std::binary_search(ref.begin(), ref.end(), x) ? 1 : 0;
  EXPECT_GE(same, 280u);  // bf16 rounding only reorders near-ties at the cut
}

TEST(FastV, BatchedForms) {
  const auto a = tokensel_test::tiny_causal_map();
  std::vector<float> two(a);
  two.insert(two.end(), a.begin(), a.end());
  attention_view<float> batch(two.data(), {2, 2, 7, 7});
  std::vector<token_index> idx(6, -1), counts(2);
  std::vector<fastv::result> res(2);
  fastv::select(par, batch, {2, 3}, {}, selection_batch{{idx.data(), {2, 3}}, counts}, std::span(res));
  EXPECT_EQ(counts, (std::vector<token_index>{2, 2}));
  EXPECT_EQ(idx[0], 0);
  EXPECT_EQ(idx[1], 2);
  EXPECT_EQ(idx[3], 0);
  EXPECT_EQ(idx[4], 2);
  EXPECT_EQ(res[1].kept_mass, .1875f + .15625f);
  // Ragged: the second sample's span is [3, 5) (scores .09375, .15625 -> keep 1: token 1).
  std::vector<head_attention_view<float>> views = {head_attention_view<float>(a.data(), {2, 7, 7}),
                                                   head_attention_view<float>(a.data(), {2, 7, 7})};
  std::vector<token_range> spans = {{2, 3}, {3, 2}};
  std::fill(idx.begin(), idx.end(), -1);
  fastv::select(seq, std::span<const head_attention_view<float>>(views), std::span<const token_range>(spans), {},
                selection_batch{{idx.data(), {2, 3}}, counts});
  EXPECT_EQ(counts, (std::vector<token_index>{2, 1}));
  EXPECT_EQ(idx[3], 1);
  std::vector<token_range> one = {{2, 3}};
  expect_error([&] {
    fastv::select(seq, std::span<const head_attention_view<float>>(views), std::span<const token_range>(one), {},
                  selection_batch{{idx.data(), {2, 3}}, counts});
  }, errc::shape_mismatch, "fastv.visual.size()");
  fastv::select(seq, attention_view<float>(nullptr, {0, 2, 7, 7}), {2, 3}, {}, selection_batch{{nullptr, {0, 3}}, std::span<token_index>()});
}

TEST(FastV, RejectsBadInput) {
  auto a = tokensel_test::tiny_causal_map();
  head_attention_view<float> view(a.data(), {2, 7, 7});
  std::vector<token_index> out(3), small(1);
  expect_error([] { (void)fastv::keep_count(10, {.ratio = 1.0}); }, errc::invalid_argument, "fastv.ratio = 1");
  expect_error([] { (void)fastv::keep_count(10, {.ratio = -0.1}); }, errc::invalid_argument, "fastv.ratio = -0.1");
  expect_error([] { (void)fastv::keep_count(10, {.ratio = std::numeric_limits<double>::quiet_NaN()}); }, errc::invalid_argument, "fastv.ratio");
  expect_error([] { (void)fastv::keep_count(10, {.layer = 0}); }, errc::invalid_argument, "fastv.layer = 0");
  expect_error([] { (void)fastv::keep_count(-1, {}); }, errc::invalid_argument, "fastv.n = -1");
  expect_error([&] { (void)fastv::select(seq, view, {2, 3}, {}, small); }, errc::shape_mismatch, "fastv.out.size()");
  expect_error([&] { (void)fastv::select(seq, view, {5, 3}, {}, out); }, errc::invalid_argument, "fastv.visual");
  expect_error([&] { (void)fastv::select(seq, view.slice(1, 0, 0), {2, 3}, {}, out); }, errc::shape_mismatch, "fastv.attention.extent(1)");
  a[1 * 49 + 6 * 7 + 4] = std::numeric_limits<float>::infinity();
  expect_error([&] { (void)fastv::select(seq, view, {2, 3}, {}, out); }, errc::non_finite, "fastv.attention[6, 4]");
  std::vector<float> s = {1.0f, std::numeric_limits<float>::quiet_NaN()};
  expect_error([&] { (void)fastv::select_scores<float>(as_view(std::span<const float>(s)), {}, out); }, errc::non_finite, "fastv.scores[1]");
  // n = 0 is valid; other rows may hold anything.
  EXPECT_EQ(fastv::select(seq, view, {3, 0}, {}, std::span<token_index>()).count, 0);
}
