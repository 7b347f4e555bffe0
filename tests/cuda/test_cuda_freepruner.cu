// CUDA backend: freePruner. Parity with the CPU backend (indices, counts and every statistic) on
// random layer stacks of every dtype, layout and tie pattern, adaptive and fixed modes, uniform
// and ragged batches; host-side validation (runs without a GPU); NaN reporting.
#include "cuda_test_util.cuh"

#include <span>
#include <vector>

#include "tokensel/cuda/methods/freepruner.cuh"
#include "tokensel/methods/freepruner.hpp"

using namespace tokensel;
using namespace tokensel_test;

namespace {

struct problem {
  freepruner::config cfg;
  index_t heads = 1;
  index_t offset = 0;
  index_t layers = 1;              // layers in every stack, starting at offset
  std::vector<index_t> tokens;     // per sample
  bool uniform = true;
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
  c.complementary_layer = pick(0, 9) < 6 ? c.last_layer : pick(0, c.last_layer + 1);
  const double multipliers[] = {1.5, 1.5, 0.0, 0.5, 3.0};
  c.iqr_multiplier = multipliers[pick(0, 4)];
  c.skip_cls = pick(0, 5) != 0;
  p.heads = pick(1, 8);
  p.uniform = pick(0, 1) == 0;
  p.lay = static_cast<layout>(pick(0, 2));
  p.kind = static_cast<values>(pick(0, 3));
  p.offset = pick(0, freepruner::lowest_layer(c));
  p.layers = freepruner::layers_end(c) - p.offset + pick(0, 1);
  const index_t batch = p.uniform ? pick(1, 3) : pick(1, 4);
  const index_t cls = c.skip_cls ? 1 : 0;
  index_t n_min = 1 << 30;
  for (index_t b = 0; b < batch; ++b) {
    const int size_class = static_cast<int>(pick(0, 9));
    index_t n = size_class == 0 ? pick(1, 3) : (size_class < 7 ? pick(2, 40) : pick(41, 150));
    if (p.uniform && b > 0) n = p.tokens[0] - cls;
    p.tokens.push_back(n + cls);
    n_min = std::min(n_min, n);
  }
  c.k_pivotal = pick(1, std::min<index_t>(n_min, 10));
  if (pick(0, 1) == 0) {
    c.mode = freepruner::mode::fixed;
    c.budget = pick(1, n_min);
  }
  return p;
}

template <class E, bool Native>
void check_problem(const problem& p, std::mt19937_64& rng, const std::string& label) {
  using D = device_t<E, Native>;
  const auto B = static_cast<index_t>(p.tokens.size());
  const index_t H = p.heads;
  // host[l][s]: layer l of sample s (uniform: s = 0 holds the whole batch).
  const index_t stores = p.uniform ? 1 : B;
  std::vector<std::vector<std::vector<E>>> host(static_cast<std::size_t>(p.layers));
  std::vector<std::vector<device_buffer<E>>> dev(static_cast<std::size_t>(p.layers));
  std::vector<layout_info> lays(static_cast<std::size_t>(stores));
  for (index_t s = 0; s < stores; ++s) {
    const index_t N = p.tokens[static_cast<std::size_t>(s)];
    lays[static_cast<std::size_t>(s)] = make_layout(p.lay, p.uniform ? B : 1, H, N, N);
  }
  for (index_t l = 0; l < p.layers; ++l) {
    for (index_t s = 0; s < stores; ++s) {
      const index_t N = p.tokens[static_cast<std::size_t>(s)];
      const auto& li = lays[static_cast<std::size_t>(s)];
      std::vector<E> h(li.elements, to_storage<E>(0.0f));
      fill_attention(h, li, p.uniform ? B : 1, H, N, N, p.kind, rng);
      dev[static_cast<std::size_t>(l)].push_back(to_device(h));
      host[static_cast<std::size_t>(l)].push_back(std::move(h));
    }
  }
  // Element offset and strides of sample b inside its host/device store.
  auto sample_view = [&](index_t b) {
    const auto& li = lays[p.uniform ? 0 : static_cast<std::size_t>(b)];
    return std::pair<index_t, std::array<index_t, 3>>{p.uniform ? b * li.strides[0] : 0,
                                                      {li.strides[1], li.strides[2], li.strides[3]}};
  };
  // CPU reference.
  const index_t cls = p.cfg.skip_cls ? 1 : 0;
  index_t capacity = 0;
  for (const index_t N : p.tokens) capacity = std::max(capacity, freepruner::max_count(N - cls, p.cfg));
  capacity += 1;
  std::vector<std::vector<token_index>> want(static_cast<std::size_t>(B));
  std::vector<freepruner::result> want_res(static_cast<std::size_t>(B));
  for (index_t b = 0; b < B; ++b) {
    const index_t N = p.tokens[static_cast<std::size_t>(b)];
    std::vector<head_attention_view<E>> views;
    for (index_t l = 0; l < p.layers; ++l) {
      const auto [off, st] = sample_view(b);
      views.emplace_back(host[static_cast<std::size_t>(l)][p.uniform ? 0 : static_cast<std::size_t>(b)].data() + off,
                         std::array<index_t, 3>{H, N, N}, st);
    }
    std::vector<token_index> o(static_cast<std::size_t>(capacity));
    const freepruner::layer_stack<E> stack{std::span<const head_attention_view<E>>(views), p.offset};
    want_res[static_cast<std::size_t>(b)] = freepruner::select(seq, stack, p.cfg, std::span<token_index>(o));
    o.resize(static_cast<std::size_t>(want_res[static_cast<std::size_t>(b)].count));
    want[static_cast<std::size_t>(b)] = o;
  }
  // CUDA.
  device_buffer<token_index> d_idx(static_cast<std::size_t>(B * capacity)), d_cnt(static_cast<std::size_t>(B));
  device_buffer<freepruner::result> d_res(static_cast<std::size_t>(B));
  const selection_batch out{tensor_view<token_index, 2>(d_idx.data(), {B, capacity}),
                            std::span<token_index>(d_cnt.data(), static_cast<std::size_t>(B))};
  const std::span<freepruner::result> res(d_res.data(), static_cast<std::size_t>(B));
  if (p.uniform) {
    const index_t N = p.tokens[0];
    std::vector<attention_view<D>> layers;
    for (index_t l = 0; l < p.layers; ++l) {
      layers.emplace_back(reinterpret_cast<const D*>(dev[static_cast<std::size_t>(l)][0].data()),
                          std::array<index_t, 4>{B, H, N, N}, lays[0].strides);
    }
    const freepruner::device_batch_layer_stack<D> stack{std::span<const attention_view<D>>(layers), p.offset};
    workspace ws(freepruner::workspace_size(stack, p.cfg));
    freepruner::select(ws.policy, stack, p.cfg, out, res);
    cuda_ok(cudaDeviceSynchronize(), "sync");
    const cuda_status st = status(ws.policy);
    ASSERT_TRUE(st.ok) << label << ": " << st.message;
  } else {
    std::vector<std::vector<head_attention_view<D>>> views(static_cast<std::size_t>(B));
    std::vector<freepruner::device_layer_stack<D>> stacks;
    for (index_t b = 0; b < B; ++b) {
      const index_t N = p.tokens[static_cast<std::size_t>(b)];
      const auto& li = lays[static_cast<std::size_t>(b)];
      for (index_t l = 0; l < p.layers; ++l) {
        views[static_cast<std::size_t>(b)].emplace_back(
            reinterpret_cast<const D*>(dev[static_cast<std::size_t>(l)][static_cast<std::size_t>(b)].data()),
            std::array<index_t, 3>{H, N, N}, std::array<index_t, 3>{li.strides[1], li.strides[2], li.strides[3]});
      }
      stacks.push_back({std::span<const head_attention_view<D>>(views[static_cast<std::size_t>(b)]), p.offset});
    }
    const std::span<const freepruner::device_layer_stack<D>> span(stacks);
    workspace ws(freepruner::workspace_size(span, p.cfg));
    freepruner::select(ws.policy, span, p.cfg, out, res);
    cuda_ok(cudaDeviceSynchronize(), "sync");
    const cuda_status st = status(ws.policy);
    ASSERT_TRUE(st.ok) << label << ": " << st.message;
  }
  const auto idx = d_idx.download();
  const auto cnt = d_cnt.download();
  const auto got_res = d_res.download();
  for (index_t b = 0; b < B; ++b) {
    const auto& w = want[static_cast<std::size_t>(b)];
    ASSERT_EQ(cnt[static_cast<std::size_t>(b)], static_cast<token_index>(w.size())) << label << " sample " << b;
    const std::vector<token_index> got(idx.begin() + b * capacity, idx.begin() + b * capacity + static_cast<index_t>(w.size()));
    ASSERT_EQ(got, w) << label << " sample " << b;
    const auto& wr = want_res[static_cast<std::size_t>(b)];
    const auto& gr = got_res[static_cast<std::size_t>(b)];
    EXPECT_EQ(gr.count, wr.count) << label;
    EXPECT_EQ(gr.pivotal, wr.pivotal) << label;
    EXPECT_EQ(gr.complementary, wr.complementary) << label;
    EXPECT_EQ(gr.candidates, wr.candidates) << label;
    EXPECT_EQ(gr.dropped, wr.dropped) << label;
    EXPECT_EQ(gr.filled, wr.filled) << label;
  }
}

template <class E, bool Native>
void parity_run(int cases, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (int c = 0; c < parity_cases(cases); ++c) {
    parity_case(c);
    const problem p = random_problem(rng);
    const std::string label = std::string(element_name<E>()) + (Native ? "" : "(eigen)") + " case " + std::to_string(c);
    check_problem<E, Native>(p, rng, label);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

}  // namespace

TEST(CudaFreePruner, ParityFloat) {
  TOKENSEL_REQUIRE_DEVICE();
  parity_run<float, true>(400, 31);
}
TEST(CudaFreePruner, ParityHalf) {
  TOKENSEL_REQUIRE_DEVICE();
  parity_run<Eigen::half, true>(350, 32);
  parity_run<Eigen::half, false>(50, 33);
}
TEST(CudaFreePruner, ParityBfloat16) {
  TOKENSEL_REQUIRE_DEVICE();
  parity_run<Eigen::bfloat16, true>(350, 34);
  parity_run<Eigen::bfloat16, false>(50, 35);
}

TEST(CudaFreePruner, ParityLlavaDefaults) {
  TOKENSEL_REQUIRE_DEVICE();
  std::mt19937_64 rng(36);
  for (const auto mode : {freepruner::mode::adaptive, freepruner::mode::fixed}) {
    problem p;  // layers 6..22, k = 8, complementary 22, 16 heads, 577 tokens
    p.cfg.mode = mode;
    p.cfg.budget = mode == freepruner::mode::fixed ? 144 : 0;
    p.heads = 16;
    p.offset = 6;
    p.layers = 17;
    p.tokens = {577, 577};
    check_problem<Eigen::half, true>(p, rng, "llava defaults");
  }
}

// ---- host-side validation (runs without a GPU) --------------------------------------------------

TEST(CudaFreePruner, HostValidation) {
  const freepruner::config cfg{.first_layer = 0, .last_layer = 1, .k_pivotal = 2, .complementary_layer = 1};
  const attention_view<__half> layer(fake_device_pointer<const __half>(), {2, 4, 10, 10});
  const std::vector<attention_view<__half>> two{layer, layer};
  const freepruner::device_batch_layer_stack<__half> stack{std::span<const attention_view<__half>>(two), 0};
  const std::size_t need = freepruner::workspace_size(stack, cfg);
  const cuda_policy policy{nullptr, fake_device_pointer<void>(), need};
  const selection_batch out{tensor_view<token_index, 2>(fake_device_pointer<token_index>(), {2, 9}),
                            std::span<token_index>(fake_device_pointer<token_index>(), 2)};
  expect_error([&] { freepruner::select(policy, stack, freepruner::config{.k_pivotal = 0}, out); }, errc::invalid_argument, "freepruner.k_pivotal");
  expect_error([&] { freepruner::select(policy, stack, freepruner::config{.first_layer = 0, .last_layer = 2, .complementary_layer = 1}, out); },
         errc::invalid_argument, "freepruner.layers");
  expect_error([&] { freepruner::select(policy, stack, freepruner::config{.first_layer = 0, .last_layer = 1, .k_pivotal = 12, .complementary_layer = 1}, out); },
         errc::invalid_argument, "freepruner.k_pivotal");
  expect_error([&] {
    const selection_batch small{tensor_view<token_index, 2>(fake_device_pointer<token_index>(), {2, 8}), out.counts};
    freepruner::select(policy, stack, cfg, small);
  }, errc::shape_mismatch, "freepruner.out.size()");
  expect_error([&] {
    const attention_view<__half> other(fake_device_pointer<const __half>(), {3, 4, 10, 10});
    const std::vector<attention_view<__half>> mixed{layer, other};
    freepruner::select(policy, freepruner::device_batch_layer_stack<__half>{std::span<const attention_view<__half>>(mixed), 0}, cfg, out);
  }, errc::shape_mismatch, "freepruner.attention[layer 1].extent(0)");
  expect_error([&] {
    const attention_view<__half> other(fake_device_pointer<const __half>(), {2, 4, 11, 11});
    const std::vector<attention_view<__half>> mixed{layer, other};
    freepruner::select(policy, freepruner::device_batch_layer_stack<__half>{std::span<const attention_view<__half>>(mixed), 0}, cfg, out);
  }, errc::shape_mismatch, "freepruner.attention[layer 1]");
  expect_error([&] { freepruner::select(policy, stack, freepruner::config{.first_layer = 0, .last_layer = 1, .k_pivotal = 2, .complementary_layer = 1, .mode = freepruner::mode::fixed, .budget = 10}, out); },
         errc::invalid_argument, "freepruner.budget");
  expect_error([&] { freepruner::select(cuda_policy{nullptr, fake_device_pointer<void>(), need - 1}, stack, cfg, out); },
         errc::invalid_argument, "freepruner.policy.workspace_bytes");
  // Ragged: per-sample checks.
  const std::vector<head_attention_view<__half>> s0{layer[0], layer[0]};
  const std::vector<head_attention_view<__half>> s1{layer[0], head_attention_view<__half>(fake_device_pointer<const __half>(), {0, 10, 10})};
  const std::vector<freepruner::device_layer_stack<__half>> ragged{{s0, 0}, {s1, 0}};
  expect_error([&] { freepruner::select(policy, std::span<const freepruner::device_layer_stack<__half>>(ragged), cfg, out); },
         errc::shape_mismatch, "freepruner.attention[layer 1].extent(0)");
}

// ---- device-only behaviour ------------------------------------------------------------------

TEST(CudaFreePruner, NonFiniteNamesLayerAndSample) {
  TOKENSEL_REQUIRE_DEVICE();
  std::mt19937_64 rng(37);
  const index_t B = 2, H = 2, N = 12;
  const layout_info li = make_layout(layout::contiguous, B, H, N, N);
  std::vector<device_buffer<float>> bufs;
  std::vector<attention_view<float>> layers;
  for (int l = 0; l < 3; ++l) {
    std::vector<float> h(li.elements);
    fill_attention(h, li, B, H, N, N, values::softmax, rng);
    if (l == 1) h[static_cast<std::size_t>(1 * li.strides[0] + 0 * li.strides[1] + 3 * li.strides[2] + 5)] = INFINITY;
    bufs.push_back(to_device(h));
    layers.emplace_back(bufs.back().data(), std::array<index_t, 4>{B, H, N, N});
  }
  const freepruner::config cfg{.first_layer = 0, .last_layer = 2, .k_pivotal = 2, .complementary_layer = 2};
  const freepruner::device_batch_layer_stack<float> stack{std::span<const attention_view<float>>(layers), 0};
  device_buffer<token_index> idx(static_cast<std::size_t>(B * (N - 1))), cnt(2);
  workspace ws(freepruner::workspace_size(stack, cfg));
  freepruner::select(ws.policy, stack, cfg,
                     selection_batch{tensor_view<token_index, 2>(idx.data(), {B, N - 1}), std::span<token_index>(cnt.data(), 2)});
  const cuda_status st = status(ws.policy);
  ASSERT_FALSE(st.ok);
  EXPECT_EQ(st.code, errc::non_finite);
  EXPECT_EQ(st.sample, 1);
  EXPECT_EQ(st.layer, 1);
  EXPECT_EQ(st.index, 4);  // patch column 4 = token column 5
  EXPECT_EQ(cnt.download()[1], 0);
  EXPECT_GT(cnt.download()[0], 0);
}
