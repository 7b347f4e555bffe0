// CUDA backend: FoPru. Parity with the CPU backend (same indices, counts, axis and variances, bit
// for bit) on random inputs of every dtype, layout, tie pattern and batch shape; host-side
// validation (runs without a GPU); NaN reporting; CUDA-graph capture.
#include "cuda_test_util.cuh"

#include <span>
#include <vector>

#include "tokensel/cuda/methods/fopru.cuh"
#include "tokensel/methods/fopru.hpp"

using namespace tokensel;
using namespace tokensel_test;

namespace {

/// One random FoPru problem: a config and the per-sample token counts of its batch.
struct problem {
  fopru::config cfg;
  index_t heads = 1;
  std::vector<index_t> tokens;  // per sample (all equal when uniform)
  bool uniform = true;
  layout lay = layout::contiguous;
  values kind = values::softmax;
};

problem random_problem(std::mt19937_64& rng, int id) {
  problem p;
  auto pick = [&](index_t lo, index_t hi) { return std::uniform_int_distribution<index_t>(lo, hi)(rng); };
  p.cfg.strategy = pick(0, 9) < 7 ? fopru::strategy::rank : fopru::strategy::row;
  p.cfg.skip_cls = pick(0, 4) != 0;
  p.cfg.heads = static_cast<head_reduction>(pick(0, 2));
  p.cfg.row_score = pick(0, 1) == 0 ? row_reduction::sum : row_reduction::mean;
  const int r = static_cast<int>(pick(0, 9));
  p.cfg.ratio = r == 0 ? 1.0 : (r == 1 ? 0.001 : std::uniform_real_distribution<double>(0.01, 1.0)(rng));
  p.heads = pick(1, 16);
  p.uniform = pick(0, 1) == 0;
  p.lay = static_cast<layout>(pick(0, 2));
  p.kind = static_cast<values>(pick(0, 3));
  const index_t batch = p.uniform ? pick(1, 3) : pick(1, 5);
  const index_t cls = p.cfg.skip_cls ? 1 : 0;
  index_t fixed_n = -1;
  if (p.cfg.strategy == fopru::strategy::row && pick(0, 2) == 0) {
    const index_t rows = pick(1, 9), cols = pick(1, 9);
    p.cfg.grid = token_grid{rows, cols};
    fixed_n = rows * cols;
  }
  if (p.uniform) fixed_n = fixed_n >= 0 ? fixed_n : -2;
  index_t shared_n = -1;
  for (index_t b = 0; b < batch; ++b) {
    index_t n;
    if (fixed_n >= 0) {
      n = fixed_n;
    } else if (fixed_n == -2 && shared_n >= 0) {
      n = shared_n;
    } else if (p.cfg.strategy == fopru::strategy::row) {
      const index_t side = pick(1, 12);
      n = side * side;
    } else {
      const int size_class = static_cast<int>(pick(0, 19));
      n = size_class == 0 ? 0 : (size_class == 1 ? 576 : (size_class < 8 ? pick(1, 40) : pick(1, 300)));
    }
    shared_n = n;
    if (n == 0 && cls == 0) n = 1;
    p.tokens.push_back(n + cls);
  }
  (void)id;
  return p;
}

template <class E, bool Native>
void check_problem(const problem& p, std::mt19937_64& rng, const std::string& label) {
  using D = device_t<E, Native>;
  const auto B = static_cast<index_t>(p.tokens.size());
  const index_t H = p.heads;
  // Host data and device copies: one [B, H, N, N] array when uniform, else one per sample.
  std::vector<std::vector<E>> host;
  std::vector<device_buffer<E>> dev;
  std::vector<layout_info> lays;
  const index_t samples = p.uniform ? 1 : B;
  for (index_t s = 0; s < samples; ++s) {
    const index_t N = p.tokens[static_cast<std::size_t>(s)];
    const index_t bb = p.uniform ? B : 1;
    const layout_info li = make_layout(p.lay, bb, H, N, N);
    std::vector<E> h(li.elements, to_storage<E>(0.0f));
    fill_attention(h, li, bb, H, N, N, p.kind, rng);
    host.push_back(std::move(h));
    dev.push_back(to_device(host.back()));
    lays.push_back(li);
  }
  auto host_view = [&](index_t b) -> head_attention_view<E> {
    const index_t N = p.tokens[static_cast<std::size_t>(b)];
    const auto& li = lays[p.uniform ? 0 : static_cast<std::size_t>(b)];
    const E* base = host[p.uniform ? 0 : static_cast<std::size_t>(b)].data() + (p.uniform ? b * li.strides[0] : 0);
    return head_attention_view<E>(base, {H, N, N}, {li.strides[1], li.strides[2], li.strides[3]});
  };
  // CPU reference.
  index_t capacity = 0;
  for (index_t b = 0; b < B; ++b) {
    const index_t n = p.tokens[static_cast<std::size_t>(b)] - (p.cfg.skip_cls ? 1 : 0);
    capacity = std::max(capacity, fopru::keep_count(n, p.cfg));
  }
  capacity += 2;
  std::vector<std::vector<token_index>> want(static_cast<std::size_t>(B));
  std::vector<fopru::result> want_res(static_cast<std::size_t>(B));
  for (index_t b = 0; b < B; ++b) {
    std::vector<token_index> o(static_cast<std::size_t>(capacity));
    want_res[static_cast<std::size_t>(b)] = fopru::select(seq, host_view(b), p.cfg, std::span<token_index>(o));
    o.resize(static_cast<std::size_t>(want_res[static_cast<std::size_t>(b)].count));
    want[static_cast<std::size_t>(b)] = o;
  }
  // CUDA.
  device_buffer<token_index> d_idx(static_cast<std::size_t>(B * capacity)), d_cnt(static_cast<std::size_t>(B));
  device_buffer<fopru::result> d_res(static_cast<std::size_t>(B));
  d_idx.fill_bytes(0xFF);
  const selection_batch out{tensor_view<token_index, 2>(d_idx.data(), {B, capacity}),
                            std::span<token_index>(d_cnt.data(), static_cast<std::size_t>(B))};
  const std::span<fopru::result> res(d_res.data(), static_cast<std::size_t>(B));
  if (p.uniform) {
    const auto& li = lays[0];
    const index_t N = p.tokens[0];
    const attention_view<D> view(reinterpret_cast<const D*>(dev[0].data()), {B, H, N, N}, li.strides);
    workspace ws(fopru::workspace_size(view, p.cfg));
    fopru::select(ws.policy, view, p.cfg, out, res);
    cuda_ok(cudaDeviceSynchronize(), "sync");
    const cuda_status st = status(ws.policy);
    ASSERT_TRUE(st.ok) << label << ": " << st.message;
  } else {
    std::vector<head_attention_view<D>> views;
    for (index_t b = 0; b < B; ++b) {
      const index_t N = p.tokens[static_cast<std::size_t>(b)];
      const auto& li = lays[static_cast<std::size_t>(b)];
      views.emplace_back(reinterpret_cast<const D*>(dev[static_cast<std::size_t>(b)].data()), std::array<index_t, 3>{H, N, N},
                         std::array<index_t, 3>{li.strides[1], li.strides[2], li.strides[3]});
    }
    const std::span<const head_attention_view<D>> span(views);
    workspace ws(fopru::workspace_size(span, p.cfg));
    fopru::select(ws.policy, span, p.cfg, out, res);
    cuda_ok(cudaDeviceSynchronize(), "sync");
    const cuda_status st = status(ws.policy);
    ASSERT_TRUE(st.ok) << label << ": " << st.message;
  }
  const auto idx = d_idx.download();
  const auto cnt = d_cnt.download();
  const auto got_res = d_res.download();
  for (index_t b = 0; b < B; ++b) {
    const auto& w = want[static_cast<std::size_t>(b)];
    const auto& wr = want_res[static_cast<std::size_t>(b)];
    const auto& gr = got_res[static_cast<std::size_t>(b)];
    ASSERT_EQ(cnt[static_cast<std::size_t>(b)], static_cast<token_index>(w.size())) << label << " sample " << b;
    const std::vector<token_index> got(idx.begin() + b * capacity, idx.begin() + b * capacity + static_cast<index_t>(w.size()));
    ASSERT_EQ(got, w) << label << " sample " << b;
    EXPECT_EQ(gr.count, wr.count) << label;
    EXPECT_EQ(gr.axis, wr.axis) << label;
    EXPECT_EQ(gr.row_variance, wr.row_variance) << label;
    EXPECT_EQ(gr.column_variance, wr.column_variance) << label;
    EXPECT_EQ(gr.rows_kept, wr.rows_kept) << label;
  }
}

template <class E, bool Native>
void parity_run(int cases, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (int c = 0; c < parity_cases(cases); ++c) {
    parity_case(c);
    const problem p = random_problem(rng, c);
    const std::string label = std::string(element_name<E>()) + (Native ? "" : "(eigen)") + " case " + std::to_string(c);
    check_problem<E, Native>(p, rng, label);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

}  // namespace

TEST(CudaFopru, ParityFloat) {
  TOKENSEL_REQUIRE_DEVICE();
  parity_run<float, true>(400, 11);
}
TEST(CudaFopru, ParityHalf) {
  TOKENSEL_REQUIRE_DEVICE();
  parity_run<Eigen::half, true>(350, 12);
  parity_run<Eigen::half, false>(50, 13);
}
TEST(CudaFopru, ParityBfloat16) {
  TOKENSEL_REQUIRE_DEVICE();
  parity_run<Eigen::bfloat16, true>(350, 14);
  parity_run<Eigen::bfloat16, false>(50, 15);
}

TEST(CudaFopru, ParityLlavaShapes) {
  TOKENSEL_REQUIRE_DEVICE();
  std::mt19937_64 rng(21);
  for (const auto strategy : {fopru::strategy::rank, fopru::strategy::row}) {
    problem p;
    p.cfg.strategy = strategy;
    p.heads = 16;
    p.tokens = {577, 577};
    check_problem<Eigen::half, true>(p, rng, "llava-1.5 batch 2");
    problem q = p;
    q.uniform = false;
    q.tokens = {577, 577, 577, 577, 577};  // LLaVA-NeXT: base view + 4 crops
    check_problem<Eigen::bfloat16, true>(q, rng, "llava-next 5 views");
  }
}

// ---- host-side validation: throws before anything is enqueued (runs without a GPU) -----------

namespace {
struct fake_call {
  index_t B = 2, H = 4, N = 10;
  attention_view<__half> view{fake_device_pointer<const __half>(), {2, 4, 10, 10}};
  token_index* idx = fake_device_pointer<token_index>();
  selection_batch out{tensor_view<token_index, 2>(fake_device_pointer<token_index>(), {2, 9}),
                      std::span<token_index>(fake_device_pointer<token_index>(), 2)};
};
}  // namespace

TEST(CudaFopru, HostValidation) {
  fake_call f;
  const fopru::config cfg{};
  const std::size_t need = fopru::workspace_size(f.view, cfg);
  EXPECT_GT(need, 0u);
  cuda_policy policy{nullptr, fake_device_pointer<void>(), need};
  try {
    fopru::select(policy, f.view, fopru::config{.ratio = 1.5}, f.out);
    FAIL() << "no throw";
  } catch (const error& e) {
    EXPECT_EQ(e.code(), errc::invalid_argument);
    EXPECT_EQ(e.parameter(), "fopru.ratio");
  }
  try {
    const attention_view<__half> bad(fake_device_pointer<const __half>(), {2, 4, 10, 9});
    fopru::select(policy, bad, cfg, f.out);
    FAIL() << "no throw";
  } catch (const error& e) {
    EXPECT_EQ(e.code(), errc::shape_mismatch);
    EXPECT_EQ(e.parameter(), "fopru.attention");
  }
  try {
    const selection_batch small{tensor_view<token_index, 2>(f.idx, {2, 3}), f.out.counts};
    fopru::select(policy, f.view, cfg, small);
    FAIL() << "no throw";
  } catch (const error& e) {
    EXPECT_EQ(e.code(), errc::shape_mismatch);
    EXPECT_EQ(e.parameter(), "fopru.out.size()");
  }
  try {
    const selection_batch wrong{tensor_view<token_index, 2>(f.idx, {3, 9}), f.out.counts};
    fopru::select(policy, f.view, cfg, wrong);
    FAIL() << "no throw";
  } catch (const error& e) {
    EXPECT_EQ(e.parameter(), "fopru.out.indices.extent(0)");
  }
  try {
    fopru::select(cuda_policy{nullptr, fake_device_pointer<void>(), need - 1}, f.view, cfg, f.out);
    FAIL() << "no throw";
  } catch (const error& e) {
    EXPECT_EQ(e.code(), errc::invalid_argument);
    EXPECT_EQ(e.parameter(), "fopru.policy.workspace_bytes");
  }
  try {
    fopru::select(cuda_policy{nullptr, nullptr, need}, f.view, cfg, f.out);
    FAIL() << "no throw";
  } catch (const error& e) {
    EXPECT_EQ(e.parameter(), "fopru.policy.workspace");
  }
  try {  // row strategy: 9 patches fit 3x3, a 2x5 grid does not
    fopru::select(policy, f.view, fopru::config{.strategy = fopru::strategy::row, .grid = token_grid{2, 5}}, f.out);
    FAIL() << "no throw";
  } catch (const error& e) {
    EXPECT_EQ(e.code(), errc::shape_mismatch);
    EXPECT_EQ(e.parameter(), "fopru.grid");
  }
  try {
    const attention_view<__half> no_heads(fake_device_pointer<const __half>(), {2, 0, 10, 10});
    fopru::select(policy, no_heads, cfg, f.out);
    FAIL() << "no throw";
  } catch (const error& e) {
    EXPECT_EQ(e.parameter(), "attention.extent(0)");
  }
}

TEST(CudaFopru, ExtentsBeyondIntAreRejected) {
  const index_t huge = index_t{3} << 30;  // 3 * 2^30 tokens: beyond the kernels' int
  const attention_view<float> view(fake_device_pointer<const float>(), {1, 1, huge, huge});
  const selection_batch out{tensor_view<token_index, 2>(fake_device_pointer<token_index>(), {1, huge}),
                            std::span<token_index>(fake_device_pointer<token_index>(), 1)};
  try {
    fopru::select(cuda_policy{nullptr, fake_device_pointer<void>(), std::size_t{1} << 40}, view, fopru::config{}, out);
    FAIL() << "no throw";
  } catch (const error& e) {
    EXPECT_EQ(e.code(), errc::unsupported) << e.what();
  }
  try {
    (void)fopru::workspace_size(view, fopru::config{});  // n^2 floats overflow size_t
    FAIL() << "no throw";
  } catch (const error& e) {
    EXPECT_EQ(e.code(), errc::unsupported) << e.what();
    EXPECT_EQ(e.parameter(), "cuda.workspace");
  }
}

TEST(CudaFopru, WorkspaceSizeIsPureAndGrows) {
  const fopru::config cfg{};
  const attention_view<float> one(fake_device_pointer<const float>(), {1, 16, 577, 577});
  const attention_view<float> many(fake_device_pointer<const float>(), {64, 16, 577, 577});
  const std::size_t a = fopru::workspace_size(one, cfg), b = fopru::workspace_size(many, cfg);
  EXPECT_EQ(a, fopru::workspace_size(one, cfg));
  EXPECT_GT(b, a);
  // The reduced map dominates: at least batch * 576^2 floats.
  EXPECT_GE(b, std::size_t{64} * 576 * 576 * sizeof(float));
  const std::vector<head_attention_view<float>> ragged(3, one[0]);
  EXPECT_GT(fopru::workspace_size(std::span<const head_attention_view<float>>(ragged), cfg), a);
  const attention_view<float> empty(nullptr, {0, 16, 577, 577});
  EXPECT_GT(fopru::workspace_size(empty, cfg), 0u);  // the status word
}

// ---- device-only behaviour ------------------------------------------------------------------

TEST(CudaFopru, NonFiniteIsReportedPerSample) {
  TOKENSEL_REQUIRE_DEVICE();
  std::mt19937_64 rng(5);
  const index_t B = 3, H = 2, N = 17;
  const layout_info li = make_layout(layout::contiguous, B, H, N, N);
  std::vector<float> h(li.elements);
  fill_attention(h, li, B, H, N, N, values::softmax, rng);
  h[static_cast<std::size_t>(1 * li.strides[0] + 1 * li.strides[1] + 4 * li.strides[2] + 7)] = NAN;
  auto d = to_device(h);
  const attention_view<float> view(d.data(), {B, H, N, N});
  const fopru::config cfg{};
  const index_t k = fopru::keep_count(N - 1, cfg);
  device_buffer<token_index> idx(static_cast<std::size_t>(B * k)), cnt(static_cast<std::size_t>(B));
  workspace ws(fopru::workspace_size(view, cfg));
  fopru::select(ws.policy, view, cfg,
                selection_batch{tensor_view<token_index, 2>(idx.data(), {B, k}), std::span<token_index>(cnt.data(), 3)});
  const cuda_status st = status(ws.policy);
  ASSERT_FALSE(st.ok);
  EXPECT_EQ(st.code, errc::non_finite);
  EXPECT_EQ(st.sample, 1);
  EXPECT_EQ(st.parameter, "variance_axis.row_mean[3]");  // patch row 3 = token row 4
  const auto counts = cnt.download();
  EXPECT_EQ(counts[0], k);
  EXPECT_EQ(counts[1], 0);
  EXPECT_EQ(counts[2], k);
  try {
    throw_on_error(ws.policy);
    FAIL() << "no throw";
  } catch (const error& e) {
    EXPECT_EQ(e.code(), errc::non_finite);
  }
}

TEST(CudaFopru, GraphCaptureAllocatesNothingAndReplays) {
  TOKENSEL_REQUIRE_DEVICE();
  std::mt19937_64 rng(9);
  const index_t B = 4, H = 16, N = 577;
  const layout_info li = make_layout(layout::contiguous, B, H, N, N);
  std::vector<Eigen::half> h(li.elements);
  fill_attention(h, li, B, H, N, N, values::softmax, rng);
  auto d = to_device(h);
  const attention_view<__half> view(reinterpret_cast<const __half*>(d.data()), {B, H, N, N});
  for (const auto strategy : {fopru::strategy::rank, fopru::strategy::row}) {
    const fopru::config cfg{.ratio = 0.25, .strategy = strategy};
    const index_t k = fopru::keep_count(N - 1, cfg);
    device_buffer<token_index> idx1(static_cast<std::size_t>(B * k)), cnt1(4), idx2(static_cast<std::size_t>(B * k)), cnt2(4);
    cudaStream_t stream;
    cuda_ok(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
    workspace ws(fopru::workspace_size(view, cfg), stream);
    fopru::select(ws.policy, view, cfg, selection_batch{tensor_view<token_index, 2>(idx1.data(), {B, k}), std::span<token_index>(cnt1.data(), 4)});
    cuda_ok(cudaStreamSynchronize(stream), "sync");
    // Global capture mode: any cudaMalloc or synchronous call inside select would fail the capture.
    cudaGraph_t graph;
    cuda_ok(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), "begin capture");
    fopru::select(ws.policy, view, cfg, selection_batch{tensor_view<token_index, 2>(idx2.data(), {B, k}), std::span<token_index>(cnt2.data(), 4)});
    cuda_ok(cudaStreamEndCapture(stream, &graph), "end capture");
    cudaGraphExec_t exec;
    cuda_ok(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
    cuda_ok(cudaGraphLaunch(exec, stream), "graph launch");  // first launch may upload the graph
    cuda_ok(cudaStreamSynchronize(stream), "sync");
    std::size_t free_before = 0, free_after = 0, total = 0;
    cuda_ok(cudaMemGetInfo(&free_before, &total), "meminfo");
    for (int rep = 0; rep < 3; ++rep) cuda_ok(cudaGraphLaunch(exec, stream), "graph launch");
    cuda_ok(cudaStreamSynchronize(stream), "sync");
    cuda_ok(cudaMemGetInfo(&free_after, &total), "meminfo");
    EXPECT_EQ(free_before, free_after);
    EXPECT_EQ(idx1.download(), idx2.download());
    EXPECT_EQ(cnt1.download(), cnt2.download());
    EXPECT_TRUE(status(ws.policy).ok);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaStreamDestroy(stream);
  }
}
