// Deprecated path, kept for the 0.1 release only: include "tokensel/io/host_tensor.hpp" instead.
#pragma once
#ifndef TOKENSEL_NO_DEPRECATED_HEADER_WARNING
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC warning "tokensel/host_tensor.hpp is deprecated: include tokensel/io/host_tensor.hpp"
#elif defined(_MSC_VER)
#pragma message("tokensel/host_tensor.hpp is deprecated: include tokensel/io/host_tensor.hpp")
#endif
#endif
#include "tokensel/io/host_tensor.hpp"
