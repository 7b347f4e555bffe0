// Deprecated path, kept for the 0.1 release only: include "tokensel/cuda/methods/visionzip.cuh" instead.
#pragma once
#ifndef TOKENSEL_NO_DEPRECATED_HEADER_WARNING
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC warning "tokensel/cuda/visionzip.cuh is deprecated: include tokensel/cuda/methods/visionzip.cuh"
#elif defined(_MSC_VER)
#pragma message("tokensel/cuda/visionzip.cuh is deprecated: include tokensel/cuda/methods/visionzip.cuh")
#endif
#endif
#include "tokensel/cuda/methods/visionzip.cuh"
