// Deprecated path, kept for the 0.1 release only: include "tokensel/core/qk_source.hpp" instead.
#pragma once
#ifndef TOKENSEL_NO_DEPRECATED_HEADER_WARNING
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC warning "tokensel/qk_source.hpp is deprecated: include tokensel/core/qk_source.hpp"
#elif defined(_MSC_VER)
#pragma message("tokensel/qk_source.hpp is deprecated: include tokensel/core/qk_source.hpp")
#endif
#endif
#include "tokensel/core/qk_source.hpp"
