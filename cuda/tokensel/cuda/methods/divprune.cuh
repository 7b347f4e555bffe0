// tokensel CUDA backend: DivPrune (include/tokensel/methods/divprune.hpp, docs/divprune.md) on the
// device. Same kept indices and statistics as divprune::select of the CPU backend, bit for bit:
// the unit rows, the cosine distance, the tie rule and the fp32 dot order are the shared
// definitions of methods/detail/feature_rules.hpp and the canonical lane order.
//
// Stages: unit rows (warp per token, methods/detail/feature_kernels.cuh); nearest-neighbour
// distance of every token (block per token, eight warps over the other tokens, the exact minimum
// of their partial minima); the greedy max-min steps (one 1024-thread block per sample: a warp per
// candidate token updates its running minimum distance to the kept set, the argmax is a tree over
// (score, index) pairs under the top-k rule, which is a total order, so the reduction order cannot
// change the pick); the kept indices sorted ascending. Never ran on a GPU here (no device).
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
#include "tokensel/methods/divprune.hpp"

TOKENSEL_BEGIN_NAMESPACE
namespace divprune {
TOKENSEL_CUDA_BEGIN_DETAIL

using namespace tokensel::cuda_detail;

/// One sample's features [n, d] (device pointer, element strides) and its keep count.
struct sample_desc {
  const void* x = nullptr;
  long long x_r = 0, x_c = 0, x_b = 0;  // x_b: uniform batches, bytes between samples
  int n = 0, d = 0, k = 0;

  __host__ __device__ sample_desc shifted(int s, long long) const {
    sample_desc w = *this;
    if (x != nullptr) w.x = static_cast<const char*>(x) + static_cast<long long>(s) * x_b;
    return w;
  }
};

using table = basic_sample_table<sample_desc>;

/// Workspace regions; sample b's vectors start at b * vec, its unit rows at b * unit_stride.
struct args {
  device_status* status = nullptr;
  int* skip = nullptr;
  float* score = nullptr;  // [n]: nearest-neighbour distance, then distance to the kept set
  int* order = nullptr;    // [n]: the picks in greedy order
  float* unit = nullptr;   // [n * d]
  long long vec = 0, unit_stride = 0;
  token_index* out = nullptr;
  long long out_stride = 0;
  token_index* counts = nullptr;
  result* results = nullptr;
};

inline constexpr int block = 256;
inline constexpr int greedy_block = 1024;

/// Warp per token r: its unit row.
template <class X>
__global__ void __launch_bounds__(block) unit_kernel(const table t, const args a) {
  const int s = static_cast<int>(blockIdx.y), b = t.first + s;
  const sample_desc d = t.get(s);
  const int r = static_cast<int>(blockIdx.x) * (block / 32) + static_cast<int>(threadIdx.x >> 5);
  if (r >= d.n) return;
  const X* x = static_cast<const X*>(d.x) + r * d.x_r;
  float* u = a.unit + b * a.unit_stride + static_cast<long long>(r) * d.d;
  const bool ok = unit_row_warp(x, d.x_c, static_cast<const float*>(nullptr), 0, d.d, u, a.status,
                                feature_input::divprune_features, static_cast<unsigned>(b), static_cast<unsigned>(r));
  if (!ok && (threadIdx.x & 31u) == 0) a.skip[b] = 1;
}

/// Block per token j: score[j] = min over i != j of 1 - cos(u_i, u_j) (0 when n = 1).
template <int Dummy = 0>
__global__ void __launch_bounds__(block) nearest_kernel(const table t, const args a) {
  const int s = static_cast<int>(blockIdx.y), b = t.first + s;
  const sample_desc d = t.get(s);
  const int j = static_cast<int>(blockIdx.x);
  if (j >= d.n || a.skip[b] != 0) return;
  const int warp = static_cast<int>(threadIdx.x >> 5);
  const float* unit = a.unit + b * a.unit_stride;
  const float* uj = unit + static_cast<long long>(j) * d.d;
  float m = INFINITY;
  for (int i = warp; i < d.n; i += block / 32) {
    if (i == j) continue;
    const float dist = tokensel::detail::cosine_distance(warp_dot(unit + static_cast<long long>(i) * d.d, uj, d.d));
    if (dist < m) m = dist;
  }
  __shared__ float partial[block / 32];
  if ((threadIdx.x & 31u) == 0) partial[warp] = m;
  __syncthreads();
  if (threadIdx.x != 0) return;
  float best = INFINITY;
  for (int w = 0; w < block / 32; ++w) best = partial[w] < best ? partial[w] : best;  // the exact minimum
  a.score[b * a.vec + j] = d.n > 1 ? best : 0.0f;
}

/// The (score, index) pair the top-k rule prefers.
struct candidate {
  float s;
  int j;
};
__device__ __forceinline__ candidate better(candidate x, candidate y) {
  return tokensel::detail::divprune_farther(y.s, y.j, x.s, x.j) ? y : x;
}

/// Block-wide argmax of the candidates each warp's lane 0 holds (per-warp winners in `winner`);
/// every thread gets the winner.
__device__ __forceinline__ candidate block_best(candidate mine, candidate* winner) {
  const int warp = static_cast<int>(threadIdx.x >> 5);
  if ((threadIdx.x & 31u) == 0) winner[warp] = mine;
  __syncthreads();
  if (threadIdx.x == 0) {
    candidate c = winner[0];
    for (int w = 1; w < greedy_block / 32; ++w) c = better(c, winner[w]);
    winner[greedy_block / 32] = c;
  }
  __syncthreads();
  const candidate c = winner[greedy_block / 32];
  __syncthreads();
  return c;
}

/// One block per sample: the first pick (largest nearest-neighbour distance), then k - 1
/// farthest-point steps; kept indices ascending into the output row.
template <int Dummy = 0>
__global__ void __launch_bounds__(greedy_block) greedy_kernel(const table t, const args a) {
  const int s = static_cast<int>(blockIdx.x), b = t.first + s;
  const sample_desc d = t.get(s);
  const bool skipped = d.n == 0 || a.skip[b] != 0;
  const int tid = static_cast<int>(threadIdx.x), warp = tid >> 5, lane = tid & 31;
  constexpr float taken = -INFINITY;
  const candidate none{taken, INT_MAX};
  __shared__ candidate winner[greedy_block / 32 + 1];
  float* score = a.score + b * a.vec;
  int* order = a.order + b * a.vec;
  const float* unit = a.unit + b * a.unit_stride;
  float min_distance = 0.0f;
  if (!skipped) {
    candidate mine = none;
    for (int j = tid; j < d.n; j += greedy_block) mine = better(mine, candidate{score[j], j});
    for (int w = 16; w >= 1; w /= 2) {
      const candidate o{__shfl_down_sync(full_mask, mine.s, w), __shfl_down_sync(full_mask, mine.j, w)};
      mine = better(mine, o);
    }
    int pick = block_best(mine, winner).j;
    if (tid == 0) order[0] = pick;
    for (int j = tid; j < d.n; j += greedy_block) score[j] = j == pick ? taken : INFINITY;
    __syncthreads();
    for (int step = 1; step < d.k; ++step) {
      const float* p = unit + static_cast<long long>(pick) * d.d;
      candidate best = none;
      for (int j = warp; j < d.n; j += greedy_block / 32) {
        float sj = score[j];
        if (sj == taken) continue;
        const float dist = tokensel::detail::cosine_distance(warp_dot(p, unit + static_cast<long long>(j) * d.d, d.d));
        if (dist < sj) sj = dist;
        if (lane == 0) score[j] = sj;
        best = better(best, candidate{sj, j});
      }
      const candidate c = block_best(best, winner);
      pick = c.j;
      min_distance = c.s;
      if (tid == 0) {
        score[pick] = taken;
        order[step] = pick;
      }
      __syncthreads();
    }
    block_sort_distinct(order, d.k, a.out + b * a.out_stride);
  }
  if (tid == 0) {
    a.counts[b] = skipped ? 0 : d.k;
    if (a.results != nullptr) a.results[b] = result{skipped ? 0 : d.k, skipped || d.k < 2 ? 0.0f : min_distance};
  }
}

inline args layout(workspace_plan& plan, index_t batch, index_t n, index_t d) {
  args a;
  a.status = plan.status();
  a.vec = static_cast<long long>(n);
  a.unit_stride = static_cast<long long>(n) * static_cast<long long>(d);
  a.skip = plan.take<int>(count_of({batch}));
  a.score = plan.take<float>(count_of({batch, n}));
  a.order = plan.take<int>(count_of({batch, n}));
  a.unit = plan.take<float>(count_of({batch, n, d}));
  return a;
}

/// The CPU's per-sample checks (select's order) and the sample's descriptor.
template <class F>
sample_desc check_sample(const tensor_view<const F, 2>& x, const config& cfg, index_t capacity) {
  using tokensel::detail::fail;
  const index_t n = x.extent(0), d = x.extent(1);
  const index_t k = keep_count(n, cfg);
  tokensel::detail::check_capacity(static_cast<std::size_t>(capacity), k, "divprune.out.size()");
  if (n > 0 && d < 1) fail(errc::shape_mismatch, "divprune.features.extent(1)", d, "empty feature vectors");
  if (n > std::numeric_limits<token_index>::max()) fail(errc::invalid_argument, "divprune.features.extent(0)", n, "must be <= 2147483647");
  sample_desc s;
  s.x = x.data();
  s.x_r = x.stride(0);
  s.x_c = x.stride(1);
  s.n = to_int(n, "divprune.features.extent(0)");
  s.d = to_int(d, "divprune.features.extent(1)");
  s.k = static_cast<int>(k);
  return s;
}

template <class X, class Tables>
void run(const cuda_policy& policy, const Tables& tables, index_t n_max, index_t d_max, const selection_batch& out,
         std::span<result> results) {
  const index_t batch = tables.size();
  workspace_plan plan(policy);
  args a = layout(plan, batch, n_max, d_max);
  plan.require("divprune");
  if (batch == 0) return;
  cudaStream_t stream = policy.stream;
  reset_status(a.status, stream);
  check(cudaMemsetAsync(a.skip, 0, static_cast<std::size_t>(batch) * sizeof(int), stream), "cudaMemsetAsync(skip)");
  a.out = out_rows(out);
  a.out_stride = out_stride(out);
  a.counts = out.counts.data();
  a.results = results.empty() ? nullptr : results.data();
  tables.each([&](const table& t) {
    const auto samples = static_cast<unsigned>(t.count);
    const int n = t.max_of([](const sample_desc& s) { return s.n; });
    if (n > 0) {
      unit_kernel<X><<<dim3(blocks_for(n, block / 32), samples), block, 0, stream>>>(t, a);
      check_launch("divprune_unit");
      nearest_kernel<><<<dim3(static_cast<unsigned>(n), samples), block, 0, stream>>>(t, a);
      check_launch("divprune_nearest");
    }
    greedy_kernel<><<<samples, greedy_block, 0, stream>>>(t, a);
    check_launch("divprune_greedy");
  });
}

/// Largest n and d of a ragged batch (workspace layout).
template <class F>
std::pair<index_t, index_t> ragged_extents(std::span<const matrix_view<const F>> x) {
  index_t n = 0, d = 0;
  for (const auto& v : x) {
    n = std::max(n, v.extent(0));
    d = std::max(d, v.extent(1));
  }
  return {n, d};
}

TOKENSEL_CUDA_END_DETAIL  // cuda_detail

/// Workspace bytes of select(cuda_policy, features [batch, n, D], ...).
template <cuda_element F>
[[nodiscard]] std::size_t workspace_size(const feature_view<const F>& features, const config& cfg) {
  validate(cfg);
  tokensel::cuda_detail::workspace_plan plan;
  (void)cuda_detail::layout(plan, features.extent(0), features.extent(1), features.extent(2));
  return plan.bytes();
}

/// Workspace bytes of the ragged select(cuda_policy, ...).
template <cuda_element F>
[[nodiscard]] std::size_t workspace_size(std::span<const matrix_view<const F>> features, const config& cfg) {
  validate(cfg);
  tokensel::cuda_detail::workspace_plan plan;
  const auto [n, d] = cuda_detail::ragged_extents(features);
  (void)cuda_detail::layout(plan, static_cast<index_t>(features.size()), n, d);
  return plan.bytes();
}

/// Batch on the device: features [batch, n, D] (any strides; f32 / f16 / bf16); sample b writes
/// out.indices(b, :) ascending and out.counts[b]; results (device memory, optional). The CPU's
/// batched divprune::select.
template <cuda_element F>
void select(const cuda_policy& policy, const feature_view<const F>& features, const config& cfg, const selection_batch& out,
            std::span<result> results = {}) {
  using namespace tokensel::cuda_detail;
  const index_t batch = features.extent(0);
  check_outputs(out, results, batch, "divprune");
  cuda_detail::sample_desc first;
  if (batch > 0) {
    first = cuda_detail::check_sample(features[0], cfg, out.indices.extent(1));
    first.x_b = static_cast<long long>(features.stride(0)) * static_cast<long long>(sizeof(F));
  } else {
    validate(cfg);
  }
  const auto tables = make_tables(batch, true, 0, [first](index_t b) { return first.shifted(static_cast<int>(b), 0); });
  cuda_detail::run<device_type_t<F>>(policy, tables, features.extent(1), features.extent(2), out, results);
}

/// Ragged batch on the device: one [n_b, D_b] view per sample.
template <cuda_element F>
void select(const cuda_policy& policy, std::span<const matrix_view<const F>> features, const config& cfg,
            const selection_batch& out, std::span<result> results = {}) {
  using namespace tokensel::cuda_detail;
  const auto batch = static_cast<index_t>(features.size());
  check_outputs(out, results, batch, "divprune");
  validate(cfg);
  for (const auto& x : features) (void)cuda_detail::check_sample(x, cfg, out.indices.extent(1));
  const auto tables = make_tables(batch, false, 0, [&](index_t b) {
    return cuda_detail::check_sample(features[static_cast<std::size_t>(b)], cfg, out.indices.extent(1));
  });
  const auto [n, d] = cuda_detail::ragged_extents(features);
  cuda_detail::run<device_type_t<F>>(policy, tables, n, d, out, results);
}

/// Workspace bytes of the single-sample select (the batch-of-1 layout plus the count slot).
template <cuda_element F>
[[nodiscard]] std::size_t workspace_size(const matrix_view<const F>& features, const config& cfg) {
  using namespace tokensel::cuda_detail;
  return single_bytes(workspace_size(one(features), cfg));
}

/// One sample on the device: the CPU's single-sample select (without `order`); out (device
/// memory) gets the kept indices ascending, *device_result (device memory, optional) the count
/// and the smallest distance between kept tokens. Runs the batch-of-1 select.
template <cuda_element F>
void select(const cuda_policy& policy, const matrix_view<const F>& features, const config& cfg, std::span<token_index> out,
            result* device_result = nullptr) {
  using namespace tokensel::cuda_detail;
  const auto batch = one(features);
  select(policy, batch, cfg, single_output(policy, workspace_size(batch, cfg), out, "divprune"), single_result(device_result));
}

}  // namespace divprune
TOKENSEL_END_NAMESPACE
