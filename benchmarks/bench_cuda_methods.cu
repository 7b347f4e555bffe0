// tokensel CUDA backend benchmarks (Google Benchmark, manual timing with CUDA events).
//
// Every method is timed per call on the default stream; a call processes one image (batch 1),
// 64 images, one LLaVA-NeXT image (5 views of 577 tokens) or one 8-frame clip (8 x 257 tokens),
// all fp16 (DivPrune reads the projected features, DART the LLM keys and hidden states, VisPruner
// the CLS row and the patch features instead of whole maps). Reported: time per image (per clip for video) and the bandwidth of reading the
// attention once (bytes / time), next to the floor: a device-to-device copy of the same bytes
// (cudaMemcpyAsync; it reads and writes them, so a read-only pass can beat it by up to 2x).
// Without a CUDA device every benchmark skips with the reason.
#include <benchmark/benchmark.h>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "bench_cuda_common.cuh"
#include "tokensel/cuda/methods/dart.cuh"
#include "tokensel/cuda/methods/divprune.cuh"
#include "tokensel/cuda/methods/fastv.cuh"
#include "tokensel/cuda/methods/fitprune.cuh"
#include "tokensel/cuda/methods/fopru.cuh"
#include "tokensel/cuda/methods/freepruner.cuh"
#include "tokensel/cuda/methods/prumerge.cuh"
#include "tokensel/cuda/methods/vispruner.cuh"

using namespace tokensel;

using tokensel_bench::device_ok;
using tokensel_bench::ok;

namespace {

/// Device memory freed at exit (inputs are shared between benchmarks of the same shape).
struct device_block {
  void* p = nullptr;
  std::size_t bytes = 0;
  explicit device_block(std::size_t n) : bytes(n) { ok(cudaMalloc(&p, n)); }
  ~device_block() { cudaFree(p); }
};

/// One softmax attention sample [heads, q, k] in fp16 (host generated once), replicated
/// `copies` times on the device.
std::shared_ptr<device_block> attention(index_t copies, index_t heads, index_t q, index_t k) {
  const std::size_t per = static_cast<std::size_t>(heads * q * k);
  std::vector<__half> h(per);
  std::mt19937_64 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.5f);
  std::vector<float> row(static_cast<std::size_t>(k));
  for (index_t r = 0; r < heads * q; ++r) {
    float mx = -INFINITY, sum = 0.0f;
    for (auto& x : row) mx = std::max(mx, x = normal(rng));
    for (auto& x : row) sum += (x = std::exp(x - mx));
    for (index_t j = 0; j < k; ++j) h[static_cast<std::size_t>(r * k + j)] = __float2half(row[static_cast<std::size_t>(j)] / sum);
  }
  auto block = std::make_shared<device_block>(per * copies * sizeof(__half));
  for (index_t c = 0; c < copies; ++c) {
    ok(cudaMemcpy(static_cast<__half*>(block->p) + c * per, h.data(), per * sizeof(__half), cudaMemcpyHostToDevice));
  }
  return block;
}

/// Times fn() per iteration with CUDA events; reports per-image time and GB/s of `bytes`.
template <class Fn>
void run_timed(benchmark::State& state, index_t images, std::size_t bytes, Fn&& fn) {
  const double total = tokensel_bench::time_with_events(state, fn);
  const double per_call = total / static_cast<double>(state.iterations());
  state.counters["us_per_image"] = per_call * 1e6 / static_cast<double>(images);
  state.counters["GB/s"] = static_cast<double>(bytes) / per_call / 1e9;
}

struct encoder_case {
  const char* name;
  index_t batch, heads, tokens, images;
};
const encoder_case encoder_cases[] = {
    {"llava15_b1", 1, 16, 577, 1},
    {"llava15_b64", 64, 16, 577, 64},
    {"next5", 5, 16, 577, 1},
    {"video8", 8, 16, 257, 1},
};

struct llm_case {
  const char* name;
  index_t batch, heads, prefix, visual, text, images;
  index_t tokens() const { return prefix + visual + text; }
};
const llm_case llm_cases[] = {
    {"llava15_b1", 1, 32, 35, 576, 40, 1},
    {"llava15_b64", 64, 32, 35, 576, 40, 64},
    {"next5", 1, 32, 35, 2880, 40, 1},
    {"video8", 1, 32, 35, 2048, 40, 1},
};

void floor_copy(benchmark::State& state, index_t batch, index_t heads, index_t q, index_t k, index_t images) {
  if (!device_ok(state)) return;
  const auto src = attention(batch, heads, q, k);
  device_block dst(src->bytes);
  run_timed(state, images, src->bytes, [&] { ok(cudaMemcpyAsync(dst.p, src->p, src->bytes, cudaMemcpyDeviceToDevice)); });
}

void fopru_bench(benchmark::State& state, const encoder_case c) {
  if (!device_ok(state)) return;
  const auto a = attention(c.batch, c.heads, c.tokens, c.tokens);
  const attention_view<__half> view(static_cast<const __half*>(a->p), {c.batch, c.heads, c.tokens, c.tokens});
  const fopru::config cfg{.ratio = 0.5};
  const index_t k = fopru::keep_count(c.tokens - 1, cfg);
  device_block idx(static_cast<std::size_t>(c.batch * k) * sizeof(token_index)), cnt(static_cast<std::size_t>(c.batch) * sizeof(token_index));
  device_block ws(fopru::workspace_size(view, cfg));
  const cuda_policy policy{nullptr, ws.p, ws.bytes};
  const selection_batch out{tensor_view<token_index, 2>(static_cast<token_index*>(idx.p), {c.batch, k}),
                            std::span<token_index>(static_cast<token_index*>(cnt.p), static_cast<std::size_t>(c.batch))};
  run_timed(state, c.images, a->bytes, [&] { fopru::select(policy, view, cfg, out); });
}

void freepruner_bench(benchmark::State& state, const encoder_case c) {
  if (!device_ok(state)) return;
  // One buffer stands for all 17 layers (the bytes read per layer are the same; at batch 64 a
  // layer is 680 MB, far beyond L2, so reusing it does not flatter the timing).
  const auto a = attention(c.batch, c.heads, c.tokens, c.tokens);
  const attention_view<__half> layer(static_cast<const __half*>(a->p), {c.batch, c.heads, c.tokens, c.tokens});
  const std::vector<attention_view<__half>> layers(17, layer);
  const freepruner::config cfg{};
  const freepruner::device_batch_layer_stack<__half> stack{std::span<const attention_view<__half>>(layers), 6};
  const index_t cap = freepruner::max_count(c.tokens - 1, cfg);
  device_block idx(static_cast<std::size_t>(c.batch * cap) * sizeof(token_index)), cnt(static_cast<std::size_t>(c.batch) * sizeof(token_index));
  device_block ws(freepruner::workspace_size(stack, cfg));
  const cuda_policy policy{nullptr, ws.p, ws.bytes};
  const selection_batch out{tensor_view<token_index, 2>(static_cast<token_index*>(idx.p), {c.batch, cap}),
                            std::span<token_index>(static_cast<token_index*>(cnt.p), static_cast<std::size_t>(c.batch))};
  run_timed(state, c.images, a->bytes * 17, [&] { freepruner::select(policy, stack, cfg, out); });
}

/// `per` normal fp16 values (host generated once, scaled by `sd`), replicated `copies` times.
std::shared_ptr<device_block> normal_halves(index_t copies, index_t per, float sd, unsigned seed) {
  std::vector<__half> h(static_cast<std::size_t>(per));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, sd);
  for (auto& x : h) x = __float2half(normal(rng));
  auto block = std::make_shared<device_block>(std::max<std::size_t>(static_cast<std::size_t>(per * copies) * sizeof(__half), 1));
  for (index_t c = 0; c < copies; ++c) {
    ok(cudaMemcpy(static_cast<__half*>(block->p) + c * per, h.data(), static_cast<std::size_t>(per) * sizeof(__half), cudaMemcpyHostToDevice));
  }
  return block;
}

/// PruMerge(+) from the last CLIP layer's CLS query and keys (one 1024-wide head) with the merge
/// of 1024-wide features (fp16 in, fp16 out). Bytes: the keys and features read once.
void prumerge_bench(benchmark::State& state, const encoder_case c, bool plus) {
  if (!device_ok(state)) return;
  const index_t D = 1024, d = 1024, n = c.tokens - 1;
  const auto q = normal_halves(c.batch, D, 1.0f, 11), k = normal_halves(c.batch, c.tokens * D, 1.0f, 12),
             x = normal_halves(c.batch, n * d, 1.0f, 13);
  const tensor_view<const __half, 3> qv(static_cast<const __half*>(q->p), {c.batch, 1, D});
  const tensor_view<const __half, 3> kv(static_cast<const __half*>(k->p), {c.batch, c.tokens, D});
  const tensor_view<const __half, 3> xv(static_cast<const __half*>(x->p), {c.batch, n, d});
  const prumerge::config cfg{.plus = plus};
  const index_t cap = prumerge::max_count(n, cfg), rows = prumerge::max_rows(n, cfg);
  device_block idx(static_cast<std::size_t>(c.batch * cap) * sizeof(token_index)), cnt(static_cast<std::size_t>(c.batch) * sizeof(token_index));
  device_block merged(static_cast<std::size_t>(c.batch * rows * d) * sizeof(__half));
  device_block ws(prumerge::workspace_size(qv, kv, xv, cfg));
  const cuda_policy policy{nullptr, ws.p, ws.bytes};
  const selection_batch out{tensor_view<token_index, 2>(static_cast<token_index*>(idx.p), {c.batch, cap}),
                            std::span<token_index>(static_cast<token_index*>(cnt.p), static_cast<std::size_t>(c.batch))};
  const tensor_view<__half, 3> mv(static_cast<__half*>(merged.p), {c.batch, rows, d});
  run_timed(state, c.images, k->bytes + x->bytes, [&] { prumerge::select(policy, qv, kv, xv, cfg, out, mv); });
}

void fastv_bench(benchmark::State& state, const llm_case c) {
  if (!device_ok(state)) return;
  const index_t L = c.tokens();
  const auto a = attention(c.batch, c.heads, L, L);
  const attention_view<__half> view(static_cast<const __half*>(a->p), {c.batch, c.heads, L, L});
  const token_range visual{c.prefix, c.visual};
  const fastv::config cfg{};
  const index_t k = fastv::keep_count(c.visual, cfg);
  device_block idx(static_cast<std::size_t>(c.batch * k) * sizeof(token_index)), cnt(static_cast<std::size_t>(c.batch) * sizeof(token_index));
  device_block ws(fastv::workspace_size(view, visual, cfg));
  const cuda_policy policy{nullptr, ws.p, ws.bytes};
  const selection_batch out{tensor_view<token_index, 2>(static_cast<token_index*>(idx.p), {c.batch, k}),
                            std::span<token_index>(static_cast<token_index*>(cnt.p), static_cast<std::size_t>(c.batch))};
  // FastV reads only the last query row over the visual columns.
  const std::size_t bytes = static_cast<std::size_t>(c.batch * c.heads * c.visual) * sizeof(__half);
  run_timed(state, c.images, bytes, [&] { fastv::select(policy, view, visual, cfg, out); });
}

void fitprune_bench(benchmark::State& state, const llm_case c) {
  if (!device_ok(state)) return;
  const index_t L = c.tokens();
  const auto a = attention(c.batch, c.heads, L, L);
  const attention_view<__half> view(static_cast<const __half*>(a->p), {c.batch, c.heads, L, L});
  const token_range visual{c.prefix, c.visual};
  const index_t drop = c.visual / 4;
  device_block idx(static_cast<std::size_t>(c.batch * (c.visual - drop)) * sizeof(token_index)), cnt(static_cast<std::size_t>(c.batch) * sizeof(token_index));
  device_block ws(fitprune::workspace_size(view, visual, drop));
  const cuda_policy policy{nullptr, ws.p, ws.bytes};
  const selection_batch out{tensor_view<token_index, 2>(static_cast<token_index*>(idx.p), {c.batch, c.visual - drop}),
                            std::span<token_index>(static_cast<token_index*>(cnt.p), static_cast<std::size_t>(c.batch))};
  // Rows s0 .. L-1 over the visual columns.
  const std::size_t bytes = static_cast<std::size_t>(c.batch * c.heads * (L - c.prefix) * c.visual) * sizeof(__half);
  run_timed(state, c.images, bytes, [&] { fitprune::prune_layer(policy, view, visual, drop, fitprune::config{}, out); });
}

/// Device selection outputs [batch, k] and their selection_batch.
struct selection_buffers {
  device_block idx, cnt;
  selection_batch out;
  selection_buffers(index_t batch, index_t k)
      : idx(static_cast<std::size_t>(batch * k) * sizeof(token_index)), cnt(static_cast<std::size_t>(batch) * sizeof(token_index)),
        out{tensor_view<token_index, 2>(static_cast<token_index*>(idx.p), {batch, k}),
            std::span<token_index>(static_cast<token_index*>(cnt.p), static_cast<std::size_t>(batch))} {}
};

/// DivPrune on the projected image features (LLaVA: 576 or 2880 rows of 4096, fp16), default ratio
/// 0.098. Bytes: the features read once.
void divprune_bench(benchmark::State& state, index_t batch, index_t n, index_t images) {
  if (!device_ok(state)) return;
  const index_t D = 4096;
  const auto x = normal_halves(batch, n * D, 1.0f, 21);
  const feature_view<const __half> view(static_cast<const __half*>(x->p), {batch, n, D});
  const divprune::config cfg{};
  selection_buffers sel(batch, divprune::keep_count(n, cfg));
  device_block ws(divprune::workspace_size(view, cfg));
  const cuda_policy policy{nullptr, ws.p, ws.bytes};
  run_timed(state, images, x->bytes, [&] { divprune::select(policy, view, cfg, sel.out); });
}

/// DART at the end of LLM layer K-1 (Vicuna-7B: 32 heads x 128, D = 4096; fp16 keys, hidden and
/// norm weight), default ratio 0.222, 4 + 4 pivots. Bytes: the keys and hidden states read once.
void dart_bench(benchmark::State& state, const llm_case c) {
  if (!device_ok(state)) return;
  const index_t L = c.tokens(), H = 32, dh = 128, D = 4096;
  const auto k = normal_halves(c.batch, H * L * dh, 1.0f, 22), h = normal_halves(c.batch, L * D, 1.0f, 23), w = normal_halves(1, D, 0.5f, 24);
  const tensor_view<const __half, 4> kv(static_cast<const __half*>(k->p), {c.batch, H, L, dh});
  const feature_view<const __half> hv(static_cast<const __half*>(h->p), {c.batch, L, D});
  const vector_view<const __half> wv(static_cast<const __half*>(w->p), {D});
  const token_range visual{c.prefix, c.visual};
  const dart::config cfg{};
  selection_buffers sel(c.batch, dart::keep_count(c.visual, cfg));
  device_block ws(dart::workspace_size(kv, hv, visual, cfg));
  const cuda_policy policy{nullptr, ws.p, ws.bytes};
  run_timed(state, c.images, k->bytes + h->bytes, [&] { dart::select(policy, kv, hv, wv, visual, cfg, sel.out); });
}

/// VisPruner from the feature layer's CLS row [B, 16, 1, 577] and the patch features [B, 576, 1024]
/// (fp16), the paper's 64 tokens. Bytes: the CLS row and the features read once.
void vispruner_bench(benchmark::State& state, const encoder_case c) {
  if (!device_ok(state)) return;
  const index_t D = 1024, n = c.tokens - 1;
  const auto a = attention(c.batch, c.heads, 1, c.tokens);
  const auto x = normal_halves(c.batch, n * D, 1.0f, 25);
  const attention_view<__half> av(static_cast<const __half*>(a->p), {c.batch, c.heads, 1, c.tokens});
  const feature_view<const __half> xv(static_cast<const __half*>(x->p), {c.batch, n, D});
  const vispruner::config cfg{};
  selection_buffers sel(c.batch, vispruner::keep_count(n, cfg));
  device_block ws(vispruner::workspace_size(av, xv, cfg));
  const cuda_policy policy{nullptr, ws.p, ws.bytes};
  run_timed(state, c.images, a->bytes + x->bytes, [&] { vispruner::select(policy, av, xv, cfg, sel.out); });
}

const int registered = [] {
  for (const auto& c : encoder_cases) {
    benchmark::RegisterBenchmark((std::string("cuda_floor_copy/encoder/") + c.name).c_str(),
                                 [c](benchmark::State& s) { floor_copy(s, c.batch, c.heads, c.tokens, c.tokens, c.images); })
        ->UseManualTime()->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark((std::string("cuda_fopru/f16/") + c.name).c_str(), [c](benchmark::State& s) { fopru_bench(s, c); })
        ->UseManualTime()->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark((std::string("cuda_freepruner/f16/") + c.name).c_str(), [c](benchmark::State& s) { freepruner_bench(s, c); })
        ->UseManualTime()->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark((std::string("cuda_prumerge/f16/") + c.name).c_str(), [c](benchmark::State& s) { prumerge_bench(s, c, false); })
        ->UseManualTime()->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark((std::string("cuda_prumerge_plus/f16/") + c.name).c_str(), [c](benchmark::State& s) { prumerge_bench(s, c, true); })
        ->UseManualTime()->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark((std::string("cuda_vispruner/f16/") + c.name).c_str(), [c](benchmark::State& s) { vispruner_bench(s, c); })
        ->UseManualTime()->Unit(benchmark::kMicrosecond);
  }
  // DivPrune: one LLaVA-1.5 image (576 tokens), 8 of them, one LLaVA-NeXT image (2880 tokens).
  for (const auto& [name, batch, n, images] : {std::tuple<const char*, index_t, index_t, index_t>{"llava15_b1", 1, 576, 1},
                                               {"llava15_b8", 8, 576, 8}, {"next5", 1, 2880, 1}}) {
    benchmark::RegisterBenchmark((std::string("cuda_divprune/f16/") + name).c_str(),
                                 [batch, n, images](benchmark::State& s) { divprune_bench(s, batch, n, images); })
        ->UseManualTime()->Unit(benchmark::kMicrosecond);
  }
  for (const auto& c : llm_cases) {
    benchmark::RegisterBenchmark((std::string("cuda_floor_copy/llm/") + c.name).c_str(),
                                 [c](benchmark::State& s) { floor_copy(s, c.batch, c.heads, c.tokens(), c.tokens(), c.images); })
        ->UseManualTime()->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark((std::string("cuda_fastv/f16/") + c.name).c_str(), [c](benchmark::State& s) { fastv_bench(s, c); })
        ->UseManualTime()->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark((std::string("cuda_fitprune/f16/") + c.name).c_str(), [c](benchmark::State& s) { fitprune_bench(s, c); })
        ->UseManualTime()->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark((std::string("cuda_dart/f16/") + c.name).c_str(), [c](benchmark::State& s) { dart_bench(s, c); })
        ->UseManualTime()->Unit(benchmark::kMicrosecond);
  }
  return 0;
}();

}  // namespace

BENCHMARK_MAIN();
