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

#include "tokensel/core/batch.hpp"
#include "tokensel/core/config.hpp"
#include "tokensel/cuda/detail/arith.cuh"
#include "tokensel/cuda/detail/batch.cuh"
#include "tokensel/cuda/detail/launch.cuh"
#include "tokensel/cuda/detail/single.cuh"
#include "tokensel/cuda/detail/map_kernels.cuh"
#include "tokensel/cuda/detail/select_kernels.cuh"
#include "tokensel/cuda/element.cuh"
#include "tokensel/cuda/error.cuh"
#include "tokensel/cuda/policy.cuh"
#include "tokensel/cuda/workspace.cuh"
#include "tokensel/methods/fopru.hpp"

TOKENSEL_BEGIN_NAMESPACE

namespace cuda_detail {

/// Column-sum epilogue that stores the plain sum.
struct store_column_sum {
  float* out;
  long long stride;
  __device__ int split(const window_desc& d) const { return d.rows; }
  __device__ void operator()(int b, const window_desc&, int j, float a, float) const { out[b * stride + j] = a; }
};

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

}  // namespace cuda_detail

namespace fopru {
namespace cuda_detail {

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

/// Writes the variance-axis statistics of sample b (FoPru's result or variance_axis_result).
struct axis_writer {
  result* fopru = nullptr;
  variance_axis_result* plain = nullptr;
  __device__ void operator()(int b, bool rows_win, double rv, double cv, int rows_kept) const {
    const significance_axis axis = rows_win ? significance_axis::row_mean : significance_axis::column_mean;
    if (fopru != nullptr) {
      fopru[b].axis = axis;
      fopru[b].row_variance = rv;
      fopru[b].column_variance = cv;
      fopru[b].rows_kept = rows_kept;
    }
    if (plain != nullptr) {
      plain[b].axis = axis;
      plain[b].row_variance = rv;
      plain[b].column_variance = cv;
    }
  }
};

struct axis_args {
  float* s1;
  float* s2;
  float* sig;
  long long vec;
  int* skip;
  device_status* status;
  axis_writer out;
};

inline constexpr int axis_block = 256;

/// One block per sample: means, finiteness, the two variances (one thread each, concurrently in
/// different warps), the winning vector into sig.
template <int Dummy = 0>
__global__ void __launch_bounds__(axis_block) axis_kernel(const sample_table t, const axis_args a) {
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
  result* results;
  row_reduction op;
};

inline constexpr int rows_block = 256;

/// Row strategy for one sample per block: row scores (canonical sums of Sig over a grid row, one
/// warp per row), top rows_kept rows by rank counting, their tokens in ascending order.
template <int Dummy = 0>
__global__ void __launch_bounds__(rows_block) rows_kernel(const sample_table t, const row_strategy_args a) {
  const int s = static_cast<int>(blockIdx.x);
  if (s >= t.count) return;
  const window_desc d = t.get(s);
  const int b = t.first + s;
  const int tid = static_cast<int>(threadIdx.x), warp = tid >> 5, lane = tid & 31;
  auto finish = [&](int count) {
    a.counts[b] = count;
    if (a.results != nullptr) a.results[b].count = count;
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

/// Stages 3 and 4 (axis, selection) from the row sums in w.s1 and column sums in w.s2 (sample b
/// at b * w.vec); also the tail of the Q/K path (qk_statistics.cuh).
template <class Tables>
void finish(const Tables& tables, const buffers& w, const config& cfg, const selection_batch& out,
            std::span<result> results, cudaStream_t stream) {
  const axis_args aa{w.s1, w.s2, w.sig, w.vec, w.skip, w.status, axis_writer{results.empty() ? nullptr : results.data(), nullptr}};
  tables.each([&](const sample_table& t) {
    axis_kernel<><<<static_cast<unsigned>(t.count), axis_block, 0, stream>>>(t, aa);
    check_launch("fopru_axis");
  });

  if (cfg.strategy == strategy::rank) {
    launch_rank(tables, score_ranker<true>{w.sig, w.vec, w.rank, w.skip}, stream);
    launch_compact(tables,
                   rank_compactor{w.rank, w.vec, w.skip, out_rows(out), out_stride(out), out.counts.data(),
                                  results.empty() ? nullptr : results.data()},
                   stream);
  } else {
    const row_strategy_args rg{w.sig,           w.rowscore,         w.rank,           w.vec,
                       w.skip,          w.status,           out_rows(out),    out_stride(out),
                       out.counts.data(), results.empty() ? nullptr : results.data(), cfg.row_score};
    tables.each([&](const sample_table& t) {
      rows_kernel<><<<static_cast<unsigned>(t.count), rows_block, 0, stream>>>(t, rg);
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

}  // namespace cuda_detail

/// Workspace bytes select(cuda_policy, batch, cfg, ...) needs (pure host arithmetic on shapes).
template <cuda_element T>
std::size_t workspace_size(const attention_view<T>& batch, const config& cfg) {
  return cuda_detail::workspace_bytes(tokensel::cuda_detail::batch_ref<T>(batch), cfg);
}
template <cuda_element T>
std::size_t workspace_size(std::span<const head_attention_view<T>> batch, const config& cfg) {
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
std::size_t workspace_size(const head_attention_view<T>& attention, const config& cfg) {
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
TOKENSEL_END_NAMESPACE
