// Deprecated path, kept for the 0.1 release only: include "tokensel/select/top_k.hpp" instead.
#pragma once
#ifndef TOKENSEL_NO_DEPRECATED_HEADER_WARNING
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC warning "tokensel/top_k.hpp is deprecated: include tokensel/select/top_k.hpp"
#elif defined(_MSC_VER)
#pragma message("tokensel/top_k.hpp is deprecated: include tokensel/select/top_k.hpp")
#endif
#endif
#include "tokensel/select/top_k.hpp"
