// Deprecated path, kept for the 0.1 release only: include "tokensel/cuda/select/top_k.cuh" instead.
#pragma once
#ifndef TOKENSEL_NO_DEPRECATED_HEADER_WARNING
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC warning "tokensel/cuda/top_k.cuh is deprecated: include tokensel/cuda/select/top_k.cuh"
#elif defined(_MSC_VER)
#pragma message("tokensel/cuda/top_k.cuh is deprecated: include tokensel/cuda/select/top_k.cuh")
#endif
#endif
#include "tokensel/cuda/select/top_k.cuh"
