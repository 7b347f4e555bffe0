// CUDA backend: single-sample overloads (fopru, fastv, fitprune::prune_layer, freePruner,
// VisionZip, PruMerge, random, uniform, pool). Each runs the batched path on a batch of one with
// its count in a workspace slot (detail/single.cuh). Host tests (run everywhere): workspace sizes
// and argument checks. Device tests (skip without a GPU): the single call writes exactly what the
// batch-of-1 call writes (indices, count, result bytes).
#include "cuda_test_util.cuh"

#include <cstring>
#include <span>
#include <vector>

#include "tokensel/cuda/methods/baselines.cuh"
#include "tokensel/cuda/detail/single.cuh"
#include "tokensel/cuda/methods/fastv.cuh"
#include "tokensel/cuda/methods/fitprune.cuh"
#include "tokensel/cuda/methods/fopru.cuh"
#include "tokensel/cuda/methods/freepruner.cuh"
#include "tokensel/cuda/methods/prumerge.cuh"
#include "tokensel/cuda/methods/visionzip.cuh"

using namespace tokensel;
using namespace tokensel_test;

namespace {

constexpr std::size_t align = cuda_detail::workspace_plan::alignment;


/// single_bytes(batch) is the batch-of-1 layout rounded to the alignment plus one count.
void expect_single(std::size_t single, std::size_t batch) {
  EXPECT_EQ(single, (batch + align - 1) / align * align + sizeof(token_index));
  EXPECT_GT(single, batch);
}

/// Compares the single call's output (row, count from the device result, result bytes) with the
/// batch-of-1 call's (row, counts[0], results[0]).
template <class Result>
void expect_same(const device_buffer<token_index>& single_out, const device_buffer<Result>& single_res,
                 const device_selection& batch_out, const device_buffer<Result>& batch_res, const std::string& label) {
  const auto rows = batch_out.rows();
  ASSERT_EQ(rows.size(), 1u) << label;
  const auto got = single_out.download();
  const auto res = single_res.download();
  const auto want_res = batch_res.download();
  ASSERT_EQ(static_cast<std::size_t>(res[0].count), rows[0].size()) << label;
  EXPECT_EQ(std::vector<token_index>(got.begin(), got.begin() + static_cast<std::ptrdiff_t>(rows[0].size())), rows[0]) << label;
  EXPECT_EQ(std::memcmp(&res[0], &want_res[0], sizeof(Result)), 0) << label;
}

}  // namespace

TEST(CudaSingle, SlotLayout) {
  EXPECT_EQ(cuda_detail::single_count_offset(0), 0u);
  EXPECT_EQ(cuda_detail::single_count_offset(1), align);
  EXPECT_EQ(cuda_detail::single_count_offset(align), align);
  EXPECT_EQ(cuda_detail::single_bytes(300), 2 * align + sizeof(token_index));
  // The slot sits right after the batch-of-1 layout in the caller's workspace.
  const cuda_policy p{nullptr, fake_device_pointer<void>(), 4096};
  std::vector<token_index> host_row(3);
  const selection_batch s = cuda_detail::single_output(p, 300, std::span<token_index>(host_row), "m");
  EXPECT_EQ(s.indices.extent(0), 1);
  EXPECT_EQ(s.indices.extent(1), 3);
  EXPECT_EQ(s.indices.data(), host_row.data());
  ASSERT_EQ(s.counts.size(), 1u);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(s.counts.data()), 0x100000u + 2 * align);
  expect_error([&] { (void)cuda_detail::single_output(cuda_policy{nullptr, fake_device_pointer<void>(), 2 * align + 3}, 300, std::span<token_index>(host_row), "m"); },
               errc::invalid_argument, "m.policy.workspace_bytes");
  expect_error([&] { (void)cuda_detail::single_output(cuda_policy{}, 300, std::span<token_index>(host_row), "m"); },
               errc::invalid_argument, "m.policy.workspace");
}

TEST(CudaSingle, WorkspaceSizes) {
  using H = __half;
  const head_attention_view<H> a(fake_device_pointer<const H>(), {4, 50, 50});
  const std::span<const head_attention_view<H>> one(&a, 1);
  expect_single(fopru::workspace_size(a, fopru::config{}), fopru::workspace_size(one, fopru::config{}));
  const token_range visual{5, 30};
  expect_single(fastv::workspace_size(a, visual, fastv::config{}),
                fastv::workspace_size(one, std::span<const token_range>(&visual, 1), fastv::config{}));
  const index_t drop = 7;
  expect_single(fitprune::workspace_size(a, visual, drop),
                fitprune::workspace_size(one, std::span<const token_range>(&visual, 1), std::span<const index_t>(&drop, 1)));
  std::vector<head_attention_view<H>> layers(23, a);
  const freepruner::device_layer_stack<H> stack{std::span<const head_attention_view<H>>(layers), 0};
  expect_single(freepruner::workspace_size(stack, freepruner::config{}),
                freepruner::workspace_size(std::span<const freepruner::device_layer_stack<H>>(&stack, 1), freepruner::config{}));
  const tensor_view<const H, 3> keys(fake_device_pointer<const H>(), {2, 50, 16});
  const visionzip::config vz{.dominant = 10, .contextual = 5};
  expect_single(visionzip::workspace_size(a, keys, vz),
                visionzip::workspace_size(one, std::span<const tensor_view<const H, 3>>(&keys, 1), vz));
  const matrix_view<const float> q(fake_device_pointer<const float>(), {1, 40}), k(fake_device_pointer<const float>(), {50, 40});
  const prumerge::qk_input<float> in{q, k};
  expect_single(prumerge::workspace_size(q, k, prumerge::config{}),
                prumerge::workspace_size(std::span<const prumerge::qk_input<float>>(&in, 1), prumerge::config{}));
  const matrix_view<const float> x(fake_device_pointer<const float>(), {49, 8});
  expect_single(prumerge::workspace_size(q, k, x, prumerge::config{}),
                prumerge::workspace_size(std::span<const prumerge::qk_input<float>>(&in, 1),
                                         std::span<const matrix_view<const float>>(&x, 1), prumerge::config{}));
  const index_t n = 50;
  expect_single(baselines::random::workspace_size(n), baselines::random::workspace_size(std::span<const index_t>(&n, 1)));
  expect_single(baselines::uniform::workspace_size(n), baselines::uniform::workspace_size());
  expect_single(baselines::uniform::workspace_size(token_grid{5, 10}), baselines::uniform::workspace_size());
  // Bad configurations are reported by the size functions too.
  EXPECT_THROW((void)fopru::workspace_size(a, fopru::config{.ratio = 1.5}), error);
  EXPECT_THROW((void)visionzip::workspace_size(a, keys, visionzip::config{.dominant = 0}), error);
}

TEST(CudaSingle, HostValidation) {
  using H = __half;
  const head_attention_view<H> a(fake_device_pointer<const H>(), {4, 50, 50});
  const cuda_policy big{nullptr, fake_device_pointer<void>(), std::size_t{1} << 30};
  const cuda_policy small{nullptr, fake_device_pointer<void>(), 16};
  const std::span<token_index> out(fake_device_pointer<token_index>(), 64), short_out(fake_device_pointer<token_index>(), 3);
  // Arguments: the batched call's checks and messages.
  expect_error([&] { fopru::select(big, a, fopru::config{.ratio = 1.5}, out); }, errc::invalid_argument, "fopru.ratio");
  expect_error([&] { fopru::select(big, a, fopru::config{}, short_out); }, errc::shape_mismatch, "fopru.out.size()");
  expect_error([&] { fastv::select(big, a, token_range{5, 30}, fastv::config{}, short_out); }, errc::shape_mismatch, "fastv.out.size()");
  expect_error([&] { fitprune::prune_layer(big, a, token_range{5, 30}, 40, fitprune::config{}, out); }, errc::invalid_argument,
               "fitprune.drop");
  const tensor_view<const H, 3> keys(fake_device_pointer<const H>(), {2, 50, 16});
  const tensor_view<const float, 2> hidden(fake_device_pointer<const float>(), {50, 6});
  const tensor_view<float, 2> feats(fake_device_pointer<float>(), {15, 6});
  expect_error([&] { visionzip::select(big, a, keys, hidden, visionzip::config{.dominant = 10, .contextual = 5}, short_out, feats); },
               errc::shape_mismatch, "visionzip.out.size()");
  expect_error([&] { visionzip::select(big, a, keys, tensor_view<const float, 2>(fake_device_pointer<const float>(), {49, 6}),
                                       visionzip::config{.dominant = 10, .contextual = 5}, out, feats); },
               errc::shape_mismatch, "visionzip.hidden.extent(0)");
  expect_error([&] { baselines::random::select(big, 50, baselines::random::config{.ratio = 0.5}, short_out); },
               errc::shape_mismatch, "random.out.size()");
  expect_error([&] { baselines::uniform::select(big, token_grid{5, 10}, baselines::uniform::config{.ratio = 0.5}, short_out); },
               errc::shape_mismatch, "uniform.out.size()");
  // Workspaces: the count slot must fit.
  expect_error([&] { fopru::select(small, a, fopru::config{}, out); }, errc::invalid_argument, "fopru.policy.workspace_bytes");
  expect_error([&] { fastv::select(cuda_policy{}, a, token_range{5, 30}, fastv::config{}, out); }, errc::invalid_argument,
               "fastv.policy.workspace");
  expect_error([&] { fitprune::prune_layer(small, a, token_range{5, 30}, 3, fitprune::config{}, out); }, errc::invalid_argument,
               "fitprune.policy.workspace_bytes");
  expect_error([&] { visionzip::select(small, a, keys, hidden, visionzip::config{.dominant = 10, .contextual = 5}, out, feats); },
               errc::invalid_argument, "visionzip.policy.workspace_bytes");
  const matrix_view<const float> q(fake_device_pointer<const float>(), {1, 40}), k(fake_device_pointer<const float>(), {50, 40});
  expect_error([&] { prumerge::select(small, q, k, prumerge::config{}, out); }, errc::invalid_argument, "prumerge.policy.workspace_bytes");
  expect_error([&] { baselines::random::select(small, 50, baselines::random::config{.ratio = 0.5}, out); }, errc::invalid_argument,
               "random.policy.workspace_bytes");
  // Exactly the reported size is enough for the slot (the call then gets as far as its launch
  // checks; a smaller one is not).
  const std::size_t need = fopru::workspace_size(a, fopru::config{});
  expect_error([&] { fopru::select(cuda_policy{nullptr, fake_device_pointer<void>(), need - 1}, a, fopru::config{}, out); },
               errc::invalid_argument, "fopru.policy.workspace_bytes");
}

// ---- device: single call == batch-of-1 call ----------------------------------------------------

TEST(CudaSingle, MapMethodsEqualBatchOfOne) {
  TOKENSEL_REQUIRE_DEVICE();
  using D = __half;
  std::mt19937_64 rng(91);
  for (int c = 0; c < parity_cases(40); ++c) {
    parity_case(c);
    const index_t n = std::uniform_int_distribution<index_t>(10, 120)(rng);
    const attention_batch<Eigen::half> attn(false, 4, {n}, {n}, static_cast<layout>(c % 3), static_cast<values>(c % 4), rng);
    const auto views = attn.device_samples<D>();
    const std::span<const head_attention_view<D>> one(views);
    const std::string label = "case " + std::to_string(c) + " n " + std::to_string(n);
    {  // fopru
      const fopru::config cfg{.ratio = 0.3};
      device_buffer<token_index> o(static_cast<std::size_t>(n));
      device_buffer<fopru::result> r(1), br(1);
      workspace ws(fopru::workspace_size(views[0], cfg)), wb(fopru::workspace_size(one, cfg));
      fopru::select(ws.policy, views[0], cfg, std::span<token_index>(o.data(), o.size()), r.data());
      device_selection bo(1, n);
      fopru::select(wb.policy, one, cfg, bo.view(), std::span<fopru::result>(br.data(), 1));
      ASSERT_TRUE(status(ws.policy).ok);
      expect_same(o, r, bo, br, "fopru " + label);
    }
    {  // fastv
      const token_range visual{1, n - 3};
      const fastv::config cfg{.ratio = 0.5};
      device_buffer<token_index> o(static_cast<std::size_t>(n));
      device_buffer<fastv::result> r(1), br(1);
      workspace ws(fastv::workspace_size(views[0], visual, cfg)),
          wb(fastv::workspace_size(one, std::span<const token_range>(&visual, 1), cfg));
      fastv::select(ws.policy, views[0], visual, cfg, std::span<token_index>(o.data(), o.size()), r.data());
      device_selection bo(1, n);
      fastv::select(wb.policy, one, std::span<const token_range>(&visual, 1), cfg, bo.view(), std::span<fastv::result>(br.data(), 1));
      ASSERT_TRUE(status(ws.policy).ok);
      expect_same(o, r, bo, br, "fastv " + label);
    }
    {  // fitprune
      const token_range visual{2, n - 4};
      const index_t drop = visual.count / 3;
      device_buffer<token_index> o(static_cast<std::size_t>(n));
      device_buffer<fitprune::layer_result> r(1), br(1);
      workspace ws(fitprune::workspace_size(views[0], visual, drop)),
          wb(fitprune::workspace_size(one, std::span<const token_range>(&visual, 1), std::span<const index_t>(&drop, 1)));
      fitprune::prune_layer(ws.policy, views[0], visual, drop, fitprune::config{}, std::span<token_index>(o.data(), o.size()), r.data());
      device_selection bo(1, n);
      fitprune::prune_layer(wb.policy, one, std::span<const token_range>(&visual, 1), std::span<const index_t>(&drop, 1),
                            fitprune::config{}, bo.view(), std::span<fitprune::layer_result>(br.data(), 1));
      ASSERT_TRUE(status(ws.policy).ok);
      expect_same(o, r, bo, br, "fitprune " + label);
    }
    {  // freepruner: every layer the same map (layers 0..3)
      const freepruner::config cfg{.first_layer = 1, .last_layer = 2, .k_pivotal = 3, .complementary_layer = 3};
      std::vector<head_attention_view<D>> layers(4, views[0]);
      const freepruner::device_layer_stack<D> stack{std::span<const head_attention_view<D>>(layers), 0};
      device_buffer<token_index> o(static_cast<std::size_t>(n));
      device_buffer<freepruner::result> r(1), br(1);
      const std::span<const freepruner::device_layer_stack<D>> bs(&stack, 1);
      workspace ws(freepruner::workspace_size(stack, cfg)), wb(freepruner::workspace_size(bs, cfg));
      freepruner::select(ws.policy, stack, cfg, std::span<token_index>(o.data(), o.size()), r.data());
      device_selection bo(1, n);
      freepruner::select(wb.policy, bs, cfg, bo.view(), std::span<freepruner::result>(br.data(), 1));
      ASSERT_TRUE(status(ws.policy).ok);
      expect_same(o, r, bo, br, "freepruner " + label);
    }
  }
}

TEST(CudaSingle, FeatureMethodsEqualBatchOfOne) {
  TOKENSEL_REQUIRE_DEVICE();
  std::mt19937_64 rng(92);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int c = 0; c < parity_cases(30); ++c) {
    parity_case(c);
    const index_t n = std::uniform_int_distribution<index_t>(20, 100)(rng), dh = 16, d = 12;
    const std::string label = "case " + std::to_string(c);
    std::vector<float> keys(static_cast<std::size_t>(2 * n * dh)), hidden(static_cast<std::size_t>(n * d));
    for (auto& x : keys) x = normal(rng);
    for (auto& x : hidden) x = normal(rng);
    auto dk = to_device(keys);
    auto dhid = to_device(hidden);
    {  // visionzip
      const attention_batch<float> attn(false, 3, {n}, {n}, layout::padded_rows, values::softmax, rng);
      const auto views = attn.device_samples<float>();
      const visionzip::config cfg{.dominant = 8, .contextual = 4};
      const tensor_view<const float, 3> kv(dk.data(), {2, n, dh});
      const tensor_view<const float, 2> hv(dhid.data(), {n, d});
      device_buffer<float> f1(static_cast<std::size_t>(12 * d)), f2(static_cast<std::size_t>(12 * d));
      device_buffer<token_index> o(12);
      device_buffer<visionzip::result> r(1), br(1);
      workspace ws(visionzip::workspace_size(views[0], kv, cfg)),
          wb(visionzip::workspace_size(std::span<const head_attention_view<float>>(views), std::span<const tensor_view<const float, 3>>(&kv, 1), cfg));
      visionzip::select(ws.policy, views[0], kv, hv, cfg, std::span<token_index>(o.data(), 12), tensor_view<float, 2>(f1.data(), {12, d}), r.data());
      device_selection bo(1, 12);
      const tensor_view<float, 2> fb(f2.data(), {12, d});
      visionzip::select(wb.policy, std::span<const head_attention_view<float>>(views), std::span<const tensor_view<const float, 3>>(&kv, 1),
                        std::span<const tensor_view<const float, 2>>(&hv, 1), cfg, bo.view(), std::span<const tensor_view<float, 2>>(&fb, 1),
                        std::span<visionzip::result>(br.data(), 1));
      ASSERT_TRUE(status(ws.policy).ok);
      expect_same(o, r, bo, br, "visionzip " + label);
      EXPECT_EQ(f1.download(), f2.download()) << label;
    }
    {  // prumerge (selection and merge), from Q/K
      const prumerge::config cfg{.neighbours = 4};
      const matrix_view<const float> q(dk.data(), {1, dh}), k(dk.data(), {n, dh});
      const matrix_view<const float> x(dhid.data() + d, {n - 1, d});
      const index_t rows = prumerge::max_rows(n - 1, cfg);
      device_buffer<float> m1(static_cast<std::size_t>(rows * d)), m2(static_cast<std::size_t>(rows * d));
      device_buffer<token_index> o(static_cast<std::size_t>(n));
      device_buffer<prumerge::result> r(1), br(1);
      const prumerge::qk_input<float> in{q, k};
      const std::span<const prumerge::qk_input<float>> bs(&in, 1);
      workspace ws(prumerge::workspace_size(q, k, x, cfg)), wb(prumerge::workspace_size(bs, std::span<const matrix_view<const float>>(&x, 1), cfg));
      prumerge::select(ws.policy, q, k, x, cfg, std::span<token_index>(o.data(), o.size()), matrix_view<float>(m1.data(), {rows, d}), r.data());
      device_selection bo(1, n);
      const matrix_view<float> mb(m2.data(), {rows, d});
      prumerge::select(wb.policy, bs, std::span<const matrix_view<const float>>(&x, 1), cfg, bo.view(),
                       std::span<const matrix_view<float>>(&mb, 1), std::span<prumerge::result>(br.data(), 1));
      ASSERT_TRUE(status(ws.policy).ok);
      expect_same(o, r, bo, br, "prumerge " + label);
      EXPECT_EQ(m1.download(), m2.download()) << label;
    }
  }
}

TEST(CudaSingle, BaselinesEqualBatchOfOne) {
  TOKENSEL_REQUIRE_DEVICE();
  for (index_t n : {0, 1, 17, 576}) {
    const std::string label = "n " + std::to_string(n);
    const std::size_t cap = static_cast<std::size_t>(std::max<index_t>(n, 1));
    {  // random, stream 3: the batch-of-4 call's sample 3
      const baselines::random::config cfg{.ratio = 0.25, .seed = 99};
      device_buffer<token_index> o(cap);
      device_buffer<baselines::random::result> r(1);
      workspace ws(baselines::random::workspace_size(n));
      baselines::random::select(ws.policy, n, cfg, std::span<token_index>(o.data(), cap), 3, r.data());
      const std::vector<index_t> ns(4, n);
      device_selection bo(4, static_cast<index_t>(cap));
      workspace wb(baselines::random::workspace_size(std::span<const index_t>(ns)));
      baselines::random::select(wb.policy, std::span<const index_t>(ns), cfg, bo.view());
      ASSERT_TRUE(status(ws.policy).ok);
      const auto rows = bo.rows();
      const auto got = o.download();
      ASSERT_EQ(static_cast<std::size_t>(r.download()[0].count), rows[3].size()) << label;
      EXPECT_EQ(std::vector<token_index>(got.begin(), got.begin() + static_cast<std::ptrdiff_t>(rows[3].size())), rows[3]) << label;
    }
    {  // uniform over a 1 x n sequence
      const baselines::uniform::config cfg{.ratio = 0.3};
      device_buffer<token_index> o(cap);
      device_buffer<baselines::uniform::result> r(1), br(1);
      workspace ws(baselines::uniform::workspace_size(n)), wb(baselines::uniform::workspace_size());
      baselines::uniform::select(ws.policy, n, cfg, std::span<token_index>(o.data(), cap), r.data());
      device_selection bo(1, static_cast<index_t>(cap));
      baselines::uniform::select(wb.policy, std::span<const index_t>(&n, 1), cfg, bo.view(), std::span<baselines::uniform::result>(br.data(), 1));
      ASSERT_TRUE(status(ws.policy).ok);
      expect_same(o, r, bo, br, "uniform " + label);
    }
  }
}
