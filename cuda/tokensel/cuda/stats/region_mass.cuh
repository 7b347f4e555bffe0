// tokensel CUDA backend: region masses of one LLM layer's attention around the visual span
// (tokensel/region_mass.hpp) on the device: cross[j], self[j], Wc, Ws. Same bits as the CPU:
// column chains ascending over the visual rows and the text rows; row totals in canonical order;
// masses = canonical sum of the totals / count.
#pragma once

#include <cstddef>
#include <span>
#include <string>

#include "tokensel/cuda/core/abi.cuh"
#include "tokensel/core/config.hpp"
#include "tokensel/cuda/detail/arith.cuh"
#include "tokensel/cuda/detail/launch.cuh"
#include "tokensel/cuda/stats/detail/map_kernels.cuh"
#include "tokensel/cuda/core/element.cuh"
#include "tokensel/cuda/core/error.cuh"
#include "tokensel/cuda/stats/map_sums.cuh"
#include "tokensel/cuda/core/policy.cuh"
#include "tokensel/cuda/core/workspace.cuh"
#include "tokensel/stats/region_mass.hpp"

TOKENSEL_BEGIN_NAMESPACE
TOKENSEL_CUDA_BEGIN_DETAIL

struct region_epilogue {
  float* cross;
  float* self;
  __device__ int split(const window_desc& d) const { return d.cols; }
  __device__ void operator()(int, const window_desc& d, int j, float self_sum, float cross_sum) const {
    if (self != nullptr) self[j] = fdiv(self_sum, static_cast<float>(d.cols));
    if (cross != nullptr) cross[j] = cross_sum;
  }
};

/// One thread: Ws, Wc from the row totals (visual rows first, then text rows).
template <int Dummy = 0>
__global__ void region_result_kernel(const float* totals, int n, int text, const int* skip, region_mass_result* out) {
  if (threadIdx.x != 0 || blockIdx.x != 0 || out == nullptr) return;
  region_mass_result r;
  r.text_rows = text;
  if (n > 0 && skip[0] == 0) {
    r.self_mass = fdiv(canonical_sum_serial(totals, n), static_cast<float>(n));
    if (text > 0) r.cross_mass = fdiv(canonical_sum_serial(totals + n, text), static_cast<float>(text));
  }
  *out = r;
}

inline void region_layout(workspace_plan& plan, index_t rows, index_t n, int** skip, float** map, float** totals) {
  *skip = plan.take<int>(1);
  *map = plan.take<float>(count_of({rows, n}));
  *totals = plan.take<float>(static_cast<std::size_t>(rows));
}

TOKENSEL_CUDA_END_DETAIL  // cuda_detail

/// Workspace bytes of region_mass(cuda_policy, attention, visual, ...).
template <cuda_element T>
[[nodiscard]] std::size_t region_mass_workspace_size(const head_attention_view<T>& attention, const token_range& visual) {
  cuda_detail::workspace_plan plan;
  int* skip;
  float *map, *totals;
  const index_t rows = visual.count > 0 ? attention.extent(1) - visual.begin : 0;
  cuda_detail::region_layout(plan, rows < 0 ? 0 : rows, visual.count < 0 ? 0 : visual.count, &skip, &map, &totals);
  return plan.bytes();
}

/// Region masses of attention [heads, L, L] (device) around visual = [s0, s0 + n): cross and self
/// into the device spans of out (each empty or n), Wc, Ws and T into *result (device; may be
/// null). NaN/Inf in the rows and columns read -> status(policy).
template <cuda_element T>
void region_mass(const cuda_policy& policy, const head_attention_view<T>& attention, const token_range& visual,
                 head_reduction op, const region_mass_out& out = {}, region_mass_result* result = nullptr) {
  using namespace cuda_detail;
  const index_t heads = attention.extent(0), L = attention.extent(1);
  detail::check_llm_attention(L, attention.extent(2), visual, "region_mass");
  const index_t s0 = visual.begin, n = visual.count, text = L - visual.end();
  detail::check_region_mass_outputs(out, n);
  if (n > 0) detail::check_heads_present(heads, L, L);
  const index_t rows = n > 0 ? n + text : 0;
  workspace_plan plan(policy);
  int* skip;
  float *map, *totals;
  region_layout(plan, rows, n, &skip, &map, &totals);
  plan.require("region_mass");
  cudaStream_t stream = policy.stream;
  reset_status(plan.status(), stream);
  check(cudaMemsetAsync(skip, 0, sizeof(int), stream), "cudaMemsetAsync(skip)");
  if (n > 0) {
    const auto tables = single_tables(window_of(attention, s0, rows, s0, n));
    rows_args ra;
    ra.op = op;
    ra.map = map;
    ra.row_sums = totals;
    ra.skip = skip;
    ra.status = plan.status();
    ra.site = status_site::reduced_map;
    launch_reduce_rows<device_type_t<T>>(tables, ra, stream);
    if (!out.cross.empty() || !out.self.empty()) {
      cols_args ca;
      ca.map = map;
      ca.skip = skip;
      launch_column_sums(tables, ca,
                         region_epilogue{out.cross.empty() ? nullptr : out.cross.data(),
                                         out.self.empty() ? nullptr : out.self.data()},
                         stream);
    }
  }
  if (result != nullptr) {
    region_result_kernel<><<<1, 32, 0, stream>>>(totals, static_cast<int>(n), static_cast<int>(text), skip, result);
    check_launch("region_mass_result");
  }
}

TOKENSEL_END_NAMESPACE
