// tokensel CUDA backend: LLaVA-PruMerge and PruMerge+ (spec section 6) on the device, from the
// queries and keys of the last CLIP layer. Same indices, order, merged feature rows and
// statistics as prumerge::select of the CPU backend (tokensel/prumerge.hpp), bit for bit.
//
// Stages (one launch each for a whole 4-D batch):
//   check   (merge only) features finite; thread per element
//   logits  warp per token j = 0..n: canonical dots q . k_j (times the scale) and, when merging,
//           k_j . k_j for the unit key k_j / max(sqrt, 1e-12) (IEEE sqrt, fp32 division)
//   select  block per sample: max, glibc's expf (detail/libm_expf.cuh), the canonical sum of the
//           n+1 exponentials by one warp, a_j = e_{j+1} / z; counted quartiles and fences
//           (detail/iqr.cuh); top-Kc by rank counting; PruMerge+ grid (block scan); fixed or
//           parity order; counts and statistics
//   cosine  (merge, neighbours > 0) warp per (patch j, 8 kept rows): canonical dots of unit keys
//   nearest (merge, neighbours > 0) block per kept row: rank counting of the other patches by
//           cosine (high first, lower index on ties); flags the `neighbours` nearest
//   rows    thread per (output row, feature column): x_i + sum over the flagged j ascending of
//           a_j x_j (product rounded, then added, from 0.0f); the extra row over the unkept j
// select_from_attention starts from given CLS attention rows (scores: thread per value, widened
// and checked) and runs the select stage without the softmax.
// The kernels size their grids by max_count(n, cfg) (the count is data-dependent and known only
// on the device); rows beyond a sample's count exit at once.
#pragma once

#include <algorithm>
#include <cstddef>
#include <span>
#include <string>
#include <type_traits>

#include <cub/block/block_scan.cuh>

#include "tokensel/cuda/core/abi.cuh"
#include "tokensel/core/batch.hpp"
#include "tokensel/core/config.hpp"
#include "tokensel/cuda/detail/arith.cuh"
#include "tokensel/cuda/detail/batch.cuh"
#include "tokensel/cuda/stats/detail/iqr.cuh"
#include "tokensel/cuda/detail/launch.cuh"
#include "tokensel/cuda/detail/single.cuh"
#include "tokensel/cuda/detail/libm_expf.cuh"
#include "tokensel/cuda/stats/detail/map_kernels.cuh"
#include "tokensel/cuda/core/element.cuh"
#include "tokensel/cuda/core/error.cuh"
#include "tokensel/cuda/core/policy.cuh"
#include "tokensel/cuda/core/workspace.cuh"
#include "tokensel/methods/prumerge.hpp"

TOKENSEL_BEGIN_NAMESPACE
namespace prumerge {
TOKENSEL_CUDA_BEGIN_DETAIL

using namespace tokensel::cuda_detail;

/// Data problems are recorded under status_site::keys_value with aux = the CPU's check order
/// (features, queries, keys, logits), so the smallest key is the CPU's first exception.
enum problem : unsigned { features_value = 1, queries_value = 2, keys_value_ = 3, logits_value = 4, attention_value = 5 };

struct args {
  const void* q = nullptr;  // element (0, 0, 0): the CLS query of sample 0
  long long q_b = 0, q_c = 0;
  const void* k = nullptr;
  long long k_b = 0, k_t = 0, k_c = 0;
  int n = 0, dim = 0;  // n patches (keys hold n + 1 rows), key width D
  float scale = 1.0f;
  const void* x = nullptr;  // features [B, n, d]
  long long x_b = 0, x_t = 0, x_c = 0;
  int d = 0;
  void* y = nullptr;  // merged [B, rows, d]
  long long y_b = 0, y_r = 0, y_c = 0;
  int with_features = 0, merge = 0, plus = 0, parity = 0, extra = 0, neighbours = 0;
  double multiplier = 1.5;
  int cap = 0;  // max_count(n, cfg): kept rows the grids are sized for
  // workspace
  float* logit = nullptr;  // [n + 1] per sample (exponentials after the select stage)
  float* attn = nullptr;   // [n]
  float* unit = nullptr;   // [n * dim]
  int* order = nullptr;    // [n]
  int* kept = nullptr;     // [n]
  float* cosine = nullptr; // [cap * n]
  unsigned char* near = nullptr;  // [cap * n]
  int* count = nullptr;    // [1] per sample
  int* skip = nullptr;     // [1] per sample
  long long vec = 0, unit_stride = 0, pair_stride = 0;
  int sample0 = 0;  // batch position of kernel sample 0 (ragged batches run one sample per launch)
  int from_scores = 0;  // select_from_attention: attn already holds the given CLS attention rows
  const void* scores = nullptr;  // [B, n] CLS attention rows (select_from_attention)
  long long s_b = 0, s_j = 0;
  device_status* status = nullptr;
  token_index* out = nullptr;
  long long out_stride = 0;
  token_index* counts = nullptr;
  result* results = nullptr;
};

inline constexpr int block = 256;

__device__ __forceinline__ void flag(const args& a, int b, unsigned what, unsigned index) {
  record(a.status, status_site::keys_value, what, static_cast<unsigned>(b + a.sample0), index);
  a.skip[b] = 1;
}

__device__ __forceinline__ unsigned pack(int row, int col) {
  return ((static_cast<unsigned>(row) & 0xFFFFu) << 16) | (static_cast<unsigned>(col) & 0xFFFFu);
}

/// Thread per feature element: NaN/Inf -> prumerge.features[t, c] (checked only when merging).
template <class F>
__global__ void __launch_bounds__(block) check_kernel(const args a, int first) {
  const int b = first + static_cast<int>(blockIdx.y);
  const long long e = static_cast<long long>(blockIdx.x) * block + threadIdx.x;
  if (e >= static_cast<long long>(a.n) * a.d) return;
  const int t = static_cast<int>(e / a.d), c = static_cast<int>(e % a.d);
  const float v = load_f32(static_cast<const F*>(a.x) + b * a.x_b + t * a.x_t + c * a.x_c);
  if (!finite_f32(v)) flag(a, b, features_value, pack(t, c));
}

/// Warp per token j = 0..n: logit[j] = canonical_dot(q, k_j) * scale; when merging, the unit key
/// of patch j - 1. The warp of token 0 also checks the query.
template <class T>
__global__ void __launch_bounds__(block) logits_kernel(const args a, int first) {
  const int b = first + static_cast<int>(blockIdx.y);
  const int j = static_cast<int>(blockIdx.x) * (block / 32) + static_cast<int>(threadIdx.x >> 5);
  const int lane = static_cast<int>(threadIdx.x & 31u);
  if (j > a.n) return;
  const T* q = static_cast<const T*>(a.q) + b * a.q_b;
  const T* k = static_cast<const T*>(a.k) + b * a.k_b + j * a.k_t;
  float dot = 0.0f, self = 0.0f;
  int bad_q = -1, bad_k = -1;
  for (int c = lane; c < a.dim; c += 32) {
    const float qv = load_f32(q + c * a.q_c), kv = load_f32(k + c * a.k_c);
    if (bad_q < 0 && !finite_f32(qv)) bad_q = c;
    if (bad_k < 0 && !finite_f32(kv)) bad_k = c;
    dot = fadd(dot, fmul(qv, kv));
    self = fadd(self, fmul(kv, kv));
  }
  dot = warp_tree_sum(dot);
  self = __shfl_sync(full_mask, warp_tree_sum(self), 0);
  if (j == 0 && bad_q >= 0) flag(a, b, queries_value, static_cast<unsigned>(bad_q));
  if (bad_k >= 0) flag(a, b, keys_value_, pack(j, bad_k));
  if (lane == 0) a.logit[b * (a.vec + 1) + j] = fmul(dot, a.scale);
  if (a.merge != 0 && j >= 1) {
    const float denom = std_max(__fsqrt_rn(self), 1e-12f);
    float* u = a.unit + b * a.unit_stride + static_cast<long long>(j - 1) * a.dim;
    for (int c = lane; c < a.dim; c += 32) u[c] = fdiv(load_f32(k + c * a.k_c), denom);
  }
}

/// The CLS softmax of the logits e[0 .. n] of one sample (finite; m = this thread's max of its
/// share), by the whole block: max, expf(e_j - max) in place, canonical sum (warp 0),
/// attn[j] = e[j + 1] / sum. Ends with a barrier.
__device__ __forceinline__ void softmax(const args& a, float* e, float* attn, float m, float* red, float* total) {
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int n = a.n;
  for (int w = 16; w >= 1; w /= 2) m = std_max(m, __shfl_down_sync(full_mask, m, w));
  if (lane == 0) red[warp] = m;
  __syncthreads();
  if (tid == 0) {
    float mm = red[0];
    for (int w = 1; w < block / 32; ++w) mm = std_max(mm, red[w]);
    red[0] = mm;
  }
  __syncthreads();
  m = red[0];
  for (int j = tid; j <= n; j += block) e[j] = libm_expf_nonpositive(fsub(e[j], m));
  __syncthreads();
  if (warp == 0) {  // canonical_sum of e[0 .. n]
    float acc = 0.0f;
    for (int j = lane; j <= n; j += 32) acc = fadd(acc, e[j]);
    acc = warp_tree_sum(acc);
    if (lane == 0) *total = acc;
  }
  __syncthreads();
  const float z = *total;
  for (int j = tid; j < n; j += block) attn[j] = fdiv(e[j + 1], z);
  __syncthreads();
}

/// Thread per (patch j, sample): attn = the given CLS attention widened to fp32; NaN/Inf ->
/// prumerge.attention[j] (select_from_attention).
template <class A>
__global__ void __launch_bounds__(block) scores_kernel(const args a, int first) {
  const int b = first + static_cast<int>(blockIdx.y);
  const int j = static_cast<int>(blockIdx.x) * block + static_cast<int>(threadIdx.x);
  if (j >= a.n) return;
  const float v = load_f32(static_cast<const A*>(a.scores) + b * a.s_b + j * a.s_j);
  a.attn[b * a.vec + j] = v;
  if (!finite_f32(v)) flag(a, b, attention_value, static_cast<unsigned>(j));
}

/// select_kernel's logit check: non-finite -> prumerge.logits[j] (the CPU checks them before
/// anything else here). m becomes this thread's max of its finite share; returns whether it saw a
/// non-finite logit.
__device__ __forceinline__ bool check_logits(const args& a, int b, const float* e, float& m) {
  bool bad = false;
  for (int j = static_cast<int>(threadIdx.x); j <= a.n && a.from_scores == 0; j += block) {
    const float v = e[j];
    if (!finite_f32(v)) {
      record(a.status, status_site::keys_value, logits_value, static_cast<unsigned>(b + a.sample0), static_cast<unsigned>(j));
      bad = true;
    } else {
      m = std_max(m, v);  // the max of finite values: order-free (a zero's sign never matters below)
    }
  }
  return bad;
}

/// Outliers (strict > upper) are exactly the top-Kc: kept[j] = 1 for them, order[0 .. kc) their
/// ranks (the parity order). Returns kc. Ends with a barrier.
__device__ __forceinline__ int rank_outliers(const args& a, const float* attn, int* kept, int* order, double upper) {
  const int tid = static_cast<int>(threadIdx.x), n = a.n;
  __shared__ int outliers_sh;
  if (tid == 0) outliers_sh = 0;
  __syncthreads();
  int mine = 0;
  for (int j = tid; j < n; j += block) {
    const bool o = static_cast<double>(attn[j]) > upper;
    kept[j] = o ? 1 : 0;
    mine += o ? 1 : 0;
  }
  atomicAdd(&outliers_sh, mine);
  __syncthreads();
  const int kc = outliers_sh;
  for (int j = tid; j < n; j += block) {
    if (kept[j] == 0) continue;
    const float aj = attn[j];
    int rank = 0;
    for (int i = 0; i < n; ++i) rank += beats_high(attn[i], i, aj, j) ? 1 : 0;
    order[rank] = j;  // rank < kc: only outliers beat an outlier
  }
  __syncthreads();
  return kc;
}

using select_scan = cub::BlockScan<int, block>;

/// PruMerge+ grid after the kc outliers: every stride-th patch not already kept is appended to
/// order (kept = 2: a grid token, not an outlier). Returns the kept count; stride is set.
__device__ __forceinline__ int add_plus_grid(const args& a, int kc, int* kept, int* order, int& stride,
                                             typename select_scan::TempStorage& scratch) {
  const int tid = static_cast<int>(threadIdx.x), n = a.n;
  stride = static_cast<int>(prumerge::detail::plus_grid_stride(n, kc));  // the CPU's rules
  const int cells = static_cast<int>(prumerge::detail::grid_size(n, stride));
  int base = 0;
  for (int g0 = 0; g0 < cells; g0 += block) {
    const int g = g0 + tid;
    const int add = (g < cells && kept[g * stride] == 0) ? 1 : 0;
    int pos = 0, sum = 0;
    select_scan(scratch).ExclusiveSum(add, pos, sum);
    if (add != 0) {
      order[kc + base + pos] = g * stride;
      kept[g * stride] = 2;  // a grid token (not an outlier): still kept
    }
    base += sum;
    __syncthreads();
  }
  return kc + base;
}

/// The fixed order: order = the kept indices ascending.
__device__ __forceinline__ void order_ascending(const args& a, const int* kept, int* order,
                                                typename select_scan::TempStorage& scratch) {
  const int tid = static_cast<int>(threadIdx.x), n = a.n;
  int base = 0;
  for (int j0 = 0; j0 < n; j0 += block) {
    const int j = j0 + tid;
    const int k = (j < n && kept[j] != 0) ? 1 : 0;
    int pos = 0, sum = 0;
    select_scan(scratch).ExclusiveSum(k, pos, sum);
    if (k != 0) order[base + pos] = j;
    base += sum;
    __syncthreads();
  }
}

/// Thread 0 of select_kernel: the sample's count and (when asked) its statistics.
__device__ __forceinline__ void write_result(const args& a, int b, int count, int kc, int stride, const quartiles& q,
                                             double upper, double lower) {
  a.count[b] = count;
  a.counts[b] = count;
  if (a.results == nullptr) return;
  result& res = a.results[b];
  res.count = count;
  res.outliers = kc;
  res.grid = count - kc;
  res.stride = stride;
  res.neighbours = a.with_features != 0 && a.merge != 0 ? a.neighbours : 0;
  res.extra_token = a.with_features != 0 && a.merge != 0 && a.extra != 0;
  res.iqr.count = kc;
  res.iqr.q1 = q.q1;
  res.iqr.q3 = q.q3;
  res.iqr.upper_fence = upper;
  res.iqr.lower_fence = lower;
}

/// Block per sample: the CLS softmax, IQR fences, top-Kc, grid, order, counts and statistics.
template <int Dummy = 0>
__global__ void __launch_bounds__(block) select_kernel(const args a, int first) {
  const int b = first + static_cast<int>(blockIdx.x);
  const int tid = static_cast<int>(threadIdx.x);
  const int n = a.n;
  float* e = a.logit + b * (a.vec + 1);
  float* attn = a.attn + b * a.vec;
  int* order = a.order + b * a.vec;
  int* kept = a.kept + b * a.vec;
  token_index* out = a.out + b * a.out_stride;
  __shared__ float red[block / 32];
  __shared__ float total;
  float m = -INFINITY;
  const bool bad = check_logits(a, b, e, m);
  const bool skipped = __syncthreads_or((bad || a.skip[b] != 0) ? 1 : 0) != 0;
  if (skipped || n == 0) {
    if (tid == 0) {
      a.count[b] = 0;
      a.counts[b] = 0;
      if (a.results != nullptr) a.results[b] = result{};
    }
    return;
  }
  if (a.from_scores == 0) softmax(a, e, attn, m, red, &total);
  const quartiles q = block_quartiles<block>(attn, n);
  const double upper = upper_fence(q.q1, q.q3, a.multiplier), lower = lower_fence(q.q1, q.q3, a.multiplier);
  const int kc = rank_outliers(a, attn, kept, order, upper);
  __shared__ typename select_scan::TempStorage scratch;
  int count = kc, stride = 0;
  if (a.plus != 0 && kc > 0) count = add_plus_grid(a, kc, kept, order, stride, scratch);
  __syncthreads();
  if (a.parity == 0) order_ascending(a, kept, order, scratch);  // ascending kept indices
  __syncthreads();
  for (int r = tid; r < count; r += block) out[r] = order[r];
  if (tid == 0) write_result(a, b, count, kc, stride, q, upper, lower);
}

inline constexpr int cosine_rows = 8;  // kept rows per block of the cosine stage

/// Warp per (patch j, group of cosine_rows kept rows): cosine[r, j] = canonical dot of the unit
/// keys of order[r] and j. Each lane reads u_j once per column for all the group's rows (which
/// stay in L1); every dot keeps its own lane accumulator, so the order is the canonical one.
template <int Dummy = 0>
__global__ void __launch_bounds__(block) cosine_kernel(const args a, int first) {
  const int b = first + static_cast<int>(blockIdx.z);
  const int r0 = static_cast<int>(blockIdx.y) * cosine_rows;
  const int j = static_cast<int>(blockIdx.x) * (block / 32) + static_cast<int>(threadIdx.x >> 5);
  const int lane = static_cast<int>(threadIdx.x & 31u);
  const int count = a.count[b];
  if (j >= a.n || r0 >= count) return;
  const int rows = min(cosine_rows, count - r0);
  const float* unit = a.unit + b * a.unit_stride;
  const int* order = a.order + b * a.vec;
  const float* ui[cosine_rows];
  float acc[cosine_rows];
#pragma unroll
  for (int t = 0; t < cosine_rows; ++t) {
    ui[t] = unit + static_cast<long long>(order[r0 + (t < rows ? t : 0)]) * a.dim;
    acc[t] = 0.0f;
  }
  const float* uj = unit + static_cast<long long>(j) * a.dim;
  for (int c = lane; c < a.dim; c += 32) {
    const float v = uj[c];
#pragma unroll
    for (int t = 0; t < cosine_rows; ++t) acc[t] = fadd(acc[t], fmul(ui[t][c], v));
  }
  float* out = a.cosine + b * a.pair_stride + static_cast<long long>(r0) * a.n + j;
#pragma unroll
  for (int t = 0; t < cosine_rows; ++t) {
    const float sum = warp_tree_sum(acc[t]);
    if (lane == 0 && t < rows) out[static_cast<long long>(t) * a.n] = sum;
  }
}

/// Block per kept row r: near[r, j] = 1 for the `neighbours` patches j != i ranked first by
/// (cosine desc, index asc), the set nth_element + sort pick on the CPU.
template <int Dummy = 0>
__global__ void __launch_bounds__(block) nearest_kernel(const args a, int first) {
  const int b = first + static_cast<int>(blockIdx.y);
  const int r = static_cast<int>(blockIdx.x);
  if (r >= a.count[b]) return;
  const int n = a.n;
  const int i = a.order[b * a.vec + r];
  const float* cs = a.cosine + b * a.pair_stride + static_cast<long long>(r) * n;
  unsigned char* near = a.near + b * a.pair_stride + static_cast<long long>(r) * n;
  __shared__ float tile[iqr_tile];
  for (int j0 = 0; j0 < n; j0 += block) {
    const int j = j0 + static_cast<int>(threadIdx.x);
    const float cj = j < n ? cs[j] : 0.0f;
    int rank = 0;
    for (int t0 = 0; t0 < n; t0 += iqr_tile) {
      const int cnt = min(iqr_tile, n - t0);
      __syncthreads();
      for (int t = static_cast<int>(threadIdx.x); t < cnt; t += block) tile[t] = cs[t0 + t];
      __syncthreads();
      if (j < n) {
        for (int t = 0; t < cnt; ++t) {
          const int p = t0 + t;
          rank += (p != i && beats_high(tile[t], p, cj, j)) ? 1 : 0;
        }
      }
    }
    if (j < n) near[j] = (j != i && rank < a.neighbours) ? 1 : 0;
  }
}

/// Thread per (output row r, column c): row r < count from kept token order[r]; row count is the
/// extra token.
template <class F, class O>
__global__ void __launch_bounds__(block) rows_kernel(const args a, int first) {
  const int b = first + static_cast<int>(blockIdx.z);
  const int r = static_cast<int>(blockIdx.y);
  const int c = static_cast<int>(blockIdx.x) * block + static_cast<int>(threadIdx.x);
  const int count = a.count[b];
  if (c >= a.d || a.n == 0 || a.skip[b] != 0) return;
  const bool extra = a.merge != 0 && a.extra != 0 && r == count;
  if (r > count || (r == count && !extra)) return;
  const F* x = static_cast<const F*>(a.x) + b * a.x_b + c * a.x_c;
  O* dst = static_cast<O*>(a.y) + b * a.y_b + r * a.y_r + c * a.y_c;
  const float* attn = a.attn + b * a.vec;
  if (extra) {
    const int* kept = a.kept + b * a.vec;
    float acc = 0.0f;
    for (int j = 0; j < a.n; ++j) {
      if (kept[j] != 0) continue;
      acc = fadd(acc, fmul(attn[j], load_f32(x + j * a.x_t)));
    }
    *dst = from_f32<O>(acc);
    return;
  }
  const int i = a.order[b * a.vec + r];
  const float xi = load_f32(x + i * a.x_t);
  if (a.merge == 0) {
    *dst = from_f32<O>(xi);
    return;
  }
  float acc = 0.0f;
  if (a.neighbours > 0) {
    const unsigned char* near = a.near + b * a.pair_stride + static_cast<long long>(r) * a.n;
    for (int j = 0; j < a.n; ++j) {
      if (near[j] == 0) continue;
      acc = fadd(acc, fmul(attn[j], load_f32(x + j * a.x_t)));
    }
  }
  *dst = from_f32<O>(fadd(xi, acc));
}

struct buffers {
  device_status* status = nullptr;
  int* skip = nullptr;
  int* count = nullptr;
  float* logit = nullptr;
  float* attn = nullptr;
  int* order = nullptr;
  int* kept = nullptr;
  float* unit = nullptr;
  float* cosine = nullptr;
  unsigned char* near = nullptr;
  long long vec = 0, unit_stride = 0, pair_stride = 0;
};

/// Neighbours merged per kept row: min(cfg.neighbours, n - 1) when merging.
inline index_t used_neighbours(index_t n, const config& cfg, bool with_features) {
  return with_features && cfg.merge && n > 0 ? std::min(cfg.neighbours, n - 1) : 0;
}

/// batch samples' flags and counts, and per-sample scratch for `samples` samples of up to n
/// patches, key width dim and cap kept rows (a ragged batch reuses one sample's scratch: its
/// samples run one after another on the stream).
inline buffers layout(workspace_plan& plan, index_t batch, index_t samples, index_t n, index_t dim, index_t cap,
                      bool merge, bool pairs) {
  buffers w;
  w.status = plan.status();
  w.vec = static_cast<long long>(n);
  w.unit_stride = merge ? static_cast<long long>(count_of({n, dim})) : 0;
  w.pair_stride = pairs ? static_cast<long long>(count_of({cap, n})) : 0;
  w.skip = plan.take<int>(count_of({batch}));
  w.count = plan.take<int>(count_of({batch}));
  w.logit = plan.take<float>(count_of({samples, n + 1}));
  w.attn = plan.take<float>(count_of({samples, n}));
  w.order = plan.take<int>(count_of({samples, n}));
  w.kept = plan.take<int>(count_of({samples, n}));
  w.unit = plan.take<float>(merge ? count_of({samples, n, dim}) : 0);
  w.cosine = plan.take<float>(pairs ? count_of({samples, cap, n}) : 0);
  w.near = plan.take<unsigned char>(pairs ? count_of({samples, cap, n}) : 0);
  return w;
}

/// The layout of a 4-D batch: every sample n patches, key width dim.
inline buffers dense_layout(workspace_plan& plan, index_t batch, index_t n, index_t dim, const config& cfg,
                            bool with_features) {
  const bool merge = with_features && cfg.merge && n > 0;
  const bool pairs = merge && used_neighbours(n, cfg, with_features) > 0;
  const index_t cap = n > 0 ? max_count(n, cfg) : 0;
  return layout(plan, batch, batch, n, dim, cap, merge, pairs);
}

/// The layout of a ragged batch: one sample's scratch, sized for the largest sample.
template <class T>
buffers ragged_layout(workspace_plan& plan, std::span<const qk_input<T>> batch, const config& cfg, bool with_features) {
  index_t n = 0, dim = 0, cap = 0;
  bool merge = false, pairs = false;
  for (const qk_input<T>& s : batch) {
    const index_t nb = s.keys.extent(0) > 0 ? s.keys.extent(0) - 1 : 0;
    n = std::max(n, nb);
    if (nb == 0) continue;
    cap = std::max(cap, max_count(nb, cfg));
    const bool m = with_features && cfg.merge;
    merge = merge || m;
    if (m) dim = std::max(dim, s.keys.extent(1));
    pairs = pairs || (m && used_neighbours(nb, cfg, with_features) > 0);
  }
  return layout(plan, static_cast<index_t>(batch.size()), batch.empty() ? 0 : 1, n, dim, cap, merge, pairs);
}

/// The CPU's per-sample checks (validate, check_qk, check_features) plus the capacities the
/// device needs up front: indices max_count(n), merged rows max_rows(n).
template <class T, class F, class O>
void check_sample(const tensor_view<const T, 2>& queries, const tensor_view<const T, 2>& keys,
                  const tensor_view<const F, 2>* features, const tensor_view<O, 2>* merged, const config& cfg,
                  index_t capacity) {
  using tokensel::detail::fail;
  validate(cfg);
  prumerge::detail::check_qk(queries, keys);
  const index_t n = keys.extent(0) - 1;
  if (features != nullptr) prumerge::detail::check_features(*features, *merged, n);
  tokensel::detail::check_capacity(static_cast<std::size_t>(capacity), max_count(n, cfg), "prumerge.out.size()");
  if (merged != nullptr) {
    const index_t rows = max_rows(n, cfg);
    if (merged->extent(0) < rows) {
      fail(errc::shape_mismatch, "prumerge.merged.extent(0)", merged->extent(0),
           "below the " + std::to_string(rows) + " rows needed (size it with max_rows)");
    }
  }
}

template <class T, class F, class O>
void launch(args a, const buffers& w, index_t batch, cudaStream_t stream) {
  a.logit = w.logit;
  a.attn = w.attn;
  a.order = w.order;
  a.kept = w.kept;
  a.unit = w.unit;
  a.cosine = w.cosine;
  a.near = w.near;
  a.count = w.count;
  a.skip = w.skip;
  a.vec = w.vec;
  a.unit_stride = w.unit_stride;
  a.pair_stride = w.pair_stride;
  a.status = w.status;
  for (index_t first = 0; first < batch; first += max_uniform_chunk) {
    const auto count = static_cast<unsigned>(std::min<index_t>(max_uniform_chunk, batch - first));
    const int f = static_cast<int>(first);
    if (a.n > 0) {
      if (a.merge != 0 && a.d > 0) {
        check_kernel<F><<<dim3(blocks_for(static_cast<index_t>(a.n) * a.d, block), count), block, 0, stream>>>(a, f);
        check_launch("prumerge_check");
      }
      if (a.from_scores != 0) {
        scores_kernel<T><<<dim3(blocks_for(a.n, block), count), block, 0, stream>>>(a, f);
        check_launch("prumerge_scores");
      } else {
        logits_kernel<T><<<dim3(blocks_for(a.n + 1, block / 32), count), block, 0, stream>>>(a, f);
        check_launch("prumerge_logits");
      }
    }
    select_kernel<><<<count, block, 0, stream>>>(a, f);
    check_launch("prumerge_select");
    if (a.with_features == 0 || a.n == 0) continue;
    if (a.merge != 0 && a.neighbours > 0 && a.cap > 0) {
      cosine_kernel<><<<dim3(blocks_for(a.n, block / 32), blocks_for(a.cap, cosine_rows), count), block, 0, stream>>>(a, f);
      check_launch("prumerge_cosine");
      nearest_kernel<><<<dim3(static_cast<unsigned>(a.cap), count), block, 0, stream>>>(a, f);
      check_launch("prumerge_nearest");
    }
    // n = 1..3 can keep nothing (cap 0) and still owe the extra row.
    const unsigned rows = static_cast<unsigned>(a.cap + (a.merge != 0 && a.extra != 0 ? 1 : 0));
    if (a.d > 0 && rows > 0) {
      rows_kernel<F, O><<<dim3(blocks_for(a.d, block), rows, count), block, 0, stream>>>(a, f);
      check_launch("prumerge_rows");
    }
  }
}

template <class T>
args make_args(const tensor_view<const T, 3>& queries, const tensor_view<const T, 3>& keys, const config& cfg,
               const selection_batch& out, std::span<result> results) {
  args a;
  const index_t n = keys.extent(1) - 1, dim = keys.extent(2);
  a.q = queries.data();
  a.q_b = queries.stride(0);
  a.q_c = queries.stride(2);
  a.k = keys.data();
  a.k_b = keys.stride(0);
  a.k_t = keys.stride(1);
  a.k_c = keys.stride(2);
  a.n = to_int(n, "prumerge.keys.extent(1)");
  a.dim = to_int(dim, "prumerge.keys.extent(2)");
  a.scale = prumerge::detail::softmax_scale(cfg, dim);
  a.plus = cfg.plus ? 1 : 0;
  a.parity = cfg.mode == mode::parity ? 1 : 0;
  a.multiplier = cfg.iqr_multiplier;
  a.cap = n > 0 ? to_int(max_count(n, cfg), "prumerge.max_count") : 0;
  if (a.cap >= max_uniform_chunk) {  // kept rows (+ the extra row) index grid.y
    tokensel::detail::fail(errc::unsupported, "prumerge.max_count", a.cap, "beyond the CUDA backend's 65534 kept rows");
  }
  a.out = out.indices.data();
  a.out_stride = out.indices.stride(0);
  a.counts = out.counts.data();
  a.results = results.empty() ? nullptr : results.data();
  return a;
}

/// The batch-level shape checks of both overloads (CPU messages), then sample 0's checks.
template <class T>
void check_qk_batch(const tensor_view<const T, 3>& queries, const tensor_view<const T, 3>& keys) {
  prumerge::detail::check_extent(queries.extent(0), keys.extent(0), "prumerge.queries.extent(0)");
}

/// keys [batch, n+1, D] with n + 1 >= 1 gives n; an empty key sequence is left to check_qk.
template <class T>
index_t patches_of(const tensor_view<const T, 3>& keys) {
  return keys.extent(1) > 0 ? keys.extent(1) - 1 : 0;
}

/// A sample's 2-D view as a batch of one.
template <class T>
tensor_view<T, 3> as_batch(const tensor_view<T, 2>& m) {
  return tensor_view<T, 3>(m.data(), {1, m.extent(0), m.extent(1)}, {0, m.stride(0), m.stride(1)});
}

/// The merge's input features x [B, n+1, d] and output rows y of a launch (a ragged sample is a
/// batch of one, as_batch).
template <class F, class O>
void set_merge(args& a, const config& cfg, const tensor_view<const F, 3>& x, const tensor_view<O, 3>& y,
               const char* width_name) {
  a.with_features = 1;
  a.merge = cfg.merge ? 1 : 0;
  a.extra = cfg.extra_token ? 1 : 0;
  a.neighbours = static_cast<int>(used_neighbours(a.n, cfg, true));
  a.x = x.data();
  a.x_b = x.stride(0);
  a.x_t = x.stride(1);
  a.x_c = x.stride(2);
  a.d = tokensel::cuda_detail::to_int(x.extent(2), width_name);
  a.y = static_cast<void*>(y.data());
  a.y_b = y.stride(0);
  a.y_r = y.stride(1);
  a.y_c = y.stride(2);
}

/// Sample b of a ragged batch: its outputs at row b, its flags at b, the shared scratch.
template <class T>
args ragged_args(const qk_input<T>& in, const config& cfg, const selection_batch& out, std::span<result> results,
                 index_t b) {
  const selection_batch one{tensor_view<token_index, 2>(out.indices.data() == nullptr ? nullptr : out.indices.data() + b * out.indices.stride(0),
                                                        {1, out.indices.extent(1)}, {out.indices.stride(0), 1}),
                            out.counts.subspan(static_cast<std::size_t>(b), 1)};
  args a = make_args(as_batch(in.queries), as_batch(in.keys), cfg, one,
                     results.empty() ? results : results.subspan(static_cast<std::size_t>(b), 1));
  a.sample0 = static_cast<int>(b);
  return a;
}

inline buffers sample_buffers(buffers w, index_t b) {
  w.skip += b;
  w.count += b;
  return w;
}

/// cuda_status of a PruMerge problem key, named as the CPU backend names it.
inline cuda_status decode(unsigned long long key) {
  cuda_status st = decode_status(key);
  if (st.ok || ((key >> 42) & 0x3Fu) != static_cast<unsigned>(status_site::keys_value)) return st;
  const auto what = static_cast<unsigned>((key >> 32) & 0x3FFu);
  const auto index = static_cast<unsigned>(key & 0xFFFFFFFFu);
  const auto row = static_cast<index_t>(index >> 16), col = static_cast<index_t>(index & 0xFFFFu);
  auto at2 = [](const char* name, index_t i, index_t j) {
    return std::string(name) + "[" + std::to_string(i) + ", " + std::to_string(j) + "]";
  };
  std::string problem = "values must be finite";
  switch (what) {
    case features_value: st.row = row; st.index = col; st.parameter = at2("prumerge.features", row, col); break;
    case queries_value: st.row = 0; st.index = index; st.parameter = at2("prumerge.queries", 0, index); break;
    case keys_value_: st.row = row; st.index = col; st.parameter = at2("prumerge.keys", row, col); break;
    case attention_value:
      st.row = -1;
      st.index = index;
      st.parameter = "prumerge.attention[" + std::to_string(index) + "]";
      problem = "scores must be finite";
      break;
    case logits_value:
      st.row = -1;
      st.index = index;
      st.parameter = "prumerge.logits[" + std::to_string(index) + "]";
      problem = "Q K^T overflows fp32";
      break;
    default: return st;
  }
  st.message = "tokensel: " + st.parameter + " (sample " + std::to_string(st.sample) + "): " + problem;
  return st;
}

TOKENSEL_CUDA_END_DETAIL  // cuda_detail

/// The first data-dependent problem of the last prumerge call on policy.workspace, with the CPU
/// backend's parameter names (prumerge.features[t, c], prumerge.queries[0, c], prumerge.keys[t, c],
/// prumerge.logits[j]); tokensel::status(policy) reads the same word with generic names.
/// Synchronises policy.stream.
inline cuda_status status(const cuda_policy& policy) {
  if (policy.workspace == nullptr || policy.workspace_bytes < sizeof(tokensel::cuda_detail::device_status)) {
    tokensel::detail::fail(errc::invalid_argument, "cuda_policy.workspace", "no workspace to read a status from");
  }
  unsigned long long key = 0;
  tokensel::cuda_detail::check(cudaMemcpyAsync(&key, policy.workspace, sizeof(key), cudaMemcpyDeviceToHost, policy.stream),
                               "cudaMemcpyAsync(status)");
  tokensel::cuda_detail::check(cudaStreamSynchronize(policy.stream), "cudaStreamSynchronize");
  return cuda_detail::decode(key);
}

/// Throws the recorded problem of the last prumerge call as the CPU backend would (synchronises).
inline void throw_on_error(const cuda_policy& policy) {
  const cuda_status st = prumerge::status(policy);
  if (!st.ok) throw error(st.code, st.parameter, st.message);
}

/// Workspace bytes of the selection-only select(cuda_policy, queries, keys, cfg, ...).
template <cuda_element T>
[[nodiscard]] std::size_t workspace_size(const tensor_view<const T, 3>& queries, const tensor_view<const T, 3>& keys, const config& cfg) {
  validate(cfg);
  (void)queries;
  tokensel::cuda_detail::workspace_plan plan;
  (void)cuda_detail::dense_layout(plan, keys.extent(0), cuda_detail::patches_of(keys), keys.extent(2), cfg, false);
  return plan.bytes();
}

/// Workspace bytes of the merging select(cuda_policy, queries, keys, features, cfg, ...).
template <cuda_element T, cuda_element F>
[[nodiscard]] std::size_t workspace_size(const tensor_view<const T, 3>& queries, const tensor_view<const T, 3>& keys,
                           const tensor_view<const F, 3>& features, const config& cfg) {
  validate(cfg);
  (void)queries;
  (void)features;
  tokensel::cuda_detail::workspace_plan plan;
  (void)cuda_detail::dense_layout(plan, keys.extent(0), cuda_detail::patches_of(keys), keys.extent(2), cfg, true);
  return plan.bytes();
}

/// Selection only, batch on the device: queries [B, n+1 or 1, D] (row 0 = CLS; other rows never
/// read), keys [B, n+1, D]. Sample b writes its kept patch indices (the mode's order) to
/// out.indices(b, :), which needs max_count(n, cfg) entries (the CPU checks the actual count),
/// its count to out.counts[b] and its statistics to results[b] (device, optional).
template <cuda_element T>
void select(const cuda_policy& policy, const tensor_view<const T, 3>& queries, const tensor_view<const T, 3>& keys,
            const config& cfg, const selection_batch& out, std::span<result> results = {}) {
  using namespace tokensel::cuda_detail;
  validate(cfg);
  const index_t batch = keys.extent(0);
  cuda_detail::check_qk_batch(queries, keys);
  check_outputs(out, results, batch, "prumerge");
  if (batch > 0) {
    cuda_detail::check_sample<T, float, float>(queries[0], keys[0], nullptr, nullptr, cfg, out.indices.extent(1));
  }
  workspace_plan plan(policy);
  const auto w = cuda_detail::dense_layout(plan, batch, cuda_detail::patches_of(keys), keys.extent(2), cfg, false);
  plan.require("prumerge");
  if (batch == 0) return;
  reset_status(w.status, policy.stream);
  check(cudaMemsetAsync(w.skip, 0, static_cast<std::size_t>(batch) * sizeof(int), policy.stream), "cudaMemsetAsync(skip)");
  cuda_detail::args a = cuda_detail::make_args(queries, keys, cfg, out, results);
  cuda_detail::launch<device_type_t<T>, float, float>(a, w, batch, policy.stream);
}

/// Selection and merge, batch on the device: queries [B, n+1 or 1, D], keys [B, n+1, D],
/// features [B, n, d], merged [B, >= max_rows(n, cfg), d] (row r = the feature of
/// out.indices(b, r), the extra row last; rows beyond result.rows() untouched). Same outputs as
/// the CPU's dense prumerge::select. Data problems (NaN/Inf, Q K^T overflow) are found on the
/// device: that sample's count is 0 and status(policy) names the CPU's first error.
template <cuda_element T, cuda_element F, cuda_element O>
void select(const cuda_policy& policy, const tensor_view<const T, 3>& queries, const tensor_view<const T, 3>& keys,
            const tensor_view<const F, 3>& features, const config& cfg, const selection_batch& out,
            const tensor_view<O, 3>& merged, std::span<result> results = {}) {
  using namespace tokensel::cuda_detail;
  validate(cfg);
  const index_t batch = keys.extent(0);
  cuda_detail::check_qk_batch(queries, keys);
  prumerge::detail::check_extent(features.extent(0), batch, "prumerge.features.extent(0)");
  prumerge::detail::check_extent(merged.extent(0), batch, "prumerge.merged.extent(0)");
  check_outputs(out, results, batch, "prumerge");
  if (batch > 0) {
    const tensor_view<const F, 2> f0 = features[0];
    const tensor_view<O, 2> m0 = merged[0];
    cuda_detail::check_sample(queries[0], keys[0], &f0, &m0, cfg, out.indices.extent(1));
  }
  workspace_plan plan(policy);
  const auto w = cuda_detail::dense_layout(plan, batch, cuda_detail::patches_of(keys), keys.extent(2), cfg, true);
  plan.require("prumerge");
  if (batch == 0) return;
  reset_status(w.status, policy.stream);
  check(cudaMemsetAsync(w.skip, 0, static_cast<std::size_t>(batch) * sizeof(int), policy.stream), "cudaMemsetAsync(skip)");
  cuda_detail::args a = cuda_detail::make_args(queries, keys, cfg, out, results);
  cuda_detail::set_merge(a, cfg, features, merged, "prumerge.features.extent(2)");
  cuda_detail::launch<device_type_t<T>, device_type_t<F>, device_type_t<std::remove_cv_t<O>>>(a, w, batch, policy.stream);
}

// ---- from CLS attention rows ------------------------------------------------------------------

/// Workspace bytes of select_from_attention(cuda_policy, attention [B, n], cfg, ...).
template <cuda_element A>
[[nodiscard]] std::size_t workspace_size(const score_view<A>& attention, const config& cfg) {
  validate(cfg);
  tokensel::cuda_detail::workspace_plan plan;
  (void)cuda_detail::dense_layout(plan, attention.extent(0), attention.extent(1), 0, cfg, false);
  return plan.bytes();
}

/// Selection only from already computed CLS attention rows over the patches, attention [B, n]
/// (device; softmax over all n+1 tokens, CLS column dropped): the CPU's dense
/// select_from_attention. out rows need max_count(n, cfg) entries.
template <cuda_element A>
void select_from_attention(const cuda_policy& policy, const score_view<A>& attention, const config& cfg,
                           const selection_batch& out, std::span<result> results = {}) {
  using namespace tokensel::cuda_detail;
  validate(cfg);
  const index_t batch = attention.extent(0), n = attention.extent(1);
  check_outputs(out, results, batch, "prumerge");
  if (batch > 0) {
    tokensel::detail::check_capacity(static_cast<std::size_t>(out.indices.extent(1)), max_count(n, cfg), "prumerge.out.size()");
  }
  workspace_plan plan(policy);
  const auto w = cuda_detail::dense_layout(plan, batch, n, 0, cfg, false);
  plan.require("prumerge");
  if (batch == 0) return;
  reset_status(w.status, policy.stream);
  check(cudaMemsetAsync(w.skip, 0, static_cast<std::size_t>(batch) * sizeof(int), policy.stream), "cudaMemsetAsync(skip)");
  cuda_detail::args a;
  a.from_scores = 1;
  a.scores = attention.data();
  a.s_b = attention.stride(0);
  a.s_j = attention.stride(1);
  a.n = to_int(n, "prumerge.attention.extent(1)");
  a.plus = cfg.plus ? 1 : 0;
  a.parity = cfg.mode == mode::parity ? 1 : 0;
  a.multiplier = cfg.iqr_multiplier;
  a.cap = n > 0 ? to_int(max_count(n, cfg), "prumerge.max_count") : 0;
  a.out = out.indices.data();
  a.out_stride = out.indices.stride(0);
  a.counts = out.counts.data();
  a.results = results.empty() ? nullptr : results.data();
  cuda_detail::launch<device_type_t<A>, float, float>(a, w, batch, policy.stream);
}

// ---- ragged batches (a span of samples of any sizes; one launch per stage and sample) --------

/// Workspace bytes of the ragged selection-only select(cuda_policy, batch, cfg, ...).
template <element T>
[[nodiscard]] std::size_t workspace_size(std::span<const qk_input<T>> batch, const config& cfg) {
  validate(cfg);
  tokensel::cuda_detail::workspace_plan plan;
  (void)cuda_detail::ragged_layout(plan, batch, cfg, false);
  return plan.bytes();
}

/// Workspace bytes of the ragged merging select(cuda_policy, batch, features, cfg, ...).
template <element T, cuda_element F>
[[nodiscard]] std::size_t workspace_size(std::span<const qk_input<T>> batch, std::span<const matrix_view<const F>> features,
                           const config& cfg) {
  validate(cfg);
  (void)features;
  tokensel::cuda_detail::workspace_plan plan;
  (void)cuda_detail::ragged_layout(plan, batch, cfg, true);
  return plan.bytes();
}

/// Ragged batch, selection only (device views of any sizes): the CPU's ragged select. Every
/// sample's shapes and capacity (max_count(n_b)) are checked before anything is enqueued.
/// qk_input is the CPU's struct, so T is float, Eigen::half or Eigen::bfloat16 (device pointers).
template <element T>
void select(const cuda_policy& policy, std::span<const qk_input<T>> batch, const config& cfg, const selection_batch& out,
            std::span<result> results = {}) {
  using namespace tokensel::cuda_detail;
  validate(cfg);
  const auto B = static_cast<index_t>(batch.size());
  check_outputs(out, results, B, "prumerge");
  for (const qk_input<T>& s : batch) {
    cuda_detail::check_sample<T, float, float>(s.queries, s.keys, nullptr, nullptr, cfg, out.indices.extent(1));
  }
  workspace_plan plan(policy);
  const auto w = cuda_detail::ragged_layout(plan, batch, cfg, false);
  plan.require("prumerge");
  if (B == 0) return;
  reset_status(w.status, policy.stream);
  check(cudaMemsetAsync(w.skip, 0, static_cast<std::size_t>(B) * sizeof(int), policy.stream), "cudaMemsetAsync(skip)");
  for (index_t b = 0; b < B; ++b) {
    const cuda_detail::args a = cuda_detail::ragged_args(batch[static_cast<std::size_t>(b)], cfg, out, results, b);
    cuda_detail::launch<device_type_t<T>, float, float>(a, cuda_detail::sample_buffers(w, b), 1, policy.stream);
  }
}

/// Ragged batch with merge: features[b] [n_b, d_b], merged[b] [>= max_rows(n_b), d_b] (device
/// views); the CPU's ragged select.
template <element T, cuda_element F, cuda_element O>
void select(const cuda_policy& policy, std::span<const qk_input<T>> batch, std::span<const matrix_view<const F>> features,
            const config& cfg, const selection_batch& out, std::span<const matrix_view<O>> merged,
            std::span<result> results = {}) {
  using namespace tokensel::cuda_detail;
  validate(cfg);
  const auto B = static_cast<index_t>(batch.size());
  prumerge::detail::check_extent(static_cast<index_t>(features.size()), B, "prumerge.features.size()");
  prumerge::detail::check_extent(static_cast<index_t>(merged.size()), B, "prumerge.merged.size()");
  check_outputs(out, results, B, "prumerge");
  for (std::size_t b = 0; b < batch.size(); ++b) {
    cuda_detail::check_sample(batch[b].queries, batch[b].keys, &features[b], &merged[b], cfg, out.indices.extent(1));
  }
  workspace_plan plan(policy);
  const auto w = cuda_detail::ragged_layout(plan, batch, cfg, true);
  plan.require("prumerge");
  if (B == 0) return;
  reset_status(w.status, policy.stream);
  check(cudaMemsetAsync(w.skip, 0, static_cast<std::size_t>(B) * sizeof(int), policy.stream), "cudaMemsetAsync(skip)");
  for (index_t b = 0; b < B; ++b) {
    const auto i = static_cast<std::size_t>(b);
    cuda_detail::args a = cuda_detail::ragged_args(batch[i], cfg, out, results, b);
    cuda_detail::set_merge(a, cfg, cuda_detail::as_batch(features[i]), cuda_detail::as_batch(merged[i]),
                           "prumerge.features.extent(1)");
    cuda_detail::launch<device_type_t<T>, device_type_t<F>, device_type_t<std::remove_cv_t<O>>>(
        a, cuda_detail::sample_buffers(w, b), 1, policy.stream);
  }
}

// ---- single samples (the batch-of-1 ragged call; see detail/single.cuh) ------------------------

/// Workspace bytes of the single-sample selection-only select.
template <element T>
[[nodiscard]] std::size_t workspace_size(const matrix_view<const T>& queries, const matrix_view<const T>& keys, const config& cfg) {
  const qk_input<T> in{queries, keys};
  return tokensel::cuda_detail::single_bytes(workspace_size(tokensel::cuda_detail::one(in), cfg));
}

/// Workspace bytes of the single-sample merging select.
template <element T, cuda_element F>
[[nodiscard]] std::size_t workspace_size(const matrix_view<const T>& queries, const matrix_view<const T>& keys,
                           const matrix_view<const F>& features, const config& cfg) {
  using namespace tokensel::cuda_detail;
  const qk_input<T> in{queries, keys};
  return single_bytes(workspace_size(one(in), one(features), cfg));
}

/// One sample, selection only (queries [n+1 or 1, D], keys [n+1, D], device views): the CPU's
/// single-sample select. out (device memory, >= max_count(n)) gets the indices; *device_result
/// (device memory, optional) the statistics and the data-dependent count.
template <element T>
void select(const cuda_policy& policy, const matrix_view<const T>& queries, const matrix_view<const T>& keys,
            const config& cfg, std::span<token_index> out, result* device_result = nullptr) {
  using namespace tokensel::cuda_detail;
  const qk_input<T> in{queries, keys};
  select(policy, one(in), cfg, single_output(policy, workspace_size(one(in), cfg), out, "prumerge"),
         single_result(device_result));
}

/// One sample with merge: features [n, d], merged [>= max_rows(n), d] (device views).
template <element T, cuda_element F, cuda_element O>
void select(const cuda_policy& policy, const matrix_view<const T>& queries, const matrix_view<const T>& keys,
            const matrix_view<const F>& features, const config& cfg, std::span<token_index> out,
            const matrix_view<O>& merged, result* device_result = nullptr) {
  using namespace tokensel::cuda_detail;
  const qk_input<T> in{queries, keys};
  select(policy, one(in), one(features), cfg,
         single_output(policy, workspace_size(one(in), one(features), cfg), out, "prumerge"), one(merged),
         single_result(device_result));
}

}  // namespace prumerge
TOKENSEL_END_NAMESPACE
