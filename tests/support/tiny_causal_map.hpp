// Test fixture shared by the LLM-side tests: the tiny causal attention map of
// test_region_mass.cpp (L = 7 tokens, visual span [2, 5), 2 heads), values exact in fp16/bf16.
#pragma once

#include <vector>

namespace tokensel_test {

/// [2, 7, 7] row-major; every row sums to 1 over its visible (causal) keys.
inline std::vector<float> tiny_causal_map() {
  const float h[2][7][7] = {{{1},
                             {.5f, .5f},
                             {.25f, .25f, .5f},
                             {.125f, .125f, .25f, .5f},
                             {.125f, .125f, .25f, .25f, .25f},
                             {.25f, .125f, .125f, .25f, .125f, .125f},
                             {.125f, .125f, .25f, .125f, .0625f, .0625f, .25f}},
                            {{1},
                             {.25f, .75f},
                             {.5f, .25f, .25f},
                             {.25f, .25f, .125f, .375f},
                             {.25f, .125f, .125f, .125f, .375f},
                             {.125f, .125f, .0625f, .5f, .0625f, .125f},
                             {.25f, .125f, .125f, .0625f, .25f, .0625f, .125f}}};
  return std::vector<float>(&h[0][0][0], &h[0][0][0] + 2 * 49);
}

}  // namespace tokensel_test
