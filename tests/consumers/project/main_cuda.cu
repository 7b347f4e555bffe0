// CUDA consumer: checks that tokensel::cuda's include paths and flags reach a .cu file and that
// the CPU and CUDA headers compile together under nvcc. Needs no GPU to build or run.
#include <tokensel/cuda/core/error.cuh>
#include <tokensel/methods/fopru.hpp>

#include <cstdio>

int main() {
  const tokensel::fopru::config cfg{.ratio = 0.5};
  const auto k = tokensel::fopru::keep_count(576, cfg);
  std::printf("cuda consumer ok: keep_count(576) = %ld\n", static_cast<long>(k));
  return k == 288 ? 0 : 1;
}
