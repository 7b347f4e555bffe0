// Deprecated path, kept for the 0.1 release only: include "tokensel/stats/region_mass.hpp" instead.
#pragma once
#ifndef TOKENSEL_NO_DEPRECATED_HEADER_WARNING
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC warning "tokensel/region_mass.hpp is deprecated: include tokensel/stats/region_mass.hpp"
#elif defined(_MSC_VER)
#pragma message("tokensel/region_mass.hpp is deprecated: include tokensel/stats/region_mass.hpp")
#endif
#endif
#include "tokensel/stats/region_mass.hpp"
