// tokensel CUDA backend: freePruner (spec section 2), one-shot over a stack of layers, batched.
// Same selection and statistics as freepruner::select of the CPU backend (tokensel/freepruner.hpp).
//
// Per pivotal layer (one launch each for the whole batch):
//   reduce_rows   head reduction of the patch submatrix -> M (workspace) and its diagonal
//   column_sums   r = column sum (ascending rows) - diagonal; running max of r; r of last_layer
//   rank          top-k_pivotal of r by rank counting, marked in P
// Complementary layer (after P is complete):
//   reduce_rows   only when it is not last_layer (whose M is still in the workspace): rows in P
//   iqr_rows      one block per pivotal row: quartiles (numpy linear, double), fence
//   margins       per patch: member of C, largest outlier margin x - fence; |P|, |S|
// Assembly: compact (adaptive: S ascending) or rank + compact (fixed budget: the CPU's ranking).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cmath>
#include <span>
#include <string>
#include <vector>

#include "tokensel/cuda/core/abi.cuh"
#include "tokensel/core/batch.hpp"
#include "tokensel/core/config.hpp"
#include "tokensel/cuda/detail/arith.cuh"
#include "tokensel/cuda/detail/batch.cuh"
#include "tokensel/cuda/stats/detail/iqr.cuh"
#include "tokensel/cuda/detail/launch.cuh"
#include "tokensel/cuda/detail/single.cuh"
#include "tokensel/cuda/stats/detail/map_kernels.cuh"
#include "tokensel/cuda/select/detail/select_kernels.cuh"
#include "tokensel/cuda/core/element.cuh"
#include "tokensel/cuda/core/error.cuh"
#include "tokensel/cuda/core/policy.cuh"
#include "tokensel/cuda/core/workspace.cuh"
#include "tokensel/methods/freepruner.hpp"

TOKENSEL_BEGIN_NAMESPACE
namespace freepruner {

/// One sample's layers on the device: layers[i] is model layer offset + i, [heads, N, N].
/// (layer_stack<T> of the CPU backend works too for float / Eigen::half / Eigen::bfloat16.)
template <class T>
struct device_layer_stack {
  std::span<const head_attention_view<T>> layers;
  index_t offset = 0;
};

/// A batch's layers on the device: layers[i] is model layer offset + i, [batch, heads, N, N].
template <class T>
struct device_batch_layer_stack {
  std::span<const attention_view<T>> layers;
  index_t offset = 0;
};

TOKENSEL_CUDA_BEGIN_DETAIL

using namespace tokensel::cuda_detail;

struct buffers {
  device_status* status = nullptr;
  int* skip = nullptr;
  int* count_p = nullptr;
  int* count_s = nullptr;
  float* map = nullptr;
  float* diag = nullptr;
  float* r = nullptr;
  float* max_r = nullptr;
  float* last_r = nullptr;
  int* rank = nullptr;
  unsigned char* in_p = nullptr;
  unsigned char* in_c = nullptr;
  double* margin = nullptr;
  double* fence = nullptr;
  long long vec = 0;
  long long map_stride = 0;
};

inline buffers layout(workspace_plan& plan, index_t batch, index_t n_max) {
  buffers w;
  const auto B = count_of({batch}), n = count_of({n_max});
  w.status = plan.status();
  w.vec = static_cast<long long>(n_max);
  w.map_stride = static_cast<long long>(n_max) * static_cast<long long>(n_max);
  w.skip = plan.take<int>(B);
  w.count_p = plan.take<int>(B);
  w.count_s = plan.take<int>(B);
  w.map = plan.take<float>(count_of({batch, n_max, n_max}));
  w.diag = plan.take<float>(B * n);
  w.r = plan.take<float>(B * n);
  w.max_r = plan.take<float>(B * n);
  w.last_r = plan.take<float>(B * n);
  w.rank = plan.take<int>(B * n);
  w.in_p = plan.take<unsigned char>(B * n);
  w.in_c = plan.take<unsigned char>(B * n);
  w.margin = plan.take<double>(B * n);
  w.fence = plan.take<double>(B * n);
  return w;
}

/// r = column sum - diagonal; running max over the pivotal layers; r of last_layer.
struct contribution_epilogue {
  float* r;
  const float* diag;
  float* max_r;
  float* last_r;
  long long vec;
  int first;
  int last;
  device_status* status;
  unsigned layer;
  int* skip;
  __device__ int split(const window_desc& d) const { return d.rows; }
  __device__ void operator()(int b, const window_desc&, int j, float column, float) const {
    const long long at = b * vec + j;
    const float v = fsub(column, diag[at]);
    r[at] = v;
    if (!finite_f32(v)) {
      record(status, status_site::contribution, layer, static_cast<unsigned>(b), static_cast<unsigned>(j));
      skip[b] = 1;
    }
    max_r[at] = first != 0 ? v : std_max(max_r[at], v);
    if (last != 0) last_r[at] = v;
  }
};

/// Top-k_pivotal of r: marks P.
struct pivotal_ranker {
  using key_type = float;
  const float* r;
  unsigned char* in_p;
  long long vec;
  const int* skip;
  int k;
  __device__ bool active(int b, const window_desc&) const { return skip[b] == 0; }
  __host__ __device__ static int size(const window_desc& d) { return d.cols; }
  __device__ bool eligible(int, const window_desc&, int) const { return true; }
  __device__ float key(int b, const window_desc&, int i) const { return r[b * vec + i]; }
  __device__ static bool beats(float kj, int j, float ki, int i) { return beats_high(kj, j, ki, i); }
  __device__ void write(int b, const window_desc&, int i, int rank) const {
    if (rank < k) in_p[b * vec + i] = 1;
  }
};

struct iqr_rows_args {
  const float* map;
  long long map_stride;
  const unsigned char* in_p;
  double* fence;
  long long vec;
  const int* skip;
  double multiplier;
};

inline constexpr int iqr_block = 256;

/// One block per (pivotal row p, sample): the upper fence of M[p, :].
template <int Dummy = 0>
__global__ void __launch_bounds__(iqr_block) iqr_rows_kernel(const sample_table t, const iqr_rows_args a) {
  const int s = static_cast<int>(blockIdx.y);
  if (s >= t.count) return;
  const window_desc d = t.get(s);
  const int b = t.first + s;
  const int p = static_cast<int>(blockIdx.x), n = d.cols;
  if (p >= n) return;
  if (__syncthreads_or((a.skip[b] != 0 || a.in_p[b * a.vec + p] == 0) ? 1 : 0) != 0) return;
  const float* row = a.map + b * a.map_stride + static_cast<long long>(p) * n;
  const quartiles q = block_quartiles<iqr_block>(row, n);
  if (threadIdx.x == 0) a.fence[b * a.vec + p] = upper_fence(q.q1, q.q3, a.multiplier);
}

struct margin_args {
  const float* map;
  long long map_stride;
  const unsigned char* in_p;
  unsigned char* in_c;
  const double* fence;
  double* margin;
  long long vec;
  const int* skip;
  int* count_p;
  int* count_s;
};

inline constexpr int margin_block = 256;

/// Per patch j: C membership and the largest margin over the pivotal rows (p ascending, as the
/// CPU; the max does not depend on the order); counts |P| and |S| per sample.
template <int Dummy = 0>
__global__ void __launch_bounds__(margin_block) margin_kernel(const sample_table t, const margin_args a) {
  const int s = static_cast<int>(blockIdx.y);
  if (s >= t.count) return;
  const window_desc d = t.get(s);
  const int b = t.first + s;
  const int n = d.cols, j = static_cast<int>(blockIdx.x) * margin_block + static_cast<int>(threadIdx.x);
  if (j >= n || a.skip[b] != 0) return;
  const unsigned char* in_p = a.in_p + b * a.vec;
  const float* m = a.map + b * a.map_stride;
  const double* fence = a.fence + b * a.vec;
  bool in_c = false;
  double best = -static_cast<double>(INFINITY);
  for (int p = 0; p < n; ++p) {
    if (in_p[p] == 0) continue;
    const double x = static_cast<double>(m[static_cast<long long>(p) * n + j]);
    if (x > fence[p]) {
      in_c = true;
      best = std_max(best, dsub(x, fence[p]));
    }
  }
  a.in_c[b * a.vec + j] = in_c ? 1 : 0;
  a.margin[b * a.vec + j] = best;
  if (in_p[j] != 0) atomicAdd(&a.count_p[b], 1);
  if (in_p[j] != 0 || in_c) atomicAdd(&a.count_s[b], 1);
}

/// Fixed mode ranking: |S| > B ranks S (pivotal first by max r, then complementary by margin);
/// |S| < B ranks the patches outside S by r of last_layer. Ties: lower index first.
struct assemble_key {
  int over;  // 1: |S| > B, 0: |S| < B (same for the whole sample)
  int pivotal;
  float max_r;
  float last_r;
  double margin;
};

struct assemble_ranker {
  using key_type = assemble_key;
  const unsigned char* in_p;
  const unsigned char* in_c;
  const float* max_r;
  const float* last_r;
  const double* margin;
  const int* count_s;
  int* rank;
  long long vec;
  const int* skip;
  int budget;
  __device__ bool active(int b, const window_desc&) const { return skip[b] == 0 && count_s[b] != budget; }
  __host__ __device__ static int size(const window_desc& d) { return d.cols; }
  __device__ bool eligible(int b, const window_desc&, int i) const {
    const bool in_s = in_p[b * vec + i] != 0 || in_c[b * vec + i] != 0;
    return count_s[b] > budget ? in_s : !in_s;
  }
  __device__ assemble_key key(int b, const window_desc&, int i) const {
    const long long at = b * vec + i;
    return assemble_key{count_s[b] > budget ? 1 : 0, in_p[at] != 0 ? 1 : 0, max_r[at], last_r[at], margin[at]};
  }
  __host__ __device__ static bool beats(const assemble_key& kj, int j, const assemble_key& ki, int i) {
    if (kj.over == 0) return beats_high(kj.last_r, j, ki.last_r, i);
    if (kj.pivotal != ki.pivotal) return kj.pivotal != 0;
    if (kj.pivotal != 0) return beats_high(kj.max_r, j, ki.max_r, i);
    return kj.margin > ki.margin || (kj.margin == ki.margin && j < i);
  }
  __device__ void write(int b, const window_desc&, int i, int r) const { rank[b * vec + i] = r; }
};

struct assemble_compactor {
  const unsigned char* in_p;
  const unsigned char* in_c;
  const int* rank;
  const int* count_p;
  const int* count_s;
  long long vec;
  const int* skip;
  int fixed;
  int budget;
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
  __device__ bool selected(int b, const window_desc&, int i) const {
    const long long at = b * vec + i;
    const bool in_s = in_p[at] != 0 || in_c[at] != 0;
    const int S = count_s[b];
    if (fixed == 0 || S == budget) return in_s;
    if (S > budget) return in_s && rank[at] < budget;
    return in_s || rank[at] < budget - S;
  }
  __device__ void emit(int b, const window_desc&, int pos, int i) const { out[b * out_stride + pos] = i; }
  __device__ void finish(int b, const window_desc&, int count) const {
    counts[b] = count;
    if (results == nullptr) return;
    const int P = count_p[b], S = count_s[b];
    result& r = results[b];
    r.count = count;
    r.pivotal = P;
    r.complementary = S - P;
    r.candidates = S;
    r.dropped = (fixed != 0 && S > budget) ? S - budget : 0;
    r.filled = (fixed != 0 && S < budget) ? budget - S : 0;
  }
};

/// The batch as seen by the pipeline: sample b's attention of model layer l.
template <class T, class LayerOf>
struct stack_ref {
  index_t batch;
  bool uniform;
  LayerOf layer_of;  // (l) -> batch_ref<T>-like accessor: (l, b) -> head view; stride_bytes(l)

  template <class DescOf>
  auto tables(index_t l, DescOf desc_of) const {
    auto f = [this, l, desc_of](index_t b) { return desc_of(layer_of.view(l, b)); };
    return make_tables(batch, uniform, layer_of.stride_bytes(l), f);
  }
};

template <class T>
struct uniform_layers {
  const device_batch_layer_stack<T>* stack;
  head_attention_view<T> view(index_t l, index_t b) const { return stack->layers[sz(l - stack->offset)][b]; }
  long long stride_bytes(index_t l) const {
    return static_cast<long long>(stack->layers[sz(l - stack->offset)].stride(0)) * static_cast<long long>(sizeof(T));
  }
  static std::size_t sz(index_t v) { return static_cast<std::size_t>(v); }
};

template <class T>
struct ragged_layers {
  std::span<const device_layer_stack<T>> samples;
  head_attention_view<T> view(index_t l, index_t b) const {
    const auto& s = samples[static_cast<std::size_t>(b)];
    return s.layers[static_cast<std::size_t>(l - s.offset)];
  }
  long long stride_bytes(index_t) const { return 0; }
};

/// detail::check_layer_shape of the CPU backend for device views of any storage type (same
/// messages): [heads >= 1, tokens, tokens].
template <class T>
void check_layer(const tensor_view<const T, 3>& a, index_t tokens, index_t layer) {
  if (a.extent(1) != tokens || a.extent(2) != tokens) {
    tokensel::detail::fail(errc::shape_mismatch, detail::layer_name(layer),
                           std::to_string(a.extent(1)) + "x" + std::to_string(a.extent(2)),
                           "must be square with the " + std::to_string(tokens) + " tokens of the other layers");
  }
  if (a.extent(0) < 1 && tokens > 0) {
    tokensel::detail::fail(errc::shape_mismatch, detail::layer_name(layer) + ".extent(0)", a.extent(0), "no heads");
  }
}

/// Host checks of one sample in the CPU's order; returns n (patches).
template <class T, class ViewOf>
index_t check_sample(ViewOf&& view_of, const config& cfg, index_t capacity) {
  const index_t tokens = view_of(cfg.first_layer).extent(1);
  const token_range patches = detail::patch_range(tokens, cfg);
  const index_t n = patches.count;
  tokensel::detail::check_capacity(static_cast<std::size_t>(capacity), max_count(n, cfg), "freepruner.out.size()");
  detail::check_k(n, cfg);
  for (index_t l = lowest_layer(cfg); l < layers_end(cfg); ++l) {
    if (uses_layer(cfg, l)) check_layer<T>(view_of(l), tokens, l);
  }
  return n;
}

template <class T>
window_desc patch_window(const head_attention_view<T>& a, const config& cfg) {
  const token_range patches = detail::patch_range(a.extent(1), cfg);
  return window_of(a, patches.begin, patches.count, patches.begin, patches.count);
}

/// Clears the cross-layer state of a batch (status, skip flags, counts, P) before its first layer.
inline void init_state(const buffers& w, index_t batch, index_t n_max, cudaStream_t stream) {
  reset_status(w.status, stream);
  const std::size_t Bs = static_cast<std::size_t>(batch), vec_bytes = Bs * static_cast<std::size_t>(n_max);
  check(cudaMemsetAsync(w.skip, 0, Bs * sizeof(int), stream), "cudaMemsetAsync(skip)");
  check(cudaMemsetAsync(w.count_p, 0, Bs * sizeof(int), stream), "cudaMemsetAsync(count)");
  check(cudaMemsetAsync(w.count_s, 0, Bs * sizeof(int), stream), "cudaMemsetAsync(count)");
  if (vec_bytes > 0) check(cudaMemsetAsync(w.in_p, 0, vec_bytes, stream), "cudaMemsetAsync(in_p)");
}

/// One pivotal layer: reduced map (full) and diagonal into w.map, r, running max of r (first:
/// the first pivotal layer processed), r of last_layer (last), top-k_pivotal marked in P.
template <class D, class Tables>
void pivotal_stage(const Tables& tables, const buffers& w, const config& cfg, index_t l, bool first, bool last,
                   cudaStream_t stream) {
  tokensel::cuda_detail::rows_args ra;
  ra.op = cfg.heads;
  ra.map = w.map;
  ra.map_stride = w.map_stride;
  ra.diag = w.diag;
  ra.vec_stride = w.vec;
  ra.skip = w.skip;
  ra.status = w.status;
  launch_reduce_rows<D>(tables, ra, stream);
  cols_args ca;
  ca.map = w.map;
  ca.map_stride = w.map_stride;
  ca.skip = w.skip;
  const contribution_epilogue epi{w.r,     w.diag,    w.max_r, w.last_r, w.vec, first ? 1 : 0, last ? 1 : 0,
                                  w.status, static_cast<unsigned>(l), w.skip};
  launch_column_sums(tables, ca, epi, stream);
  launch_rank(tables, pivotal_ranker{w.r, w.in_p, w.vec, w.skip, static_cast<int>(cfg.k_pivotal)}, stream);
}

/// Reduced rows of the complementary layer into map (row_mask: only the rows in P; null: all).
template <class D, class Tables>
void complementary_rows(const Tables& tables, const buffers& w, float* map, const unsigned char* row_mask,
                        const config& cfg, cudaStream_t stream, bool check_finite = true) {
  tokensel::cuda_detail::rows_args ra;
  ra.op = cfg.heads;
  ra.map = map;
  ra.map_stride = w.map_stride;
  ra.vec_stride = w.vec;
  ra.row_mask = row_mask;
  ra.skip = w.skip;
  ra.status = w.status;
  ra.site = check_finite ? status_site::complementary_row : status_site::none;
  ra.aux = static_cast<unsigned>(cfg.complementary_layer);
  launch_reduce_rows<D>(tables, ra, stream);
}

/// The finite check of the complementary layer's rows in P, on its stored reduced map [B, n, n]
/// (a one-head map: reducing it again is the identity), with the report complementary_rows gives.
/// The selector stores a complementary layer that arrives before P is complete unchecked and
/// checks it here, as the CPU selector checks only the rows in P.
inline void check_stored_rows(index_t batch, int n, const float* stored, const buffers& w, const config& cfg,
                              cudaStream_t stream) {
  const auto tables = tokensel::cuda_detail::make_tables(
      batch, true, static_cast<long long>(n) * n * static_cast<long long>(sizeof(float)), [stored, n](index_t) {
        tokensel::cuda_detail::window_desc d;
        d.data = stored;
        d.heads = 1;
        d.rows = n;
        d.cols = n;
        d.si = n;
        d.sj = 1;
        return d;
      });
  tokensel::cuda_detail::rows_args ra;
  ra.op = head_reduction::sum;
  ra.vec_stride = w.vec;
  ra.row_mask = w.in_p;
  ra.skip = w.skip;
  ra.status = w.status;
  ra.site = status_site::complementary_row;
  ra.aux = static_cast<unsigned>(cfg.complementary_layer);
  launch_reduce_rows<float>(tables, ra, stream);
}

/// IQR fences of the rows in P of the complementary map, then C, margins, |P| and |S|.
template <class Tables>
void outlier_stage(const Tables& tables, const buffers& w, const float* map, const config& cfg,
                   cudaStream_t stream) {
  const iqr_rows_args ia{map, w.map_stride, w.in_p, w.fence, w.vec, w.skip, cfg.iqr_multiplier};
  const margin_args ma{map, w.map_stride, w.in_p, w.in_c, w.fence, w.margin, w.vec, w.skip, w.count_p, w.count_s};
  tables.each([&](const sample_table& t) {
    const int n = t.max_cols();
    if (n == 0) return;
    iqr_rows_kernel<><<<dim3(static_cast<unsigned>(n), static_cast<unsigned>(t.count)), iqr_block, 0, stream>>>(t, ia);
    check_launch("freepruner_iqr_rows");
    margin_kernel<><<<dim3(blocks_for(n, margin_block), static_cast<unsigned>(t.count)), margin_block, 0, stream>>>(t, ma);
    check_launch("freepruner_margins");
  });
}

/// Assembly: S ascending (adaptive) or the CPU's ranking to the budget (fixed).
template <class Tables>
void assemble_stage(const Tables& tables, const buffers& w, const config& cfg, const selection_batch& out,
                    std::span<result> results, cudaStream_t stream) {
  const bool fixed = cfg.mode == mode::fixed;
  const int budget = static_cast<int>(cfg.budget);
  if (fixed) {
    launch_rank(tables,
                assemble_ranker{w.in_p, w.in_c, w.max_r, w.last_r, w.margin, w.count_s, w.rank, w.vec, w.skip, budget},
                stream);
  }
  launch_compact(tables,
                 assemble_compactor{w.in_p, w.in_c, w.rank, w.count_p, w.count_s, w.vec, w.skip, fixed ? 1 : 0, budget,
                                    out_rows(out), out_stride(out), out.counts.data(),
                                    results.empty() ? nullptr : results.data()},
                 stream);
}

template <class T, class Layers>
void run(const cuda_policy& policy, const stack_ref<T, Layers>& stack, index_t n_max, const config& cfg,
         const selection_batch& out, std::span<result> results) {
  const index_t B = stack.batch;
  workspace_plan plan(policy);
  const buffers w = layout(plan, B, n_max);
  plan.require("freepruner");
  if (B == 0) return;
  cudaStream_t stream = policy.stream;
  using D = device_type_t<T>;
  init_state(w, B, n_max, stream);
  auto window = [&cfg](const head_attention_view<T>& a) { return patch_window(a, cfg); };
  for (index_t l = cfg.first_layer; l <= cfg.last_layer; ++l) {
    pivotal_stage<D>(stack.tables(l, window), w, cfg, l, l == cfg.first_layer, l == cfg.last_layer, stream);
  }
  const auto tables = stack.tables(cfg.complementary_layer, window);
  if (cfg.complementary_layer != cfg.last_layer) complementary_rows<D>(tables, w, w.map, w.in_p, cfg, stream);
  outlier_stage(tables, w, w.map, cfg, stream);
  assemble_stage(tables, w, cfg, out, results, stream);
}

template <class T>
index_t batch_n_max(const device_batch_layer_stack<T>& stack, const config& cfg) {
  if (stack.layers.empty()) return 0;
  const auto& first = stack.layers[static_cast<std::size_t>(cfg.first_layer - stack.offset)];
  return detail::patch_range(first.extent(2), cfg).count;
}

template <class T>
index_t batch_size_of(const device_batch_layer_stack<T>& stack, const config& cfg) {
  return stack.layers[static_cast<std::size_t>(cfg.first_layer - stack.offset)].extent(0);
}

/// Every check of the CPU's batched select, in its order; returns the batch size.
template <class T>
index_t check_batch(const device_batch_layer_stack<T>& stack, const config& cfg, const selection_batch& out,
                    std::span<result> results) {
  validate(cfg);
  detail::check_stack(stack.layers, stack.offset, cfg);
  const index_t batch = batch_size_of(stack, cfg);
  for (index_t l = lowest_layer(cfg); l < layers_end(cfg); ++l) {
    const index_t b = stack.layers[static_cast<std::size_t>(l - stack.offset)].extent(0);
    if (uses_layer(cfg, l) && b != batch) {
      tokensel::detail::fail(errc::shape_mismatch, detail::layer_name(l) + ".extent(0)", b,
                             "batch must be " + std::to_string(batch) + " in every layer");
    }
  }
  check_outputs(out, results, batch, "freepruner");
  if (batch > 0) {
    const uniform_layers<T> layers{&stack};
    (void)check_sample<T>([&](index_t l) { return layers.view(l, 0); }, cfg, out.indices.extent(1));
  }
  return batch;
}

template <class T>
index_t check_ragged(std::span<const device_layer_stack<T>> samples, const config& cfg, const selection_batch& out,
                     std::span<result> results) {
  validate(cfg);
  for (const auto& s : samples) detail::check_stack(s.layers, s.offset, cfg);
  const auto batch = static_cast<index_t>(samples.size());
  check_outputs(out, results, batch, "freepruner");
  index_t n_max = 0;
  const ragged_layers<T> layers{samples};
  for (index_t b = 0; b < batch; ++b) {
    n_max = std::max(n_max, check_sample<T>([&](index_t l) { return layers.view(l, b); }, cfg, out.indices.extent(1)));
  }
  return n_max;
}

template <class T>
index_t ragged_n_max(std::span<const device_layer_stack<T>> samples, const config& cfg) {
  index_t n_max = 0;
  for (const auto& s : samples) {
    if (s.layers.empty() || cfg.first_layer - s.offset < 0 ||
        cfg.first_layer - s.offset >= static_cast<index_t>(s.layers.size())) {
      continue;
    }
    const auto& a = s.layers[static_cast<std::size_t>(cfg.first_layer - s.offset)];
    n_max = std::max(n_max, detail::patch_range(a.extent(2), cfg).count);
  }
  return n_max;
}

template <class T>
std::size_t bytes_for(index_t batch, index_t n_max) {
  workspace_plan plan;
  (void)layout(plan, batch, n_max);
  return plan.bytes();
}

template <class E>
device_batch_layer_stack<E> as_device(const batch_layer_stack<E>& s) {
  return {s.layers, s.offset};
}

TOKENSEL_CUDA_END_DETAIL  // cuda_detail

/// Workspace bytes of select(cuda_policy, stack, cfg, ...) (pure host arithmetic on shapes).
template <cuda_element T>
[[nodiscard]] std::size_t workspace_size(const device_batch_layer_stack<T>& stack, const config& cfg) {
  validate(cfg);
  detail::check_stack(stack.layers, stack.offset, cfg);
  return cuda_detail::bytes_for<T>(cuda_detail::batch_size_of(stack, cfg), cuda_detail::batch_n_max(stack, cfg));
}
template <cuda_element T>
[[nodiscard]] std::size_t workspace_size(std::span<const device_layer_stack<T>> samples, const config& cfg) {
  validate(cfg);
  for (const auto& s : samples) detail::check_stack(s.layers, s.offset, cfg);
  return cuda_detail::bytes_for<T>(static_cast<index_t>(samples.size()), cuda_detail::ragged_n_max(samples, cfg));
}

/// Batch on the device: every layer [batch, heads, N, N]; sample b writes counts[b] ascending
/// patch indices into out.indices(b, :) (capacity max_count(n, cfg)); results (device memory,
/// optional) get the statistics. Asynchronous on policy.stream; NaN/Inf through status(policy).
template <cuda_element T>
void select(const cuda_policy& policy, const device_batch_layer_stack<T>& stack, const config& cfg,
            const selection_batch& out, std::span<result> results = {}) {
  const index_t batch = cuda_detail::check_batch(stack, cfg, out, results);
  const cuda_detail::stack_ref<T, cuda_detail::uniform_layers<T>> ref{batch, true, {&stack}};
  cuda_detail::run(policy, ref, cuda_detail::batch_n_max(stack, cfg), cfg, out, results);
}

/// Ragged batch: one stack of [heads, N_b, N_b] device views per sample.
template <cuda_element T>
void select(const cuda_policy& policy, std::span<const device_layer_stack<T>> samples, const config& cfg,
            const selection_batch& out, std::span<result> results = {}) {
  const index_t n_max = cuda_detail::check_ragged(samples, cfg, out, results);
  const cuda_detail::stack_ref<T, cuda_detail::ragged_layers<T>> ref{static_cast<index_t>(samples.size()), false,
                                                                       {samples}};
  cuda_detail::run(policy, ref, n_max, cfg, out, results);
}

/// The CPU backend's stack type (float, Eigen::half, Eigen::bfloat16 device pointers).
template <element T>
[[nodiscard]] std::size_t workspace_size(const batch_layer_stack<T>& stack, const config& cfg) {
  return workspace_size(cuda_detail::as_device(stack), cfg);
}
template <element T>
void select(const cuda_policy& policy, const batch_layer_stack<T>& stack, const config& cfg, const selection_batch& out,
            std::span<result> results = {}) {
  select(policy, cuda_detail::as_device(stack), cfg, out, results);
}

/// Workspace bytes of the single-sample select (the batch-of-1 layout plus the count slot).
template <cuda_element T>
[[nodiscard]] std::size_t workspace_size(const device_layer_stack<T>& stack, const config& cfg) {
  return tokensel::cuda_detail::single_bytes(workspace_size(tokensel::cuda_detail::one(stack), cfg));
}

/// One sample's stack of [heads, N, N] device views: the CPU's single-sample select. out (device
/// memory, >= max_count) gets the indices; *device_result (device memory, optional) the
/// statistics and the data-dependent count. Runs the batch-of-1 select.
template <cuda_element T>
void select(const cuda_policy& policy, const device_layer_stack<T>& stack, const config& cfg, std::span<token_index> out,
            result* device_result = nullptr) {
  using namespace tokensel::cuda_detail;
  const auto batch = one(stack);
  select(policy, batch, cfg, single_output(policy, workspace_size(batch, cfg), out, "freepruner"),
         single_result(device_result));
}

// ---- streaming ------------------------------------------------------------------------------

TOKENSEL_CUDA_BEGIN_DETAIL

/// The selector's workspace: the one-shot layout (its per-sample vectors carry the state across
/// add_layer calls) plus the reduced complementary map, kept when that layer arrives before P is
/// complete.
struct selector_buffers {
  buffers w;
  float* stored = nullptr;
};

inline selector_buffers selector_layout(workspace_plan& plan, index_t batch, index_t n) {
  selector_buffers s;
  s.w = layout(plan, batch, n);
  s.stored = plan.take<float>(count_of({batch, n, n}));
  return s;
}

/// The CPU selector's constructor checks (same codes and names); returns n.
inline index_t selector_patches(index_t tokens, const config& cfg, index_t batch) {
  validate(cfg);
  if (tokens < 0) tokensel::detail::fail(errc::invalid_argument, "freepruner.tokens", tokens, "must be >= 0");
  if (batch < 0) tokensel::detail::fail(errc::invalid_argument, "freepruner.batch", batch, "must be >= 0");
  const index_t n = detail::patch_range(tokens, cfg).count;
  (void)max_count(n, cfg);
  detail::check_k(n, cfg);
  return n;
}

/// What one add_layer runs (pure host; the CPU selector's dispatch), given the pivotal layers
/// added before and whether the complementary map is stored.
struct selector_step {
  bool pivotal = false;         ///< pivotal stage of this layer
  bool reduce_masked = false;   ///< complementary rows in P into the map (not last_layer: its map is complete)
  bool outlier = false;         ///< outlier stage on this call's map
  bool store_copy = false;      ///< copy this pivotal layer's map into the stored map
  bool store_reduce = false;    ///< reduce every row of this layer into the stored map
  bool outlier_stored = false;  ///< outlier stage on the stored map
};

inline selector_step plan_step(const config& cfg, index_t layer, index_t pivotal_seen, bool map_stored) {
  selector_step s;
  s.pivotal = layer >= cfg.first_layer && layer <= cfg.last_layer;
  const bool complementary = layer == cfg.complementary_layer;
  const bool p_complete = pivotal_seen + (s.pivotal ? 1 : 0) == pivotal_layers(cfg);
  if (complementary && p_complete) {
    s.reduce_masked = layer != cfg.last_layer;
    s.outlier = true;
  } else if (complementary) {
    s.store_copy = s.pivotal;
    s.store_reduce = !s.pivotal;
  } else if (p_complete && map_stored) {
    s.outlier_stored = true;
  }
  return s;
}

TOKENSEL_CUDA_END_DETAIL  // cuda_detail

/// Workspace bytes of a cuda_selector(tokens, cfg, batch) (pure host arithmetic; same checks as
/// the constructor).
[[nodiscard]] inline std::size_t selector_workspace_size(const config& cfg, index_t tokens, index_t batch = 1) {
  const index_t n = cuda_detail::selector_patches(tokens, cfg, batch);
  tokensel::cuda_detail::workspace_plan plan;
  (void)cuda_detail::selector_layout(plan, batch, n);
  // batch 1: also the count slot of the single-sample finish.
  return batch == 1 ? tokensel::cuda_detail::single_bytes(plan.bytes()) : plan.bytes();
}

/// Streaming freePruner on the device (the CPU's freepruner::selector): add_layer for each layer
/// the config reads, in any order, each exactly once, then finish. The state lives in the
/// caller's workspace (policy.workspace, selector_workspace_size bytes; the same workspace and
/// stream for every call of one image); add_layer and finish launch kernels only (no allocation,
/// no host sync: graph-capturable). Per pivotal layer: the one-shot pivotal stage (reduced map,
/// contribution degree, running max, top-k_pivotal into P). The complementary layer runs the
/// outlier stage when P is complete; before that its reduced patch map is stored in the
/// workspace and the outlier stage runs when the last pivotal layer arrives. Same selection and
/// statistics as the CPU selector and the one-shot select. Data errors via status(policy).
class cuda_selector {
 public:
  cuda_selector(index_t tokens, const config& cfg, index_t batch = 1)
      : cfg_(cfg), batch_(batch), tokens_(tokens), n_(cuda_detail::selector_patches(tokens, cfg, batch)),
        progress_(cfg) {}

  const config& settings() const noexcept { return cfg_; }
  index_t tokens() const noexcept { return tokens_; }
  index_t patches() const noexcept { return n_; }
  index_t batch() const noexcept { return batch_; }
  std::size_t workspace_size() const { return selector_workspace_size(cfg_, tokens_, batch_); }

  bool needs(index_t layer) const noexcept { return progress_.needs(layer); }
  bool complete() const noexcept { return progress_.complete(); }

  /// Adds one layer for the whole batch: attention [batch, heads, N, N] (device memory).
  template <cuda_element T>
  void add_layer(const cuda_policy& policy, index_t layer, const attention_view<T>& attention) {
    if (attention.extent(0) != batch_) {
      tokensel::detail::fail(errc::shape_mismatch, detail::layer_name(layer) + ".extent(0)", attention.extent(0),
                             "must be the selector's batch " + std::to_string(batch_));
    }
    progress_.check_addable(layer);
    if (batch_ > 0) cuda_detail::check_layer<T>(attention[0], tokens_, layer);
    add_impl<T>(policy, layer, attention);
  }

  /// Adds one layer of a single-sample selector (batch() == 1): attention [heads, N, N].
  template <cuda_element T>
  void add_layer(const cuda_policy& policy, index_t layer, const head_attention_view<T>& attention) {
    if (batch_ != 1) {
      tokensel::detail::fail(errc::shape_mismatch, "freepruner.selector.batch", batch_,
                             "a [heads, N, N] layer needs batch 1; pass [batch, heads, N, N]");
    }
    const attention_view<T> one(attention.data(), {1, attention.extent(0), attention.extent(1), attention.extent(2)},
                                {attention.extent(0) * attention.stride(0), attention.stride(0), attention.stride(1),
                                 attention.stride(2)});
    add_layer<T>(policy, layer, one);
  }

  /// Sample b writes counts[b] ascending patch indices into out.indices(b, :) (capacity
  /// max_count(n, cfg)); results (device memory, optional) get the statistics.
  void finish(const cuda_policy& policy, const selection_batch& out, std::span<result> results = {}) {
    progress_.check_finishable();
    tokensel::cuda_detail::check_outputs(out, results, batch_, "freepruner");
    if (batch_ > 0) {
      tokensel::detail::check_capacity(static_cast<std::size_t>(out.indices.extent(1)), max_count(n_, cfg_),
                                       "freepruner.out.size()");
    }
    tokensel::cuda_detail::workspace_plan plan(policy);
    const auto sb = cuda_detail::selector_layout(plan, batch_, n_);
    plan.require("freepruner");
    if (batch_ == 0) return;
    const int n = tokensel::cuda_detail::to_int(n_, "freepruner.patches");
    const auto tables = tokensel::cuda_detail::make_tables(batch_, true, 0, [n](index_t) {
      tokensel::cuda_detail::window_desc d;
      d.heads = 1;
      d.rows = n;
      d.cols = n;
      return d;
    });
    cuda_detail::assemble_stage(tables, sb.w, cfg_, out, results, policy.stream);
  }

  /// Single sample (batch() == 1): out (device memory, >= max_count(n, cfg)) gets the ascending
  /// indices; *device_result (device memory, optional) the statistics and the count.
  void finish(const cuda_policy& policy, std::span<token_index> out, result* device_result = nullptr) {
    if (batch_ != 1) {
      tokensel::detail::fail(errc::shape_mismatch, "freepruner.selector.batch", batch_,
                             "finish(span) needs batch 1; pass a selection_batch");
    }
    progress_.check_finishable();
    tokensel::cuda_detail::workspace_plan plan;
    (void)cuda_detail::selector_layout(plan, batch_, n_);
    finish(policy, tokensel::cuda_detail::single_output(policy, plan.bytes(), out, "freepruner"),
           tokensel::cuda_detail::single_result(device_result));
  }

  /// Forgets every layer added (the next add_layer starts a new image in the workspace).
  void reset() noexcept {
    progress_.reset();
    map_stored_ = false;
    started_ = false;
  }

 private:

  template <class T>
  void add_impl(const cuda_policy& policy, index_t layer, const attention_view<T>& attention) {
    using namespace tokensel::cuda_detail;
    workspace_plan plan(policy);
    const auto sb = cuda_detail::selector_layout(plan, batch_, n_);
    plan.require("freepruner");
    progress_.begin_add();  // a launch failure from here on leaves partial state behind
    const cuda_detail::selector_step step = cuda_detail::plan_step(cfg_, layer, progress_.pivotal_seen(), map_stored_);
    if (batch_ > 0) {
      using D = device_type_t<T>;
      cudaStream_t stream = policy.stream;
      const auto& w = sb.w;
      if (!started_) cuda_detail::init_state(w, batch_, n_, stream);
      const config& cfg = cfg_;
      const auto tables =
          make_tables(batch_, true, static_cast<long long>(attention.stride(0)) * static_cast<long long>(sizeof(T)),
                      [&attention, &cfg](index_t b) { return cuda_detail::patch_window(attention[b], cfg); });
      if (step.pivotal) {
        cuda_detail::pivotal_stage<D>(tables, w, cfg_, layer, progress_.pivotal_seen() == 0, layer == cfg_.last_layer, stream);
      }
      if (step.reduce_masked) cuda_detail::complementary_rows<D>(tables, w, w.map, w.in_p, cfg_, stream);
      if (step.outlier) cuda_detail::outlier_stage(tables, w, w.map, cfg_, stream);
      if (step.store_copy) {
        const std::size_t bytes = count_of({batch_, n_, n_}) * sizeof(float);
        if (bytes > 0) check(cudaMemcpyAsync(sb.stored, w.map, bytes, cudaMemcpyDeviceToDevice, stream), "cudaMemcpyAsync(map)");
      }
      // Stored unchecked: only its rows in P are checked, once P is known (as on the CPU).
      if (step.store_reduce) cuda_detail::complementary_rows<D>(tables, w, sb.stored, nullptr, cfg_, stream, false);
      if (step.outlier_stored) {
        cuda_detail::check_stored_rows(batch_, tokensel::cuda_detail::to_int(n_, "freepruner.patches"), sb.stored, w, cfg_, stream);
        cuda_detail::outlier_stage(tables, w, sb.stored, cfg_, stream);
      }
    }
    if (step.store_copy || step.store_reduce) map_stored_ = true;
    started_ = true;
    progress_.end_add(layer);
  }

  config cfg_;
  index_t batch_ = 1;
  index_t tokens_ = 0;
  index_t n_ = 0;
  detail::layer_progress progress_;
  bool map_stored_ = false;
  bool started_ = false;
};

}  // namespace freepruner
TOKENSEL_END_NAMESPACE
