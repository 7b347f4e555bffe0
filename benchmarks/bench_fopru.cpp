// FoPru (rank and row strategies) at LLaVA-1.5, LLaVA-NeXT (5 views) and video (8 frames):
// one call = one image (or one clip), fp32 and fp16, sequential and threaded.
#include <vector>

#include "bench_common.hpp"
#include "tokensel/core/batch.hpp"
#include "tokensel/methods/fopru.hpp"

namespace {

using namespace bench;
namespace ts = tokensel;

template <class T, class P>
void register_fopru(const encoder_shape& s, ts::fopru::strategy strategy, const P& policy) {
  const std::string name = std::string("fopru/") + ts::fopru::to_string(strategy) + "/" + dtype<T>() + "/" + s.name +
                           "/" + policy_name(policy);
  const ts::fopru::config cfg{.ratio = 0.5, .strategy = strategy};
  add(name, encoder_floor_name<T>(s), encoder_bytes<T>(s), s.samples, [=](benchmark::State& state) {
    const auto& a = encoder_attention<T>(s);
    const index_t k = ts::fopru::keep_count(s.tokens - 1, cfg);
    std::vector<token_index> idx(static_cast<std::size_t>(s.samples * k));
    std::vector<token_index> counts(static_cast<std::size_t>(s.samples));
    if (s.samples == 1) {
      const auto view = encoder_view(a, s, 0);
      for (auto _ : state) benchmark::DoNotOptimize(ts::fopru::select(policy, view, cfg, std::span<token_index>(idx)));
    } else {
      const auto batch = encoder_batch_view(a, s);
      const ts::selection_batch out{{idx.data(), {s.samples, k}}, counts};
      for (auto _ : state) {
        ts::fopru::select(policy, batch, cfg, out);
        benchmark::ClobberMemory();
      }
    }
  });
}

template <class T>
void register_shape(const encoder_shape& s) {
  add_encoder_floor<T>(s);
  for (auto strategy : {ts::fopru::strategy::rank, ts::fopru::strategy::row}) {
    register_fopru<T>(s, strategy, ts::seq);
    register_fopru<T>(s, strategy, ts::par);
  }
}

void register_all() {
  for (const auto& s : encoder_shapes) {
    register_shape<float>(s);
    register_shape<f16>(s);
    register_shape<bf16>(s);
  }
}

}  // namespace

TOKENSEL_BENCH_MAIN(register_all)
