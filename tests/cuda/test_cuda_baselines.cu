// CUDA backend: the baselines. Random (same seeded draws), uniform grid and average pooling give
// the CPU backend's indices and values exactly; host validation runs without a GPU.
#include "cuda_test_util.cuh"

#include <span>
#include <vector>

#include "tokensel/methods/baselines.hpp"
#include "tokensel/cuda/methods/baselines.cuh"

using namespace tokensel;
using namespace tokensel_test;
namespace bl = tokensel::baselines;

namespace {
index_t pick(std::mt19937_64& rng, index_t lo, index_t hi) { return std::uniform_int_distribution<index_t>(lo, hi)(rng); }

template <class Config>
Config random_budget(std::mt19937_64& rng, index_t n_min) {
  Config c;
  if (pick(rng, 0, 1) == 0) {
    c.ratio = pick(rng, 0, 4) == 0 ? 1.0 : std::uniform_real_distribution<double>(0.001, 1.0)(rng);
  } else {
    c.count = pick(rng, 0, n_min);
  }
  return c;
}
}  // namespace

TEST(CudaBaselines, RandomParity) {
  TOKENSEL_REQUIRE_DEVICE();
  std::mt19937_64 rng(61);
  for (int c = 0; c < parity_cases(1000); ++c) {
    parity_case(c);
    const index_t B = pick(rng, 1, 6);
    std::vector<index_t> n;
    for (index_t b = 0; b < B; ++b) n.push_back(pick(rng, 0, 9) == 0 ? 0 : pick(rng, 1, 700));
    auto cfg = random_budget<bl::random::config>(rng, *std::min_element(n.begin(), n.end()));
    cfg.seed = rng();
    index_t cap = 1;
    for (const index_t v : n) cap = std::max(cap, bl::random::keep_count(v, cfg));
    std::vector<token_index> want_idx(static_cast<std::size_t>(B * cap), -1), want_cnt(static_cast<std::size_t>(B));
    bl::random::select(seq, std::span<const index_t>(n), cfg,
                       selection_batch{tensor_view<token_index, 2>(want_idx.data(), {B, cap}), std::span<token_index>(want_cnt)});
    device_selection out(B, cap);
    device_buffer<bl::random::result> res(static_cast<std::size_t>(B));
    workspace ws(bl::random::workspace_size(std::span<const index_t>(n)));
    bl::random::select(ws.policy, std::span<const index_t>(n), cfg, out.view(), std::span<bl::random::result>(res.data(), static_cast<std::size_t>(B)));
    const auto rows = out.rows();
    const auto got = res.download();
    for (index_t b = 0; b < B; ++b) {
      const auto i = static_cast<std::size_t>(b);
      const std::vector<token_index> want(want_idx.begin() + b * cap, want_idx.begin() + b * cap + want_cnt[i]);
      ASSERT_EQ(rows[i], want) << "case " << c << " sample " << b;
      EXPECT_EQ(got[i].count, want_cnt[i]);
    }
  }
}

TEST(CudaBaselines, UniformParity) {
  TOKENSEL_REQUIRE_DEVICE();
  std::mt19937_64 rng(62);
  for (int c = 0; c < parity_cases(1000); ++c) {
    parity_case(c);
    const index_t B = pick(rng, 1, 6);
    const bool grids_mode = pick(rng, 0, 1) == 0;
    std::vector<token_grid> grids;
    std::vector<index_t> n;
    for (index_t b = 0; b < B; ++b) {
      const token_grid g{pick(rng, 0, 30), pick(rng, 1, 30)};
      grids.push_back(g);
      n.push_back(g.size());
    }
    const auto cfg = random_budget<bl::uniform::config>(rng, *std::min_element(n.begin(), n.end()));
    index_t cap = 1;
    for (const index_t v : n) cap = std::max(cap, bl::uniform::keep_count(v, cfg));
    std::vector<token_index> want_idx(static_cast<std::size_t>(B * cap), -1), want_cnt(static_cast<std::size_t>(B));
    std::vector<bl::uniform::result> want_res(static_cast<std::size_t>(B));
    const selection_batch host_out{tensor_view<token_index, 2>(want_idx.data(), {B, cap}), std::span<token_index>(want_cnt)};
    device_selection out(B, cap);
    device_buffer<bl::uniform::result> res(static_cast<std::size_t>(B));
    const std::span<bl::uniform::result> rs(res.data(), static_cast<std::size_t>(B));
    workspace ws(bl::uniform::workspace_size());
    if (grids_mode) {
      bl::uniform::select(seq, std::span<const token_grid>(grids), cfg, host_out, std::span<bl::uniform::result>(want_res));
      bl::uniform::select(ws.policy, std::span<const token_grid>(grids), cfg, out.view(), rs);
    } else {
      bl::uniform::select(seq, std::span<const index_t>(n), cfg, host_out, std::span<bl::uniform::result>(want_res));
      bl::uniform::select(ws.policy, std::span<const index_t>(n), cfg, out.view(), rs);
    }
    const auto rows = out.rows();
    const auto got = res.download();
    for (index_t b = 0; b < B; ++b) {
      const auto i = static_cast<std::size_t>(b);
      const std::vector<token_index> want(want_idx.begin() + b * cap, want_idx.begin() + b * cap + want_cnt[i]);
      ASSERT_EQ(rows[i], want) << "case " << c << " sample " << b;
      EXPECT_EQ(got[i].count, want_res[i].count);
      EXPECT_EQ(got[i].rows_used, want_res[i].rows_used);
    }
  }
}

template <class T, class O>
void pool_case(std::mt19937_64& rng, int c) {
  using TD = cuda_detail::device_type_t<T>;
  using OD = cuda_detail::device_type_t<O>;
  const token_grid grid{pick(rng, 1, 26), pick(rng, 1, 26)};
  const bl::pool::config cfg{.window = pick(rng, 1, 4), .partial_windows = true};
  const index_t B = pick(rng, 1, 3), n = grid.size(), d = pick(rng, 1, 40);
  const token_grid og = bl::pool::output_grid(grid, cfg);
  std::vector<T> f(static_cast<std::size_t>(B * n * d));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (auto& x : f) x = to_storage<T>(normal(rng));
  std::vector<O> want(static_cast<std::size_t>(B * og.size() * d));
  bl::pool::apply(seq, tensor_view<const T, 3>(f.data(), {B, n, d}), grid, cfg, tensor_view<O, 3>(want.data(), {B, og.size(), d}));
  auto df = to_device(f);
  device_buffer<O> dout(want.size());
  device_buffer<bl::pool::result> res(static_cast<std::size_t>(B));
  workspace ws(bl::pool::workspace_size());
  bl::pool::apply(ws.policy, tensor_view<const TD, 3>(reinterpret_cast<const TD*>(df.data()), {B, n, d}), grid, cfg,
                  tensor_view<OD, 3>(reinterpret_cast<OD*>(dout.data()), {B, og.size(), d}),
                  std::span<bl::pool::result>(res.data(), static_cast<std::size_t>(B)));
  const auto got = dout.download();
  ASSERT_EQ(std::memcmp(got.data(), want.data(), want.size() * sizeof(O)), 0) << "case " << c;
  for (const auto& r : res.download()) {
    EXPECT_EQ(r.count, og.size());
    EXPECT_EQ(r.grid.rows, og.rows);
    EXPECT_EQ(r.grid.cols, og.cols);
  }
}

TEST(CudaBaselines, PoolParity) {
  TOKENSEL_REQUIRE_DEVICE();
  std::mt19937_64 rng(63);
  for (int c = 0; c < parity_cases(300); ++c) {
    parity_case(c);
    pool_case<float, float>(rng, c);
    pool_case<Eigen::half, Eigen::half>(rng, c);
    pool_case<Eigen::bfloat16, float>(rng, c);
    pool_case<float, Eigen::bfloat16>(rng, c);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

TEST(CudaBaselines, HostValidation) {
  const cuda_policy big{nullptr, fake_device_pointer<void>(), std::size_t{1} << 20};
  const selection_batch out{tensor_view<token_index, 2>(fake_device_pointer<token_index>(), {2, 5}),
                            std::span<token_index>(fake_device_pointer<token_index>(), 2)};
  const std::vector<index_t> n{10, 20};
  expect_error([&] { bl::random::select(big, std::span<const index_t>(n), bl::random::config{}, out); }, errc::invalid_argument, "random.ratio/random.count");
  expect_error([&] { bl::random::select(big, std::span<const index_t>(n), bl::random::config{.ratio = 0.5}, out); }, errc::shape_mismatch, "random.out.size()");
  expect_error([&] { bl::random::select(big, std::span<const index_t>(n), bl::random::config{.count = 11}, out); }, errc::invalid_argument, "random.count");
  expect_error([&] { bl::uniform::select(big, std::span<const index_t>(n), bl::uniform::config{.ratio = 0.0}, out); }, errc::invalid_argument, "uniform.ratio");
  const std::vector<index_t> negative{-1, 3};
  expect_error([&] { bl::uniform::select(big, std::span<const index_t>(negative), bl::uniform::config{.count = 1}, out); }, errc::invalid_argument, "uniform.n");
  expect_error([&] {
    bl::pool::apply(big, tensor_view<const float, 3>(fake_device_pointer<const float>(), {2, 10, 4}), token_grid{2, 5}, bl::pool::config{.window = 0},
                    tensor_view<float, 3>(fake_device_pointer<float>(), {2, 3, 4}));
  }, errc::invalid_argument, "pool.window");
  expect_error([&] {
    bl::pool::apply(big, tensor_view<const float, 3>(fake_device_pointer<const float>(), {2, 10, 4}), token_grid{2, 5}, bl::pool::config{},
                    tensor_view<float, 3>(fake_device_pointer<float>(), {2, 2, 4}));
  }, errc::shape_mismatch, "pool.out.extent(0)");
}
