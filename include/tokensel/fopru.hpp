// Deprecated path, kept for the 0.1 release only: include "tokensel/methods/fopru.hpp" instead.
#pragma once
#ifndef TOKENSEL_NO_DEPRECATED_HEADER_WARNING
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC warning "tokensel/fopru.hpp is deprecated: include tokensel/methods/fopru.hpp"
#elif defined(_MSC_VER)
#pragma message("tokensel/fopru.hpp is deprecated: include tokensel/methods/fopru.hpp")
#endif
#endif
#include "tokensel/methods/fopru.hpp"
