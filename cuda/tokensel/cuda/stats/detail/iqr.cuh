// tokensel CUDA backend internals: numpy's linear-interpolation quartiles of one vector, by one
// thread block, without sorting.
//
// In the ascending sort of x, the value x_i occupies the positions [less_i, leq_i) with
// less_i = #{j : x_j < x_i} and leq_i = #{j : x_j <= x_i}. The value at sorted position p is
// therefore x_i for any i with less_i <= p < leq_i (all such i hold equal values; the lowest i
// is taken). Counting is O(n^2 / threads) with the vector staged through shared memory in tiles,
// exact, and needs no scratch memory; the interpolation and the fence use the CPU's double
// arithmetic (arith.cuh). float comparisons order the values exactly as the CPU's selection over
// their double copies (the widening is exact); -0 and +0 compare equal in both, so both fold a
// -0 order statistic to +0 (v + 0.0) and agree on the sign of a zero quartile too.
#pragma once

#include <climits>

#include "tokensel/cuda/core/abi.cuh"
#include "tokensel/core/config.hpp"
#include "tokensel/cuda/detail/arith.cuh"

TOKENSEL_BEGIN_NAMESPACE
TOKENSEL_CUDA_BEGIN_DETAIL

inline constexpr int iqr_tile = 1024;

struct quartiles {
  double q1 = 0.0, q3 = 0.0;
};

/// Q1 and Q3 of x[0 .. n) (n >= 1), computed by all Block threads of the block together; the
/// result is valid in every thread. Every thread must call it (it synchronises the block).
template <int Block>
__device__ quartiles block_quartiles(const float* x, int n) {
  __shared__ float tile[iqr_tile];
  __shared__ int owner[4];
  __shared__ double result[2];  // plain doubles: __shared__ objects take no initialisers
  const int tid = static_cast<int>(threadIdx.x);
  const quantile_position p1 = quantile_at(n, 0.25), p3 = quantile_at(n, 0.75);
  const int pos[4] = {static_cast<int>(p1.lo), static_cast<int>(p1.lerp ? p1.lo + 1 : p1.lo), static_cast<int>(p3.lo),
                      static_cast<int>(p3.lerp ? p3.lo + 1 : p3.lo)};
  if (tid < 4) owner[tid] = INT_MAX;
  __syncthreads();
  for (int i0 = 0; i0 < n; i0 += Block) {
    const int i = i0 + tid;
    const float xi = i < n ? x[i] : 0.0f;
    int less = 0, leq = 0;
    for (int j0 = 0; j0 < n; j0 += iqr_tile) {
      const int cnt = min(iqr_tile, n - j0);
      for (int t = tid; t < cnt; t += Block) tile[t] = x[j0 + t];
      __syncthreads();
      if (i < n) {
        for (int t = 0; t < cnt; ++t) {
          const float v = tile[t];
          less += v < xi ? 1 : 0;
          leq += v <= xi ? 1 : 0;
        }
      }
      __syncthreads();
    }
    if (i < n) {
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if (less <= pos[k] && pos[k] < leq) atomicMin(&owner[k], i);
      }
    }
  }
  __syncthreads();
  if (tid == 0) {
    // Every position has an owner for finite x; the guard only keeps NaN input (rejected upstream)
    // from reading out of bounds.
    for (int k = 0; k < 4; ++k) owner[k] = owner[k] == INT_MAX ? 0 : owner[k];
    double v[4];
    for (int k = 0; k < 4; ++k) v[k] = static_cast<double>(x[owner[k]]) + 0.0;  // -0 -> +0, as on the CPU
    result[0] = quantile_value(p1, v[0], v[1]);
    result[1] = quantile_value(p3, v[2], v[3]);
  }
  __syncthreads();
  quartiles q;
  q.q1 = result[0];
  q.q3 = result[1];
  return q;
}

TOKENSEL_CUDA_END_DETAIL  // cuda_detail
TOKENSEL_END_NAMESPACE
