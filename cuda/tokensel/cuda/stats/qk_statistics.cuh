// tokensel CUDA backend: attention statistics straight from Q and K (FlashAttention engines),
// the device half of tokensel/stats/qk_statistics.hpp. The N x N probabilities are never stored.
// The FoPru, FastV and VisionZip overloads fed from Q/K live in their method headers
// (methods/*.cuh); FastV and VisionZip read a one-head row [batch, 1, 1, n] (the head reduction
// of a single head is the identity), FoPru its row and column sums.
//
// Sources are the CPU's qk_source<T> holding device pointers (T = float, Eigen::half or
// Eigen::bfloat16; a __half / __nv_bfloat16 buffer is passed as Eigen::half / Eigen::bfloat16, same
// bits), one per sample (ragged span), or a qk_batch<T> of [batch, ...] views (one launch per stage
// for the whole batch). Conventions are the CPU's: scale 0 = 1/sqrt(d), optional fp32 lse
// [heads, n_q], causal (query i sees keys j <= i + offset, offset -1 = n_k - n_q), GQA (query head
// h reads key head h / (heads / kv_heads)), row / column windows (the softmax always runs over
// every visible key).
//
// Two passes over 32 x 32 tiles (query rows x keys), 256 threads per block:
//   1. qk_softmax_kernel  block = (32 query rows, head, sample): the online row max and sum of
//                         exp over the visible key tiles, ascending (skipped where lse is given).
//   2. qk_tiles_kernel    block = (row group g, column group c, sample) with a fixed number
//                         qk_groups = G of groups per axis: the block visits the query tiles
//                         qt = g, g + G, ... (ascending) and within each the key tiles
//                         kt = c, c + G, ... (ascending). Per tile, for every head in ascending
//                         order S = Q K^T (fp32 FMA over shared-memory chunks of 32 dims),
//                         P = exp(scale S - m) / l (or exp(scale S - lse)), reduced over heads
//                         (mean / sum / max) BEFORE any sum, exactly as the CPU; then the diagonal,
//                         the selected rows, and the group partials, which only this block owns:
//                         column partial [g][j] continues one chain over the rows of its query
//                         tiles, ascending (two chains split at a row for region masses); row
//                         partial [c][i] adds each key tile's 32-lane tree, ascending tiles.
//   3. qk_final_kernel    column sums = the G row-group partials summed in ascending g, row sums
//                         the G column-group partials likewise: deterministic, no float atomics.
// Fully masked causal tiles skip the products. Extra memory per sample, O(n): 2 x heads x rows
// floats (row max / sum) plus the partials, Gr x chains x cols + Gc x rows floats with
// Gr = min(G, ceil(rows / 32)), Gc = min(G, ceil(cols / 32)), G = 16 (chains = 2 for region
// masses, else 1); never the n x n map nor a per-tile partial.
//
// Accuracy: not bit-identical to the CPU backend (different tiling and exp); statistics agree
// with the CPU qk path and with the materialised softmax in double to ~1e-6 relative for fp32
// inputs (tests bound 1e-5). fp16 / bf16 inputs are widened exactly, so the same bound holds
// against the CPU qk path on the same inputs; against an fp32 reference of the unrounded Q/K the
// input rounding dominates (see docs/flashattention.md).
//
// A NaN/Inf in Q, K or lse (or an overflowing logit) makes the statistics it reaches non-finite:
// the standalone calls report the first one through status(policy) (site qk_statistic); the
// method overloads through the method's own check of its scores.
#pragma once

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "tokensel/cuda/core/abi.cuh"
#include "tokensel/core/batch.hpp"
#include "tokensel/core/config.hpp"
#include "tokensel/stats/contribution_degree.hpp"
#include "tokensel/cuda/detail/arith.cuh"
#include "tokensel/cuda/detail/launch.cuh"
#include "tokensel/cuda/stats/detail/map_kernels.cuh"
#include "tokensel/cuda/core/element.cuh"
#include "tokensel/cuda/core/error.cuh"
#include "tokensel/cuda/core/policy.cuh"
#include "tokensel/cuda/stats/region_mass.cuh"
#include "tokensel/cuda/core/workspace.cuh"
#include "tokensel/stats/head_reduction.hpp"
#include "tokensel/stats/map_sums.hpp"
#include "tokensel/core/qk_source.hpp"
#include "tokensel/stats/region_mass.hpp"

TOKENSEL_BEGIN_NAMESPACE

/// A dense batch of Q/K sources of one shape (FlashAttention's batched call): sample b is
/// queries[b], keys[b], lse[b] with the shared scale, mask and windows.
template <element T>
struct qk_batch {
  using element_type = T;
  tensor_view<const T, 4> queries;   ///< [batch, heads, n_q, d]
  tensor_view<const T, 4> keys;      ///< [batch, kv_heads, n_k, d]
  float scale = 0.0f;                ///< 0 means 1/sqrt(d)
  tensor_view<const float, 3> lse{};  ///< optional [batch, heads, n_q] fp32 (softmax_lse)
  bool causal = false;
  index_t causal_offset = -1;
  token_range row_window{0, -1};
  token_range col_window{0, -1};

  index_t size() const noexcept { return queries.extent(0); }
  qk_source<T> operator[](index_t b) const {
    qk_source<T> s{.queries = queries[b], .keys = keys[b], .scale = scale, .causal = causal, .causal_offset = causal_offset,
                   .row_window = row_window, .col_window = col_window};
    if (lse.data() != nullptr) s.lse = lse[b];
    return s;
  }
};

/// Batched map_sums outputs (device): row b of each matrix belongs to sample b; each empty (no
/// data) or at least as wide as the sample's window rows / columns / min of both.
struct qk_map_sums_out {
  matrix_view<float> row_sums{};
  matrix_view<float> column_sums{};
  matrix_view<float> diagonal{};
};

TOKENSEL_CUDA_BEGIN_DETAIL

inline constexpr int qk_tile = 32;     ///< query rows and keys per tile
inline constexpr int qk_threads = 256;  ///< 8 warps; warp w owns rows w, w + 8, w + 16, w + 24
inline constexpr int qk_table_capacity = 16;
inline constexpr int qk_groups = 16;  ///< row groups (column partials) and column groups (row partials)

/// One sample as the kernels see it. Rows r of the computation are queries row0 + r; columns c
/// are keys col0 + c.
struct qk_desc {
  const void* q = nullptr;
  const void* k = nullptr;
  const float* lse = nullptr;
  long long qh = 0, qi = 0, qc = 0, kh = 0, kj = 0, kc = 0, lh = 0, li = 0;
  int heads = 0, group = 1, nk = 0, d = 0;
  float scale = 1.0f;
  int causal = 0, offset = 0;
  int row0 = 0, rows = 0, col0 = 0, cols = 0;
  int split = 0;  ///< column chain a sums rows [0, split), chain b the rest
};

struct qk_table {
  qk_desc d[qk_table_capacity];
  long long q_b = 0, k_b = 0, l_b = 0;  ///< uniform: bytes (q, k) and floats (lse) between samples
  int count = 0, first = 0, uniform = 0;

  __host__ __device__ qk_desc get(int s) const {
    if (uniform == 0) return d[s];
    qk_desc w = d[0];
    w.q = static_cast<const char*>(w.q) + static_cast<long long>(s) * q_b;
    w.k = static_cast<const char*>(w.k) + static_cast<long long>(s) * k_b;
    if (w.lse != nullptr) w.lse += static_cast<long long>(s) * l_b;
    return w;
  }
  template <class F>
  int max_of(F f) const {
    int m = 0;
    for (int s = 0; s < (uniform != 0 ? 1 : count); ++s) m = std::max(m, f(d[s]));
    return m;
  }
};
static_assert(sizeof(qk_table) <= 4000, "kernel parameter tables must stay within 4 KiB");

__host__ __device__ inline int tiles_of(int n) { return (n + qk_tile - 1) / qk_tile; }

/// The sample of a call: a dense qk_batch (uniform tables) or a span of qk_source (ragged).
template <element T>
class qk_ref {
 public:
  explicit qk_ref(const qk_batch<T>& b) : dense_(&b) {}
  explicit qk_ref(std::span<const qk_source<T>> r) : ragged_(r) {}

  bool uniform() const noexcept { return dense_ != nullptr; }
  index_t size() const noexcept { return uniform() ? dense_->size() : static_cast<index_t>(ragged_.size()); }
  index_t distinct() const noexcept { return uniform() ? (size() > 0 ? 1 : 0) : size(); }
  qk_source<T> operator[](index_t b) const { return uniform() ? (*dense_)[b] : ragged_[static_cast<std::size_t>(b)]; }

  /// Host checks of the batch itself (the samples are checked by describe()).
  void check(std::string_view method) const {
    if (!uniform()) return;
    const std::string m(method);
    const index_t B = dense_->size();
    if (dense_->keys.extent(0) != B) {
      detail::fail(errc::shape_mismatch, m + ".qk.keys.extent(0)", dense_->keys.extent(0), "must equal the batch size " + std::to_string(B));
    }
    if (dense_->lse.data() != nullptr && dense_->lse.extent(0) != B) {
      detail::fail(errc::shape_mismatch, m + ".qk.lse.extent(0)", dense_->lse.extent(0), "must equal the batch size " + std::to_string(B));
    }
  }

  /// f(const qk_table&) per launch; desc_of(b, source of b) describes sample b.
  template <class DescOf, class F>
  void each(DescOf desc_of, F&& f) const {
    const index_t B = size();
    if (uniform()) {
      for (index_t first = 0; first < B; first += max_uniform_chunk) {
        qk_table t;
        t.uniform = 1;
        t.first = static_cast<int>(first);
        t.count = static_cast<int>(std::min<index_t>(max_uniform_chunk, B - first));
        t.d[0] = desc_of(first, (*this)[first]);
        t.q_b = static_cast<long long>(dense_->queries.stride(0)) * static_cast<long long>(sizeof(T));
        t.k_b = static_cast<long long>(dense_->keys.stride(0)) * static_cast<long long>(sizeof(T));
        t.l_b = dense_->lse.data() != nullptr ? static_cast<long long>(dense_->lse.stride(0)) : 0;
        f(static_cast<const qk_table&>(t));
      }
      return;
    }
    for (index_t first = 0; first < B; first += qk_table_capacity) {
      qk_table t;
      t.first = static_cast<int>(first);
      t.count = static_cast<int>(std::min<index_t>(qk_table_capacity, B - first));
      for (int s = 0; s < t.count; ++s) t.d[s] = desc_of(first + s, (*this)[first + s]);
      f(static_cast<const qk_table&>(t));
    }
  }

 private:
  const qk_batch<T>* dense_ = nullptr;
  std::span<const qk_source<T>> ragged_{};
};

/// Checks a source's shapes (validate_shape: no element is read) and describes the computation
/// over absolute query rows `rows` and keys `cols`.
template <element T>
qk_desc describe(const qk_source<T>& src, const token_range& rows, const token_range& cols, index_t split,
                 std::string_view method) {
  const std::string name = std::string(method) + ".qk";
  validate_shape(src, name);
  qk_desc w;
  w.q = src.queries.data();
  w.k = src.keys.data();
  w.lse = src.lse.data();
  w.qh = src.queries.stride(0);
  w.qi = src.queries.stride(1);
  w.qc = src.queries.stride(2);
  w.kh = src.keys.stride(0);
  w.kj = src.keys.stride(1);
  w.kc = src.keys.stride(2);
  w.lh = src.lse.stride(0);
  w.li = src.lse.stride(1);
  w.heads = to_int(src.heads(), name + ".queries.extent(0)");
  w.group = src.kv_heads() > 0 ? static_cast<int>(src.heads() / src.kv_heads()) : 1;
  w.nk = to_int(src.key_count(), name + ".keys.extent(1)");
  (void)to_int(src.query_count(), name + ".queries.extent(1)");
  w.d = to_int(src.head_dim(), name + ".queries.extent(2)");
  w.scale = src.effective_scale();
  w.causal = src.causal ? 1 : 0;
  w.offset = to_int(std::min<index_t>(src.effective_causal_offset(), INT_MAX / 2), name + ".causal_offset");
  w.row0 = static_cast<int>(rows.begin);
  w.rows = to_int(rows.count, name + ".rows");
  w.col0 = static_cast<int>(cols.begin);
  w.cols = to_int(cols.count, name + ".cols");
  w.split = static_cast<int>(std::min<index_t>(split, rows.count));
  if (w.rows > 0 && w.cols > 0) detail::check_heads_present(src.heads(), rows.count, cols.count);
  return w;
}

/// Workspace of one engine run (sample b's arrays at b * the per-sample stride).
struct qk_engine {
  float* ml = nullptr;       ///< [heads][rows][2]: row max and sum of exp (pass 1)
  float* colpart = nullptr;  ///< [row groups][chains][cols]
  float* rowpart = nullptr;  ///< [column groups][rows]
  long long ml_b = 0, cp_b = 0, rp_b = 0;
  int rows = 0, cols = 0, rgroups = 0, cgroups = 0, chains = 1;  ///< groups: the grid of pass 2
};

struct qk_shape {
  index_t batch = 0, heads = 0, rows = 0, cols = 0;
};

inline qk_engine qk_layout(workspace_plan& plan, const qk_shape& s, bool col_sums, bool row_sums, int chains) {
  qk_engine e;
  const index_t qt = std::min<index_t>(qk_groups, (s.rows + qk_tile - 1) / qk_tile);
  const index_t kt = std::min<index_t>(qk_groups, (s.cols + qk_tile - 1) / qk_tile);
  e.rows = static_cast<int>(s.rows);
  e.cols = static_cast<int>(s.cols);
  e.rgroups = static_cast<int>(qt);
  e.cgroups = static_cast<int>(kt);
  e.chains = chains;
  e.ml_b = static_cast<long long>(count_of({s.heads, s.rows, 2}));
  e.ml = plan.take<float>(count_of({s.batch, s.heads, s.rows, 2}));
  e.cp_b = col_sums ? static_cast<long long>(count_of({qt, chains, s.cols})) : 0;
  e.colpart = plan.take<float>(col_sums ? count_of({s.batch, qt, chains, s.cols}) : 0);
  e.rp_b = row_sums ? static_cast<long long>(count_of({kt, s.rows})) : 0;
  e.rowpart = plan.take<float>(row_sums ? count_of({s.batch, kt, s.rows}) : 0);
  if (!col_sums) e.colpart = nullptr;
  if (!row_sums) e.rowpart = nullptr;
  return e;
}

/// What pass 2 writes besides the partials (each optional; sample b at b * its stride).
struct qk_outputs {
  head_reduction op = head_reduction::mean;
  float* diag = nullptr;
  long long diag_b = 0;
  float* rows = nullptr;  ///< the reduced rows themselves [rows, cols] (leading dimension rows_ld)
  long long rows_b = 0, rows_ld = 0;
  float* probs = nullptr;  ///< per-head probabilities [heads, rows, cols]
  long long probs_b = 0, probs_h = 0, probs_ld = 0;
  device_status* status = nullptr;  ///< finite check of the reduced rows (site qk_statistic, aux 3)
};

/// What the final reduction writes (each optional).
struct qk_finals {
  float* row_sums = nullptr;
  long long row_b = 0;
  float* col_a = nullptr;  ///< chain a (column sums; region masses: self, divided by cols)
  float* col_b = nullptr;  ///< chain b (region masses: cross)
  long long col_bs = 0;
  bool self_mean = false;        ///< col_a /= cols
  const float* degree_diag = nullptr;  ///< col_a -= diagonal (contribution degree)
  long long diag_b = 0;
  int* skip = nullptr;  ///< [batch]: set when a statistic is not finite
  device_status* status = nullptr;
};

/// Logits of a 32 x 32 tile of head h into s[u] (row warp + 8u, key c0 + lane), accumulated in
/// fp32 over chunks of 32 dimensions staged in shared memory. Every thread of the block calls it.
template <class T>
__device__ __forceinline__ void tile_logits(const qk_desc& d, int h, int r0, int c0, float (&qs)[qk_tile][qk_tile + 1],
                                            float (&ks)[qk_tile][qk_tile + 1], float (&s)[4]) {
  const int tid = static_cast<int>(threadIdx.x), warp = tid >> 5, lane = tid & 31;
  const T* q = static_cast<const T*>(d.q) + static_cast<long long>(h) * d.qh;
  const T* k = static_cast<const T*>(d.k) + static_cast<long long>(h / d.group) * d.kh;
#pragma unroll
  for (int u = 0; u < 4; ++u) s[u] = 0.0f;
  for (int c0d = 0; c0d < d.d; c0d += qk_tile) {
    __syncthreads();  // the previous chunk has been read
    for (int e = tid; e < qk_tile * qk_tile; e += qk_threads) {
      const int rr = e >> 5, cc = e & 31, c = c0d + cc, r = r0 + rr, j = c0 + rr;
      qs[rr][cc] = (r < d.rows && c < d.d) ? load_f32(q + static_cast<long long>(d.row0 + r) * d.qi + c * d.qc) : 0.0f;
      ks[rr][cc] = (j < d.nk && c < d.d) ? load_f32(k + static_cast<long long>(j) * d.kj + c * d.kc) : 0.0f;
    }
    __syncthreads();
#pragma unroll 8
    for (int cc = 0; cc < qk_tile; ++cc) {
      const float kv = ks[lane][cc];
#pragma unroll
      for (int u = 0; u < 4; ++u) s[u] = __fmaf_rn(qs[warp + 8 * u][cc], kv, s[u]);
    }
  }
}

/// Key j is visible from query i (absolute positions).
__device__ __forceinline__ bool qk_visible(const qk_desc& d, int i, int j) {
  return j < d.nk && (d.causal == 0 || static_cast<long long>(j) <= static_cast<long long>(i) + d.offset);
}

/// max_nan over the warp; every lane gets the result.
__device__ __forceinline__ float warp_max_all(float v) {
#pragma unroll
  for (int w = 16; w >= 1; w /= 2) v = max_nan(v, __shfl_xor_sync(full_mask, v, w));
  return v;
}

/// The canonical tree, result broadcast from lane 0.
__device__ __forceinline__ float warp_sum_all(float v) { return __shfl_sync(full_mask, warp_tree_sum(v), 0); }

/// Pass 1: online row max and sum of exp over the visible keys, key tiles ascending.
template <class T>
__global__ void __launch_bounds__(qk_threads) qk_softmax_kernel(const qk_table t, const qk_engine e) {
  const int s = static_cast<int>(blockIdx.z);
  if (s >= t.count) return;
  const qk_desc d = t.get(s);
  const int b = t.first + s, h = static_cast<int>(blockIdx.y), r0 = static_cast<int>(blockIdx.x) * qk_tile;
  if (d.lse != nullptr || h >= d.heads || r0 >= d.rows || d.cols <= 0) return;
  __shared__ float qs[qk_tile][qk_tile + 1], ks[qk_tile][qk_tile + 1];
  const int warp = static_cast<int>(threadIdx.x >> 5), lane = static_cast<int>(threadIdx.x & 31u);
  const int last = d.row0 + min(d.rows, r0 + qk_tile) - 1;
  const long long seen = d.causal != 0 ? static_cast<long long>(last) + d.offset + 1 : d.nk;
  const int kend = static_cast<int>(seen < 0 ? 0 : (seen > d.nk ? d.nk : seen));
  float m[4], l[4], x[4];
#pragma unroll
  for (int u = 0; u < 4; ++u) {
    m[u] = -INFINITY;
    l[u] = 0.0f;
  }
  for (int c0 = 0; c0 < kend; c0 += qk_tile) {
    tile_logits<T>(d, h, r0, c0, qs, ks, x);
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int i = d.row0 + r0 + warp + 8 * u, j = c0 + lane;
      const float v = qk_visible(d, i, j) ? fmul(x[u], d.scale) : -INFINITY;
      const float mn = max_nan(m[u], warp_max_all(v));
      if (mn == -INFINITY) continue;  // nothing visible yet (uniform over the warp)
      const float sum = warp_sum_all(v == -INFINITY ? 0.0f : expf(fsub(v, mn)));
      l[u] = fadd(fmul(l[u], expf(fsub(m[u], mn))), sum);
      m[u] = mn;
    }
  }
  if (lane != 0) return;
  for (int u = 0; u < 4; ++u) {
    const int r = r0 + warp + 8 * u;
    if (r >= d.rows) break;
    float* ml = e.ml + b * e.ml_b + (static_cast<long long>(h) * e.rows + r) * 2;
    ml[0] = m[u];
    ml[1] = l[u];
  }
}

/// One head-reduced 32 x 32 tile (query tile qt, key tile kt) into red, with the outputs written
/// per element (probabilities, rows, diagonal). Every thread of the block calls it.
template <class T>
__device__ __forceinline__ void qk_reduced_tile(const qk_desc& d, const qk_engine& e, const qk_outputs& o, int b, int qt, int kt,
                                                float (&qs)[qk_tile][qk_tile + 1], float (&ks)[qk_tile][qk_tile + 1],
                                                float (&red)[qk_tile][qk_tile + 1]) {
  const int warp = static_cast<int>(threadIdx.x >> 5), lane = static_cast<int>(threadIdx.x & 31u);
  const int r0 = qt * qk_tile, c0 = kt * qk_tile;
  const int i_last = d.row0 + min(d.rows, r0 + qk_tile) - 1;
  // A fully masked tile (causal) has only zero probabilities: no products.
  const bool live = d.causal == 0 || static_cast<long long>(d.col0 + c0) <= static_cast<long long>(i_last) + d.offset;
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f}, x[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int h = 0; h < d.heads; ++h) {
    if (live) tile_logits<T>(d, h, r0, d.col0 + c0, qs, ks, x);
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int r = r0 + warp + 8 * u, c = c0 + lane, i = d.row0 + r, j = d.col0 + c;
      float p = 0.0f;
      if (live && r < d.rows && c < d.cols && qk_visible(d, i, j)) {
        const float v = fmul(x[u], d.scale);
        if (d.lse != nullptr) {
          p = expf(fsub(v, d.lse[static_cast<long long>(h) * d.lh + static_cast<long long>(i) * d.li]));
        } else {
          const float* ml = e.ml + b * e.ml_b + (static_cast<long long>(h) * e.rows + r) * 2;
          p = fdiv(expf(fsub(v, ml[0])), ml[1]);
        }
      }
      if (o.probs != nullptr && r < d.rows && c < d.cols) {
        o.probs[b * o.probs_b + h * o.probs_h + r * o.probs_ld + c] = p;
      }
      acc[u] = h == 0 ? p : (o.op == head_reduction::max ? max_nan(acc[u], p) : fadd(acc[u], p));
    }
  }
#pragma unroll
  for (int u = 0; u < 4; ++u) {
    const int r = r0 + warp + 8 * u, c = c0 + lane;
    const bool valid = r < d.rows && c < d.cols;
    float v = valid ? acc[u] : 0.0f;
    if (valid && o.op == head_reduction::mean) v = fdiv(v, static_cast<float>(d.heads));
    red[warp + 8 * u][lane] = v;
    if (valid) {
      if (o.rows != nullptr) {
        o.rows[b * o.rows_b + r * o.rows_ld + c] = v;
        if (!finite_f32(v)) {
          record(o.status, status_site::qk_statistic, 3, static_cast<unsigned>(b),
                 ((static_cast<unsigned>(r) & 0xFFFFu) << 16) | (static_cast<unsigned>(c) & 0xFFFFu));
        }
      }
      if (o.diag != nullptr && r == c) o.diag[b * o.diag_b + r] = v;
    }
  }
}

/// Pass 2: block (row group g, column group c) visits its tiles and owns the partials
/// colpart[g][.][columns of its key tiles] and rowpart[c][rows of its query tiles]; each partial
/// is read and written by one fixed thread, so the chains run in program order.
template <class T>
__global__ void __launch_bounds__(qk_threads) qk_tiles_kernel(const qk_table t, const qk_engine e, const qk_outputs o) {
  const int s = static_cast<int>(blockIdx.y);
  if (s >= t.count) return;
  const qk_desc d = t.get(s);
  const int b = t.first + s;
  const int g = static_cast<int>(blockIdx.x) / e.cgroups, cg = static_cast<int>(blockIdx.x) % e.cgroups;
  const int qtiles = tiles_of(d.rows), ktiles = tiles_of(d.cols);
  if (g >= qtiles || cg >= ktiles || d.heads <= 0) return;
  __shared__ float qs[qk_tile][qk_tile + 1], ks[qk_tile][qk_tile + 1], red[qk_tile][qk_tile + 1];
  const int warp = static_cast<int>(threadIdx.x >> 5), lane = static_cast<int>(threadIdx.x & 31u);
  for (int qt = g; qt < qtiles; qt += qk_groups) {
    for (int kt = cg; kt < ktiles; kt += qk_groups) {
      __syncthreads();  // red of the previous tile has been read
      qk_reduced_tile<T>(d, e, o, b, qt, kt, qs, ks, red);
      const int r0 = qt * qk_tile, c0 = kt * qk_tile;
      if (e.rowpart != nullptr) {
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const int r = r0 + warp + 8 * u;
          const float sum = warp_tree_sum(red[warp + 8 * u][lane]);
          if (lane == 0 && r < d.rows) {
            float* rp = e.rowpart + b * e.rp_b + static_cast<long long>(cg) * e.rows + r;
            *rp = fadd(kt == cg ? 0.0f : *rp, sum);
          }
        }
      }
      if (e.colpart == nullptr) continue;
      __syncthreads();
      if (warp != 0 || c0 + lane >= d.cols) continue;
      float* cp = e.colpart + b * e.cp_b + static_cast<long long>(g) * e.chains * e.cols + c0 + lane;
      float ca = qt == g ? 0.0f : cp[0], cb = (qt == g || e.chains == 1) ? 0.0f : cp[e.cols];
      const int rend = min(qk_tile, d.rows - r0);
      for (int rr = 0; rr < rend; ++rr) {
        if (r0 + rr < d.split) {
          ca = fadd(ca, red[rr][lane]);
        } else {
          cb = fadd(cb, red[rr][lane]);
        }
      }
      cp[0] = ca;
      if (e.chains > 1) cp[e.cols] = cb;
    }
  }
}

/// Pass 3: column sums over the row groups and row sums over the column groups, ascending.
template <int Dummy = 0>
__global__ void __launch_bounds__(qk_threads) qk_final_kernel(const qk_table t, const qk_engine e, const qk_finals f) {
  const int s = static_cast<int>(blockIdx.y);
  if (s >= t.count) return;
  const qk_desc d = t.get(s);
  const int b = t.first + s;
  const int x = static_cast<int>(blockIdx.x) * qk_threads + static_cast<int>(threadIdx.x);
  auto bad = [&](unsigned aux, int index) {
    record(f.status, status_site::qk_statistic, aux, static_cast<unsigned>(b), static_cast<unsigned>(index));
    if (f.skip != nullptr) f.skip[b] = 1;
  };
  if (e.colpart != nullptr && x < d.cols && d.rows > 0) {
    const float* cp = e.colpart + b * e.cp_b + x;
    float ca = 0.0f, cb = 0.0f;
    for (int g = 0; g < min(qk_groups, tiles_of(d.rows)); ++g) {
      ca = fadd(ca, cp[static_cast<long long>(g) * e.chains * e.cols]);
      if (e.chains > 1) cb = fadd(cb, cp[static_cast<long long>(g) * e.chains * e.cols + e.cols]);
    }
    if (f.self_mean) ca = fdiv(ca, static_cast<float>(d.cols));
    if (f.degree_diag != nullptr) ca = fsub(ca, f.degree_diag[b * f.diag_b + x]);
    if (f.col_a != nullptr) f.col_a[b * f.col_bs + x] = ca;
    if (f.col_b != nullptr) f.col_b[b * f.col_bs + x] = cb;
    if (!finite_f32(ca) || !finite_f32(cb)) bad(1, x);
  }
  if (e.rowpart != nullptr && x < d.rows && d.cols > 0) {
    const float* rp = e.rowpart + b * e.rp_b + x;
    float sum = 0.0f;
    for (int g = 0; g < min(qk_groups, tiles_of(d.cols)); ++g) sum = fadd(sum, rp[static_cast<long long>(g) * e.rows]);
    if (f.row_sums != nullptr) f.row_sums[b * f.row_b + x] = sum;
    if (!finite_f32(sum)) bad(0, x);
  }
}

/// Enqueues the passes for every table of the batch.
template <element T, class DescOf>
void run_qk(const qk_ref<T>& src, DescOf desc_of, const qk_engine& e, const qk_outputs& o, const qk_finals& f,
            cudaStream_t stream) {
  using D = device_type_t<T>;
  src.each(desc_of, [&](const qk_table& t) {
    const int rows = t.max_of([](const qk_desc& d) { return d.rows; });
    const int cols = t.max_of([](const qk_desc& d) { return d.cols; });
    const int heads = t.max_of([](const qk_desc& d) { return d.heads; });
    if (rows == 0 || cols == 0 || heads == 0 || t.count == 0) return;
    qk_softmax_kernel<D><<<dim3(static_cast<unsigned>(tiles_of(rows)), static_cast<unsigned>(heads), static_cast<unsigned>(t.count)),
                           qk_threads, 0, stream>>>(t, e);
    check_launch("qk_softmax");
    qk_tiles_kernel<D><<<dim3(static_cast<unsigned>(e.rgroups) * static_cast<unsigned>(e.cgroups), static_cast<unsigned>(t.count)),
                         qk_threads, 0, stream>>>(t, e, o);
    check_launch("qk_tiles");
    if (e.colpart != nullptr || e.rowpart != nullptr) {
      qk_final_kernel<><<<dim3(blocks_for(std::max(rows, cols), qk_threads), static_cast<unsigned>(t.count)), qk_threads, 0, stream>>>(t, e, f);
      check_launch("qk_final");
    }
  });
}

/// Largest heads / rows / cols over the distinct samples (checks every one of them).
template <element T, class DescOf>
qk_shape shape_of(const qk_ref<T>& src, DescOf desc_of) {
  qk_shape s;
  s.batch = src.size();
  for (index_t b = 0; b < src.distinct(); ++b) {
    const qk_desc d = desc_of(b, src[b]);
    s.heads = std::max<index_t>(s.heads, d.heads);
    s.rows = std::max<index_t>(s.rows, d.rows);
    s.cols = std::max<index_t>(s.cols, d.cols);
  }
  return s;
}

/// The window rows x window columns of a source (map_sums, contribution degree).
struct window_rows_cols {
  std::string_view method;
  template <element T>
  qk_desc operator()(index_t, const qk_source<T>& src) const {
    return describe(src, src.rows(), src.cols(), src.rows().count, method);
  }
};

/// Rows `rows` (relative to the row window) over the column window (reduced_rows).
struct selected_rows {
  token_range rows;
  std::string_view method;
  template <element T>
  qk_desc operator()(index_t, const qk_source<T>& src) const {
    const token_range win = src.rows();
    check_range(rows, win.count, std::string(method) + ".rows");
    return describe(src, {win.begin + rows.begin, rows.count}, src.cols(), rows.count, method);
  }
};

inline void check_matrix(const matrix_view<float>& m, index_t batch, index_t width, std::string_view name) {
  if (m.data() == nullptr) return;
  if (m.extent(0) != batch || m.extent(1) < width) {
    detail::fail(errc::shape_mismatch, std::string(name), std::to_string(m.extent(0)) + "x" + std::to_string(m.extent(1)),
                 "must be " + std::to_string(batch) + " x at least " + std::to_string(width));
  }
}

template <element T>
std::size_t map_sums_bytes(const qk_ref<T>& src, bool cols, bool rows) {
  workspace_plan plan;
  (void)qk_layout(plan, shape_of(src, window_rows_cols{"map_sums"}), cols, rows, 1);
  return plan.bytes();
}

/// map_sums over a batch into device matrices (row b per sample).
template <element T>
void map_sums_batch(const cuda_policy& policy, const qk_ref<T>& src, head_reduction op, const qk_map_sums_out& out) {
  src.check("map_sums");
  const window_rows_cols desc{"map_sums"};
  const qk_shape shape = shape_of(src, desc);
  check_matrix(out.row_sums, shape.batch, shape.rows, "map_sums.row_sums");
  check_matrix(out.column_sums, shape.batch, shape.cols, "map_sums.column_sums");
  check_matrix(out.diagonal, shape.batch, std::min(shape.rows, shape.cols), "map_sums.diagonal");
  const bool cols = out.column_sums.data() != nullptr, rows = out.row_sums.data() != nullptr;
  workspace_plan plan(policy);
  const qk_engine e = qk_layout(plan, shape, cols, rows, 1);
  plan.require("map_sums");
  reset_status(plan.status(), policy.stream);
  qk_outputs o;
  o.op = op;
  o.diag = out.diagonal.data();
  o.diag_b = out.diagonal.stride(0);
  qk_finals f;
  f.row_sums = out.row_sums.data();
  f.row_b = out.row_sums.stride(0);
  f.col_a = out.column_sums.data();
  f.col_bs = out.column_sums.stride(0);
  f.status = plan.status();
  run_qk(src, desc, e, o, f, policy.stream);
}

template <element T>
std::size_t rows_bytes(const qk_ref<T>& src, const token_range& rows) {
  workspace_plan plan;
  (void)qk_layout(plan, shape_of(src, selected_rows{rows, "reduced_rows"}), false, false, 1);
  return plan.bytes();
}

/// Head-reduced rows of every sample (as desc_of describes them) into out (sample b at
/// b * out_b, leading dimension out_ld). own_call: the call's status word records non-finite
/// values (the method overloads leave that to the method's check of its scores).
template <element T, class DescOf>
void rows_batch(const cuda_policy& policy, workspace_plan& plan, const qk_ref<T>& src, DescOf desc_of, head_reduction op,
                float* out, long long out_b, long long out_ld, bool own_call) {
  const qk_engine e = qk_layout(plan, shape_of(src, desc_of), false, false, 1);
  plan.require("reduced_rows");
  if (own_call) reset_status(plan.status(), policy.stream);
  qk_outputs o;
  o.op = op;
  o.rows = out;
  o.rows_b = out_b;
  o.rows_ld = out_ld;
  o.status = own_call ? plan.status() : nullptr;
  run_qk(src, desc_of, e, o, qk_finals{}, policy.stream);
}

/// Reserves the leading `bytes` of the workspace for a method call that lays out its own
/// buffers (and its status word) from offset 0.
inline void reserve_method(workspace_plan& plan, std::size_t bytes) { (void)plan.take<std::byte>(bytes); }

TOKENSEL_CUDA_END_DETAIL  // cuda_detail

// ---- map_sums -------------------------------------------------------------------------------

/// Workspace bytes of map_sums(cuda_policy, source, op, out) (pure host arithmetic on shapes).
template <element T>
[[nodiscard]] std::size_t map_sums_workspace_size(const qk_source<T>& src, const map_sums_out& out) {
  return cuda_detail::map_sums_bytes(cuda_detail::qk_ref<T>(std::span<const qk_source<T>>(&src, 1)), !out.column_sums.empty(),
                                     !out.row_sums.empty());
}
template <element T>
[[nodiscard]] std::size_t map_sums_workspace_size(const qk_batch<T>& src, const qk_map_sums_out& out) {
  return cuda_detail::map_sums_bytes(cuda_detail::qk_ref<T>(src), out.column_sums.data() != nullptr, out.row_sums.data() != nullptr);
}
template <element T>
[[nodiscard]] std::size_t map_sums_workspace_size(std::span<const qk_source<T>> src, const qk_map_sums_out& out) {
  return cuda_detail::map_sums_bytes(cuda_detail::qk_ref<T>(src), out.column_sums.data() != nullptr, out.row_sums.data() != nullptr);
}

/// Row sums, column sums and diagonal of the head-reduced probabilities over the source's window,
/// from Q and K on the device, into device spans (each empty or sized rows, cols, min(rows, cols)).
/// Within 1e-5 relative of the CPU's map_sums on the same source (fp32 arithmetic, another order).
template <element T>
void map_sums(const cuda_policy& policy, const qk_source<T>& src, head_reduction op, const map_sums_out& out) {
  (void)cuda_detail::describe(src, src.rows(), src.cols(), 0, "map_sums");
  const index_t rows = src.rows().count, cols = src.cols().count;
  detail::check_span(out.row_sums, rows, "map_sums.row_sums.size()");
  detail::check_span(out.column_sums, cols, "map_sums.column_sums.size()");
  detail::check_span(out.diagonal, std::min(rows, cols), "map_sums.diagonal.size()");
  auto as_row = [](std::span<float> s) {
    return s.empty() ? matrix_view<float>{} : matrix_view<float>(s.data(), {1, static_cast<index_t>(s.size())});
  };
  cuda_detail::map_sums_batch(policy, cuda_detail::qk_ref<T>(std::span<const qk_source<T>>(&src, 1)), op,
                              qk_map_sums_out{as_row(out.row_sums), as_row(out.column_sums), as_row(out.diagonal)});
}

/// Dense batch: row b of each output matrix for sample b.
template <element T>
void map_sums(const cuda_policy& policy, const qk_batch<T>& src, head_reduction op, const qk_map_sums_out& out) {
  cuda_detail::map_sums_batch(policy, cuda_detail::qk_ref<T>(src), op, out);
}

/// Ragged batch: one source per sample (matrices as wide as the largest window).
template <element T>
void map_sums(const cuda_policy& policy, std::span<const qk_source<T>> src, head_reduction op, const qk_map_sums_out& out) {
  cuda_detail::map_sums_batch(policy, cuda_detail::qk_ref<T>(src), op, out);
}

// ---- reduced_rows ---------------------------------------------------------------------------

/// Workspace bytes of reduced_rows(cuda_policy, source, op, rows, out).
template <element T>
[[nodiscard]] std::size_t reduced_rows_workspace_size(const qk_source<T>& src, const token_range& rows) {
  return cuda_detail::rows_bytes(cuda_detail::qk_ref<T>(std::span<const qk_source<T>>(&src, 1)), rows);
}
template <element T>
[[nodiscard]] std::size_t reduced_rows_workspace_size(const qk_batch<T>& src, const token_range& rows) {
  return cuda_detail::rows_bytes(cuda_detail::qk_ref<T>(src), rows);
}

/// Rows `rows` (relative to the row window: {0, 1} = CLS, {n_q - 1, 1} = last token) of the
/// head-reduced probabilities over the column window, into out [rows.count, cols] (device).
template <element T>
void reduced_rows(const cuda_policy& policy, const qk_source<T>& src, head_reduction op, const token_range& rows,
                  const matrix_view<float>& out) {
  const cuda_detail::qk_ref<T> ref(std::span<const qk_source<T>>(&src, 1));
  (void)cuda_detail::selected_rows{rows, "reduced_rows"}(0, src);
  if (out.extent(0) != rows.count || out.extent(1) != src.cols().count || (out.size() > 0 && out.stride(1) != 1)) {
    detail::fail(errc::shape_mismatch, "reduced_rows.out", std::to_string(out.extent(0)) + "x" + std::to_string(out.extent(1)),
                 "must be " + std::to_string(rows.count) + "x" + std::to_string(src.cols().count) + " with unit column stride");
  }
  cuda_detail::workspace_plan plan(policy);
  cuda_detail::rows_batch(policy, plan, ref, cuda_detail::selected_rows{rows, "reduced_rows"}, op, out.data(), 0, out.stride(0), true);
}

/// Dense batch: out [batch, rows.count, cols] (unit column stride).
template <element T>
void reduced_rows(const cuda_policy& policy, const qk_batch<T>& src, head_reduction op, const token_range& rows,
                  const tensor_view<float, 3>& out) {
  const cuda_detail::qk_ref<T> ref(src);
  ref.check("reduced_rows");
  const index_t cols = src.size() > 0 ? src[0].cols().count : 0;
  if (out.extent(0) != src.size() || out.extent(1) != rows.count || out.extent(2) != cols || (out.size() > 0 && out.stride(2) != 1)) {
    detail::fail(errc::shape_mismatch, "reduced_rows.out",
                 std::to_string(out.extent(0)) + "x" + std::to_string(out.extent(1)) + "x" + std::to_string(out.extent(2)),
                 "must be batch x rows x window cols with unit column stride");
  }
  cuda_detail::workspace_plan plan(policy);
  cuda_detail::rows_batch(policy, plan, ref, cuda_detail::selected_rows{rows, "reduced_rows"}, op, out.data(), out.stride(0), out.stride(1), true);
}

// ---- contribution degree, region masses, materialisation (one sample) -------------------------

/// Workspace bytes of contribution_degree(cuda_policy, source, op, range, out).
template <element T>
[[nodiscard]] std::size_t contribution_degree_workspace_size(const qk_source<T>& src, const token_range& range) {
  cuda_detail::workspace_plan plan;
  const auto sub = restrict_tokens(src, range);
  (void)cuda_detail::qk_layout(plan, {1, src.heads(), sub.rows().count, sub.cols().count}, true, false, 1);
  (void)plan.take<float>(static_cast<std::size_t>(range.count));
  return plan.bytes();
}

/// r[i] = column sum - diagonal of the head-reduced map over range x range (relative to the
/// windows; e.g. skip_cls(N)), from Q and K, into the device span out [range.count].
template <element T>
void contribution_degree(const cuda_policy& policy, const qk_source<T>& src, head_reduction op, const token_range& range,
                         std::span<float> out) {
  using namespace cuda_detail;
  if (src.query_count() != src.key_count()) {
    detail::fail(errc::shape_mismatch, "contribution_degree.attention",
                 std::to_string(src.query_count()) + "x" + std::to_string(src.key_count()), "queries and keys must be the same tokens");
  }
  const auto sub = restrict_tokens(src, range);
  detail::check_contribution_shapes(range.count, range.count, static_cast<index_t>(out.size()));
  const qk_ref<T> ref(std::span<const qk_source<T>>(&sub, 1));
  const window_rows_cols desc{"contribution_degree"};
  workspace_plan plan(policy);
  const qk_engine e = qk_layout(plan, shape_of(ref, desc), true, false, 1);
  float* diag = plan.take<float>(static_cast<std::size_t>(range.count));
  plan.require("contribution_degree");
  reset_status(plan.status(), policy.stream);
  qk_outputs o;
  o.op = op;
  o.diag = diag;
  qk_finals f;
  f.col_a = out.data();
  f.degree_diag = diag;
  f.status = plan.status();
  run_qk(ref, desc, e, o, f, policy.stream);
}

TOKENSEL_CUDA_BEGIN_DETAIL

/// Region masses: rows [s0, L) of the window over the visual columns, chains split at n.
struct region_rows {
  token_range visual;
  template <element T>
  qk_desc operator()(index_t, const qk_source<T>& src) const {
    const token_range r = src.rows(), c = src.cols();
    detail::check_llm_attention(r.count, c.count, visual, "region_mass");
    const index_t rows = visual.count > 0 ? r.count - visual.begin : 0;
    return describe(src, {r.begin + visual.begin, rows}, {c.begin + visual.begin, visual.count}, visual.count, "region_mass");
  }
};


TOKENSEL_CUDA_END_DETAIL  // cuda_detail

/// Workspace bytes of region_mass(cuda_policy, source, visual, ...).
template <element T>
[[nodiscard]] std::size_t region_mass_workspace_size(const qk_source<T>& src, const token_range& visual) {
  using namespace cuda_detail;
  workspace_plan plan;
  const qk_ref<T> ref(std::span<const qk_source<T>>(&src, 1));
  const qk_shape shape = shape_of(ref, region_rows{visual});
  (void)plan.take<int>(1);
  (void)qk_layout(plan, shape, true, true, 2);
  (void)plan.take<float>(static_cast<std::size_t>(shape.rows));
  return plan.bytes();
}

/// FitPrune's region masses around visual = [s0, s0 + n) (relative to the windows; the source is
/// a causal prefill: n_q = n_k) from Q and K: the max (or mean / sum) over heads is taken per
/// element of every tile before any sum. cross and self into device spans (each empty or n),
/// Wc, Ws, T into *result (device; may be null).
template <element T>
void region_mass(const cuda_policy& policy, const qk_source<T>& src, const token_range& visual, head_reduction op,
                 const region_mass_out& out = {}, region_mass_result* result = nullptr) {
  using namespace cuda_detail;
  const qk_ref<T> ref(std::span<const qk_source<T>>(&src, 1));
  const region_rows desc{visual};
  const qk_shape shape = shape_of(ref, desc);
  const index_t n = visual.count, text = shape.rows - n;
  detail::check_region_mass_outputs(out, n);
  workspace_plan plan(policy);
  int* skip = plan.take<int>(1);
  const qk_engine e = qk_layout(plan, shape, true, true, 2);
  float* totals = plan.take<float>(static_cast<std::size_t>(shape.rows));
  plan.require("region_mass");
  cudaStream_t stream = policy.stream;
  reset_status(plan.status(), stream);
  check(cudaMemsetAsync(skip, 0, sizeof(int), stream), "cudaMemsetAsync(skip)");
  qk_outputs o;
  o.op = op;
  qk_finals f;
  f.row_sums = totals;
  f.col_a = out.self.empty() ? nullptr : out.self.data();
  f.col_b = out.cross.empty() ? nullptr : out.cross.data();
  f.self_mean = true;
  f.skip = skip;
  f.status = plan.status();
  run_qk(ref, desc, e, o, f, stream);
  if (result != nullptr) {
    region_result_kernel<><<<1, 32, 0, stream>>>(totals, static_cast<int>(n), static_cast<int>(n > 0 ? text : 0), skip, result);
    check_launch("qk_region_result");
  }
}

/// Workspace bytes of materialize_attention(cuda_policy, source, out).
template <element T>
[[nodiscard]] std::size_t materialize_attention_workspace_size(const qk_source<T>& src) {
  cuda_detail::workspace_plan plan;
  (void)cuda_detail::qk_layout(plan, {1, src.heads(), src.rows().count, src.cols().count}, false, false, 1);
  return plan.bytes();
}

/// The per-head probabilities of the window into out [heads, rows, cols] (device, unit column
/// stride): O(n^2) by nature, for checks and for the materialise-then-reduce baseline.
template <element T>
void materialize_attention(const cuda_policy& policy, const qk_source<T>& src, const tensor_view<float, 3>& out) {
  using namespace cuda_detail;
  const window_rows_cols desc{"materialize_attention"};
  (void)desc(0, src);
  if (out.extent(0) != src.heads() || out.extent(1) != src.rows().count || out.extent(2) != src.cols().count ||
      (out.size() > 0 && out.stride(2) != 1)) {
    detail::fail(errc::shape_mismatch, "materialize_attention.out",
                 std::to_string(out.extent(0)) + "x" + std::to_string(out.extent(1)) + "x" + std::to_string(out.extent(2)),
                 "must be heads x window rows x window cols with unit column stride");
  }
  const qk_ref<T> ref(std::span<const qk_source<T>>(&src, 1));
  workspace_plan plan(policy);
  const qk_engine e = qk_layout(plan, shape_of(ref, desc), false, false, 1);
  plan.require("materialize_attention");
  reset_status(plan.status(), policy.stream);
  qk_outputs o;
  o.probs = out.data();
  o.probs_h = out.stride(0);
  o.probs_ld = out.stride(1);
  run_qk(ref, desc, e, o, qk_finals{}, policy.stream);
}


TOKENSEL_END_NAMESPACE
