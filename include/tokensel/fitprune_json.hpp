// Deprecated path, kept for the 0.1 release only: include "tokensel/io/fitprune_json.hpp" instead.
#pragma once
#ifndef TOKENSEL_NO_DEPRECATED_HEADER_WARNING
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC warning "tokensel/fitprune_json.hpp is deprecated: include tokensel/io/fitprune_json.hpp"
#elif defined(_MSC_VER)
#pragma message("tokensel/fitprune_json.hpp is deprecated: include tokensel/io/fitprune_json.hpp")
#endif
#endif
#include "tokensel/io/fitprune_json.hpp"
