// tokensel CUDA backend: VisionZip (spec section 7) on the device, from the attention view of the
// feature layer. Same indices, merged feature rows and statistics as visionzip::select of the CPU
// backend (tokensel/visionzip.hpp), bit for bit.
//
// Stages: CLS-row scores summed over heads (thread per token); one block per sample ranks them
// (top dominant - 1, rank counting) and writes the dominant indices and the remaining tokens
// (block scans); head-mean keys of the remaining tokens, L2-normalised (warp per token: the
// canonical dot for the norm, IEEE sqrt); assignment to the most similar target (warp per token,
// canonical dots, strict >); output rows (thread per row and feature column; the assigned rows
// summed in ascending token order). A 4-D batch is one launch per stage; a ragged batch runs the
// stages per sample.
#pragma once

#include <cstddef>
#include <span>
#include <string>

#include <cub/block/block_scan.cuh>

#include "tokensel/batch.hpp"
#include "tokensel/config.hpp"
#include "tokensel/cuda/detail/arith.cuh"
#include "tokensel/cuda/detail/batch.cuh"
#include "tokensel/cuda/detail/launch.cuh"
#include "tokensel/cuda/detail/map_kernels.cuh"
#include "tokensel/cuda/element.cuh"
#include "tokensel/cuda/error.cuh"
#include "tokensel/cuda/policy.cuh"
#include "tokensel/cuda/workspace.cuh"
#include "tokensel/visionzip.hpp"

TOKENSEL_BEGIN_NAMESPACE
namespace visionzip {
namespace cuda_detail {

using namespace tokensel::cuda_detail;

/// Everything the stages need; sample b's arrays start at base + b * stride_b.
struct args {
  const void* attn = nullptr;  // element (b, 0, 0, 0): head h, CLS query row, key j
  long long a_b = 0, a_h = 0, a_j = 0;
  int heads = 0, n = 0;
  const void* keys = nullptr;
  long long k_b = 0, k_h = 0, k_t = 0, k_c = 0;
  int kheads = 0, dh = 0;
  const void* hidden = nullptr;
  long long h_b = 0, h_t = 0, h_c = 0;
  int d = 0;
  void* features = nullptr;
  long long f_b = 0, f_r = 0, f_c = 0;
  int dominant = 0, contextual = 0, remaining = 0, step = 1, batch = 0;
  float* score = nullptr;  // [n - 1] per sample (vec stride)
  int* rest = nullptr;     // [remaining]
  int* owner = nullptr;    // [remaining]
  float* unit = nullptr;   // [remaining * dh] (unit stride per sample)
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
__global__ void __launch_bounds__(block) scores_kernel(const args a, int first) {
  const int b = first + static_cast<int>(blockIdx.y);
  const int j = 1 + static_cast<int>(blockIdx.x) * block + static_cast<int>(threadIdx.x);
  if (j >= a.n) return;
  const A* p = static_cast<const A*>(a.attn) + b * a.a_b + j * a.a_j;
  float s = 0.0f;
  bool bad = false;
  for (int h = 0; h < a.heads; ++h) {
    const float v = load_f32(p + h * a.a_h);
    bad = bad || !finite_f32(v);
    s = fadd(s, v);
  }
  a.score[b * a.vec + j - 1] = s;
  if (bad) {
    record(a.status, status_site::reduced_map, 0, static_cast<unsigned>(b), static_cast<unsigned>(j & 0xFFFF));
    a.skip[b] = 1;
  }
}

/// One block per sample: ranks of the n - 1 scores (top-k rule), out[0] = 0 and the dominant
/// tokens ascending, the remaining tokens ascending.
template <int Dummy = 0>
__global__ void __launch_bounds__(block) split_kernel(const args a, int first) {
  const int b = first + static_cast<int>(blockIdx.x);
  const int tid = static_cast<int>(threadIdx.x);
  const int m = a.n - 1, k = a.dominant - 1;
  if (__syncthreads_or(a.skip[b] != 0 ? 1 : 0) != 0) return;
  const float* s = a.score + b * a.vec;
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
      const float kj = s[j];
      int rank = 0;
      for (int q = 0; q < m; ++q) rank += beats_high(s[q], q, kj, j) ? 1 : 0;
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
__global__ void __launch_bounds__(block) unit_kernel(const args a, int first) {
  const int b = first + static_cast<int>(blockIdx.y);
  const int p = static_cast<int>(blockIdx.x) * (block / 32) + static_cast<int>(threadIdx.x >> 5);
  const int lane = static_cast<int>(threadIdx.x & 31u);
  if (p >= a.remaining) return;
  if (__shfl_sync(full_mask, a.skip[b] != 0 ? 1 : 0, 0) != 0) return;
  const int t = a.rest[b * a.vec + p];
  const K* key = static_cast<const K*>(a.keys) + b * a.k_b + t * a.k_t;
  float* u = a.unit + b * a.unit_stride + static_cast<long long>(p) * a.dh;
  float acc = 0.0f;
  int bad = -1;
  for (int c = lane; c < a.dh; c += 32) {
    float s = 0.0f;
    for (int h = 0; h < a.kheads; ++h) {
      const float v = load_f32(key + h * a.k_h + c * a.k_c);
      if (bad < 0 && !finite_f32(v)) bad = c;
      s = fadd(s, v);
    }
    const float x = fdiv(s, static_cast<float>(a.kheads));
    u[c] = x;
    acc = fadd(acc, fmul(x, x));
  }
  const float dot = __shfl_sync(full_mask, warp_tree_sum(acc), 0);
  if (bad >= 0) {
    record(a.status, status_site::keys_value, 0, static_cast<unsigned>(b),
           ((static_cast<unsigned>(t) & 0xFFFFu) << 16) | (static_cast<unsigned>(bad) & 0xFFFFu));
    a.skip[b] = 1;
  }
  const float norm = __fsqrt_rn(dot);
  if (norm > 0.0f) {
    for (int c = lane; c < a.dh; c += 32) u[c] = fdiv(u[c], norm);
  }
}

/// Warp per remaining token p: owner = the target with the highest canonical dot (first on ties),
/// -1 for the targets themselves.
template <int Dummy = 0>
__global__ void __launch_bounds__(block) assign_kernel(const args a, int first) {
  const int b = first + static_cast<int>(blockIdx.y);
  const int p = static_cast<int>(blockIdx.x) * (block / 32) + static_cast<int>(threadIdx.x >> 5);
  const int lane = static_cast<int>(threadIdx.x & 31u);
  if (p >= a.remaining) return;
  if (__shfl_sync(full_mask, a.skip[b] != 0 ? 1 : 0, 0) != 0) return;
  int* owner = a.owner + b * a.vec;
  if (p % a.step == 0 && p / a.step < a.contextual) {
    if (lane == 0) owner[p] = -1;
    return;
  }
  const float* unit = a.unit + b * a.unit_stride;
  const float* u = unit + static_cast<long long>(p) * a.dh;
  int best = 0;
  float best_sim = 0.0f;
  for (int t = 0; t < a.contextual; ++t) {
    const float* v = unit + static_cast<long long>(t) * a.step * a.dh;
    float acc = 0.0f;
    for (int c = lane; c < a.dh; c += 32) acc = fadd(acc, fmul(u[c], v[c]));
    const float sim = __shfl_sync(full_mask, warp_tree_sum(acc), 0);
    if (t == 0 || sim > best_sim) {
      best_sim = sim;
      best = t;
    }
  }
  if (lane == 0) owner[p] = best;
}

/// Thread per (output row r, feature column c): dominant rows copied; contextual row t = target
/// row + (sum of its assigned rows, ascending tokens, from 0.0f) / max(assigned, 1).
template <class H, class O>
__global__ void __launch_bounds__(block) output_kernel(const args a, int first) {
  const int b = first + static_cast<int>(blockIdx.y);
  const long long e = static_cast<long long>(blockIdx.x) * block + threadIdx.x;
  const int rows = a.dominant + a.contextual;
  const bool skipped = a.n == 0 || a.skip[b] != 0;
  if (e == 0) {
    const int count = skipped ? 0 : rows;
    a.counts[b] = count;
    if (a.results != nullptr) {
      result& r = a.results[b];
      r.count = count;
      r.dominant = skipped ? 0 : a.dominant;
      r.contextual = skipped ? 0 : a.contextual;
      r.merged = skipped || a.contextual == 0 ? 0 : a.remaining - a.contextual;
    }
  }
  if (skipped || e >= static_cast<long long>(rows) * a.d) return;
  const int r = static_cast<int>(e / a.d), c = static_cast<int>(e % a.d);
  const H* hidden = static_cast<const H*>(a.hidden) + b * a.h_b + c * a.h_c;
  O* dst = static_cast<O*>(a.features) + b * a.f_b + r * a.f_r + c * a.f_c;
  token_index* out = a.out + b * a.out_stride;
  if (r < a.dominant) {
    *dst = from_f32<O>(to_f32(hidden[static_cast<long long>(out[r]) * a.h_t]));
    return;
  }
  const int t = r - a.dominant;
  const int* rest = a.rest + b * a.vec;
  const int* owner = a.owner + b * a.vec;
  const int target = rest[t * a.step];
  if (c == 0) out[r] = target;
  float acc = 0.0f;
  int assigned = 0;
  for (int p = 0; p < a.remaining; ++p) {
    if (owner[p] != t) continue;
    ++assigned;
    acc = fadd(acc, to_f32(hidden[static_cast<long long>(rest[p]) * a.h_t]));
  }
  const float count = static_cast<float>(assigned > 0 ? assigned : 1);
  *dst = from_f32<O>(fadd(to_f32(hidden[static_cast<long long>(target) * a.h_t]), fdiv(acc, count)));
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

/// Runs the stages for `batch` samples that share one shape; a.* holds the batch strides.
template <class A, class K, class H, class O>
void launch(args a, const buffers& w, index_t batch, cudaStream_t stream) {
  a.score = w.score;
  a.rest = w.rest;
  a.owner = w.owner;
  a.unit = w.unit;
  a.skip = w.skip;
  a.vec = w.vec;
  a.unit_stride = w.unit_stride;
  a.status = w.status;
  for (index_t first = 0; first < batch; first += max_uniform_chunk) {
    const auto count = static_cast<unsigned>(std::min<index_t>(max_uniform_chunk, batch - first));
    const int f = static_cast<int>(first);
    if (a.n > 0) {
      if (a.n > 1) {
        scores_kernel<A><<<dim3(blocks_for(a.n - 1, block), count), block, 0, stream>>>(a, f);
        check_launch("visionzip_scores");
      }
      split_kernel<><<<count, block, 0, stream>>>(a, f);
      check_launch("visionzip_split");
      if (a.contextual > 0 && a.remaining > 0) {
        unit_kernel<K><<<dim3(blocks_for(a.remaining, block / 32), count), block, 0, stream>>>(a, f);
        check_launch("visionzip_unit");
        assign_kernel<><<<dim3(blocks_for(a.remaining, block / 32), count), block, 0, stream>>>(a, f);
        check_launch("visionzip_assign");
      }
    }
    const index_t elements = std::max<index_t>(static_cast<index_t>(a.dominant + a.contextual) * a.d, 1);
    output_kernel<H, O><<<dim3(blocks_for(elements, block), count), block, 0, stream>>>(a, f);
    check_launch("visionzip_output");
  }
}

template <class A, class K, class H, class O>
args make_args(const tensor_view<const A, 3>& attention, const tensor_view<const K, 3>& keys,
               const tensor_view<const H, 2>& hidden, const tensor_view<O, 2>& features, const config& cfg,
               const selection_batch& out, index_t row0, std::span<result> results) {
  args a;
  const index_t n = attention.extent(2);
  a.attn = attention.data();
  a.a_h = attention.stride(0);
  a.a_j = attention.stride(2);
  a.heads = to_int(attention.extent(0), "visionzip.attention.extent(0)");
  a.n = to_int(n, "visionzip.attention.extent(2)");
  a.keys = keys.data();
  a.k_h = keys.stride(0);
  a.k_t = keys.stride(1);
  a.k_c = keys.stride(2);
  a.kheads = to_int(keys.extent(0), "visionzip.keys.extent(0)");
  a.dh = to_int(keys.extent(2), "visionzip.keys.extent(2)");
  a.hidden = hidden.data();
  a.h_t = hidden.stride(0);
  a.h_c = hidden.stride(1);
  a.d = to_int(hidden.extent(1), "visionzip.hidden.extent(1)");
  a.features = static_cast<void*>(features.data());
  a.f_r = features.stride(0);
  a.f_c = features.stride(1);
  a.dominant = n > 0 ? static_cast<int>(cfg.dominant) : 0;
  a.contextual = n > 0 ? static_cast<int>(cfg.contextual) : 0;
  a.remaining = n > 0 ? static_cast<int>(n - cfg.dominant) : 0;
  a.step = a.contextual > 0 && a.remaining / a.contextual > 1 ? a.remaining / a.contextual : 1;
  a.out = out.indices.data() + row0 * out.indices.stride(0);
  a.out_stride = out.indices.stride(0);
  a.counts = out.counts.data() + row0;
  a.results = results.empty() ? nullptr : results.data() + row0;
  return a;
}

}  // namespace cuda_detail

/// Workspace bytes of select(cuda_policy, ...) for a 4-D batch (keys [batch, heads, N, d_head]).
template <cuda_element A, cuda_element K>
std::size_t workspace_size(const attention_view<A>& attention, const tensor_view<const K, 4>& keys, const config& cfg) {
  validate(cfg);
  tokensel::cuda_detail::workspace_plan plan;
  const bool need_keys = cfg.contextual > 0 && attention.extent(3) > 0;
  (void)cuda_detail::layout(plan, attention.extent(0), attention.extent(3), need_keys ? keys.extent(3) : 0);
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
  if (batch > 0) {
    (void)cuda_detail::check_sample(attention[0], need_keys ? keys[0] : no_keys, hidden[0], features[0], cfg, out.indices.extent(1));
  }
  workspace_plan plan(policy);
  const auto w = cuda_detail::layout(plan, batch, attention.extent(3), need_keys ? keys.extent(3) : 0);
  plan.require("visionzip");
  if (batch == 0) return;
  reset_status(w.status, policy.stream);
  check(cudaMemsetAsync(w.skip, 0, static_cast<std::size_t>(batch) * sizeof(int), policy.stream), "cudaMemsetAsync(skip)");
  cuda_detail::args a = cuda_detail::make_args(attention[0], need_keys ? keys[0] : no_keys, hidden[0], features[0], cfg, out, 0, results);
  a.a_b = attention.stride(0);
  a.k_b = need_keys ? keys.stride(0) : 0;
  a.h_b = hidden.stride(0);
  a.f_b = features.stride(0);
  a.batch = static_cast<int>(batch);
  cuda_detail::launch<device_type_t<A>, device_type_t<K>, device_type_t<H>, device_type_t<std::remove_cv_t<O>>>(a, w, batch, policy.stream);
}

}  // namespace visionzip
TOKENSEL_END_NAMESPACE
