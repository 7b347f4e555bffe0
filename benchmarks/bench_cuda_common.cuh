// Shared by the CUDA benchmarks: device presence (a case reports an error row instead of
// crashing where there is no GPU) and CUDA error checks.
#pragma once

#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <stdexcept>

namespace tokensel_bench {

/// False (and the case marked skipped with its reason) when no CUDA device is usable.
inline bool device_ok(benchmark::State& state) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    (void)cudaGetLastError();
    state.SkipWithError("no CUDA device: GPU numbers still to be measured");
    return false;
  }
  return true;
}

inline void ok(cudaError_t e) {
  if (e != cudaSuccess) throw std::runtime_error(cudaGetErrorString(e));
}

}  // namespace tokensel_bench
