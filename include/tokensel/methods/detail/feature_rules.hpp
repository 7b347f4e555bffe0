// tokensel internals: the per-element rules of the feature-similarity methods (DivPrune, DART,
// VisPruner), written once for the CPU headers and the CUDA kernels (cuda/.../methods/*.cuh).
//
// Both backends must select the same tokens, so every formula whose result feeds a comparison
// lives here as a host/device function: the channel weighting of a feature value, the unit-row
// norm and its three outcomes, the cosine distance, DivPrune's "farther" rule, DART's quota per
// pivot and VisPruner's round sizes. The dots themselves are the canonical fp32 dots (lane
// l accumulates the products of channels c = l mod 32 ascending, then the warp tree): on the CPU
// detail::canonical_dot, on the device a warp's lanes and its shuffle-down tree.
#pragma once

#include <cmath>

#include "tokensel/core/config.hpp"
#include "tokensel/detail/arith.hpp"

TOKENSEL_BEGIN_NAMESPACE
namespace detail {

/// A feature value as the cosine reads it: scaled by the channel weight when there is one.
TOKENSEL_PORTABLE_HD float weighted_feature(float v, float w, bool weighted) { return weighted ? fmul(v, w) : v; }

/// The norm of a row from its canonical self-dot (IEEE sqrt, correctly rounded on both sides).
TOKENSEL_PORTABLE_HD float row_norm(float self_dot) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(self_dot);
#else
  return std::sqrt(self_dot);
#endif
}

/// What a row's norm means: divide by it, a zero row (stays zero: cosine 0 with every row), or
/// an fp32 overflow (an error naming the row).
enum class norm_kind { scale, zero, overflow };
TOKENSEL_PORTABLE_HD norm_kind classify_norm(float norm) {
  if (norm > 0.0f && finite_f32(norm)) return norm_kind::scale;
  return norm > 0.0f ? norm_kind::overflow : norm_kind::zero;
}

/// Cosine distance d = 1 - cos, rounded once.
TOKENSEL_PORTABLE_HD float cosine_distance(float cosine) { return fsub(1.0f, cosine); }

/// DivPrune: token j is a better pick than token i (larger score, ties to the lower index; the
/// taken tokens hold -inf and never win against a live one).
TOKENSEL_PORTABLE_HD bool divprune_farther(float sj, long long j, float si, long long i) { return beats_high(sj, j, si, i); }

/// DART: the non-pivot tokens pivot q (processing order) takes: extra / pivots, plus one for the
/// first extra % pivots pivots.
TOKENSEL_PORTABLE_HD long long dart_quota(long long q, long long extra, long long pivots) {
  return extra / pivots + (q < extra % pivots ? 1 : 0);
}

/// VisPruner: tokens one duplicate-removal round drops from a list of `size` (size > target):
/// min(rounds_drop, size - target), at most the ceil(size / 2) even-position tokens.
TOKENSEL_PORTABLE_HD long long vispruner_dropped(long long size, long long target, long long rounds_drop) {
  const long long drop = rounds_drop < size - target ? rounds_drop : size - target;
  const long long na = (size + 1) / 2;
  return drop < na ? drop : na;
}

}  // namespace detail
TOKENSEL_END_NAMESPACE
