// CUDA consumer of the Conan package (with_cuda): the CUDA headers and flags reach a .cu file.
#include <tokensel/cuda/core/error.cuh>
#include <tokensel/methods/fopru.hpp>

#include <cstdio>

int main() {
  const auto k = tokensel::fopru::keep_count(576, tokensel::fopru::config{.ratio = 0.25});
  std::printf("tokensel test_package (cuda): keep_count = %ld\n", static_cast<long>(k));
  return k == 144 ? 0 : 1;
}
