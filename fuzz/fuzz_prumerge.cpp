// PruMerge / PruMerge+: max_count / max_rows on fuzzed n and configs; select from fuzzed Q/K
// (with and without merge) and from a fuzzed CLS attention row.
#include <tokensel/methods/prumerge.hpp>

#include "common.hpp"

namespace {
using namespace tokensel;

template <class T>
void run(FuzzedDataProvider& in) {
  prumerge::config cfg;
  cfg.mode = static_cast<prumerge::mode>(in.ConsumeIntegralInRange<int>(0, 2));
  cfg.plus = in.ConsumeBool();
  cfg.neighbours = fuzz::draw_count(in, 6);
  cfg.iqr_multiplier = fuzz::draw_scalar(in);
  cfg.merge = in.ConsumeBool();
  cfg.extra_token = in.ConsumeBool();
  cfg.scale = in.ConsumeBool() ? 0.0 : fuzz::draw_scalar(in);
  const index_t any_n = fuzz::draw_count(in, 64);
  fuzz::run_guarded([&](fuzz::outcome&) { (void)prumerge::max_rows(any_n, cfg); });

  const auto mode = fuzz::draw_mode(in);
  const index_t n = in.ConsumeIntegralInRange<index_t>(0, 12);  // patches
  const index_t dim = in.ConsumeIntegralInRange<index_t>(0, 3);
  const index_t qrows = in.ConsumeBool() ? 1 : n + 1;
  const index_t krows = in.ConsumeIntegralInRange<int>(0, 7) == 0 ? in.ConsumeIntegralInRange<index_t>(0, 13) : n + 1;
  const auto queries = fuzz::make_tensor<T, 2>(in, {qrows, dim}, mode);
  const auto keys = fuzz::make_tensor<T, 2>(in, {krows, in.ConsumeIntegralInRange<int>(0, 7) == 0 ? dim + 1 : dim}, mode);
  const index_t fdim = in.ConsumeIntegralInRange<index_t>(0, 3);
  const auto features = fuzz::make_tensor<T, 2>(in, {in.ConsumeIntegralInRange<int>(0, 7) == 0 ? n + 1 : n, fdim}, mode);
  const std::size_t capacity = in.ConsumeIntegralInRange<std::size_t>(0, 13);
  const index_t merged_rows = in.ConsumeIntegralInRange<index_t>(0, 14);

  const auto sel = fuzz::compare_everywhere(in, [&](const auto& policy, bool contiguous, fuzz::outcome& o) {
    std::vector<token_index> out(capacity, -7);
    const auto r = prumerge::select(policy, queries.view(contiguous), keys.view(contiguous), cfg, out);
    o.indices.assign(out.begin(), out.begin() + r.count);
    o.stats = {fuzz::bits(r.outliers), fuzz::bits(r.grid), fuzz::bits(r.stride), fuzz::bits(r.iqr.q1), fuzz::bits(r.iqr.q3)};
  });
  if (sel.ok) {
    // The patches are the keys after CLS: with a single (CLS) query row the keys decide n.
    const index_t patches = krows - 1;
    if (static_cast<index_t>(sel.indices.size()) > prumerge::max_count(patches, cfg)) {
      std::fprintf(stderr, "n = %lld, plus = %d, c = %g, count = %zu, max_count = %lld\n", static_cast<long long>(patches),
                   int(cfg.plus), cfg.iqr_multiplier, sel.indices.size(), static_cast<long long>(prumerge::max_count(patches, cfg)));
      fuzz::finding("prumerge: count above max_count");
    }
    if (cfg.mode == prumerge::mode::fixed) fuzz::check_ascending(sel.indices, patches, "prumerge: indices");
  }
  fuzz::compare_everywhere(in, [&](const auto& policy, bool contiguous, fuzz::outcome& o) {
    std::vector<token_index> out(capacity, -7);
    std::vector<float> merged(static_cast<std::size_t>(merged_rows * fdim), -7.0f);
    const auto r = prumerge::select(policy, queries.view(contiguous), keys.view(contiguous), features.view(contiguous), cfg,
                                    out, matrix_view<float>(merged.data(), {merged_rows, fdim}));
    o.indices.assign(out.begin(), out.begin() + r.count);
    for (float v : merged) o.stats.push_back(fuzz::bits(v));
  });

  // From a CLS attention row [n] (and patch keys [n, D] for the merge).
  const auto row = fuzz::make_tensor<T, 1>(in, {n}, mode);
  const auto pkeys = fuzz::make_tensor<T, 2>(in, {n, dim}, mode);
  fuzz::compare_everywhere(in, [&](const auto& policy, bool contiguous, fuzz::outcome& o) {
    std::vector<token_index> out(capacity, -7);
    const auto r = prumerge::select_from_attention(policy, row.view(contiguous), cfg, out);
    o.indices.assign(out.begin(), out.begin() + r.count);
  });
  fuzz::compare_everywhere(in, [&](const auto& policy, bool contiguous, fuzz::outcome& o) {
    std::vector<token_index> out(capacity, -7);
    std::vector<float> merged(static_cast<std::size_t>(merged_rows * fdim), -7.0f);
    const auto r = prumerge::select_from_attention(policy, row.view(contiguous), pkeys.view(contiguous), features.view(contiguous),
                                                   cfg, out, matrix_view<float>(merged.data(), {merged_rows, fdim}));
    o.indices.assign(out.begin(), out.begin() + r.count);
    for (float v : merged) o.stats.push_back(fuzz::bits(v));
  });
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  fuzz::with_element(in.ConsumeIntegral<std::uint8_t>(), [&](auto tag) { run<decltype(tag)>(in); });
  return 0;
}
