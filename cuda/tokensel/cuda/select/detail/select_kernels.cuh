// tokensel CUDA backend internals: selection by rank counting.
//
// The rank of element i under a strict total order ("j beats i": higher key, then lower index)
// is the number of elements that beat it; the top-k set is {i : rank_i < k}, exactly the set the
// CPU's nth_element + sort produce, ties included. Counting is O(n^2) per sample but
// embarrassingly parallel, branch-free and deterministic (integer counts), and for the token
// counts of vision encoders (hundreds to a few thousand per sample) it is a few microseconds
// spread over many blocks. rank_kernel computes the ranks (keys staged through shared memory in
// tiles); compact_kernel writes the selected indices in ascending order (block-wide scan) and
// finishes the sample (count, statistics).
#pragma once

#include <cub/block/block_scan.cuh>

#include <cuda_runtime_api.h>

#include "tokensel/cuda/core/abi.cuh"
#include "tokensel/core/config.hpp"
#include "tokensel/cuda/detail/arith.cuh"
#include "tokensel/cuda/detail/launch.cuh"
#include "tokensel/cuda/core/error.cuh"

TOKENSEL_BEGIN_NAMESPACE
TOKENSEL_CUDA_BEGIN_DETAIL

inline constexpr int rank_block = 128;
inline constexpr int rank_tile = 1024;

/// Ranker concept (by value):
///   using key_type = ...;                                   trivially copyable
///   __device__ bool active(int b, const window_desc&) const;    sample-level switch
///   __host__ __device__ static int size(const window_desc&);    elements n
///   __device__ bool eligible(int b, const window_desc&, int i) const;
///   __device__ key_type key(int b, const window_desc&, int i) const;
///   __device__ static bool beats(const key_type& kj, int j, const key_type& ki, int i);
///   __device__ void write(int b, const window_desc&, int i, int rank) const;   eligible i only
template <class Ranker>
__global__ void __launch_bounds__(rank_block) rank_kernel(const sample_table t, const Ranker r) {
  using key_type = typename Ranker::key_type;
  const int s = static_cast<int>(blockIdx.y);
  if (s >= t.count) return;
  const window_desc d = t.get(s);
  const int b = t.first + s;
  const int n = Ranker::size(d);
  const int i0 = static_cast<int>(blockIdx.x) * rank_block;
  if (i0 >= n) return;
  // active() may read flags that write() of this launch sets: one decision for the whole block.
  if (__syncthreads_or(r.active(b, d) ? 0 : 1) != 0) return;
  __shared__ key_type keys[rank_tile];
  __shared__ unsigned char ok[rank_tile];
  const int i = i0 + static_cast<int>(threadIdx.x);
  const bool mine = i < n && r.eligible(b, d, i);
  key_type ki{};
  if (mine) ki = r.key(b, d, i);
  int rank = 0;
  for (int j0 = 0; j0 < n; j0 += rank_tile) {
    const int cnt = min(rank_tile, n - j0);
    for (int x = static_cast<int>(threadIdx.x); x < cnt; x += rank_block) {
      const bool e = r.eligible(b, d, j0 + x);
      ok[x] = e ? 1 : 0;
      if (e) keys[x] = r.key(b, d, j0 + x);
    }
    __syncthreads();
    if (mine) {
      for (int x = 0; x < cnt; ++x) {
        rank += (ok[x] != 0 && Ranker::beats(keys[x], j0 + x, ki, i)) ? 1 : 0;
      }
    }
    __syncthreads();
  }
  if (mine) r.write(b, d, i, rank);
}

template <class Ranker, class Tables>
void launch_rank(const Tables& tables, const Ranker& r, cudaStream_t stream) {
  tables.each([&](const sample_table& t) {
    int n = 0;
    for (int s = 0; s < (t.uniform != 0 ? 1 : t.count); ++s) n = n > Ranker::size(t.d[s]) ? n : Ranker::size(t.d[s]);
    if (n == 0 || t.count == 0) return;
    const dim3 grid(blocks_for(n, rank_block), static_cast<unsigned>(t.count));
    rank_kernel<Ranker><<<grid, rank_block, 0, stream>>>(t, r);
    check_launch("rank");
  });
}

inline constexpr int compact_block = 256;

/// Compactor concept (by value):
///   __device__ bool active(int b, const window_desc&) const;
///   __device__ void inactive(int b, const window_desc&) const;     thread 0 of a skipped sample
///   __host__ __device__ static int size(const window_desc&);
///   __device__ bool selected(int b, const window_desc&, int i) const;
///   __device__ void emit(int b, const window_desc&, int pos, int i) const;   out[pos] = i, ascending i
///   __device__ void finish(int b, const window_desc&, int count) const;    thread 0, after every emit
template <class Compactor>
__global__ void __launch_bounds__(compact_block) compact_kernel(const sample_table t, const Compactor c) {
  const int s = static_cast<int>(blockIdx.x);
  if (s >= t.count) return;
  const window_desc d = t.get(s);
  const int b = t.first + s;
  if (__syncthreads_or(c.active(b, d) ? 0 : 1) != 0) {  // one decision for the whole block
    if (threadIdx.x == 0) c.inactive(b, d);
    return;
  }
  using scan_t = cub::BlockScan<int, compact_block>;
  __shared__ typename scan_t::TempStorage scratch;
  const int n = Compactor::size(d);
  int base = 0;
  for (int i0 = 0; i0 < n; i0 += compact_block) {
    const int i = i0 + static_cast<int>(threadIdx.x);
    const int flag = (i < n && c.selected(b, d, i)) ? 1 : 0;
    int pos = 0, total = 0;
    scan_t(scratch).ExclusiveSum(flag, pos, total);
    if (flag != 0) c.emit(b, d, base + pos, i);
    base += total;
    __syncthreads();  // scratch is reused by the next tile's scan
  }
  __syncthreads();  // every emit is visible to thread 0 (global writes within the block)
  if (threadIdx.x == 0) c.finish(b, d, base);
}

template <class Compactor, class Tables>
void launch_compact(const Tables& tables, const Compactor& c, cudaStream_t stream) {
  tables.each([&](const sample_table& t) {
    if (t.count == 0) return;
    compact_kernel<Compactor><<<static_cast<unsigned>(t.count), compact_block, 0, stream>>>(t, c);
    check_launch("compact");
  });
}

TOKENSEL_CUDA_END_DETAIL  // cuda_detail
TOKENSEL_END_NAMESPACE
