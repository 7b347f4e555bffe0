// tokensel internals: the data-parallel loop behind threaded_policy.
#pragma once

#include <atomic>
#include <cstddef>
#include <exception>
#include <mutex>
#include <thread>
#include <type_traits>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "tokensel/core/config.hpp"
#include "tokensel/core/policy.hpp"
#include "tokensel/detail/scratch.hpp"

TOKENSEL_BEGIN_NAMESPACE
namespace detail {

/// Calls body(i) for i in [0, n). Iterations must be independent; each writes only its own
/// outputs, so the result does not depend on the policy or the thread count. When iterations
/// throw, the exception of the lowest index is rethrown on the calling thread: the error that the
/// sequential loop meets first, whatever the thread count and timing.
template <class Body>
void parallel_for(const sequential_policy&, index_t n, Body&& body) {
  for (index_t i = 0; i < n; ++i) body(i);
}

template <class Body>
void parallel_for(const threaded_policy& policy, index_t n, Body&& body) {
#if defined(_OPENMP)
  if (n <= 1 || omp_in_parallel()) {
    for (index_t i = 0; i < n; ++i) body(i);
    return;
  }
  std::exception_ptr first_error;
  index_t first_index = n;
  std::mutex error_mutex;
  const int threads = policy.threads > 0 ? policy.threads : omp_get_max_threads();
#pragma omp parallel for schedule(guided) num_threads(threads)
  for (index_t i = 0; i < n; ++i) {
    try {
      body(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (i < first_index) {
        first_index = i;
        first_error = std::current_exception();
      }
    }
  }
  if (first_error) std::rethrow_exception(first_error);
#else
  (void)policy;
  for (index_t i = 0; i < n; ++i) body(i);
#endif
}

/// Threaded loops whose iterations touch fewer bytes than this in total run on the calling
/// thread: starting and joining an OpenMP parallel region costs ~1-3 us on 2 cores, more than
/// the second core saves on small work. Measured with canonical sums over 64 rows of fp32 (g++ 12
/// -O3 -march=native, 2 threads, best of 200 calls, a shared 2-core KVM guest at load ~6, so
/// noisy), par time / seq time:
///   OMP_WAIT_POLICY=active:   64 KiB 1.29, 256 KiB 0.76, 1 MiB 0.58, 4 MiB 0.31
///   OMP_WAIT_POLICY=passive:  64 KiB 3.1,  256 KiB 1.6,  1 MiB 1.18, 4 MiB 0.98
/// so threads pay off from ~128-256 KiB with spinning workers (the OpenMP default) and only at
/// MiBs with passive ones; 256 KiB keeps small calls (a FastV row, one 576-token score vector, a
/// pooled 24 x 24 grid of small features) on one thread and threads every map-sized call.
inline constexpr std::size_t parallel_min_bytes = std::size_t{256} << 10;

/// Whether Policy runs work of about `bytes` on several threads (parallel_for below): for callers
/// that size their buffers or split their work for the threaded path.
template <class Policy>
constexpr bool runs_threaded(const Policy&, std::size_t bytes) noexcept {
  return std::is_same_v<Policy, threaded_policy> && threading_available() && bytes >= parallel_min_bytes;
}

/// parallel_for over work that reads about `bytes` in total: on the calling thread below
/// parallel_min_bytes, else as parallel_for (the same iterations, so the same results).
template <class Body>
void parallel_for(const sequential_policy& policy, index_t n, std::size_t, Body&& body) {
  parallel_for(policy, n, body);
}

template <class Body>
void parallel_for(const threaded_policy& policy, index_t n, std::size_t bytes, Body&& body) {
  if (bytes < parallel_min_bytes) {
    for (index_t i = 0; i < n; ++i) body(i);
    return;
  }
  parallel_for(policy, n, body);
}

/// A pipeline over n chunks whose results must be combined in ascending order (column sums that
/// keep the sequential summation order, so the bits of the sequential pass). produce(c, slot)
/// computes chunk c into the buffer slot `slot` = c % window; consume(c, slot) folds it in.
/// Sequentially: produce(0), consume(0), produce(1), consume(1), ... Threaded: chunks are claimed
/// one at a time in ascending order by whichever thread is free (a descheduled thread holds back
/// one chunk, not a fixed share), and the thread that finishes the chunk next in line consumes it
/// and every finished chunk after it, one consumer at a time, while the others keep producing; a
/// chunk is consumed right after its production, mostly by the thread whose cache holds it. At
/// most `window` chunks are produced but not yet consumed: a producer whose slot is still unread
/// yields until it is. When produce or consume throws, no later chunk starts and the exception of
/// the lowest chunk is rethrown (chunks are claimed in ascending order, so a later claim cannot
/// fail lower).
template <class Produce, class Consume>
void parallel_ordered_chunks(const sequential_policy&, index_t n, index_t window, std::size_t, Produce&& produce,
                             Consume&& consume) {
  for (index_t c = 0; c < n; ++c) {
    produce(c, c % window);
    consume(c, c % window);
  }
}

template <class Produce, class Consume>
void parallel_ordered_chunks(const threaded_policy& policy, index_t n, index_t window, std::size_t bytes,
                             Produce&& produce, Consume&& consume) {
#if defined(_OPENMP)
  const int threads = policy.threads > 0 ? policy.threads : omp_get_max_threads();
  if (n > 1 && threads > 1 && window > 1 && bytes >= parallel_min_bytes && !omp_in_parallel()) {
    // The hand-offs are a few atomics per chunk, no lock. The done flags, `draining` and the
    // re-check after releasing it form a Dekker pair (sequentially consistent): a flag set while
    // another thread drains is either seen by that drainer or makes its setter the next drainer.
    scratch_scope scratch;  // the calling thread's arena: a repeated call allocates nothing
    auto done = scratch.take_zeroed<unsigned char>(static_cast<std::size_t>(n));
    std::atomic<index_t> next_claim{0}, next_consume{0};
    std::atomic<bool> draining{false}, failed{false};
    std::mutex error_mutex;
    std::exception_ptr first_error;
    index_t first_index = n;
    auto record = [&](index_t c) {  // from a catch block
      std::lock_guard<std::mutex> lock(error_mutex);
      failed.store(true);
      if (c < first_index) {
        first_index = c;
        first_error = std::current_exception();
      }
    };
    auto flag = [&](index_t k) { return std::atomic_ref<unsigned char>(done[static_cast<std::size_t>(k)]); };
    auto ready = [&](index_t k) { return k < n && flag(k).load() != 0; };
    auto drain = [&] {
      while (!draining.exchange(true)) {
        index_t k = next_consume.load(std::memory_order_relaxed);
        for (; ready(k) && !failed.load(std::memory_order_relaxed); next_consume.store(++k, std::memory_order_release)) {
          try {
            consume(k, k % window);
          } catch (...) {
            record(k);
            break;
          }
        }
        draining.store(false);
        if (!ready(k) || failed.load()) return;
      }
    };
#pragma omp parallel num_threads(threads)
    for (index_t c; !failed.load(std::memory_order_relaxed) && (c = next_claim.fetch_add(1)) < n;) {
      while (c - next_consume.load(std::memory_order_acquire) >= window && !failed.load()) std::this_thread::yield();
      if (failed.load()) break;
      try {
        produce(c, c % window);
      } catch (...) {
        record(c);
        break;
      }
      flag(c).store(1);
      drain();
    }
    if (first_error) std::rethrow_exception(first_error);
    return;
  }
#else
  (void)policy;
  (void)bytes;
#endif
  parallel_ordered_chunks(sequential_policy{}, n, window, bytes, produce, consume);
}

/// Bytes of count values of T (0 for count <= 0), for the threshold above.
template <class T>
constexpr std::size_t bytes_of(index_t count) noexcept {
  return count <= 0 ? 0 : static_cast<std::size_t>(count) * sizeof(T);
}

}  // namespace detail
TOKENSEL_END_NAMESPACE
