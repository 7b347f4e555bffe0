// LLaVA runtime: LLM prefill time with token selection on the generated "llava-small" checkpoint
// (tools/llava/make_llava_small.py; directory in $TOKENSEL_LLAVA_SMALL, skipped when unset).
//
// Each benchmark runs the whole pipeline (CLIP, selection, projector, LLM prefill) 3 times and
// reports the LLM prefill time as its manual time; after each run the unpruned LLM prefill runs
// on the same prompt, so both see the same machine load (the machine may be shared). Counters:
//   kept        visual tokens in the LLM (fastv/fitprune: that reach the last layer)
//   ideal       FLOPs of the unpruned LLM prefill / FLOPs of this one (linear layers, causal
//               Q K^T and P V over the rows each layer processes, lm_head row)
//   speedup     min unpruned prefill / min prefill over the iterations
//   of_ideal    speedup / ideal
//   sel_frac    selection time / prefill time (encoder-side: between CLIP and the projector;
//               fastv/fitprune: the time in their prefill hooks, excluded from the prefill time)
//   sel_ms, prefill_ms (min), base_ms (min unpruned), vision_ms (mean)
//   cpu_speedup, cpu_of_ideal  the same from process CPU time (all threads; run with
//               OMP_WAIT_POLICY=PASSIVE): the work saved, insensitive to other processes
// Run: TOKENSEL_LLAVA_SMALL=/tmp/llava-small build/examples/llava/bench_llava
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <utility>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "llava/pipeline.hpp"

namespace {

struct fixture {
  std::unique_ptr<llava::llava_model> model;
  std::vector<float> pixels;
  std::vector<std::int32_t> ids;
  std::vector<float> baseline_embeddings;  // the unpruned LLM input [L, hidden]
  std::vector<std::int32_t> baseline_positions;
  double baseline_flops = 0;
};

/// FLOPs of the LLM prefill: the rows each layer processes, causal attention (row i: i + 1 keys).
double prefill_flops(const llava::llava_config& c, std::int64_t length, const std::vector<std::int64_t>& layer_rows) {
  const double d = c.text.hidden, hd = c.text.head_dim, H = c.text.heads, qd = H * hd, kd = c.text.kv_heads * hd;
  const double m = c.text.intermediate;
  double total = 2.0 * d * c.text.vocab;  // lm_head, last row
  double in = static_cast<double>(length);
  for (auto out_rows : layer_rows) {
    const double out = static_cast<double>(out_rows);
    total += 2.0 * in * d * (qd + 2 * kd) + 4.0 * H * hd * in * (in + 1) / 2;  // Q, K, V; causal Q K^T, P V
    total += 2.0 * out * qd * d + 6.0 * out * d * m;                             // o_proj; gate, up, down
    in = out;
  }
  return total;
}

fixture& get() {
  static fixture f = [] {
    fixture x;
    const char* dir = std::getenv("TOKENSEL_LLAVA_SMALL");
    x.model = std::make_unique<llava::llava_model>(dir);
    const auto& cfg = x.model->config();
    const auto& v = cfg.vision;
    const int S = v.image_size;
    // A deterministic structured image (normalised range): smooth gradients plus a blob, so the
    // attention maps are not flat.
    x.pixels.resize(static_cast<std::size_t>(3) * S * S);
    for (int c = 0; c < 3; ++c)
      for (int y = 0; y < S; ++y)
        for (int xx = 0; xx < S; ++xx) {
          const double u = static_cast<double>(xx) / S, w = static_cast<double>(y) / S;
          const double blob = std::exp(-40 * ((u - 0.3) * (u - 0.3) + (w - 0.6) * (w - 0.6)));
          x.pixels[(static_cast<std::size_t>(c) * S + y) * S + xx] =
              static_cast<float>(1.5 * std::sin(6 * u * (c + 1)) * std::cos(5 * w) + 2.0 * blob - 0.3 * c);
        }
    // The golden prompt of the tiny checkpoints: "USER: <image>\nWhat is in the picture? ASSISTANT:".
    const int img = cfg.image_token_index;
    x.ids = {1, 374, 963, 937, img, 13, 975, 316, 382, 391, 272, 493, 969, 376, 963};
    // The unpruned LLM input, built once: prefix embeddings, projected patches, text embeddings.
    const std::int64_t n = cfg.image_tokens(), D = v.hidden, Dt = cfg.text.hidden, s0 = 4;
    const std::int64_t L = static_cast<std::int64_t>(x.ids.size()) - 1 + n;
    x.baseline_embeddings.resize(static_cast<std::size_t>(L * Dt));
    const auto co = x.model->vision().encode(x.pixels.data());
    x.model->language().embed({x.ids.data(), static_cast<std::size_t>(s0)}, x.baseline_embeddings.data());
    x.model->mm_projector().forward(co.features.data() + D, n, x.baseline_embeddings.data() + s0 * Dt);
    x.model->language().embed({x.ids.data() + s0 + 1, x.ids.size() - s0 - 1}, x.baseline_embeddings.data() + (s0 + n) * Dt);
    x.baseline_positions.resize(static_cast<std::size_t>(L));
    for (std::int64_t i = 0; i < L; ++i) x.baseline_positions[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(i);
    std::vector<std::int64_t> rows(static_cast<std::size_t>(cfg.text.layers), L);
    x.baseline_flops = prefill_flops(cfg, L, rows);
    return x;
  }();
  return f;
}

double cpu_ms() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) * 1e-6;
}

/// One unpruned LLM prefill: {wall ms, process CPU ms}.
std::pair<double, double> baseline_prefill(const fixture& f) {
  auto cache = f.model->language().make_cache(static_cast<std::int64_t>(f.baseline_positions.size()));
  const double c0 = cpu_ms();
  const auto t0 = std::chrono::steady_clock::now();
  benchmark::DoNotOptimize(f.model->language().prefill(f.baseline_embeddings.data(), f.baseline_positions, cache));
  return {std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count(), cpu_ms() - c0};
}

void run(benchmark::State& state, const std::string& method, const std::string& keep) {
  auto& f = get();
  llava::selection_options s;
  s.name = llava::parse_method(method);
  if (!keep.empty()) s.keep = llava::keep_spec::parse(keep);
  llava::run_result r;
  double prefill = 0, selection = 0, vision = 0, best = 1e300, base_best = 1e300, cpu = 1e300, base_cpu = 1e300;
  std::int64_t iters = 0;
  for (auto _ : state) {
    r = f.model->prefill(f.pixels.data(), f.ids, s);
    state.SetIterationTime(r.time.prefill / 1000.0);
    prefill += r.time.prefill;
    selection += r.time.selection;
    vision += r.time.vision;
    best = std::min(best, r.time.prefill);
    // The unpruned prefill right after, so both see the same machine load.
    cpu = std::min(cpu, r.time.prefill_cpu);
    const auto [bw, bc] = baseline_prefill(f);
    base_best = std::min(base_best, bw);
    base_cpu = std::min(base_cpu, bc);
    ++iters;
  }
  prefill /= static_cast<double>(iters);
  selection /= static_cast<double>(iters);
  vision /= static_cast<double>(iters);
  const double ideal = f.baseline_flops / prefill_flops(f.model->config(), r.sequence_length, r.layer_rows);
  const double speedup = base_best / best;
  state.counters["kept"] = static_cast<double>(r.kept_tokens);
  state.counters["ideal"] = ideal;
  state.counters["speedup"] = speedup;
  state.counters["of_ideal"] = speedup / ideal;
  state.counters["sel_frac"] = selection / prefill;
  state.counters["sel_ms"] = selection;
  state.counters["prefill_ms"] = best;
  state.counters["base_ms"] = base_best;
  state.counters["vision_ms"] = vision;
  state.counters["cpu_speedup"] = base_cpu / cpu;  // work ratio (process CPU time)
  state.counters["cpu_of_ideal"] = base_cpu / cpu / ideal;
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (std::getenv("TOKENSEL_LLAVA_SMALL") == nullptr) {
    std::fprintf(stderr,
                 "bench_llava: set TOKENSEL_LLAVA_SMALL to a llava-small directory "
                 "(python3 tools/llava/make_llava_small.py DIR); nothing to run\n");
    return 0;
  }
  struct item {
    const char* method;
    std::vector<std::string> keeps;
  };
  const std::vector<item> items = {
      {"none", {""}},
      {"fopru", {"1.0", "0.5", "0.25"}},
      {"freepruner", {"1.0", "0.5", "0.25", ""}},  // "" = adaptive
      {"prumerge", {""}},                          // adaptive only
      {"prumerge+", {""}},
      {"visionzip", {"1.0", "0.5", "0.25"}},
      {"random", {"1.0", "0.5", "0.25"}},
      {"uniform", {"1.0", "0.5", "0.25"}},
      {"pool", {"1.0", "0.25"}},                   // windows 1x1 and 2x2
      {"fastv", {"1.0", "0.5", "0.25"}},
      {"fitprune", {"1.0", "0.5", "0.25"}},
  };
  for (const auto& it : items)
    for (const auto& k : it.keeps) {
      const std::string name = std::string("prefill/") + it.method + "/" + (k.empty() ? "adaptive" : k);
      benchmark::RegisterBenchmark(name.c_str(), [m = std::string(it.method), k](benchmark::State& s) { run(s, m, k); })
          ->UseManualTime()
          ->Unit(benchmark::kMillisecond)
          ->Iterations(3);
    }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
