// tokensel benchmarks: synthetic inputs and the "floor" every method is compared with.
//
// Inputs are generated once per shape and kept in a static cache, so generation is never timed.
// Attention is a real softmax over random logits with the structure CLIP ViT-L attention has:
// a strong CLS column, a few "attention sink" patches that most queries look at (the high-norm
// tokens of large ViTs), a mild diagonal, and otherwise diffuse rows. fp16 inputs are the fp32
// values rounded to Eigen::half (round to nearest even).
//
// The floor of a benchmark is one single-threaded pass that sums the same bytes the method has to
// read, in the same element type (fp16 is widened with F16C's vcvtph2ps when the build targets it,
// so the floor is the cost of streaming the bytes, not of a scalar conversion). Each method
// benchmark names its floor in its label ("floor=<benchmark name>"); run_all.sh divides the two.
#pragma once

#include <benchmark/benchmark.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <map>
#include <mutex>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#define TOKENSEL_BENCH_F16C 1
#endif

#include "tokensel/core/element.hpp"
#include "tokensel/core/policy.hpp"
#include "tokensel/core/tensor_view.hpp"
#include "tokensel/detail/scratch.hpp"

#include <malloc.h>  // malloc_usable_size (glibc): the heap counter below sizes frees with it

namespace bench {

using tokensel::index_t;
using tokensel::token_index;
using f16 = Eigen::half;
using bf16 = Eigen::bfloat16;

// ---- shapes ---------------------------------------------------------------------------------

/// A batch of CLIP encoder attention maps: samples x [heads, tokens, tokens].
struct encoder_shape {
  const char* name;
  index_t samples;
  index_t heads;
  index_t tokens;  ///< includes the CLS token at index 0
  index_t grid;    ///< patches = grid * grid = tokens - 1
};

/// LLaVA-1.5: one 336px image, CLIP ViT-L/14-336: CLS + 24x24 patches, 16 heads.
inline constexpr encoder_shape llava15{"llava15", 1, 16, 577, 24};
/// LLaVA-NeXT AnyRes 2x2: base view + 4 crops, each CLS + 24x24 (one image = 5 views).
inline constexpr encoder_shape next5{"next5", 5, 16, 577, 24};
/// Video: 8 frames, each CLS + 16x16 patches (224px frames at patch 14). We keep the CLS token so
/// that CLS-based methods run unchanged; one call = one clip.
inline constexpr encoder_shape video8{"video8", 8, 16, 257, 16};

inline constexpr encoder_shape encoder_shapes[] = {llava15, next5, video8};

/// Vicuna-7B prefill: 32 heads, sequence = prefix + visual + text (visual span [prefix, prefix+visual)).
struct llm_shape {
  const char* name;
  index_t heads = 32;
  index_t prefix = 35;
  index_t visual = 576;
  index_t text = 40;
  index_t tokens() const { return prefix + visual + text; }
};
inline constexpr llm_shape vicuna_llava15{"llava15", 32, 35, 576, 40};
inline constexpr llm_shape vicuna_next5{"next5", 32, 35, 2880, 40};
inline constexpr llm_shape vicuna_video8{"video8", 32, 35, 2048, 40};

template <class T>
const char* dtype() {
  return tokensel::element_name<T>();
}

// ---- generation -----------------------------------------------------------------------------

namespace detail {

/// splitmix64 + Box-Muller: fast enough to generate the 17-layer freePruner inputs in seconds.
class normal_rng {
 public:
  explicit normal_rng(std::uint64_t seed) : state_(seed) {}
  std::uint64_t bits() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return (static_cast<double>(bits() >> 11) + 0.5) * 0x1.0p-53; }  // (0, 1)
  index_t below(index_t n) { return static_cast<index_t>(bits() % static_cast<std::uint64_t>(n)); }
  double normal(double sigma) {
    if (has_spare_) {
      has_spare_ = false;
      return sigma * spare_;
    }
    const double r = std::sqrt(-2.0 * std::log(uniform())), t = 6.283185307179586 * uniform();
    spare_ = r * std::sin(t);
    has_spare_ = true;
    return sigma * r * std::cos(t);
  }

 private:
  std::uint64_t state_;
  double spare_ = 0;
  bool has_spare_ = false;
};

/// Softmax over logits[0, n) into out (computed in double, stored as T).
template <class T>
void softmax_row(const std::vector<double>& logits, index_t n, T* out) {
  double mx = logits[0];
  for (index_t j = 1; j < n; ++j) mx = std::max(mx, logits[j]);
  double s = 0;
  thread_local std::vector<double> e;
  e.resize(static_cast<std::size_t>(n));
  for (index_t j = 0; j < n; ++j) s += (e[j] = std::exp(logits[j] - mx));
  for (index_t j = 0; j < n; ++j) out[j] = tokensel::from_float<T>(static_cast<float>(e[j] / s));
}

template <class T, class Key, class Make>
const std::vector<T>& cached(const Key& key, Make&& make) {
  // Locked: the 2-thread floors call this from two benchmark threads at once (entries are never
  // erased, so a returned reference stays valid).
  static std::mutex lock;
  const std::lock_guard<std::mutex> guard(lock);
  static std::map<Key, std::vector<T>> cache;
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, make()).first;
  return it->second;
}

}  // namespace detail

/// fp32 encoder attention, contiguous [samples, heads, tokens, tokens], seeded by (shape, layer).
inline const std::vector<float>& encoder_attention_f32(const encoder_shape& s, int layer) {
  const auto key = std::make_tuple('e', s.samples, s.heads, s.tokens, layer);
  return detail::cached<float>(key, [&] {
    const index_t n = s.tokens;
    std::vector<float> a(static_cast<std::size_t>(s.samples * s.heads * n * n));
    std::vector<double> logits(static_cast<std::size_t>(n));
    for (index_t b = 0; b < s.samples; ++b) {
      detail::normal_rng rng(0x70CE5E1ull + 1000003ull * static_cast<std::uint64_t>(layer) + 7919ull * b);
      // A few sink patches per sample, shared by all heads (as in large ViTs).
      index_t sinks[4];
      for (auto& k : sinks) k = 1 + rng.below(n - 1);
      // Key salience shared by every query and head (some patches matter to the whole image), so
      // rows are correlated as in real attention and per-row outliers overlap.
      std::vector<double> salience(static_cast<std::size_t>(n));
      for (auto& v : salience) v = rng.normal(1.0);
      for (index_t h = 0; h < s.heads; ++h) {
        const double cls_boost = 4.0 + 0.25 * static_cast<double>(h % 8);
        const double sink_boost = (h % 3 == 0) ? 2.0 : 6.5;
        for (index_t i = 0; i < n; ++i) {
          for (index_t j = 0; j < n; ++j) logits[j] = salience[j] + rng.normal(1.1);
          logits[0] += cls_boost;
          for (index_t k : sinks) logits[k] += sink_boost;
          logits[i] += 1.0;
          detail::softmax_row(logits, n, a.data() + ((b * s.heads + h) * n + i) * n);
        }
      }
    }
    return a;
  });
}

/// Encoder attention in element type T (fp16 = the fp32 values rounded).
template <class T>
const std::vector<T>& encoder_attention(const encoder_shape& s, int layer = 22) {
  if constexpr (std::is_same_v<T, float>) {
    return encoder_attention_f32(s, layer);
  } else {
    const auto key = std::make_tuple('e', s.samples, s.heads, s.tokens, layer);
    return detail::cached<T>(key, [&] {
      const auto& f = encoder_attention_f32(s, layer);
      std::vector<T> out(f.size());
      for (std::size_t i = 0; i < f.size(); ++i) out[i] = tokensel::from_float<T>(f[i]);
      return out;
    });
  }
}

/// Gaussian values (features, keys, Q/K projections), seeded by (count, seed).
template <class T>
const std::vector<T>& gaussian(index_t count, int seed, double sigma = 1.0) {
  const auto key = std::make_tuple(count, seed, sigma);
  return detail::cached<T>(key, [&] {
    detail::normal_rng rng(0xFEA7ull + static_cast<std::uint64_t>(seed));
    std::vector<T> v(static_cast<std::size_t>(count));
    for (auto& x : v) x = tokensel::from_float<T>(static_cast<float>(rng.normal(sigma)));
    return v;
  });
}

namespace detail {
/// One causal softmax row i of a synthetic LLM layer: a BOS sink, a recency bias, and a few
/// salient visual tokens most queries look at.
template <class T>
void llm_row(const llm_shape& s, const index_t* salient, index_t i, normal_rng& rng, std::vector<double>& logits, T* out) {
  const index_t n = i + 1;
  for (index_t j = 0; j < n; ++j) logits[j] = rng.normal(1.5);
  logits[0] += 5.0;
  if (i > 0) logits[i - 1] += 1.0;
  logits[i] += 1.0;
  for (index_t k = 0; k < 16; ++k) {
    if (salient[k] < n) logits[salient[k]] += 2.5;
  }
  softmax_row(logits, n, out);
}
}  // namespace detail

/// fp32 causal prefill attention of an LLM layer, contiguous [heads, L, L] (zeros above the
/// diagonal).
inline const std::vector<float>& llm_attention_f32(const llm_shape& s, int layer) {
  const auto key = std::make_tuple('l', s.heads, s.prefix, s.visual * 1000003 + s.text, layer);
  return detail::cached<float>(key, [&] {
    const index_t L = s.tokens();
    std::vector<float> a(static_cast<std::size_t>(s.heads * L * L), 0.0f);
    std::vector<double> logits(static_cast<std::size_t>(L));
    detail::normal_rng rng(0x11Aull + static_cast<std::uint64_t>(layer));
    index_t salient[16];
    for (auto& k : salient) k = s.prefix + rng.below(s.visual);
    for (index_t h = 0; h < s.heads; ++h) {
      for (index_t i = 0; i < L; ++i) detail::llm_row(s, salient, i, rng, logits, a.data() + (h * L + i) * L);
    }
    return a;
  });
}

template <class T>
const std::vector<T>& llm_attention(const llm_shape& s, int layer) {
  if constexpr (std::is_same_v<T, float>) {
    return llm_attention_f32(s, layer);
  } else {
    const auto key = std::make_tuple('l', s.heads, s.prefix, s.visual * 1000003 + s.text, layer);
    return detail::cached<T>(key, [&] {
      const auto& f = llm_attention_f32(s, layer);
      std::vector<T> out(f.size());
      for (std::size_t i = 0; i < f.size(); ++i) out[i] = tokensel::from_float<T>(f[i]);
      return out;
    });
  }
}

/// Only the last query row of every head, contiguous [heads, 1, L] (what FastV reads; under
/// FlashAttention an engine computes exactly this row from Q and K).
template <class T>
const std::vector<T>& llm_last_rows(const llm_shape& s, int layer) {
  const auto key = std::make_tuple('r', s.heads, s.prefix, s.visual * 1000003 + s.text, layer);
  return detail::cached<T>(key, [&] {
    const index_t L = s.tokens();
    std::vector<T> a(static_cast<std::size_t>(s.heads * L));
    std::vector<double> logits(static_cast<std::size_t>(L));
    detail::normal_rng rng(0x12Aull + static_cast<std::uint64_t>(layer));
    index_t salient[16];
    for (auto& k : salient) k = s.prefix + rng.below(s.visual);
    for (index_t h = 0; h < s.heads; ++h) detail::llm_row(s, salient, L - 1, rng, logits, a.data() + h * L);
    return a;
  });
}

// ---- the floor --------------------------------------------------------------------------------

/// One pass over x[0, n): a sum with independent partial sums (so the adds never limit the pass).
inline float stream_sum_all(const float* x, index_t n) {
  float lane[32] = {};
  index_t i = 0;
  for (const index_t full = n - n % 32; i < full; i += 32) {
    for (int l = 0; l < 32; ++l) lane[l] += x[i + l];
  }
  for (; i < n; ++i) lane[0] += x[i];
  float s = 0;
  for (float v : lane) s += v;
  return s;
}

/// Same for fp16: vcvtph2ps (8 at a time) when available, else the library's scalar widening.
inline float stream_sum_all(const f16* x, index_t n) {
  index_t i = 0;
  float s = 0;
#if defined(TOKENSEL_BENCH_F16C)
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  const auto* p = reinterpret_cast<const unsigned short*>(x);
  for (const index_t full = n - n % 32; i < full; i += 32) {
    a0 = _mm256_add_ps(a0, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i))));
    a1 = _mm256_add_ps(a1, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i + 8))));
    a2 = _mm256_add_ps(a2, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i + 16))));
    a3 = _mm256_add_ps(a3, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i + 24))));
  }
  alignas(32) float t[8];
  _mm256_store_ps(t, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (float v : t) s += v;
#endif
  float lane[32] = {};
  for (const index_t full = n - n % 32; i < full; i += 32) {
    for (int l = 0; l < 32; ++l) lane[l] += tokensel::to_float(x[i + l]);
  }
  for (; i < n; ++i) lane[0] += tokensel::to_float(x[i]);
  for (float v : lane) s += v;
  return s;
}

/// Same for bf16: the upper half of an fp32, so widening is a shift (vectorised with AVX2).
inline float stream_sum_all(const bf16* x, index_t n) {
  index_t i = 0;
  float s = 0;
#if defined(__AVX2__)
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  const auto* p = reinterpret_cast<const unsigned short*>(x);
  const auto w = [p](index_t j) {
    const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + j)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
  };
  for (const index_t full = n - n % 32; i < full; i += 32) {
    a0 = _mm256_add_ps(a0, w(i));
    a1 = _mm256_add_ps(a1, w(i + 8));
    a2 = _mm256_add_ps(a2, w(i + 16));
    a3 = _mm256_add_ps(a3, w(i + 24));
  }
  alignas(32) float t[8];
  _mm256_store_ps(t, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (float v : t) s += v;
#endif
  for (; i < n; ++i) s += tokensel::to_float(x[i]);
  return s;
}

/// The part of a floor pass this thread streams: the whole pass for the 1-thread floors; half of
/// it (rows or elements) on each thread of a "<floor>/2threads" benchmark (see add()).
struct floor_part {
  int index = 0, parts = 1;
};
inline thread_local floor_part this_part{};

/// [begin, end) of this thread's part of n units.
inline std::pair<index_t, index_t> part_range(index_t n) {
  const auto p = static_cast<index_t>(this_part.index), parts = static_cast<index_t>(this_part.parts);
  return {n * p / parts, n * (p + 1) / parts};
}

/// One pass over this thread's part of x[0, n) (all of it outside a 2-thread floor).
template <class T>
float stream_sum(const T* x, index_t n) {
  const auto [b, e] = part_range(n);
  return stream_sum_all(x + b, e - b);
}

/// Writes this thread's part of out[0, n) with the bits of v: the store stream of a method that
/// writes a result (with write-allocate, each line is read before it is written).
template <class T>
void stream_fill(T* out, index_t n, float v) {
  const auto [b, e] = part_range(n);
  if constexpr (sizeof(T) == 2) {
    const T x = static_cast<T>(v);
    std::uint16_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    auto* p = reinterpret_cast<std::uint16_t*>(out);
    std::fill(p + b, p + e, bits);
  } else {
    std::fill(out + b, out + e, static_cast<T>(v));
  }
  benchmark::ClobberMemory();
}

/// The floor written the obvious portable way (scalar to_float for fp16), for reference.
template <class T>
float stream_sum_scalar(const T* x, index_t n) {
  float lane[32] = {};
  index_t i = 0;
  for (const index_t full = n - n % 32; i < full; i += 32) {
    for (int l = 0; l < 32; ++l) lane[l] += tokensel::to_float(x[i + l]);
  }
  for (; i < n; ++i) lane[0] += tokensel::to_float(x[i]);
  float s = 0;
  for (float v : lane) s += v;
  return s;
}

/// One pass over `rows` contiguous runs of `cols` elements, `stride` apart.
template <class T>
float stream_sum_rows(const T* base, index_t rows, index_t stride, index_t cols) {
  float s = 0;
  const auto [r0, r1] = part_range(rows);
  for (index_t r = r0; r < r1; ++r) s += stream_sum_all(base + r * stride, cols);
  return s;
}

// ---- registration -------------------------------------------------------------------------

/// Registers a benchmark timed in wall-clock microseconds (threaded policies included), with the
/// bytes its floor streams per iteration and the name of that floor (empty for a floor itself).
/// `items` = images, views or frames handled per iteration (items_per_second).
/// A floor ("floor/...") also gets "<name>/2threads": the same pass split in halves over two
/// benchmark threads at once (Google Benchmark's Threads(2)), i.e. the machine's 2-thread
/// streaming speed on the same bytes, which bounds every threaded policy. Google Benchmark
/// divides the wall time by the iterations of both threads, and an iteration here is half a
/// pass, so the reported time is half the wall time of one pass: readers multiply it by the
/// thread count (report_page.py's pass_time_2threads).
template <class Body>
benchmark::internal::Benchmark* add(const std::string& name, const std::string& floor, std::int64_t bytes,
                                    std::int64_t items, Body body) {
  if (floor.empty() && name.rfind("floor/", 0) == 0) {
    benchmark::RegisterBenchmark((name + "/2threads").c_str(),
                                 [=](benchmark::State& state) {
                                   this_part = {state.thread_index(), state.threads()};
                                   body(state);
                                   this_part = {};
                                   state.SetBytesProcessed(state.iterations() * bytes / state.threads());  // this thread's half: GB/s sums the two
                                 })
        ->Threads(2)
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
  }
  return benchmark::RegisterBenchmark(name.c_str(),
                                      [=](benchmark::State& state) {
                                        body(state);
                                        state.SetBytesProcessed(state.iterations() * bytes);
                                        state.SetItemsProcessed(state.iterations() * items);
                                        if (!floor.empty()) state.SetLabel("floor=" + floor);
                                      })
      ->UseRealTime()
      ->Unit(benchmark::kMicrosecond);
}

/// "floor/<dtype>/<shape>": one pass over a whole encoder batch of attention maps.
template <class T>
std::string encoder_floor_name(const encoder_shape& s) {
  return std::string("floor/") + dtype<T>() + "/" + s.name;
}

template <class T>
std::int64_t encoder_bytes(const encoder_shape& s) {
  return static_cast<std::int64_t>(s.samples * s.heads * s.tokens * s.tokens) * static_cast<std::int64_t>(sizeof(T));
}

/// Registers the floor of an encoder shape (and the scalar-conversion variant for reference).
template <class T>
void add_encoder_floor(const encoder_shape& s) {
  const index_t count = s.samples * s.heads * s.tokens * s.tokens;
  add(encoder_floor_name<T>(s), "", encoder_bytes<T>(s), s.samples, [s, count](benchmark::State& state) {
    const T* a = encoder_attention<T>(s).data();
    for (auto _ : state) benchmark::DoNotOptimize(stream_sum(a, count));
  });
  if constexpr (!std::is_same_v<T, float>) {
    add(std::string("floor_scalar/") + dtype<T>() + "/" + s.name, encoder_floor_name<T>(s), encoder_bytes<T>(s),
        s.samples, [s, count](benchmark::State& state) {
          const T* a = encoder_attention<T>(s).data();
          for (auto _ : state) benchmark::DoNotOptimize(stream_sum_scalar(a, count));
        });
  }
}

/// View of sample b of an encoder batch as [heads, tokens, tokens].
template <class T>
tokensel::head_attention_view<T> encoder_view(const std::vector<T>& a, const encoder_shape& s, index_t b) {
  return {a.data() + b * s.heads * s.tokens * s.tokens, {s.heads, s.tokens, s.tokens}};
}

/// The whole batch as [samples, heads, tokens, tokens].
template <class T>
tokensel::attention_view<T> encoder_batch_view(const std::vector<T>& a, const encoder_shape& s) {
  return {a.data(), {s.samples, s.heads, s.tokens, s.tokens}};
}

inline const char* policy_name(const tokensel::sequential_policy&) { return "seq"; }
inline const char* policy_name(const tokensel::threaded_policy&) { return "par"; }

}  // namespace bench

// ---- peak heap of one call (TOKENSEL_BENCH_MEMORY=1) --------------------------------------------
//
// With TOKENSEL_BENCH_MEMORY=1 every executable registers a Google Benchmark MemoryManager: after
// timing, each benchmark runs up to 16 more iterations while the global operator new/delete (replaced
// by TOKENSEL_BENCH_MAIN) count live heap bytes, and the JSON gets `max_bytes_used` (peak live bytes
// above the start) and `allocs_per_iter`. The library's per-thread scratch arenas keep their blocks
// between calls, so Start() empties them first (calling thread and the OpenMP pool): the peak then
// includes the workspace a first call grows, not only what a warm call allocates (nothing). It also
// includes the output buffers a benchmark body allocates before its timing loop (indices, merged rows).
namespace bench::memory {

struct counters {
  std::atomic<bool> on{false};
  std::atomic<std::int64_t> live{0}, peak{0}, allocs{0}, total{0};
};
inline constinit counters stats{};

inline void on_alloc(void* p) {
  if (!stats.on.load(std::memory_order_relaxed)) return;
  const auto n = static_cast<std::int64_t>(malloc_usable_size(p));
  const std::int64_t now = stats.live.fetch_add(n, std::memory_order_relaxed) + n;
  std::int64_t peak = stats.peak.load(std::memory_order_relaxed);
  while (now > peak && !stats.peak.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
  }
  stats.allocs.fetch_add(1, std::memory_order_relaxed);
  stats.total.fetch_add(n, std::memory_order_relaxed);
}

/// Counts and frees. Not inlined: GCC would otherwise see free() on a pointer from operator new in
/// every caller and warn (-Wmismatched-new-delete), not knowing that new is the malloc above.
[[gnu::noinline]] inline void release(void* p) noexcept {
  if (p != nullptr && stats.on.load(std::memory_order_relaxed)) {
    stats.live.fetch_sub(static_cast<std::int64_t>(malloc_usable_size(p)), std::memory_order_relaxed);
  }
  std::free(p);
}

class manager final : public benchmark::MemoryManager {
 public:
  void Start() override {
    stats.on.store(false);
    tokensel::detail::thread_scratch() = tokensel::detail::scratch_arena{};
#if defined(_OPENMP)
#pragma omp parallel
    tokensel::detail::thread_scratch() = tokensel::detail::scratch_arena{};
#endif
    stats.live = 0;
    stats.peak = 0;
    stats.allocs = 0;
    stats.total = 0;
    stats.on.store(true);
  }
  void Stop(Result* r) override { Stop(*r); }
  void Stop(Result& r) override {
    stats.on.store(false);
    r.num_allocs = stats.allocs;
    r.max_bytes_used = stats.peak;
    r.total_allocated_bytes = stats.total;
    r.net_heap_growth = stats.live;
  }
};

/// Registers the manager when TOKENSEL_BENCH_MEMORY=1 (the timing runs are the same either way).
inline void register_if_requested() {
  const char* v = std::getenv("TOKENSEL_BENCH_MEMORY");
  if (v != nullptr && std::string(v) == "1") {
    static manager m;
    benchmark::RegisterMemoryManager(&m);
  }
}

}  // namespace bench::memory

/// The replaceable global allocation functions, counting for bench::memory (defined once per
/// executable, by TOKENSEL_BENCH_MAIN; the new[] / nothrow forms forward to these by default).
#define TOKENSEL_BENCH_COUNTING_NEW                                                                 \
  void* operator new(std::size_t n) {                                                               \
    void* p = std::malloc(n != 0 ? n : 1);                                                          \
    if (p == nullptr) throw std::bad_alloc();                                                       \
    bench::memory::on_alloc(p);                                                                     \
    return p;                                                                                       \
  }                                                                                                 \
  void* operator new(std::size_t n, std::align_val_t a) {                                           \
    void* p = nullptr;                                                                              \
    const std::size_t al = static_cast<std::size_t>(a) < sizeof(void*) ? sizeof(void*) : static_cast<std::size_t>(a); \
    if (posix_memalign(&p, al, n != 0 ? n : 1) != 0) throw std::bad_alloc();                        \
    bench::memory::on_alloc(p);                                                                     \
    return p;                                                                                       \
  }                                                                                                 \
  void operator delete(void* p) noexcept { bench::memory::release(p); }                             \
  void operator delete(void* p, std::size_t) noexcept { operator delete(p); }                       \
  void operator delete(void* p, std::align_val_t) noexcept { operator delete(p); }                  \
  void operator delete(void* p, std::size_t, std::align_val_t) noexcept { operator delete(p); }

/// main() for every benchmark executable: registers, then runs with the usual flags.
#define TOKENSEL_BENCH_MAIN(register_fn)                       \
  TOKENSEL_BENCH_COUNTING_NEW                                  \
  int main(int argc, char** argv) {                            \
    register_fn();                                             \
    bench::memory::register_if_requested();                    \
    benchmark::Initialize(&argc, argv);                        \
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) {  \
      return 1;                                                \
    }                                                          \
    benchmark::RunSpecifiedBenchmarks();                       \
    benchmark::Shutdown();                                     \
    return 0;                                                  \
  }
