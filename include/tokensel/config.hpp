// Deprecated path, kept for the 0.1 release only: include "tokensel/core/config.hpp" instead.
#pragma once
#ifndef TOKENSEL_NO_DEPRECATED_HEADER_WARNING
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC warning "tokensel/config.hpp is deprecated: include tokensel/core/config.hpp"
#elif defined(_MSC_VER)
#pragma message("tokensel/config.hpp is deprecated: include tokensel/core/config.hpp")
#endif
#endif
#include "tokensel/core/config.hpp"
