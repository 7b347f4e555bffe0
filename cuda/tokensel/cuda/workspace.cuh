// Deprecated path, kept for the 0.1 release only: include "tokensel/cuda/core/workspace.cuh" instead.
#pragma once
#ifndef TOKENSEL_NO_DEPRECATED_HEADER_WARNING
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC warning "tokensel/cuda/workspace.cuh is deprecated: include tokensel/cuda/core/workspace.cuh"
#elif defined(_MSC_VER)
#pragma message("tokensel/cuda/workspace.cuh is deprecated: include tokensel/cuda/core/workspace.cuh")
#endif
#endif
#include "tokensel/cuda/core/workspace.cuh"
