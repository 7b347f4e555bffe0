// tokensel CUDA backend: FoPru (spec section 3), batched. Same selection as fopru::select of the
// CPU backend (tokensel/fopru.hpp), bit for bit: same significance, axis, variances and indices.
//
// Stages (one launch each for a 4-D batch; per 32 samples for a ragged one):
//   1. reduce_rows     head mean of the patch submatrix -> M (workspace), canonical row sums
//   2. column_sums     column sums of M (ascending rows)
//   3. fopru_axis      s1 = row sums / n, s2 = column sums / n, finiteness, Var in double (one
//                      thread per vector, the CPU's sequential order), Sig = the winning vector
//   4. rank + compact  (rank strategy) top-k of Sig by rank counting, ascending indices
//      fopru_rows      (row strategy) canonical row scores, top rows, expanded token indices
#pragma once

#include <algorithm>
#include <cstddef>
#include <span>
#include <string>

#include <cub/block/block_scan.cuh>

#include "tokensel/cuda/core/abi.cuh"
#include "tokensel/core/batch.hpp"
#include "tokensel/core/config.hpp"
#include "tokensel/cuda/detail/arith.cuh"
#include "tokensel/cuda/detail/batch.cuh"
#include "tokensel/cuda/detail/launch.cuh"
#include "tokensel/cuda/detail/single.cuh"
#include "tokensel/cuda/stats/detail/map_kernels.cuh"
#include "tokensel/cuda/select/detail/rank_kernels.cuh"
#include "tokensel/cuda/select/detail/select_kernels.cuh"
#include "tokensel/cuda/stats/detail/variance_axis_kernel.cuh"
#include "tokensel/cuda/core/element.cuh"
#include "tokensel/cuda/core/error.cuh"
#include "tokensel/cuda/core/policy.cuh"
#include "tokensel/cuda/core/workspace.cuh"
#include "tokensel/methods/fopru.hpp"
#include "tokensel/cuda/stats/qk_statistics.cuh"

TOKENSEL_BEGIN_NAMESPACE

namespace fopru {
TOKENSEL_CUDA_BEGIN_DETAIL

using namespace tokensel::cuda_detail;

struct buffers {
  device_status* status = nullptr;
  int* skip = nullptr;
  float* map = nullptr;
  float* s1 = nullptr;    // row sums, then row means
  float* s2 = nullptr;    // column sums, then column means
  float* sig = nullptr;
  float* rowscore = nullptr;
  int* rank = nullptr;
  long long vec = 0;      // per-sample stride of the vectors (n_max)
  long long map_stride = 0;
};

inline buffers layout(workspace_plan& plan, index_t batch, index_t n_max) {
  buffers w;
  const auto B = count_of({batch}), n = count_of({n_max});
  w.status = plan.status();
  w.vec = static_cast<long long>(n_max);
  w.map_stride = static_cast<long long>(n_max) * static_cast<long long>(n_max);
  w.skip = plan.take<int>(B);
  w.map = plan.take<float>(count_of({batch, n_max, n_max}));
  w.s1 = plan.take<float>(B * n);
  w.s2 = plan.take<float>(B * n);
  w.sig = plan.take<float>(B * n);
  w.rowscore = plan.take<float>(B * n);
  w.rank = plan.take<int>(B * n);
  return w;
}

/// Host checks of one sample of `tokens` x `keys` tokens and `heads` heads in the CPU backend's
/// order; returns its window (no data) and keep count. p0 = keep count, p1 = grid cols, p2 = rows
/// kept (row strategy). Shared by the view and the Q/K (qk_statistics.cuh) paths.
inline window_desc check_shape(index_t tokens, index_t keys, index_t heads, const config& cfg, index_t capacity) {
  if (keys != tokens) {
    tokensel::detail::fail(errc::shape_mismatch, "fopru.attention", std::to_string(tokens) + "x" + std::to_string(keys),
                           "queries and keys must be the same tokens");
  }
  const token_range patches = cfg.skip_cls ? token_range::skip_cls(tokens) : token_range::all(tokens);
  const index_t n = patches.count;
  const index_t k = keep_count(n, cfg);
  tokensel::detail::check_capacity(static_cast<std::size_t>(capacity), k, "fopru.out.size()");
  window_desc w;
  w.rows = w.cols = to_int(n, "fopru.patches");
  w.p0 = static_cast<int>(k);
  if (n > 0) {
    tokensel::detail::check_heads_present(heads, n, n);
    if (cfg.strategy == strategy::row) {
      const token_grid grid = detail::grid_for(cfg, n);
      w.p1 = static_cast<int>(grid.cols);
      w.p2 = static_cast<int>(detail::retained(grid.rows, cfg.ratio));
    }
  }
  return w;
}

/// The same for a view; the window points into it.
template <class T>
window_desc check_sample(const tensor_view<const T, 3>& attention, const config& cfg, index_t capacity) {
  const window_desc s = check_shape(attention.extent(1), attention.extent(2), attention.extent(0), cfg, capacity);
  const index_t begin = cfg.skip_cls && attention.extent(1) > 0 ? 1 : 0;
  window_desc w = window_of(attention, begin, s.rows, begin, s.cols);
  w.p0 = s.p0;
  w.p1 = s.p1;
  w.p2 = s.p2;
  return w;
}

template <class T>
index_t patches_of(const tensor_view<const T, 3>& attention, const config& cfg) {
  const index_t tokens = attention.extent(1);
  return cfg.skip_cls ? std::max<index_t>(tokens - 1, 0) : tokens;
}

template <class T>
index_t max_patches(const batch_ref<T>& batch, const config& cfg) {
  index_t m = 0;
  for (index_t b = 0; b < batch.distinct(); ++b) m = std::max(m, patches_of(batch[b], cfg));
  return m;
}

/// Writes FoPru's per-sample statistics (axis, variances, rows kept) into its results.
struct axis_writer {
  result* out = nullptr;
  __device__ void operator()(int b, bool rows_win, double rv, double cv, int rows_kept) const {
    if (out == nullptr) return;
    out[b].axis = rows_win ? significance_axis::row_mean : significance_axis::column_mean;
    out[b].row_variance = rv;
    out[b].column_variance = cv;
    out[b].rows_kept = rows_kept;
  }
};

/// Ascending indices with rank < k (rank strategy); count and results.count.
struct rank_compactor {
  const int* rank;
  long long vec;
  const int* skip;
  token_index* out;
  long long out_stride;
  token_index* counts;
  result* results;
  __device__ bool active(int b, const window_desc&) const { return skip[b] == 0; }
  __device__ void inactive(int b, const window_desc&) const {
    counts[b] = 0;
    if (results != nullptr) results[b].count = 0;
  }
  __host__ __device__ static int size(const window_desc& d) { return d.cols; }
  __device__ bool selected(int b, const window_desc& d, int i) const { return rank[b * vec + i] < d.p0; }
  __device__ void emit(int b, const window_desc&, int pos, int i) const { out[b * out_stride + pos] = i; }
  __device__ void finish(int b, const window_desc&, int count) const {
    counts[b] = count;
    if (results != nullptr) results[b].count = count;
  }
};

/// Stages 3 and 4 (axis, selection) from the row sums in w.s1 and column sums in w.s2 (sample b
/// at b * w.vec); also the tail of the Q/K path (qk_statistics.cuh).
template <class Tables>
void finish(const Tables& tables, const buffers& w, const config& cfg, const selection_batch& out,
            std::span<result> results, cudaStream_t stream) {
  const axis_args<axis_writer> aa{w.s1, w.s2, w.sig, w.vec, w.skip, w.status, axis_writer{results.empty() ? nullptr : results.data()}};
  tables.each([&](const sample_table& t) {
    variance_axis_kernel<<<static_cast<unsigned>(t.count), axis_block, 0, stream>>>(t, aa);
    check_launch("fopru_axis");
  });

  if (cfg.strategy == strategy::rank) {
    launch_rank(tables, score_ranker<true>{w.sig, w.vec, w.rank, w.skip}, stream);
    launch_compact(tables,
                   rank_compactor{w.rank, w.vec, w.skip, out_rows(out), out_stride(out), out.counts.data(),
                                  results.empty() ? nullptr : results.data()},
                   stream);
  } else {
    const row_strategy_args<result> rg{w.sig,           w.rowscore,         w.rank,           w.vec,
                       w.skip,          w.status,           out_rows(out),    out_stride(out),
                       out.counts.data(), results.empty() ? nullptr : results.data(), cfg.row_score};
    tables.each([&](const sample_table& t) {
      grid_rows_kernel<<<static_cast<unsigned>(t.count), rows_block, 0, stream>>>(t, rg);
      check_launch("fopru_rows");
    });
  }
}

template <class T>
void run(const cuda_policy& policy, const batch_ref<T>& batch, const config& cfg, const selection_batch& out,
         std::span<result> results) {
  const index_t B = batch.size();
  check_outputs(out, results, B, "fopru");  // run_batch's checks come first on the CPU too
  if (B > 0) validate(cfg);
  const index_t capacity = out.indices.extent(1);
  for (index_t b = 0; b < batch.distinct(); ++b) (void)check_sample(batch[b], cfg, capacity);
  const index_t n_max = max_patches(batch, cfg);
  workspace_plan plan(policy);
  const buffers w = layout(plan, B, n_max);
  plan.require("fopru");
  if (B == 0) return;
  cudaStream_t stream = policy.stream;
  reset_status(w.status, stream);
  check(cudaMemsetAsync(w.skip, 0, static_cast<std::size_t>(B) * sizeof(int), stream), "cudaMemsetAsync(skip)");
  using D = device_type_t<T>;
  const auto tables = batch.tables([&](index_t, const tensor_view<const T, 3>& a) { return check_sample(a, cfg, capacity); });

  tokensel::cuda_detail::rows_args ra;
  ra.op = cfg.heads;
  ra.map = w.map;
  ra.map_stride = w.map_stride;
  ra.row_sums = w.s1;
  ra.vec_stride = w.vec;
  ra.skip = w.skip;
  ra.status = w.status;
  launch_reduce_rows<D>(tables, ra, stream);

  cols_args ca;
  ca.map = w.map;
  ca.map_stride = w.map_stride;
  ca.skip = w.skip;
  launch_column_sums(tables, ca, store_column_sum{w.s2, w.vec}, stream);

  finish(tables, w, cfg, out, results, stream);
}

template <class T>
std::size_t workspace_bytes(const batch_ref<T>& batch, const config& cfg) {
  validate(cfg);
  workspace_plan plan;
  (void)layout(plan, batch.size(), max_patches(batch, cfg));
  return plan.bytes();
}

TOKENSEL_CUDA_END_DETAIL  // cuda_detail

/// Workspace bytes select(cuda_policy, batch, cfg, ...) needs (pure host arithmetic on shapes).
template <cuda_element T>
[[nodiscard]] std::size_t workspace_size(const attention_view<T>& batch, const config& cfg) {
  return cuda_detail::workspace_bytes(tokensel::cuda_detail::batch_ref<T>(batch), cfg);
}
template <cuda_element T>
[[nodiscard]] std::size_t workspace_size(std::span<const head_attention_view<T>> batch, const config& cfg) {
  return cuda_detail::workspace_bytes(tokensel::cuda_detail::batch_ref<T>(batch), cfg);
}

/// Batch [batch, heads, N, N] on the device: sample b writes keep_count(n) indices into
/// out.indices(b, :) and counts[b]; results (device memory, optional) get the statistics.
/// Asynchronous on policy.stream; NaN/Inf are reported through status(policy).
template <cuda_element T>
void select(const cuda_policy& policy, const attention_view<T>& batch, const config& cfg, const selection_batch& out,
            std::span<result> results = {}) {
  cuda_detail::run(policy, tokensel::cuda_detail::batch_ref<T>(batch), cfg, out, results);
}

/// Ragged batch: one [heads, N_b, N_b] device view per sample.
template <cuda_element T>
void select(const cuda_policy& policy, std::span<const head_attention_view<T>> batch, const config& cfg,
            const selection_batch& out, std::span<result> results = {}) {
  cuda_detail::run(policy, tokensel::cuda_detail::batch_ref<T>(batch), cfg, out, results);
}

/// Workspace bytes of the single-sample select (the batch-of-1 layout plus the count slot).
template <cuda_element T>
[[nodiscard]] std::size_t workspace_size(const head_attention_view<T>& attention, const config& cfg) {
  return tokensel::cuda_detail::single_bytes(workspace_size(tokensel::cuda_detail::one(attention), cfg));
}

/// One sample [heads, N, N] on the device: the CPU's single-sample select. out (device memory,
/// >= keep_count) gets the indices; *device_result (device memory, optional) the statistics and
/// the count. Runs the batch-of-1 select, so the results are those of the batched call.
template <cuda_element T>
void select(const cuda_policy& policy, const head_attention_view<T>& attention, const config& cfg,
            std::span<token_index> out, result* device_result = nullptr) {
  using namespace tokensel::cuda_detail;
  const auto batch = one(attention);
  select(policy, batch, cfg, single_output(policy, workspace_size(batch, cfg), out, "fopru"), single_result(device_result));
}

}  // namespace fopru
// ---- fopru fed from Q/K (statistics computed tile by tile: stats/qk_statistics.cuh) ----
//
// Computes the statistic the method reads into its workspace (after the method's own buffers,
// which start at offset 0 with the status word) and runs the method's device stages on it.

namespace fopru {
TOKENSEL_CUDA_BEGIN_DETAIL

/// The patch window of a FoPru source (CLS skipped unless cfg.skip_cls is false); the CPU's
/// checks in its order (check_shape).
struct patch_window {
  const config* cfg;
  index_t capacity;
  template <element T>
  window_desc shape(const qk_source<T>& src) const {
    return check_shape(src.rows().count, src.cols().count, src.heads(), *cfg, capacity);
  }
  template <element T>
  tokensel::cuda_detail::qk_desc operator()(index_t, const qk_source<T>& src) const {
    const window_desc w = shape(src);
    const auto sub = restrict_tokens(src, token_range{src.rows().count - w.rows, w.rows});
    return tokensel::cuda_detail::describe(sub, sub.rows(), sub.cols(), w.rows, "fopru");
  }
};

struct qk_buffers {
  buffers w;
  tokensel::cuda_detail::qk_engine e;
};

/// FoPru's vectors (no map) and the engine.
inline qk_buffers qk_layout(workspace_plan& plan, const tokensel::cuda_detail::qk_shape& s) {
  qk_buffers r;
  const auto B = count_of({s.batch}), n = count_of({s.cols});
  r.w.status = plan.status();
  r.w.vec = static_cast<long long>(s.cols);
  r.w.skip = plan.take<int>(B);
  r.w.s1 = plan.take<float>(B * n);
  r.w.s2 = plan.take<float>(B * n);
  r.w.sig = plan.take<float>(B * n);
  r.w.rowscore = plan.take<float>(B * n);
  r.w.rank = plan.take<int>(B * n);
  r.e = tokensel::cuda_detail::qk_layout(plan, s, true, true, 1);
  return r;
}

template <element T>
std::size_t qk_bytes(const tokensel::cuda_detail::qk_ref<T>& src, const config& cfg) {
  validate(cfg);
  workspace_plan plan;
  (void)qk_layout(plan, shape_of(src, patch_window{&cfg, INT_MAX}));
  return plan.bytes();
}

template <element T>
void qk_run(const cuda_policy& policy, const tokensel::cuda_detail::qk_ref<T>& src, const config& cfg,
            const selection_batch& out, std::span<result> results) {
  using namespace tokensel::cuda_detail;
  src.check("fopru");
  const index_t B = src.size();
  check_outputs(out, results, B, "fopru");
  if (B > 0) validate(cfg);
  const patch_window desc{&cfg, out.indices.extent(1)};
  const qk_shape shape = shape_of(src, desc);
  workspace_plan plan(policy);
  const qk_buffers r = qk_layout(plan, shape);
  plan.require("fopru");
  if (B == 0) return;
  cudaStream_t stream = policy.stream;
  reset_status(r.w.status, stream);
  check(cudaMemsetAsync(r.w.skip, 0, static_cast<std::size_t>(B) * sizeof(int), stream), "cudaMemsetAsync(skip)");
  // Row and column sums of the head-reduced patch map; the axis stage divides by n and checks
  // them (a NaN/Inf in Q/K reaches it as a non-finite mean).
  qk_outputs o;
  o.op = cfg.heads;
  qk_finals f;
  f.row_sums = r.w.s1;
  f.row_b = r.w.vec;
  f.col_a = r.w.s2;
  f.col_bs = r.w.vec;
  run_qk(src, desc, r.e, o, f, stream);
  const auto tables = make_tables(B, src.uniform(), 0, [&](index_t b) { return desc.shape(src[b]); });
  finish(tables, r.w, cfg, out, results, stream);
}

TOKENSEL_CUDA_END_DETAIL  // cuda_detail

/// Workspace bytes of select(cuda_policy, qk sources, cfg, ...).
template <element T>
[[nodiscard]] std::size_t workspace_size(const qk_batch<T>& src, const config& cfg) {
  return cuda_detail::qk_bytes(tokensel::cuda_detail::qk_ref<T>(src), cfg);
}
template <element T>
[[nodiscard]] std::size_t workspace_size(std::span<const qk_source<T>> src, const config& cfg) {
  return cuda_detail::qk_bytes(tokensel::cuda_detail::qk_ref<T>(src), cfg);
}

/// FoPru from Q/K (queries and keys of the same N tokens): row and column sums of the head-reduced
/// patch map from the tiles, then the axis and selection stages of select(view). Same indices as
/// the view path except at near-ties (the sums agree to ~1e-6 relative, not bit for bit).
template <element T>
void select(const cuda_policy& policy, const qk_batch<T>& src, const config& cfg, const selection_batch& out,
            std::span<result> results = {}) {
  cuda_detail::qk_run(policy, tokensel::cuda_detail::qk_ref<T>(src), cfg, out, results);
}
template <element T>
void select(const cuda_policy& policy, std::span<const qk_source<T>> src, const config& cfg, const selection_batch& out,
            std::span<result> results = {}) {
  cuda_detail::qk_run(policy, tokensel::cuda_detail::qk_ref<T>(src), cfg, out, results);
}

}  // namespace fopru

TOKENSEL_END_NAMESPACE
