// FitPrune, one pruning layer (max over heads, drop a quarter of the visual tokens) on the LLM
// side, Vicuna-7B prefill (32 heads), sequences of 35 prefix + visual + 40 text tokens with 576
// (LLaVA-1.5), 2880 (LLaVA-NeXT, 5 views) and 2048 (video, 8 x 256) visual tokens. Input: the
// layer's full prefill attention [32, L, L]; FitPrune reads rows s0..L-1 over the visual columns.
// Floor: one pass over exactly those values. A recipe prunes at a few layers; the cost per image
// is this time times the number of layers with a non-zero drop count.
#include <vector>

#include "bench_common.hpp"
#include "tokensel/methods/fitprune.hpp"
#include "tokensel/stats/region_mass.hpp"

namespace {

using namespace bench;
namespace ts = tokensel;

inline constexpr llm_shape llm_shapes[] = {vicuna_llava15, vicuna_next5, vicuna_video8};

template <class T>
std::string floor_name(const llm_shape& s) {
  return std::string("floor/") + dtype<T>() + "/" + s.name + "/visual+text_rows_x_visual_cols";
}

template <class T>
std::int64_t bytes(const llm_shape& s) {
  return static_cast<std::int64_t>(s.heads * (s.visual + s.text) * s.visual) * static_cast<std::int64_t>(sizeof(T));
}

template <class T, class P>
void register_layer(const llm_shape& s, const P& policy) {
  const std::string tail = std::string("/") + dtype<T>() + "/" + s.name + "/" + policy_name(policy);
  add("fitprune/prune_layer/drop25%" + tail, floor_name<T>(s), bytes<T>(s), 1, [=](benchmark::State& state) {
    const auto& a = llm_attention<T>(s, 8);
    const index_t L = s.tokens();
    const ts::head_attention_view<T> view(a.data(), {s.heads, L, L});
    const auto visual = ts::token_range::visual_span(s.prefix, s.visual);
    const index_t drop = s.visual / 4;
    std::vector<token_index> kept(static_cast<std::size_t>(s.visual - drop));
    for (auto _ : state) {
      benchmark::DoNotOptimize(ts::fitprune::prune_layer(policy, view, visual, drop, std::span<token_index>(kept)));
    }
  });
  add("region_mass/max" + tail, floor_name<T>(s), bytes<T>(s), 1, [=](benchmark::State& state) {
    const auto& a = llm_attention<T>(s, 8);
    const index_t L = s.tokens();
    const ts::head_attention_view<T> view(a.data(), {s.heads, L, L});
    const auto visual = ts::token_range::visual_span(s.prefix, s.visual);
    std::vector<float> cross(static_cast<std::size_t>(s.visual)), self(static_cast<std::size_t>(s.visual));
    for (auto _ : state) {
      benchmark::DoNotOptimize(ts::region_mass(policy, view, visual, ts::head_reduction::max, {cross, self}));
      benchmark::ClobberMemory();
    }
  });
}

template <class T>
void register_shape(const llm_shape& s) {
  add(floor_name<T>(s), "", bytes<T>(s), 1, [=](benchmark::State& state) {
    const auto& a = llm_attention<T>(s, 8);
    const index_t L = s.tokens();
    for (auto _ : state) {
      float acc = 0;
      for (index_t h = 0; h < s.heads; ++h) {
        acc += stream_sum_rows(a.data() + (h * L + s.prefix) * L + s.prefix, s.visual + s.text, L, s.visual);
      }
      benchmark::DoNotOptimize(acc);
    }
  });
  register_layer<T>(s, ts::seq);
  register_layer<T>(s, ts::par);
}

void register_all() {
  for (const auto& s : llm_shapes) {
    register_shape<float>(s);
    register_shape<f16>(s);
    register_shape<bf16>(s);
  }
}

}  // namespace

TOKENSEL_BENCH_MAIN(register_all)
