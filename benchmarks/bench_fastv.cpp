// FastV (K = 2, R = 0.5) on the LLM side, Vicuna-7B prefill (32 heads), sequences of
// 35 prefix + visual + 40 text tokens with 576 (LLaVA-1.5), 2880 (LLaVA-NeXT, 5 views) and 2048
// (video, 8 x 256) visual tokens. Input: the last query row of layer K-1 for every head,
// [32, 1, L] (all FastV reads: the last row over the visual columns). Floor: one pass over those
// 32 x n values. These are microsecond-scale calls dominated by the top-k.
#include <vector>

#include "bench_common.hpp"
#include "tokensel/methods/fastv.hpp"

namespace {

using namespace bench;
namespace ts = tokensel;

inline constexpr llm_shape llm_shapes[] = {vicuna_llava15, vicuna_next5, vicuna_video8};

template <class T>
std::string floor_name(const llm_shape& s) {
  return std::string("floor/") + dtype<T>() + "/" + s.name + "/last_row_visual";
}

template <class T>
std::int64_t bytes(const llm_shape& s) {
  return static_cast<std::int64_t>(s.heads * s.visual) * static_cast<std::int64_t>(sizeof(T));
}

template <class T>
void register_shape(const llm_shape& s) {
  add(floor_name<T>(s), "", bytes<T>(s), 1, [=](benchmark::State& state) {
    const auto& a = llm_last_rows<T>(s, 1);
    for (auto _ : state) benchmark::DoNotOptimize(stream_sum_rows(a.data() + s.prefix, s.heads, s.tokens(), s.visual));
  });
  // par: the policy's threads (below parallel_min_bytes it stays on the calling thread, which
  // these rows check: never slower than seq on small work).
  auto run = [=](benchmark::State& state, auto policy) {
    const auto& a = llm_last_rows<T>(s, 1);
    const ts::fastv::config cfg{};
    const ts::head_attention_view<T> view(a.data(), {s.heads, 1, s.tokens()});
    const auto visual = ts::token_range::visual_span(s.prefix, s.visual);
    std::vector<token_index> out(static_cast<std::size_t>(ts::fastv::keep_count(s.visual, cfg)));
    for (auto _ : state) benchmark::DoNotOptimize(ts::fastv::select(policy, view, visual, cfg, std::span<token_index>(out)));
  };
  const std::string name = std::string("fastv/K2_R0.5/") + dtype<T>() + "/" + s.name;
  add(name + "/seq", floor_name<T>(s), bytes<T>(s), 1, [=](benchmark::State& state) { run(state, ts::seq); });
  add(name + "/par", floor_name<T>(s), bytes<T>(s), 1, [=](benchmark::State& state) { run(state, ts::par); });
}

/// The bound a FastV call cannot beat besides its read: the top-k alone (k = n / 2, ascending
/// indices) of the head-mean scores of the same input, fp32 (what FastV ranks, whatever the
/// input type). Named "bound/..." so report_page.py prints it next to the FastV rows.
void register_topk_bound(const llm_shape& s) {
  add(std::string("bound/topk/") + s.name, "", s.visual * 4, 1, [=](benchmark::State& state) {
    const auto& a = llm_last_rows<float>(s, 1);
    std::vector<float> scores(static_cast<std::size_t>(s.visual), 0.0f);
    for (index_t h = 0; h < s.heads; ++h) {
      for (index_t j = 0; j < s.visual; ++j) scores[j] += a[h * s.tokens() + s.prefix + j];
    }
    const ts::fastv::config cfg{};
    std::vector<token_index> out(static_cast<std::size_t>(ts::fastv::keep_count(s.visual, cfg)));
    const auto view = ts::as_view(std::span<const float>(scores));
    for (auto _ : state) benchmark::DoNotOptimize(ts::top_k<float>(view, static_cast<index_t>(out.size()), out));
  });
}

void register_all() {
  for (const auto& s : llm_shapes) register_topk_bound(s);
  for (const auto& s : llm_shapes) {
    register_shape<float>(s);
    register_shape<f16>(s);
    register_shape<bf16>(s);
  }
}

}  // namespace

TOKENSEL_BENCH_MAIN(register_all)
