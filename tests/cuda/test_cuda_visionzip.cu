// CUDA backend: VisionZip. Parity with the CPU backend (indices, merged feature rows bit for bit,
// statistics) on random batches; host validation (runs without a GPU); NaN reporting.
#include "cuda_test_util.cuh"

#include <span>
#include <vector>

#include "tokensel/cuda/methods/visionzip.cuh"
#include "tokensel/methods/visionzip.hpp"

using namespace tokensel;
using namespace tokensel_test;

namespace {

index_t pick(std::mt19937_64& rng, index_t lo, index_t hi) { return std::uniform_int_distribution<index_t>(lo, hi)(rng); }

template <class E, class O>
void visionzip_case(std::mt19937_64& rng, const std::string& label, index_t forced_n = -1) {
  using D = cuda_detail::device_type_t<E>;
  using OD = cuda_detail::device_type_t<O>;
  const index_t B = pick(rng, 1, 3);
  const index_t n = forced_n >= 0 ? forced_n : (pick(rng, 0, 9) == 0 ? pick(rng, 1, 3) : pick(rng, 2, 200));
  visionzip::config cfg;
  cfg.dominant = pick(rng, 1, std::max<index_t>(1, n));
  cfg.contextual = pick(rng, 0, n - cfg.dominant);
  if (forced_n == 577) cfg = visionzip::config{};  // 54 + 10
  const index_t heads = pick(rng, 1, 16), kheads = pick(rng, 1, 4), dh = pick(rng, 1, 80), d = pick(rng, 1, 96);
  const bool cls_only = pick(rng, 0, 2) == 0;
  const attention_batch<E> attn(true, heads, std::vector<index_t>(static_cast<std::size_t>(B), cls_only ? 1 : n),
                                std::vector<index_t>(static_cast<std::size_t>(B), n), static_cast<layout>(pick(rng, 0, 2)),
                                static_cast<values>(pick(rng, 0, 3)), rng);
  // keys [B, kheads, n, dh] and hidden [B, n, d]: random normal (ties among keys from quantised values).
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const bool coarse = pick(rng, 0, 3) == 0;
  std::vector<E> keys(static_cast<std::size_t>(B * kheads * n * dh)), hidden(static_cast<std::size_t>(B * n * d));
  for (auto& x : keys) x = to_storage<E>(coarse ? std::round(normal(rng)) : normal(rng));
  for (auto& x : hidden) x = to_storage<E>(normal(rng));
  auto dkeys = to_device(keys);
  auto dhidden = to_device(hidden);
  const index_t k = visionzip::keep_count(n, cfg);
  // CPU reference per sample.
  std::vector<std::vector<token_index>> want(static_cast<std::size_t>(B));
  std::vector<std::vector<O>> want_f(static_cast<std::size_t>(B));
  std::vector<visionzip::result> want_r(static_cast<std::size_t>(B));
  for (index_t b = 0; b < B; ++b) {
    std::vector<token_index> o(static_cast<std::size_t>(k));
    std::vector<O> f(static_cast<std::size_t>(std::max<index_t>(k * d, 1)));
    const tensor_view<const E, 3> kv(keys.data() + b * kheads * n * dh, {kheads, n, dh});
    const matrix_view<const E> hv(hidden.data() + b * n * d, {n, d});
    want_r[static_cast<std::size_t>(b)] =
        visionzip::select(seq, attn.host_view(b), kv, hv, cfg, std::span<token_index>(o), matrix_view<O>(f.data(), {k, d}));
    want[static_cast<std::size_t>(b)] = o;
    want_f[static_cast<std::size_t>(b)] = f;
  }
  // CUDA: features written transposed ([B, d, k] in memory) to exercise strides.
  device_selection out(B, std::max<index_t>(k, 1));
  device_buffer<O> dfeat(static_cast<std::size_t>(std::max<index_t>(B * k * d, 1)));
  device_buffer<visionzip::result> dres(static_cast<std::size_t>(B));
  const attention_view<D> av = attn.template device_batch<D>();
  const tensor_view<const D, 4> kview(reinterpret_cast<const D*>(dkeys.data()), {B, kheads, n, dh});
  const tensor_view<const D, 3> hview(reinterpret_cast<const D*>(dhidden.data()), {B, n, d});
  const tensor_view<OD, 3> fview(reinterpret_cast<OD*>(dfeat.data()), {B, k, d}, {k * d, 1, std::max<index_t>(k, 1)});
  workspace ws(visionzip::workspace_size(av, kview, cfg));
  visionzip::select(ws.policy, av, kview, hview, cfg, out.view(), fview,
                    std::span<visionzip::result>(dres.data(), static_cast<std::size_t>(B)));
  const cuda_status st = status(ws.policy);
  ASSERT_TRUE(st.ok) << label << ": " << st.message;
  const auto rows = out.rows();
  const auto feats = dfeat.download();
  const auto res = dres.download();
  for (index_t b = 0; b < B; ++b) {
    const auto i = static_cast<std::size_t>(b);
    ASSERT_EQ(rows[i], want[i]) << label << " sample " << b;
    for (index_t r = 0; r < k; ++r) {
      for (index_t c = 0; c < d; ++c) {
        const O g = feats[static_cast<std::size_t>(b * k * d + c * k + r)];
        const O w = want_f[i][static_cast<std::size_t>(r * d + c)];
        ASSERT_EQ(std::memcmp(&g, &w, sizeof(O)), 0) << label << " sample " << b << " row " << r << " col " << c;
      }
    }
    EXPECT_EQ(res[i].count, want_r[i].count) << label;
    EXPECT_EQ(res[i].dominant, want_r[i].dominant) << label;
    EXPECT_EQ(res[i].contextual, want_r[i].contextual) << label;
    EXPECT_EQ(res[i].merged, want_r[i].merged) << label;
  }
}

/// A ragged batch: B samples of their own sizes (some empty), attention [heads, N_b or 1, N_b]
/// in any layout, keys [kheads, N_b, dh_b] stored token-major ([N_b, kheads, dh_b] in memory),
/// hidden [N_b, D_b] with padded rows, features written transposed. CPU ragged select vs CUDA.
template <class E, class O>
void visionzip_ragged_case(std::mt19937_64& rng, const std::string& label, index_t forced_batch = -1) {
  using D = cuda_detail::device_type_t<E>;
  using OD = cuda_detail::device_type_t<O>;
  const index_t B = forced_batch >= 0 ? forced_batch : pick(rng, 0, 6);
  std::vector<index_t> ns(static_cast<std::size_t>(B));
  index_t n_min = 200;
  for (auto& n : ns) {
    n = pick(rng, 0, 7) == 0 ? 0 : pick(rng, 1, 160);
    if (n > 0) n_min = std::min(n_min, n);
  }
  visionzip::config cfg;
  cfg.dominant = pick(rng, 1, n_min);
  cfg.contextual = pick(rng, 0, n_min - cfg.dominant);
  const index_t heads = pick(rng, 1, 8);
  const bool cls_only = pick(rng, 0, 2) == 0;
  std::vector<index_t> qs(ns);
  if (cls_only) std::fill(qs.begin(), qs.end(), 1);
  const attention_batch<E> attn(false, heads, qs, ns, static_cast<layout>(pick(rng, 0, 2)),
                                static_cast<values>(pick(rng, 0, 3)), rng);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const bool coarse = pick(rng, 0, 3) == 0;
  const index_t k = visionzip::keep_count(cfg);
  std::vector<std::vector<E>> keys(static_cast<std::size_t>(B)), hidden(static_cast<std::size_t>(B));
  std::vector<device_buffer<E>> dkeys, dhidden;
  std::vector<device_buffer<O>> dfeat;
  std::vector<tensor_view<const E, 3>> hk;
  std::vector<matrix_view<const E>> hh;
  std::vector<matrix_view<O>> hf;
  std::vector<tensor_view<const D, 3>> dk;
  std::vector<tensor_view<const D, 2>> dhv;
  std::vector<tensor_view<OD, 2>> df;
  std::vector<std::vector<O>> want_f(static_cast<std::size_t>(B));
  std::vector<index_t> widths(static_cast<std::size_t>(B));
  for (index_t b = 0; b < B; ++b) {
    const auto i = static_cast<std::size_t>(b);
    const index_t n = ns[i], kh = pick(rng, 1, 3), dh = pick(rng, 1, 40), d = pick(rng, 1, 48);
    widths[i] = d;
    keys[i].resize(static_cast<std::size_t>(std::max<index_t>(n * kh * dh, 1)));
    hidden[i].resize(static_cast<std::size_t>(std::max<index_t>(n * (d + 2), 1)));
    for (auto& x : keys[i]) x = to_storage<E>(coarse ? std::round(normal(rng)) : normal(rng));
    for (auto& x : hidden[i]) x = to_storage<E>(normal(rng));
    dkeys.push_back(to_device(keys[i]));
    dhidden.push_back(to_device(hidden[i]));
    dfeat.emplace_back(static_cast<std::size_t>(std::max<index_t>(k * d, 1)));
    want_f[i].assign(static_cast<std::size_t>(std::max<index_t>(k * d, 1)), to_storage<O>(0.0f));
    const std::array<index_t, 3> kstr{dh, kh * dh, 1};
    hk.emplace_back(keys[i].data(), std::array<index_t, 3>{kh, n, dh}, kstr);
    hh.emplace_back(hidden[i].data(), std::array<index_t, 2>{n, d}, std::array<index_t, 2>{d + 2, 1});
    hf.emplace_back(want_f[i].data(), std::array<index_t, 2>{k, d});
    dk.emplace_back(reinterpret_cast<const D*>(dkeys.back().data()), std::array<index_t, 3>{kh, n, dh}, kstr);
    dhv.emplace_back(reinterpret_cast<const D*>(dhidden.back().data()), std::array<index_t, 2>{n, d},
                     std::array<index_t, 2>{d + 2, 1});
    df.emplace_back(reinterpret_cast<OD*>(dfeat.back().data()), std::array<index_t, 2>{k, d},
                    std::array<index_t, 2>{1, std::max<index_t>(k, 1)});
  }
  std::vector<head_attention_view<E>> ha;
  for (index_t b = 0; b < B; ++b) ha.push_back(attn.host_view(b));
  // CPU reference: the ragged batched select.
  std::vector<token_index> want_idx(static_cast<std::size_t>(std::max<index_t>(B * k, 1)), -1), want_cnt(static_cast<std::size_t>(std::max<index_t>(B, 1)));
  std::vector<visionzip::result> want_r(static_cast<std::size_t>(B));
  const selection_batch host_out{tensor_view<token_index, 2>(want_idx.data(), {B, std::max<index_t>(k, 1)}),
                                 std::span<token_index>(want_cnt.data(), static_cast<std::size_t>(B))};
  visionzip::select(seq, std::span<const head_attention_view<E>>(ha), std::span<const tensor_view<const E, 3>>(hk),
                    std::span<const matrix_view<const E>>(hh), cfg, host_out, std::span<const matrix_view<O>>(hf),
                    std::span<visionzip::result>(want_r));
  // CUDA.
  device_selection out(B, std::max<index_t>(k, 1));
  device_buffer<visionzip::result> dres(static_cast<std::size_t>(std::max<index_t>(B, 1)));
  const auto da = attn.template device_samples<D>();
  const std::span<const head_attention_view<D>> das(da);
  const std::span<const tensor_view<const D, 3>> dks(dk);
  workspace ws(visionzip::workspace_size(das, dks, cfg));
  visionzip::select(ws.policy, das, dks, std::span<const tensor_view<const D, 2>>(dhv), cfg, out.view(),
                    std::span<const tensor_view<OD, 2>>(df), std::span<visionzip::result>(dres.data(), static_cast<std::size_t>(B)));
  const cuda_status st = status(ws.policy);
  ASSERT_TRUE(st.ok) << label << ": " << st.message;
  const auto rows = out.rows();
  const auto res = dres.download();
  for (index_t b = 0; b < B; ++b) {
    const auto i = static_cast<std::size_t>(b);
    const std::vector<token_index> want(want_idx.begin() + b * std::max<index_t>(k, 1),
                                        want_idx.begin() + b * std::max<index_t>(k, 1) + want_cnt[i]);
    ASSERT_EQ(rows[i], want) << label << " sample " << b << " n " << ns[i];
    const auto feats = dfeat[i].download();
    for (index_t r = 0; r < want_cnt[i]; ++r) {
      for (index_t c = 0; c < widths[i]; ++c) {
        const O g = feats[static_cast<std::size_t>(c * k + r)];
        const O w = want_f[i][static_cast<std::size_t>(r * widths[i] + c)];
        ASSERT_EQ(std::memcmp(&g, &w, sizeof(O)), 0) << label << " sample " << b << " row " << r << " col " << c;
      }
    }
    EXPECT_EQ(res[i].count, want_r[i].count) << label;
    EXPECT_EQ(res[i].dominant, want_r[i].dominant) << label;
    EXPECT_EQ(res[i].contextual, want_r[i].contextual) << label;
    EXPECT_EQ(res[i].merged, want_r[i].merged) << label;
  }
}

}  // namespace

TEST(CudaVisionZip, Parity) {
  TOKENSEL_REQUIRE_DEVICE();
  std::mt19937_64 rng(71);
  for (int c = 0; c < parity_cases(350); ++c) {
    parity_case(c);
    visionzip_case<float, float>(rng, "f32 case " + std::to_string(c));
    visionzip_case<Eigen::half, Eigen::half>(rng, "f16 case " + std::to_string(c));
    visionzip_case<Eigen::bfloat16, float>(rng, "bf16 case " + std::to_string(c));
    if (::testing::Test::HasFatalFailure()) return;
  }
  visionzip_case<Eigen::half, Eigen::half>(rng, "llava 577", 577);
}

TEST(CudaVisionZip, HostValidation) {
  const cuda_policy big{nullptr, fake_device_pointer<void>(), std::size_t{1} << 30};
  const attention_view<__half> a(fake_device_pointer<const __half>(), {2, 4, 20, 20});
  const tensor_view<const __half, 4> keys(fake_device_pointer<const __half>(), {2, 4, 20, 8});
  const tensor_view<const float, 3> hidden(fake_device_pointer<const float>(), {2, 20, 6});
  const tensor_view<float, 3> feats(fake_device_pointer<float>(), {2, 8, 6});
  const selection_batch out{tensor_view<token_index, 2>(fake_device_pointer<token_index>(), {2, 8}),
                            std::span<token_index>(fake_device_pointer<token_index>(), 2)};
  expect_error([&] { visionzip::select(big, a, keys, hidden, visionzip::config{.dominant = 0}, out, feats); }, errc::invalid_argument, "visionzip.dominant");
  expect_error([&] { visionzip::select(big, a, keys, hidden, visionzip::config{.dominant = 15, .contextual = 6}, out, feats); },
         errc::invalid_argument, "visionzip.dominant + visionzip.contextual");
  expect_error([&] { visionzip::select(big, a, keys, hidden, visionzip::config{.dominant = 6, .contextual = 3}, out, feats); },
         errc::shape_mismatch, "visionzip.out.size()");
  expect_error([&] {
    visionzip::select(big, a, keys, tensor_view<const float, 3>(fake_device_pointer<const float>(), {2, 19, 6}), visionzip::config{.dominant = 5, .contextual = 3}, out, feats);
  }, errc::shape_mismatch, "visionzip.hidden.extent(0)");
  expect_error([&] {
    visionzip::select(big, a, tensor_view<const __half, 4>(fake_device_pointer<const __half>(), {2, 4, 20, 0}), hidden, visionzip::config{.dominant = 5, .contextual = 3}, out, feats);
  }, errc::shape_mismatch, "visionzip.keys.extent(2)");
  expect_error([&] { visionzip::select(cuda_policy{nullptr, fake_device_pointer<void>(), 16}, a, keys, hidden, visionzip::config{.dominant = 5, .contextual = 3}, out, feats); },
         errc::invalid_argument, "visionzip.policy.workspace_bytes");
}

TEST(CudaVisionZip, NonFiniteKeysAreReported) {
  TOKENSEL_REQUIRE_DEVICE();
  std::mt19937_64 rng(72);
  const index_t B = 2, n = 30, dh = 8, d = 4;
  const attention_batch<float> attn(true, 2, {n, n}, {n, n}, layout::contiguous, values::softmax, rng);
  std::vector<float> keys(static_cast<std::size_t>(B * 2 * n * dh), 0.5f), hidden(static_cast<std::size_t>(B * n * d), 1.0f);
  keys[static_cast<std::size_t>(1 * 2 * n * dh + 1 * n * dh + 7 * dh + 3)] = NAN;  // sample 1, head 1, token 7, column 3
  auto dk = to_device(keys);
  auto dh_ = to_device(hidden);
  const visionzip::config cfg{.dominant = 1, .contextual = 5};  // token 7 is certainly among the remaining
  device_selection out(B, 6);
  device_buffer<float> feats(static_cast<std::size_t>(B * 6 * d));
  const attention_view<float> av = attn.device_batch<float>();
  const tensor_view<const float, 4> kv(dk.data(), {B, 2, n, dh});
  workspace ws(visionzip::workspace_size(av, kv, cfg));
  visionzip::select(ws.policy, av, kv, tensor_view<const float, 3>(dh_.data(), {B, n, d}), cfg, out.view(),
                    tensor_view<float, 3>(feats.data(), {B, 6, d}));
  const cuda_status st = status(ws.policy);
  ASSERT_FALSE(st.ok);
  EXPECT_EQ(st.code, errc::non_finite);
  EXPECT_EQ(st.sample, 1);
  EXPECT_EQ(st.row, 7);
  EXPECT_EQ(st.index, 3);
  EXPECT_EQ(out.cnt.download()[1], 0);
  EXPECT_EQ(out.cnt.download()[0], 6);
}

TEST(CudaVisionZip, RaggedParity) {
  TOKENSEL_REQUIRE_DEVICE();
  std::mt19937_64 rng(73);
  for (int c = 0; c < parity_cases(340); ++c) {
    parity_case(c);
    visionzip_ragged_case<float, float>(rng, "ragged f32 case " + std::to_string(c));
    visionzip_ragged_case<Eigen::half, Eigen::half>(rng, "ragged f16 case " + std::to_string(c));
    visionzip_ragged_case<Eigen::bfloat16, float>(rng, "ragged bf16 case " + std::to_string(c));
    if (::testing::Test::HasFatalFailure()) return;
  }
  // More samples than one table holds: two launches per stage.
  visionzip_ragged_case<Eigen::half, float>(rng, "ragged 50 samples", 50);
}

TEST(CudaVisionZip, RaggedTablesFitTheParameterLimit) {
  using table = visionzip::cuda_detail::table;
  static_assert(sizeof(table) <= 4000);
  EXPECT_GE(cuda_detail::table_capacity_for<visionzip::cuda_detail::sample_desc>, 16);
  EXPECT_EQ(cuda_detail::table_capacity_for<cuda_detail::window_desc>, cuda_detail::table_capacity);
  // A uniform table shifts every array by its own batch stride.
  visionzip::cuda_detail::sample_desc d;
  d.attn = fake_device_pointer<const float>();
  d.features = fake_device_pointer<float>();
  d.a_b = 100;
  d.f_b = 8;
  const auto s3 = d.shifted(3, 0);
  EXPECT_EQ(static_cast<const char*>(s3.attn) - static_cast<const char*>(d.attn), 300);
  EXPECT_EQ(static_cast<char*>(s3.features) - static_cast<char*>(d.features), 24);
  EXPECT_EQ(s3.keys, nullptr);
  EXPECT_EQ(s3.hidden, nullptr);
}

TEST(CudaVisionZip, RaggedWorkspaceAndValidation) {
  using H = __half;
  const head_attention_view<H> a20(fake_device_pointer<const H>(), {4, 20, 20});
  const head_attention_view<H> a30(fake_device_pointer<const H>(), {4, 1, 30});
  const tensor_view<const H, 3> k20(fake_device_pointer<const H>(), {2, 20, 8}), k30(fake_device_pointer<const H>(), {2, 30, 16});
  const visionzip::config cfg{.dominant = 5, .contextual = 3};
  // Same shapes: the ragged workspace equals the 4-D one.
  const std::vector<head_attention_view<H>> two{a20, a20};
  const std::vector<tensor_view<const H, 3>> two_keys{k20, k20};
  EXPECT_EQ(visionzip::workspace_size(std::span<const head_attention_view<H>>(two), std::span<const tensor_view<const H, 3>>(two_keys), cfg),
            visionzip::workspace_size(attention_view<H>(fake_device_pointer<const H>(), {2, 4, 20, 20}),
                                      tensor_view<const H, 4>(fake_device_pointer<const H>(), {2, 2, 20, 8}), cfg));
  // Ragged: sized by the largest n and key width.
  const std::vector<head_attention_view<H>> mixed{a20, a30};
  const std::vector<tensor_view<const H, 3>> mixed_keys{k20, k30};
  const std::span<const head_attention_view<H>> ms(mixed);
  const std::span<const tensor_view<const H, 3>> mks(mixed_keys);
  EXPECT_EQ(visionzip::workspace_size(ms, mks, cfg),
            visionzip::workspace_size(attention_view<H>(fake_device_pointer<const H>(), {2, 4, 30, 30}),
                                      tensor_view<const H, 4>(fake_device_pointer<const H>(), {2, 2, 30, 16}), cfg));
  EXPECT_EQ(visionzip::workspace_size(std::span<const head_attention_view<H>>(), std::span<const tensor_view<const H, 3>>(), cfg),
            visionzip::workspace_size(attention_view<H>(fake_device_pointer<const H>(), {0, 4, 20, 20}),
                                      tensor_view<const H, 4>(fake_device_pointer<const H>(), {0, 2, 20, 8}), cfg));
  EXPECT_THROW((void)visionzip::workspace_size(ms, mks, visionzip::config{.dominant = 0}), error);

  const cuda_policy big{nullptr, fake_device_pointer<void>(), std::size_t{1} << 30};
  const tensor_view<const float, 2> h20(fake_device_pointer<const float>(), {20, 6}), h30(fake_device_pointer<const float>(), {30, 6});
  const std::vector<tensor_view<const float, 2>> hidden{h20, h30};
  const std::vector<tensor_view<float, 2>> feats{tensor_view<float, 2>(fake_device_pointer<float>(), {8, 6}),
                                                 tensor_view<float, 2>(fake_device_pointer<float>(), {8, 6})};
  const selection_batch out{tensor_view<token_index, 2>(fake_device_pointer<token_index>(), {2, 8}),
                            std::span<token_index>(fake_device_pointer<token_index>(), 2)};
  const std::span<const tensor_view<const float, 2>> hs(hidden);
  const std::span<const tensor_view<float, 2>> fs(feats);
  expect_error([&] { visionzip::select(big, ms, mks, hs.first(1), cfg, out, fs); }, errc::shape_mismatch, "visionzip.hidden.size()");
  expect_error([&] { visionzip::select(big, ms, mks, hs, cfg, out, fs.first(1)); }, errc::shape_mismatch, "visionzip.features.size()");
  expect_error([&] { visionzip::select(big, ms, mks.first(1), hs, cfg, out, fs); }, errc::shape_mismatch, "visionzip.keys.size()");
  expect_error([&] { visionzip::select(big, ms, mks, hs, visionzip::config{.dominant = 5, .contextual = 16}, out, fs); },
         errc::invalid_argument, "visionzip.dominant + visionzip.contextual");
  // Sample 1's keys hold 20 tokens, its attention 30.
  const std::vector<tensor_view<const H, 3>> bad_keys{k20, k20};
  expect_error([&] { visionzip::select(big, ms, std::span<const tensor_view<const H, 3>>(bad_keys), hs, cfg, out, fs); },
         errc::shape_mismatch, "visionzip.keys.extent(1)");
  const std::vector<tensor_view<const float, 2>> bad_hidden{h20, h20};
  expect_error([&] { visionzip::select(big, ms, mks, std::span<const tensor_view<const float, 2>>(bad_hidden), cfg, out, fs); },
         errc::shape_mismatch, "visionzip.hidden.extent(0)");
  expect_error([&] { visionzip::select(cuda_policy{nullptr, fake_device_pointer<void>(), 16}, ms, mks, hs, cfg, out, fs); },
         errc::invalid_argument, "visionzip.policy.workspace_bytes");
  // contextual = 0: keys are not needed (an empty span is accepted).
  EXPECT_NO_THROW((void)visionzip::workspace_size(ms, std::span<const tensor_view<const H, 3>>(), visionzip::config{.dominant = 5, .contextual = 0}));
}
