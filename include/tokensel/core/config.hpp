// tokensel: version, namespace and basic types shared by every header.
#pragma once

#include <cstddef>
#include <cstdint>

#define TOKENSEL_VERSION_MAJOR 0
#define TOKENSEL_VERSION_MINOR 1
#define TOKENSEL_VERSION_PATCH 0

// A versioned inline namespace (as nlohmann/json and CUB do): two copies of the library built
// with different versions, or with different floating-point contracts, cannot silently mix in
// one program (their symbols differ, so a mix fails to link instead of giving other bits).
// TOKENSEL_STRICT_FP is defined to 1 by the CMake target when it compiles consumers with
// -ffp-contract=off (option TOKENSEL_STRICT_FP, the default), the setting under which CPU and
// CUDA results are bit-identical.
#if defined(TOKENSEL_STRICT_FP) && TOKENSEL_STRICT_FP
#define TOKENSEL_ABI_TAG v0_1_strict_fp
#else
#define TOKENSEL_ABI_TAG v0_1_contract_fp
#endif
#define TOKENSEL_BEGIN_NAMESPACE \
  namespace tokensel {           \
  inline namespace TOKENSEL_ABI_TAG {
#define TOKENSEL_END_NAMESPACE \
  }                            \
  }

// Unrolling hint for the CPU's register-blocked loops (GCC and Clang spell it `GCC unroll`).
// nvcc's front end does not know that pragma and warns on every header that uses it, so CUDA
// translation units drop the hint (it never changes results, only code layout).
#define TOKENSEL_DETAIL_PRAGMA(x) _Pragma(#x)
#if defined(__CUDACC__)
#define TOKENSEL_UNROLL(n)
#else
#define TOKENSEL_UNROLL(n) TOKENSEL_DETAIL_PRAGMA(GCC unroll n)
#endif

TOKENSEL_BEGIN_NAMESPACE

/// Signed extent / stride / position type of every view (signed so that strides may be negative
/// and differences never wrap).
using index_t = std::ptrdiff_t;

/// Token indices in every output are int32 (the spec's convention; also the CUDA backend's).
using token_index = std::int32_t;

TOKENSEL_END_NAMESPACE
