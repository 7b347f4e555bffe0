// VisionZip: keep_count on fuzzed configs; select on fuzzed attention [heads, N, N] (or the CLS
// row only, [heads, 1, N]), keys [heads, N, dh], hidden [N, D] and output capacities.
#include <tokensel/methods/visionzip.hpp>

#include "common.hpp"

namespace {
using namespace tokensel;

template <class T>
void run(FuzzedDataProvider& in) {
  visionzip::config cfg{.dominant = fuzz::draw_count(in, 6), .contextual = fuzz::draw_count(in, 4)};
  const index_t any_n = fuzz::draw_count(in, 64);
  fuzz::run_guarded([&](fuzz::outcome&) { (void)visionzip::keep_count(any_n, cfg); });

  const auto mode = fuzz::draw_mode(in);
  const index_t heads = in.ConsumeIntegralInRange<index_t>(0, 3);
  const index_t n = in.ConsumeIntegralInRange<index_t>(0, 12);
  const index_t q = in.ConsumeBool() ? 1 : n;
  const index_t dh = in.ConsumeIntegralInRange<index_t>(0, 3);
  const index_t d = in.ConsumeIntegralInRange<index_t>(0, 3);
  const auto attn = fuzz::make_tensor<T, 3>(in, {heads, q, in.ConsumeIntegralInRange<int>(0, 7) == 0 ? n + 1 : n}, mode);
  const auto keys = fuzz::make_tensor<T, 3>(in, {in.ConsumeIntegralInRange<int>(0, 7) == 0 ? heads + 1 : heads, n, dh}, mode);
  const auto hidden = fuzz::make_tensor<T, 2>(in, {n, d}, mode);
  const std::size_t capacity = in.ConsumeIntegralInRange<std::size_t>(0, 13);
  const index_t rows = in.ConsumeIntegralInRange<index_t>(0, 13);
  const auto sel = fuzz::compare_everywhere(in, [&](const auto& policy, bool contiguous, fuzz::outcome& o) {
    std::vector<token_index> out(capacity, -7);
    std::vector<float> feats(static_cast<std::size_t>(rows * d), -7.0f);
    const auto r = visionzip::select(policy, attn.view(contiguous), keys.view(contiguous), hidden.view(contiguous), cfg, out,
                                     matrix_view<float>(feats.data(), {rows, d}));
    o.indices.assign(out.begin(), out.begin() + r.count);
    o.stats = {fuzz::bits(r.dominant), fuzz::bits(r.contextual), fuzz::bits(r.merged)};
    for (float v : feats) o.stats.push_back(fuzz::bits(v));
  });
  if (sel.ok && n > 0) {
    fuzz::require(static_cast<index_t>(sel.indices.size()) == visionzip::keep_count(n, cfg), "visionzip: count");
    fuzz::check_ascending(std::span<const token_index>(sel.indices).first(static_cast<std::size_t>(cfg.dominant)), n,
                          "visionzip: dominant indices");
  }

  const index_t batch = in.ConsumeIntegralInRange<index_t>(0, 2);
  const auto battn = fuzz::make_tensor<T, 4>(in, {batch, heads, q, n}, mode);
  const auto bkeys = fuzz::make_tensor<T, 4>(in, {batch, heads, n, dh}, mode);
  const auto bhidden = fuzz::make_tensor<T, 3>(in, {batch, n, d}, mode);
  fuzz::compare_everywhere(in, [&](const auto& policy, bool contiguous, fuzz::outcome& o) {
    const auto cap = static_cast<index_t>(capacity);
    std::vector<token_index> idx(static_cast<std::size_t>(batch * cap), -7), counts(static_cast<std::size_t>(batch), -7);
    std::vector<float> feats(static_cast<std::size_t>(batch * rows * d), -7.0f);
    const selection_batch out{tensor_view<token_index, 2>(idx.data(), {batch, cap}), counts};
    visionzip::select(policy, battn.view(contiguous), bkeys.view(contiguous), bhidden.view(contiguous), cfg, out,
                      feature_view<float>(feats.data(), {batch, rows, d}));
    o.indices = idx;
    for (float v : feats) o.stats.push_back(fuzz::bits(v));
  });
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  fuzz::with_element(in.ConsumeIntegral<std::uint8_t>(), [&](auto tag) { run<decltype(tag)>(in); });
  return 0;
}
