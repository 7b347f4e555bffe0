// Deprecated path, kept for the 0.1 release only: include "tokensel/stats/qk_statistics.hpp" instead.
#pragma once
#ifndef TOKENSEL_NO_DEPRECATED_HEADER_WARNING
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC warning "tokensel/qk_statistics.hpp is deprecated: include tokensel/stats/qk_statistics.hpp"
#elif defined(_MSC_VER)
#pragma message("tokensel/qk_statistics.hpp is deprecated: include tokensel/stats/qk_statistics.hpp")
#endif
#endif
#include "tokensel/stats/qk_statistics.hpp"
