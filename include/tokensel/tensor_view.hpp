// Deprecated path, kept for the 0.1 release only: include "tokensel/core/tensor_view.hpp" instead.
#pragma once
#ifndef TOKENSEL_NO_DEPRECATED_HEADER_WARNING
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC warning "tokensel/tensor_view.hpp is deprecated: include tokensel/core/tensor_view.hpp"
#elif defined(_MSC_VER)
#pragma message("tokensel/tensor_view.hpp is deprecated: include tokensel/core/tensor_view.hpp")
#endif
#endif
#include "tokensel/core/tensor_view.hpp"
