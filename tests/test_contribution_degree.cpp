#include <gtest/gtest.h>

#include <cstring>

#include <limits>
#include <random>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "tokensel/stats/contribution_degree.hpp"
#include "tokensel/stats/head_reduction.hpp"

using namespace tokensel;

namespace {

// r[i] = column sum - diagonal, all values dyadic so the expected numbers are exact.
const std::vector<float> kMap4 = {
    0.25f,  0.5f,   0.125f, 0.125f,  //
    0.5f,   0.25f,  0.25f,  0.0f,    //
    0.0f,   0.75f,  0.25f,  0.0f,    //
    0.125f, 0.125f, 0.5f,   0.25f,   //
};
// column sums 0.875 1.625 1.125 0.375, diagonal 0.25 each.
const std::vector<float> kR4 = {0.625f, 1.375f, 0.875f, 0.125f};

template <class F>
void expect_error(F&& f, errc code, const std::string& needle) {
  try {
    f();
    FAIL() << "no exception";
  } catch (const error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

std::vector<float> random_values(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = u(gen);
  return v;
}

}  // namespace

TEST(ContributionDegree, Hand3x3) {
  const std::vector<float> m = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  std::vector<float> r(3);
  contribution_degree(matrix_view<const float>(m.data(), {3, 3}), r);
  // column sums 12 15 18 minus diagonal 1 5 9
  EXPECT_EQ(r, (std::vector<float>{11, 10, 9}));
}

TEST(ContributionDegree, Hand4x4SeqAndPar) {
  std::vector<float> r(4);
  contribution_degree(seq, matrix_view<const float>(kMap4.data(), {4, 4}), r);
  EXPECT_EQ(r, kR4);
  std::vector<float> rp(4, -1.0f);
  contribution_degree(par, matrix_view<const float>(kMap4.data(), {4, 4}), rp);
  EXPECT_EQ(rp, kR4);
}

TEST(ContributionDegree, StridedMapAndOutput) {
  // Column-major storage of the same matrix: a view with strides {1, 4}.
  std::vector<float> cm(16);
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) cm[j * 4 + i] = kMap4[i * 4 + j];
  std::vector<float> out(8, -7.0f);  // every other element
  vector_view<float> strided_out(out.data(), {4}, {2});
  contribution_degree(matrix_view<const float>(cm.data(), {4, 4}, {1, 4}), strided_out);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(out[2 * i], kR4[i]);
    EXPECT_EQ(out[2 * i + 1], -7.0f);
  }
  // Reading the column-major buffer row-major is the transpose: r becomes row sums - diagonal.
  std::vector<float> rt(4);
  contribution_degree(matrix_view<const float>(cm.data(), {4, 4}), rt);
  EXPECT_EQ(rt, (std::vector<float>{0.75f, 0.75f, 0.75f, 0.75f}));  // rows sum to 1
}

TEST(ContributionDegree, SeqEqualsParBitwiseAndMatchesStridedCopy) {
  const index_t n = 203;  // several column blocks, a ragged last one
  const auto m = random_values(static_cast<std::size_t>(n * n), 7);
  std::vector<float> a(n), b(n), c(n);
  contribution_degree(seq, matrix_view<const float>(m.data(), {n, n}), a);
  contribution_degree(threaded_policy{.threads = 3}, matrix_view<const float>(m.data(), {n, n}), b);
  EXPECT_EQ(a, b);
  // Padded rows (row stride n + 5) give the same bits.
  std::vector<float> padded(static_cast<std::size_t>(n * (n + 5)), 1e9f);
  for (index_t i = 0; i < n; ++i)
    for (index_t j = 0; j < n; ++j) padded[i * (n + 5) + j] = m[i * n + j];
  contribution_degree(matrix_view<const float>(padded.data(), {n, n}, {n + 5, 1}), c);
  EXPECT_EQ(a, c);
  // Independent check against a double-precision sum.
  for (index_t i = 0; i < n; ++i) {
    double s = 0;
    for (index_t j = 0; j < n; ++j) s += m[j * n + i];
    s -= m[i * n + i];
    EXPECT_NEAR(a[i], s, 1e-4);
  }
}

TEST(ContributionDegree, FromAttentionSkipsClsAndMatchesReducedMap) {
  // 2 heads, N = 5 (CLS + 4 patches). Head mean of the patch submatrix is kMap4:
  // head 0 = 1.5 * kMap4, head 1 = 0.5 * kMap4; the CLS row and column hold 100 (must be ignored).
  const index_t N = 5;
  std::vector<float> att(2 * N * N, 100.0f);
  for (int h = 0; h < 2; ++h)
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) att[h * N * N + (i + 1) * N + (j + 1)] = kMap4[i * 4 + j] * (h == 0 ? 1.5f : 0.5f);
  head_attention_view<float> view(att.data(), {2, N, N});
  std::vector<float> r(4);
  contribution_degree(seq, view, head_reduction::mean, r);
  EXPECT_EQ(r, kR4);
  std::vector<float> rp(4);
  contribution_degree(par, view, head_reduction::mean, rp);
  EXPECT_EQ(rp, kR4);
  // sum reduction doubles every entry.
  contribution_degree(seq, view, head_reduction::sum, r);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(r[i], 2 * kR4[i]);
  // Whole range (CLS included): column sums include the 100s.
  std::vector<float> all(5);
  contribution_degree(seq, view, head_reduction::mean, token_range::all(N), all);
  EXPECT_EQ(all[0], 400.0f);                 // column 0: 4 x 100 from the patch rows (CLS diagonal removed)
  EXPECT_EQ(all[1], 100.0f + kR4[0]);        // + the CLS row's 100
  // fp16 input with exactly representable values gives the same bits.
  std::vector<Eigen::half> att16(att.size());
  for (std::size_t i = 0; i < att.size(); ++i) att16[i] = Eigen::half(att[i]);
  contribution_degree(seq, head_attention_view<Eigen::half>(att16.data(), {2, N, N}), head_reduction::mean, r);
  EXPECT_EQ(r, kR4);
}

TEST(ContributionDegree, FromAttentionEqualsReduceThenMatrix) {
  const index_t H = 3, N = 70;
  const auto att = random_values(static_cast<std::size_t>(H * N * N), 11);
  head_attention_view<float> view(att.data(), {H, N, N});
  for (auto op : {head_reduction::mean, head_reduction::sum, head_reduction::max}) {
    std::vector<float> m((N - 1) * (N - 1));
    reduce_heads(seq, restrict_tokens(view, token_range::skip_cls(N)), op, matrix_view<float>(m.data(), {N - 1, N - 1}));
    std::vector<float> expected(N - 1), got(N - 1), got_par(N - 1);
    contribution_degree(matrix_view<const float>(m.data(), {N - 1, N - 1}), expected);
    contribution_degree(seq, view, op, got);
    contribution_degree(par, view, op, got_par);
    EXPECT_EQ(got, expected) << to_string(op);
    EXPECT_EQ(got_par, expected) << to_string(op);
  }
}

// Above the threading threshold (256 KiB; the tests above stay below it) the threaded path runs
// on several threads: the same bits as the sequential path for every reduction, thread count and
// element type, CLS skipped or not.
TEST(ContributionDegree, ThreadedEqualsSequentialBitForBitAboveTheThreshold) {
  const index_t H = 4, N = 301;  // 4 x 301 x 301 fp32 = 1.4 MB
  const auto att = random_values(static_cast<std::size_t>(H * N * N), 23);
  std::vector<Eigen::half> att16(att.size());
  for (std::size_t i = 0; i < att.size(); ++i) att16[i] = Eigen::half(att[i]);
  const head_attention_view<float> view(att.data(), {H, N, N});
  const head_attention_view<Eigen::half> view16(att16.data(), {H, N, N});
  for (auto op : {head_reduction::mean, head_reduction::sum, head_reduction::max}) {
    for (const auto& range : {token_range::skip_cls(N), token_range::all(N)}) {
      std::vector<float> want(static_cast<std::size_t>(range.count)), want16(want.size());
      contribution_degree(seq, view, op, range, want);
      contribution_degree(seq, view16, op, range, want16);
      for (int threads : {0, 2, 3, 7}) {
        std::vector<float> got(want.size()), got16(want.size());
        contribution_degree(threaded_policy{.threads = threads}, view, op, range, got);
        contribution_degree(threaded_policy{.threads = threads}, view16, op, range, got16);
        ASSERT_EQ(0, std::memcmp(got.data(), want.data(), want.size() * sizeof(float))) << to_string(op) << " threads " << threads;
        ASSERT_EQ(0, std::memcmp(got16.data(), want16.data(), want.size() * sizeof(float))) << to_string(op) << " threads " << threads;
      }
    }
  }
}

TEST(ContributionDegree, EmptyIsValid) {
  std::vector<float> r;
  EXPECT_NO_THROW(contribution_degree(matrix_view<const float>(nullptr, {0, 0}), r));
  std::vector<float> att(2, 0.5f);  // 2 heads, N = 1: CLS only, no patches
  EXPECT_NO_THROW(contribution_degree(seq, head_attention_view<float>(att.data(), {2, 1, 1}), head_reduction::mean, r));
}

TEST(ContributionDegree, RejectsBadInput) {
  std::vector<float> m(12, 0.1f);
  std::vector<float> r(3);
  expect_error([&] { contribution_degree(matrix_view<const float>(m.data(), {3, 4}), r); }, errc::shape_mismatch,
               "contribution_degree.map = 3x4");
  std::vector<float> r2(2);
  expect_error([&] { contribution_degree(matrix_view<const float>(m.data(), {3, 3}), r2); }, errc::shape_mismatch,
               "contribution_degree.out.extent(0) = 2");
  m[1 * 3 + 2] = std::numeric_limits<float>::quiet_NaN();  // row 1, column 2
  expect_error([&] { contribution_degree(matrix_view<const float>(m.data(), {3, 3}), r); }, errc::non_finite,
               "contribution_degree.r[2]");
  m[1 * 3 + 2] = 0.1f;
  m[0] = std::numeric_limits<float>::infinity();  // on the diagonal: Inf - Inf
  expect_error([&] { contribution_degree(matrix_view<const float>(m.data(), {3, 3}), r); }, errc::non_finite,
               "contribution_degree.r[0]");
  std::vector<float> att(2 * 3 * 4, 0.1f);
  expect_error([&] { contribution_degree(seq, head_attention_view<float>(att.data(), {2, 3, 4}), head_reduction::mean, r); },
               errc::shape_mismatch, "contribution_degree.attention = 3x4");
  std::vector<float> att2(2 * 3 * 3, 0.1f);
  att2[9 + 2 * 3 + 1] = -std::numeric_limits<float>::infinity();  // head 1, patch row 1, patch column 0
  std::vector<float> rp(2);
  expect_error([&] { contribution_degree(par, head_attention_view<float>(att2.data(), {2, 3, 3}), head_reduction::mean, rp); },
               errc::non_finite, "contribution_degree.r[0]");
  expect_error([&] { contribution_degree(seq, head_attention_view<float>(att2.data(), {2, 3, 3}), head_reduction::mean, token_range{2, 2}, rp); },
               errc::invalid_argument, "range(queries)");
}
