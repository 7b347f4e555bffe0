// Deprecated path, kept for the 0.1 release only: include "tokensel/select/row_aggregation.hpp" instead.
#pragma once
#ifndef TOKENSEL_NO_DEPRECATED_HEADER_WARNING
#if defined(__GNUC__) || defined(__clang__)
#pragma GCC warning "tokensel/row_aggregation.hpp is deprecated: include tokensel/select/row_aggregation.hpp"
#elif defined(_MSC_VER)
#pragma message("tokensel/row_aggregation.hpp is deprecated: include tokensel/select/row_aggregation.hpp")
#endif
#endif
#include "tokensel/select/row_aggregation.hpp"
