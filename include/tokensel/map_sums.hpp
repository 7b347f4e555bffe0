// Deprecated path, kept for the 0.1 release only: include "tokensel/stats/map_sums.hpp" instead.
#pragma once
#ifndef TOKENSEL_NO_DEPRECATED_HEADER_WARNING
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC warning "tokensel/map_sums.hpp is deprecated: include tokensel/stats/map_sums.hpp"
#elif defined(_MSC_VER)
#pragma message("tokensel/map_sums.hpp is deprecated: include tokensel/stats/map_sums.hpp")
#endif
#endif
#include "tokensel/stats/map_sums.hpp"
