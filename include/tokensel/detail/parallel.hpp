// tokensel internals: the data-parallel loop behind threaded_policy.
#pragma once

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

}  // namespace detail
TOKENSEL_END_NAMESPACE
