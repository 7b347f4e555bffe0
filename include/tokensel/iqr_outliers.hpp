// Deprecated path, kept for the 0.1 release only: include "tokensel/stats/iqr_outliers.hpp" instead.
#pragma once
#ifndef TOKENSEL_NO_DEPRECATED_HEADER_WARNING
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC warning "tokensel/iqr_outliers.hpp is deprecated: include tokensel/stats/iqr_outliers.hpp"
#elif defined(_MSC_VER)
#pragma message("tokensel/iqr_outliers.hpp is deprecated: include tokensel/stats/iqr_outliers.hpp")
#endif
#endif
#include "tokensel/stats/iqr_outliers.hpp"
