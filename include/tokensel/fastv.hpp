// Deprecated path, kept for the 0.1 release only: include "tokensel/methods/fastv.hpp" instead.
#pragma once
#ifndef TOKENSEL_NO_DEPRECATED_HEADER_WARNING
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC warning "tokensel/fastv.hpp is deprecated: include tokensel/methods/fastv.hpp"
#elif defined(_MSC_VER)
#pragma message("tokensel/fastv.hpp is deprecated: include tokensel/methods/fastv.hpp")
#endif
#endif
#include "tokensel/methods/fastv.hpp"
