// tokensel CUDA backend: DART (include/tokensel/methods/dart.hpp, docs/dart.md) on the device.
// Same kept indices and statistics as dart::select of the CPU backend, bit for bit: the key L1
// norms are the canonical sum over the head-major |key| row, the unit rows, the quota per pivot
// and the tie rules are the shared definitions (methods/detail/feature_rules.hpp, detail/arith.hpp).
//
// Stages: key L1 norm of every visual token and, when text pivots are used, of every text token
// (warp per token); pivots (one block per sample: rank counting under the top-k rule, block scans
// keep the pivots in ascending position) and the pool of non-pivot visual tokens; unit rows of
// the weighted hidden states of the visual span and the text pivots (warp per row); the pivots in
// ascending position, each taking its quota of the pool's least similar tokens (one 1024-thread
// block per sample: a warp per pool token computes its cosine to the pivot, the bottom-k rule by
// rank counting, block scans move the taken tokens out and compact the pool in order); the kept
// indices sorted ascending. Never ran on a GPU here (no device).
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
#include "tokensel/core/token_range.hpp"
#include "tokensel/cuda/core/element.cuh"
#include "tokensel/cuda/core/error.cuh"
#include "tokensel/cuda/core/policy.cuh"
#include "tokensel/cuda/core/workspace.cuh"
#include "tokensel/cuda/detail/arith.cuh"
#include "tokensel/cuda/detail/batch.cuh"
#include "tokensel/cuda/detail/launch.cuh"
#include "tokensel/cuda/detail/single.cuh"
#include "tokensel/cuda/methods/detail/feature_kernels.cuh"
#include "tokensel/methods/dart.hpp"

TOKENSEL_BEGIN_NAMESPACE
namespace dart {
TOKENSEL_CUDA_BEGIN_DETAIL

using namespace tokensel::cuda_detail;

/// One sequence: keys [heads, L, dh], hidden [L, D] (device pointers, element strides), the visual
/// span and the sample's counts (computed on the host: keep_count and the pivot counts).
struct sample_desc {
  const void* keys = nullptr;
  long long k_h = 0, k_t = 0, k_c = 0;
  const void* hidden = nullptr;
  long long h_t = 0, h_c = 0;
  long long k_b = 0, h_b = 0;  // uniform batches: bytes between samples
  int heads = 0, dh = 0, d = 0;
  int begin = 0, n = 0, m = 0;  // visual span [begin, begin + n), m text tokens after it
  int k = 0, pi = 0, pt = 0;    // kept, image pivots, text pivots

  __host__ __device__ sample_desc shifted(int s, long long) const {
    sample_desc w = *this;
    if (keys != nullptr) w.keys = static_cast<const char*>(keys) + static_cast<long long>(s) * k_b;
    if (hidden != nullptr) w.hidden = static_cast<const char*>(hidden) + static_cast<long long>(s) * h_b;
    return w;
  }
};

using table = basic_sample_table<sample_desc>;

/// Workspace regions (sample b's start at b * vec, its unit rows at b * unit_stride) and outputs.
struct args {
  device_status* status = nullptr;
  int* skip = nullptr;
  float* norm = nullptr;   // [n + m]: key L1 norms, visual then text
  int* pivot = nullptr;    // [n + m]: pivot sequence positions, image then text
  int* pool = nullptr;     // [2 n]: the pool, double-buffered
  int* flag = nullptr;     // [n]: taken by the current pivot
  float* sim = nullptr;    // [n]
  int* kept = nullptr;     // [n]: relative indices in the order they are kept
  float* unit = nullptr;   // [(n + pt) * d]
  const void* weight = nullptr;
  long long w_c = 0;
  long long vec = 0, unit_stride = 0;
  token_index* out = nullptr;
  long long out_stride = 0;
  token_index* counts = nullptr;
  result* results = nullptr;
};

inline constexpr int block = 256;
inline constexpr int take_block = 1024;

/// Warp per token i of [0, n + m) (visual, then text when text pivots are used): the canonical
/// sum of |keys[h, t, c]| over the head-major row h * dh + c.
template <class K>
__global__ void __launch_bounds__(block) l1_kernel(const table t, const args a) {
  const int s = static_cast<int>(blockIdx.y), b = t.first + s;
  const sample_desc d = t.get(s);
  const int i = static_cast<int>(blockIdx.x) * (block / 32) + static_cast<int>(threadIdx.x >> 5);
  if (i >= d.n + (d.pt > 0 ? d.m : 0)) return;
  const int lane = static_cast<int>(threadIdx.x & 31u), tok = d.begin + i;
  const K* key = static_cast<const K*>(d.keys) + tok * d.k_t;
  const int row = d.heads * d.dh;
  float acc = 0.0f;
  int bad = INT_MAX;
  for (int f = lane; f < row; f += 32) {
    const float v = load_f32(key + (f / d.dh) * d.k_h + (f % d.dh) * d.k_c);
    if (bad == INT_MAX && !finite_f32(v)) bad = f;
    acc = fadd(acc, fabsf(v));
  }
  bad = __reduce_min_sync(full_mask, bad);
  const float l1 = warp_tree_sum(acc);
  if (lane != 0) return;
  a.norm[b * a.vec + i] = l1;
  if (bad != INT_MAX) {
    record(a.status, status_site::feature_value, static_cast<unsigned>(feature_input::dart_keys), static_cast<unsigned>(b),
           ((static_cast<unsigned>(tok) & 0xFFFFu) << 16) | (static_cast<unsigned>(bad) & 0xFFFFu));
    a.skip[b] = 1;
  }
}

/// One block per sample: the weight's values (the CPU checks them first), the image pivots (top
/// pi key norms of the span), the text pivots (top pt of the text tokens), both ascending, and the
/// pool of the other visual tokens, ascending.
template <class W>
__global__ void __launch_bounds__(block) pivot_kernel(const table t, const args a) {
  const int s = static_cast<int>(blockIdx.x), b = t.first + s;
  const sample_desc d = t.get(s);
  if (d.n == 0) return;
  const W* w = static_cast<const W*>(a.weight);
  int bad = a.skip[b];
  for (int c = static_cast<int>(threadIdx.x); w != nullptr && c < d.d; c += block) {
    if (!finite_f32(load_f32(w + c * a.w_c))) {
      record(a.status, status_site::feature_value, static_cast<unsigned>(feature_input::dart_norm_weight), static_cast<unsigned>(b),
             static_cast<unsigned>(c));
      bad = 1;
    }
  }
  if (__syncthreads_or(bad) != 0) {
    if (threadIdx.x == 0) a.skip[b] = 1;
    return;
  }
  const float* norm = a.norm + b * a.vec;
  int* pivot = a.pivot + b * a.vec;
  int* kept = a.kept + b * a.vec;
  (void)block_compact<block>(
      d.n, [&](int j) { return rank_among<true>(norm, d.n, j) < d.pi; },
      [&](int j, int p) {
        pivot[p] = d.begin + j;
        kept[p] = j;
      });
  (void)block_compact<block>(
      d.pt > 0 ? d.m : 0, [&](int j) { return rank_among<true>(norm + d.n, d.m, j) < d.pt; },
      [&](int j, int p) { pivot[d.pi + p] = d.begin + d.n + j; });
  int* pool = a.pool + 2 * b * a.vec;
  (void)block_compact<block>(
      d.n, [&](int j) { return rank_among<true>(norm, d.n, j) >= d.pi; }, [&](int j, int p) { pool[p] = j; });
}

/// Warp per row r of [0, n + pt): the unit row of the weighted hidden state of visual token r, or
/// of text pivot r - n. Only launched when the pivots take tokens.
template <class H, class W>
__global__ void __launch_bounds__(block) unit_kernel(const table t, const args a) {
  const int s = static_cast<int>(blockIdx.y), b = t.first + s;
  const sample_desc d = t.get(s);
  const int r = static_cast<int>(blockIdx.x) * (block / 32) + static_cast<int>(threadIdx.x >> 5);
  if (r >= d.n + d.pt || d.k == d.pi) return;
  if (__shfl_sync(full_mask, a.skip[b] != 0 ? 1 : 0, 0) != 0) return;
  const int tok = r < d.n ? d.begin + r : a.pivot[b * a.vec + d.pi + (r - d.n)];
  const H* x = static_cast<const H*>(d.hidden) + tok * d.h_t;
  float* u = a.unit + b * a.unit_stride + static_cast<long long>(r) * d.d;
  const bool ok = unit_row_warp(x, d.h_c, static_cast<const W*>(a.weight), a.w_c, d.d, u, a.status, feature_input::dart_hidden,
                                static_cast<unsigned>(b), static_cast<unsigned>(tok));
  if (!ok && (threadIdx.x & 31u) == 0) a.skip[b] = 1;
}

/// Pivot q takes the quota tokens of the pool least similar to it (bottom-k rule over pool
/// positions); they are appended to kept and the pool is compacted in order. Returns the new size.
__device__ inline int take_for_pivot(const sample_desc& d, const args& a, int b, int q, int quota, int size, int*& pool, int*& spare,
                              int written) {
  const int tid = static_cast<int>(threadIdx.x), warp = tid >> 5;
  const float* unit = a.unit + b * a.unit_stride;
  const int prow = q < d.pi ? a.pivot[b * a.vec + q] - d.begin : d.n + (q - d.pi);
  const float* p = unit + static_cast<long long>(prow) * d.d;
  float* sim = a.sim + b * a.vec;
  int* flag = a.flag + b * a.vec;
  int* kept = a.kept + b * a.vec;
  for (int c = warp; c < size; c += take_block / 32) {
    const float v = warp_dot(p, unit + static_cast<long long>(pool[c]) * d.d, d.d);
    if ((tid & 31) == 0) sim[c] = v;
  }
  __syncthreads();
  for (int c = tid; c < size; c += take_block) flag[c] = rank_among<false>(sim, size, c) < quota ? 1 : 0;
  __syncthreads();
  const int* from = pool;
  int* to = spare;
  (void)block_compact<take_block>(size, [&](int c) { return flag[c] != 0; }, [&](int c, int r) { kept[written + r] = from[c]; });
  const int left = block_compact<take_block>(size, [&](int c) { return flag[c] == 0; }, [&](int c, int r) { to[r] = from[c]; });
  spare = pool;
  pool = to;
  return left;
}

/// One block per sample: the pivots in ascending position take their quotas; the kept indices
/// (image pivots and taken tokens) ascending into the output row; count and statistics.
template <int Dummy = 0>
__global__ void __launch_bounds__(take_block) take_kernel(const table t, const args a) {
  const int s = static_cast<int>(blockIdx.x), b = t.first + s;
  const sample_desc d = t.get(s);
  const bool skipped = d.n == 0 || a.skip[b] != 0;
  if (!skipped) {
    const int pivots = d.pi + d.pt, extra = d.k - d.pi;
    int* pool = a.pool + 2 * b * a.vec;
    int* spare = pool + a.vec;
    int size = d.n - d.pi, written = d.pi;
    for (int q = 0; q < pivots && extra > 0; ++q) {
      const int quota = static_cast<int>(tokensel::detail::dart_quota(q, extra, pivots));
      if (quota == 0) continue;
      size = take_for_pivot(d, a, b, q, quota, size, pool, spare, written);
      written += quota;
    }
    block_sort_distinct(a.kept + b * a.vec, d.k, a.out + b * a.out_stride);
  }
  if (threadIdx.x == 0) {
    a.counts[b] = skipped ? 0 : d.k;
    if (a.results != nullptr) a.results[b] = skipped ? result{} : result{d.k, d.pi, d.pt};
  }
}

inline args layout(workspace_plan& plan, index_t batch, index_t nm, index_t rows, index_t d) {
  args a;
  a.status = plan.status();
  a.vec = static_cast<long long>(nm);
  a.unit_stride = static_cast<long long>(rows) * static_cast<long long>(d);
  a.skip = plan.take<int>(count_of({batch}));
  a.norm = plan.take<float>(count_of({batch, nm}));
  a.pivot = plan.take<int>(count_of({batch, nm}));
  a.pool = plan.take<int>(count_of({batch, nm, 2}));
  a.flag = plan.take<int>(count_of({batch, nm}));
  a.sim = plan.take<float>(count_of({batch, nm}));
  a.kept = plan.take<int>(count_of({batch, nm}));
  a.unit = plan.take<float>(count_of({batch, rows, d}));
  return a;
}

/// The CPU's per-sample checks (check_shapes and select, same order and messages) and the
/// sample's descriptor. The weight's values are checked on the device.
template <class K, class H>
sample_desc check_sample(const tensor_view<const K, 3>& keys, const tensor_view<const H, 2>& hidden, index_t weight_len,
                         const token_range& visual, const config& cfg, index_t capacity) {
  using tokensel::detail::fail;
  const index_t len = hidden.extent(0);
  if (visual.begin < 0 || visual.count < 0 || visual.end() > len) {
    fail(errc::invalid_argument, "dart.visual", "[" + std::to_string(visual.begin) + ", " + std::to_string(visual.end()) + ")",
         "must lie within the " + std::to_string(len) + " tokens of the sequence");
  }
  sample_desc s;
  if (visual.count > 0) {
    if (keys.extent(1) != len) fail(errc::shape_mismatch, "dart.keys.extent(1)", keys.extent(1), "must equal the " + std::to_string(len) + " tokens of hidden");
    if (keys.extent(0) < 1) fail(errc::shape_mismatch, "dart.keys.extent(0)", keys.extent(0), "no heads");
    if (keys.extent(2) < 1) fail(errc::shape_mismatch, "dart.keys.extent(2)", keys.extent(2), "empty key vectors");
    if (hidden.extent(1) < 1) fail(errc::shape_mismatch, "dart.hidden.extent(1)", hidden.extent(1), "empty hidden states");
    if (weight_len != 0 && weight_len != hidden.extent(1)) {
      fail(errc::shape_mismatch, "dart.norm_weight.extent(0)", weight_len,
           "must be 0 (no weight) or the feature width " + std::to_string(hidden.extent(1)));
    }
  }
  const index_t n = visual.count, k = keep_count(n, cfg);
  tokensel::detail::check_capacity(static_cast<std::size_t>(capacity), k, "dart.out.size()");
  if (n == 0) return s;
  const index_t m = len - visual.end(), pi = std::min(cfg.image_pivots, k), pt = std::min(cfg.text_pivots, m);
  if (k - pi > 0 && pi + pt == 0) {
    fail(errc::invalid_argument, "dart.image_pivots", cfg.image_pivots,
         "no pivot to take the other " + std::to_string(k - pi) + " tokens (no text tokens follow the visual span)");
  }
  s.keys = keys.data();
  s.k_h = keys.stride(0);
  s.k_t = keys.stride(1);
  s.k_c = keys.stride(2);
  s.hidden = hidden.data();
  s.h_t = hidden.stride(0);
  s.h_c = hidden.stride(1);
  s.heads = to_int(keys.extent(0), "dart.keys.extent(0)");
  s.dh = to_int(keys.extent(2), "dart.keys.extent(2)");
  (void)to_int(keys.extent(0) * keys.extent(2), "dart.keys.extent(0) * dart.keys.extent(2)");
  s.d = to_int(hidden.extent(1), "dart.hidden.extent(1)");
  s.begin = to_int(visual.begin, "dart.visual.begin");
  s.n = to_int(n, "dart.visual.count");
  s.m = to_int(m, "dart.text_tokens");
  s.k = static_cast<int>(k);
  s.pi = static_cast<int>(pi);
  s.pt = static_cast<int>(pt);
  return s;
}

/// Workspace extents of a batch: n + m (norms, pivots, pool), rows of unit features, width.
struct extents {
  index_t nm = 0, rows = 0, d = 0;
  void add(index_t n, index_t len, index_t d_, const config& cfg) {
    if (n <= 0) return;
    nm = std::max(nm, len);  // n + m <= L
    rows = std::max(rows, std::min(len, n + cfg.text_pivots));
    d = std::max(d, d_);
  }
};

template <class K, class H, class W, class Tables>
void run(const cuda_policy& policy, const Tables& tables, const extents& e, const void* weight, long long w_c,
         const selection_batch& out, std::span<result> results) {
  const index_t batch = tables.size();
  workspace_plan plan(policy);
  args a = layout(plan, batch, e.nm, e.rows, e.d);
  plan.require("dart");
  if (batch == 0) return;
  cudaStream_t stream = policy.stream;
  reset_status(a.status, stream);
  check(cudaMemsetAsync(a.skip, 0, static_cast<std::size_t>(batch) * sizeof(int), stream), "cudaMemsetAsync(skip)");
  a.weight = weight;
  a.w_c = w_c;
  a.out = out_rows(out);
  a.out_stride = out_stride(out);
  a.counts = out.counts.data();
  a.results = results.empty() ? nullptr : results.data();
  tables.each([&](const table& t) {
    const auto samples = static_cast<unsigned>(t.count);
    const int l1_rows = t.max_of([](const sample_desc& s) { return s.n + (s.pt > 0 ? s.m : 0); });
    if (l1_rows > 0) {
      l1_kernel<K><<<dim3(blocks_for(l1_rows, block / 32), samples), block, 0, stream>>>(t, a);
      check_launch("dart_l1");
      pivot_kernel<W><<<samples, block, 0, stream>>>(t, a);
      check_launch("dart_pivots");
    }
    const int rows = t.max_of([](const sample_desc& s) { return s.k > s.pi ? s.n + s.pt : 0; });
    if (rows > 0) {
      unit_kernel<H, W><<<dim3(blocks_for(rows, block / 32), samples), block, 0, stream>>>(t, a);
      check_launch("dart_unit");
    }
    take_kernel<><<<samples, take_block, 0, stream>>>(t, a);
    check_launch("dart_take");
  });
}

TOKENSEL_CUDA_END_DETAIL  // cuda_detail

/// Workspace bytes of select(cuda_policy, keys [batch, heads, L, dh], hidden [batch, L, D], ...).
template <cuda_element K, cuda_element H>
[[nodiscard]] std::size_t workspace_size(const tensor_view<const K, 4>& keys, const feature_view<const H>& hidden, const token_range& visual,
                                         const config& cfg) {
  (void)keys;
  validate(cfg);
  cuda_detail::extents e;
  e.add(visual.count, hidden.extent(1), hidden.extent(2), cfg);
  tokensel::cuda_detail::workspace_plan plan;
  (void)cuda_detail::layout(plan, hidden.extent(0), e.nm, e.rows, e.d);
  return plan.bytes();
}

/// Workspace bytes of the ragged select(cuda_policy, ...).
template <cuda_element K, cuda_element H>
[[nodiscard]] std::size_t workspace_size(std::span<const tensor_view<const K, 3>> keys, std::span<const matrix_view<const H>> hidden,
                                         std::span<const token_range> visual, const config& cfg) {
  (void)keys;
  validate(cfg);
  cuda_detail::extents e;
  for (std::size_t b = 0; b < hidden.size() && b < visual.size(); ++b) e.add(visual[b].count, hidden[b].extent(0), hidden[b].extent(1), cfg);
  tokensel::cuda_detail::workspace_plan plan;
  (void)cuda_detail::layout(plan, static_cast<index_t>(hidden.size()), e.nm, e.rows, e.d);
  return plan.bytes();
}

/// Batch on the device of equal-length sequences with the same visual span: keys [batch,
/// kv_heads, L, d_head], hidden [batch, L, D], norm_weight [D] or empty (device memory); sample b
/// writes out.indices(b, :) (relative to the span, ascending); results (device, optional). The
/// CPU's batched dart::select.
template <cuda_element K, cuda_element H, cuda_element W = float>
void select(const cuda_policy& policy, const tensor_view<const K, 4>& keys, const feature_view<const H>& hidden,
            const vector_view<const W>& norm_weight, const token_range& visual, const config& cfg, const selection_batch& out,
            std::span<result> results = {}) {
  using namespace tokensel::cuda_detail;
  const index_t batch = hidden.extent(0);
  if (visual.count > 0 && keys.extent(0) != batch) {
    tokensel::detail::fail(errc::shape_mismatch, "dart.keys.extent(0)", keys.extent(0), "must equal the batch size " + std::to_string(batch));
  }
  check_outputs(out, results, batch, "dart");
  cuda_detail::sample_desc first;
  if (batch > 0) {
    first = cuda_detail::check_sample(visual.count > 0 ? keys[0] : tensor_view<const K, 3>{}, hidden[0], norm_weight.extent(0), visual, cfg,
                                      out.indices.extent(1));
    first.k_b = visual.count > 0 ? static_cast<long long>(keys.stride(0)) * static_cast<long long>(sizeof(K)) : 0;
    first.h_b = static_cast<long long>(hidden.stride(0)) * static_cast<long long>(sizeof(H));
  }
  cuda_detail::extents e;
  e.add(visual.count, hidden.extent(1), hidden.extent(2), cfg);
  const auto tables = make_tables(batch, true, 0, [first](index_t b) { return first.shifted(static_cast<int>(b), 0); });
  cuda_detail::run<device_type_t<K>, device_type_t<H>, device_type_t<W>>(
      policy, tables, e, norm_weight.extent(0) > 0 ? norm_weight.data() : nullptr, norm_weight.extent(0) > 0 ? norm_weight.stride(0) : 0,
      out, results);
}

/// Ragged batch on the device: one sequence per sample (keys [kv_heads, L_b, d_head], hidden
/// [L_b, D]), each with its own visual span; the CPU's ragged dart::select.
template <cuda_element K, cuda_element H, cuda_element W = float>
void select(const cuda_policy& policy, std::span<const tensor_view<const K, 3>> keys, std::span<const matrix_view<const H>> hidden,
            const vector_view<const W>& norm_weight, std::span<const token_range> visual, const config& cfg,
            const selection_batch& out, std::span<result> results = {}) {
  using namespace tokensel::cuda_detail;
  using tokensel::detail::fail;
  const auto batch = static_cast<index_t>(hidden.size());
  if (static_cast<index_t>(keys.size()) != batch) fail(errc::shape_mismatch, "dart.keys.size()", keys.size(), "must equal the batch size " + std::to_string(batch));
  if (static_cast<index_t>(visual.size()) != batch) fail(errc::shape_mismatch, "dart.visual.size()", visual.size(), "must equal the batch size " + std::to_string(batch));
  check_outputs(out, results, batch, "dart");
  cuda_detail::extents e;
  auto desc = [&](index_t b) {
    const auto i = static_cast<std::size_t>(b);
    return cuda_detail::check_sample(keys[i], hidden[i], norm_weight.extent(0), visual[i], cfg, out.indices.extent(1));
  };
  for (index_t b = 0; b < batch; ++b) {
    (void)desc(b);
    const auto i = static_cast<std::size_t>(b);
    e.add(visual[i].count, hidden[i].extent(0), hidden[i].extent(1), cfg);
  }
  const auto tables = make_tables(batch, false, 0, desc);
  cuda_detail::run<device_type_t<K>, device_type_t<H>, device_type_t<W>>(
      policy, tables, e, norm_weight.extent(0) > 0 ? norm_weight.data() : nullptr, norm_weight.extent(0) > 0 ? norm_weight.stride(0) : 0,
      out, results);
}

/// Workspace bytes of the single-sequence select (the batch-of-1 layout plus the count slot).
template <cuda_element K, cuda_element H>
[[nodiscard]] std::size_t workspace_size(const tensor_view<const K, 3>& keys, const matrix_view<const H>& hidden, const token_range& visual,
                                         const config& cfg) {
  using namespace tokensel::cuda_detail;
  return single_bytes(workspace_size(one(keys), one(hidden), one(visual), cfg));
}

/// One sequence on the device: the CPU's single-sequence select; out (device memory) gets the
/// kept indices relative to the span, ascending; *device_result (device memory, optional) the
/// statistics. Runs the batch-of-1 select.
template <cuda_element K, cuda_element H, cuda_element W = float>
void select(const cuda_policy& policy, const tensor_view<const K, 3>& keys, const matrix_view<const H>& hidden,
            const vector_view<const W>& norm_weight, const token_range& visual, const config& cfg, std::span<token_index> out,
            result* device_result = nullptr) {
  using namespace tokensel::cuda_detail;
  select(policy, one(keys), one(hidden), norm_weight, one(visual), cfg,
         single_output(policy, workspace_size(keys, hidden, visual, cfg), out, "dart"), single_result(device_result));
}

}  // namespace dart
TOKENSEL_END_NAMESPACE
