// Deprecated path, kept for the 0.1 release only: include "tokensel/cuda/stats/map_sums.cuh" instead.
#pragma once
#ifndef TOKENSEL_NO_DEPRECATED_HEADER_WARNING
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC warning "tokensel/cuda/map_sums.cuh is deprecated: include tokensel/cuda/stats/map_sums.cuh"
#elif defined(_MSC_VER)
#pragma message("tokensel/cuda/map_sums.cuh is deprecated: include tokensel/cuda/stats/map_sums.cuh")
#endif
#endif
#include "tokensel/cuda/stats/map_sums.cuh"
