// tokensel CUDA backend: selection primitives over a batch of score vectors [batch, n] on the
// device (any dtype, any strides): top_k / bottom_k (the CPU's tie rule: equal scores -> lower
// index first; ascending or ranked output) and select_rows (row aggregation on a token grid).
// Each is the CPU function of the same name (tokensel/top_k.hpp, row_aggregation.hpp) applied
// per sample, with a cuda_policy first and a selection_batch for the outputs.
#pragma once

#include <cstddef>
#include <span>
#include <string>

#include "tokensel/cuda/core/abi.cuh"
#include "tokensel/core/batch.hpp"
#include "tokensel/core/config.hpp"
#include "tokensel/cuda/detail/arith.cuh"
#include "tokensel/cuda/detail/batch.cuh"
#include "tokensel/cuda/detail/launch.cuh"
#include "tokensel/cuda/select/detail/select_kernels.cuh"
#include "tokensel/cuda/core/element.cuh"
#include "tokensel/cuda/core/error.cuh"
#include "tokensel/cuda/select/detail/rank_kernels.cuh"
#include "tokensel/cuda/core/policy.cuh"
#include "tokensel/cuda/core/workspace.cuh"
#include "tokensel/select/row_aggregation.hpp"
#include "tokensel/select/top_k.hpp"

TOKENSEL_BEGIN_NAMESPACE
TOKENSEL_CUDA_BEGIN_DETAIL

/// Ranks of typed, strided scores (High: top-k rule); rejects non-finite scores of a sample.
template <class D, bool High>
struct typed_ranker {
  using key_type = float;
  int* rank;
  long long vec;
  int* skip;
  device_status* status;
  __device__ bool active(int b, const window_desc&) const { return skip[b] == 0; }
  __host__ __device__ static int size(const window_desc& d) { return d.cols; }
  __device__ bool eligible(int, const window_desc&, int) const { return true; }
  __device__ float key(int, const window_desc& d, int i) const {
    return load_f32(static_cast<const D*>(d.data) + static_cast<long long>(i) * d.sj);
  }
  __device__ static bool beats(float kj, int j, float ki, int i) {
    return High ? beats_high(kj, j, ki, i) : beats_low(kj, j, ki, i);
  }
  __device__ void write(int b, const window_desc& d, int i, int r) const {
    rank[b * vec + i] = r;
    if (!finite_f32(key(b, d, i))) {
      record(status, status_site::scores, 0, static_cast<unsigned>(b), static_cast<unsigned>(i));
      skip[b] = 1;
    }
  }
};

struct topk_compactor {
  const int* rank;
  long long vec;
  const int* skip;
  token_index* out;
  long long out_stride;
  token_index* counts;
  int k;
  int ranked;
  __device__ bool active(int b, const window_desc&) const { return skip[b] == 0; }
  __device__ void inactive(int b, const window_desc&) const { counts[b] = 0; }
  __host__ __device__ static int size(const window_desc& d) { return d.cols; }
  __device__ bool selected(int b, const window_desc&, int i) const { return rank[b * vec + i] < k; }
  __device__ void emit(int b, const window_desc&, int pos, int i) const {
    out[b * out_stride + (ranked != 0 ? rank[b * vec + i] : pos)] = i;
  }
  __device__ void finish(int b, const window_desc&, int count) const { counts[b] = count; }
};

struct select_buffers {
  device_status* status = nullptr;
  int* skip = nullptr;
  int* rank = nullptr;
  float* values = nullptr;
  float* rowscore = nullptr;
  long long vec = 0;
};

inline select_buffers select_layout(workspace_plan& plan, index_t batch, index_t n, bool values) {
  select_buffers w;
  const auto B = count_of({batch}), N = count_of({n});
  w.status = plan.status();
  w.vec = static_cast<long long>(n);
  w.skip = plan.take<int>(B);
  w.rank = plan.take<int>(B * N);
  w.values = plan.take<float>(values ? B * N : 0);
  w.rowscore = plan.take<float>(values ? B * N : 0);
  return w;
}

template <class T, bool High>
void select_k(const cuda_policy& policy, const tensor_view<const T, 2>& scores, index_t k, const selection_batch& out,
              index_order order, std::string_view name) {
  const index_t B = scores.extent(0), n = scores.extent(1);
  check_outputs(out, std::span<int>{}, B, name);
  detail::check_count(k, n, std::string(name) + ".k");
  detail::check_capacity(static_cast<std::size_t>(out.indices.extent(1)), k, std::string(name) + ".out.size()");
  workspace_plan plan(policy);
  const select_buffers w = select_layout(plan, B, n, false);
  plan.require(name);
  if (B == 0) return;
  cudaStream_t stream = policy.stream;
  reset_status(w.status, stream);
  check(cudaMemsetAsync(w.skip, 0, static_cast<std::size_t>(B) * sizeof(int), stream), "cudaMemsetAsync(skip)");
  using D = device_type_t<T>;
  const auto tables = score_tables(scores);
  launch_rank(tables, typed_ranker<D, High>{w.rank, w.vec, w.skip, w.status}, stream);
  launch_compact(tables,
                 topk_compactor{w.rank, w.vec, w.skip, out_rows(out), out_stride(out), out.counts.data(),
                                static_cast<int>(k), order == index_order::ranked ? 1 : 0},
                 stream);
}

inline constexpr int convert_block = 256;

/// Typed strided scores -> fp32 workspace, rejecting non-finite values of a sample.
template <class D>
__global__ void __launch_bounds__(convert_block) to_f32_kernel(const sample_table t, float* out, long long vec,
                                                               int* skip, device_status* status) {
  const int s = static_cast<int>(blockIdx.y);
  if (s >= t.count) return;
  const window_desc d = t.get(s);
  const int b = t.first + s;
  const int i = static_cast<int>(blockIdx.x) * convert_block + static_cast<int>(threadIdx.x);
  if (i >= d.cols) return;
  const float v = load_f32(static_cast<const D*>(d.data) + static_cast<long long>(i) * d.sj);
  out[b * vec + i] = v;
  if (!finite_f32(v)) {
    record(status, status_site::scores, 0, static_cast<unsigned>(b), static_cast<unsigned>(i));
    skip[b] = 1;
  }
}

TOKENSEL_CUDA_END_DETAIL  // cuda_detail

/// Workspace bytes of top_k / bottom_k (cuda_policy) over scores [batch, n].
template <cuda_element T>
[[nodiscard]] std::size_t top_k_workspace_size(const tensor_view<const T, 2>& scores) {
  cuda_detail::workspace_plan plan;
  (void)cuda_detail::select_layout(plan, scores.extent(0), scores.extent(1), false);
  return plan.bytes();
}

/// For every row b of scores [batch, n] (device): the indices of the k highest scores into
/// out.indices(b, 0 .. k) (ascending, or best first with index_order::ranked), counts[b] = k.
/// A row with NaN/Inf reports count 0 and the problem through status(policy).
template <cuda_element T>
void top_k(const cuda_policy& policy, const tensor_view<const T, 2>& scores, index_t k, const selection_batch& out,
           index_order order = index_order::ascending) {
  cuda_detail::select_k<T, true>(policy, scores, k, out, order, "top_k");
}

/// The k lowest scores of every row (ties: lower index first).
template <cuda_element T>
void bottom_k(const cuda_policy& policy, const tensor_view<const T, 2>& scores, index_t k, const selection_batch& out,
              index_order order = index_order::ascending) {
  cuda_detail::select_k<T, false>(policy, scores, k, out, order, "bottom_k");
}

/// Workspace bytes of select_rows (cuda_policy) over scores [batch, n].
template <cuda_element T>
[[nodiscard]] std::size_t select_rows_workspace_size(const tensor_view<const T, 2>& scores) {
  cuda_detail::workspace_plan plan;
  (void)cuda_detail::select_layout(plan, scores.extent(0), scores.extent(1), true);
  return plan.bytes();
}

/// Row aggregation for every row b of scores [batch, n] on grid (rows * cols = n): keeps the
/// rows_kept best grid rows (row score = canonical sum, or mean, of its scores; ties: lower row)
/// and writes all their tokens, ascending, into out.indices(b, :); counts[b] = rows_kept * cols.
template <cuda_element T>
void select_rows(const cuda_policy& policy, const tensor_view<const T, 2>& scores, const token_grid& grid,
                 index_t rows_kept, row_reduction op, const selection_batch& out) {
  using namespace cuda_detail;
  const index_t B = scores.extent(0), n = scores.extent(1);
  check_outputs(out, std::span<int>{}, B, "select_rows");
  check_grid(grid, n, "select_rows.grid");
  detail::check_count(rows_kept, grid.rows, "select_rows.rows_kept");
  detail::check_capacity(static_cast<std::size_t>(out.indices.extent(1)), rows_kept * grid.cols, "select_rows.out.size()");
  workspace_plan plan(policy);
  const select_buffers w = select_layout(plan, B, n, true);
  plan.require("select_rows");
  if (B == 0) return;
  cudaStream_t stream = policy.stream;
  reset_status(w.status, stream);
  check(cudaMemsetAsync(w.skip, 0, static_cast<std::size_t>(B) * sizeof(int), stream), "cudaMemsetAsync(skip)");
  using D = device_type_t<T>;
  window_desc base;
  base.heads = 1;
  base.rows = 1;
  base.cols = to_int(n, "select_rows.scores.extent(1)");
  base.sj = scores.stride(1);
  base.data = scores.data();
  base.p1 = static_cast<int>(grid.cols);
  base.p2 = static_cast<int>(rows_kept);
  const auto tables = make_tables(B, true, static_cast<long long>(scores.stride(0)) * static_cast<long long>(sizeof(T)),
                                  [base](index_t) { return base; });
  tables.each([&](const sample_table& t) {
    if (n > 0) {
      to_f32_kernel<D><<<dim3(blocks_for(n, convert_block), static_cast<unsigned>(t.count)), convert_block, 0, stream>>>(
          t, w.values, w.vec, w.skip, w.status);
      check_launch("select_rows_convert");
    }
    const row_strategy_args<void> rg{w.values, w.rowscore, w.rank, w.vec, w.skip, w.status,
                                                   out_rows(out), out_stride(out), out.counts.data(), nullptr, op};
    grid_rows_kernel<<<static_cast<unsigned>(t.count), rows_block, 0, stream>>>(t, rg);
    check_launch("select_rows");
  });
}

TOKENSEL_END_NAMESPACE
