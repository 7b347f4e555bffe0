// tokensel CUDA backend: the map primitives of one sample on the device, each the CPU function of
// the same name with a cuda_policy first (tokensel/head_reduction.hpp, map_sums.hpp,
// contribution_degree.hpp, variance_axis.hpp): reduce_heads, map_sums, contribution_degree,
// variance_axis_significance. Outputs are device memory; a statistic the CPU returns by value is
// written to a device pointer instead (no host synchronisation inside a call).
#pragma once

#include <cstddef>
#include <span>
#include <string>

#include "tokensel/cuda/core/abi.cuh"
#include "tokensel/core/config.hpp"
#include "tokensel/stats/contribution_degree.hpp"
#include "tokensel/cuda/detail/arith.cuh"
#include "tokensel/cuda/detail/batch.cuh"
#include "tokensel/cuda/detail/launch.cuh"
#include "tokensel/cuda/stats/detail/map_kernels.cuh"
#include "tokensel/cuda/core/element.cuh"
#include "tokensel/cuda/core/error.cuh"
#include "tokensel/cuda/stats/detail/variance_axis_kernel.cuh"
#include "tokensel/cuda/core/policy.cuh"
#include "tokensel/cuda/core/workspace.cuh"
#include "tokensel/stats/head_reduction.hpp"
#include "tokensel/stats/map_sums.hpp"
#include "tokensel/stats/variance_axis.hpp"

TOKENSEL_BEGIN_NAMESPACE

TOKENSEL_CUDA_BEGIN_DETAIL

/// A single sample as a one-entry ragged table.
inline auto single_tables(const window_desc& w) {
  return make_tables(1, false, 0, [w](index_t) { return w; });
}

/// aux value of the contribution site when no layer is involved.
inline constexpr unsigned no_layer = 0x3FFu;

struct map_buffers {
  device_status* status = nullptr;
  int* skip = nullptr;
  float* map = nullptr;
  float* diag = nullptr;
  float* s1 = nullptr;
  float* s2 = nullptr;
};

inline map_buffers map_layout(workspace_plan& plan, index_t rows, index_t cols, bool map, bool diag, bool sums) {
  map_buffers w;
  w.status = plan.status();
  w.skip = plan.take<int>(1);
  w.map = plan.take<float>(map ? count_of({rows, cols}) : 0);
  w.diag = plan.take<float>(diag ? static_cast<std::size_t>(rows < cols ? rows : cols) : 0);
  w.s1 = plan.take<float>(sums ? static_cast<std::size_t>(rows) : 0);
  w.s2 = plan.take<float>(sums ? static_cast<std::size_t>(cols) : 0);
  return w;
}

inline void begin_call(const map_buffers& w, cudaStream_t stream) {
  reset_status(w.status, stream);
  check(cudaMemsetAsync(w.skip, 0, sizeof(int), stream), "cudaMemsetAsync(skip)");
}

inline void zero(std::span<float> s, cudaStream_t stream) {
  if (!s.empty()) check(cudaMemsetAsync(s.data(), 0, s.size() * sizeof(float), stream), "cudaMemsetAsync(out)");
}

/// r = column sum - diagonal into a caller span (contribution_degree).
struct degree_epilogue {
  float* out;
  const float* diag;
  device_status* status;
  int* skip;
  __device__ int split(const window_desc& d) const { return d.rows; }
  __device__ void operator()(int b, const window_desc&, int j, float column, float) const {
    const float v = fsub(column, diag[j]);
    out[j] = v;
    if (!finite_f32(v)) {
      record(status, status_site::contribution, no_layer, static_cast<unsigned>(b), static_cast<unsigned>(j));
      skip[b] = 1;
    }
  }
};

TOKENSEL_CUDA_END_DETAIL  // cuda_detail

// ---- reduce_heads ---------------------------------------------------------------------------

/// Workspace bytes of reduce_heads(cuda_policy, ...): the status word only.
[[nodiscard]] inline std::size_t reduce_heads_workspace_size() {
  cuda_detail::workspace_plan plan;
  (void)plan.take<int>(1);
  return plan.bytes();
}

/// M = op over heads of attention [heads, q, k] into out [q, k] (device; any strides).
template <cuda_element T>
void reduce_heads(const cuda_policy& policy, const head_attention_view<T>& attention, head_reduction op,
                  const matrix_view<float>& out) {
  using namespace cuda_detail;
  const index_t heads = attention.extent(0), rows = attention.extent(1), cols = attention.extent(2);
  if (out.extent(0) != rows || out.extent(1) != cols) {
    detail::fail(errc::shape_mismatch, "reduce_heads.out", std::to_string(out.extent(0)) + "x" + std::to_string(out.extent(1)),
                 "must be " + std::to_string(rows) + "x" + std::to_string(cols));
  }
  detail::check_heads_present(heads, rows, cols);
  workspace_plan plan(policy);
  int* skip = plan.take<int>(1);
  plan.require("reduce_heads");
  if (rows == 0 || cols == 0) return;
  reset_status(plan.status(), policy.stream);
  check(cudaMemsetAsync(skip, 0, sizeof(int), policy.stream), "cudaMemsetAsync(skip)");
  rows_args ra;
  ra.op = op;
  ra.map = out.data();
  ra.map_ld = out.stride(0);
  ra.map_cs = out.stride(1);
  ra.skip = skip;
  ra.status = plan.status();
  launch_reduce_rows<device_type_t<T>>(single_tables(window_of(attention, 0, rows, 0, cols)), ra, policy.stream);
}

// ---- map_sums -------------------------------------------------------------------------------

/// Workspace bytes of map_sums(cuda_policy, attention, op, out) for these outputs.
template <cuda_element T>
[[nodiscard]] std::size_t map_sums_workspace_size(const head_attention_view<T>& attention, const map_sums_out& out) {
  cuda_detail::workspace_plan plan;
  (void)cuda_detail::map_layout(plan, attention.extent(1), attention.extent(2), !out.column_sums.empty(), false, false);
  return plan.bytes();
}

/// Row sums (canonical order), column sums (ascending rows) and diagonal of the head-reduced map,
/// into device spans (each empty or sized q, k, min(q, k)). Bit-identical to the CPU's map_sums.
template <cuda_element T>
void map_sums(const cuda_policy& policy, const head_attention_view<T>& attention, head_reduction op,
              const map_sums_out& out) {
  using namespace cuda_detail;
  const index_t heads = attention.extent(0), rows = attention.extent(1), cols = attention.extent(2);
  detail::check_span(out.row_sums, rows, "map_sums.row_sums.size()");
  detail::check_span(out.column_sums, cols, "map_sums.column_sums.size()");
  detail::check_span(out.diagonal, rows < cols ? rows : cols, "map_sums.diagonal.size()");
  detail::check_heads_present(heads, rows, cols);
  workspace_plan plan(policy);
  const map_buffers w = map_layout(plan, rows, cols, !out.column_sums.empty(), false, false);
  plan.require("map_sums");
  cudaStream_t stream = policy.stream;
  begin_call(w, stream);
  if (rows == 0 || cols == 0) {
    zero(out.column_sums, stream);
    zero(out.row_sums, stream);
    return;
  }
  const auto tables = single_tables(window_of(attention, 0, rows, 0, cols));
  rows_args ra;
  ra.op = op;
  ra.map = out.column_sums.empty() ? nullptr : w.map;
  ra.row_sums = out.row_sums.empty() ? nullptr : out.row_sums.data();
  ra.diag = out.diagonal.empty() ? nullptr : out.diagonal.data();
  ra.skip = w.skip;
  ra.status = w.status;
  launch_reduce_rows<device_type_t<T>>(tables, ra, stream);
  if (!out.column_sums.empty()) {
    cols_args ca;
    ca.map = w.map;
    ca.skip = w.skip;
    launch_column_sums(tables, ca, store_column_sum{out.column_sums.data(), 0}, stream);
  }
}

// ---- contribution_degree ----------------------------------------------------------------------

/// Workspace bytes of contribution_degree(cuda_policy, attention, op, range, out).
template <cuda_element T>
[[nodiscard]] std::size_t contribution_degree_workspace_size(const head_attention_view<T>&, const token_range& range) {
  cuda_detail::workspace_plan plan;
  (void)cuda_detail::map_layout(plan, range.count, range.count, true, true, false);
  return plan.bytes();
}

/// r[i] = sum_j M[j, i] - M[i, i] over the square sub-map range x range of the head-reduced
/// attention [heads, N, N], into the device span out [range.count]. NaN/Inf -> status(policy).
template <cuda_element T>
void contribution_degree(const cuda_policy& policy, const head_attention_view<T>& attention, head_reduction op,
                         const token_range& range, std::span<float> out) {
  using namespace cuda_detail;
  if (attention.extent(1) != attention.extent(2)) {
    detail::fail(errc::shape_mismatch, "contribution_degree.attention",
                 std::to_string(attention.extent(1)) + "x" + std::to_string(attention.extent(2)),
                 "queries and keys must be the same tokens");
  }
  const auto sub = restrict_tokens(attention, range);
  const index_t n = range.count;
  detail::check_contribution_shapes(n, n, static_cast<index_t>(out.size()));
  if (n > 0) detail::check_heads_present(attention.extent(0), n, n);
  workspace_plan plan(policy);
  const map_buffers w = map_layout(plan, n, n, true, true, false);
  plan.require("contribution_degree");
  cudaStream_t stream = policy.stream;
  begin_call(w, stream);
  if (n == 0) return;
  const auto tables = single_tables(window_of(sub, 0, n, 0, n));
  rows_args ra;
  ra.op = op;
  ra.map = w.map;
  ra.diag = w.diag;
  ra.skip = w.skip;
  ra.status = w.status;
  launch_reduce_rows<device_type_t<T>>(tables, ra, stream);
  cols_args ca;
  ca.map = w.map;
  ca.skip = w.skip;
  launch_column_sums(tables, ca, degree_epilogue{out.data(), w.diag, w.status, w.skip}, stream);
}

/// Same over the patches (CLS at index 0 skipped): out has N - 1 entries.
template <cuda_element T>
void contribution_degree(const cuda_policy& policy, const head_attention_view<T>& attention, head_reduction op,
                         std::span<float> out) {
  contribution_degree(policy, attention, op, token_range::skip_cls(attention.extent(1)), out);
}

// ---- variance_axis_significance -------------------------------------------------------------------

/// Workspace bytes of variance_axis_significance(cuda_policy, attention, ...).
template <cuda_element T>
[[nodiscard]] std::size_t variance_axis_workspace_size(const head_attention_view<T>& attention) {
  cuda_detail::workspace_plan plan;
  (void)cuda_detail::map_layout(plan, attention.extent(1), attention.extent(2), true, false, true);
  return plan.bytes();
}

/// Sig of a square map (attention [heads, n, n], restricted beforehand) into the device span
/// significance [n]; the axis and both variances into *result (device memory; may be null).
template <cuda_element T>
void variance_axis_significance(const cuda_policy& policy, const head_attention_view<T>& attention, head_reduction op,
                                std::span<float> significance, variance_axis_result* result = nullptr) {
  using namespace cuda_detail;
  const index_t n = attention.extent(1);
  if (attention.extent(2) != n) {
    detail::fail(errc::shape_mismatch, "variance_axis.attention", std::to_string(n) + "x" + std::to_string(attention.extent(2)),
                 "map must be square");
  }
  if (static_cast<index_t>(significance.size()) != n) {
    detail::fail(errc::shape_mismatch, "variance_axis.significance.size()", significance.size(), "must be " + std::to_string(n));
  }
  if (n > 0) detail::check_heads_present(attention.extent(0), n, n);
  workspace_plan plan(policy);
  const map_buffers w = map_layout(plan, n, n, true, false, true);
  plan.require("variance_axis");
  cudaStream_t stream = policy.stream;
  begin_call(w, stream);
  const auto tables = single_tables(window_of(attention, 0, n, 0, n));
  if (n > 0) {
    rows_args ra;
    ra.op = op;
    ra.map = w.map;
    ra.row_sums = w.s1;
    ra.skip = w.skip;
    ra.status = w.status;
    launch_reduce_rows<device_type_t<T>>(tables, ra, stream);
    cols_args ca;
    ca.map = w.map;
    ca.skip = w.skip;
    launch_column_sums(tables, ca, store_column_sum{w.s2, 0}, stream);
  }
  const axis_args<variance_axis_writer> aa{w.s1, w.s2, significance.data(), 0, w.skip, w.status,
                                          variance_axis_writer{result}};
  tables.each([&](const sample_table& t) {
    variance_axis_kernel<<<1, axis_block, 0, stream>>>(t, aa);
    check_launch("variance_axis");
  });
}

TOKENSEL_END_NAMESPACE
