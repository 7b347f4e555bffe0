// Deprecated path, kept for the 0.1 release only: include "tokensel/cuda/stats/region_mass.cuh" instead.
#pragma once
#ifndef TOKENSEL_NO_DEPRECATED_HEADER_WARNING
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC warning "tokensel/cuda/region_mass.cuh is deprecated: include tokensel/cuda/stats/region_mass.cuh"
#elif defined(_MSC_VER)
#pragma message("tokensel/cuda/region_mass.cuh is deprecated: include tokensel/cuda/stats/region_mass.cuh")
#endif
#endif
#include "tokensel/cuda/stats/region_mass.cuh"
