// Deprecated path, kept for the 0.1 release only: include "tokensel/methods/visionzip.hpp" instead.
#pragma once
#ifndef TOKENSEL_NO_DEPRECATED_HEADER_WARNING
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC warning "tokensel/visionzip.hpp is deprecated: include tokensel/methods/visionzip.hpp"
#elif defined(_MSC_VER)
#pragma message("tokensel/visionzip.hpp is deprecated: include tokensel/methods/visionzip.hpp")
#endif
#endif
#include "tokensel/methods/visionzip.hpp"
