// tokensel CUDA backend internals: the device building blocks of the feature-similarity methods
// (DivPrune, DART, VisPruner; cuda/tokensel/cuda/methods/{divprune,dart,vispruner}.cuh).
//
// unit_row_warp: one warp turns a feature row into its unit row exactly as the CPU's
//   detail::unit_feature_rows does (optional channel weight, canonical self-dot: lane l takes
//   channels l, l + 32, ... ascending, then the shuffle-down tree; IEEE sqrt; one division per
//   element; zero rows stay zero), reporting the first non-finite value or an overflowing norm.
// warp_dot: the canonical dot of two unit rows (detail::canonical_dot's order).
// block_compact / rank counting: order-preserving selection inside one block (no float atomics:
//   every comparison is the shared tie rule of detail/arith.hpp).
#pragma once

#include <climits>

#include <cub/block/block_scan.cuh>

#include "tokensel/core/config.hpp"
#include "tokensel/cuda/core/abi.cuh"
#include "tokensel/cuda/core/element.cuh"
#include "tokensel/cuda/core/error.cuh"
#include "tokensel/cuda/detail/arith.cuh"
#include "tokensel/cuda/stats/detail/map_kernels.cuh"
#include "tokensel/methods/detail/feature_rules.hpp"

TOKENSEL_BEGIN_NAMESPACE
TOKENSEL_CUDA_BEGIN_DETAIL

/// Which input a feature_value / feature_norm status names (decode_feature_site), in the order
/// the CPU reads them within a sample.
enum class feature_input : unsigned {
  dart_norm_weight = 0,
  dart_keys = 1,
  dart_hidden = 2,
  divprune_features = 3,
  vispruner_attention = 4,
  vispruner_features = 5,
};

/// Canonical dot of a and b (length d) by one full warp; every lane gets the result.
__device__ __forceinline__ float warp_dot(const float* a, const float* b, int d) {
  const int lane = static_cast<int>(threadIdx.x & 31u);
  float acc = 0.0f;
  for (int c = lane; c < d; c += 32) acc = fadd(acc, fmul(a[c], b[c]));
  return __shfl_sync(full_mask, warp_tree_sum(acc), 0);
}

/// One warp: u[0, d) = the unit row of x (channel stride sx), scaled by w (stride sw) when w is
/// not null. Returns false (after recording the problem for row `row` of `sample`) when a value
/// is not finite or the norm overflows; every lane gets the same answer.
template <class X, class W>
__device__ bool unit_row_warp(const X* x, long long sx, const W* w, long long sw, int d, float* u, device_status* status,
                              feature_input which, unsigned sample, unsigned row) {
  const int lane = static_cast<int>(threadIdx.x & 31u);
  float acc = 0.0f;
  int bad = INT_MAX;
  for (int c = lane; c < d; c += 32) {
    const float v = load_f32(x + c * sx);
    if (bad == INT_MAX && !finite_f32(v)) bad = c;
    const float e = detail::weighted_feature(v, w != nullptr ? load_f32(w + c * sw) : 1.0f, w != nullptr);
    u[c] = e;
    acc = fadd(acc, fmul(e, e));
  }
  bad = __reduce_min_sync(full_mask, bad);
  const float dot = __shfl_sync(full_mask, warp_tree_sum(acc), 0);
  if (bad != INT_MAX) {
    if (lane == 0) {
      record(status, status_site::feature_value, static_cast<unsigned>(which), sample,
             ((row & 0xFFFFu) << 16) | (static_cast<unsigned>(bad) & 0xFFFFu));
    }
    return false;
  }
  const float norm = detail::row_norm(dot);
  const detail::norm_kind kind = detail::classify_norm(norm);
  if (kind == detail::norm_kind::overflow) {
    if (lane == 0) record(status, status_site::feature_norm, static_cast<unsigned>(which), sample, row);
    return false;
  }
  for (int c = lane; c < d; c += 32) u[c] = kind == detail::norm_kind::scale ? fdiv(u[c], norm) : 0.0f;
  return true;
}

/// Position of key j among key[0, n) by the top-k rule (High) or the bottom-k rule: the number of
/// entries that rank before it.
template <bool High>
__device__ __forceinline__ int rank_among(const float* key, int n, int j) {
  const float kj = key[j];
  int r = 0;
  for (int q = 0; q < n; ++q) r += (High ? beats_high(key[q], q, kj, j) : beats_low(key[q], q, kj, j)) ? 1 : 0;
  return r;
}

/// Every thread of a Block-thread block: for j in [0, n) ascending, write(j, p) for the p-th j
/// (0-based) with flag(j); returns how many. Ends with the block synchronised.
template <int Block, class Flag, class Write>
__device__ int block_compact(int n, Flag flag, Write write) {
  using scan_t = cub::BlockScan<int, Block>;
  __shared__ typename scan_t::TempStorage scratch;
  const int tid = static_cast<int>(threadIdx.x);
  int base = 0;
  for (int j0 = 0; j0 < n; j0 += Block) {
    const int j = j0 + tid;
    const int f = (j < n && flag(j)) ? 1 : 0;
    int pos = 0, total = 0;
    scan_t(scratch).ExclusiveSum(f, pos, total);
    if (f != 0) write(j, base + pos);
    base += total;
    __syncthreads();
  }
  return base;
}

/// Every thread of the block: dst[0, k) = the k distinct values src[0, k) ascending (rank
/// counting). Ends with the block synchronised.
template <class T>
__device__ void block_sort_distinct(const int* src, int k, T* dst) {
  for (int i = static_cast<int>(threadIdx.x); i < k; i += static_cast<int>(blockDim.x)) {
    const int v = src[i];
    int r = 0;
    for (int q = 0; q < k; ++q) r += src[q] < v ? 1 : 0;
    dst[r] = static_cast<T>(v);
  }
  __syncthreads();
}

TOKENSEL_CUDA_END_DETAIL
TOKENSEL_END_NAMESPACE
