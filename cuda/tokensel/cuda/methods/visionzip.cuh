// tokensel CUDA backend: VisionZip (spec section 7) on the device, from the attention view of the
// feature layer. Same indices, merged feature rows and statistics as visionzip::select of the CPU
// backend (tokensel/visionzip.hpp), bit for bit.
//
// Stages: CLS-row scores summed over heads (thread per token); one block per sample ranks them
// (top dominant - 1, rank counting) and writes the dominant indices and the remaining tokens
// (block scans); head-mean keys of the remaining tokens, L2-normalised (warp per token: the
// canonical dot for the norm, IEEE sqrt); assignment to the most similar target (warp per token,
// canonical dots, strict >); output rows (thread per row and feature column; the assigned rows
// summed in ascending token order). A 4-D batch is one launch per stage (a uniform table); a
// ragged batch is one launch per stage for every table of up to table_capacity_for<sample_desc>
// samples (the per-sample table machinery of detail/launch.cuh).
#pragma once

#include <algorithm>
#include <cstddef>
#include <span>
#include <string>
#include <type_traits>
#include <utility>

#include <cub/block/block_scan.cuh>

#include "tokensel/cuda/core/abi.cuh"
#include "tokensel/core/batch.hpp"
#include "tokensel/core/config.hpp"
#include "tokensel/cuda/detail/arith.cuh"
#include "tokensel/cuda/detail/batch.cuh"
#include "tokensel/cuda/detail/launch.cuh"
#include "tokensel/cuda/detail/single.cuh"
#include "tokensel/cuda/stats/detail/map_kernels.cuh"
#include "tokensel/cuda/core/element.cuh"
#include "tokensel/cuda/core/error.cuh"
#include "tokensel/cuda/core/policy.cuh"
#include "tokensel/cuda/core/workspace.cuh"
#include "tokensel/methods/visionzip.hpp"
#include "tokensel/cuda/stats/qk_statistics.cuh"

TOKENSEL_BEGIN_NAMESPACE
namespace visionzip {
TOKENSEL_CUDA_BEGIN_DETAIL

using namespace tokensel::cuda_detail;

/// One sample's arrays (device pointers, element strides) and sizes. A 4-D batch is a uniform
/// table: entry 0 is sample 0 and sample s is it shifted by s times the *_b byte strides.
struct sample_desc {
  const void* attn = nullptr;  // element (head 0, CLS query row, key 0)
  long long a_h = 0, a_j = 0;
  const void* keys = nullptr;  // [kheads, n, dh]; null when nothing is merged
  long long k_h = 0, k_t = 0, k_c = 0;
  const void* hidden = nullptr;  // [n, d]
  long long h_t = 0, h_c = 0;
  void* features = nullptr;  // [>= dominant + contextual, d]
  long long f_r = 0, f_c = 0;
  long long a_b = 0, k_b = 0, h_b = 0, f_b = 0;  // uniform batches: bytes between samples
  int heads = 0, n = 0, kheads = 0, dh = 0, d = 0;
  int remaining = 0, step = 1;  // n - dominant; target spacing max(1, remaining / contextual)

  __host__ __device__ sample_desc shifted(int s, long long) const {
    sample_desc w = *this;
    const auto by = [s](auto* p, long long bytes) {
      using byte_t = std::conditional_t<std::is_const_v<std::remove_pointer_t<decltype(p)>>, const char, char>;
      return p == nullptr ? p : static_cast<decltype(p)>(static_cast<byte_t*>(p) + static_cast<long long>(s) * bytes);
    };
    w.attn = by(attn, a_b);
    w.keys = by(keys, k_b);
    w.hidden = by(hidden, h_b);
    w.features = by(features, f_b);
    return w;
  }
};

using table = basic_sample_table<sample_desc>;

/// The workspace and the outputs; sample b's vectors start at b * vec (unit: b * unit_stride).
struct args {
  int dominant = 0, contextual = 0;  // of every non-empty sample
  float* score = nullptr;  // [n - 1]
  int* rest = nullptr;     // [remaining]
  int* owner = nullptr;    // [remaining]
  float* unit = nullptr;   // [remaining * dh]
  int* skip = nullptr;
  long long vec = 0, unit_stride = 0;
  device_status* status = nullptr;
  token_index* out = nullptr;
  long long out_stride = 0;
  token_index* counts = nullptr;
  result* results = nullptr;
};

inline constexpr int block = 256;

/// s[j - 1] = sum over heads of A[h, 0, j] from 0.0f, ascending heads (cls_scores of the CPU).
template <class A>
__global__ void __launch_bounds__(block) scores_kernel(const table t, const args a) {
  const int s = static_cast<int>(blockIdx.y);
  const int b = t.first + s;
  const sample_desc d = t.get(s);
  const int j = 1 + static_cast<int>(blockIdx.x) * block + static_cast<int>(threadIdx.x);
  if (j >= d.n) return;
  const A* p = static_cast<const A*>(d.attn) + j * d.a_j;
  float sum = 0.0f;
  bool bad = false;
  for (int h = 0; h < d.heads; ++h) {
    const float v = load_f32(p + h * d.a_h);
    bad = bad || !finite_f32(v);
    sum = fadd(sum, v);
  }
  a.score[b * a.vec + j - 1] = sum;
  if (bad) {
    record(a.status, status_site::reduced_map, 0, static_cast<unsigned>(b), static_cast<unsigned>(j & 0xFFFF));
    a.skip[b] = 1;
  }
}

/// One block per sample: ranks of the n - 1 scores (top-k rule), out[0] = 0 and the dominant
/// tokens ascending, the remaining tokens ascending.
template <int Dummy = 0>
__global__ void __launch_bounds__(block) split_kernel(const table t, const args a) {
  const int s = static_cast<int>(blockIdx.x);
  const int b = t.first + s;
  const sample_desc d = t.get(s);
  const int tid = static_cast<int>(threadIdx.x);
  const int m = d.n - 1, k = a.dominant - 1;
  if (__syncthreads_or((d.n == 0 || a.skip[b] != 0) ? 1 : 0) != 0) return;
  const float* score = a.score + b * a.vec;
  token_index* out = a.out + b * a.out_stride;
  int* rest = a.rest + b * a.vec;
  if (tid == 0) out[0] = 0;
  using scan_t = cub::BlockScan<int, block>;
  __shared__ typename scan_t::TempStorage scratch;
  int base_dom = 0, base_rest = 0;
  for (int j0 = 0; j0 < m; j0 += block) {
    const int j = j0 + tid;
    int dom = 0;
    if (j < m) {
      const float kj = score[j];
      int rank = 0;
      for (int q = 0; q < m; ++q) rank += beats_high(score[q], q, kj, j) ? 1 : 0;
      dom = rank < k ? 1 : 0;
    }
    const int other = (j < m && dom == 0) ? 1 : 0;
    int pos = 0, total = 0;
    scan_t(scratch).ExclusiveSum(dom, pos, total);
    if (dom != 0) out[1 + base_dom + pos] = j + 1;
    base_dom += total;
    __syncthreads();
    scan_t(scratch).ExclusiveSum(other, pos, total);
    if (other != 0 && a.contextual > 0) rest[base_rest + pos] = j + 1;
    base_rest += total;
    __syncthreads();
  }
}

/// Warp per remaining token p: u = head-mean key (fp32 sum from 0.0f, / kheads), u /= |u| when
/// |u| > 0 (|u| = IEEE sqrt of the canonical dot u . u).
template <class K>
__global__ void __launch_bounds__(block) unit_kernel(const table t, const args a) {
  const int s = static_cast<int>(blockIdx.y);
  const int b = t.first + s;
  const sample_desc d = t.get(s);
  const int p = static_cast<int>(blockIdx.x) * (block / 32) + static_cast<int>(threadIdx.x >> 5);
  const int lane = static_cast<int>(threadIdx.x & 31u);
  if (p >= d.remaining) return;
  if (__shfl_sync(full_mask, a.skip[b] != 0 ? 1 : 0, 0) != 0) return;
  const int tok = a.rest[b * a.vec + p];
  const K* key = static_cast<const K*>(d.keys) + tok * d.k_t;
  float* u = a.unit + b * a.unit_stride + static_cast<long long>(p) * d.dh;
  float acc = 0.0f;
  int bad = -1;
  for (int c = lane; c < d.dh; c += 32) {
    float sum = 0.0f;
    for (int h = 0; h < d.kheads; ++h) {
      const float v = load_f32(key + h * d.k_h + c * d.k_c);
      if (bad < 0 && !finite_f32(v)) bad = c;
      sum = fadd(sum, v);
    }
    const float x = fdiv(sum, static_cast<float>(d.kheads));
    u[c] = x;
    acc = fadd(acc, fmul(x, x));
  }
  const float dot = __shfl_sync(full_mask, warp_tree_sum(acc), 0);
  if (bad >= 0) {
    record(a.status, status_site::keys_value, 0, static_cast<unsigned>(b),
           ((static_cast<unsigned>(tok) & 0xFFFFu) << 16) | (static_cast<unsigned>(bad) & 0xFFFFu));
    a.skip[b] = 1;
  }
  const float norm = __fsqrt_rn(dot);
  if (norm > 0.0f) {
    for (int c = lane; c < d.dh; c += 32) u[c] = fdiv(u[c], norm);
  }
}

/// Warp per remaining token p: owner = the target with the highest canonical dot (first on ties),
/// -1 for the targets themselves.
template <int Dummy = 0>
__global__ void __launch_bounds__(block) assign_kernel(const table t, const args a) {
  const int s = static_cast<int>(blockIdx.y);
  const int b = t.first + s;
  const sample_desc d = t.get(s);
  const int p = static_cast<int>(blockIdx.x) * (block / 32) + static_cast<int>(threadIdx.x >> 5);
  const int lane = static_cast<int>(threadIdx.x & 31u);
  if (p >= d.remaining) return;
  if (__shfl_sync(full_mask, a.skip[b] != 0 ? 1 : 0, 0) != 0) return;
  int* owner = a.owner + b * a.vec;
  if (p % d.step == 0 && p / d.step < a.contextual) {
    if (lane == 0) owner[p] = -1;
    return;
  }
  const float* unit = a.unit + b * a.unit_stride;
  const float* u = unit + static_cast<long long>(p) * d.dh;
  int best = 0;
  float best_sim = 0.0f;
  for (int target = 0; target < a.contextual; ++target) {
    const float* v = unit + static_cast<long long>(target) * d.step * d.dh;
    float acc = 0.0f;
    for (int c = lane; c < d.dh; c += 32) acc = fadd(acc, fmul(u[c], v[c]));
    const float sim = __shfl_sync(full_mask, warp_tree_sum(acc), 0);
    if (target == 0 || sim > best_sim) {
      best_sim = sim;
      best = target;
    }
  }
  if (lane == 0) owner[p] = best;
}

/// Thread per (output row r, feature column c): dominant rows copied; contextual row t = target
/// row + (sum of its assigned rows, ascending tokens, from 0.0f) / max(assigned, 1).
template <class H, class O>
__global__ void __launch_bounds__(block) output_kernel(const table t, const args a) {
  const int s = static_cast<int>(blockIdx.y);
  const int b = t.first + s;
  const sample_desc d = t.get(s);
  const long long e = static_cast<long long>(blockIdx.x) * block + threadIdx.x;
  const int rows = a.dominant + a.contextual;
  const bool skipped = d.n == 0 || a.skip[b] != 0;
  if (e == 0) {
    const int count = skipped ? 0 : rows;
    a.counts[b] = count;
    if (a.results != nullptr) {
      result& r = a.results[b];
      r.count = count;
      r.dominant = skipped ? 0 : a.dominant;
      r.contextual = skipped ? 0 : a.contextual;
      r.merged = skipped || a.contextual == 0 ? 0 : d.remaining - a.contextual;
    }
  }
  if (skipped || e >= static_cast<long long>(rows) * d.d) return;
  const int r = static_cast<int>(e / d.d), c = static_cast<int>(e % d.d);
  const H* hidden = static_cast<const H*>(d.hidden) + c * d.h_c;
  O* dst = static_cast<O*>(d.features) + r * d.f_r + c * d.f_c;
  token_index* out = a.out + b * a.out_stride;
  if (r < a.dominant) {
    *dst = from_f32<O>(to_f32(hidden[static_cast<long long>(out[r]) * d.h_t]));
    return;
  }
  const int target_pos = r - a.dominant;
  const int* rest = a.rest + b * a.vec;
  const int* owner = a.owner + b * a.vec;
  const int target = rest[target_pos * d.step];
  if (c == 0) out[r] = target;
  float acc = 0.0f;
  int assigned = 0;
  for (int p = 0; p < d.remaining; ++p) {
    if (owner[p] != target_pos) continue;
    ++assigned;
    acc = fadd(acc, to_f32(hidden[static_cast<long long>(rest[p]) * d.h_t]));
  }
  const float count = static_cast<float>(assigned > 0 ? assigned : 1);
  *dst = from_f32<O>(fadd(to_f32(hidden[static_cast<long long>(target) * d.h_t]), fdiv(acc, count)));
}

struct buffers {
  device_status* status = nullptr;
  int* skip = nullptr;
  float* score = nullptr;
  int* rest = nullptr;
  int* owner = nullptr;
  float* unit = nullptr;
  long long vec = 0, unit_stride = 0;
};

inline buffers layout(workspace_plan& plan, index_t batch, index_t n, index_t dh) {
  buffers w;
  const auto B = count_of({batch}), N = count_of({n});
  w.status = plan.status();
  w.vec = static_cast<long long>(n);
  w.unit_stride = static_cast<long long>(n) * static_cast<long long>(dh);
  w.skip = plan.take<int>(B);
  w.score = plan.take<float>(B * N);
  w.rest = plan.take<int>(B * N);
  w.owner = plan.take<int>(B * N);
  w.unit = plan.take<float>(count_of({batch, n, dh}));
  return w;
}

/// The CPU's per-sample checks (detail::check_shapes and select), for device views of any type.
template <class A, class K, class H, class O>
index_t check_sample(const tensor_view<const A, 3>& attention, const tensor_view<const K, 3>& keys,
                     const tensor_view<const H, 2>& hidden, const tensor_view<O, 2>& features, const config& cfg,
                     index_t capacity) {
  using tokensel::detail::fail;
  validate(cfg);
  const index_t n = attention.extent(2), queries = attention.extent(1);
  if (queries != n && queries != 1) {
    fail(errc::shape_mismatch, "visionzip.attention.extent(1)", queries,
         "must be the " + std::to_string(n) + " tokens or 1 (the CLS query row only)");
  }
  if (n > 0 && attention.extent(0) < 1) fail(errc::shape_mismatch, "visionzip.attention.extent(0)", attention.extent(0), "no heads");
  if (hidden.extent(0) != n) {
    fail(errc::shape_mismatch, "visionzip.hidden.extent(0)", hidden.extent(0), "must equal the " + std::to_string(n) + " tokens of the attention");
  }
  if (cfg.contextual > 0 && n > 0) {
    if (keys.extent(1) != n) {
      fail(errc::shape_mismatch, "visionzip.keys.extent(1)", keys.extent(1), "must equal the " + std::to_string(n) + " tokens of the attention");
    }
    if (keys.extent(0) < 1) fail(errc::shape_mismatch, "visionzip.keys.extent(0)", keys.extent(0), "no heads");
    if (keys.extent(2) < 1) fail(errc::shape_mismatch, "visionzip.keys.extent(2)", keys.extent(2), "empty key vectors");
  }
  if (features.extent(1) != hidden.extent(1)) {
    fail(errc::shape_mismatch, "visionzip.features.extent(1)", features.extent(1),
         "must equal hidden.extent(1) = " + std::to_string(hidden.extent(1)));
  }
  const index_t k = keep_count(n, cfg);
  tokensel::detail::check_capacity(static_cast<std::size_t>(capacity), k, "visionzip.out.size()");
  if (features.extent(0) < k) {
    fail(errc::shape_mismatch, "visionzip.features.extent(0)", features.extent(0), "below the " + std::to_string(k) + " output rows");
  }
  return n;
}

/// Sample descriptor of one sample's views (checked before by check_sample).
template <class A, class K, class H, class O>
sample_desc describe(const tensor_view<const A, 3>& attention, const tensor_view<const K, 3>& keys,
                     const tensor_view<const H, 2>& hidden, const tensor_view<O, 2>& features, const config& cfg) {
  sample_desc d;
  const index_t n = attention.extent(2);
  d.attn = attention.data();
  d.a_h = attention.stride(0);
  d.a_j = attention.stride(2);
  d.heads = to_int(attention.extent(0), "visionzip.attention.extent(0)");
  d.n = to_int(n, "visionzip.attention.extent(2)");
  if (cfg.contextual > 0 && n > 0) {
    d.keys = keys.data();
    d.k_h = keys.stride(0);
    d.k_t = keys.stride(1);
    d.k_c = keys.stride(2);
    d.kheads = to_int(keys.extent(0), "visionzip.keys.extent(0)");
    d.dh = to_int(keys.extent(2), "visionzip.keys.extent(2)");
  }
  d.hidden = hidden.data();
  d.h_t = hidden.stride(0);
  d.h_c = hidden.stride(1);
  d.d = to_int(hidden.extent(1), "visionzip.hidden.extent(1)");
  d.features = static_cast<void*>(features.data());
  d.f_r = features.stride(0);
  d.f_c = features.stride(1);
  d.remaining = n > 0 ? static_cast<int>(n - cfg.dominant) : 0;
  d.step = cfg.contextual > 0 && d.remaining / cfg.contextual > 1 ? static_cast<int>(d.remaining / cfg.contextual) : 1;
  return d;
}

/// The stages over the batch's tables: one launch per stage and table (a 4-D batch is one table).
template <class A, class K, class H, class O, class Tables>
void run(const cuda_policy& policy, const Tables& tables, index_t n_max, index_t dh_max, const config& cfg,
         const selection_batch& out, std::span<result> results) {
  const index_t batch = tables.size();
  workspace_plan plan(policy);
  const buffers w = layout(plan, batch, n_max, dh_max);
  plan.require("visionzip");
  if (batch == 0) return;
  cudaStream_t stream = policy.stream;
  reset_status(w.status, stream);
  check(cudaMemsetAsync(w.skip, 0, static_cast<std::size_t>(batch) * sizeof(int), stream), "cudaMemsetAsync(skip)");
  args a;
  a.dominant = static_cast<int>(cfg.dominant);
  a.contextual = static_cast<int>(cfg.contextual);
  a.score = w.score;
  a.rest = w.rest;
  a.owner = w.owner;
  a.unit = w.unit;
  a.skip = w.skip;
  a.vec = w.vec;
  a.unit_stride = w.unit_stride;
  a.status = w.status;
  a.out = out_rows(out);
  a.out_stride = out_stride(out);
  a.counts = out.counts.data();
  a.results = results.empty() ? nullptr : results.data();
  tables.each([&](const table& t) {
    const auto samples = static_cast<unsigned>(t.count);
    const int n = t.max_of([](const sample_desc& d) { return d.n; });
    if (n > 1) {
      scores_kernel<A><<<dim3(blocks_for(n - 1, block), samples), block, 0, stream>>>(t, a);
      check_launch("visionzip_scores");
    }
    if (n > 0) {
      split_kernel<><<<samples, block, 0, stream>>>(t, a);
      check_launch("visionzip_split");
    }
    const int remaining = t.max_of([](const sample_desc& d) { return d.remaining; });
    if (cfg.contextual > 0 && remaining > 0) {
      const dim3 grid(blocks_for(remaining, block / 32), samples);
      unit_kernel<K><<<grid, block, 0, stream>>>(t, a);
      check_launch("visionzip_unit");
      assign_kernel<><<<grid, block, 0, stream>>>(t, a);
      check_launch("visionzip_assign");
    }
    const int d = t.max_of([](const sample_desc& s) { return s.d; });
    const index_t elements = std::max<index_t>(static_cast<index_t>(a.dominant + a.contextual) * d, 1);
    output_kernel<H, O><<<dim3(blocks_for(elements, block), samples), block, 0, stream>>>(t, a);
    check_launch("visionzip_output");
  });
}

template <class A, class K, class H, class O, class Tables>
void run_typed(const cuda_policy& policy, const Tables& tables, index_t n_max, index_t dh_max, const config& cfg,
               const selection_batch& out, std::span<result> results) {
  run<device_type_t<A>, device_type_t<K>, device_type_t<H>, device_type_t<std::remove_cv_t<O>>>(
      policy, tables, n_max, dh_max, cfg, out, results);
}

/// Largest n and key width of a ragged batch (workspace layout).
template <class A, class K>
std::pair<index_t, index_t> ragged_extents(std::span<const head_attention_view<A>> attention,
                                           std::span<const tensor_view<const K, 3>> keys, const config& cfg) {
  index_t n_max = 0, dh_max = 0;
  for (std::size_t b = 0; b < attention.size(); ++b) {
    const index_t n = attention[b].extent(2);
    n_max = std::max(n_max, n);
    if (cfg.contextual > 0 && n > 0 && b < keys.size()) dh_max = std::max(dh_max, keys[b].extent(2));
  }
  return {n_max, dh_max};
}

TOKENSEL_CUDA_END_DETAIL  // cuda_detail

/// Workspace bytes of select(cuda_policy, ...) for a 4-D batch (keys [batch, heads, N, d_head]).
template <cuda_element A, cuda_element K>
[[nodiscard]] std::size_t workspace_size(const attention_view<A>& attention, const tensor_view<const K, 4>& keys, const config& cfg) {
  validate(cfg);
  tokensel::cuda_detail::workspace_plan plan;
  const bool need_keys = cfg.contextual > 0 && attention.extent(3) > 0;
  (void)cuda_detail::layout(plan, attention.extent(0), attention.extent(3), need_keys ? keys.extent(3) : 0);
  return plan.bytes();
}

/// Workspace bytes of the ragged select(cuda_policy, ...) (one view per sample).
template <cuda_element A, cuda_element K>
[[nodiscard]] std::size_t workspace_size(std::span<const head_attention_view<A>> attention, std::span<const tensor_view<const K, 3>> keys,
                           const config& cfg) {
  validate(cfg);
  tokensel::cuda_detail::workspace_plan plan;
  const auto [n_max, dh_max] = cuda_detail::ragged_extents(attention, keys, cfg);
  (void)cuda_detail::layout(plan, static_cast<index_t>(attention.size()), n_max, dh_max);
  return plan.bytes();
}

/// Batch on the device: attention [batch, heads, N, N] (or [batch, heads, 1, N]), keys
/// [batch, heads, N, d_head], hidden [batch, N, D]; sample b writes its indices to
/// out.indices(b, :) and its rows to features[b] ([batch, >= keep_count, D]); results (device,
/// optional). Same outputs as the CPU's visionzip::select.
template <cuda_element A, cuda_element K, cuda_element H, cuda_element O>
void select(const cuda_policy& policy, const attention_view<A>& attention, const tensor_view<const K, 4>& keys,
            const tensor_view<const H, 3>& hidden, const config& cfg, const selection_batch& out,
            const tensor_view<O, 3>& features, std::span<result> results = {}) {
  using tokensel::detail::fail;
  using namespace tokensel::cuda_detail;
  const index_t batch = attention.extent(0);
  if (hidden.extent(0) != batch) fail(errc::shape_mismatch, "visionzip.hidden.extent(0)", hidden.extent(0), "must equal the batch size " + std::to_string(batch));
  if (features.extent(0) != batch) fail(errc::shape_mismatch, "visionzip.features.extent(0)", features.extent(0), "must equal the batch size " + std::to_string(batch));
  const bool need_keys = cfg.contextual > 0 && attention.extent(3) > 0;
  if (need_keys && keys.extent(0) != batch) fail(errc::shape_mismatch, "visionzip.keys.extent(0)", keys.extent(0), "must equal the batch size " + std::to_string(batch));
  check_outputs(out, results, batch, "visionzip");
  const tensor_view<const K, 3> no_keys{};
  cuda_detail::sample_desc first;
  if (batch > 0) {
    (void)cuda_detail::check_sample(attention[0], need_keys ? keys[0] : no_keys, hidden[0], features[0], cfg, out.indices.extent(1));
    first = cuda_detail::describe(attention[0], need_keys ? keys[0] : no_keys, hidden[0], features[0], cfg);
    first.a_b = static_cast<long long>(attention.stride(0)) * static_cast<long long>(sizeof(A));
    first.k_b = need_keys ? static_cast<long long>(keys.stride(0)) * static_cast<long long>(sizeof(K)) : 0;
    first.h_b = static_cast<long long>(hidden.stride(0)) * static_cast<long long>(sizeof(H));
    first.f_b = static_cast<long long>(features.stride(0)) * static_cast<long long>(sizeof(O));
  }
  const auto tables = make_tables(batch, true, 0, [first](index_t b) { return first.shifted(static_cast<int>(b), 0); });
  cuda_detail::run_typed<A, K, H, O>(policy, tables, attention.extent(3), need_keys ? keys.extent(3) : 0, cfg, out, results);
}

/// Ragged batch on the device: one view per sample for each input and for the output features
/// (attention [heads, N_b, N_b] or [heads, 1, N_b], keys [heads, N_b, d_head], hidden [N_b, D],
/// features [>= keep_count, D]); the CPU's ragged visionzip::select. One launch per stage for
/// up to table_capacity_for<sample_desc> samples.
template <cuda_element A, cuda_element K, cuda_element H, cuda_element O>
void select(const cuda_policy& policy, std::span<const head_attention_view<A>> attention,
            std::span<const tensor_view<const K, 3>> keys, std::span<const tensor_view<const H, 2>> hidden,
            const config& cfg, const selection_batch& out, std::span<const tensor_view<O, 2>> features,
            std::span<result> results = {}) {
  using tokensel::detail::fail;
  using namespace tokensel::cuda_detail;
  const auto batch = static_cast<index_t>(attention.size());
  if (static_cast<index_t>(hidden.size()) != batch) fail(errc::shape_mismatch, "visionzip.hidden.size()", hidden.size(), "must equal the batch size " + std::to_string(batch));
  if (static_cast<index_t>(features.size()) != batch) fail(errc::shape_mismatch, "visionzip.features.size()", features.size(), "must equal the batch size " + std::to_string(batch));
  const bool need_keys = cfg.contextual > 0;
  if (need_keys && static_cast<index_t>(keys.size()) != batch) fail(errc::shape_mismatch, "visionzip.keys.size()", keys.size(), "must equal the batch size " + std::to_string(batch));
  check_outputs(out, results, batch, "visionzip");
  const tensor_view<const K, 3> no_keys{};
  auto keys_of = [&](index_t b) { return need_keys ? keys[static_cast<std::size_t>(b)] : no_keys; };
  for (index_t b = 0; b < batch; ++b) {
    const auto i = static_cast<std::size_t>(b);
    (void)cuda_detail::check_sample(attention[i], keys_of(b), hidden[i], features[i], cfg, out.indices.extent(1));
  }
  const auto tables = make_tables(batch, false, 0, [&](index_t b) {
    const auto i = static_cast<std::size_t>(b);
    return cuda_detail::describe(attention[i], keys_of(b), hidden[i], features[i], cfg);
  });
  const auto [n_max, dh_max] = cuda_detail::ragged_extents(attention, keys, cfg);
  cuda_detail::run_typed<A, K, H, O>(policy, tables, n_max, dh_max, cfg, out, results);
}

/// Workspace bytes of the single-sample select (the batch-of-1 layout plus the count slot).
template <cuda_element A, cuda_element K>
[[nodiscard]] std::size_t workspace_size(const head_attention_view<A>& attention, const tensor_view<const K, 3>& keys, const config& cfg) {
  using namespace tokensel::cuda_detail;
  return single_bytes(workspace_size(one(attention), one(keys), cfg));
}

/// One sample on the device: the CPU's single-sample select (attention [heads, N, N] or
/// [heads, 1, N], keys [heads, N, d_head], hidden [N, D], features [>= keep_count, D]). out
/// (device memory) gets the anchor indices; *device_result (device memory, optional) the
/// statistics and the count. Runs the batch-of-1 select.
template <cuda_element A, cuda_element K, cuda_element H, cuda_element O>
void select(const cuda_policy& policy, const head_attention_view<A>& attention, const tensor_view<const K, 3>& keys,
            const tensor_view<const H, 2>& hidden, const config& cfg, std::span<token_index> out,
            const tensor_view<O, 2>& features, result* device_result = nullptr) {
  using namespace tokensel::cuda_detail;
  const auto batch = one(attention);
  select(policy, batch, one(keys), one(hidden), cfg, single_output(policy, workspace_size(batch, one(keys), cfg), out, "visionzip"),
         one(features), single_result(device_result));
}

}  // namespace visionzip
// ---- visionzip fed from Q/K (statistics computed tile by tile: stats/qk_statistics.cuh) ----
//
// Computes the statistic the method reads into its workspace (after the method's own buffers,
// which start at offset 0 with the status word) and runs the method's device stages on it.

namespace visionzip {
TOKENSEL_CUDA_BEGIN_DETAIL

/// The method's own workspace bytes for [batch, 1, 1, n] rows (select(view) lays them out first).
template <cuda_element K>
std::size_t method_bytes(index_t batch, index_t n, const tensor_view<const K, 4>& keys, const config& cfg) {
  validate(cfg);
  tokensel::cuda_detail::workspace_plan m;
  (void)layout(m, batch, n, cfg.contextual > 0 && n > 0 ? keys.extent(3) : 0);
  return m.bytes();
}

/// The CLS row (row 0 of the row window) over every key of the column window.
inline tokensel::cuda_detail::selected_rows cls_row(index_t n) { return {{0, n > 0 ? 1 : 0}, "visionzip"}; }

TOKENSEL_CUDA_END_DETAIL  // cuda_detail

/// Workspace bytes of select(cuda_policy, qk_batch, keys, ...).
template <element Q, cuda_element K>
[[nodiscard]] std::size_t workspace_size(const qk_batch<Q>& src, const tensor_view<const K, 4>& keys, const config& cfg) {
  using namespace tokensel::cuda_detail;
  const index_t B = src.size(), n = B > 0 ? src[0].cols().count : 0;
  workspace_plan plan;
  reserve_method(plan, cuda_detail::method_bytes(B, n, keys, cfg));
  (void)plan.take<float>(count_of({B, n}));
  (void)qk_layout(plan, shape_of(qk_ref<Q>(src), cuda_detail::cls_row(n)), false, false, 1);
  return plan.bytes();
}

/// VisionZip from the Q/K of the feature layer (queries [heads, N or 1, d]: only the CLS row 0 is
/// read): the CLS row summed over heads, then the stages of select(view); keys / hidden / features
/// as there (keys may be src.keys).
template <element Q, cuda_element K, cuda_element H, cuda_element O>
void select(const cuda_policy& policy, const qk_batch<Q>& src, const tensor_view<const K, 4>& keys,
            const tensor_view<const H, 3>& hidden, const config& cfg, const selection_batch& out,
            const tensor_view<O, 3>& features, std::span<result> results = {}) {
  using namespace tokensel::cuda_detail;
  const qk_ref<Q> ref(src);
  ref.check("visionzip");
  const index_t B = src.size(), n = B > 0 ? src[0].cols().count : 0;
  workspace_plan plan(policy);
  reserve_method(plan, cuda_detail::method_bytes(B, n, keys, cfg));
  float* rows = plan.take<float>(count_of({B, n}));
  const auto n_ld = static_cast<long long>(n);
  if (B > 0 && n > 0) rows_batch(policy, plan, ref, cuda_detail::cls_row(n), head_reduction::sum, rows, n_ld, n_ld, false);
  plan.require("visionzip");
  const attention_view<float> view(B * n > 0 ? rows : nullptr, {B, 1, 1, n}, {n_ld, n_ld, n_ld, 1});
  visionzip::select(policy, view, keys, hidden, cfg, out, features, results);
}

}  // namespace visionzip

TOKENSEL_END_NAMESPACE
