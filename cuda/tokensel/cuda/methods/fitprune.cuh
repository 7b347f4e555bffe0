// tokensel CUDA backend: FitPrune's runtime step (spec section 4), batched: at a layer with drop
// count k_l, drop the k_l visual tokens with the smallest a_c * a_s. Same kept sets and masses as
// fitprune::prune_layer of the CPU backend (tokensel/fitprune.hpp, tokensel/region_mass.hpp).
// Calibration (FIT) stays on the CPU: it runs once, offline, on small statistics.
//
// Stages: reduce_rows over rows [s0, L) and the visual columns (head max by default; M and the
// canonical row totals; finiteness), column_sums split at the visual/text boundary
// (a_s = visual-row chain / n, a_c = text-row chain, score = a_c * a_s), rank (bottom-k rule),
// compact (kept = the complement, ascending; Ws and Wc from the row totals in canonical order).
// A sample whose drop count is 0 reads no attention at all (as the CPU).
#pragma once

#include <algorithm>
#include <cstddef>
#include <span>
#include <string>

#include "tokensel/cuda/core/abi.cuh"
#include "tokensel/core/batch.hpp"
#include "tokensel/core/config.hpp"
#include "tokensel/cuda/detail/arith.cuh"
#include "tokensel/cuda/detail/batch.cuh"
#include "tokensel/cuda/detail/launch.cuh"
#include "tokensel/cuda/detail/single.cuh"
#include "tokensel/cuda/stats/detail/map_kernels.cuh"
#include "tokensel/cuda/select/detail/select_kernels.cuh"
#include "tokensel/cuda/core/element.cuh"
#include "tokensel/cuda/core/error.cuh"
#include "tokensel/cuda/select/detail/rank_kernels.cuh"
#include "tokensel/cuda/core/policy.cuh"
#include "tokensel/cuda/core/workspace.cuh"
#include "tokensel/methods/fitprune.hpp"
#include "tokensel/stats/region_mass.hpp"

TOKENSEL_BEGIN_NAMESPACE
namespace fitprune {
TOKENSEL_CUDA_BEGIN_DETAIL

using namespace tokensel::cuda_detail;

struct buffers {
  device_status* status = nullptr;
  int* skip = nullptr;
  float* map = nullptr;     // [rows_max, n_max] per sample (leading dimension n of the sample)
  float* totals = nullptr;  // [rows_max] per sample: visual rows, then text rows
  float* score = nullptr;   // [n_max]
  int* rank = nullptr;      // [n_max]
  long long vec = 0, rows_vec = 0, map_stride = 0;
};

inline buffers layout(workspace_plan& plan, index_t batch, index_t n_max, index_t rows_max) {
  buffers w;
  const auto B = static_cast<std::size_t>(batch);
  w.status = plan.status();
  w.vec = static_cast<long long>(n_max);
  w.rows_vec = static_cast<long long>(rows_max);
  w.map_stride = static_cast<long long>(rows_max) * static_cast<long long>(n_max);
  w.skip = plan.take<int>(B);
  w.map = plan.take<float>(count_of({batch, rows_max, n_max}));
  w.totals = plan.take<float>(B * static_cast<std::size_t>(rows_max));
  w.score = plan.take<float>(B * static_cast<std::size_t>(n_max));
  w.rank = plan.take<int>(B * static_cast<std::size_t>(n_max));
  return w;
}

/// CPU checks of one sample in order (prune_layer, then region_mass). Window: rows [s0, L) (none
/// when drop = 0) x visual columns; p0 = drop, p1 = text rows.
template <class T>
window_desc check_sample(const tensor_view<const T, 3>& attention, const token_range& visual, index_t drop,
                         index_t capacity) {
  tokensel::detail::check_llm_attention(attention.extent(1), attention.extent(2), visual, "fitprune");
  const index_t n = visual.count;
  tokensel::detail::check_count(drop, n, "fitprune.drop");
  tokensel::detail::check_capacity(static_cast<std::size_t>(capacity), n - drop, "fitprune.kept.size()");
  const index_t L = attention.extent(1), text = L - visual.end();
  if (drop > 0) tokensel::detail::check_heads_present(attention.extent(0), L, L);
  window_desc w = window_of(attention, visual.begin, drop > 0 ? n + text : 0, visual.begin, n);
  w.cols = static_cast<int>(n);
  w.p0 = static_cast<int>(drop);
  w.p1 = static_cast<int>(text);
  return w;
}

/// a_s = visual chain / n, a_c = text chain, score = a_c * a_s (region_mass + prune_layer).
struct score_epilogue {
  float* score;
  long long vec;
  device_status* status;
  int* skip;
  __device__ int split(const window_desc& d) const { return d.cols; }
  __device__ void operator()(int b, const window_desc& d, int j, float self_sum, float cross) const {
    const float self = fdiv(self_sum, static_cast<float>(d.cols));
    const float s = fmul(cross, self);
    score[b * vec + j] = s;
    if (!finite_f32(s)) {
      record(status, status_site::scores, 0, static_cast<unsigned>(b), static_cast<unsigned>(j));
      skip[b] = 1;
    }
  }
};

struct drop_ranker {
  using key_type = float;
  const float* score;
  int* rank;
  long long vec;
  const int* skip;
  __device__ bool active(int b, const window_desc& d) const { return skip[b] == 0 && d.p0 > 0; }
  __host__ __device__ static int size(const window_desc& d) { return d.cols; }
  __device__ bool eligible(int, const window_desc&, int) const { return true; }
  __device__ float key(int b, const window_desc&, int i) const { return score[b * vec + i]; }
  __device__ static bool beats(float kj, int j, float ki, int i) { return beats_low(kj, j, ki, i); }
  __device__ void write(int b, const window_desc&, int i, int r) const { rank[b * vec + i] = r; }
};

struct keep_compactor {
  const int* rank;
  const float* totals;
  long long vec, rows_vec;
  const int* skip;
  token_index* out;
  long long out_stride;
  token_index* counts;
  layer_result* results;
  __device__ bool active(int b, const window_desc&) const { return skip[b] == 0; }
  __device__ void inactive(int b, const window_desc&) const {
    counts[b] = 0;
    if (results != nullptr) results[b].count = 0;
  }
  __host__ __device__ static int size(const window_desc& d) { return d.cols; }
  __device__ bool selected(int b, const window_desc& d, int i) const { return d.p0 == 0 || rank[b * vec + i] >= d.p0; }
  __device__ void emit(int b, const window_desc&, int pos, int i) const { out[b * out_stride + pos] = i; }
  __device__ void finish(int b, const window_desc& d, int count) const {
    counts[b] = count;
    if (results == nullptr) return;
    layer_result& r = results[b];
    r.count = count;
    r.dropped = d.p0;
    r.cross_mass = 0.0f;
    r.self_mass = 0.0f;
    if (d.p0 > 0) {
      const float* t = totals + b * rows_vec;
      r.self_mass = fdiv(canonical_sum_serial(t, d.cols), static_cast<float>(d.cols));
      if (d.p1 > 0) r.cross_mass = fdiv(canonical_sum_serial(t + d.cols, d.p1), static_cast<float>(d.p1));
    }
  }
};

template <class T>
void run(const cuda_policy& policy, const batch_ref<T>& batch, std::span<const token_range> visual,
         std::span<const index_t> drops, const config& cfg, const selection_batch& out,
         std::span<layer_result> results) {
  const index_t B = batch.size();
  check_outputs(out, results, B, "fitprune");
  if (B > 0) validate(cfg);
  const index_t capacity = out.indices.extent(1);
  auto visual_of = [&](index_t b) -> const token_range& { return visual.size() == 1 ? visual[0] : visual[static_cast<std::size_t>(b)]; };
  auto drop_of = [&](index_t b) { return drops.size() == 1 ? drops[0] : drops[static_cast<std::size_t>(b)]; };
  index_t n_max = 0, rows_max = 0;
  for (index_t b = 0; b < batch.distinct(); ++b) {
    const auto a = batch[b];
    (void)check_sample(a, visual_of(b), drop_of(b), capacity);
    n_max = std::max(n_max, visual_of(b).count);
    if (drop_of(b) > 0) rows_max = std::max(rows_max, a.extent(1) - visual_of(b).begin);
  }
  workspace_plan plan(policy);
  const buffers w = layout(plan, B, n_max, rows_max);
  plan.require("fitprune");
  if (B == 0) return;
  cudaStream_t stream = policy.stream;
  using D = device_type_t<T>;
  reset_status(w.status, stream);
  check(cudaMemsetAsync(w.skip, 0, static_cast<std::size_t>(B) * sizeof(int), stream), "cudaMemsetAsync(skip)");
  const auto tables = batch.tables([&](index_t b, const tensor_view<const T, 3>& a) {
    return check_sample(a, visual_of(b), drop_of(b), capacity);
  });
  tokensel::cuda_detail::rows_args ra;
  ra.op = cfg.heads;
  ra.map = w.map;
  ra.map_stride = w.map_stride;
  ra.row_sums = w.totals;
  ra.vec_stride = w.rows_vec;
  ra.skip = w.skip;
  ra.status = w.status;
  ra.site = status_site::reduced_map;
  launch_reduce_rows<D>(tables, ra, stream);
  cols_args ca;
  ca.map = w.map;
  ca.map_stride = w.map_stride;
  ca.skip = w.skip;
  launch_column_sums(tables, ca, score_epilogue{w.score, w.vec, w.status, w.skip}, stream);
  launch_rank(tables, drop_ranker{w.score, w.rank, w.vec, w.skip}, stream);
  launch_compact(tables,
                 keep_compactor{w.rank, w.totals, w.vec, w.rows_vec, w.skip, out_rows(out), out_stride(out),
                                out.counts.data(), results.empty() ? nullptr : results.data()},
                 stream);
}

template <class T>
std::size_t bytes_for(const batch_ref<T>& batch, std::span<const token_range> visual, std::span<const index_t> drops) {
  index_t n_max = 0, rows_max = 0;
  for (index_t b = 0; b < batch.distinct(); ++b) {
    const token_range& v = visual.size() == 1 ? visual[0] : visual[static_cast<std::size_t>(b)];
    const index_t drop = drops.size() == 1 ? drops[0] : drops[static_cast<std::size_t>(b)];
    n_max = std::max(n_max, v.count);
    if (drop > 0) rows_max = std::max(rows_max, batch[b].extent(1) - v.begin);
  }
  workspace_plan plan;
  (void)layout(plan, batch.size(), n_max, rows_max);
  return plan.bytes();
}

inline void check_ragged_sizes(std::size_t batch, std::size_t visual, std::size_t drops) {
  if (visual != batch) {
    tokensel::detail::fail(errc::shape_mismatch, "fitprune.visual.size()", visual, "must equal the batch size " + std::to_string(batch));
  }
  if (drops != batch) {
    tokensel::detail::fail(errc::shape_mismatch, "fitprune.drops.size()", drops, "must equal the batch size " + std::to_string(batch));
  }
}

TOKENSEL_CUDA_END_DETAIL  // cuda_detail

/// Workspace bytes of prune_layer(cuda_policy, batch, visual, drop, ...).
template <cuda_element T>
[[nodiscard]] std::size_t workspace_size(const attention_view<T>& batch, const token_range& visual, index_t drop) {
  return cuda_detail::bytes_for(tokensel::cuda_detail::batch_ref<T>(batch), std::span<const token_range>(&visual, 1),
                                std::span<const index_t>(&drop, 1));
}
template <cuda_element T>
[[nodiscard]] std::size_t workspace_size(std::span<const head_attention_view<T>> batch, std::span<const token_range> visual,
                           std::span<const index_t> drops) {
  cuda_detail::check_ragged_sizes(batch.size(), visual.size(), drops.size());
  return cuda_detail::bytes_for(tokensel::cuda_detail::batch_ref<T>(batch), visual, drops);
}

/// Batch [batch, heads, L, L] on the device sharing one visual span and drop count: sample b
/// writes the n - drop kept visual indices (ascending, into the current visual set) into
/// out.indices(b, :); results (device, optional) get the layer statistics.
template <cuda_element T>
void prune_layer(const cuda_policy& policy, const attention_view<T>& batch, const token_range& visual, index_t drop,
                 const config& cfg, const selection_batch& out, std::span<layer_result> results = {}) {
  cuda_detail::run(policy, tokensel::cuda_detail::batch_ref<T>(batch), std::span<const token_range>(&visual, 1),
                   std::span<const index_t>(&drop, 1), cfg, out, results);
}

/// Ragged batch: per-sample attention, visual span and drop count.
template <cuda_element T>
void prune_layer(const cuda_policy& policy, std::span<const head_attention_view<T>> batch,
                 std::span<const token_range> visual, std::span<const index_t> drops, const config& cfg,
                 const selection_batch& out, std::span<layer_result> results = {}) {
  cuda_detail::check_ragged_sizes(batch.size(), visual.size(), drops.size());
  cuda_detail::run(policy, tokensel::cuda_detail::batch_ref<T>(batch), visual, drops, cfg, out, results);
}

/// Workspace bytes of the single-sample prune_layer (the batch-of-1 layout plus the count slot).
template <cuda_element T>
[[nodiscard]] std::size_t workspace_size(const head_attention_view<T>& attention, const token_range& visual, index_t drop) {
  using namespace tokensel::cuda_detail;
  return single_bytes(workspace_size(one(attention), one(visual), one(drop)));
}

/// One sample [heads, L, L] on the device: the CPU's single-sample prune_layer. out (device
/// memory, >= n - drop) gets the kept visual indices; *device_result (device memory, optional)
/// the layer statistics and the count. Runs the batch-of-1 call, so the results are its results.
template <cuda_element T>
void prune_layer(const cuda_policy& policy, const head_attention_view<T>& attention, const token_range& visual,
                 index_t drop, const config& cfg, std::span<token_index> out, layer_result* device_result = nullptr) {
  using namespace tokensel::cuda_detail;
  const auto batch = one(attention);
  prune_layer(policy, batch, one(visual), one(drop), cfg,
              single_output(policy, workspace_size(batch, one(visual), one(drop)), out, "fitprune"),
              single_result(device_result));
}

}  // namespace fitprune
TOKENSEL_END_NAMESPACE
