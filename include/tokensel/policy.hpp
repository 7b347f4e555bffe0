// Deprecated path, kept for the 0.1 release only: include "tokensel/core/policy.hpp" instead.
#pragma once
#ifndef TOKENSEL_NO_DEPRECATED_HEADER_WARNING
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC warning "tokensel/policy.hpp is deprecated: include tokensel/core/policy.hpp"
#elif defined(_MSC_VER)
#pragma message("tokensel/policy.hpp is deprecated: include tokensel/core/policy.hpp")
#endif
#endif
#include "tokensel/core/policy.hpp"
