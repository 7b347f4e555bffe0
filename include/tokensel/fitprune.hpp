// Deprecated path, kept for the 0.1 release only: include "tokensel/methods/fitprune.hpp" instead.
#pragma once
#ifndef TOKENSEL_NO_DEPRECATED_HEADER_WARNING
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC warning "tokensel/fitprune.hpp is deprecated: include tokensel/methods/fitprune.hpp"
#elif defined(_MSC_VER)
#pragma message("tokensel/fitprune.hpp is deprecated: include tokensel/methods/fitprune.hpp")
#endif
#endif
#include "tokensel/methods/fitprune.hpp"
