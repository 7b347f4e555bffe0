// tokensel internals: the data-parallel loop behind threaded_policy.
#pragma once

#include <cstddef>
#include <exception>
#include <mutex>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "tokensel/core/config.hpp"
#include "tokensel/core/policy.hpp"

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

/// Bytes of count values of T (0 for count <= 0), for the threshold above.
template <class T>
constexpr std::size_t bytes_of(index_t count) noexcept {
  return count <= 0 ? 0 : static_cast<std::size_t>(count) * sizeof(T);
}

}  // namespace detail
TOKENSEL_END_NAMESPACE
