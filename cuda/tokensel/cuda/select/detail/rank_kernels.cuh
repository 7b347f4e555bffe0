// tokensel CUDA backend internals: ranking kernels of the selection layer shared by top_k /
// select_rows (select/top_k.cuh) and the methods: the rank-counting ranker of fp32 keys (the
// CPU's tie rule) and the row-aggregation kernel on a token grid (FoPru's row strategy and
// select_rows).
#pragma once

#include <type_traits>

#include <cub/block/block_scan.cuh>

#include "tokensel/cuda/core/abi.cuh"
#include "tokensel/core/config.hpp"
#include "tokensel/cuda/detail/arith.cuh"
#include "tokensel/cuda/detail/launch.cuh"
#include "tokensel/cuda/core/error.cuh"
#include "tokensel/cuda/stats/detail/map_kernels.cuh"  // warp_canonical_sum
#include "tokensel/select/row_aggregation.hpp"

TOKENSEL_BEGIN_NAMESPACE
TOKENSEL_CUDA_BEGIN_DETAIL

/// Top-k ranks of per-sample fp32 keys over d.cols elements (High: top-k rule; else bottom-k).
template <bool High>
struct score_ranker {
  using key_type = float;
  const float* keys;
  long long stride;
  int* rank;
  const int* skip;
  __device__ bool active(int b, const window_desc&) const { return skip == nullptr || skip[b] == 0; }
  __host__ __device__ static int size(const window_desc& d) { return d.cols; }
  __device__ bool eligible(int, const window_desc&, int) const { return true; }
  __device__ float key(int b, const window_desc&, int i) const { return keys[b * stride + i]; }
  __device__ static bool beats(float kj, int j, float ki, int i) {
    return High ? beats_high(kj, j, ki, i) : beats_low(kj, j, ki, i);
  }
  __device__ void write(int b, const window_desc&, int i, int r) const { rank[b * stride + i] = r; }
};

/// Arguments of grid_rows_kernel. Result: a per-sample result with a `count` member, or void.
template <class Result>
struct row_strategy_args {
  const float* sig;
  float* rowscore;
  int* rank;
  long long vec;
  int* skip;
  device_status* status;
  token_index* out;
  long long out_stride;
  token_index* counts;
  Result* results;
  row_reduction op;
};

inline constexpr int rows_block = 256;

/// Row strategy for one sample per block: row scores (canonical sums of Sig over a grid row, one
/// warp per row), top rows_kept rows by rank counting, their tokens in ascending order.
template <class Result>
__global__ void __launch_bounds__(rows_block) grid_rows_kernel(const sample_table t, const row_strategy_args<Result> a) {
  const int s = static_cast<int>(blockIdx.x);
  if (s >= t.count) return;
  const window_desc d = t.get(s);
  const int b = t.first + s;
  const int tid = static_cast<int>(threadIdx.x), warp = tid >> 5, lane = tid & 31;
  auto finish = [&](int count) {
    a.counts[b] = count;
    if constexpr (!std::is_void_v<Result>) {
      if (a.results != nullptr) a.results[b].count = count;
    }
  };
  const int n = d.cols;
  if (__syncthreads_or((a.skip[b] != 0 || n == 0) ? 1 : 0) != 0) {
    if (tid == 0) finish(0);
    return;
  }
  const int C = d.p1, R = n / C, kept = d.p2;
  const float* sig = a.sig + b * a.vec;
  float* score = a.rowscore + b * a.vec;
  int* rank = a.rank + b * a.vec;
  bool bad = false;
  for (int r = warp; r < R; r += rows_block / 32) {
    float v = warp_canonical_sum(sig + static_cast<long long>(r) * C, C, 1);
    if (a.op == row_reduction::mean) v = fdiv(v, static_cast<float>(C));
    if (lane == 0) {
      score[r] = v;
      if (!finite_f32(v)) {
        record(a.status, status_site::scores, 0, static_cast<unsigned>(b), static_cast<unsigned>(r));
        bad = true;
      }
    }
  }
  if (__syncthreads_or(bad ? 1 : 0) != 0) {
    if (tid == 0) {
      a.skip[b] = 1;
      finish(0);
    }
    return;
  }
  for (int r = tid; r < R; r += rows_block) {
    const float kr = score[r];
    int rk = 0;
    for (int q = 0; q < R; ++q) rk += beats_high(score[q], q, kr, r) ? 1 : 0;
    rank[r] = rk;
  }
  __syncthreads();
  using scan_t = cub::BlockScan<int, rows_block>;
  __shared__ typename scan_t::TempStorage scratch;
  token_index* out = a.out + b * a.out_stride;
  int base = 0;
  for (int r0 = 0; r0 < R; r0 += rows_block) {
    const int r = r0 + tid;
    const int flag = (r < R && rank[r] < kept) ? 1 : 0;
    int slot = 0, total = 0;
    scan_t(scratch).ExclusiveSum(flag, slot, total);
    if (flag != 0) {
      for (int c = 0; c < C; ++c) out[static_cast<long long>(base + slot) * C + c] = r * C + c;
    }
    base += total;
    __syncthreads();
  }
  if (tid == 0) finish(base * C);
}

TOKENSEL_CUDA_END_DETAIL  // cuda_detail
TOKENSEL_END_NAMESPACE
