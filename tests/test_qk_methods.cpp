// Every method selects the same tokens from a Q/K source as from the materialised attention.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "tokensel/fopru.hpp"
#include "tokensel/qk_statistics.hpp"

using namespace tokensel;

namespace {

// Q/K with structure: a few "sink" keys that every query attends to, like CLIP's high-norm
// tokens, plus noise; and the materialised probabilities from the library's own pipeline.
struct layer {
  index_t heads, n, d;
  std::vector<float> q, k, map;
  qk_source<float> source() const {
    return {.queries = tensor_view<const float, 3>(q.data(), {heads, n, d}),
            .keys = tensor_view<const float, 3>(k.data(), {heads, n, d})};
  }
  head_attention_view<float> view() const { return head_attention_view<float>(map.data(), {heads, n, n}); }
};

layer make_layer(index_t heads, index_t n, index_t d, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  layer x{heads, n, d, std::vector<float>(heads * n * d), std::vector<float>(heads * n * d), std::vector<float>(heads * n * n)};
  for (auto& v : x.q) v = dist(gen);
  for (auto& v : x.k) v = dist(gen);
  for (index_t h = 0; h < heads; ++h)
    for (index_t sink : {index_t{3}, n / 2, n - 2})
      for (index_t c = 0; c < d; ++c) x.k[(h * n + sink) * d + c] += 2.0f;
  materialize_attention(seq, x.source(), tensor_view<float, 3>(x.map.data(), {heads, n, n}));
  return x;
}

}  // namespace

TEST(QkMethods, FoPruSelectsIdenticalTokens) {
  for (unsigned seed = 0; seed < 8; ++seed) {
    const auto x = make_layer(4, 1 + 49, 16, seed);
    for (auto strat : {fopru::strategy::rank, fopru::strategy::row}) {
      const fopru::config cfg{.ratio = 0.3, .strategy = strat};
      const index_t k = fopru::keep_count(49, cfg);
      std::vector<token_index> a(k), b(k);
      const auto ra = fopru::select(seq, x.view(), cfg, a);
      const auto rb = fopru::select(par, x.source(), cfg, b);
      EXPECT_EQ(a, b) << "seed " << seed;
      EXPECT_EQ(ra.axis, rb.axis);
      EXPECT_NEAR(ra.column_variance, rb.column_variance, 1e-5 * ra.column_variance);
    }
  }
}
