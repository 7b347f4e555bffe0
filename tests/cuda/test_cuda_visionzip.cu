// CUDA backend: VisionZip. Parity with the CPU backend (indices, merged feature rows bit for bit,
// statistics) on random batches; host validation (runs without a GPU); NaN reporting.
#include "cuda_test_util.cuh"

#include <span>
#include <vector>

#include "tokensel/cuda/visionzip.cuh"
#include "tokensel/visionzip.hpp"

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

}  // namespace

TEST(CudaVisionZip, Parity) {
  TOKENSEL_REQUIRE_DEVICE();
  std::mt19937_64 rng(71);
  for (int c = 0; c < 350; ++c) {
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
  auto expect = [&](auto&& call, errc code, const std::string& parameter) {
    try {
      call();
      ADD_FAILURE() << "no throw, expected " << parameter;
    } catch (const error& e) {
      EXPECT_EQ(e.code(), code) << e.what();
      EXPECT_EQ(e.parameter(), parameter) << e.what();
    }
  };
  expect([&] { visionzip::select(big, a, keys, hidden, visionzip::config{.dominant = 0}, out, feats); }, errc::invalid_argument, "visionzip.dominant");
  expect([&] { visionzip::select(big, a, keys, hidden, visionzip::config{.dominant = 15, .contextual = 6}, out, feats); },
         errc::invalid_argument, "visionzip.dominant + visionzip.contextual");
  expect([&] { visionzip::select(big, a, keys, hidden, visionzip::config{.dominant = 6, .contextual = 3}, out, feats); },
         errc::shape_mismatch, "visionzip.out.size()");
  expect([&] {
    visionzip::select(big, a, keys, tensor_view<const float, 3>(fake_device_pointer<const float>(), {2, 19, 6}), visionzip::config{.dominant = 5, .contextual = 3}, out, feats);
  }, errc::shape_mismatch, "visionzip.hidden.extent(0)");
  expect([&] {
    visionzip::select(big, a, tensor_view<const __half, 4>(fake_device_pointer<const __half>(), {2, 4, 20, 0}), hidden, visionzip::config{.dominant = 5, .contextual = 3}, out, feats);
  }, errc::shape_mismatch, "visionzip.keys.extent(2)");
  expect([&] { visionzip::select(cuda_policy{nullptr, fake_device_pointer<void>(), 16}, a, keys, hidden, visionzip::config{.dominant = 5, .contextual = 3}, out, feats); },
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
