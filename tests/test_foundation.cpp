#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <numeric>
#include <vector>

#include "tokensel/core/batch.hpp"
#include "tokensel/select/gather.hpp"
#include "tokensel/stats/head_reduction.hpp"
#include "tokensel/core/token_grid.hpp"
#include "tokensel/core/token_range.hpp"
#include "tokensel/detail/reduce.hpp"
#include "tokensel/select/top_k.hpp"

using namespace tokensel;

TEST(TopK, TieBreaksToLowerIndex) {
  std::vector<float> s{1, 3, 3, 2, 3};
  std::vector<token_index> out(3);
  ASSERT_EQ(top_k<float>(std::span<const float>(s), 2, out, index_order::ranked), 2);
  EXPECT_EQ(out[0], 1);
  EXPECT_EQ(out[1], 2);
  ASSERT_EQ(bottom_k<float>(std::span<const float>(s), 3, out), 3);
  EXPECT_EQ((std::vector<token_index>(out.begin(), out.end())), (std::vector<token_index>{0, 1, 3}));
}

// top_k / bottom_k keep exactly the set (ascending order) and the sequence (ranked order) of a
// stable sort by the rank rule (higher / lower score first, equal scores: lower index first,
// -0 == +0), for several k, on continuous scores, heavy ties, signed zeros, negatives,
// subnormals and strided views; fp16 scores select as their fp32 values.
TEST(TopK, EqualsStableSortReference) {
  std::uint32_t state = 7;
  auto next = [&] { return state = state * 1664525u + 1013904223u; };
  for (int trial = 0; trial < 300; ++trial) {
    const auto n = static_cast<index_t>(1 + next() % 700);
    std::vector<float> s(static_cast<std::size_t>(2 * n));
    const int kind = trial % 4;
    for (auto& v : s) {
      const std::uint32_t r = next();
      if (kind == 0) v = static_cast<float>(static_cast<std::int32_t>(r)) * 1e-9f;                      // continuous, signed
      if (kind == 1) v = static_cast<float>(r % 5) - 2.0f;                                              // heavy ties
      if (kind == 2) v = (r % 3 == 0) ? 0.0f : (r % 3 == 1 ? -0.0f : static_cast<float>(r % 7) * 1e-40f);  // zeros, subnormals
      if (kind == 3) v = static_cast<float>(Eigen::half(static_cast<float>(r % 2048) / 2048.0f));      // fp16 grid
    }
    const vector_view<const float> view(s.data(), {n}, {2});  // every other value: a strided view
    std::vector<float> x(static_cast<std::size_t>(n));
    for (index_t i = 0; i < n; ++i) x[static_cast<std::size_t>(i)] = view(i) == 0.0f ? 0.0f : view(i);
    for (const bool high : {true, false}) {
      std::vector<token_index> order(static_cast<std::size_t>(n));
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](token_index a, token_index b) {
        return high ? x[static_cast<std::size_t>(a)] > x[static_cast<std::size_t>(b)] : x[static_cast<std::size_t>(a)] < x[static_cast<std::size_t>(b)];
      });
      for (const index_t k : {index_t{1}, n / 3, n / 2, n - 1, n}) {
        if (k < 1) continue;
        std::vector<token_index> want(order.begin(), order.begin() + k), got(static_cast<std::size_t>(k)), ranked(got.size());
        const auto call = [&](index_order o, std::vector<token_index>& out) {
          return high ? top_k<float>(view, k, out, o) : bottom_k<float>(view, k, out, o);
        };
        ASSERT_EQ(call(index_order::ranked, ranked), k);
        ASSERT_EQ(ranked, want) << "ranked, trial " << trial << " n " << n << " k " << k;
        std::sort(want.begin(), want.end());
        ASSERT_EQ(call(index_order::ascending, got), k);
        ASSERT_EQ(got, want) << "ascending, trial " << trial << " n " << n << " k " << k << (high ? " top" : " bottom");
      }
    }
    std::vector<Eigen::half> h(static_cast<std::size_t>(n));
    for (index_t i = 0; i < n; ++i) h[static_cast<std::size_t>(i)] = Eigen::half(x[static_cast<std::size_t>(i)]);
    std::vector<float> hf(h.size());
    for (std::size_t i = 0; i < h.size(); ++i) hf[i] = static_cast<float>(h[i]);
    const index_t k = (n + 1) / 2;
    std::vector<token_index> a(static_cast<std::size_t>(k)), b(a.size());
    ASSERT_EQ(top_k<Eigen::half>(std::span<const Eigen::half>(h), k, a), k);
    ASSERT_EQ(top_k<float>(std::span<const float>(hf), k, b), k);
    ASSERT_EQ(a, b) << "fp16, trial " << trial;
  }
}

TEST(TopK, RejectsNaNAndBadK) {
  std::vector<float> s{1, std::numeric_limits<float>::quiet_NaN()};
  std::vector<token_index> out(2);
  EXPECT_THROW(top_k<float>(std::span<const float>(s), 1, out), error);
  std::vector<float> ok{1, 2};
  EXPECT_THROW(top_k<float>(std::span<const float>(ok), 3, out), error);
  try {
    top_k<float>(std::span<const float>(ok), -1, out);
    FAIL();
  } catch (const error& e) {
    EXPECT_EQ(e.code(), errc::invalid_argument);
    EXPECT_NE(std::string(e.what()).find("top_k.k = -1"), std::string::npos) << e.what();
  }
}

TEST(HeadReduction, MeanSumMax) {
  // 2 heads x 2 x 2
  std::vector<float> a{1, 2, 3, 4, 5, 6, 7, 0};
  head_attention_view<float> v(a.data(), {2, 2, 2});
  std::vector<float> m(4);
  matrix_view<float> out(m.data(), {2, 2});
  reduce_heads(seq, v, head_reduction::mean, out);
  EXPECT_EQ(m, (std::vector<float>{3, 4, 5, 2}));
  reduce_heads(par, v, head_reduction::sum, out);
  EXPECT_EQ(m, (std::vector<float>{6, 8, 10, 4}));
  reduce_heads(seq, v, head_reduction::max, out);
  EXPECT_EQ(m, (std::vector<float>{5, 6, 7, 4}));
}

TEST(Views, SliceAndGrid) {
  EXPECT_THROW(token_grid::square(575), error);
  EXPECT_EQ(token_grid::square(576).rows, 24);
  std::vector<float> a(9);
  matrix_view<float> m(a.data(), {3, 3});
  EXPECT_THROW(m.slice(0, 2, 2), error);
  EXPECT_THROW((matrix_view<float>(nullptr, {3, 3})), error);
  EXPECT_NO_THROW((matrix_view<float>(nullptr, {0, 3})));
}

// canonical_dot_tile is the register-blocked form of canonical_dot (cosine tables, VisionZip,
// PruMerge's neighbours): every pair of every partial tile, for lengths around the 32-lane step
// (the zero-padded tail) and a large one, must give canonical_dot's bits; -0 products and
// cancelling sums included, where a padded +0 would show if it changed a lane.
TEST(CanonicalDot, TileEqualsOneDotPerPairBitForBit) {
  constexpr int R = detail::dot_tile_rows, C = detail::dot_tile_cols;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const index_t max_n = 1100;
  std::vector<float> rows(static_cast<std::size_t>((R + C) * max_n));
  for (auto& v : rows) v = normal(rng) * 1e3f;
  for (index_t i = 0; i < max_n; i += 7) rows[static_cast<std::size_t>(i)] = -0.0f;  // -0 products in row 0
  for (index_t i = 0; i < max_n; ++i) rows[static_cast<std::size_t>(max_n + i)] = i % 2 == 0 ? 1.0f : -1.0f;
  const std::vector<index_t> lengths{1, 2, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65, 100, 1024, 1100};
  int compared = 0;
  for (index_t n : lengths) {
    const float* a[R];
    const float* b[C];
    for (int r = 0; r < R; ++r) a[r] = rows.data() + r * max_n;
    for (int c = 0; c < C; ++c) b[c] = rows.data() + (R + c) * max_n;
    b[0] = rows.data() + max_n;  // row 1 against itself: every lane sums +1s; against row 0 they cancel
    for (int nr = 1; nr <= R; ++nr) {
      for (int nc = 1; nc <= C; ++nc) {
        std::vector<float> out(static_cast<std::size_t>(R * (C + 1)), 12345.0f);
        detail::canonical_dot_tile(a, nr, b, nc, n, out.data(), C + 1);
        for (int r = 0; r < R; ++r) {
          for (int c = 0; c <= C; ++c) {
            const float got = out[static_cast<std::size_t>(r * (C + 1) + c)];
            if (r >= nr || c >= nc) {
              EXPECT_EQ(got, 12345.0f) << "wrote outside the tile at (" << r << ", " << c << ")";
              continue;
            }
            const float want = detail::canonical_dot(a[r], b[c], n);
            EXPECT_EQ(0, std::memcmp(&got, &want, sizeof(float)))
                << "n " << n << " tile " << nr << " x " << nc << " pair (" << r << ", " << c << "): " << got << " vs " << want;
            ++compared;
          }
        }
      }
    }
  }
  EXPECT_EQ(compared, static_cast<int>(lengths.size()) * (R * (R + 1) / 2) * (C * (C + 1) / 2));
}
