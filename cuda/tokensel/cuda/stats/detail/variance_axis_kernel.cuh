// tokensel CUDA backend internals: the device stages of variance-axis significance (spec
// section 3) shared by variance_axis_significance (stats/map_sums.cuh) and FoPru
// (methods/fopru.cuh): the column-sum epilogue and the axis kernel (means, finiteness, both
// variances in double in the CPU's sequential order, the winning vector). The result writer is a
// template parameter, so each caller stores its own result type.
#pragma once

#include "tokensel/cuda/core/abi.cuh"
#include "tokensel/core/config.hpp"
#include "tokensel/cuda/detail/arith.cuh"
#include "tokensel/cuda/detail/launch.cuh"
#include "tokensel/cuda/core/error.cuh"
#include "tokensel/stats/variance_axis.hpp"

TOKENSEL_BEGIN_NAMESPACE
TOKENSEL_CUDA_BEGIN_DETAIL

/// Column-sum epilogue that stores the plain sum.
struct store_column_sum {
  float* out;
  long long stride;
  __device__ int split(const window_desc& d) const { return d.rows; }
  __device__ void operator()(int b, const window_desc&, int j, float a, float) const { out[b * stride + j] = a; }
};

/// Writes sample b's variance-axis statistics into a variance_axis_result (nullptr: none).
struct variance_axis_writer {
  variance_axis_result* out = nullptr;
  __device__ void operator()(int b, bool rows_win, double rv, double cv, int) const {
    if (out == nullptr) return;
    out[b].axis = rows_win ? significance_axis::row_mean : significance_axis::column_mean;
    out[b].row_variance = rv;
    out[b].column_variance = cv;
  }
};

template <class Writer>
struct axis_args {
  float* s1;
  float* s2;
  float* sig;
  long long vec;
  int* skip;
  device_status* status;
  Writer out;
};

inline constexpr int axis_block = 256;

/// One block per sample: means, finiteness, the two variances (one thread each, concurrently in
/// different warps), the winning vector into sig.
template <class Writer>
__global__ void __launch_bounds__(axis_block) variance_axis_kernel(const sample_table t, const axis_args<Writer> a) {
  const int s = static_cast<int>(blockIdx.x);
  if (s >= t.count) return;
  const window_desc d = t.get(s);
  const int b = t.first + s;
  const int n = d.cols;
  const int tid = static_cast<int>(threadIdx.x);
  if (n == 0) {
    if (tid == 0) a.out(b, false, 0.0, 0.0, 0);
    return;
  }
  float* s1 = a.s1 + b * a.vec;
  float* s2 = a.s2 + b * a.vec;
  const float nf = static_cast<float>(n);
  bool bad = false;
  for (int i = tid; i < n; i += axis_block) {
    const float m1 = fdiv(s1[i], nf), m2 = fdiv(s2[i], nf);
    s1[i] = m1;
    s2[i] = m2;
    if (!finite_f32(m1)) {
      record(a.status, status_site::row_mean, 0, static_cast<unsigned>(b), static_cast<unsigned>(i));
      bad = true;
    }
    if (!finite_f32(m2)) {
      record(a.status, status_site::column_mean, 0, static_cast<unsigned>(b), static_cast<unsigned>(i));
      bad = true;
    }
  }
  if (__syncthreads_or(bad ? 1 : 0) != 0) {
    if (tid == 0) a.skip[b] = 1;
    return;
  }
  __shared__ double var[2];
  if (tid == 0) var[0] = sequential_variance(s1, n);
  if (tid == 32) var[1] = sequential_variance(s2, n);
  __syncthreads();
  const bool rows_win = var[0] > var[1];
  const float* chosen = rows_win ? s1 : s2;
  float* sig = a.sig + b * a.vec;
  for (int i = tid; i < n; i += axis_block) sig[i] = chosen[i];
  if (tid == 0) a.out(b, rows_win, var[0], var[1], d.p2);
}

TOKENSEL_CUDA_END_DETAIL  // cuda_detail
TOKENSEL_END_NAMESPACE
