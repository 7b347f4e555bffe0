// Deprecated path, kept for the 0.1 release only: include "tokensel/select/gather.hpp" instead.
#pragma once
#ifndef TOKENSEL_NO_DEPRECATED_HEADER_WARNING
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC warning "tokensel/gather.hpp is deprecated: include tokensel/select/gather.hpp"
#elif defined(_MSC_VER)
#pragma message("tokensel/gather.hpp is deprecated: include tokensel/select/gather.hpp")
#endif
#endif
#include "tokensel/select/gather.hpp"
