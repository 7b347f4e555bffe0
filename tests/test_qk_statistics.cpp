// Statistics from Q/K equal those of the materialised softmax.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "tokensel/stats/qk_statistics.hpp"

using namespace tokensel;

namespace {

struct qk_data {
  index_t heads, kv_heads, nq, nk, d;
  std::vector<float> q, k;
  qk_source<float> source() const {
    return {.queries = tensor_view<const float, 3>(q.data(), {heads, nq, d}),
            .keys = tensor_view<const float, 3>(k.data(), {kv_heads, nk, d})};
  }
};

qk_data make(index_t heads, index_t kv_heads, index_t nq, index_t nk, index_t d, unsigned seed, float spread = 1.5f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, spread);
  qk_data x{heads, kv_heads, nq, nk, d, std::vector<float>(heads * nq * d), std::vector<float>(kv_heads * nk * d)};
  for (auto& v : x.q) v = dist(gen);
  for (auto& v : x.k) v = dist(gen);
  return x;
}

// P[h][i][j] in double: the reference softmax.
std::vector<double> reference_probs(const qk_data& x, bool causal) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(x.d));
  const index_t group = x.heads / x.kv_heads, offset = x.nk - x.nq;
  std::vector<double> p(x.heads * x.nq * x.nk, 0.0);
  for (index_t h = 0; h < x.heads; ++h)
    for (index_t i = 0; i < x.nq; ++i) {
      const index_t visible = causal ? std::min(x.nk, i + offset + 1) : x.nk;
      std::vector<double> s(visible);
      double m = -1e300;
      for (index_t j = 0; j < visible; ++j) {
        double acc = 0;
        for (index_t c = 0; c < x.d; ++c) acc += double(x.q[(h * x.nq + i) * x.d + c]) * x.k[((h / group) * x.nk + j) * x.d + c];
        s[j] = acc * scale;
        m = std::max(m, s[j]);
      }
      double total = 0;
      for (index_t j = 0; j < visible; ++j) total += s[j] = std::exp(s[j] - m);
      for (index_t j = 0; j < visible; ++j) p[(h * x.nq + i) * x.nk + j] = s[j] / total;
    }
  return p;
}

double reduce(const std::vector<double>& p, const qk_data& x, head_reduction op, index_t i, index_t j) {
  double acc = op == head_reduction::max ? -1.0 : 0.0;
  for (index_t h = 0; h < x.heads; ++h) {
    const double v = p[(h * x.nq + i) * x.nk + j];
    acc = op == head_reduction::max ? std::max(acc, v) : acc + v;
  }
  return op == head_reduction::mean ? acc / x.heads : acc;
}

void expect_rel(double got, double want, double tol, const char* what, index_t i) {
  EXPECT_LE(std::abs(got - want), tol * std::max(std::abs(want), 1e-30) + 1e-12) << what << "[" << i << "] " << got << " vs " << want;
}

}  // namespace

TEST(QkStatistics, MatchesDoubleReference) {
  for (bool causal : {false, true}) {
    for (auto op : {head_reduction::mean, head_reduction::sum, head_reduction::max}) {
      // 130 rows: three tiles, the last one partial. GQA: 4 query heads over 2 key heads.
      const auto x = make(4, 2, 130, 130, 16, causal ? 1 : 2);
      auto src = x.source();
      src.causal = causal;
      const auto p = reference_probs(x, causal);
      std::vector<float> rows(130), cols(130), diag(130);
      map_sums(seq, src, op, {rows, cols, diag});
      for (index_t i = 0; i < 130; ++i) {
        double r = 0, c = 0;
        for (index_t j = 0; j < 130; ++j) {
          r += reduce(p, x, op, i, j);
          c += reduce(p, x, op, j, i);
        }
        expect_rel(rows[i], r, 1e-5, "row", i);
        expect_rel(cols[i], c, 1e-5, "col", i);
        expect_rel(diag[i], reduce(p, x, op, i, i), 1e-5, "diag", i);
      }
    }
  }
}

TEST(QkStatistics, EqualsMaterialisedPathBitwise) {
  const auto x = make(3, 3, 77, 77, 8, 9);
  auto src = restrict_tokens(x.source(), token_range::skip_cls(77));
  std::vector<float> map(3 * 76 * 76);
  materialize_attention(seq, src, tensor_view<float, 3>(map.data(), {3, 76, 76}));
  head_attention_view<float> view(map.data(), {3, 76, 76});
  for (auto op : {head_reduction::mean, head_reduction::max}) {
    std::vector<float> r1(76), c1(76), d1(76), r2(76), c2(76), d2(76), r3(76), c3(76), d3(76);
    map_sums(seq, src, op, {r1, c1, d1});
    map_sums(par, src, op, {r3, c3, d3});
    map_sums(seq, view, op, {r2, c2, d2});
    EXPECT_EQ(r1, r2);
    EXPECT_EQ(c1, c2);
    EXPECT_EQ(d1, d2);
    EXPECT_EQ(r1, r3);
    EXPECT_EQ(c1, c3);
    EXPECT_EQ(d1, d3);
  }
}

TEST(QkStatistics, WindowKeepsFullSoftmax) {
  // The patch window is not renormalised: row sums over patches are < 1.
  const auto x = make(2, 2, 10, 10, 4, 4);
  auto src = restrict_tokens(x.source(), token_range::skip_cls(10));
  std::vector<float> rows(9);
  map_sums(seq, src, head_reduction::mean, {.row_sums = rows});
  const auto p = reference_probs(x, false);
  for (index_t i = 0; i < 9; ++i) {
    double want = 0;
    for (index_t j = 1; j < 10; ++j) want += reduce(p, x, head_reduction::mean, i + 1, j);
    expect_rel(rows[i], want, 1e-5, "row", i);
    EXPECT_LT(rows[i], 1.0f);
  }
}

TEST(QkStatistics, ReducedRowsAndLse) {
  const auto x = make(2, 1, 40, 50, 8, 5);
  auto src = x.source();
  src.causal = true;  // offset 10: query i sees keys 0..i+10
  const auto p = reference_probs(x, true);
  const std::vector<index_t> which{0, 39, 17};
  std::vector<float> out(3 * 50);
  reduced_rows(seq, src, head_reduction::max, which, matrix_view<float>(out.data(), {3, 50}));
  for (std::size_t r = 0; r < 3; ++r)
    for (index_t j = 0; j < 50; ++j) expect_rel(out[r * 50 + j], reduce(p, x, head_reduction::max, which[r], j), 1e-5, "row", j);
  EXPECT_EQ(out[0 * 50 + 11], 0.0f);  // masked

  // Engine-provided log-sum-exp gives the same probabilities.
  const double scale = 1.0 / std::sqrt(8.0);
  std::vector<float> lse(2 * 40);
  for (index_t h = 0; h < 2; ++h)
    for (index_t i = 0; i < 40; ++i) {
      double m = -1e300, t = 0;
      std::vector<double> s;
      for (index_t j = 0; j <= i + 10; ++j) {
        double acc = 0;
        for (index_t c = 0; c < 8; ++c) acc += double(x.q[(h * 40 + i) * 8 + c]) * x.k[j * 8 + c];
        s.push_back(acc * scale);
        m = std::max(m, acc * scale);
      }
      for (double v : s) t += std::exp(v - m);
      lse[h * 40 + i] = static_cast<float>(m + std::log(t));
    }
  src.lse = tensor_view<const float, 2>(lse.data(), {2, 40});
  std::vector<float> out2(3 * 50);
  reduced_rows(par, src, head_reduction::max, which, matrix_view<float>(out2.data(), {3, 50}));
  for (std::size_t r = 0; r < 3; ++r)
    for (index_t j = 0; j < 50; ++j) expect_rel(out2[r * 50 + j], reduce(p, x, head_reduction::max, which[r], j), 2e-5, "lse row", j);
}

TEST(QkStatistics, HalfInputs) {
  const auto x = make(2, 2, 33, 33, 8, 6);
  std::vector<Eigen::half> qh(x.q.size()), kh(x.k.size());
  std::vector<float> qr(x.q.size()), kr(x.k.size());
  for (std::size_t i = 0; i < qh.size(); ++i) qr[i] = float(qh[i] = Eigen::half(x.q[i]));
  for (std::size_t i = 0; i < kh.size(); ++i) kr[i] = float(kh[i] = Eigen::half(x.k[i]));
  qk_source<Eigen::half> hs{.queries = tensor_view<const Eigen::half, 3>(qh.data(), {2, 33, 8}),
                            .keys = tensor_view<const Eigen::half, 3>(kh.data(), {2, 33, 8})};
  qk_source<float> fs{.queries = tensor_view<const float, 3>(qr.data(), {2, 33, 8}),
                      .keys = tensor_view<const float, 3>(kr.data(), {2, 33, 8})};
  std::vector<float> c1(33), c2(33);
  map_sums(seq, hs, head_reduction::mean, {.column_sums = c1});
  map_sums(seq, fs, head_reduction::mean, {.column_sums = c2});
  EXPECT_EQ(c1, c2);  // fp16 inputs are widened exactly, then the same fp32 pipeline runs
}

TEST(QkStatistics, RejectsBadSources) {
  auto x = make(4, 3, 5, 5, 4, 1);
  EXPECT_THROW(map_sums(seq, x.source(), head_reduction::mean, {}), error);  // 3 kv heads do not divide 4
  x = make(2, 2, 5, 5, 4, 1);
  x.q[7] = std::numeric_limits<float>::quiet_NaN();
  try {
    map_sums(seq, x.source(), head_reduction::mean, {});
    FAIL();
  } catch (const error& e) {
    EXPECT_EQ(e.code(), errc::non_finite);
    EXPECT_NE(std::string(e.what()).find("qk.queries[0, 1, 3]"), std::string::npos) << e.what();
  }
  x = make(2, 2, 5, 5, 4, 1);
  auto src = x.source();
  EXPECT_THROW(restrict_tokens(src, token_range{2, 4}), error);
  std::vector<float> out(5);
  std::vector<index_t> bad_row{5};
  EXPECT_THROW(reduced_rows(seq, src, head_reduction::mean, bad_row, matrix_view<float>(out.data(), {1, 5})), error);
}
