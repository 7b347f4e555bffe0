// tokensel: execution policies of the CPU backend. Every method takes one as its first argument;
// results are identical under every policy and thread count (work is split by data, never by a
// reduction whose order depends on the number of threads).
#pragma once

#include <type_traits>

#include "tokensel/core/config.hpp"

TOKENSEL_BEGIN_NAMESPACE

/// Runs on the calling thread.
struct sequential_policy {};

/// Runs on OpenMP threads when the library is compiled with OpenMP (the CMake target enables it
/// when found); otherwise behaves exactly like sequential_policy.
/// threads <= 0 means "OpenMP's default" (OMP_NUM_THREADS or the number of cores).
struct threaded_policy {
  int threads = 0;
};

inline constexpr sequential_policy seq{};
inline constexpr threaded_policy par{};

template <class P>
concept cpu_policy = std::is_same_v<P, sequential_policy> || std::is_same_v<P, threaded_policy>;

/// Whether threaded_policy really runs in parallel in this translation unit.
constexpr bool threading_available() noexcept {
#if defined(_OPENMP)
  return true;
#else
  return false;
#endif
}

TOKENSEL_END_NAMESPACE
