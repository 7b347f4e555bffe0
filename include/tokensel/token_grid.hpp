// Deprecated path, kept for the 0.1 release only: include "tokensel/core/token_grid.hpp" instead.
#pragma once
#ifndef TOKENSEL_NO_DEPRECATED_HEADER_WARNING
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC warning "tokensel/token_grid.hpp is deprecated: include tokensel/core/token_grid.hpp"
#elif defined(_MSC_VER)
#pragma message("tokensel/token_grid.hpp is deprecated: include tokensel/core/token_grid.hpp")
#endif
#endif
#include "tokensel/core/token_grid.hpp"
