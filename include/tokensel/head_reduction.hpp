// Deprecated path, kept for the 0.1 release only: include "tokensel/stats/head_reduction.hpp" instead.
#pragma once
#ifndef TOKENSEL_NO_DEPRECATED_HEADER_WARNING
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC warning "tokensel/head_reduction.hpp is deprecated: include tokensel/stats/head_reduction.hpp"
#elif defined(_MSC_VER)
#pragma message("tokensel/head_reduction.hpp is deprecated: include tokensel/stats/head_reduction.hpp")
#endif
#endif
#include "tokensel/stats/head_reduction.hpp"
