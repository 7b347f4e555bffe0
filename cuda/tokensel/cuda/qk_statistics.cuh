// Deprecated path, kept for the 0.1 release only: include "tokensel/cuda/stats/qk_statistics.cuh" instead.
#pragma once
#ifndef TOKENSEL_NO_DEPRECATED_HEADER_WARNING
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC warning "tokensel/cuda/qk_statistics.cuh is deprecated: include tokensel/cuda/stats/qk_statistics.cuh"
#elif defined(_MSC_VER)
#pragma message("tokensel/cuda/qk_statistics.cuh is deprecated: include tokensel/cuda/stats/qk_statistics.cuh")
#endif
#endif
#include "tokensel/cuda/stats/qk_statistics.cuh"
