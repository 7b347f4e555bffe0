// Deprecated path, kept for the 0.1 release only: include "tokensel/core/token_range.hpp" instead.
#pragma once
#ifndef TOKENSEL_NO_DEPRECATED_HEADER_WARNING
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC warning "tokensel/token_range.hpp is deprecated: include tokensel/core/token_range.hpp"
#elif defined(_MSC_VER)
#pragma message("tokensel/token_range.hpp is deprecated: include tokensel/core/token_range.hpp")
#endif
#endif
#include "tokensel/core/token_range.hpp"
