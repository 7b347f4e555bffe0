// tokensel CUDA backend: VisPruner (include/tokensel/methods/vispruner.hpp, docs/vispruner.md) on
// the device, from the attention view of the feature layer (materialised [heads, N, N] or the CLS
// row [heads, 1, N]). Same kept indices and statistics as vispruner::select of the CPU backend,
// bit for bit: the CLS score is head_reduction::mean's arithmetic (head 0, then the other heads
// added in order, divided by the head count), the unit rows, cosines, round sizes and tie rules
// are the shared definitions (methods/detail/feature_rules.hpp, detail/arith.hpp).
//
// Stages: CLS scores (thread per patch); the full ranking (one block per sample, rank counting
// under the top-k rule); unit features of the patches left after the important ones (warp per
// patch); their cosine matrix (block per row, warp per column, both triangles written from one
// dot, as the CPU); the duplicate-removal rounds (one 1024-thread block per sample: a thread per
// even-position token scans the odd-position tokens in list order with std::max's operand rule,
// rank counting orders the even tokens, the list is rebuilt in the CPU's order); the kept patches
// sorted ascending. From Q/K (a qk_batch of the feature layer, like VisionZip's): the CLS row's
// head mean is computed tile by tile (stats/qk_statistics.cuh) into the workspace and the stages
// above run on it. Never ran on a GPU here (no device).
#pragma once

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstddef>
#include <limits>
#include <span>
#include <string>

#include "tokensel/core/batch.hpp"
#include "tokensel/core/config.hpp"
#include "tokensel/cuda/core/element.cuh"
#include "tokensel/cuda/core/error.cuh"
#include "tokensel/cuda/core/policy.cuh"
#include "tokensel/cuda/core/workspace.cuh"
#include "tokensel/cuda/detail/arith.cuh"
#include "tokensel/cuda/detail/batch.cuh"
#include "tokensel/cuda/detail/launch.cuh"
#include "tokensel/cuda/detail/single.cuh"
#include "tokensel/cuda/methods/detail/feature_kernels.cuh"
#include "tokensel/cuda/stats/qk_statistics.cuh"
#include "tokensel/methods/vispruner.hpp"

TOKENSEL_BEGIN_NAMESPACE
namespace vispruner {
TOKENSEL_CUDA_BEGIN_DETAIL

using namespace tokensel::cuda_detail;

/// One image: the CLS row of the attention (element (head 0, query 0, key 0), strides) and the
/// patch features [n, d]; the sample's counts (computed on the host).
struct sample_desc {
  const void* attn = nullptr;
  long long a_h = 0, a_j = 0;
  const void* x = nullptr;
  long long x_r = 0, x_c = 0;
  long long a_b = 0, x_b = 0;  // uniform batches: bytes between samples
  int heads = 0, n = 0, d = 0;
  int k = 0, important = 0;

  __host__ __device__ sample_desc shifted(int s, long long) const {
    sample_desc w = *this;
    if (attn != nullptr) w.attn = static_cast<const char*>(attn) + static_cast<long long>(s) * a_b;
    if (x != nullptr) w.x = static_cast<const char*>(x) + static_cast<long long>(s) * x_b;
    return w;
  }
};

using table = basic_sample_table<sample_desc>;

struct args {
  device_status* status = nullptr;
  int* skip = nullptr;
  float* score = nullptr;    // [n] CLS attention, then the even tokens' duplicate scores
  int* ranked = nullptr;     // [n] patches, best CLS attention first
  int* list = nullptr;       // [2 n] the list (positions into the remaining patches), double-buffered
  int* kept = nullptr;       // [n]
  float* unit = nullptr;     // [n * d]
  float* gram = nullptr;     // [n * n]
  long long vec = 0, unit_stride = 0, gram_stride = 0;
  int rounds_drop = 8;
  token_index* out = nullptr;
  long long out_stride = 0;
  token_index* counts = nullptr;
  result* results = nullptr;
};

inline constexpr int block = 256;
inline constexpr int round_block = 1024;

/// Thread per patch j: s[j] = (A[0, 0, 1 + j] + A[1, 0, 1 + j] + ...) / heads.
template <class A>
__global__ void __launch_bounds__(block) score_kernel(const table t, const args a) {
  const int s = static_cast<int>(blockIdx.y), b = t.first + s;
  const sample_desc d = t.get(s);
  const int j = static_cast<int>(blockIdx.x) * block + static_cast<int>(threadIdx.x);
  if (j >= d.n) return;
  const A* p = static_cast<const A*>(d.attn) + (j + 1) * d.a_j;
  float sum = load_f32(p);
  for (int h = 1; h < d.heads; ++h) sum = fadd(sum, load_f32(p + h * d.a_h));
  const float v = fdiv(sum, static_cast<float>(d.heads));
  a.score[b * a.vec + j] = v;
  if (!finite_f32(v)) {
    record(a.status, status_site::feature_value, static_cast<unsigned>(feature_input::vispruner_attention), static_cast<unsigned>(b),
           static_cast<unsigned>(j + 1));
    a.skip[b] = 1;
  }
}

/// One block per sample: ranked[r] = the patch of rank r (top-k rule: a permutation).
template <int Dummy = 0>
__global__ void __launch_bounds__(block) rank_kernel(const table t, const args a) {
  const int s = static_cast<int>(blockIdx.x), b = t.first + s;
  const sample_desc d = t.get(s);
  if (a.skip[b] != 0) return;
  const float* score = a.score + b * a.vec;
  for (int j = static_cast<int>(threadIdx.x); j < d.n; j += block) a.ranked[b * a.vec + rank_among<true>(score, d.n, j)] = j;
}

/// Warp per remaining patch r (rank important + r): its unit feature row.
template <class X>
__global__ void __launch_bounds__(block) unit_kernel(const table t, const args a) {
  const int s = static_cast<int>(blockIdx.y), b = t.first + s;
  const sample_desc d = t.get(s);
  const int r = static_cast<int>(blockIdx.x) * (block / 32) + static_cast<int>(threadIdx.x >> 5);
  if (r >= d.n - d.important || d.k == d.important) return;
  if (__shfl_sync(full_mask, a.skip[b] != 0 ? 1 : 0, 0) != 0) return;
  const int patch = a.ranked[b * a.vec + d.important + r];
  const X* x = static_cast<const X*>(d.x) + patch * d.x_r;
  float* u = a.unit + b * a.unit_stride + static_cast<long long>(r) * d.d;
  const bool ok = unit_row_warp(x, d.x_c, static_cast<const float*>(nullptr), 0, d.d, u, a.status, feature_input::vispruner_features,
                                static_cast<unsigned>(b), static_cast<unsigned>(patch));
  if (!ok && (threadIdx.x & 31u) == 0) a.skip[b] = 1;
}

/// Block per row i of the remaining patches, warp per column j >= i: both triangles from one dot.
template <int Dummy = 0>
__global__ void __launch_bounds__(block) gram_kernel(const table t, const args a) {
  const int s = static_cast<int>(blockIdx.y), b = t.first + s;
  const sample_desc d = t.get(s);
  const int r0 = d.n - d.important, i = static_cast<int>(blockIdx.x);
  if (i >= r0 || d.k == d.important || a.skip[b] != 0) return;
  const float* unit = a.unit + b * a.unit_stride;
  float* gram = a.gram + b * a.gram_stride;
  const float* ui = unit + static_cast<long long>(i) * d.d;
  for (int j = i + static_cast<int>(threadIdx.x >> 5); j < r0; j += block / 32) {
    const float c = warp_dot(ui, unit + static_cast<long long>(j) * d.d, d.d);
    if ((threadIdx.x & 31u) == 0) {
      gram[static_cast<long long>(i) * r0 + j] = c;
      gram[static_cast<long long>(j) * r0 + i] = c;
    }
  }
}

/// One duplicate-removal round over list[0, size) into next; returns the new size.
__device__ inline int one_round(const args& a, int b, int r0, int size, int diverse, const int* list, int* next) {
  const int tid = static_cast<int>(threadIdx.x);
  const int na = (size + 1) / 2, nb = size / 2;
  const int dropped = static_cast<int>(tokensel::detail::vispruner_dropped(size, diverse, a.rounds_drop));
  const float* gram = a.gram + b * a.gram_stride;
  float* score = a.score + b * a.vec;
  for (int i = tid; i < na; i += round_block) {
    const float* row = gram + static_cast<long long>(list[2 * i]) * r0;
    float best = row[list[1]];
    for (int j = 1; j < nb; ++j) best = std_max(best, row[list[2 * j + 1]]);
    score[i] = best;
  }
  __syncthreads();
  for (int i = tid; i < na; i += round_block) {
    const int r = rank_among<true>(score, na, i);
    if (r >= dropped) next[r - dropped] = list[2 * i];
  }
  for (int j = tid; j < nb; j += round_block) next[na - dropped + j] = list[2 * j + 1];
  __syncthreads();
  return na - dropped + nb;
}

/// One block per sample: the rounds until `diverse` tokens remain; kept = the important patches
/// and the survivors, ascending; count and statistics.
template <int Dummy = 0>
__global__ void __launch_bounds__(round_block) rounds_kernel(const table t, const args a) {
  const int s = static_cast<int>(blockIdx.x), b = t.first + s;
  const sample_desc d = t.get(s);
  const bool skipped = d.n == 0 || a.skip[b] != 0;
  const int tid = static_cast<int>(threadIdx.x);
  const int r0 = d.n - d.important, diverse = d.k - d.important;
  int rounds = 0;
  if (!skipped) {
    const int* ranked = a.ranked + b * a.vec;
    int* list = a.list + 2 * b * a.vec;
    int* next = list + a.vec;
    int size = diverse > 0 ? r0 : 0;
    for (int i = tid; i < size; i += round_block) list[i] = i;
    __syncthreads();
    while (size > diverse) {
      size = one_round(a, b, r0, size, diverse, list, next);
      int* tmp = list;
      list = next;
      next = tmp;
      ++rounds;
    }
    int* kept = a.kept + b * a.vec;
    for (int i = tid; i < d.important; i += round_block) kept[i] = ranked[i];
    for (int i = tid; i < diverse; i += round_block) kept[d.important + i] = ranked[d.important + list[i]];
    __syncthreads();
    block_sort_distinct(kept, d.k, a.out + b * a.out_stride);
  }
  if (tid == 0) {
    a.counts[b] = skipped ? 0 : d.k;
    if (a.results != nullptr) a.results[b] = skipped ? result{} : result{d.k, d.important, diverse, rounds};
  }
}

inline args layout(workspace_plan& plan, index_t batch, index_t n, index_t d) {
  args a;
  a.status = plan.status();
  a.vec = static_cast<long long>(n);
  a.unit_stride = static_cast<long long>(n) * static_cast<long long>(d);
  a.gram_stride = static_cast<long long>(n) * static_cast<long long>(n);
  a.skip = plan.take<int>(count_of({batch}));
  a.score = plan.take<float>(count_of({batch, n}));
  a.ranked = plan.take<int>(count_of({batch, n}));
  a.list = plan.take<int>(count_of({batch, n, 2}));
  a.kept = plan.take<int>(count_of({batch, n}));
  a.unit = plan.take<float>(count_of({batch, n, d}));
  a.gram = plan.take<float>(count_of({batch, n, n}));
  return a;
}

/// The CPU's per-sample checks (checked_patches and select, same order and messages) on the
/// attention's extents [heads, queries, N] and the features; returns the patch count.
template <class F>
index_t check_extents(index_t heads, index_t queries, index_t big_n, const tensor_view<const F, 2>& features, const config& cfg,
                      index_t capacity) {
  using tokensel::detail::fail;
  if (queries != big_n && queries != 1) {
    fail(errc::shape_mismatch, "vispruner.attention.extent(1)", queries, "must be the " + std::to_string(big_n) + " tokens or 1 (the CLS query row only)");
  }
  if (big_n > 0 && heads < 1) fail(errc::shape_mismatch, "vispruner.attention.extent(0)", heads, "no heads");
  const index_t n = big_n > 0 ? big_n - 1 : 0;
  if (features.extent(0) != n) {
    fail(errc::shape_mismatch, "vispruner.features.extent(0)", features.extent(0),
         "must equal the " + std::to_string(n) + " patches of the attention (CLS excluded)");
  }
  tokensel::detail::check_capacity(static_cast<std::size_t>(capacity), keep_count(n, cfg), "vispruner.out.size()");
  if (n > 0 && features.extent(1) < 1) fail(errc::shape_mismatch, "vispruner.features.extent(1)", features.extent(1), "empty feature vectors");
  return n;
}

/// check_extents on a sample's views, and the sample's descriptor.
template <class A, class F>
sample_desc check_sample(const tensor_view<const A, 3>& attention, const tensor_view<const F, 2>& features, const config& cfg,
                         index_t capacity) {
  const index_t n = check_extents(attention.extent(0), attention.extent(1), attention.extent(2), features, cfg, capacity);
  const index_t d = features.extent(1), k = keep_count(n, cfg);
  sample_desc s;
  if (n == 0) return s;
  s.attn = attention.data();
  s.a_h = attention.stride(0);
  s.a_j = attention.stride(2);
  s.heads = to_int(attention.extent(0), "vispruner.attention.extent(0)");
  s.x = features.data();
  s.x_r = features.stride(0);
  s.x_c = features.stride(1);
  s.n = to_int(n, "vispruner.features.extent(0)");
  s.d = to_int(d, "vispruner.features.extent(1)");
  s.k = static_cast<int>(k);
  s.important = static_cast<int>(important_count(k, cfg));
  return s;
}

template <class A, class X, class Tables>
void run(const cuda_policy& policy, const Tables& tables, index_t n_max, index_t d_max, const config& cfg, const selection_batch& out,
         std::span<result> results) {
  const index_t batch = tables.size();
  workspace_plan plan(policy);
  args a = layout(plan, batch, n_max, d_max);
  plan.require("vispruner");
  if (batch == 0) return;
  cudaStream_t stream = policy.stream;
  reset_status(a.status, stream);
  check(cudaMemsetAsync(a.skip, 0, static_cast<std::size_t>(batch) * sizeof(int), stream), "cudaMemsetAsync(skip)");
  a.rounds_drop = static_cast<int>(std::min<index_t>(cfg.rounds_drop, INT_MAX));
  a.out = out_rows(out);
  a.out_stride = out_stride(out);
  a.counts = out.counts.data();
  a.results = results.empty() ? nullptr : results.data();
  tables.each([&](const table& t) {
    const auto samples = static_cast<unsigned>(t.count);
    const int n = t.max_of([](const sample_desc& s) { return s.n; });
    if (n > 0) {
      score_kernel<A><<<dim3(blocks_for(n, block), samples), block, 0, stream>>>(t, a);
      check_launch("vispruner_scores");
      rank_kernel<><<<samples, block, 0, stream>>>(t, a);
      check_launch("vispruner_rank");
    }
    const int r0 = t.max_of([](const sample_desc& s) { return s.k > s.important ? s.n - s.important : 0; });
    if (r0 > 0) {
      unit_kernel<X><<<dim3(blocks_for(r0, block / 32), samples), block, 0, stream>>>(t, a);
      check_launch("vispruner_unit");
      gram_kernel<><<<dim3(static_cast<unsigned>(r0), samples), block, 0, stream>>>(t, a);
      check_launch("vispruner_gram");
    }
    rounds_kernel<><<<samples, round_block, 0, stream>>>(t, a);
    check_launch("vispruner_rounds");
  });
}

/// Largest patch count and width of a ragged batch (workspace layout).
template <class A, class F>
std::pair<index_t, index_t> ragged_extents(std::span<const head_attention_view<A>> attention, std::span<const matrix_view<const F>> features) {
  index_t n = 0, d = 0;
  for (const auto& v : attention) n = std::max(n, v.extent(2) > 0 ? v.extent(2) - 1 : 0);
  for (const auto& v : features) d = std::max(d, v.extent(1));
  return {n, d};
}

TOKENSEL_CUDA_END_DETAIL  // cuda_detail

/// Workspace bytes of select(cuda_policy, attention [batch, heads, N or 1, N], features [batch, N - 1, D], ...).
template <cuda_element A, cuda_element F>
[[nodiscard]] std::size_t workspace_size(const attention_view<A>& attention, const feature_view<const F>& features, const config& cfg) {
  validate(cfg);
  tokensel::cuda_detail::workspace_plan plan;
  (void)cuda_detail::layout(plan, attention.extent(0), attention.extent(3) > 0 ? attention.extent(3) - 1 : 0, features.extent(2));
  return plan.bytes();
}

/// Workspace bytes of the ragged select(cuda_policy, ...).
template <cuda_element A, cuda_element F>
[[nodiscard]] std::size_t workspace_size(std::span<const head_attention_view<A>> attention, std::span<const matrix_view<const F>> features,
                                         const config& cfg) {
  validate(cfg);
  tokensel::cuda_detail::workspace_plan plan;
  const auto [n, d] = cuda_detail::ragged_extents(attention, features);
  (void)cuda_detail::layout(plan, static_cast<index_t>(attention.size()), n, d);
  return plan.bytes();
}

/// Batch on the device: attention [batch, heads, N, N] or [batch, heads, 1, N] (CLS row 0 read),
/// features [batch, N - 1, D]; sample b writes out.indices(b, :) (patch indices, CLS excluded,
/// ascending); results (device, optional). The CPU's batched vispruner::select.
template <cuda_element A, cuda_element F>
void select(const cuda_policy& policy, const attention_view<A>& attention, const feature_view<const F>& features, const config& cfg,
            const selection_batch& out, std::span<result> results = {}) {
  using namespace tokensel::cuda_detail;
  const index_t batch = attention.extent(0);
  if (features.extent(0) != batch) {
    tokensel::detail::fail(errc::shape_mismatch, "vispruner.features.extent(0)", features.extent(0), "must equal the batch size " + std::to_string(batch));
  }
  check_outputs(out, results, batch, "vispruner");
  cuda_detail::sample_desc first;
  if (batch > 0) {
    first = cuda_detail::check_sample(attention[0], features[0], cfg, out.indices.extent(1));
    first.a_b = static_cast<long long>(attention.stride(0)) * static_cast<long long>(sizeof(A));
    first.x_b = static_cast<long long>(features.stride(0)) * static_cast<long long>(sizeof(F));
  }
  const auto tables = make_tables(batch, true, 0, [first](index_t b) { return first.shifted(static_cast<int>(b), 0); });
  cuda_detail::run<device_type_t<A>, device_type_t<F>>(policy, tables, attention.extent(3) > 0 ? attention.extent(3) - 1 : 0,
                                                        features.extent(2), cfg, out, results);
}

/// Ragged batch on the device: one attention view [heads, N_b or 1, N_b] and one feature view
/// [N_b - 1, D_b] per image; the CPU's ragged vispruner::select (attention views only).
template <cuda_element A, cuda_element F>
void select(const cuda_policy& policy, std::span<const head_attention_view<A>> attention, std::span<const matrix_view<const F>> features,
            const config& cfg, const selection_batch& out, std::span<result> results = {}) {
  using namespace tokensel::cuda_detail;
  const auto batch = static_cast<index_t>(attention.size());
  if (static_cast<index_t>(features.size()) != batch) {
    tokensel::detail::fail(errc::shape_mismatch, "vispruner.features.size()", features.size(), "must equal the batch size " + std::to_string(batch));
  }
  check_outputs(out, results, batch, "vispruner");
  auto desc = [&](index_t b) {
    const auto i = static_cast<std::size_t>(b);
    return cuda_detail::check_sample(attention[i], features[i], cfg, out.indices.extent(1));
  };
  for (index_t b = 0; b < batch; ++b) (void)desc(b);
  const auto tables = make_tables(batch, false, 0, desc);
  const auto [n, d] = cuda_detail::ragged_extents(attention, features);
  cuda_detail::run<device_type_t<A>, device_type_t<F>>(policy, tables, n, d, cfg, out, results);
}

/// Workspace bytes of the single-image select (the batch-of-1 layout plus the count slot).
template <cuda_element A, cuda_element F>
[[nodiscard]] std::size_t workspace_size(const head_attention_view<A>& attention, const matrix_view<const F>& features, const config& cfg) {
  using namespace tokensel::cuda_detail;
  return single_bytes(workspace_size(one(attention), one(features), cfg));
}

/// One image on the device: the CPU's single-image select (attention view); out (device memory)
/// gets the kept patch indices ascending, *device_result (device memory, optional) the
/// statistics. Runs the batch-of-1 select.
template <cuda_element A, cuda_element F>
void select(const cuda_policy& policy, const head_attention_view<A>& attention, const matrix_view<const F>& features, const config& cfg,
            std::span<token_index> out, result* device_result = nullptr) {
  using namespace tokensel::cuda_detail;
  select(policy, one(attention), one(features), cfg, single_output(policy, workspace_size(attention, features, cfg), out, "vispruner"),
         single_result(device_result));
}

}  // namespace vispruner

// ---- vispruner fed from Q/K (the CLS row computed tile by tile: stats/qk_statistics.cuh) ----

namespace vispruner {
TOKENSEL_CUDA_BEGIN_DETAIL

/// The method's own workspace bytes for [batch, 1, 1, n] rows (select(view) lays them out first).
template <cuda_element F>
std::size_t method_bytes(index_t batch, index_t n, const feature_view<const F>& features, const config& cfg) {
  validate(cfg);
  tokensel::cuda_detail::workspace_plan m;
  (void)layout(m, batch, n > 0 ? n - 1 : 0, features.extent(2));
  return m.bytes();
}

/// The CLS row (row 0 of the row window) over every key of the column window.
inline tokensel::cuda_detail::selected_rows cls_row(index_t n) { return {{0, n > 0 ? 1 : 0}, "vispruner"}; }

TOKENSEL_CUDA_END_DETAIL  // cuda_detail

/// Workspace bytes of select(cuda_policy, qk_batch, features, ...).
template <element Q, cuda_element F>
[[nodiscard]] std::size_t workspace_size(const qk_batch<Q>& src, const feature_view<const F>& features, const config& cfg) {
  using namespace tokensel::cuda_detail;
  const index_t B = src.size(), n = B > 0 ? src[0].cols().count : 0;
  workspace_plan plan;
  reserve_method(plan, cuda_detail::method_bytes(B, n, features, cfg));
  (void)plan.take<float>(count_of({B, n}));
  (void)qk_layout(plan, shape_of(qk_ref<Q>(src), cuda_detail::cls_row(n)), false, false, 1);
  return plan.bytes();
}

/// VisPruner from the Q/K of the feature layer (queries [heads, N or 1, d]: only the CLS row 0 is
/// read; the CPU's qk_source form): the CLS row's mean over heads, then the stages of
/// select(view) with features [batch, N - 1, D] as there.
template <element Q, cuda_element F>
void select(const cuda_policy& policy, const qk_batch<Q>& src, const feature_view<const F>& features, const config& cfg,
            const selection_batch& out, std::span<result> results = {}) {
  using namespace tokensel::cuda_detail;
  const qk_ref<Q> ref(src);
  ref.check("vispruner");
  const index_t B = src.size(), n = B > 0 ? src[0].cols().count : 0;
  // select(view)'s host checks before anything is enqueued (they read extents only).
  if (features.extent(0) != B) {
    tokensel::detail::fail(errc::shape_mismatch, "vispruner.features.extent(0)", features.extent(0), "must equal the batch size " + std::to_string(B));
  }
  check_outputs(out, results, B, "vispruner");
  if (B > 0) (void)cuda_detail::check_extents(1, 1, n, features[0], cfg, out.indices.extent(1));
  workspace_plan plan(policy);
  reserve_method(plan, cuda_detail::method_bytes(B, n, features, cfg));
  float* rows = plan.take<float>(count_of({B, n}));
  const auto n_ld = static_cast<long long>(n);
  if (B > 0 && n > 0) rows_batch(policy, plan, ref, cuda_detail::cls_row(n), head_reduction::mean, rows, n_ld, n_ld, false);
  plan.require("vispruner");
  const attention_view<float> view(B * n > 0 ? rows : nullptr, {B, 1, 1, n}, {n_ld, n_ld, n_ld, 1});
  vispruner::select(policy, view, features, cfg, out, results);
}

}  // namespace vispruner
TOKENSEL_END_NAMESPACE
