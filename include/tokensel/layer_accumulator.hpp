// Deprecated path, kept for the 0.1 release only: include "tokensel/stats/layer_accumulator.hpp" instead.
#pragma once
#ifndef TOKENSEL_NO_DEPRECATED_HEADER_WARNING
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC warning "tokensel/layer_accumulator.hpp is deprecated: include tokensel/stats/layer_accumulator.hpp"
#elif defined(_MSC_VER)
#pragma message("tokensel/layer_accumulator.hpp is deprecated: include tokensel/stats/layer_accumulator.hpp")
#endif
#endif
#include "tokensel/stats/layer_accumulator.hpp"
