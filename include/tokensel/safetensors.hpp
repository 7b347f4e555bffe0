// Deprecated path, kept for the 0.1 release only: include "tokensel/io/safetensors.hpp" instead.
#pragma once
#ifndef TOKENSEL_NO_DEPRECATED_HEADER_WARNING
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC warning "tokensel/safetensors.hpp is deprecated: include tokensel/io/safetensors.hpp"
#elif defined(_MSC_VER)
#pragma message("tokensel/safetensors.hpp is deprecated: include tokensel/io/safetensors.hpp")
#endif
#endif
#include "tokensel/io/safetensors.hpp"
