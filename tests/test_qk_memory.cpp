// Statistics from Q/K allocate nothing proportional to n^2, and nothing at all once warm.
//
// support/counting_allocator.hpp replaces the global operator new / delete (every form) with counting versions: while
// counting is on, every allocation adds its size to a total and updates the largest single
// allocation. Eigen's own heap use (its GEMM packing buffers come from malloc, not operator new)
// is caught with Eigen's EIGEN_RUNTIME_NO_MALLOC hook: eigen_assert is redefined below to count
// failed checks instead of aborting, so a heap allocation inside Eigen while
// set_is_malloc_allowed(false) is in force shows up as a count.
//
// The bound. The Q/K pipeline's scratch for one call (sequential policy) is
//   keys  kv_heads x n_k x d floats   (converted once)
//   tile  heads x 64 x n_k floats     (probabilities of 64 query rows; qk_tile_rows)
//   m     64 x n_k floats             (the head-reduced tile)
//   plus O(heads x 64 x d + n) for the query tile and row indices,
// i.e. O(n) per head, never n x n. The scratch arena grows in power-of-two blocks (64 KiB,
// doubling) and never moves back to an earlier block inside a scope, so its largest block can be
// up to about twice the largest request; the test bounds the largest single allocation by
// 2 x (the sum above, rounded up to a power of two) and checks that doubling n doubles it (it
// would quadruple for n x n storage). With n = 1024, 1 head and d = 64 the tile is 256 KiB and
// the largest block 1 MiB, against 4 MiB for the n x n fp32 map of that one head (and 64 MiB for
// a 16-head materialised layer).
#include "support/counting_allocator.hpp"  // first: it replaces operator new and hooks Eigen

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "tokensel/stats/qk_statistics.hpp"

using namespace tokensel;

namespace {

using tokensel_test_alloc::counts;
using tokensel_test_alloc::measure;

struct qk {
  index_t heads, n, d;
  std::vector<float> q, k;
  qk_source<float> source() const {
    return {.queries = tensor_view<const float, 3>(q.data(), {heads, n, d}),
            .keys = tensor_view<const float, 3>(k.data(), {heads, n, d})};
  }
};

qk make(index_t heads, index_t n, index_t d) {
  std::mt19937 gen(1);
  std::normal_distribution<float> dist;
  qk x{heads, n, d, std::vector<float>(heads * n * d), std::vector<float>(heads * n * d)};
  for (auto& v : x.q) v = dist(gen);
  for (auto& v : x.k) v = dist(gen);
  return x;
}

std::size_t next_pow2(std::size_t v) {
  std::size_t p = 1;
  while (p < v) p *= 2;
  return p;
}

// Scratch the pipeline requests for one map_sums call (see the header comment).
std::size_t pipeline_bytes(index_t heads, index_t n, index_t d) {
  const auto f = sizeof(float);
  return f * static_cast<std::size_t>(heads * n * d + heads * qk_tile_rows * n + qk_tile_rows * n + heads * qk_tile_rows * d) +
         3 * sizeof(index_t) * static_cast<std::size_t>(n);
}

struct run_counts {
  counts first, second;
};

// A fresh thread has an empty scratch arena: the first call is cold, the second warm.
run_counts cold_then_warm(const qk& x) {
  run_counts r;
  std::thread t([&] {
    std::vector<float> rows(x.n), cols(x.n), diag(x.n);
    const map_sums_out out{rows, cols, diag};
    r.first = measure([&] { map_sums(seq, x.source(), head_reduction::mean, out); });
    Eigen::internal::set_is_malloc_allowed(false);
    r.second = measure([&] { map_sums(seq, x.source(), head_reduction::mean, out); });
    Eigen::internal::set_is_malloc_allowed(true);
  });
  t.join();
  return r;
}

}  // namespace

TEST(QkMemory, MapSumsAllocatesNothingQuadratic) {
  const index_t n = 1024, d = 64;
  for (index_t heads : {1, 4}) {
    const auto x = make(heads, n, d);
    const auto r = cold_then_warm(x);
    std::printf("heads %td, n %td: first call %zu allocations, %zu bytes, largest %zu (Eigen heap %zu); second call %zu "
                "allocations, %zu bytes (Eigen heap %zu)\n",
                heads, n, r.first.allocations, r.first.bytes, r.first.largest, r.first.eigen, r.second.allocations,
                r.second.bytes, r.second.eigen);
    // Warm: the scratch arena serves everything, and Eigen's products use no heap either.
    EXPECT_EQ(r.second.bytes, 0u);
    EXPECT_EQ(r.second.allocations, 0u);
    EXPECT_EQ(r.second.eigen, 0u);
    // Cold: at most the arena's blocks for the O(n)-per-head pipeline scratch.
    const std::size_t bound = 2 * next_pow2(pipeline_bytes(heads, n, d));
    EXPECT_LE(r.first.largest, bound);
    EXPECT_LE(r.first.bytes, 2 * bound);
    // Far below the heads x n x n fp32 map a materialised layer needs (16 MiB for 4 heads); for
    // one head the largest block is a quarter of its n x n map (the 256 KiB tile rounded up by
    // the arena: see the header comment), the n x n * 4 / 8 bound holds from n = 4096 on (below).
    EXPECT_LT(r.first.bytes, static_cast<std::size_t>(heads * n * n * 4) / (heads == 1 ? 2 : 4));
    if (heads == 1) {
      EXPECT_LE(r.first.largest, static_cast<std::size_t>(n * n * 4) / 4);
    }
  }
  const index_t big = 4096;
  const auto r = cold_then_warm(make(1, big, 64));
  std::printf("heads 1, n %td: first call %zu bytes, largest %zu\n", big, r.first.bytes, r.first.largest);
  EXPECT_LT(r.first.largest, static_cast<std::size_t>(big * big * 4) / 8);
  EXPECT_EQ(r.second.bytes, 0u);
  EXPECT_EQ(r.second.eigen, 0u);
}

TEST(QkMemory, DoublingNDoublesTheScratch) {
  const auto small = cold_then_warm(make(2, 1024, 32));
  const auto large = cold_then_warm(make(2, 2048, 32));
  // n x n storage would quadruple; the tiled pipeline's needs double (the arena's power-of-two
  // rounding keeps the ratio at exactly 2 here).
  EXPECT_LE(large.first.largest, 2 * small.first.largest);
  EXPECT_LE(large.first.bytes, 2 * small.first.bytes + 65536);
  EXPECT_EQ(large.second.bytes, 0u);
  EXPECT_EQ(large.second.eigen, 0u);
}

TEST(QkMemory, WarmReducedRowsAndThreadedCallsAllocateNothing) {
  const auto x = make(4, 577, 64);
  std::thread t([&] {
    std::vector<float> row(577);
    const index_t rows[1] = {0};
    auto once = [&] {
      reduced_rows(seq, x.source(), head_reduction::sum, std::span<const index_t>(rows), matrix_view<float>(row.data(), {1, 577}));
    };
    once();
    const auto warm = measure(once);
    EXPECT_EQ(warm.bytes, 0u);
    EXPECT_EQ(warm.eigen, 0u);
  });
  t.join();
  // Threaded: every worker's arena is warm after the first call (OpenMP keeps its threads).
  std::vector<float> cols(577);
  map_sums(par, x.source(), head_reduction::mean, {{}, cols, {}});
  const auto warm = measure([&] { map_sums(par, x.source(), head_reduction::mean, {{}, cols, {}}); });
  EXPECT_EQ(warm.bytes, 0u);
}
