// tokensel: baselines for honest comparisons (spec section 8). Benchmarks of token pruning keep
// finding random selection and plain downsampling to be strong, so every method should be
// compared against them at the same budget.
//   random:  k tokens drawn uniformly without replacement (seeded; same indices on every platform)
//   uniform: k tokens evenly spaced over the token grid (or over the sequence)
//   pool:    w x w average pooling of the features on the token grid (2 x 2 by default)
// random and uniform take their budget as a ratio or a count (exactly one of the two).
#pragma once

#include <algorithm>
#include <unordered_map>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <utility>

#include "tokensel/core/batch.hpp"
#include "tokensel/core/budget.hpp"
#include "tokensel/core/config.hpp"
#include "tokensel/detail/arith.hpp"
#include "tokensel/detail/parallel.hpp"
#include "tokensel/detail/reduce.hpp"
#include "tokensel/detail/scratch.hpp"
#include "tokensel/detail/validate.hpp"
#include "tokensel/detail/widen.hpp"
#include "tokensel/core/element.hpp"
#include "tokensel/core/error.hpp"
#include "tokensel/core/policy.hpp"
#include "tokensel/core/tensor_view.hpp"
#include "tokensel/core/token_grid.hpp"
#include "tokensel/stats/head_reduction.hpp"

TOKENSEL_BEGIN_NAMESPACE
namespace baselines {

namespace detail {

/// Budget of a random / uniform config: exactly one of ratio (in (0, 1]) and count (>= 0).
inline void check_budget(const std::optional<double>& ratio, const std::optional<index_t>& count,
                         std::string_view method) {
  const std::string m(method);
  if (ratio.has_value() == count.has_value()) {
    tokensel::detail::fail(errc::invalid_argument, m + ".ratio/" + m + ".count",
                           ratio ? "both set" : "neither set", "set exactly one of ratio and count");
  }
  if (ratio) tokensel::detail::check_ratio(*ratio, m + ".ratio");
  if (count && (*count < 0 || *count > std::numeric_limits<token_index>::max())) {
    tokensel::detail::fail(errc::invalid_argument, m + ".count", *count, "must be in [0, 2147483647]");
  }
}

/// Tokens kept out of n: 0 for n = 0; max(1, floor(n * ratio)) for a ratio (as FoPru); the count
/// itself for a count, which must not exceed n.
inline index_t budget(index_t n, const std::optional<double>& ratio, const std::optional<index_t>& count,
                      std::string_view method) {
  check_budget(ratio, count, method);
  if (n < 0 || n > std::numeric_limits<token_index>::max()) {
    tokensel::detail::fail(errc::invalid_argument, std::string(method) + ".n", n, "must be in [0, 2147483647]");
  }
  if (n == 0) return 0;
  if (ratio) {
    const auto k = static_cast<index_t>(std::floor(static_cast<double>(n) * *ratio));
    return k < 1 ? 1 : k;
  }
  tokensel::detail::check_count(*count, n, std::string(method) + ".count");
  return *count;
}

/// splitmix64 (Steele, Lea, Flood 2014): a tiny generator whose output is fixed by its definition,
/// unlike the standard distributions, whose output is implementation-defined.
class splitmix64 {
 public:
  explicit splitmix64(std::uint64_t state) noexcept : state_(state) {}
  std::uint64_t next() noexcept {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  /// Uniform in [0, bound), bound >= 1: rejection of the low remainder, then modulo (unbiased).
  std::uint64_t below(std::uint64_t bound) noexcept {
    const std::uint64_t threshold = (0 - bound) % bound;  // 2^64 mod bound
    for (;;) {
      const std::uint64_t x = next();
      if (x >= threshold) return x % bound;
    }
  }

 private:
  std::uint64_t state_;
};

/// floor((2 i + 1) m / (2 k)): the centre of the i-th of k equal parts of [0, m), in exact integer
/// arithmetic.
TOKENSEL_PORTABLE_HD index_t spread(index_t i, index_t m, index_t k) noexcept {
  // 128-bit product: (2i + 1) m overflows index_t for huge grids (i < k <= m).
  return static_cast<index_t>(__extension__(static_cast<__int128>(2 * i + 1) * m) / (2 * k));
}

/// Extents of a grid argument must be >= 0.
inline void check_grid_extents(const token_grid& grid, std::string_view name) {
  if (grid.rows < 0 || grid.cols < 0) {
    tokensel::detail::fail(errc::invalid_argument, name, std::to_string(grid.rows) + "x" + std::to_string(grid.cols),
                           "extents must be >= 0");
  }
  if (grid.rows > 0 && grid.cols > std::numeric_limits<index_t>::max() / grid.rows) {
    tokensel::detail::fail(errc::invalid_argument, name, std::to_string(grid.rows) + "x" + std::to_string(grid.cols),
                           "rows x cols overflows the index type");
  }
}

/// requirements of a baseline that reads nothing from the model and keeps `keep` tokens.
inline method_requirements reads_nothing(index_t keep) {
  method_requirements r;
  r.keep = r.output_rows = keep;
  return r;
}

/// Uniform grid: rows used for k of rows x cols tokens (k >= 1): kr = round(sqrt(k rows / cols))
/// clamped to [ceil(k / cols), min(rows, k)]. Both backends size the grid with this.
inline index_t uniform_rows_used(index_t k, index_t rows, index_t cols) {
  const index_t lo = (k + cols - 1) / cols, hi = rows < k ? rows : k;
  const auto kr = static_cast<index_t>(std::llround(std::sqrt(static_cast<double>(k) * static_cast<double>(rows) /
                                                              static_cast<double>(cols))));
  return kr < lo ? lo : (kr > hi ? hi : kr);
}

/// One pooling window: rows [r0, r1) x cols [c0, c1) of the grid.
struct pool_window {
  index_t r0, r1, c0, c1;
  index_t count() const noexcept { return (r1 - r0) * (c1 - c0); }
};

#if defined(__GNUC__)
/// Channels [0, full) of one pooled token, full a multiple of 4 vectors: each chunk of 4 vectors
/// stays in registers while the window's tokens are added into it (row-major, from 0.0f: the
/// same adds as the row loop), then is divided by the count and stored into mean. One pass over
/// the window's rows, no fp32 row accumulated in memory.
template <element T>
void pool_window_chunks(const matrix_view<const T>& features, const token_grid& grid, const pool_window& win,
                        float* mean, index_t full) noexcept {
  const tokensel::detail::count_divisor divide(win.count());
  using tokensel::detail::f32_vector;
  constexpr int V = 4, W = tokensel::detail::f32_vector_width;
  for (index_t j0 = 0; j0 < full; j0 += V * W) {
    f32_vector acc[V];
TOKENSEL_UNROLL(4)
    for (int v = 0; v < V; ++v) acc[v] = f32_vector{} + 0.0f;
    for (index_t r = win.r0; r < win.r1; ++r) {
      for (index_t q = win.c0; q < win.c1; ++q) {
        const T* x = &features(grid.at(r, q), j0);
TOKENSEL_UNROLL(4)
        for (int v = 0; v < V; ++v) {
          // 512 bytes ahead along the token row, and past its end into the next token of the grid
          // row: a window's rows are 4 streams that each start on a fresh page, where the
          // hardware prefetcher starts late (f16 llava15: 58 -> 39 us).
          // (Integer arithmetic: the address may lie past the buffer, a prefetch never faults.)
          __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<std::uintptr_t>(x + v * W) + 512));
          f32_vector xv;
          tokensel::detail::load_f32(x + v * W, xv);
          acc[v] += xv;
        }
      }
    }
TOKENSEL_UNROLL(4)
    for (int v = 0; v < V; ++v) {
      const f32_vector m = divide(acc[v]);  // divided in registers: no second pass over the row
      std::memcpy(mean + j0 + v * W, &m, sizeof(f32_vector));
    }
  }
}
#endif

/// out row o = the mean of the window's feature rows: each channel sums the window's tokens
/// row-major from 0.0f in fp32, then divides by the count (detail::count_divisor).
/// Register-blocked where rows are contiguous; otherwise whole rows into an fp32 scratch row.
template <element T, class Out>
void pool_one(const matrix_view<const T>& features, const token_grid& grid, const pool_window& win, const Out& out,
              index_t o) {
  const index_t d = features.extent(1);
  tokensel::detail::scratch_scope scratch;
  auto mean = scratch.take<float>(static_cast<std::size_t>(d));
  index_t done = 0;
#if defined(__GNUC__)
  if constexpr (tokensel::detail::widens_in_registers<T>) {
    constexpr index_t chunk = 4 * tokensel::detail::f32_vector_width;
    if (features.inner_contiguous() && d >= chunk) {
      done = d - d % chunk;
      pool_window_chunks(features, grid, win, mean.data(), done);
    }
  }
#endif
  if (done < d) {  // the channels left: the same sums through a scratch row
    float* acc = mean.data() + done;
    std::fill(acc, acc + (d - done), 0.0f);
    for (index_t r = win.r0; r < win.r1; ++r) {
      for (index_t q = win.c0; q < win.c1; ++q) {
        const index_t t = grid.at(r, q);
        if (features.inner_contiguous()) {
          tokensel::detail::accumulate(&features(t, done), d - done, acc);  // widened in registers
        } else {
          for (index_t c = done; c < d; ++c) acc[c - done] += to_float(features(t, c));
        }
      }
    }
  }
  tokensel::detail::divide_by_count(mean.data() + done, d - done, win.count());
  tokensel::detail::store_row(out, o, mean.data());
}
}  // namespace detail

// ---- random ---------------------------------------------------------------------------------

namespace random {

struct config {
  std::optional<double> ratio{};   ///< keep max(1, floor(n * ratio)), ratio in (0, 1]
  std::optional<index_t> count{};  ///< or keep exactly count (<= n)
  std::uint64_t seed = 0;
};

struct [[nodiscard]] result {
  index_t count = 0;
};

inline void validate(const config& cfg) { detail::check_budget(cfg.ratio, cfg.count, "random"); }

[[nodiscard]] inline index_t keep_count(index_t n, const config& cfg) { return detail::budget(n, cfg.ratio, cfg.count, "random"); }

/// The config that keeps `b` of n tokens (a fraction is the ratio, a count the count).
[[nodiscard]] inline config with_budget(const budget& b, index_t n, config base = {}) {
  return tokensel::detail::ratio_or_count(b, n, base, "random");
}

/// random reads nothing from the model: it keeps keep_count(n) tokens.
[[nodiscard]] inline method_requirements requirements(const config& cfg, const model_shape& shape) {
  tokensel::detail::check_model_shape(shape, "random");
  return detail::reads_nothing(keep_count(shape.visual_tokens, cfg));
}

/// Stream s of a seed: splitmix64 started at seed + s * 0xD1B54A32D192ED03 (batched sample b uses
/// stream b, so a batch reproduces the single-sample calls with stream = b).
inline constexpr std::uint64_t stream_step = 0xD1B54A32D192ED03ull;

/// Writes keep_count(n) distinct indices of [0, n), ascending, drawn uniformly without
/// replacement: a partial Fisher-Yates shuffle (for i < k: swap position i with i + below(n - i)),
/// then the first k sorted.
template <cpu_policy Policy>
result select(const Policy&, index_t n, const config& cfg, std::span<token_index> out, std::uint64_t stream = 0) {
  const index_t k = keep_count(n, cfg);
  tokensel::detail::check_capacity(out.size(), k, "random.out.size()");
  result res;
  res.count = k;
  if (k == 0) return res;
  detail::splitmix64 rng(cfg.seed + stream * stream_step);
  if (n <= 4096 || k >= n / 4) {  // dense: the permutation itself (O(n) = O(k) memory here)
    tokensel::detail::scratch_scope scratch;
    auto perm = scratch.take<token_index>(static_cast<std::size_t>(n));
    for (index_t i = 0; i < n; ++i) perm[i] = static_cast<token_index>(i);
    for (index_t i = 0; i < k; ++i) {
      const auto j = i + static_cast<index_t>(rng.below(static_cast<std::uint64_t>(n - i)));
      std::swap(perm[i], perm[j]);
    }
    std::sort(perm.begin(), perm.begin() + k);
    std::copy(perm.begin(), perm.begin() + k, out.begin());
    return res;
  }
  // Sparse: the same swaps on a permutation stored as its displaced entries only (O(k) memory
  // whatever n: k of 2^31 tokens needs no 2^31-entry array). Same draws, same result.
  std::unordered_map<index_t, index_t> moved;
  moved.reserve(static_cast<std::size_t>(2 * k));
  auto at = [&](index_t p) {
    const auto it = moved.find(p);
    return it == moved.end() ? p : it->second;
  };
  for (index_t i = 0; i < k; ++i) {
    const auto j = i + static_cast<index_t>(rng.below(static_cast<std::uint64_t>(n - i)));
    const index_t vi = at(i), vj = at(j);
    moved[i] = vj;
    moved[j] = vi;
  }
  for (index_t i = 0; i < k; ++i) out[static_cast<std::size_t>(i)] = static_cast<token_index>(at(i));
  std::sort(out.begin(), out.begin() + k);
  return res;
}

/// Batch: sample b has n[b] tokens and draws from stream b.
template <cpu_policy Policy>
void select(const Policy& policy, std::span<const index_t> n, const config& cfg, const selection_batch& out,
            std::span<result> results = {}) {
  validate(cfg);
  tokensel::detail::run_batch(policy, static_cast<index_t>(n.size()), out, results, "random",
                              [&](index_t b, std::span<token_index> row) {
                                return select(tokensel::seq, n[b], cfg, row, static_cast<std::uint64_t>(b));
                              });
}

}  // namespace random

// ---- uniform grid -----------------------------------------------------------------------------

namespace uniform {

struct config {
  std::optional<double> ratio{};   ///< keep max(1, floor(n * ratio)), ratio in (0, 1]
  std::optional<index_t> count{};  ///< or keep exactly count (<= n)
};

struct [[nodiscard]] result {
  index_t count = 0;
  index_t rows_used = 0;  ///< grid rows that received tokens
};

inline void validate(const config& cfg) { detail::check_budget(cfg.ratio, cfg.count, "uniform"); }

[[nodiscard]] inline index_t keep_count(index_t n, const config& cfg) { return detail::budget(n, cfg.ratio, cfg.count, "uniform"); }

/// The config that keeps `b` of n tokens (a fraction is the ratio, a count the count).
[[nodiscard]] inline config with_budget(const budget& b, index_t n, config base = {}) {
  return tokensel::detail::ratio_or_count(b, n, base, "uniform");
}

/// uniform reads nothing from the model: it keeps keep_count(n) tokens on the patch grid.
[[nodiscard]] inline method_requirements requirements(const config& cfg, const model_shape& shape) {
  tokensel::detail::check_model_shape(shape, "uniform");
  return detail::reads_nothing(keep_count(shape.visual_tokens, cfg));
}

/// On a rows x cols grid (row-major), k tokens:
///   kr  = round(sqrt(k rows / cols)) clamped to [ceil(k / cols), min(rows, k)]  (rows used)
///   row r in [0, kr):   grid row floor((2r+1) rows / (2 kr)), holding
///                       k_r = floor((r+1) k / kr) - floor(r k / kr) tokens
///   token i in [0, k_r): column floor((2i+1) cols / (2 k_r))
/// i.e. each of kr equal bands of rows contributes its centre row, and each row's tokens sit at
/// the centres of k_r equal column bands. Indices come out ascending and distinct. On a 1 x n grid
/// (no grid given) this is floor((2i+1) n / (2k)), i in [0, k).
template <cpu_policy Policy>
result select(const Policy&, const token_grid& grid, const config& cfg, std::span<token_index> out) {
  detail::check_grid_extents(grid, "uniform.grid");
  const index_t n = grid.size();
  const index_t k = keep_count(n, cfg);
  tokensel::detail::check_capacity(out.size(), k, "uniform.out.size()");
  result res;
  if (k == 0) return res;
  const index_t rows = grid.rows, cols = grid.cols;
  const index_t kr = detail::uniform_rows_used(k, rows, cols);
  index_t written = 0;
  for (index_t r = 0; r < kr; ++r) {
    const index_t row = detail::spread(r, rows, kr);
    const index_t kr_row = (r + 1) * k / kr - r * k / kr;
    for (index_t i = 0; i < kr_row; ++i) {
      out[written++] = static_cast<token_index>(grid.at(row, detail::spread(i, cols, kr_row)));
    }
  }
  res.count = written;
  res.rows_used = kr;
  return res;
}

/// Without a grid: the tokens as one row (1 x n).
template <cpu_policy Policy>
result select(const Policy& policy, index_t n, const config& cfg, std::span<token_index> out) {
  if (n < 0) tokensel::detail::fail(errc::invalid_argument, "uniform.n", n, "must be >= 0");
  return select(policy, token_grid{n == 0 ? 0 : 1, n}, cfg, out);
}

/// Batch of sequences (sample b has n[b] tokens).
template <cpu_policy Policy>
void select(const Policy& policy, std::span<const index_t> n, const config& cfg, const selection_batch& out,
            std::span<result> results = {}) {
  validate(cfg);
  tokensel::detail::run_batch(policy, static_cast<index_t>(n.size()), out, results, "uniform",
                              [&](index_t b, std::span<token_index> row) { return select(tokensel::seq, n[b], cfg, row); });
}

/// Batch of grids (sample b is grids[b]).
template <cpu_policy Policy>
void select(const Policy& policy, std::span<const token_grid> grids, const config& cfg, const selection_batch& out,
            std::span<result> results = {}) {
  validate(cfg);
  tokensel::detail::run_batch(policy, static_cast<index_t>(grids.size()), out, results, "uniform",
                              [&](index_t b, std::span<token_index> row) { return select(tokensel::seq, grids[b], cfg, row); });
}

}  // namespace uniform

// ---- average pooling ----------------------------------------------------------------------------

namespace pool {

struct config {
  index_t window = 2;          ///< w: w x w windows with stride w
  bool partial_windows = true; ///< rows or cols not divisible by w: average the partial edge
                               ///< windows over the tokens they hold (false: throw instead)
};

struct [[nodiscard]] result {
  index_t count = 0;  ///< output tokens = grid.rows * grid.cols
  token_grid grid;    ///< output grid: ceil(rows / w) x ceil(cols / w)
};

inline void validate(const config& cfg) {
  if (cfg.window < 1) tokensel::detail::fail(errc::invalid_argument, "pool.window", cfg.window, "must be >= 1");
}

/// The pooled grid of an input grid: ceil(rows / w) x ceil(cols / w).
inline token_grid output_grid(const token_grid& grid, const config& cfg) {
  validate(cfg);
  detail::check_grid_extents(grid, "pool.grid");
  const index_t w = cfg.window;
  if (!cfg.partial_windows && (grid.rows % w != 0 || grid.cols % w != 0)) {
    tokensel::detail::fail(errc::shape_mismatch, "pool.grid",
                           std::to_string(grid.rows) + "x" + std::to_string(grid.cols),
                           "not divisible by the window " + std::to_string(w) + " (partial_windows = false)");
  }
  return {grid.rows / w + (grid.rows % w != 0), grid.cols / w + (grid.cols % w != 0)};  // ceil, no overflow
}

[[nodiscard]] inline index_t keep_count(const token_grid& grid, const config& cfg) { return output_grid(grid, cfg).size(); }

/// The config that keeps `b` of the tokens of grid: the window w whose pooled grid,
/// ceil(rows / w) x ceil(cols / w), holds exactly that many tokens. Pooling keeps only those
/// counts (all, about a quarter, a ninth, ...); any other budget is refused with the nearest ones.
[[nodiscard]] inline config with_budget(const budget& b, const token_grid& grid, config base = {}) {
  detail::check_grid_extents(grid, "pool.grid");
  const index_t n = grid.size();
  const index_t k = b.tokens(n, "pool");
  const index_t side = grid.rows > grid.cols ? grid.rows : grid.cols;
  index_t below = 0, above = n;  // nearest achievable counts around k
  for (index_t w = 1; w <= side; ++w) {
    base.window = w;
    if (!base.partial_windows && (grid.rows % w != 0 || grid.cols % w != 0)) continue;
    const index_t got = keep_count(grid, base);
    if (got == k) return base;
    if (got < k && got > below) below = got;
    if (got > k && got < above) above = got;
  }
  tokensel::detail::fail(errc::invalid_argument, "pool.budget", b.describe(),
                         "pooling " + std::to_string(grid.rows) + "x" + std::to_string(grid.cols) + " keeps " +
                             std::to_string(above) + " or " + std::to_string(below) + " tokens, not " +
                             std::to_string(k) + ": give one of those");
}

/// Pooling reads the hidden states it averages (no attention); it keeps the pooled grid.
[[nodiscard]] inline method_requirements requirements(const config& cfg, const token_grid& grid, const model_shape& shape) {
  tokensel::detail::check_model_shape(shape, "pool");
  if (grid.size() != shape.visual_tokens) {
    tokensel::detail::fail(errc::shape_mismatch, "pool.grid", std::to_string(grid.rows) + "x" + std::to_string(grid.cols),
                           "must hold the " + std::to_string(shape.visual_tokens) + " visual tokens");
  }
  method_requirements r;
  r.hidden_states = true;
  r.keep = r.output_rows = keep_count(grid, cfg);
  return r;
}

/// features [n, d] on grid (rows * cols = n, row-major) -> out [>= keep_count, d], output tokens
/// row-major over the pooled grid. Each output = (sum of the window's tokens, row-major, fp32) /
/// (number of tokens in the window). Features pass through unchecked (NaN stays NaN).
template <cpu_policy Policy, element T, element O>
result apply(const Policy& policy, const matrix_view<const T>& features, const token_grid& grid, const config& cfg,
             const matrix_view<O>& out) {
  using tokensel::detail::fail;
  const token_grid og = output_grid(grid, cfg);
  check_grid(grid, features.extent(0), "pool.grid");
  const index_t k = og.size(), d = features.extent(1), w = cfg.window;
  if (out.extent(0) < k) fail(errc::shape_mismatch, "pool.out.extent(0)", out.extent(0), "below the " + std::to_string(k) + " pooled tokens");
  if (out.extent(1) != d) fail(errc::shape_mismatch, "pool.out.extent(1)", out.extent(1), "must equal features.extent(1) = " + std::to_string(d));
  tokensel::detail::parallel_for(policy, k, tokensel::detail::bytes_of<T>(grid.size() * d), [&](index_t o) {
    const index_t r0 = og.row_of(o) * w, c0 = og.col_of(o) * w;
    const detail::pool_window win{r0, r0 + w < grid.rows ? r0 + w : grid.rows, c0, c0 + w < grid.cols ? c0 + w : grid.cols};
    detail::pool_one(features, grid, win, out, o);
  });
  return {k, og};
}

/// Batch: features [batch, n, d], every sample on the same grid; out [batch, >= keep_count, d].
template <cpu_policy Policy, element T, element O>
void apply(const Policy& policy, const feature_view<const T>& features, const token_grid& grid, const config& cfg,
           const feature_view<O>& out, std::span<result> results = {}) {
  using tokensel::detail::fail;
  const index_t batch = features.extent(0);
  if (out.extent(0) != batch) fail(errc::shape_mismatch, "pool.out.extent(0)", out.extent(0), "must equal the batch size " + std::to_string(batch));
  if (!results.empty() && static_cast<index_t>(results.size()) != batch) fail(errc::shape_mismatch, "pool.results.size()", results.size(), "must be 0 or the batch size " + std::to_string(batch));
  tokensel::detail::parallel_for(policy, batch, [&](index_t b) {
    const result r = apply(tokensel::seq, features[b], grid, cfg, out[b]);
    if (!results.empty()) results[b] = r;
  });
}

/// Ragged batch: sample b is features[b] on grids[b], pooled into out[b].
template <cpu_policy Policy, element T, element O>
void apply(const Policy& policy, std::span<const matrix_view<const T>> features, std::span<const token_grid> grids,
           const config& cfg, std::span<const matrix_view<O>> out, std::span<result> results = {}) {
  using tokensel::detail::fail;
  const auto batch = static_cast<index_t>(features.size());
  if (static_cast<index_t>(grids.size()) != batch) fail(errc::shape_mismatch, "pool.grids.size()", grids.size(), "must equal the batch size " + std::to_string(batch));
  if (static_cast<index_t>(out.size()) != batch) fail(errc::shape_mismatch, "pool.out.size()", out.size(), "must equal the batch size " + std::to_string(batch));
  if (!results.empty() && static_cast<index_t>(results.size()) != batch) fail(errc::shape_mismatch, "pool.results.size()", results.size(), "must be 0 or the batch size " + std::to_string(batch));
  tokensel::detail::parallel_for(policy, batch, [&](index_t b) {
    const result r = apply(tokensel::seq, features[b], grids[b], cfg, out[b]);
    if (!results.empty()) results[b] = r;
  });
}

}  // namespace pool
}  // namespace baselines
TOKENSEL_END_NAMESPACE
