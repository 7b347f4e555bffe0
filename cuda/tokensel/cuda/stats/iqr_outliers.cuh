// tokensel CUDA backend: adaptive IQR outliers (spec 1.4) of every row of a [batch, n] score view
// on the device: numpy's linear quartiles in double, fence Q3 + c (Q3 - Q1), strict >, optional
// lower fence. Same quartiles, fences, counts and indices as iqr_outliers of the CPU backend
// (tokensel/iqr_outliers.hpp). One block per row (tokensel/cuda/stats/detail/iqr.cuh), one launch.
#pragma once

#include <cstddef>
#include <span>
#include <string>

#include <cub/block/block_scan.cuh>

#include "tokensel/cuda/core/abi.cuh"
#include "tokensel/core/batch.hpp"
#include "tokensel/core/config.hpp"
#include "tokensel/cuda/detail/arith.cuh"
#include "tokensel/cuda/detail/batch.cuh"
#include "tokensel/cuda/stats/detail/iqr.cuh"
#include "tokensel/cuda/detail/launch.cuh"
#include "tokensel/cuda/core/element.cuh"
#include "tokensel/cuda/core/error.cuh"
#include "tokensel/cuda/core/policy.cuh"
#include "tokensel/cuda/core/workspace.cuh"
#include "tokensel/stats/iqr_outliers.hpp"

TOKENSEL_BEGIN_NAMESPACE
TOKENSEL_CUDA_BEGIN_DETAIL

struct iqr_args {
  float* values;
  long long vec;
  device_status* status;
  double multiplier;
  int lower;
  token_index* out;
  long long out_stride;
  token_index* counts;
  iqr_result* results;
};

inline constexpr int iqr_row_block = 256;

template <class D>
__global__ void __launch_bounds__(iqr_row_block) iqr_kernel(const sample_table t, const iqr_args a) {
  const int s = static_cast<int>(blockIdx.x);
  if (s >= t.count) return;
  const window_desc d = t.get(s);
  const int b = t.first + s;
  const int n = d.cols, tid = static_cast<int>(threadIdx.x);
  float* x = a.values + b * a.vec;
  bool bad = false;
  for (int i = tid; i < n; i += iqr_row_block) {
    const float v = load_f32(static_cast<const D*>(d.data) + static_cast<long long>(i) * d.sj);
    x[i] = v;
    if (!finite_f32(v)) {
      record(a.status, status_site::iqr_value, 0, static_cast<unsigned>(b), static_cast<unsigned>(i));
      bad = true;
    }
  }
  const bool any_bad = __syncthreads_or(bad ? 1 : 0) != 0;
  if (any_bad || n == 0) {
    if (tid == 0) {
      a.counts[b] = 0;
      if (a.results != nullptr) a.results[b] = iqr_result{};
    }
    return;
  }
  const quartiles q = block_quartiles<iqr_row_block>(x, n);
  const double upper = upper_fence(q.q1, q.q3, a.multiplier), lower = lower_fence(q.q1, q.q3, a.multiplier);
  using scan_t = cub::BlockScan<int, iqr_row_block>;
  __shared__ typename scan_t::TempStorage scratch;
  int base = 0;
  for (int i0 = 0; i0 < n; i0 += iqr_row_block) {
    const int i = i0 + tid;
    int flag = 0;
    if (i < n) {
      const double v = static_cast<double>(x[i]);
      flag = (v > upper || (a.lower != 0 && v < lower)) ? 1 : 0;
    }
    int pos = 0, total = 0;
    scan_t(scratch).ExclusiveSum(flag, pos, total);
    if (flag != 0) a.out[b * a.out_stride + base + pos] = i;
    base += total;
    __syncthreads();
  }
  if (tid == 0) {
    a.counts[b] = base;
    if (a.results != nullptr) {
      iqr_result& r = a.results[b];
      r.count = base;
      r.q1 = q.q1;
      r.q3 = q.q3;
      r.upper_fence = upper;
      r.lower_fence = lower;
    }
  }
}

inline std::size_t iqr_bytes(index_t batch, index_t n) {
  workspace_plan plan;
  (void)plan.take<float>(count_of({batch, n}));
  return plan.bytes();
}

TOKENSEL_CUDA_END_DETAIL  // cuda_detail

/// Workspace bytes of iqr_outliers(cuda_policy) over x [batch, n].
template <cuda_element T>
[[nodiscard]] std::size_t iqr_workspace_size(const tensor_view<const T, 2>& x) {
  return cuda_detail::iqr_bytes(x.extent(0), x.extent(1));
}

/// For every row b of x [batch, n] (device): the outlier indices, ascending, into
/// out.indices(b, :), their number into counts[b], quartiles and fences into results[b] (device,
/// optional). The count is data-dependent: each row of out needs iqr_max_count(n, cfg) entries
/// (checked here; the CPU checks the actual count instead). NaN/Inf -> count 0, status(policy).
template <cuda_element T>
void iqr_outliers(const cuda_policy& policy, const tensor_view<const T, 2>& x, const iqr_config& cfg,
                  const selection_batch& out, std::span<iqr_result> results = {}) {
  using namespace cuda_detail;
  validate(cfg);
  const index_t B = x.extent(0), n = x.extent(1);
  check_outputs(out, results, B, "iqr");
  detail::check_capacity(static_cast<std::size_t>(out.indices.extent(1)), iqr_max_count(n, cfg), "iqr.out.size()");
  workspace_plan plan(policy);
  float* values = plan.take<float>(count_of({B, n}));
  plan.require("iqr");
  if (B == 0) return;
  cudaStream_t stream = policy.stream;
  reset_status(plan.status(), stream);
  const iqr_args a{values, static_cast<long long>(n), plan.status(), cfg.multiplier, cfg.lower_fence ? 1 : 0,
                   out_rows(out), out_stride(out), out.counts.data(), results.empty() ? nullptr : results.data()};
  score_tables(x).each([&](const sample_table& t) {
    iqr_kernel<device_type_t<T>><<<static_cast<unsigned>(t.count), iqr_row_block, 0, stream>>>(t, a);
    check_launch("iqr_outliers");
  });
}

TOKENSEL_END_NAMESPACE
