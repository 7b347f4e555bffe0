// tokensel CUDA backend: statistics from Q/K (qk_statistics.cuh) per layer, against
// materialise-then-reduce (per-head probabilities [H, n, n] written by the same tiles, then the
// view path's map_sums) and against a plain attention forward (a simple tiled online-softmax
// P V kernel below, one warp per query row; a floor, not FlashAttention). fp16 Q/K/V, batch 1,
// CUDA-event timing. Layers: CLIP ViT-L/336 (16 heads, 577 tokens, d 64) and Vicuna-7B prefill
// (32 heads, d 128, n 600 and 2900, causal). Without a CUDA device every benchmark skips.
#include <benchmark/benchmark.h>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <random>
#include <stdexcept>
#include <vector>

#include "bench_cuda_common.cuh"
#include "tokensel/cuda/stats/map_sums.cuh"
#include "tokensel/cuda/stats/qk_statistics.cuh"

using namespace tokensel;

using tokensel_bench::device_ok;
using tokensel_bench::ok;

namespace {

struct buffer {
  void* p = nullptr;
  explicit buffer(std::size_t bytes) { ok(cudaMalloc(&p, bytes < 256 ? 256 : bytes)); }
  ~buffer() { cudaFree(p); }
  buffer(const buffer&) = delete;
  buffer& operator=(const buffer&) = delete;
};

struct layer_case {
  const char* name;
  index_t heads, n, d;
  bool causal;
};
const layer_case cases[] = {{"clip_577", 16, 577, 64, false}, {"vicuna7b_600", 32, 600, 128, true}, {"vicuna7b_2900", 32, 2900, 128, true}};

/// Q, K, V [heads, n, d] fp16 on the device.
struct layer {
  buffer q, k, v;
  layer_case c;
  explicit layer(const layer_case& lc)
      : q(bytes(lc)), k(bytes(lc)), v(bytes(lc)), c(lc) {
    std::vector<__half> h(static_cast<std::size_t>(lc.heads * lc.n * lc.d));
    std::mt19937 rng(3);
    std::normal_distribution<float> g(0.0f, 1.0f);
    for (buffer* b : {&q, &k, &v}) {
      for (auto& x : h) x = __float2half(g(rng));
      ok(cudaMemcpy(b->p, h.data(), h.size() * sizeof(__half), cudaMemcpyHostToDevice));
    }
  }
  static std::size_t bytes(const layer_case& lc) { return static_cast<std::size_t>(lc.heads * lc.n * lc.d) * sizeof(__half); }
  qk_source<Eigen::half> source() const {
    const auto* qp = static_cast<const Eigen::half*>(q.p);
    const auto* kp = static_cast<const Eigen::half*>(k.p);
    return {.queries = tensor_view<const Eigen::half, 3>(qp, {c.heads, c.n, c.d}),
            .keys = tensor_view<const Eigen::half, 3>(kp, {c.heads, c.n, c.d}), .causal = c.causal};
  }
};

/// Plain attention forward: warp per (head, query row), online softmax over keys, O = P V in fp32
/// (d <= 128: four accumulators per lane).
__global__ void forward_kernel(const __half* q, const __half* k, const __half* v, float* o, int heads, int n, int d,
                               float scale, int causal) {
  const int warp = static_cast<int>((blockIdx.x * blockDim.x + threadIdx.x) >> 5), lane = static_cast<int>(threadIdx.x & 31u);
  if (warp >= heads * n) return;
  const int h = warp / n, i = warp % n;
  const __half* qi = q + (static_cast<long long>(h) * n + i) * d;
  float qv[4], acc[4] = {0, 0, 0, 0};
  for (int u = 0; u < 4; ++u) qv[u] = lane + 32 * u < d ? __half2float(qi[lane + 32 * u]) : 0.0f;
  float m = -INFINITY, l = 0.0f;
  const int end = causal != 0 ? i + 1 : n;
  for (int j = 0; j < end; ++j) {
    const __half* kj = k + (static_cast<long long>(h) * n + j) * d;
    float s = 0.0f;
    for (int u = 0; u < 4; ++u) s += lane + 32 * u < d ? qv[u] * __half2float(kj[lane + 32 * u]) : 0.0f;
    for (int w = 16; w >= 1; w /= 2) s += __shfl_xor_sync(0xFFFFFFFFu, s, w);
    s *= scale;
    const float mn = fmaxf(m, s), a = expf(m - mn), p = expf(s - mn);
    l = l * a + p;
    const __half* vj = v + (static_cast<long long>(h) * n + j) * d;
    for (int u = 0; u < 4; ++u) acc[u] = acc[u] * a + (lane + 32 * u < d ? p * __half2float(vj[lane + 32 * u]) : 0.0f);
    m = mn;
  }
  float* oi = o + (static_cast<long long>(h) * n + i) * d;
  for (int u = 0; u < 4; ++u)
    if (lane + 32 * u < d) oi[lane + 32 * u] = acc[u] / l;
}

void bench_column_sums_qk(benchmark::State& state, layer_case c) {
  if (!device_ok(state)) return;
  const layer L(c);
  const auto src = L.source();
  buffer rs(static_cast<std::size_t>(c.n) * 4), cs(static_cast<std::size_t>(c.n) * 4);
  const map_sums_out out{{static_cast<float*>(rs.p), static_cast<std::size_t>(c.n)}, {static_cast<float*>(cs.p), static_cast<std::size_t>(c.n)}, {}};
  const std::size_t bytes = map_sums_workspace_size(src, out);
  buffer ws(bytes);
  const cuda_policy policy{nullptr, ws.p, bytes};
  state.counters["workspace_MiB"] = static_cast<double>(bytes) / 1048576.0;
  tokensel_bench::time_with_events(state, [&] { map_sums(policy, src, head_reduction::mean, out); });
}

void bench_one_row_qk(benchmark::State& state, layer_case c) {
  if (!device_ok(state)) return;
  const layer L(c);
  const auto src = L.source();
  buffer row(static_cast<std::size_t>(c.n) * 4);
  const token_range last{c.n - 1, 1};
  const std::size_t bytes = reduced_rows_workspace_size(src, last);
  buffer ws(bytes);
  const cuda_policy policy{nullptr, ws.p, bytes};
  tokensel_bench::time_with_events(state, [&] { reduced_rows(policy, src, head_reduction::mean, last, matrix_view<float>(static_cast<float*>(row.p), {1, c.n})); });
}

void bench_materialise_then_reduce(benchmark::State& state, layer_case c) {
  if (!device_ok(state)) return;
  const layer L(c);
  const auto src = L.source();
  const std::size_t map_bytes = static_cast<std::size_t>(c.heads) * c.n * c.n * 4;
  buffer map(map_bytes), rs(static_cast<std::size_t>(c.n) * 4), cs(static_cast<std::size_t>(c.n) * 4);
  const tensor_view<float, 3> probs(static_cast<float*>(map.p), {c.heads, c.n, c.n});
  const map_sums_out out{{static_cast<float*>(rs.p), static_cast<std::size_t>(c.n)}, {static_cast<float*>(cs.p), static_cast<std::size_t>(c.n)}, {}};
  const head_attention_view<float> view(probs);
  const std::size_t b1 = materialize_attention_workspace_size(src), b2 = map_sums_workspace_size(view, out);
  buffer ws1(b1), ws2(b2);
  const cuda_policy p1{nullptr, ws1.p, b1}, p2{nullptr, ws2.p, b2};
  state.counters["map_MiB"] = static_cast<double>(map_bytes) / 1048576.0;
  tokensel_bench::time_with_events(state, [&] {
    materialize_attention(p1, src, probs);
    map_sums(p2, view, head_reduction::mean, out);
  });
}

void bench_forward(benchmark::State& state, layer_case c) {
  if (!device_ok(state)) return;
  const layer L(c);
  buffer o(static_cast<std::size_t>(c.heads * c.n * c.d) * 4);
  const int warps = static_cast<int>(c.heads * c.n);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.d));
  tokensel_bench::time_with_events(state, [&] {
    forward_kernel<<<(warps + 7) / 8, 256>>>(static_cast<const __half*>(L.q.p), static_cast<const __half*>(L.k.p),
                                             static_cast<const __half*>(L.v.p), static_cast<float*>(o.p), static_cast<int>(c.heads),
                                             static_cast<int>(c.n), static_cast<int>(c.d), scale, c.causal ? 1 : 0);
    ok(cudaGetLastError());
  });
}

const bool registered = [] {
  for (const auto& c : cases) {
    const std::string n(c.name);
    benchmark::RegisterBenchmark(("qk_column_sums/" + n).c_str(), bench_column_sums_qk, c)->UseManualTime()->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(("qk_one_row/" + n).c_str(), bench_one_row_qk, c)->UseManualTime()->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(("materialise_then_reduce/" + n).c_str(), bench_materialise_then_reduce, c)->UseManualTime()->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(("attention_forward/" + n).c_str(), bench_forward, c)->UseManualTime()->Unit(benchmark::kMicrosecond);
  }
  return true;
}();

}  // namespace

BENCHMARK_MAIN();
