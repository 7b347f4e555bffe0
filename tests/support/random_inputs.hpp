// Test support: random inputs stored in any element type (float, Eigen::half, Eigen::bfloat16):
// row-softmax attention maps and normal values. Shared by the tests that run every method in the
// three element types (test_nomalloc, test_element_types).
#pragma once

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "tokensel/core/config.hpp"

namespace tokensel_test {

using tokensel::index_t;

/// count * rows row-softmax rows of cols values (logits N(0, 3)), each rounded to T.
template <class T>
std::vector<T> softmax_maps(std::mt19937& rng, index_t count, index_t rows, index_t cols) {
  std::normal_distribution<float> logit(0.0f, 3.0f);
  std::vector<T> a(static_cast<std::size_t>(count * rows * cols));
  std::vector<float> row(static_cast<std::size_t>(cols));
  for (index_t r = 0; r < count * rows; ++r) {
    float m = -INFINITY, s = 0.0f;
    for (auto& v : row) m = std::max(m, v = logit(rng));
    for (auto& v : row) s += v = std::exp(v - m);
    for (index_t c = 0; c < cols; ++c) a[static_cast<std::size_t>(r * cols + c)] = T(row[static_cast<std::size_t>(c)] / s);
  }
  return a;
}

/// n values N(0, 1), each rounded to T.
template <class T>
std::vector<T> normal_values(std::mt19937& rng, std::size_t n) {
  std::normal_distribution<float> x(0.0f, 1.0f);
  std::vector<T> v(n);
  for (auto& e : v) e = T(x(rng));
  return v;
}

}  // namespace tokensel_test
