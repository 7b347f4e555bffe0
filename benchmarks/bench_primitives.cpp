// Building blocks at LLaVA-1.5 shape (16 x 577 x 577, one image): head reduction, fused map sums,
// contribution degree, variance-axis significance, top-k and IQR outliers on 576 scores.
#include <vector>

#include "bench_common.hpp"
#include "tokensel/stats/contribution_degree.hpp"
#include "tokensel/stats/head_reduction.hpp"
#include "tokensel/stats/iqr_outliers.hpp"
#include "tokensel/stats/map_sums.hpp"
#include "tokensel/core/token_range.hpp"
#include "tokensel/select/top_k.hpp"
#include "tokensel/stats/variance_axis.hpp"

namespace {

using namespace bench;
namespace ts = tokensel;

template <class T, class P>
void register_attention_primitives(const P& policy) {
  const encoder_shape s = llava15;
  const std::string tail = std::string("/") + dtype<T>() + "/" + s.name + "/" + policy_name(policy);
  const std::string floor = encoder_floor_name<T>(s);
  const auto bytes = encoder_bytes<T>(s);
  const index_t n = s.tokens - 1;

  add("reduce_heads/mean" + tail, floor, bytes, 1, [=](benchmark::State& state) {
    const auto view = encoder_view(encoder_attention<T>(s), s, 0);
    std::vector<float> map(static_cast<std::size_t>(s.tokens * s.tokens));
    const ts::matrix_view<float> out(map.data(), {s.tokens, s.tokens});
    for (auto _ : state) {
      ts::reduce_heads(policy, view, ts::head_reduction::mean, out);
      benchmark::ClobberMemory();
    }
  });
  add("map_sums/rows+cols+diag" + tail, floor, bytes, 1, [=](benchmark::State& state) {
    const auto view = ts::restrict_tokens(encoder_view(encoder_attention<T>(s), s, 0), ts::token_range::skip_cls(s.tokens));
    std::vector<float> rows(n), cols(n), diag(n);
    for (auto _ : state) {
      ts::map_sums(policy, view, ts::head_reduction::mean, {.row_sums = rows, .column_sums = cols, .diagonal = diag});
      benchmark::ClobberMemory();
    }
  });
  add("contribution_degree" + tail, floor, bytes, 1, [=](benchmark::State& state) {
    const auto view = encoder_view(encoder_attention<T>(s), s, 0);
    std::vector<float> r(n);
    for (auto _ : state) {
      ts::contribution_degree(policy, view, ts::head_reduction::mean, std::span<float>(r));
      benchmark::ClobberMemory();
    }
  });
  add("variance_axis" + tail, floor, bytes, 1, [=](benchmark::State& state) {
    const auto view = ts::restrict_tokens(encoder_view(encoder_attention<T>(s), s, 0), ts::token_range::skip_cls(s.tokens));
    std::vector<float> sig(n);
    for (auto _ : state) {
      benchmark::DoNotOptimize(ts::variance_axis_significance(policy, view, ts::head_reduction::mean, std::span<float>(sig)));
      benchmark::ClobberMemory();
    }
  });
}

void register_score_primitives() {
  // 576 scores (one image's patches); no floor: these read 2.3 KB and measure fixed costs.
  const index_t n = 576;
  for (const index_t k : {index_t{64}, index_t{288}}) {
    add("top_k/n576/k" + std::to_string(k), "", n * 4, 1, [=](benchmark::State& state) {
      const auto& x = gaussian<float>(n, 1);
      std::vector<token_index> out(k);
      const auto view = ts::as_view(std::span<const float>(x));
      for (auto _ : state) benchmark::DoNotOptimize(ts::top_k<float>(view, k, out));
    });
  }
  add("rank_descending/n576", "", n * 4, 1, [=](benchmark::State& state) {
    const auto& x = gaussian<float>(n, 1);
    std::vector<token_index> out(n);
    const auto view = ts::as_view(std::span<const float>(x));
    for (auto _ : state) {
      ts::rank_descending<float>(view, out);
      benchmark::ClobberMemory();
    }
  });
  add("iqr_outliers/n576", "", n * 4, 1, [=](benchmark::State& state) {
    const auto& x = gaussian<float>(n, 1);
    std::vector<token_index> out(n);
    const auto view = ts::as_view(std::span<const float>(x));
    for (auto _ : state) benchmark::DoNotOptimize(ts::iqr_outliers<float>(view, {}, out));
  });
}

void register_all() {
  add_encoder_floor<float>(llava15);
  add_encoder_floor<f16>(llava15);
  add_encoder_floor<bf16>(llava15);
  register_attention_primitives<float>(ts::seq);
  register_attention_primitives<f16>(ts::seq);
  register_attention_primitives<bf16>(ts::seq);
  register_attention_primitives<float>(ts::par);
  register_attention_primitives<f16>(ts::par);
  register_attention_primitives<bf16>(ts::par);
  register_score_primitives();
}

}  // namespace

TOKENSEL_BENCH_MAIN(register_all)
