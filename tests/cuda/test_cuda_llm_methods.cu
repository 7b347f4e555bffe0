// CUDA backend: the methods that run inside the LLM, FastV and FitPrune's runtime step. Parity
// with the CPU backend (indices, counts, masses bit for bit) on random prefill maps of every dtype,
// layout and tie pattern, uniform and ragged batches; host validation; NaN reporting.
#include "cuda_test_util.cuh"

#include <span>
#include <vector>

#include "tokensel/cuda/methods/fastv.cuh"
#include "tokensel/cuda/methods/fitprune.cuh"
#include "tokensel/methods/fastv.hpp"
#include "tokensel/methods/fitprune.hpp"

using namespace tokensel;
using namespace tokensel_test;

namespace {

index_t pick(std::mt19937_64& rng, index_t lo, index_t hi) { return std::uniform_int_distribution<index_t>(lo, hi)(rng); }

/// A prefill sequence of L tokens with a visual span inside it.
struct sequence {
  index_t L;
  token_range visual;
};

sequence random_sequence(std::mt19937_64& rng) {
  const int size_class = static_cast<int>(pick(rng, 0, 19));
  index_t n = size_class == 0 ? 0 : (size_class == 1 ? 576 : (size_class < 10 ? pick(rng, 1, 40) : pick(rng, 41, 300)));
  const index_t prefix = pick(rng, 0, 40), text = pick(rng, 0, 30);
  return {prefix + n + text, token_range{prefix, n}};
}

// ---- FastV ----

template <class E, bool Native>
void fastv_case(std::mt19937_64& rng, const std::string& label) {
  using D = device_t<E, Native>;
  fastv::config cfg;
  const int r = static_cast<int>(pick(rng, 0, 5));
  cfg.ratio = r == 0 ? 0.0 : (r == 1 ? 0.5 : std::uniform_real_distribution<double>(0.0, 0.999)(rng));
  cfg.heads = static_cast<head_reduction>(pick(rng, 0, 2));
  const bool uniform = pick(rng, 0, 1) == 0;
  const index_t B = uniform ? pick(rng, 1, 3) : pick(rng, 1, 5);
  const bool last_row_only = pick(rng, 0, 2) == 0;
  std::vector<sequence> seqs;
  std::vector<index_t> q, k;
  for (index_t b = 0; b < B; ++b) {
    seqs.push_back(uniform && b > 0 ? seqs[0] : random_sequence(rng));
    q.push_back(last_row_only ? 1 : seqs.back().L);
    k.push_back(seqs.back().L);
  }
  const attention_batch<E> batch(uniform, pick(rng, 1, 12), q, k, static_cast<layout>(pick(rng, 0, 2)),
                                 static_cast<values>(pick(rng, 0, 3)), rng);
  index_t capacity = 1;
  for (const auto& s : seqs) capacity = std::max(capacity, fastv::keep_count(s.visual.count, cfg));
  std::vector<std::vector<token_index>> want;
  std::vector<fastv::result> want_res;
  for (index_t b = 0; b < B; ++b) {
    std::vector<token_index> o(static_cast<std::size_t>(capacity));
    want_res.push_back(fastv::select(seq, batch.host_view(b), seqs[static_cast<std::size_t>(b)].visual, cfg, std::span<token_index>(o)));
    o.resize(static_cast<std::size_t>(want_res.back().count));
    want.push_back(o);
  }
  device_selection out(B, capacity);
  device_buffer<fastv::result> res(static_cast<std::size_t>(B));
  const std::span<fastv::result> rs(res.data(), static_cast<std::size_t>(B));
  cuda_status st;
  if (uniform) {
    const auto view = batch.template device_batch<D>();
    workspace ws(fastv::workspace_size(view, seqs[0].visual, cfg));
    fastv::select(ws.policy, view, seqs[0].visual, cfg, out.view(), rs);
    st = status(ws.policy);
  } else {
    const auto views = batch.template device_samples<D>();
    std::vector<token_range> vis;
    for (const auto& s : seqs) vis.push_back(s.visual);
    const std::span<const head_attention_view<D>> vs(views);
    workspace ws(fastv::workspace_size(vs, std::span<const token_range>(vis), cfg));
    fastv::select(ws.policy, vs, std::span<const token_range>(vis), cfg, out.view(), rs);
    st = status(ws.policy);
  }
  ASSERT_TRUE(st.ok) << label << ": " << st.message;
  const auto rows = out.rows();
  const auto got = res.download();
  for (index_t b = 0; b < B; ++b) {
    const auto i = static_cast<std::size_t>(b);
    ASSERT_EQ(rows[i], want[i]) << label << " sample " << b;
    EXPECT_EQ(got[i].count, want_res[i].count) << label;
    EXPECT_EQ(got[i].visual_mass, want_res[i].visual_mass) << label;
    EXPECT_EQ(got[i].kept_mass, want_res[i].kept_mass) << label;
  }
}

// ---- FitPrune ----

template <class E, bool Native>
void fitprune_case(std::mt19937_64& rng, const std::string& label) {
  using D = device_t<E, Native>;
  fitprune::config cfg;
  if (pick(rng, 0, 3) == 0) cfg.heads = static_cast<head_reduction>(pick(rng, 0, 2));
  const bool uniform = pick(rng, 0, 1) == 0;
  const index_t B = uniform ? pick(rng, 1, 3) : pick(rng, 1, 5);
  std::vector<sequence> seqs;
  std::vector<index_t> drops, L;
  for (index_t b = 0; b < B; ++b) {
    seqs.push_back(uniform && b > 0 ? seqs[0] : random_sequence(rng));
    const index_t n = seqs.back().visual.count;
    const int d = static_cast<int>(pick(rng, 0, 5));
    drops.push_back(uniform && b > 0 ? drops[0] : (d == 0 ? 0 : (d == 1 ? n : pick(rng, 0, n))));
    L.push_back(seqs.back().L);
  }
  if (uniform) {
    for (auto& d : drops) d = std::min(d, seqs[0].visual.count);
  }
  const attention_batch<E> batch(uniform, pick(rng, 1, 12), L, L, static_cast<layout>(pick(rng, 0, 2)),
                                 static_cast<values>(pick(rng, 0, 3)), rng);
  index_t capacity = 1;
  for (index_t b = 0; b < B; ++b) capacity = std::max(capacity, seqs[static_cast<std::size_t>(b)].visual.count - drops[static_cast<std::size_t>(b)]);
  std::vector<std::vector<token_index>> want;
  std::vector<fitprune::layer_result> want_res;
  for (index_t b = 0; b < B; ++b) {
    const auto i = static_cast<std::size_t>(b);
    std::vector<token_index> o(static_cast<std::size_t>(capacity));
    want_res.push_back(fitprune::prune_layer(seq, batch.host_view(b), seqs[i].visual, drops[i], cfg, std::span<token_index>(o)));
    o.resize(static_cast<std::size_t>(want_res.back().count));
    want.push_back(o);
  }
  device_selection out(B, capacity);
  device_buffer<fitprune::layer_result> res(static_cast<std::size_t>(B));
  const std::span<fitprune::layer_result> rs(res.data(), static_cast<std::size_t>(B));
  cuda_status st;
  if (uniform) {
    const auto view = batch.template device_batch<D>();
    workspace ws(fitprune::workspace_size(view, seqs[0].visual, drops[0]));
    fitprune::prune_layer(ws.policy, view, seqs[0].visual, drops[0], cfg, out.view(), rs);
    st = status(ws.policy);
  } else {
    const auto views = batch.template device_samples<D>();
    std::vector<token_range> vis;
    for (const auto& s : seqs) vis.push_back(s.visual);
    const std::span<const head_attention_view<D>> vs(views);
    workspace ws(fitprune::workspace_size(vs, std::span<const token_range>(vis), std::span<const index_t>(drops)));
    fitprune::prune_layer(ws.policy, vs, std::span<const token_range>(vis), std::span<const index_t>(drops), cfg, out.view(), rs);
    st = status(ws.policy);
  }
  ASSERT_TRUE(st.ok) << label << ": " << st.message;
  const auto rows = out.rows();
  const auto got = res.download();
  for (index_t b = 0; b < B; ++b) {
    const auto i = static_cast<std::size_t>(b);
    ASSERT_EQ(rows[i], want[i]) << label << " sample " << b;
    EXPECT_EQ(got[i].count, want_res[i].count) << label;
    EXPECT_EQ(got[i].dropped, want_res[i].dropped) << label;
    EXPECT_EQ(got[i].cross_mass, want_res[i].cross_mass) << label;
    EXPECT_EQ(got[i].self_mass, want_res[i].self_mass) << label;
  }
}

template <class E, bool Native>
void run_cases(int cases, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (int c = 0; c < parity_cases(cases); ++c) {
    parity_case(c);
    const std::string label = std::string(element_name<E>()) + (Native ? "" : "(eigen)") + " case " + std::to_string(c);
    fastv_case<E, Native>(rng, "fastv " + label);
    if (::testing::Test::HasFatalFailure()) return;
    fitprune_case<E, Native>(rng, "fitprune " + label);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

}  // namespace

TEST(CudaLlmMethods, ParityFloat) {
  TOKENSEL_REQUIRE_DEVICE();
  run_cases<float, true>(400, 41);
}
TEST(CudaLlmMethods, ParityHalf) {
  TOKENSEL_REQUIRE_DEVICE();
  run_cases<Eigen::half, true>(350, 42);
  run_cases<Eigen::half, false>(50, 43);
}
TEST(CudaLlmMethods, ParityBfloat16) {
  TOKENSEL_REQUIRE_DEVICE();
  run_cases<Eigen::bfloat16, true>(350, 44);
  run_cases<Eigen::bfloat16, false>(50, 45);
}

TEST(CudaLlmMethods, HostValidation) {
  const attention_view<__half> a(fake_device_pointer<const __half>(), {2, 4, 50, 50});
  const selection_batch out{tensor_view<token_index, 2>(fake_device_pointer<token_index>(), {2, 20}),
                            std::span<token_index>(fake_device_pointer<token_index>(), 2)};
  const token_range visual{5, 40};
  const cuda_policy big{nullptr, fake_device_pointer<void>(), std::size_t{1} << 30};
  expect_error([&] { fastv::select(big, a, visual, fastv::config{.ratio = 1.0}, out); }, errc::invalid_argument, "fastv.ratio");
  expect_error([&] { fastv::select(big, a, token_range{20, 40}, fastv::config{}, out); }, errc::invalid_argument, "fastv.visual");
  expect_error([&] { fastv::select(big, a, visual, fastv::config{.ratio = 0.4}, out); }, errc::shape_mismatch, "fastv.out.size()");
  expect_error([&] {
    const std::vector<head_attention_view<__half>> two{a[0], a[1]};
    const std::vector<token_range> one{visual};
    fastv::select(big, std::span<const head_attention_view<__half>>(two), std::span<const token_range>(one), fastv::config{}, out);
  }, errc::shape_mismatch, "fastv.visual.size()");
  expect_error([&] { fastv::select(cuda_policy{nullptr, fake_device_pointer<void>(), 8}, a, visual, fastv::config{}, out); },
         errc::invalid_argument, "fastv.policy.workspace_bytes");
  expect_error([&] { fitprune::prune_layer(big, a, visual, 41, fitprune::config{}, out); }, errc::invalid_argument, "fitprune.drop");
  expect_error([&] { fitprune::prune_layer(big, a, visual, 10, fitprune::config{}, out); }, errc::shape_mismatch, "fitprune.kept.size()");
  expect_error([&] {
    const attention_view<__half> rect(fake_device_pointer<const __half>(), {2, 4, 49, 50});
    fitprune::prune_layer(big, rect, visual, 30, fitprune::config{}, out);
  }, errc::shape_mismatch, "fitprune.attention");
  expect_error([&] {
    const attention_view<__half> none(fake_device_pointer<const __half>(), {2, 0, 50, 50});
    fitprune::prune_layer(big, none, visual, 30, fitprune::config{}, out);
  }, errc::shape_mismatch, "attention.extent(0)");
  // drop = 0 reads no attention: heads = 0 is then fine, as on the CPU.
  EXPECT_GT(fitprune::workspace_size(a, visual, 0), 0u);
}

TEST(CudaLlmMethods, NonFiniteIsReported) {
  TOKENSEL_REQUIRE_DEVICE();
  std::mt19937_64 rng(46);
  attention_batch<float> batch(true, 2, {60, 60}, {60, 60}, layout::contiguous, values::softmax, rng);
  batch.poke(1, 1, 59, 20, NAN);  // last query row, visual column 20 - 10
  const token_range visual{10, 40};
  device_selection out(2, 20);
  const auto view = batch.device_batch<float>();
  workspace ws(fastv::workspace_size(view, visual, fastv::config{}));
  fastv::select(ws.policy, view, visual, fastv::config{}, out.view());
  const cuda_status st = status(ws.policy);
  ASSERT_FALSE(st.ok);
  EXPECT_EQ(st.code, errc::non_finite);
  EXPECT_EQ(st.sample, 1);
  EXPECT_EQ(st.parameter, "attention[59, 20]");
  EXPECT_EQ(out.cnt.download()[1], 0);
  EXPECT_EQ(out.cnt.download()[0], 20);
  // FitPrune reads the same value (text row 59 over the visual columns).
  device_selection kept(2, 40);
  workspace ws2(fitprune::workspace_size(view, visual, 5));
  fitprune::prune_layer(ws2.policy, view, visual, 5, fitprune::config{}, kept.view());
  const cuda_status st2 = status(ws2.policy);
  ASSERT_FALSE(st2.ok);
  EXPECT_EQ(st2.sample, 1);
  EXPECT_EQ(st2.parameter, "attention[59, 20]");
}
