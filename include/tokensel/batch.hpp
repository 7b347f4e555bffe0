// Deprecated path, kept for the 0.1 release only: include "tokensel/core/batch.hpp" instead.
#pragma once
#ifndef TOKENSEL_NO_DEPRECATED_HEADER_WARNING
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC warning "tokensel/batch.hpp is deprecated: include tokensel/core/batch.hpp"
#elif defined(_MSC_VER)
#pragma message("tokensel/batch.hpp is deprecated: include tokensel/core/batch.hpp")
#endif
#endif
#include "tokensel/core/batch.hpp"
