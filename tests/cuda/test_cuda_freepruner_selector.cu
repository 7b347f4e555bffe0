// CUDA backend: the streaming freePruner selector (freepruner::cuda_selector). Host tests (run
// without a GPU): the state machine throws what the CPU selector throws, workspace sizing,
// argument checks. Device tests: selector == CPU selector == CUDA one-shot select on random
// problems, every layer order, fp32/fp16/bf16, batches.
#include "cuda_test_util.cuh"

#include <algorithm>
#include <limits>
#include <numeric>
#include <span>
#include <vector>

#include "tokensel/cuda/methods/freepruner.cuh"
#include "tokensel/methods/freepruner.hpp"

using namespace tokensel;
using namespace tokensel_test;

namespace {

/// Runs both calls; both must throw tokensel::error with the same code, parameter and message,
/// or both must succeed.
template <class Cpu, class Gpu>
void same_outcome(Cpu&& cpu, Gpu&& gpu, const std::string& label) {
  bool cpu_threw = false, gpu_threw = false;
  errc cpu_code{}, gpu_code{};
  std::string cpu_param, gpu_param, cpu_what, gpu_what;
  try {
    cpu();
  } catch (const tokensel::error& e) {
    cpu_threw = true;
    cpu_code = e.code();
    cpu_param = e.parameter();
    cpu_what = e.what();
  }
  try {
    gpu();
  } catch (const tokensel::error& e) {
    gpu_threw = true;
    gpu_code = e.code();
    gpu_param = e.parameter();
    gpu_what = e.what();
  }
  ASSERT_EQ(cpu_threw, gpu_threw) << label << ": cpu '" << cpu_what << "' cuda '" << gpu_what << "'";
  EXPECT_EQ(cpu_code, gpu_code) << label;
  EXPECT_EQ(cpu_param, gpu_param) << label;
  EXPECT_EQ(cpu_what, gpu_what) << label;
}

std::vector<index_t> used_layers(const freepruner::config& c) {
  std::vector<index_t> v;
  for (index_t l = freepruner::lowest_layer(c); l < freepruner::layers_end(c); ++l) {
    if (freepruner::uses_layer(c, l)) v.push_back(l);
  }
  return v;
}

}  // namespace

// ---- host tests (run without a GPU) -------------------------------------------------------------

TEST(CudaFreePrunerSelector, WorkspaceSize) {
  const freepruner::config cfg{.first_layer = 0, .last_layer = 1, .k_pivotal = 2, .complementary_layer = 1};
  for (const index_t B : {0, 1, 3}) {
    const index_t N = 11, n = 10;  // CLS skipped
    const attention_view<__half> layer(fake_device_pointer<const __half>(), {B, 4, N, N});
    const std::vector<attention_view<__half>> two{layer, layer};
    const freepruner::device_batch_layer_stack<__half> stack{std::span<const attention_view<__half>>(two), 0};
    const std::size_t one_shot = freepruner::workspace_size(stack, cfg);
    const std::size_t sel = freepruner::selector_workspace_size(cfg, N, B);
    EXPECT_GE(sel, one_shot);
    const std::size_t aligned = (one_shot + 255) / 256 * 256;
    const std::size_t batch_bytes = aligned + static_cast<std::size_t>(B * n * n) * sizeof(float);
    EXPECT_EQ(sel, B == 1 ? tokensel::cuda_detail::single_bytes(batch_bytes) : batch_bytes) << B;
    EXPECT_EQ(freepruner::cuda_selector(N, cfg, B).workspace_size(), sel);
  }
  EXPECT_EQ(freepruner::selector_workspace_size(cfg, 11), freepruner::selector_workspace_size(cfg, 11, 1));
}

TEST(CudaFreePrunerSelector, ConstructorChecksMatchCpu) {
  const freepruner::config good{.first_layer = 0, .last_layer = 1, .k_pivotal = 2, .complementary_layer = 1};
  struct arg {
    index_t tokens, batch;
    freepruner::config cfg;
  };
  const std::vector<arg> args{
      {11, 1, good},
      {-1, 1, good},
      {11, -1, good},
      {2, 1, good},  // k_pivotal > n
      {11, 1, freepruner::config{.k_pivotal = 0}},
      {11, 1, freepruner::config{.first_layer = 0, .last_layer = 2, .complementary_layer = 1}},
      {11, 2, freepruner::config{.first_layer = 0, .last_layer = 1, .k_pivotal = 2, .complementary_layer = 1,
                                 .mode = freepruner::mode::fixed, .budget = 11}},
  };
  for (std::size_t i = 0; i < args.size(); ++i) {
    const auto& a = args[i];
    same_outcome([&] { freepruner::selector s(a.tokens, a.cfg, a.batch); },
                 [&] { freepruner::cuda_selector s(a.tokens, a.cfg, a.batch); }, "constructor " + std::to_string(i));
    same_outcome([&] { freepruner::selector s(a.tokens, a.cfg, a.batch); },
                 [&] { (void)freepruner::selector_workspace_size(a.cfg, a.tokens, a.batch); },
                 "workspace_size " + std::to_string(i));
  }
}

// Batch 0: every host check runs, nothing is launched (the workspace pointer is never read).
TEST(CudaFreePrunerSelector, StateMachineMatchesCpu) {
  const index_t N = 9, H = 2;
  for (const index_t comp : {0, 1, 2, 4}) {
    const freepruner::config cfg{.first_layer = 1, .last_layer = 2, .k_pivotal = 2, .complementary_layer = comp};
    const std::string tag = "complementary " + std::to_string(comp);
    freepruner::selector cpu(N, cfg, 0);
    freepruner::cuda_selector gpu(N, cfg, 0);
    const cuda_policy policy{nullptr, fake_device_pointer<void>(), freepruner::selector_workspace_size(cfg, N, 0)};
    const std::vector<float> buf(static_cast<std::size_t>(H * N * N), 0.0f);
    const attention_view<float> host_layer(buf.data(), {0, H, N, N});
    const attention_view<float> dev_layer(fake_device_pointer<const float>(), {0, H, N, N});
    const attention_view<float> host_b1(buf.data(), {1, H, N, N});
    const attention_view<float> dev_b1(fake_device_pointer<const float>(), {1, H, N, N});
    const head_attention_view<float> host_one(buf.data(), {H, N, N});
    const head_attention_view<float> dev_one(fake_device_pointer<const float>(), {H, N, N});
    const selection_batch host_out{tensor_view<token_index, 2>(nullptr, {0, N}), std::span<token_index>()};
    const selection_batch dev_out{tensor_view<token_index, 2>(fake_device_pointer<token_index>(), {0, N}),
                                  std::span<token_index>()};
    auto add = [&](index_t l, const attention_view<float>& h, const attention_view<float>& d, const std::string& what) {
      same_outcome([&] { cpu.add_layer(seq, l, h); }, [&] { gpu.add_layer(policy, l, d); }, tag + " " + what);
    };
    auto finish = [&](const std::string& what) {
      same_outcome([&] { cpu.finish(seq, host_out); }, [&] { gpu.finish(policy, dev_out); }, tag + " " + what);
    };
    for (int round = 0; round < 2; ++round) {
      finish("finish before any layer");
      add(0, host_layer, dev_layer, "unknown layer 0");
      add(3, host_layer, dev_layer, "unknown layer 3");
      add(-1, host_layer, dev_layer, "negative layer");
      add(40, host_layer, dev_layer, "layer past the end");
      add(2, host_b1, dev_b1, "wrong batch");
      same_outcome([&] { cpu.add_layer(seq, 2, host_one); }, [&] { gpu.add_layer(policy, 2, dev_one); },
                   tag + " single-sample view with batch 0");
      add(2, host_layer, dev_layer, "first add");
      EXPECT_EQ(cpu.needs(2), gpu.needs(2));
      add(2, host_layer, dev_layer, "added twice");
      finish("finish after one layer");
      for (const index_t l : used_layers(cfg)) {
        EXPECT_EQ(cpu.needs(l), gpu.needs(l)) << tag << " layer " << l;
        if (l != 2) add(l, host_layer, dev_layer, "layer " + std::to_string(l));
      }
      EXPECT_TRUE(cpu.complete());
      EXPECT_EQ(cpu.complete(), gpu.complete());
      finish("finish when complete");
      add(1, host_layer, dev_layer, "added after complete");
      cpu.reset();
      gpu.reset();
      EXPECT_FALSE(gpu.complete());
    }
  }
}

// The host-side dispatch over every layer order: each pivotal layer runs the pivotal stage once;
// the outlier stage runs exactly once, on the call that completes P and the complementary layer;
// the complementary map is stored exactly when that layer arrives before P is complete.
TEST(CudaFreePrunerSelector, DispatchEveryOrder) {
  int orders = 0;
  for (index_t first = 0; first <= 1; ++first) {
    for (index_t last = first; last <= first + 3; ++last) {
      for (index_t comp = 0; comp <= last + 1; ++comp) {
        const freepruner::config cfg{.first_layer = first, .last_layer = last, .k_pivotal = 1, .complementary_layer = comp};
        std::vector<index_t> order = used_layers(cfg);
        do {
          index_t pivotal_seen = 0;
          bool stored = false, comp_seen = false;
          int outliers = 0, pivotal_runs = 0, stores = 0;
          for (std::size_t i = 0; i < order.size(); ++i) {
            const index_t l = order[i];
            const auto step = freepruner::cuda_detail::plan_step(cfg, l, pivotal_seen, stored);
            const bool pivotal = l >= first && l <= last;
            EXPECT_EQ(step.pivotal, pivotal);
            pivotal_runs += step.pivotal ? 1 : 0;
            if (step.pivotal) ++pivotal_seen;
            comp_seen = comp_seen || l == comp;
            const bool done = pivotal_seen == freepruner::pivotal_layers(cfg) && comp_seen;
            const int here = (step.outlier ? 1 : 0) + (step.outlier_stored ? 1 : 0);
            EXPECT_EQ(here, done && outliers == 0 ? 1 : 0)
                << "first " << first << " last " << last << " comp " << comp << " step " << i;
            outliers += here;
            if (step.store_copy || step.store_reduce) {
              EXPECT_EQ(l, comp);
              EXPECT_EQ(step.store_copy, pivotal);
              ++stores;
              stored = true;
            }
            EXPECT_FALSE(step.reduce_masked && l == last);
            EXPECT_EQ(step.outlier_stored, step.outlier_stored && stored);
          }
          EXPECT_EQ(outliers, 1);
          EXPECT_EQ(pivotal_runs, freepruner::pivotal_layers(cfg));
          const bool comp_early = freepruner::pivotal_layers(cfg) > 0 &&
                                  [&] {
                                    index_t seen = 0;
                                    for (const index_t l : order) {
                                      if (l == comp) return seen + ((l >= first && l <= last) ? 1 : 0) < freepruner::pivotal_layers(cfg);
                                      if (l >= first && l <= last) ++seen;
                                    }
                                    return false;
                                  }();
          EXPECT_EQ(stores, comp_early ? 1 : 0);
          ++orders;
        } while (std::next_permutation(order.begin(), order.end()));
      }
    }
  }
  EXPECT_EQ(orders, 694);  // every permutation of the 32 configs
}

selection_batch device_selection_view(index_t B, index_t cap) {
  return selection_batch{tensor_view<token_index, 2>(fake_device_pointer<token_index>(), {B, cap}),
                         std::span<token_index>(fake_device_pointer<token_index>(), static_cast<std::size_t>(B))};
}

TEST(CudaFreePrunerSelector, ArgumentChecks) {
  const freepruner::config cfg{.first_layer = 0, .last_layer = 1, .k_pivotal = 2, .complementary_layer = 1};
  const index_t N = 11, B = 2;
  freepruner::cuda_selector sel(N, cfg, B);
  EXPECT_EQ(sel.patches(), 10);
  EXPECT_EQ(sel.tokens(), N);
  EXPECT_EQ(sel.batch(), B);
  const std::size_t need = freepruner::selector_workspace_size(cfg, N, B);
  const attention_view<__half> layer(fake_device_pointer<const __half>(), {B, 4, N, N});
  expect_error([&] { sel.add_layer(cuda_policy{nullptr, fake_device_pointer<void>(), need - 1}, 0, layer); },
               errc::invalid_argument, "freepruner.policy.workspace_bytes");
  expect_error([&] { sel.add_layer(cuda_policy{nullptr, nullptr, need}, 0, layer); }, errc::invalid_argument,
               "freepruner.policy.workspace");
  expect_error([&] {
    sel.add_layer(cuda_policy{nullptr, reinterpret_cast<void*>(std::uintptr_t{0x100010}), need}, 0, layer);
  }, errc::invalid_argument, "freepruner.policy.workspace");
  // The failed calls left nothing behind.
  EXPECT_TRUE(sel.needs(0));
  EXPECT_TRUE(sel.needs(1));
  expect_error([&] { sel.finish(cuda_policy{nullptr, fake_device_pointer<void>(), need}, std::span<token_index>()); },
               errc::shape_mismatch, "freepruner.selector.batch");
  expect_error([&] { sel.finish(cuda_policy{nullptr, fake_device_pointer<void>(), need}, device_selection_view(B, 10)); },
               errc::invalid_argument, "freepruner.layer");
  const head_attention_view<__half> one(fake_device_pointer<const __half>(), {4, N, N});
  expect_error([&] { sel.add_layer(cuda_policy{nullptr, fake_device_pointer<void>(), need}, 0, one); },
               errc::shape_mismatch, "freepruner.selector.batch");
  const attention_view<__half> no_heads(fake_device_pointer<const __half>(), {B, 0, N, N});
  expect_error([&] { sel.add_layer(cuda_policy{nullptr, fake_device_pointer<void>(), need}, 0, no_heads); },
               errc::shape_mismatch, "freepruner.attention[layer 0].extent(0)");
}

// ---- device tests ---------------------------------------------------------------------------------

namespace {

struct problem {
  freepruner::config cfg;
  index_t heads = 1, batch = 1, tokens = 2;
  layout lay = layout::contiguous;
  values kind = values::softmax;
};

problem random_problem(std::mt19937_64& rng) {
  auto pick = [&](index_t lo, index_t hi) { return std::uniform_int_distribution<index_t>(lo, hi)(rng); };
  problem p;
  freepruner::config& c = p.cfg;
  c.heads = static_cast<head_reduction>(pick(0, 2));
  c.first_layer = pick(0, 2);
  c.last_layer = c.first_layer + pick(0, 3);
  c.complementary_layer = pick(0, 9) < 5 ? c.last_layer : pick(0, c.last_layer + 1);
  const double multipliers[] = {1.5, 1.5, 0.0, 0.5, 3.0};
  c.iqr_multiplier = multipliers[pick(0, 4)];
  c.skip_cls = pick(0, 5) != 0;
  p.heads = pick(1, 6);
  p.batch = pick(1, 4);
  p.lay = static_cast<layout>(pick(0, 2));
  p.kind = static_cast<values>(pick(0, 3));
  const int size_class = static_cast<int>(pick(0, 9));
  const index_t n = size_class == 0 ? pick(1, 3) : (size_class < 8 ? pick(2, 40) : pick(41, 120));
  p.tokens = n + (c.skip_cls ? 1 : 0);
  c.k_pivotal = pick(1, std::min<index_t>(n, 10));
  if (pick(0, 1) == 0) {
    c.mode = freepruner::mode::fixed;
    c.budget = pick(1, n);
  }
  return p;
}

template <class E>
void check_problem(const problem& p, std::mt19937_64& rng, const std::string& label) {
  using D = device_t<E>;
  const index_t B = p.batch, H = p.heads, N = p.tokens;
  const index_t layers = freepruner::layers_end(p.cfg);
  const layout_info li = make_layout(p.lay, B, H, N, N);
  std::vector<std::vector<E>> host;
  std::vector<device_buffer<E>> dev;
  std::vector<attention_view<E>> host_views;
  std::vector<attention_view<D>> dev_views;
  for (index_t l = 0; l < layers; ++l) {
    std::vector<E> h(li.elements, to_storage<E>(0.0f));
    fill_attention(h, li, B, H, N, N, p.kind, rng);
    dev.push_back(to_device(h));
    host.push_back(std::move(h));
  }
  for (index_t l = 0; l < layers; ++l) {
    host_views.emplace_back(host[static_cast<std::size_t>(l)].data(), std::array<index_t, 4>{B, H, N, N}, li.strides);
    dev_views.emplace_back(reinterpret_cast<const D*>(dev[static_cast<std::size_t>(l)].data()),
                           std::array<index_t, 4>{B, H, N, N}, li.strides);
  }
  const index_t n = N - (p.cfg.skip_cls ? 1 : 0);
  const index_t cap = freepruner::max_count(n, p.cfg) + 1;
  std::vector<index_t> order = used_layers(p.cfg);
  // CPU selector, one random order.
  std::shuffle(order.begin(), order.end(), rng);
  freepruner::selector cpu(N, p.cfg, B);
  for (const index_t l : order) cpu.add_layer(seq, l, host_views[static_cast<std::size_t>(l)]);
  std::vector<token_index> want_idx(static_cast<std::size_t>(B * cap), -1), want_cnt(static_cast<std::size_t>(B));
  std::vector<freepruner::result> want_res(static_cast<std::size_t>(B));
  cpu.finish(seq, selection_batch{tensor_view<token_index, 2>(want_idx.data(), {B, cap}), std::span<token_index>(want_cnt)},
             std::span<freepruner::result>(want_res));
  auto compare = [&](const device_selection& got, const device_buffer<freepruner::result>& res, const std::string& what) {
    const auto rows = got.rows();
    const auto gr = res.download();
    for (index_t b = 0; b < B; ++b) {
      const auto c = want_cnt[static_cast<std::size_t>(b)];
      const std::vector<token_index> w(want_idx.begin() + b * cap, want_idx.begin() + b * cap + c);
      ASSERT_EQ(rows[static_cast<std::size_t>(b)], w) << label << " " << what << " sample " << b;
      const auto& wr = want_res[static_cast<std::size_t>(b)];
      const auto& r = gr[static_cast<std::size_t>(b)];
      EXPECT_EQ(r.count, wr.count) << label << " " << what;
      EXPECT_EQ(r.pivotal, wr.pivotal) << label << " " << what;
      EXPECT_EQ(r.complementary, wr.complementary) << label << " " << what;
      EXPECT_EQ(r.candidates, wr.candidates) << label << " " << what;
      EXPECT_EQ(r.dropped, wr.dropped) << label << " " << what;
      EXPECT_EQ(r.filled, wr.filled) << label << " " << what;
    }
  };
  // CUDA one-shot.
  {
    const freepruner::device_batch_layer_stack<D> stack{std::span<const attention_view<D>>(dev_views), 0};
    workspace ws(freepruner::workspace_size(stack, p.cfg));
    device_selection out(B, cap);
    device_buffer<freepruner::result> res(static_cast<std::size_t>(B));
    freepruner::select(ws.policy, stack, p.cfg, out.view(), std::span<freepruner::result>(res.data(), static_cast<std::size_t>(B)));
    cuda_ok(cudaDeviceSynchronize(), "sync");
    const cuda_status st = status(ws.policy);
    ASSERT_TRUE(st.ok) << label << ": " << st.message;
    compare(out, res, "one-shot");
  }
  // CUDA selector: two more random orders through one selector (reset between images).
  workspace ws(freepruner::selector_workspace_size(p.cfg, N, B));
  freepruner::cuda_selector sel(N, p.cfg, B);
  for (int round = 0; round < 2; ++round) {
    std::shuffle(order.begin(), order.end(), rng);
    for (const index_t l : order) sel.add_layer(ws.policy, l, dev_views[static_cast<std::size_t>(l)]);
    device_selection out(B, cap);
    device_buffer<freepruner::result> res(static_cast<std::size_t>(B));
    sel.finish(ws.policy, out.view(), std::span<freepruner::result>(res.data(), static_cast<std::size_t>(B)));
    cuda_ok(cudaDeviceSynchronize(), "sync");
    const cuda_status st = status(ws.policy);
    ASSERT_TRUE(st.ok) << label << ": " << st.message;
    compare(out, res, "selector round " + std::to_string(round));
    sel.reset();
  }
}

template <class E>
void parity_run(int cases, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (int c = 0; c < parity_cases(cases); ++c) {
    parity_case(c);
    const problem p = random_problem(rng);
    check_problem<E>(p, rng, std::string(element_name<E>()) + " case " + std::to_string(c));
    if (::testing::Test::HasFatalFailure()) return;
  }
}

}  // namespace

TEST(CudaFreePrunerSelector, ParityFloat) {
  TOKENSEL_REQUIRE_DEVICE();
  parity_run<float>(500, 41);
}
TEST(CudaFreePrunerSelector, ParityHalf) {
  TOKENSEL_REQUIRE_DEVICE();
  parity_run<Eigen::half>(300, 42);
}
TEST(CudaFreePrunerSelector, ParityBfloat16) {
  TOKENSEL_REQUIRE_DEVICE();
  parity_run<Eigen::bfloat16>(300, 43);
}

// Every permutation of the layers of a small config, single-sample view overload included.
TEST(CudaFreePrunerSelector, EveryLayerOrder) {
  TOKENSEL_REQUIRE_DEVICE();
  std::mt19937_64 rng(44);
  for (const index_t comp : {0, 1, 2, 3, 4}) {
    const freepruner::config cfg{.first_layer = 1, .last_layer = 3, .k_pivotal = 3, .complementary_layer = comp};
    const index_t N = 30, H = 3;
    const layout_info li = make_layout(layout::contiguous, 1, H, N, N);
    std::vector<std::vector<float>> host;
    std::vector<device_buffer<float>> dev;
    for (index_t l = 0; l < freepruner::layers_end(cfg); ++l) {
      std::vector<float> h(li.elements);
      fill_attention(h, li, 1, H, N, N, values::softmax, rng);
      dev.push_back(to_device(h));
      host.push_back(std::move(h));
    }
    std::vector<index_t> order = used_layers(cfg);
    std::vector<head_attention_view<float>> hv;
    for (const auto& h : host) hv.emplace_back(h.data(), std::array<index_t, 3>{H, N, N});
    const index_t cap = freepruner::max_count(N - 1, cfg);
    std::vector<token_index> want(static_cast<std::size_t>(cap));
    const freepruner::layer_stack<float> stack{std::span<const head_attention_view<float>>(hv), 0};
    const auto wr = freepruner::select(seq, stack, cfg, std::span<token_index>(want));
    want.resize(static_cast<std::size_t>(wr.count));
    workspace ws(freepruner::selector_workspace_size(cfg, N));
    freepruner::cuda_selector sel(N, cfg);
    do {
      for (const index_t l : order) {
        sel.add_layer(ws.policy, l, head_attention_view<float>(dev[static_cast<std::size_t>(l)].data(), {H, N, N}));
      }
      device_selection out(1, cap);
      sel.finish(ws.policy, out.view());
      ASSERT_EQ(out.rows()[0], want) << "complementary " << comp;
      ASSERT_TRUE(status(ws.policy).ok);
      device_buffer<token_index> span_out(static_cast<std::size_t>(cap));
      device_buffer<freepruner::result> res(1);
      sel.finish(ws.policy, std::span<token_index>(span_out.data(), static_cast<std::size_t>(cap)), res.data());
      const auto r = res.download()[0];
      ASSERT_EQ(r.count, wr.count);
      const auto got = span_out.download();
      ASSERT_EQ(std::vector<token_index>(got.begin(), got.begin() + r.count), want);
      sel.reset();
    } while (std::next_permutation(order.begin(), order.end()));
  }
}

// A complementary layer that arrives before P is complete is stored unchecked: a NaN in one of its
// rows outside P changes nothing (CPU and CUDA select the same as on clean data); a NaN in a row of
// P fails the sample on both (the CPU throws non_finite, the device reports it and counts 0).
TEST(CudaFreePrunerSelector, EarlyComplementaryLayerChecksOnlyRowsInP) {
  TOKENSEL_REQUIRE_DEVICE();
  std::mt19937_64 rng(45);
  const freepruner::config cfg{.first_layer = 0, .last_layer = 1, .k_pivotal = 3, .complementary_layer = 2};
  const index_t N = 24, H = 2, n = N - 1;
  const layout_info li = make_layout(layout::contiguous, 1, H, N, N);
  std::vector<std::vector<float>> host;
  for (index_t l = 0; l < 3; ++l) {
    std::vector<float> h(li.elements);
    fill_attention(h, li, 1, H, N, N, values::softmax, rng);
    host.push_back(std::move(h));
  }
  auto view = [&](index_t l) { return head_attention_view<float>(host[static_cast<std::size_t>(l)].data(), {H, N, N}); };
  const index_t cap = freepruner::max_count(n, cfg);
  // P on clean data.
  freepruner::selector clean(N, cfg);
  for (const index_t l : {2, 0, 1}) clean.add_layer(seq, l, view(l));
  const auto info = clean.inspect();
  std::vector<token_index> want(static_cast<std::size_t>(cap));
  want.resize(static_cast<std::size_t>(clean.finish(std::span<token_index>(want)).count));
  index_t outside = 0;
  while (std::binary_search(info.pivotal.begin(), info.pivotal.end(), static_cast<token_index>(outside))) ++outside;
  ASSERT_LT(outside, n);
  for (const bool in_p : {false, true}) {
    auto bad = host;
    const index_t row = in_p ? info.pivotal.front() : outside;  // patch row; +1 for CLS in the map
    bad[2][static_cast<std::size_t>((row + 1) * N + 5)] = std::numeric_limits<float>::quiet_NaN();  // head 0
    std::vector<device_buffer<float>> dev;
    for (const auto& h : bad) dev.push_back(to_device(h));
    freepruner::selector cpu(N, cfg);
    workspace ws(freepruner::selector_workspace_size(cfg, N));
    freepruner::cuda_selector sel(N, cfg);
    for (const index_t l : {2, 0, 1}) {
      const head_attention_view<float> hv(bad[static_cast<std::size_t>(l)].data(), {H, N, N});
      if (in_p && l == 1) {
        EXPECT_THROW(cpu.add_layer(seq, l, hv), tokensel::error);
      } else {
        cpu.add_layer(seq, l, hv);
      }
      sel.add_layer(ws.policy, l, head_attention_view<float>(dev[static_cast<std::size_t>(l)].data(), {H, N, N}));
    }
    device_selection out(1, cap);
    sel.finish(ws.policy, out.view());
    cuda_ok(cudaDeviceSynchronize(), "sync");
    const cuda_status st = status(ws.policy);
    if (in_p) {
      EXPECT_FALSE(st.ok) << "a NaN in a row of P must be reported";
      EXPECT_EQ(out.rows()[0].size(), 0u);
    } else {
      ASSERT_TRUE(st.ok) << st.message;
      std::vector<token_index> got(static_cast<std::size_t>(cap));
      got.resize(static_cast<std::size_t>(cpu.finish(std::span<token_index>(got)).count));
      EXPECT_EQ(got, want);
      EXPECT_EQ(out.rows()[0], want);
    }
  }
}
