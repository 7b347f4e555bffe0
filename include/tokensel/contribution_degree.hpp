// Deprecated path, kept for the 0.1 release only: include "tokensel/stats/contribution_degree.hpp" instead.
#pragma once
#ifndef TOKENSEL_NO_DEPRECATED_HEADER_WARNING
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC warning "tokensel/contribution_degree.hpp is deprecated: include tokensel/stats/contribution_degree.hpp"
#elif defined(_MSC_VER)
#pragma message("tokensel/contribution_degree.hpp is deprecated: include tokensel/stats/contribution_degree.hpp")
#endif
#endif
#include "tokensel/stats/contribution_degree.hpp"
