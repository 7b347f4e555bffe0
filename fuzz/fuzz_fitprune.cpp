// FitPrune: prune_layer on fuzzed [heads, L, L] views, visual spans and drop counts (single and
// batched); recipe arithmetic (drops_at, scaled_drops, keep_count, flops_ratio) on fuzzed
// recipes; calibration (calibrator, fit) on fuzzed statistics.
#include <tokensel/methods/fitprune.hpp>

#include "common.hpp"

namespace {
using namespace tokensel;

template <class T>
void run(FuzzedDataProvider& in) {
  const fitprune::config cfg{.heads = static_cast<head_reduction>(in.ConsumeIntegralInRange<int>(0, 3))};
  const auto mode = fuzz::draw_mode(in);
  const index_t heads = in.ConsumeIntegralInRange<index_t>(0, 3);
  const index_t len = in.ConsumeIntegralInRange<index_t>(0, 10);
  const index_t queries = in.ConsumeIntegralInRange<int>(0, 5) == 0 ? in.ConsumeIntegralInRange<index_t>(0, 10) : len;
  const token_range visual{fuzz::draw_count(in, 4), fuzz::draw_count(in, 8)};
  const index_t drop = fuzz::draw_count(in, 6);
  const auto attn = fuzz::make_tensor<T, 3>(in, {heads, queries, len}, mode);
  const std::size_t capacity = in.ConsumeIntegralInRange<std::size_t>(0, 11);
  const auto single = fuzz::compare_everywhere(in, [&](const auto& policy, bool contiguous, fuzz::outcome& o) {
    std::vector<token_index> out(capacity, -7);
    const auto r = fitprune::prune_layer(policy, attn.view(contiguous), visual, drop, cfg, out);
    o.indices.assign(out.begin(), out.begin() + r.count);
    o.stats = {fuzz::bits(r.dropped), fuzz::bits(r.cross_mass), fuzz::bits(r.self_mass)};
  });
  if (single.ok) {
    fuzz::require(static_cast<index_t>(single.indices.size()) == visual.count - drop, "fitprune: kept count");
    fuzz::check_ascending(single.indices, visual.count, "fitprune: indices");
  }
  const index_t batch = in.ConsumeIntegralInRange<index_t>(0, 3);
  const auto stack = fuzz::make_tensor<T, 4>(in, {batch, heads, queries, len}, mode);
  const index_t cap = in.ConsumeIntegralInRange<index_t>(0, 10);
  fuzz::compare_everywhere(in, [&](const auto& policy, bool contiguous, fuzz::outcome& o) {
    std::vector<token_index> idx(static_cast<std::size_t>(batch * cap), -7), counts(static_cast<std::size_t>(batch), -7);
    const selection_batch out{tensor_view<token_index, 2>(idx.data(), {batch, cap}), counts};
    fitprune::prune_layer(policy, stack.view(contiguous), visual, drop, cfg, out);
    for (index_t b = 0; b < batch; ++b) o.indices.insert(o.indices.end(), idx.begin() + b * cap, idx.begin() + b * cap + counts[b]);
  });

  // Recipe arithmetic.
  fitprune::recipe r;
  r.geometry = {fuzz::draw_count(in, 64), fuzz::draw_count(in, 64), in.ConsumeIntegralInRange<index_t>(0, 6),
                fuzz::draw_count(in, 12)};
  r.drops.resize(static_cast<std::size_t>(std::max<index_t>(r.geometry.layers + in.ConsumeIntegralInRange<int>(-1, 1), 0)));
  for (auto& d : r.drops) d = in.ConsumeIntegralInRange<int>(0, 9) == 0 ? fuzz::draw_count(in, 4) : in.ConsumeIntegralInRange<index_t>(0, 3);
  r.reduction = in.ConsumeBool() ? fuzz::draw_ratio(in) : 0.5;
  if (in.ConsumeBool()) r.alpha = fuzz::draw_ratio(in);
  const index_t n = fuzz::draw_count(in, 600);
  const index_t layer = fuzz::draw_count(in, 6);
  fuzz::run_guarded([&](fuzz::outcome&) { (void)fitprune::keep_count(n, r); });
  fuzz::run_guarded([&](fuzz::outcome&) { (void)fitprune::drops_at(r, layer, n); });
  fuzz::run_guarded([&](fuzz::outcome&) { (void)fitprune::flops_ratio(r, n); });
  fuzz::run_guarded([&](fuzz::outcome&) {
    std::vector<index_t> out(static_cast<std::size_t>(in.ConsumeIntegralInRange<index_t>(0, 6)));
    fitprune::scaled_drops(r, n, out);
  });
  fuzz::run_guarded([&](fuzz::outcome&) {
    const index_t left = fitprune::keep_count(n, r);
    fuzz::require(left >= 0 && left <= n, "fitprune: keep_count outside [0, n]");
  });

  // Calibration on small fuzzed statistics.
  const fitprune::flops_model g{in.ConsumeIntegralInRange<index_t>(0, 64), in.ConsumeIntegralInRange<index_t>(0, 64),
                                in.ConsumeIntegralInRange<index_t>(0, 3), in.ConsumeIntegralInRange<index_t>(0, 8)};
  fuzz::run_guarded([&](fuzz::outcome&) {
    fitprune::calibrator cal(g);
    const index_t samples = in.ConsumeIntegralInRange<index_t>(0, 2);
    for (index_t s = 0; s < samples; ++s) {
      const index_t id = cal.add_sample();
      for (index_t l = 0; l < g.layers; ++l) {
        std::vector<float> c(static_cast<std::size_t>(g.visual_tokens)), v(c.size());
        for (auto& x : c) x = fuzz::draw_value(in, mode);
        for (auto& x : v) x = fuzz::draw_value(in, mode);
        cal.add_layer(id, l, {.cross = c, .self = v, .text_rows = fuzz::draw_count(in, 3),
                              .cross_mass = fuzz::draw_value(in, mode), .self_mass = fuzz::draw_value(in, mode)});
      }
    }
    const auto res = cal.fit(fuzz::draw_ratio(in), {.tolerance = in.ConsumeBool() ? 5e-324 : fuzz::draw_ratio(in)});
    fitprune::validate(res.recipe);
  });
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  fuzz::with_element(in.ConsumeIntegral<std::uint8_t>(), [&](auto tag) { run<decltype(tag)>(in); });
  return 0;
}
