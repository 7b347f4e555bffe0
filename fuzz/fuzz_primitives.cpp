// Building blocks: top_k / bottom_k / rank_descending / complement, IQR fences and outliers,
// percentiles, head reduction, contribution degree, gather / scatter, region mass.
#include <tokensel/stats/contribution_degree.hpp>
#include <tokensel/select/gather.hpp>
#include <tokensel/stats/head_reduction.hpp>
#include <tokensel/stats/iqr_outliers.hpp>
#include <tokensel/stats/region_mass.hpp>
#include <tokensel/select/top_k.hpp>

#include "common.hpp"

namespace {
using namespace tokensel;

template <class T>
void run(FuzzedDataProvider& in) {
  const auto mode = fuzz::draw_mode(in);
  const index_t n = in.ConsumeIntegralInRange<index_t>(0, 24);
  const auto scores = fuzz::make_tensor<T, 1>(in, {n}, mode);
  const index_t k = in.ConsumeIntegralInRange<int>(0, 5) == 0 ? fuzz::draw_count(in, 30) : in.ConsumeIntegralInRange<index_t>(0, n);
  const std::size_t capacity = in.ConsumeIntegralInRange<std::size_t>(0, 26);
  const auto order = in.ConsumeBool() ? index_order::ascending : index_order::ranked;
  const bool top = in.ConsumeBool();
  const auto sel = fuzz::compare_everywhere(in, [&](const auto&, bool contiguous, fuzz::outcome& o) {
    std::vector<token_index> out(capacity, -7);
    const index_t c = top ? top_k<T>(scores.view(contiguous), k, out, order) : bottom_k<T>(scores.view(contiguous), k, out, order);
    o.indices.assign(out.begin(), out.begin() + c);
  });
  if (sel.ok && order == index_order::ascending) fuzz::check_ascending(sel.indices, n, "top_k: indices");
  if (sel.ok) {
    std::vector<token_index> rest(static_cast<std::size_t>(n), -7);
    fuzz::run_guarded([&](fuzz::outcome&) { (void)complement(sel.indices, n, rest); });
  }
  fuzz::compare_everywhere(in, [&](const auto&, bool contiguous, fuzz::outcome& o) {
    std::vector<token_index> out(static_cast<std::size_t>(n), -7);
    rank_descending<T>(scores.view(contiguous), out);
    o.indices = out;
  });

  // IQR.
  const iqr_config icfg{.multiplier = fuzz::draw_scalar(in), .lower_fence = in.ConsumeBool()};
  const double q = in.ConsumeBool() ? fuzz::draw_ratio(in) * 100.0 : fuzz::draw_scalar(in);
  const std::size_t icap = in.ConsumeIntegralInRange<std::size_t>(0, 26);
  const auto iqr = fuzz::compare_everywhere(in, [&](const auto&, bool contiguous, fuzz::outcome& o) {
    std::vector<token_index> out(icap, -7);
    const auto r = iqr_outliers<T>(scores.view(contiguous), icfg, out);
    o.indices.assign(out.begin(), out.begin() + r.count);
    o.stats = {fuzz::bits(r.q1), fuzz::bits(r.q3), fuzz::bits(r.upper_fence), fuzz::bits(r.lower_fence),
               fuzz::bits(percentile_linear<T>(scores.view(contiguous), q))};
  });
  if (iqr.ok) {
    fuzz::check_ascending(iqr.indices, n, "iqr: indices");
    fuzz::require(static_cast<index_t>(iqr.indices.size()) <= iqr_max_count(n, icfg), "iqr: count above iqr_max_count");
  }

  // Head reduction and contribution degree over [heads, r, c].
  const index_t heads = in.ConsumeIntegralInRange<index_t>(0, 3);
  const index_t rows = in.ConsumeIntegralInRange<index_t>(0, 8);
  const index_t cols = in.ConsumeBool() ? rows : in.ConsumeIntegralInRange<index_t>(0, 8);
  const auto attn = fuzz::make_tensor<T, 3>(in, {heads, rows, cols}, mode);
  const auto op = static_cast<head_reduction>(in.ConsumeIntegralInRange<int>(0, 3));
  const index_t out_rows = in.ConsumeBool() ? rows : in.ConsumeIntegralInRange<index_t>(0, 8);
  fuzz::compare_everywhere(in, [&](const auto& policy, bool contiguous, fuzz::outcome& o) {
    std::vector<float> m(static_cast<std::size_t>(out_rows * cols), -7.0f);
    reduce_heads(policy, attn.view(contiguous), op, matrix_view<float>(m.data(), {out_rows, cols}));
    for (float v : m) o.stats.push_back(fuzz::bits(v));
  });
  const std::size_t dsize = in.ConsumeBool() ? static_cast<std::size_t>(rows) : in.ConsumeIntegralInRange<std::size_t>(0, 9);
  fuzz::compare_everywhere(in, [&](const auto& policy, bool contiguous, fuzz::outcome& o) {
    std::vector<float> r(dsize, -7.0f);
    contribution_degree(policy, attn.view(contiguous), op, std::span<float>(r));
    for (float v : r) o.stats.push_back(fuzz::bits(v));
  });

  // Region mass: a fuzzed visual span inside [0, L).
  const token_range visual{fuzz::draw_count(in, 8), fuzz::draw_count(in, 8)};
  const std::size_t rm = in.ConsumeIntegralInRange<std::size_t>(0, 9);
  fuzz::compare_everywhere(in, [&](const auto& policy, bool contiguous, fuzz::outcome& o) {
    std::vector<float> cross(rm, -7.0f), self(rm, -7.0f);
    const auto r = region_mass(policy, attn.view(contiguous), visual, op, region_mass_out{cross, self});
    o.stats = {fuzz::bits(r.cross_mass), fuzz::bits(r.self_mass), fuzz::bits(r.text_rows)};
    for (float v : cross) o.stats.push_back(fuzz::bits(v));
    for (float v : self) o.stats.push_back(fuzz::bits(v));
  });

  // Gather / scatter rows of a [rows, d] matrix with fuzzed indices.
  const index_t d = in.ConsumeIntegralInRange<index_t>(0, 3);
  const auto feats = fuzz::make_tensor<T, 2>(in, {rows, d}, mode);
  std::vector<token_index> idx(in.ConsumeIntegralInRange<std::size_t>(0, 8));
  for (auto& i : idx) i = in.ConsumeIntegralInRange<int>(0, 9) == 0 ? in.ConsumeIntegral<token_index>() : in.ConsumeIntegralInRange<token_index>(0, 8);
  const index_t dst_rows = in.ConsumeBool() ? static_cast<index_t>(idx.size()) : in.ConsumeIntegralInRange<index_t>(0, 9);
  fuzz::compare_everywhere(in, [&](const auto&, bool contiguous, fuzz::outcome& o) {
    std::vector<float> dst(static_cast<std::size_t>(dst_rows * d), -7.0f);
    gather_rows(feats.view(contiguous), idx, matrix_view<float>(dst.data(), {dst_rows, d}));
    for (float v : dst) o.stats.push_back(fuzz::bits(v));
  });
  fuzz::compare_everywhere(in, [&](const auto&, bool contiguous, fuzz::outcome& o) {
    std::vector<float> dst(static_cast<std::size_t>(dst_rows * d), -7.0f);
    scatter_rows(feats.view(contiguous), idx, matrix_view<float>(dst.data(), {dst_rows, d}));
    for (float v : dst) o.stats.push_back(fuzz::bits(v));
  });
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  fuzz::with_element(in.ConsumeIntegral<std::uint8_t>(), [&](auto tag) { run<decltype(tag)>(in); });
  return 0;
}
