// Baselines at LLaVA-1.5 shape (576 patches on a 24 x 24 grid, features [576, 1024]):
// random and uniform selection at ratio 0.5 (index-only, no input data: fixed costs), and 2 x 2
// average pooling of the features (floor: one pass over the features plus writing the pooled rows,
// the bytes pooling must touch).
#include <vector>

#include "bench_common.hpp"
#include "tokensel/methods/baselines.hpp"

namespace {

using namespace bench;
namespace ts = tokensel;

constexpr index_t kHidden = 1024;

template <class T>
std::string floor_name(const encoder_shape& s) {
  return std::string("floor/") + dtype<T>() + "/" + s.name + "/features+pooled_rows";
}

template <class T, class P>
void register_pool(const encoder_shape& s, const P& policy) {
  const index_t n = s.tokens - 1;  // patches (CLS dropped, as LLaVA does)
  const auto count = s.samples * n * kHidden;
  const ts::token_grid grid{s.grid, s.grid};
  const ts::baselines::pool::config cfg{};
  const auto out_count = s.samples * ts::baselines::pool::keep_count(grid, cfg) * kHidden;
  const auto bytes = static_cast<std::int64_t>((count + out_count) * sizeof(T));
  if constexpr (std::is_same_v<P, ts::sequential_policy>) {
    add(floor_name<T>(s), "", bytes, s.samples, [=](benchmark::State& state) {
      const auto& x = gaussian<T>(count, 5);
      std::vector<T> out(static_cast<std::size_t>(out_count));
      for (auto _ : state) stream_fill(out.data(), out_count, stream_sum(x.data(), count));
    });
  }
  add(std::string("pool/2x2/") + dtype<T>() + "/" + s.name + "/" + policy_name(policy), floor_name<T>(s), bytes,
      s.samples, [=](benchmark::State& state) {
        const auto& x = gaussian<T>(count, 5);
        const index_t k = ts::baselines::pool::keep_count(grid, cfg);
        std::vector<T> out(static_cast<std::size_t>(s.samples * k * kHidden));
        const ts::feature_view<const T> in(x.data(), {s.samples, n, kHidden});
        const ts::feature_view<T> ov(out.data(), {s.samples, k, kHidden});
        for (auto _ : state) {
          if (s.samples == 1) {
            benchmark::DoNotOptimize(ts::baselines::pool::apply(policy, in[0], grid, cfg, ov[0]));
          } else {
            ts::baselines::pool::apply(policy, in, grid, cfg, ov);
          }
          benchmark::ClobberMemory();
        }
      });
}

void register_index_baselines() {
  const index_t n = 576;
  add("random/r0.5/n576", "", 0, 1, [=](benchmark::State& state) {
    const ts::baselines::random::config cfg{.ratio = 0.5};
    std::vector<token_index> out(static_cast<std::size_t>(ts::baselines::random::keep_count(n, cfg)));
    for (auto _ : state) benchmark::DoNotOptimize(ts::baselines::random::select(ts::seq, n, cfg, out));
  });
  add("uniform/r0.5/grid24x24", "", 0, 1, [=](benchmark::State& state) {
    const ts::baselines::uniform::config cfg{.ratio = 0.5};
    std::vector<token_index> out(static_cast<std::size_t>(ts::baselines::uniform::keep_count(n, cfg)));
    for (auto _ : state) benchmark::DoNotOptimize(ts::baselines::uniform::select(ts::seq, ts::token_grid{24, 24}, cfg, out));
  });
}

void register_all() {
  register_index_baselines();
  for (const auto& s : encoder_shapes) {
    register_pool<float>(s, ts::seq);
    register_pool<float>(s, ts::par);
    register_pool<f16>(s, ts::seq);
    register_pool<bf16>(s, ts::seq);
    register_pool<f16>(s, ts::par);
    register_pool<bf16>(s, ts::par);
  }
}

}  // namespace

TOKENSEL_BENCH_MAIN(register_all)
