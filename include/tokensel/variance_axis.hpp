// Deprecated path, kept for the 0.1 release only: include "tokensel/stats/variance_axis.hpp" instead.
#pragma once
#ifndef TOKENSEL_NO_DEPRECATED_HEADER_WARNING
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC warning "tokensel/variance_axis.hpp is deprecated: include tokensel/stats/variance_axis.hpp"
#elif defined(_MSC_VER)
#pragma message("tokensel/variance_axis.hpp is deprecated: include tokensel/stats/variance_axis.hpp")
#endif
#endif
#include "tokensel/stats/variance_axis.hpp"
