// detail::parallel_ordered_chunks: the pipeline behind the threaded column sums (map_sums,
// region_mass). Its contract: every chunk produced and consumed exactly once, consumption in
// ascending order and never concurrent, at most `window` chunks produced but not consumed, and the
// lowest failing chunk's exception rethrown with nothing consumed after it.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <string>
#include <vector>

#include "tokensel/detail/parallel.hpp"

using namespace tokensel;

namespace {

constexpr std::size_t kThreaded = detail::parallel_min_bytes;  // large enough to run threaded

struct trace {
  std::vector<index_t> slot_owner;     // chunk whose result a slot holds
  std::vector<index_t> consumed;       // consumption order
  std::atomic<int> in_flight{0}, most_in_flight{0}, consumers{0};
  std::atomic<bool> overlapping_consume{false}, wrong_slot{false};
  explicit trace(index_t window) : slot_owner(static_cast<std::size_t>(window), -1) {}
};

template <class Policy>
void run(const Policy& policy, index_t n, index_t window, trace& t, index_t produce_throws = -1,
         index_t consume_throws = -1, index_t produce_throws_too = -1) {
  detail::parallel_ordered_chunks(
      policy, n, window, kThreaded,
      [&](index_t c, index_t slot) {
        if (c == produce_throws || c == produce_throws_too) throw std::runtime_error("produce " + std::to_string(c));
        const int now = ++t.in_flight;
        for (int m = t.most_in_flight.load(); now > m && !t.most_in_flight.compare_exchange_weak(m, now);) {
        }
        if (slot != c % window) t.wrong_slot = true;
        t.slot_owner[static_cast<std::size_t>(slot)] = c;
      },
      [&](index_t c, index_t slot) {
        if (++t.consumers > 1) t.overlapping_consume = true;
        if (t.slot_owner[static_cast<std::size_t>(slot)] != c) t.wrong_slot = true;
        t.consumed.push_back(c);
        --t.in_flight;
        --t.consumers;
        if (c == consume_throws) throw std::runtime_error("consume " + std::to_string(c));
      });
}

}  // namespace

TEST(OrderedChunks, EveryChunkOnceInAscendingOrderWithinTheWindow) {
  for (int threads = 1; threads <= 4; ++threads) {
    for (index_t n : {1, 2, 7, 64, 1000}) {
      for (index_t window : {2, 3, 8}) {
        trace t(window);
        run(threaded_policy{.threads = threads}, n, window, t);
        std::vector<index_t> expected(static_cast<std::size_t>(n));
        for (index_t c = 0; c < n; ++c) expected[static_cast<std::size_t>(c)] = c;
        EXPECT_EQ(t.consumed, expected) << threads << " threads, n " << n << ", window " << window;
        EXPECT_LE(t.most_in_flight.load(), window) << threads << " threads, n " << n << ", window " << window;
        EXPECT_FALSE(t.overlapping_consume.load());
        EXPECT_FALSE(t.wrong_slot.load());
      }
    }
  }
  trace t(4);
  run(seq, 10, 4, t);
  EXPECT_EQ(t.consumed.size(), 10u);
  EXPECT_EQ(t.most_in_flight.load(), 1);
}

TEST(OrderedChunks, LowestFailingChunkIsRethrownAndNothingAfterItConsumed) {
  auto message = [](auto&& f) -> std::string {
    try {
      f();
    } catch (const std::runtime_error& e) {
      return e.what();
    }
    return "no throw";
  };
  for (int threads = 1; threads <= 4; ++threads) {
    for (int rep = 0; rep < 20; ++rep) {
      const threaded_policy policy{.threads = threads};
      {
        trace t(8);
        EXPECT_EQ(message([&] { run(policy, 200, 8, t, 61, -1, 37); }), "produce 37");
        EXPECT_TRUE(std::all_of(t.consumed.begin(), t.consumed.end(), [](index_t c) { return c < 37; }));
      }
      {
        trace t(8);
        EXPECT_EQ(message([&] { run(policy, 200, 8, t, 30, 20); }), "consume 20");
        ASSERT_FALSE(t.consumed.empty());
        EXPECT_EQ(t.consumed.back(), 20);
      }
    }
  }
  trace t(8);
  EXPECT_EQ(message([&] { run(seq, 200, 8, t, 61, -1, 37); }), "produce 37");
  EXPECT_EQ(t.consumed.size(), 37u);
}
