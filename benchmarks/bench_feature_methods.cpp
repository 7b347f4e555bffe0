// DivPrune, VisPruner and DART at LLaVA-1.5 shapes (one image). None reads an attention map:
//   DivPrune:  projected features [576, 4096] (Vicuna-7B width), keep 144 (25 %);
//   VisPruner: the CLS rows [16, 1, 577] of layer 22 and patch features [576, 1024], keep 64
//              (32 important + 32 diverse);
//   DART:      layer-1 keys [32, 651, 128] after RoPE and hidden states [651, 4096] of a
//              35 + 576 + 40 token prompt, keep 144 (4 + 4 pivots).
// The byte count is one pass over those inputs (what each method reads at least once); these are
// compute-bound (O(n^2 D) cosines for DivPrune and VisPruner), so no floor is named.
#include <span>
#include <vector>

#include "bench_common.hpp"
#include "tokensel/methods/dart.hpp"
#include "tokensel/methods/divprune.hpp"
#include "tokensel/methods/vispruner.hpp"

namespace {

using namespace bench;
namespace ts = tokensel;

constexpr index_t kPatches = 576, kLlmWidth = 4096, kClipWidth = 1024;

template <class T, class P>
void register_divprune(const P& policy) {
  const std::int64_t bytes = kPatches * kLlmWidth * static_cast<std::int64_t>(sizeof(T));
  add(std::string("divprune/keep144/") + dtype<T>() + "/llava15/" + policy_name(policy), "", bytes, 1, [=](benchmark::State& state) {
    const auto& x = gaussian<T>(kPatches * kLlmWidth, 31);
    const ts::divprune::config cfg{.count = 144};
    std::vector<token_index> out(144);
    const ts::matrix_view<const T> xv(x.data(), {kPatches, kLlmWidth});
    for (auto _ : state) {
      benchmark::DoNotOptimize(ts::divprune::select(policy, xv, cfg, std::span<token_index>(out)));
      benchmark::ClobberMemory();
    }
  });
}

template <class T, class P>
void register_vispruner(const P& policy) {
  const encoder_shape& s = llava15;
  const std::int64_t bytes = (s.heads * s.tokens + kPatches * kClipWidth) * static_cast<std::int64_t>(sizeof(T));
  add(std::string("vispruner/keep64/") + dtype<T>() + "/llava15/" + policy_name(policy), "", bytes, 1, [=](benchmark::State& state) {
    const auto& a = encoder_attention<T>(s);
    const auto& x = gaussian<T>(kPatches * kClipWidth, 32);
    const ts::vispruner::config cfg{.count = 64};
    std::vector<token_index> out(64);
    // The CLS query row of every head: rows 0 of [heads, N, N] through a strided [heads, 1, N] view.
    const ts::head_attention_view<T> cls(a.data(), {s.heads, 1, s.tokens}, {s.tokens * s.tokens, s.tokens, 1});
    const ts::matrix_view<const T> xv(x.data(), {kPatches, kClipWidth});
    for (auto _ : state) {
      benchmark::DoNotOptimize(ts::vispruner::select(policy, cls, xv, cfg, std::span<token_index>(out)));
      benchmark::ClobberMemory();
    }
  });
}

template <class T, class P>
void register_dart(const P& policy) {
  const llm_shape& s = vicuna_llava15;
  const index_t len = s.tokens(), dh = 128;
  const std::int64_t bytes = (s.heads * len * dh + len * kLlmWidth) * static_cast<std::int64_t>(sizeof(T));
  add(std::string("dart/keep144/") + dtype<T>() + "/llava15/" + policy_name(policy), "", bytes, 1, [=](benchmark::State& state) {
    const auto& keys = gaussian<T>(s.heads * len * dh, 33);
    const auto& hidden = gaussian<T>(len * kLlmWidth, 34);
    const ts::dart::config cfg{.count = 144};
    std::vector<token_index> out(144);
    const ts::tensor_view<const T, 3> kv(keys.data(), {s.heads, len, dh});
    const ts::matrix_view<const T> hv(hidden.data(), {len, kLlmWidth});
    for (auto _ : state) {
      benchmark::DoNotOptimize(ts::dart::select(policy, kv, hv, ts::vector_view<const float>{}, ts::token_range{s.prefix, s.visual},
                                                cfg, std::span<token_index>(out)));
      benchmark::ClobberMemory();
    }
  });
}

template <class T>
void register_type() {
  register_divprune<T>(ts::seq);
  register_divprune<T>(ts::par);
  register_vispruner<T>(ts::seq);
  register_vispruner<T>(ts::par);
  register_dart<T>(ts::seq);
  register_dart<T>(ts::par);
}

void register_all() {
  register_type<float>();
  register_type<f16>();
  register_type<bf16>();
}

}  // namespace

TOKENSEL_BENCH_MAIN(register_all)
