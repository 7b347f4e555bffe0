// tokensel benchmarks: attention statistics from Q and K (what a FlashAttention engine can afford)
// against materialising the attention and reducing it, and against the attention forward itself.
//
// Shapes (one sample, fp32 inputs, single thread):
//   clip     CLIP ViT-L/14-336 layer: 577 tokens, 16 heads, d 64 (non-causal)
//   llm600   Vicuna-7B layer, LLaVA-1.5 prompt: 600 tokens, 32 heads, d 128, causal
//   llm2900  Vicuna-7B layer, LLaVA-NeXT AnyRes prompt: 2900 tokens, 32 heads, d 128, causal
// Benchmarks per shape:
//   colsums_qk          map_sums(seq, qk_source, mean, column sums): FoPru / freePruner / FitPrune
//   row_qk              reduced_rows of one query row (CLS for clip: VisionZip; the last token for
//                       the LLM: FastV)
//   materialise_reduce  materialize_attention into [H, n, n] fp32, then map_sums on the view
//   forward             softmax(Q K^T * scale) V with V [H, n, d]: a plain tiled reference forward
//                       with the same Eigen GEMMs (64-row tiles, full key range, masked)
//   forward_skip        the same, but causal tiles only multiply the visible keys (what
//                       FlashAttention does); LLM shapes only
// Each statistic's label names the forward as its "floor", so run_all.sh prints time / forward.
// Eigen runs single-threaded (setNbThreads(1)) and tokensel gets the sequential policy.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "tokensel/detail/fast_exp.hpp"
#include "tokensel/detail/reduce.hpp"
#include "tokensel/stats/qk_statistics.hpp"

namespace {

using tokensel::index_t;

struct shape {
  const char* name;
  index_t heads, n, d;
  bool causal;
};

constexpr shape clip{"clip", 16, 577, 64, false};
constexpr shape llm600{"llm600", 32, 600, 128, true};
constexpr shape llm2900{"llm2900", 32, 2900, 128, true};

struct inputs {
  std::vector<float> q, k, v;
};

// Q, K, V ~ N(0, 1), generated once per shape (never timed).
const inputs& data(const shape& s) {
  static std::map<std::string, inputs> cache;
  auto it = cache.find(s.name);
  if (it != cache.end()) return it->second;
  std::mt19937 gen(42);
  std::normal_distribution<float> dist;
  inputs x;
  const auto size = static_cast<std::size_t>(s.heads * s.n * s.d);
  for (auto* v : {&x.q, &x.k, &x.v}) {
    v->resize(size);
    for (auto& e : *v) e = dist(gen);
  }
  return cache.emplace(s.name, std::move(x)).first->second;
}

tokensel::qk_source<float> source(const shape& s) {
  const auto& x = data(s);
  return {.queries = tokensel::tensor_view<const float, 3>(x.q.data(), {s.heads, s.n, s.d}),
          .keys = tokensel::tensor_view<const float, 3>(x.k.data(), {s.heads, s.n, s.d}),
          .causal = s.causal};
}

void single_threaded() { Eigen::setNbThreads(1); }

// Multiply-adds of the two attention products (Q K^T and P V), full key range.
double forward_flops(const shape& s) { return 4.0 * static_cast<double>(s.heads) * s.n * s.n * s.d; }

void set_common(benchmark::State& state, const shape& s, double flops) {
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(std::string("floor=qk/") + s.name + "/forward/seq");
}

void colsums_qk(benchmark::State& state, const shape& s) {
  single_threaded();
  const auto src = source(s);
  std::vector<float> cols(s.n);
  for (auto _ : state) {
    tokensel::map_sums(tokensel::seq, src, tokensel::head_reduction::mean, {{}, cols, {}});
    benchmark::DoNotOptimize(cols.data());
  }
  set_common(state, s, forward_flops(s) / 2);
}

void row_qk(benchmark::State& state, const shape& s) {
  single_threaded();
  const auto src = source(s);
  std::vector<float> row(s.n);
  const index_t which[1] = {s.causal ? s.n - 1 : 0};  // last token (FastV) or CLS (VisionZip)
  const auto op = s.causal ? tokensel::head_reduction::mean : tokensel::head_reduction::sum;
  for (auto _ : state) {
    tokensel::reduced_rows(tokensel::seq, src, op, std::span<const index_t>(which),
                           tokensel::matrix_view<float>(row.data(), {1, s.n}));
    benchmark::DoNotOptimize(row.data());
  }
  set_common(state, s, 2.0 * s.heads * s.n * s.d);
}

void materialise_reduce(benchmark::State& state, const shape& s) {
  single_threaded();
  const auto src = source(s);
  std::vector<float> map(static_cast<std::size_t>(s.heads * s.n * s.n));
  std::vector<float> cols(s.n);
  const tokensel::tensor_view<float, 3> out(map.data(), {s.heads, s.n, s.n});
  for (auto _ : state) {
    tokensel::materialize_attention(tokensel::seq, src, out);
    tokensel::map_sums(tokensel::seq, tokensel::head_attention_view<float>(out), tokensel::head_reduction::mean, {{}, cols, {}});
    benchmark::DoNotOptimize(cols.data());
  }
  set_common(state, s, forward_flops(s) / 2);
  state.counters["map_MiB"] = static_cast<double>(map.size()) * 4.0 / (1 << 20);
}

// Plain reference forward: per head and 64-row tile, S = scale * Q K^T (Eigen GEMM), causal mask,
// softmax (max, fast_exp, sum), O = P V (Eigen GEMM). skip_masked limits causal tiles to the
// keys they can see.
void forward(benchmark::State& state, const shape& s, bool skip_masked) {
  single_threaded();
  using rm = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const auto& x = data(s);
  const index_t n = s.n, d = s.d, tile = 64;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  rm scores(tile, n), o(n, d);
  double flops = 0.0;
  for (auto _ : state) {
    flops = 0.0;
    for (index_t h = 0; h < s.heads; ++h) {
      Eigen::Map<const rm> q(x.q.data() + h * n * d, n, d), k(x.k.data() + h * n * d, n, d), v(x.v.data() + h * n * d, n, d);
      for (index_t r0 = 0; r0 < n; r0 += tile) {
        const index_t rows = std::min(tile, n - r0);
        const index_t keys = (s.causal && skip_masked) ? std::min(n, r0 + rows) : n;
        auto sb = scores.topLeftCorner(rows, keys);
        sb.noalias() = q.middleRows(r0, rows) * k.topRows(keys).transpose();
        for (index_t r = 0; r < rows; ++r) {
          float* row = sb.row(r).data();
          const index_t visible = s.causal ? r0 + r + 1 : keys;
          float m = -INFINITY;
          for (index_t j = 0; j < visible; ++j) m = std::max(m, row[j] *= scale);
          for (index_t j = 0; j < visible; ++j) row[j] = tokensel::detail::fast_exp(row[j] - m);
          const float inv = 1.0f / tokensel::detail::canonical_sum(row, visible);
          for (index_t j = 0; j < visible; ++j) row[j] *= inv;
          for (index_t j = visible; j < keys; ++j) row[j] = 0.0f;
        }
        o.middleRows(r0, rows).noalias() = sb * v.topRows(keys);
        flops += 4.0 * rows * keys * d;
      }
      benchmark::DoNotOptimize(o.data());
    }
  }
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void register_all() {
  for (const shape* s : {&clip, &llm600, &llm2900}) {
    const std::string base = std::string("qk/") + s->name + "/";
    benchmark::RegisterBenchmark((base + "colsums_qk/seq").c_str(), [s](benchmark::State& st) { colsums_qk(st, *s); })
        ->Unit(benchmark::kMillisecond)->UseRealTime();
    benchmark::RegisterBenchmark((base + "row_qk/seq").c_str(), [s](benchmark::State& st) { row_qk(st, *s); })
        ->Unit(benchmark::kMillisecond)->UseRealTime();
    benchmark::RegisterBenchmark((base + "materialise_reduce/seq").c_str(), [s](benchmark::State& st) { materialise_reduce(st, *s); })
        ->Unit(benchmark::kMillisecond)->UseRealTime();
    benchmark::RegisterBenchmark((base + "forward/seq").c_str(), [s](benchmark::State& st) { forward(st, *s, false); })
        ->Unit(benchmark::kMillisecond)->UseRealTime();
    if (s->causal) {
      benchmark::RegisterBenchmark((base + "forward_skip/seq").c_str(), [s](benchmark::State& st) { forward(st, *s, true); })
          ->Unit(benchmark::kMillisecond)->UseRealTime();
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
