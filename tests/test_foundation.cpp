#include <gtest/gtest.h>

#include <vector>

#include "tokensel/core/batch.hpp"
#include "tokensel/select/gather.hpp"
#include "tokensel/stats/head_reduction.hpp"
#include "tokensel/core/token_grid.hpp"
#include "tokensel/core/token_range.hpp"
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
