// tokensel CUDA backend: FastV (spec section 5), batched. Same selection and statistics as
// fastv::select of the CPU backend (tokensel/fastv.hpp).
//
// Stages: reduce_rows on the last query row over the visual columns (scores, their canonical sum
// = visual mass, finiteness), rank (top-k rule), compact (ascending indices; kept mass summed in
// ascending kept order by one thread, as the CPU).
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
#include "tokensel/methods/fastv.hpp"
#include "tokensel/cuda/stats/qk_statistics.cuh"

TOKENSEL_BEGIN_NAMESPACE
namespace fastv {
TOKENSEL_CUDA_BEGIN_DETAIL

using namespace tokensel::cuda_detail;

struct buffers {
  device_status* status = nullptr;
  int* skip = nullptr;
  float* scores = nullptr;
  float* visual_mass = nullptr;
  int* rank = nullptr;
  long long vec = 0;
};

inline buffers layout(workspace_plan& plan, index_t batch, index_t n_max) {
  buffers w;
  const auto B = count_of({batch}), n = count_of({n_max});
  w.status = plan.status();
  w.vec = static_cast<long long>(n_max);
  w.skip = plan.take<int>(B);
  w.scores = plan.take<float>(B * n);
  w.visual_mass = plan.take<float>(B);
  w.rank = plan.take<int>(B * n);
  return w;
}

/// CPU checks of one sample in order; the window is the last query row over the visual columns;
/// p0 = keep count.
template <class T>
window_desc check_sample(const tensor_view<const T, 3>& attention, const token_range& visual, const config& cfg,
                         index_t capacity) {
  const index_t heads = attention.extent(0), queries = attention.extent(1);
  check_range(visual, attention.extent(2), "fastv.visual");
  const index_t n = visual.count;
  const index_t k = keep_count(n, cfg);
  tokensel::detail::check_capacity(static_cast<std::size_t>(capacity), k, "fastv.out.size()");
  window_desc w;
  w.p0 = static_cast<int>(k);
  if (n == 0) return w;
  if (queries < 1) tokensel::detail::fail(errc::shape_mismatch, "fastv.attention.extent(1)", queries, "needs the last query row");
  tokensel::detail::check_heads_present(heads, queries, n);
  w = window_of(attention, queries - 1, 1, visual.begin, n);
  w.p0 = static_cast<int>(k);
  return w;
}

struct compactor {
  const int* rank;
  const float* scores;
  const float* visual_mass;
  long long vec;
  const int* skip;
  token_index* out;
  long long out_stride;
  token_index* counts;
  result* results;
  __device__ bool active(int b, const window_desc&) const { return skip[b] == 0; }
  __device__ void inactive(int b, const window_desc&) const {
    counts[b] = 0;
    if (results != nullptr) {
      results[b].count = 0;
      results[b].visual_mass = 0.0f;
      results[b].kept_mass = 0.0f;
    }
  }
  __host__ __device__ static int size(const window_desc& d) { return d.cols; }
  __device__ bool selected(int b, const window_desc& d, int i) const { return rank[b * vec + i] < d.p0; }
  __device__ void emit(int b, const window_desc&, int pos, int i) const { out[b * out_stride + pos] = i; }
  __device__ void finish(int b, const window_desc& d, int count) const {
    counts[b] = count;
    if (results == nullptr) return;
    const float* s = scores + b * vec;
    const token_index* kept = out + b * out_stride;
    float kept_mass = 0.0f;
    for (int i = 0; i < count; ++i) kept_mass = fadd(kept_mass, s[kept[i]]);
    results[b].count = count;
    results[b].visual_mass = d.cols > 0 ? visual_mass[b] : 0.0f;
    results[b].kept_mass = kept_mass;
  }
};

template <class T>
index_t n_max_of(const batch_ref<T>&, std::span<const token_range> visual) {
  index_t m = 0;
  for (const auto& v : visual) m = std::max(m, v.count);
  return m;
}

/// visual: one range (4-D batch) or one per sample (ragged).
template <class T>
void run(const cuda_policy& policy, const batch_ref<T>& batch, std::span<const token_range> visual, const config& cfg,
         const selection_batch& out, std::span<result> results) {
  const index_t B = batch.size();
  check_outputs(out, results, B, "fastv");
  if (B > 0) validate(cfg);
  const index_t capacity = out.indices.extent(1);
  auto visual_of = [&](index_t b) -> const token_range& { return visual.size() == 1 ? visual[0] : visual[static_cast<std::size_t>(b)]; };
  for (index_t b = 0; b < batch.distinct(); ++b) (void)check_sample(batch[b], visual_of(b), cfg, capacity);
  workspace_plan plan(policy);
  const buffers w = layout(plan, B, n_max_of(batch, visual));
  plan.require("fastv");
  if (B == 0) return;
  cudaStream_t stream = policy.stream;
  using D = device_type_t<T>;
  reset_status(w.status, stream);
  check(cudaMemsetAsync(w.skip, 0, static_cast<std::size_t>(B) * sizeof(int), stream), "cudaMemsetAsync(skip)");
  const auto tables = batch.tables(
      [&](index_t b, const tensor_view<const T, 3>& a) { return check_sample(a, visual_of(b), cfg, capacity); });
  tokensel::cuda_detail::rows_args ra;
  ra.op = cfg.heads;
  ra.map = w.scores;
  ra.map_stride = w.vec;
  ra.row_sums = w.visual_mass;
  ra.vec_stride = 1;
  ra.skip = w.skip;
  ra.status = w.status;
  ra.site = status_site::reduced_map;
  launch_reduce_rows<D>(tables, ra, stream);
  launch_rank(tables, score_ranker<true>{w.scores, w.vec, w.rank, w.skip}, stream);
  launch_compact(tables,
                 compactor{w.rank, w.scores, w.visual_mass, w.vec, w.skip, out_rows(out), out_stride(out),
                           out.counts.data(), results.empty() ? nullptr : results.data()},
                 stream);
}

TOKENSEL_CUDA_END_DETAIL  // cuda_detail

/// Workspace bytes of select(cuda_policy, batch, visual, cfg, ...).
template <cuda_element T>
[[nodiscard]] std::size_t workspace_size(const attention_view<T>& batch, const token_range& visual, const config& cfg) {
  validate(cfg);
  tokensel::cuda_detail::workspace_plan plan;
  (void)cuda_detail::layout(plan, batch.extent(0), std::max<index_t>(visual.count, 0));
  return plan.bytes();
}
template <cuda_element T>
[[nodiscard]] std::size_t workspace_size(std::span<const head_attention_view<T>> batch, std::span<const token_range> visual,
                           const config& cfg) {
  validate(cfg);
  index_t n_max = 0;
  for (const auto& v : visual) n_max = std::max(n_max, v.count);
  tokensel::cuda_detail::workspace_plan plan;
  (void)cuda_detail::layout(plan, static_cast<index_t>(batch.size()), n_max);
  return plan.bytes();
}

/// Batch [batch, heads, q, L] on the device sharing one visual span: sample b keeps
/// keep_count(n) tokens (ascending) in out.indices(b, :); results (device, optional).
template <cuda_element T>
void select(const cuda_policy& policy, const attention_view<T>& batch, const token_range& visual, const config& cfg,
            const selection_batch& out, std::span<result> results = {}) {
  cuda_detail::run(policy, tokensel::cuda_detail::batch_ref<T>(batch), std::span<const token_range>(&visual, 1), cfg, out,
                   results);
}

/// Ragged batch: one [heads, q_b, L_b] device view and one visual span per sample.
template <cuda_element T>
void select(const cuda_policy& policy, std::span<const head_attention_view<T>> batch, std::span<const token_range> visual,
            const config& cfg, const selection_batch& out, std::span<result> results = {}) {
  if (visual.size() != batch.size()) {
    tokensel::detail::fail(errc::shape_mismatch, "fastv.visual.size()", visual.size(),
                           "must equal the batch size " + std::to_string(batch.size()));
  }
  cuda_detail::run(policy, tokensel::cuda_detail::batch_ref<T>(batch), visual, cfg, out, results);
}

/// Workspace bytes of the single-sample select (the batch-of-1 layout plus the count slot).
template <cuda_element T>
[[nodiscard]] std::size_t workspace_size(const head_attention_view<T>& attention, const token_range& visual, const config& cfg) {
  using namespace tokensel::cuda_detail;
  return single_bytes(workspace_size(one(attention), one(visual), cfg));
}

/// One sample [heads, q, L] on the device: the CPU's single-sample select. out (device memory,
/// >= keep_count) gets the indices; *device_result (device memory, optional) the statistics and
/// the count. Runs the batch-of-1 select, so the results are those of the batched call.
template <cuda_element T>
void select(const cuda_policy& policy, const head_attention_view<T>& attention, const token_range& visual,
            const config& cfg, std::span<token_index> out, result* device_result = nullptr) {
  using namespace tokensel::cuda_detail;
  const auto batch = one(attention);
  select(policy, batch, one(visual), cfg, single_output(policy, workspace_size(batch, one(visual), cfg), out, "fastv"),
         single_result(device_result));
}

}  // namespace fastv
// ---- fastv fed from Q/K (statistics computed tile by tile: stats/qk_statistics.cuh) ----
//
// Computes the statistic the method reads into its workspace (after the method's own buffers,
// which start at offset 0 with the status word) and runs the method's device stages on it.

namespace fastv {
TOKENSEL_CUDA_BEGIN_DETAIL

/// Rows of the reduced last rows: [batch, n_max]. desc(b, source) of the last row over visual.
struct last_row {
  std::span<const token_range> visual;
  template <element T>
  tokensel::cuda_detail::qk_desc operator()(index_t b, const qk_source<T>& src) const {
    const token_range& v = visual.size() == 1 ? visual[0] : visual[static_cast<std::size_t>(b)];
    const index_t queries = src.rows().count;
    check_range(v, src.cols().count, "fastv.visual");
    if (v.count > 0 && queries < 1) tokensel::detail::fail(errc::shape_mismatch, "fastv.attention.extent(1)", queries, "needs the last query row");
    const auto window = restrict_window(src, token_range::all(queries), v);
    return tokensel::cuda_detail::describe(window, {window.rows().begin + queries - 1, queries > 0 ? 1 : 0}, window.cols(), 1, "fastv");
  }
};

inline void check_visual(index_t batch, bool uniform, std::span<const token_range> visual) {
  if (uniform ? visual.size() != 1 : static_cast<index_t>(visual.size()) != batch) {
    tokensel::detail::fail(errc::shape_mismatch, "fastv.visual.size()", visual.size(), "must equal the batch size " + std::to_string(batch));
  }
}

template <element T>
std::size_t qk_bytes(const tokensel::cuda_detail::qk_ref<T>& src, std::span<const token_range> visual, const config& cfg) {
  using namespace tokensel::cuda_detail;
  check_visual(src.size(), src.uniform(), visual);
  validate(cfg);
  const qk_shape shape = shape_of(src, last_row{visual});
  workspace_plan plan;
  reserve_method(plan, [&] {
    workspace_plan m;
    (void)layout(m, shape.batch, shape.cols);
    return m.bytes();
  }());
  (void)plan.take<float>(count_of({shape.batch, shape.cols}));
  (void)qk_layout(plan, shape, false, false, 1);
  return plan.bytes();
}

template <element T>
void qk_run(const cuda_policy& policy, const tokensel::cuda_detail::qk_ref<T>& src, std::span<const token_range> visual,
            const config& cfg, const selection_batch& out, std::span<result> results) {
  using namespace tokensel::cuda_detail;
  src.check("fastv");
  const index_t B = src.size();
  check_visual(B, src.uniform(), visual);
  check_outputs(out, results, B, "fastv");
  if (B > 0) validate(cfg);
  const last_row desc{visual};
  const qk_shape shape = shape_of(src, desc);
  for (index_t b = 0; b < src.distinct(); ++b) {
    const index_t n = (visual.size() == 1 ? visual[0] : visual[static_cast<std::size_t>(b)]).count;
    tokensel::detail::check_capacity(static_cast<std::size_t>(out.indices.extent(1)), keep_count(n, cfg), "fastv.out.size()");
  }
  workspace_plan plan(policy);
  workspace_plan method;
  (void)layout(method, B, shape.cols);
  reserve_method(plan, method.bytes());
  const long long n_max = static_cast<long long>(shape.cols);
  float* scores = plan.take<float>(count_of({B, shape.cols}));
  plan.require("fastv");
  if (B == 0) return;
  rows_batch(policy, plan, src, desc, cfg.heads, scores, n_max, n_max, false);
  if (src.uniform()) {
    const index_t n = visual[0].count;
    const attention_view<float> rows(scores, {B, 1, 1, n}, {n_max, n_max, n_max, 1});
    fastv::select(policy, rows, token_range::all(n), cfg, out, results);
    return;
  }
  std::vector<head_attention_view<float>> views;
  std::vector<token_range> all;
  views.reserve(static_cast<std::size_t>(B));
  all.reserve(static_cast<std::size_t>(B));
  for (index_t b = 0; b < B; ++b) {
    const index_t n = visual[static_cast<std::size_t>(b)].count;
    views.emplace_back(scores + b * n_max, head_attention_view<float>::extents_type{1, 1, n});
    all.push_back(token_range::all(n));
  }
  fastv::select(policy, std::span<const head_attention_view<float>>(views), std::span<const token_range>(all), cfg, out, results);
}

TOKENSEL_CUDA_END_DETAIL  // cuda_detail

/// Workspace bytes of select(cuda_policy, qk_batch, visual, cfg, ...).
template <element T>
[[nodiscard]] std::size_t workspace_size(const qk_batch<T>& src, const token_range& visual, const config& cfg) {
  return cuda_detail::qk_bytes(tokensel::cuda_detail::qk_ref<T>(src), std::span<const token_range>(&visual, 1), cfg);
}
template <element T>
[[nodiscard]] std::size_t workspace_size(std::span<const qk_source<T>> src, std::span<const token_range> visual, const config& cfg) {
  return cuda_detail::qk_bytes(tokensel::cuda_detail::qk_ref<T>(src), visual, cfg);
}

/// FastV from the Q/K of layer K-1 (set causal for a prefill; queries may be the last token only,
/// [heads, 1, d]): the reduced last query row over the visual columns, then the usual stages.
template <element T>
void select(const cuda_policy& policy, const qk_batch<T>& src, const token_range& visual, const config& cfg,
            const selection_batch& out, std::span<result> results = {}) {
  cuda_detail::qk_run(policy, tokensel::cuda_detail::qk_ref<T>(src), std::span<const token_range>(&visual, 1), cfg, out, results);
}
template <element T>
void select(const cuda_policy& policy, std::span<const qk_source<T>> src, std::span<const token_range> visual,
            const config& cfg, const selection_batch& out, std::span<result> results = {}) {
  cuda_detail::qk_run(policy, tokensel::cuda_detail::qk_ref<T>(src), visual, cfg, out, results);
}

}  // namespace fastv

TOKENSEL_END_NAMESPACE
