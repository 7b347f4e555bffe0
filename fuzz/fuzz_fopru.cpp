// FoPru: keep_count on fuzzed n and configs; select on fuzzed [heads, N, N] views (element type,
// layout, values, output capacity) and on 4-D batches. Oracles in common.hpp.
#include <tokensel/methods/fopru.hpp>

#include "common.hpp"

namespace {
using namespace tokensel;

fopru::config draw_config(FuzzedDataProvider& in) {
  fopru::config cfg;
  cfg.ratio = fuzz::draw_ratio(in);
  cfg.strategy = in.ConsumeBool() ? fopru::strategy::rank : fopru::strategy::row;
  cfg.heads = static_cast<head_reduction>(in.ConsumeIntegralInRange<int>(0, 3));
  cfg.skip_cls = in.ConsumeIntegralInRange<int>(0, 3) != 0;
  if (in.ConsumeBool()) cfg.grid = token_grid{fuzz::draw_count(in, 4), fuzz::draw_count(in, 4)};
  cfg.row_score = in.ConsumeBool() ? row_reduction::sum : row_reduction::mean;
  return cfg;
}

template <class T>
void run(FuzzedDataProvider& in) {
  const fopru::config cfg = draw_config(in);
  const index_t any_n = fuzz::draw_count(in, 64);
  fuzz::run_guarded([&](fuzz::outcome& o) { o.stats.push_back(fuzz::bits(fopru::keep_count(any_n, cfg))); });

  const auto mode = fuzz::draw_mode(in);
  const index_t heads = in.ConsumeIntegralInRange<index_t>(0, 3);
  const index_t tokens = in.ConsumeIntegralInRange<index_t>(0, 10);
  const index_t keys = in.ConsumeIntegralInRange<int>(0, 7) == 0 ? in.ConsumeIntegralInRange<index_t>(0, 10) : tokens;
  const auto attn = fuzz::make_tensor<T, 3>(in, {heads, tokens, keys}, mode);
  const std::size_t capacity = in.ConsumeIntegralInRange<std::size_t>(0, 12);
  const auto single = fuzz::compare_everywhere(in, [&](const auto& policy, bool contiguous, fuzz::outcome& o) {
    std::vector<token_index> out(capacity, -7);
    const auto r = fopru::select(policy, attn.view(contiguous), cfg, out);
    o.indices.assign(out.begin(), out.begin() + r.count);
    o.stats = {fuzz::bits(r.count), fuzz::bits(r.row_variance), fuzz::bits(r.column_variance),
               fuzz::bits(r.rows_kept), static_cast<std::uint64_t>(r.axis)};
  });
  if (single.ok) {
    const index_t n = cfg.skip_cls ? std::max<index_t>(tokens - 1, 0) : tokens;
    fuzz::require(static_cast<index_t>(single.indices.size()) == fopru::keep_count(n, cfg), "fopru: count != keep_count");
    fuzz::check_ascending(single.indices, n, "fopru: indices not ascending in [0, n)");
  }

  // Batch of B samples of the same shape.
  const index_t batch = in.ConsumeIntegralInRange<index_t>(0, 3);
  const auto stack = fuzz::make_tensor<T, 4>(in, {batch, heads, tokens, tokens}, mode);
  const index_t cap = in.ConsumeIntegralInRange<index_t>(0, 10);
  fuzz::compare_everywhere(in, [&](const auto& policy, bool contiguous, fuzz::outcome& o) {
    std::vector<token_index> idx(static_cast<std::size_t>(batch * cap), -7), counts(static_cast<std::size_t>(batch), -7);
    std::vector<fopru::result> results(static_cast<std::size_t>(batch));
    const selection_batch out{tensor_view<token_index, 2>(idx.data(), {batch, cap}), counts};
    fopru::select(policy, stack.view(contiguous), cfg, out, std::span<fopru::result>(results));
    for (index_t b = 0; b < batch; ++b) {
      o.indices.insert(o.indices.end(), idx.begin() + b * cap, idx.begin() + b * cap + counts[b]);
      o.stats.push_back(fuzz::bits(results[b].row_variance));
    }
  });

  // Legitimately empty views with huge other extents (null data is allowed when empty).
  if (in.ConsumeBool()) {
    const index_t huge = fuzz::draw_count(in, 1 << 20);
    if (huge >= 0) {
      std::vector<token_index> out(4);
      fuzz::run_guarded([&](fuzz::outcome&) { fopru::select(seq, head_attention_view<T>(nullptr, {0, huge, huge}), cfg, out); });
      fuzz::run_guarded([&](fuzz::outcome&) { fopru::select(seq, head_attention_view<T>(nullptr, {huge, 0, 0}), cfg, out); });
      std::vector<token_index> counts(1);
      const selection_batch one{tensor_view<token_index, 2>(nullptr, {1, 0}), counts};
      fuzz::run_guarded([&](fuzz::outcome&) { fopru::select(seq, attention_view<T>(nullptr, {1, huge, 0, 0}), cfg, one); });
      fuzz::run_guarded([&](fuzz::outcome&) { fopru::select(seq, attention_view<T>(nullptr, {huge, huge, 0, 0}), cfg, one); });
    }
  }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  fuzz::with_element(in.ConsumeIntegral<std::uint8_t>(), [&](auto tag) { run<decltype(tag)>(in); });
  return 0;
}
