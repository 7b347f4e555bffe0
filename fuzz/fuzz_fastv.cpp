// FastV: keep_count on fuzzed n / ratio / layer; select on fuzzed [heads, L, L] views with a
// fuzzed visual span and capacity; 4-D batches.
#include <tokensel/methods/fastv.hpp>

#include "common.hpp"

namespace {
using namespace tokensel;

template <class T>
void run(FuzzedDataProvider& in) {
  fastv::config cfg;
  cfg.ratio = in.ConsumeBool() ? fuzz::draw_ratio(in) : 1.0 - fuzz::draw_ratio(in);
  cfg.layer = fuzz::draw_count(in, 4);
  cfg.heads = static_cast<head_reduction>(in.ConsumeIntegralInRange<int>(0, 3));
  const index_t any_n = fuzz::draw_count(in, 64);
  fuzz::run_guarded([&](fuzz::outcome&) { (void)fastv::keep_count(any_n, cfg); });

  const auto mode = fuzz::draw_mode(in);
  const index_t heads = in.ConsumeIntegralInRange<index_t>(0, 3);
  const index_t len = in.ConsumeIntegralInRange<index_t>(0, 10);
  const index_t queries = in.ConsumeIntegralInRange<int>(0, 5) == 0 ? in.ConsumeIntegralInRange<index_t>(0, 10) : len;
  const token_range visual{fuzz::draw_count(in, 5), fuzz::draw_count(in, 8)};
  const auto attn = fuzz::make_tensor<T, 3>(in, {heads, queries, len}, mode);
  const std::size_t capacity = in.ConsumeIntegralInRange<std::size_t>(0, 11);
  const auto single = fuzz::compare_everywhere(in, [&](const auto& policy, bool contiguous, fuzz::outcome& o) {
    std::vector<token_index> out(capacity, -7);
    const auto r = fastv::select(policy, attn.view(contiguous), visual, cfg, out);
    o.indices.assign(out.begin(), out.begin() + r.count);
    o.stats = {fuzz::bits(r.visual_mass), fuzz::bits(r.kept_mass)};
  });
  if (single.ok) {
    fuzz::require(static_cast<index_t>(single.indices.size()) == fastv::keep_count(visual.count, cfg), "fastv: count");
    fuzz::check_ascending(single.indices, visual.count, "fastv: indices");
  }
  // Scores entry point.
  const auto scores = fuzz::make_tensor<T, 1>(in, {len}, mode);
  fuzz::compare_everywhere(in, [&](const auto&, bool contiguous, fuzz::outcome& o) {
    std::vector<token_index> out(capacity, -7);
    const auto r = fastv::select_scores<T>(scores.view(contiguous), cfg, out);
    o.indices.assign(out.begin(), out.begin() + r.count);
  });

  const index_t batch = in.ConsumeIntegralInRange<index_t>(0, 3);
  const auto stack = fuzz::make_tensor<T, 4>(in, {batch, heads, queries, len}, mode);
  const index_t cap = in.ConsumeIntegralInRange<index_t>(0, 10);
  fuzz::compare_everywhere(in, [&](const auto& policy, bool contiguous, fuzz::outcome& o) {
    std::vector<token_index> idx(static_cast<std::size_t>(batch * cap), -7), counts(static_cast<std::size_t>(batch), -7);
    const selection_batch out{tensor_view<token_index, 2>(idx.data(), {batch, cap}), counts};
    fastv::select(policy, stack.view(contiguous), visual, cfg, out);
    for (index_t b = 0; b < batch; ++b) o.indices.insert(o.indices.end(), idx.begin() + b * cap, idx.begin() + b * cap + counts[b]);
  });
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  fuzz::with_element(in.ConsumeIntegral<std::uint8_t>(), [&](auto tag) { run<decltype(tag)>(in); });
  return 0;
}
