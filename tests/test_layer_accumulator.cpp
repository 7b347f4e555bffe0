#include <gtest/gtest.h>

#include <limits>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "tokensel/stats/layer_accumulator.hpp"

using namespace tokensel;

namespace {
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
std::vector<float> vec(std::span<const float> s) { return {s.begin(), s.end()}; }
}  // namespace

TEST(LayerAccumulator, SumMaxLastMean) {
  layer_accumulator acc(3);
  EXPECT_EQ(acc.size(), 3);
  EXPECT_EQ(acc.layers(), 0);
  EXPECT_EQ(vec(acc.sum()), (std::vector<float>{0, 0, 0}));
  acc.add(std::vector<float>{1, -2, 3});
  acc.add(std::vector<float>{4, -5, 0.5f});
  const std::vector<float> third{-1, -0.5f, 2};
  acc.add(vector_view<const float>(third.data(), {3}));
  EXPECT_EQ(acc.layers(), 3);
  EXPECT_EQ(vec(acc.sum()), (std::vector<float>{4, -7.5f, 5.5f}));
  EXPECT_EQ(vec(acc.max()), (std::vector<float>{4, -0.5f, 3}));
  EXPECT_EQ(vec(acc.last()), third);
  std::vector<float> mean(3);
  acc.mean(mean);
  EXPECT_EQ(mean, (std::vector<float>{4.0f / 3.0f, -2.5f, 5.5f / 3.0f}));
  acc.reset();
  EXPECT_EQ(acc.layers(), 0);
  EXPECT_EQ(vec(acc.sum()), (std::vector<float>{0, 0, 0}));
  acc.add(std::vector<float>{-9, -9, -9});  // max restarts from -inf, not from the old values
  EXPECT_EQ(vec(acc.max()), (std::vector<float>{-9, -9, -9}));
}

TEST(LayerAccumulator, StridedAndHalfInputs) {
  layer_accumulator acc(2);
  std::vector<float> buf{1, 100, 2, 100};
  acc.add(vector_view<float>(buf.data(), {2}, {2}));  // mutable strided view: elements 1 and 2
  std::vector<Eigen::half> h{Eigen::half(0.5f), Eigen::half(4.0f)};
  acc.add(vector_view<const Eigen::half>(h.data(), {2}));
  EXPECT_EQ(vec(acc.sum()), (std::vector<float>{1.5f, 6}));
  EXPECT_EQ(vec(acc.max()), (std::vector<float>{1, 4}));
}

TEST(LayerAccumulator, RejectsBadInputWithoutChangingState) {
  expect_error([] { layer_accumulator(-1); }, errc::invalid_argument, "layer_accumulator.n = -1");
  layer_accumulator acc(3);
  expect_error([&] { (void)acc.max(); }, errc::invalid_argument, "layer_accumulator.max");
  expect_error([&] { (void)acc.last(); }, errc::invalid_argument, "no layer added yet");
  std::vector<float> m(3);
  expect_error([&] { acc.mean(m); }, errc::invalid_argument, "layer_accumulator.mean");
  acc.add(std::vector<float>{1, 2, 3});
  expect_error([&] { acc.add(std::vector<float>{1, 2}); }, errc::shape_mismatch, "layer_accumulator.scores.extent(0) = 2");
  expect_error([&] { acc.add(std::vector<float>{5, std::numeric_limits<float>::quiet_NaN(), 5}); }, errc::non_finite,
               "layer_accumulator.scores[1]");
  expect_error([&] { acc.add(std::vector<float>{5, 5, std::numeric_limits<float>::infinity()}); }, errc::non_finite,
               "layer_accumulator.scores[2]");
  std::vector<float> m2(2);
  expect_error([&] { acc.mean(m2); }, errc::shape_mismatch, "layer_accumulator.mean.out.size() = 2");
  EXPECT_EQ(acc.layers(), 1);
  EXPECT_EQ(vec(acc.sum()), (std::vector<float>{1, 2, 3}));
  EXPECT_EQ(vec(acc.max()), (std::vector<float>{1, 2, 3}));
}

TEST(LayerAccumulator, EmptyTokens) {
  layer_accumulator acc(0);
  acc.add(std::vector<float>{});
  EXPECT_EQ(acc.layers(), 1);
  EXPECT_TRUE(acc.max().empty());
}
