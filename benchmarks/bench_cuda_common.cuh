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

/// Runs fn() once (warm-up: the first launches load the kernels), then once per iteration between
/// two CUDA events on the default stream, reported as the iteration's manual time. Returns the
/// total of the measured seconds.
template <class Fn>
double time_with_events(benchmark::State& state, Fn&& fn) {
  cudaEvent_t start, stop;
  ok(cudaEventCreate(&start));
  ok(cudaEventCreate(&stop));
  fn();
  ok(cudaDeviceSynchronize());
  double total = 0.0;
  for (auto _ : state) {
    ok(cudaEventRecord(start));
    fn();
    ok(cudaEventRecord(stop));
    ok(cudaEventSynchronize(stop));
    float ms = 0.0f;
    ok(cudaEventElapsedTime(&ms, start, stop));
    state.SetIterationTime(ms / 1e3);
    total += ms / 1e3;
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return total;
}

}  // namespace tokensel_bench
