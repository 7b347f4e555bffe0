// tokensel CUDA backend: the architecture part of the ABI tag.
//
// The CUDA headers are templates, instantiated in every translation unit that includes them. Two
// translation units compiled for different GPU architectures (say a plugin built for sm_80 and an
// application built for sm_90) would otherwise instantiate kernels and launchers with identical
// mangled names; the linker keeps one of each, and a launcher can end up launching a kernel its
// own fatbinary never registered ("invalid device function" at best). CUB solves this by putting
// the architecture list into its namespace; tokensel does the same. Everything that launches or
// is a kernel (the `cuda_detail` namespaces) and the `cuda_policy` type, which every public CUDA
// overload takes, live in the inline namespace TOKENSEL_CUDA_ARCH_TAG (for example `sm_900` for
// -arch=sm_90, `sm_800_900` for sm_80 + sm_90), so such a mix gets distinct symbols instead.
#pragma once

#include "tokensel/core/config.hpp"

#if !defined(TOKENSEL_CUDA_ARCH_TAG)
#if defined(__CUDA_ARCH_LIST__)
#define TOKENSEL_DETAIL_PASTE(a, b) a##b
#define TOKENSEL_DETAIL_EXPAND_PASTE(a, b) TOKENSEL_DETAIL_PASTE(a, b)
#define TOKENSEL_DETAIL_ARCH_COUNT(...) TOKENSEL_DETAIL_ARCH_COUNT_(__VA_ARGS__, 8, 7, 6, 5, 4, 3, 2, 1, 0)
#define TOKENSEL_DETAIL_ARCH_COUNT_(a1, a2, a3, a4, a5, a6, a7, a8, n, ...) n
#define TOKENSEL_DETAIL_ARCH_NS_1(a) sm_##a
#define TOKENSEL_DETAIL_ARCH_NS_2(a, b) sm_##a##_##b
#define TOKENSEL_DETAIL_ARCH_NS_3(a, b, c) sm_##a##_##b##_##c
#define TOKENSEL_DETAIL_ARCH_NS_4(a, b, c, d) sm_##a##_##b##_##c##_##d
#define TOKENSEL_DETAIL_ARCH_NS_5(a, b, c, d, e) sm_##a##_##b##_##c##_##d##_##e
#define TOKENSEL_DETAIL_ARCH_NS_6(a, b, c, d, e, f) sm_##a##_##b##_##c##_##d##_##e##_##f
#define TOKENSEL_DETAIL_ARCH_NS_7(a, b, c, d, e, f, g) sm_##a##_##b##_##c##_##d##_##e##_##f##_##g
#define TOKENSEL_DETAIL_ARCH_NS_8(a, b, c, d, e, f, g, h) sm_##a##_##b##_##c##_##d##_##e##_##f##_##g##_##h
#define TOKENSEL_DETAIL_ARCH_NS(...) \
  TOKENSEL_DETAIL_EXPAND_PASTE(TOKENSEL_DETAIL_ARCH_NS_, TOKENSEL_DETAIL_ARCH_COUNT(__VA_ARGS__))(__VA_ARGS__)
#define TOKENSEL_DETAIL_ARCH_NS_OF(list) TOKENSEL_DETAIL_ARCH_NS(list)
/// The inline namespace naming the architectures this translation unit is compiled for.
#define TOKENSEL_CUDA_ARCH_TAG TOKENSEL_DETAIL_ARCH_NS_OF(__CUDA_ARCH_LIST__)
#else
#error "tokensel CUDA backend: __CUDA_ARCH_LIST__ is not defined (nvcc >= 11.5 defines it); define TOKENSEL_CUDA_ARCH_TAG to an identifier naming the target architectures"
#endif
#endif

/// Opens / closes `inline namespace TOKENSEL_CUDA_ARCH_TAG { namespace cuda_detail {`.
#define TOKENSEL_CUDA_BEGIN_DETAIL           \
  inline namespace TOKENSEL_CUDA_ARCH_TAG { \
  namespace cuda_detail {
#define TOKENSEL_CUDA_END_DETAIL \
  }                              \
  }
