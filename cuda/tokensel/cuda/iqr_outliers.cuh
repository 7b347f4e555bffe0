// Deprecated path, kept for the 0.1 release only: include "tokensel/cuda/stats/iqr_outliers.cuh" instead.
#pragma once
#ifndef TOKENSEL_NO_DEPRECATED_HEADER_WARNING
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC warning "tokensel/cuda/iqr_outliers.cuh is deprecated: include tokensel/cuda/stats/iqr_outliers.cuh"
#elif defined(_MSC_VER)
#pragma message("tokensel/cuda/iqr_outliers.cuh is deprecated: include tokensel/cuda/stats/iqr_outliers.cuh")
#endif
#endif
#include "tokensel/cuda/stats/iqr_outliers.cuh"
