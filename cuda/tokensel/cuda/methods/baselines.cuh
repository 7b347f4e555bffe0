// tokensel CUDA backend: the baselines (spec section 8) on the device, batched, with the CPU's
// results (tokensel/baselines.hpp): random (same seeded draws: splitmix64, partial Fisher-Yates),
// uniform grid (closed form), average pooling (fp32 sums in window order).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include <cub/block/block_scan.cuh>

#include "tokensel/cuda/core/abi.cuh"
#include "tokensel/methods/baselines.hpp"
#include "tokensel/core/batch.hpp"
#include "tokensel/core/config.hpp"
#include "tokensel/cuda/detail/arith.cuh"
#include "tokensel/cuda/detail/batch.cuh"
#include "tokensel/cuda/detail/launch.cuh"
#include "tokensel/cuda/detail/single.cuh"
#include "tokensel/cuda/core/element.cuh"
#include "tokensel/cuda/core/error.cuh"
#include "tokensel/cuda/core/policy.cuh"
#include "tokensel/cuda/core/workspace.cuh"

TOKENSEL_BEGIN_NAMESPACE
namespace baselines {
TOKENSEL_CUDA_BEGIN_DETAIL

using namespace tokensel::cuda_detail;

/// splitmix64 exactly as baselines::detail::splitmix64 (next, and below by rejection).
struct splitmix64 {
  std::uint64_t state;
  __host__ __device__ std::uint64_t next() {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  __host__ __device__ std::uint64_t below(std::uint64_t bound) {
    const std::uint64_t threshold = (0 - bound) % bound;
    for (;;) {
      const std::uint64_t x = next();
      if (x >= threshold) return x % bound;
    }
  }
};

using baselines::detail::spread;  // the CPU's rule (tokensel/methods/baselines.hpp), host and device

inline constexpr int block = 256;

struct random_args {
  int* perm;
  unsigned char* flag;
  long long vec;
  std::uint64_t seed;
  token_index* out;
  long long out_stride;
  token_index* counts;
  random::result* results;
};

/// One block per sample (p0 = k, cols = n): the identity permutation, k swaps by one thread (the
/// draws are sequential by definition), then the first k marked and written ascending.
template <int Dummy = 0>
__global__ void __launch_bounds__(block) random_kernel(const sample_table t, const random_args a) {
  const int s = static_cast<int>(blockIdx.x);
  if (s >= t.count) return;
  const window_desc d = t.get(s);
  const int b = t.first + s, n = d.cols, k = d.p0, tid = static_cast<int>(threadIdx.x);
  int* perm = a.perm + b * a.vec;
  unsigned char* flag = a.flag + b * a.vec;
  for (int i = tid; i < n; i += block) {
    perm[i] = i;
    flag[i] = 0;
  }
  __syncthreads();
  if (tid == 0 && k > 0) {
    splitmix64 rng{a.seed + static_cast<std::uint64_t>(b) * random::stream_step};
    for (int i = 0; i < k; ++i) {
      const int j = i + static_cast<int>(rng.below(static_cast<std::uint64_t>(n - i)));
      const int tmp = perm[i];
      perm[i] = perm[j];
      perm[j] = tmp;
    }
  }
  __syncthreads();
  for (int i = tid; i < k; i += block) flag[perm[i]] = 1;
  __syncthreads();
  using scan_t = cub::BlockScan<int, block>;
  __shared__ typename scan_t::TempStorage scratch;
  int base = 0;
  for (int i0 = 0; i0 < n; i0 += block) {
    const int i = i0 + tid;
    const int f = (i < n && flag[i] != 0) ? 1 : 0;
    int pos = 0, total = 0;
    scan_t(scratch).ExclusiveSum(f, pos, total);
    if (f != 0) a.out[b * a.out_stride + base + pos] = i;
    base += total;
    __syncthreads();
  }
  if (tid == 0) {
    a.counts[b] = k;
    if (a.results != nullptr) a.results[b].count = k;
  }
}

struct uniform_args {
  token_index* out;
  long long out_stride;
  token_index* counts;
  uniform::result* results;
};

/// One block per sample: p0 = k, p1 = kr (rows used), rows / cols of the grid in p2 / p3. Row r
/// of kr holds floor((r+1) k / kr) - floor(r k / kr) tokens starting at output position
/// floor(r k / kr) (the counts telescope).
template <int Dummy = 0>
__global__ void __launch_bounds__(block) uniform_kernel(const sample_table t, const uniform_args a) {
  const int s = static_cast<int>(blockIdx.x);
  if (s >= t.count) return;
  const window_desc d = t.get(s);
  const int b = t.first + s;
  const long long k = d.p0, kr = d.p1, rows = d.p2, cols = d.p3;
  for (long long r = threadIdx.x; r < kr; r += block) {
    const long long row = spread(r, rows, kr);
    const long long first = r * k / kr, kr_row = (r + 1) * k / kr - first;
    for (long long i = 0; i < kr_row; ++i) {
      a.out[b * a.out_stride + first + i] = static_cast<token_index>(row * cols + spread(i, cols, kr_row));
    }
  }
  if (threadIdx.x == 0) {
    a.counts[b] = static_cast<token_index>(k);
    if (a.results != nullptr) {
      a.results[b].count = k;
      a.results[b].rows_used = k == 0 ? 0 : kr;
    }
  }
}

inline window_desc uniform_desc(const token_grid& grid, const uniform::config& cfg, index_t capacity) {
  baselines::detail::check_grid_extents(grid, "uniform.grid");
  const index_t n = grid.size();
  const index_t k = uniform::keep_count(n, cfg);
  tokensel::detail::check_capacity(static_cast<std::size_t>(capacity), k, "uniform.out.size()");
  window_desc w;
  w.p0 = to_int(k, "uniform.k");
  if (k == 0) return w;
  const index_t rows = grid.rows, cols = grid.cols;
  w.p1 = to_int(baselines::detail::uniform_rows_used(k, rows, cols), "uniform.rows_used");
  w.p2 = to_int(rows, "uniform.grid.rows");
  w.p3 = to_int(cols, "uniform.grid.cols");
  return w;
}

template <class Grids>
void run_uniform(const cuda_policy& policy, index_t batch, Grids&& grid_of, const uniform::config& cfg,
                 const selection_batch& out, std::span<uniform::result> results) {
  uniform::validate(cfg);
  check_outputs(out, results, batch, "uniform");
  const index_t capacity = out.indices.extent(1);
  for (index_t b = 0; b < batch; ++b) (void)uniform_desc(grid_of(b), cfg, capacity);
  workspace_plan plan(policy);
  plan.require("uniform");
  if (batch == 0) return;
  const uniform_args a{out_rows(out), out_stride(out), out.counts.data(), results.empty() ? nullptr : results.data()};
  make_tables(batch, false, 0, [&](index_t b) { return uniform_desc(grid_of(b), cfg, capacity); })
      .each([&](const sample_table& t) {
        uniform_kernel<><<<static_cast<unsigned>(t.count), block, 0, policy.stream>>>(t, a);
        check_launch("uniform");
      });
}

struct pool_args {
  const void* src;
  long long s0, s1, s2;
  void* dst;
  long long d0, d1, d2;
  int rows, cols, w, out_rows, out_cols, d;
};

/// One thread per (output token, feature column), all samples (blockIdx.y).
template <class S, class O>
__global__ void __launch_bounds__(block) pool_kernel(const pool_args a, int first) {
  const int b = first + static_cast<int>(blockIdx.y);
  const long long e = static_cast<long long>(blockIdx.x) * block + threadIdx.x;
  const long long k = static_cast<long long>(a.out_rows) * a.out_cols;
  if (e >= k * a.d) return;
  const int o = static_cast<int>(e / a.d), c = static_cast<int>(e % a.d);
  const int r0 = (o / a.out_cols) * a.w, c0 = (o % a.out_cols) * a.w;
  const int r1 = r0 + a.w < a.rows ? r0 + a.w : a.rows, c1 = c0 + a.w < a.cols ? c0 + a.w : a.cols;
  const float cnt = static_cast<float>((r1 - r0) * (c1 - c0));
  const S* x = static_cast<const S*>(a.src) + b * a.s0 + c * a.s2;
  float s = 0.0f;
  for (int r = r0; r < r1; ++r) {
    for (int q = c0; q < c1; ++q) s = fadd(s, to_f32(x[static_cast<long long>(r * a.cols + q) * a.s1]));
  }
  static_cast<O*>(a.dst)[b * a.d0 + o * a.d1 + c * a.d2] = from_f32<O>(fdiv(s, cnt));
}

template <int Dummy = 0>
__global__ void pool_results_kernel(pool::result* results, int batch, pool::result r) {
  const int b = static_cast<int>(blockIdx.x) * block + static_cast<int>(threadIdx.x);
  if (b < batch) results[b] = r;
}

TOKENSEL_CUDA_END_DETAIL  // cuda_detail

// ---- random -------------------------------------------------------------------------------------

namespace random {

/// Workspace bytes of select(cuda_policy, n, cfg, ...) for these sample sizes.
[[nodiscard]] inline std::size_t workspace_size(std::span<const index_t> n) {
  index_t n_max = 0;
  for (const index_t v : n) n_max = v > n_max ? v : n_max;
  tokensel::cuda_detail::workspace_plan plan;
  (void)plan.take<int>(tokensel::cuda_detail::count_of({static_cast<index_t>(n.size()), n_max}));
  (void)plan.take<unsigned char>(tokensel::cuda_detail::count_of({static_cast<index_t>(n.size()), n_max}));
  return plan.bytes();
}

/// Batch: sample b has n[b] tokens (host span) and draws from stream b; the same indices as the
/// CPU backend's random::select.
inline void select(const cuda_policy& policy, std::span<const index_t> n, const config& cfg, const selection_batch& out,
                   std::span<result> results = {}) {
  using namespace baselines::cuda_detail;
  validate(cfg);
  const auto batch = static_cast<index_t>(n.size());
  check_outputs(out, results, batch, "random");
  const index_t capacity = out.indices.extent(1);
  index_t n_max = 0;
  for (index_t b = 0; b < batch; ++b) {
    const index_t k = keep_count(n[static_cast<std::size_t>(b)], cfg);
    tokensel::detail::check_capacity(static_cast<std::size_t>(capacity), k, "random.out.size()");
    n_max = n[static_cast<std::size_t>(b)] > n_max ? n[static_cast<std::size_t>(b)] : n_max;
  }
  tokensel::cuda_detail::workspace_plan plan(policy);
  int* perm = plan.take<int>(tokensel::cuda_detail::count_of({batch, n_max}));
  unsigned char* flag = plan.take<unsigned char>(tokensel::cuda_detail::count_of({batch, n_max}));
  plan.require("random");
  if (batch == 0) return;
  const random_args a{perm, flag, static_cast<long long>(n_max), cfg.seed, out_rows(out), out_stride(out),
                      out.counts.data(), results.empty() ? nullptr : results.data()};
  make_tables(batch, false, 0,
              [&](index_t b) {
                window_desc w;
                w.cols = tokensel::cuda_detail::to_int(n[static_cast<std::size_t>(b)], "random.n");
                w.p0 = static_cast<int>(keep_count(n[static_cast<std::size_t>(b)], cfg));
                return w;
              })
      .each([&](const sample_table& t) {
        random_kernel<><<<static_cast<unsigned>(t.count), block, 0, policy.stream>>>(t, a);
        check_launch("random");
      });
}

/// Workspace bytes of the single-sample select(cuda_policy, n, cfg, out, ...).
[[nodiscard]] inline std::size_t workspace_size(index_t n) {
  return tokensel::cuda_detail::single_bytes(workspace_size(std::span<const index_t>(&n, 1)));
}

/// One sample of n tokens drawing from `stream` (the CPU's single-sample select): the batch-of-1
/// call, whose sample 0 draws from seed + 0 * stream_step, with the seed moved by stream steps.
/// *device_result (device memory, optional) gets the count.
inline void select(const cuda_policy& policy, index_t n, const config& cfg, std::span<token_index> out,
                   std::uint64_t stream = 0, result* device_result = nullptr) {
  using namespace tokensel::cuda_detail;
  config moved = cfg;
  moved.seed = cfg.seed + stream * stream_step;  // wraps as the CPU's stream arithmetic does
  select(policy, one(n), moved, single_output(policy, workspace_size(one(n)), out, "random"), single_result(device_result));
}

}  // namespace random

// ---- uniform ------------------------------------------------------------------------------------

namespace uniform {

/// Workspace bytes of select(cuda_policy, ...): none beyond the status word.
[[nodiscard]] inline std::size_t workspace_size() {
  tokensel::cuda_detail::workspace_plan plan;
  return plan.bytes();
}

/// Batch of sequences (sample b has n[b] tokens, one row of a 1 x n grid).
inline void select(const cuda_policy& policy, std::span<const index_t> n, const config& cfg, const selection_batch& out,
                   std::span<result> results = {}) {
  cuda_detail::run_uniform(
      policy, static_cast<index_t>(n.size()),
      [&](index_t b) {
        const index_t v = n[static_cast<std::size_t>(b)];
        if (v < 0) tokensel::detail::fail(errc::invalid_argument, "uniform.n", v, "must be >= 0");
        return token_grid{v == 0 ? 0 : 1, v};
      },
      cfg, out, results);
}

/// Batch of grids (sample b is grids[b]).
inline void select(const cuda_policy& policy, std::span<const token_grid> grids, const config& cfg,
                   const selection_batch& out, std::span<result> results = {}) {
  cuda_detail::run_uniform(
      policy, static_cast<index_t>(grids.size()), [&](index_t b) { return grids[static_cast<std::size_t>(b)]; }, cfg, out,
      results);
}

/// Workspace bytes of the single-sample selects: the count slot after the status word.
[[nodiscard]] inline std::size_t workspace_size(index_t) { return tokensel::cuda_detail::single_bytes(workspace_size()); }
[[nodiscard]] inline std::size_t workspace_size(const token_grid&) { return tokensel::cuda_detail::single_bytes(workspace_size()); }

/// One sequence of n tokens (the CPU's single-sample select); *device_result (device memory,
/// optional) gets the count and grid.
inline void select(const cuda_policy& policy, index_t n, const config& cfg, std::span<token_index> out,
                   result* device_result = nullptr) {
  using namespace tokensel::cuda_detail;
  select(policy, one(n), cfg, single_output(policy, workspace_size(), out, "uniform"), single_result(device_result));
}

/// One grid (the CPU's single-sample select).
inline void select(const cuda_policy& policy, const token_grid& grid, const config& cfg, std::span<token_index> out,
                   result* device_result = nullptr) {
  using namespace tokensel::cuda_detail;
  select(policy, one(grid), cfg, single_output(policy, workspace_size(), out, "uniform"), single_result(device_result));
}

}  // namespace uniform

// ---- average pooling ----------------------------------------------------------------------------

namespace pool {

[[nodiscard]] inline std::size_t workspace_size() {
  tokensel::cuda_detail::workspace_plan plan;
  return plan.bytes();
}

/// Batch: features [batch, n, d] (device) on one grid; out [batch, >= keep_count, d]; results
/// (device, optional). Same values as the CPU's apply.
template <cuda_element T, cuda_element O>
void apply(const cuda_policy& policy, const tensor_view<const T, 3>& features, const token_grid& grid, const config& cfg,
           const tensor_view<O, 3>& out, std::span<result> results = {}) {
  using namespace baselines::cuda_detail;
  const index_t batch = features.extent(0);
  if (out.extent(0) != batch) tokensel::detail::fail(errc::shape_mismatch, "pool.out.extent(0)", out.extent(0), "must equal the batch size " + std::to_string(batch));
  if (!results.empty() && static_cast<index_t>(results.size()) != batch) tokensel::detail::fail(errc::shape_mismatch, "pool.results.size()", results.size(), "must be 0 or the batch size " + std::to_string(batch));
  tokensel::cuda_detail::workspace_plan plan(policy);
  if (batch == 0) {  // the CPU checks the rest per sample
    plan.require("pool");
    return;
  }
  const token_grid og = output_grid(grid, cfg);
  check_grid(grid, features.extent(1), "pool.grid");
  const index_t k = og.size(), d = features.extent(2);
  if (out.extent(1) < k) tokensel::detail::fail(errc::shape_mismatch, "pool.out.extent(0)", out.extent(1), "below the " + std::to_string(k) + " pooled tokens");
  if (out.extent(2) != d) tokensel::detail::fail(errc::shape_mismatch, "pool.out.extent(1)", out.extent(2), "must equal features.extent(1) = " + std::to_string(d));
  plan.require("pool");
  const pool_args a{features.data(), features.stride(0), features.stride(1), features.stride(2),
                    static_cast<void*>(out.data()), out.stride(0), out.stride(1), out.stride(2),
                    to_int(grid.rows, "pool.grid.rows"), to_int(grid.cols, "pool.grid.cols"), to_int(cfg.window, "pool.window"),
                    to_int(og.rows, "pool.grid.rows"), to_int(og.cols, "pool.grid.cols"), to_int(d, "pool.features.extent(2)")};
  using SD = tokensel::cuda_detail::device_type_t<T>;
  using OD = tokensel::cuda_detail::device_type_t<O>;
  if (k * d > 0) {
    for (index_t first = 0; first < batch; first += tokensel::cuda_detail::max_uniform_chunk) {
      const auto count = static_cast<unsigned>(std::min<index_t>(tokensel::cuda_detail::max_uniform_chunk, batch - first));
      pool_kernel<SD, OD><<<dim3(tokensel::cuda_detail::blocks_for(k * d, block), count), block, 0, policy.stream>>>(
          a, static_cast<int>(first));
      tokensel::cuda_detail::check_launch("pool");
    }
  }
  if (!results.empty()) {
    pool_results_kernel<><<<tokensel::cuda_detail::blocks_for(batch, block), block, 0, policy.stream>>>(
        results.data(), static_cast<int>(batch), result{k, og});
    tokensel::cuda_detail::check_launch("pool_results");
  }
}

/// One sample: features [n, d] (device) on grid, out [>= keep_count, d]; *device_result (device
/// memory, optional). The batch-of-1 apply (no count slot: pooling has no selection output).
template <cuda_element T, cuda_element O>
void apply(const cuda_policy& policy, const tensor_view<const T, 2>& features, const token_grid& grid, const config& cfg,
           const tensor_view<O, 2>& out, result* device_result = nullptr) {
  const tensor_view<const T, 3> x(features.data(), {1, features.extent(0), features.extent(1)},
                                  {0, features.stride(0), features.stride(1)});
  const tensor_view<O, 3> y(out.data(), {1, out.extent(0), out.extent(1)}, {0, out.stride(0), out.stride(1)});
  apply(policy, x, grid, cfg, y, tokensel::cuda_detail::single_result(device_result));
}

}  // namespace pool
}  // namespace baselines
TOKENSEL_END_NAMESPACE
