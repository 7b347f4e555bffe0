// tokensel CUDA backend internals: the two passes over an attention window that every method
// builds on.
//
// reduce_rows_kernel (one warp per row of the window): M[i, j] = op over heads (ascending heads,
//   fp32; mean = sum / heads), the canonical row sum (lane l accumulates columns l, l+32, ...;
//   then the shuffle-down tree: exactly detail::canonical_sum), the diagonal, and optionally M
//   itself into the workspace. Loads of a warp are 32 consecutive columns of one row (coalesced).
// column_sums_kernel (one warp-wide chain per 32 columns): column sums of M as plain ascending
//   fp32 loops over the rows (the CPU's order), optionally as two chains split at a row (region
//   masses: visual rows, text rows). Eight warps stage 64-row tiles of M in shared memory, double
//   buffered, while warp 0 runs the chains; an epilogue functor turns the chains into the
//   method's per-column outputs in the same launch.
#pragma once

#include <cuda_runtime_api.h>

#include "tokensel/cuda/core/abi.cuh"
#include "tokensel/core/config.hpp"
#include "tokensel/cuda/detail/arith.cuh"
#include "tokensel/cuda/detail/launch.cuh"
#include "tokensel/cuda/core/element.cuh"
#include "tokensel/cuda/core/error.cuh"
#include "tokensel/stats/head_reduction.hpp"

TOKENSEL_BEGIN_NAMESPACE
TOKENSEL_CUDA_BEGIN_DETAIL

inline constexpr unsigned full_mask = 0xFFFFFFFFu;

/// The canonical 32-lane tree on the values v of the 32 lanes: lane 0 returns the sum.
__device__ __forceinline__ float warp_tree_sum(float v) {
#pragma unroll
  for (int w = 16; w >= 1; w /= 2) v = fadd(v, __shfl_down_sync(full_mask, v, w));
  return v;
}

/// Canonical sum (detail::canonical_sum) of x[0 .. n) with element stride `stride`, computed by
/// one full warp; every lane must call it; the result is valid in lane 0.
__device__ __forceinline__ float warp_canonical_sum(const float* x, int n, long long stride) {
  const int lane = static_cast<int>(threadIdx.x & 31u);
  float acc = 0.0f;
  for (int j = lane; j < n; j += 32) acc = fadd(acc, x[static_cast<long long>(j) * stride]);
  return warp_tree_sum(acc);
}

/// op over heads of the element at p (head stride sh): head 0 first, then heads 1, 2, ... in
/// order, as detail::reduce_heads_row. heads >= 1.
template <class T>
__device__ __forceinline__ float reduce_heads_at(const T* p, int heads, long long sh, head_reduction op) {
  float m = load_f32(p);
  int h = 1;
  if (op == head_reduction::max) {
    for (; h + 8 <= heads; h += 8) {
      float v[8];
#pragma unroll
      for (int u = 0; u < 8; ++u) v[u] = load_f32(p + static_cast<long long>(h + u) * sh);
#pragma unroll
      for (int u = 0; u < 8; ++u) m = max_nan(m, v[u]);
    }
    for (; h < heads; ++h) m = max_nan(m, load_f32(p + static_cast<long long>(h) * sh));
    return m;
  }
  for (; h + 8 <= heads; h += 8) {
    float v[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) v[u] = load_f32(p + static_cast<long long>(h + u) * sh);
#pragma unroll
    for (int u = 0; u < 8; ++u) m = fadd(m, v[u]);
  }
  for (; h < heads; ++h) m = fadd(m, load_f32(p + static_cast<long long>(h) * sh));
  if (op == head_reduction::mean) m = fdiv(m, static_cast<float>(heads));
  return m;
}

struct rows_args {
  head_reduction op = head_reduction::mean;
  float* map = nullptr;       ///< M [rows, cols] (leading dimension cols) of sample b at b * map_stride
  long long map_stride = 0;
  long long map_ld = 0, map_cs = 1;  ///< map_ld != 0: M[i, j] at i * map_ld + j * map_cs instead
  float* row_sums = nullptr;  ///< [rows] of sample b at b * vec_stride
  float* diag = nullptr;      ///< [min(rows, cols)] of sample b at b * vec_stride
  long long vec_stride = 0;
  const unsigned char* row_mask = nullptr;  ///< rows with mask 0 are skipped ([rows] at b * vec_stride)
  int* skip = nullptr;                      ///< [batch]: skipped samples; set when the check fails
  device_status* status = nullptr;
  status_site site = status_site::none;     ///< finite check of every M value unless none
  unsigned aux = 0;
};

inline constexpr int rows_warps = 8;

template <class T>
__global__ void __launch_bounds__(rows_warps * 32) reduce_rows_kernel(const sample_table t, const rows_args a) {
  const int s = static_cast<int>(blockIdx.y);
  if (s >= t.count) return;
  const window_desc d = t.get(s);
  const int b = t.first + s;
  const int warp = static_cast<int>(threadIdx.x >> 5), lane = static_cast<int>(threadIdx.x & 31u);
  const int i = static_cast<int>(blockIdx.x) * rows_warps + warp;
  // Every exit below is uniform over the warp (it depends on the row only), so the shuffles of
  // the tree always run with all 32 lanes.
  if (i >= d.rows || d.cols <= 0) return;
  // skip[b] may be set by another warp of this launch (finite check): lane 0's view decides for
  // the whole warp.
  if (__shfl_sync(full_mask, (a.skip != nullptr && a.skip[b] != 0) ? 1 : 0, 0) != 0) return;
  if (a.row_mask != nullptr && a.row_mask[b * a.vec_stride + i] == 0) return;
  const T* row = static_cast<const T*>(d.data) + static_cast<long long>(i) * d.si;
  const long long ld = a.map_ld != 0 ? a.map_ld : d.cols, cs = a.map_ld != 0 ? a.map_cs : 1;
  float* mrow = a.map == nullptr ? nullptr : a.map + b * a.map_stride + static_cast<long long>(i) * ld;
  float acc = 0.0f;
  int bad = -1;
  for (int j = lane; j < d.cols; j += 32) {
    const float m = reduce_heads_at(row + static_cast<long long>(j) * d.sj, d.heads, d.sh, a.op);
    if (mrow != nullptr) mrow[j * cs] = m;
    if (a.diag != nullptr && j == i) a.diag[b * a.vec_stride + i] = m;
    if (bad < 0 && !finite_f32(m)) bad = j;
    acc = fadd(acc, m);
  }
  const float sum = warp_tree_sum(acc);
  if (a.row_sums != nullptr && lane == 0) a.row_sums[b * a.vec_stride + i] = sum;
  if (a.site != status_site::none && bad >= 0) {
    // reduced_map names the position in the sample's map; other sites the window's own indices.
    const bool absolute = a.site == status_site::reduced_map;
    const unsigned row = static_cast<unsigned>(absolute ? i + d.row0 : i);
    const unsigned col = static_cast<unsigned>(absolute ? bad + d.col0 : bad);
    record(a.status, a.site, a.aux, static_cast<unsigned>(b), ((row & 0xFFFFu) << 16) | (col & 0xFFFFu));
    if (a.skip != nullptr) a.skip[b] = 1;
  }
}

/// Enqueues reduce_rows_kernel over every table of the batch.
template <class T, class Tables>
void launch_reduce_rows(const Tables& tables, const rows_args& a, cudaStream_t stream) {
  tables.each([&](const sample_table& t) {
    const int rows = t.max_rows();
    if (rows == 0 || t.count == 0) return;
    const dim3 grid(blocks_for(rows, rows_warps), static_cast<unsigned>(t.count));
    reduce_rows_kernel<T><<<grid, rows_warps * 32, 0, stream>>>(t, a);
    check_launch("reduce_rows");
  });
}

struct cols_args {
  const float* map = nullptr;  ///< M of sample b at b * map_stride, [rows, cols] with leading dimension cols
  long long map_stride = 0;
  const int* skip = nullptr;
};

inline constexpr int cols_tile_rows = 64;
inline constexpr int cols_warps = 8;

/// Epilogue concept (by value, trivially copyable):
///   __device__ int split(const window_desc&) const;   rows [0, split) -> chain a, the rest -> chain b
///   __device__ void operator()(int b, const window_desc&, int j, float a, float b) const;
template <class Epilogue>
__global__ void __launch_bounds__(cols_warps * 32) column_sums_kernel(const sample_table t, const cols_args a,
                                                                      const Epilogue epi) {
  const int s = static_cast<int>(blockIdx.y);
  if (s >= t.count) return;
  const window_desc d = t.get(s);
  const int b = t.first + s;
  const int j0 = static_cast<int>(blockIdx.x) * 32;
  if (j0 >= d.cols) return;
  // skip[b] may change during this launch (epilogues set it): decide once for the whole block.
  if (__syncthreads_or((a.skip != nullptr && a.skip[b] != 0) ? 1 : 0) != 0) return;
  __shared__ float tile[2][cols_tile_rows][33];
  const int warp = static_cast<int>(threadIdx.x >> 5), lane = static_cast<int>(threadIdx.x & 31u);
  const int rows = d.rows, cols = d.cols, j = j0 + lane;
  const int split = epi.split(d);
  const float* m = a.map + b * a.map_stride;
  constexpr int per_thread = cols_tile_rows / cols_warps;
  float v[per_thread];
  auto load = [&](int t0) {
#pragma unroll
    for (int q = 0; q < per_thread; ++q) {
      const int r = t0 + warp + q * cols_warps;
      v[q] = (r < rows && j < cols) ? m[static_cast<long long>(r) * cols + j] : 0.0f;
    }
  };
  auto store = [&](int buf) {
#pragma unroll
    for (int q = 0; q < per_thread; ++q) tile[buf][warp + q * cols_warps][lane] = v[q];
  };
  const int tiles = (rows + cols_tile_rows - 1) / cols_tile_rows;
  float acc_a = 0.0f, acc_b = 0.0f;
  if (tiles > 0) {
    load(0);
    store(0);
  }
  __syncthreads();
  for (int k = 0; k < tiles; ++k) {
    const int buf = k & 1;
    const bool more = k + 1 < tiles;
    if (more) load((k + 1) * cols_tile_rows);  // in flight while warp 0 runs the chains
    if (warp == 0) {
      const int r0 = k * cols_tile_rows;
      const int r1 = min(rows, r0 + cols_tile_rows);
      for (int r = r0; r < r1; ++r) {
        const float x = tile[buf][r - r0][lane];
        if (r < split) {
          acc_a = fadd(acc_a, x);
        } else {
          acc_b = fadd(acc_b, x);
        }
      }
    }
    if (more) store(buf ^ 1);
    __syncthreads();
  }
  if (warp == 0 && j < cols) epi(b, d, j, acc_a, acc_b);
}

template <class Epilogue, class Tables>
void launch_column_sums(const Tables& tables, const cols_args& a, const Epilogue& epi, cudaStream_t stream) {
  tables.each([&](const sample_table& t) {
    const int cols = t.max_cols();
    if (cols == 0 || t.count == 0) return;
    const dim3 grid(blocks_for(cols, 32), static_cast<unsigned>(t.count));
    column_sums_kernel<Epilogue><<<grid, cols_warps * 32, 0, stream>>>(t, a, epi);
    check_launch("column_sums");
  });
}

TOKENSEL_CUDA_END_DETAIL  // cuda_detail
TOKENSEL_END_NAMESPACE
