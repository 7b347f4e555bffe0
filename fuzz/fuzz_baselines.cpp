// Baselines: random (seeded), uniform grid, pooling: fuzzed n, grids, budgets, windows, features.
#include <tokensel/methods/baselines.hpp>

#include "common.hpp"

namespace {
using namespace tokensel;
namespace bl = tokensel::baselines;

template <class Cfg>
Cfg draw_budget(FuzzedDataProvider& in) {
  Cfg cfg;
  const int which = in.ConsumeIntegralInRange<int>(0, 3);
  if (which & 1) cfg.ratio = fuzz::draw_ratio(in);
  if (which & 2) cfg.count = fuzz::draw_count(in, 12);
  return cfg;
}

template <class T>
void run(FuzzedDataProvider& in) {
  const index_t any_n = fuzz::draw_count(in, 64);
  const index_t n = in.ConsumeIntegralInRange<index_t>(0, 40);
  const std::size_t capacity = in.ConsumeIntegralInRange<std::size_t>(0, 44);

  auto rcfg = draw_budget<bl::random::config>(in);
  rcfg.seed = in.ConsumeIntegral<std::uint64_t>();
  const std::uint64_t stream = in.ConsumeIntegral<std::uint64_t>();
  fuzz::run_guarded([&](fuzz::outcome&) { (void)bl::random::keep_count(any_n, rcfg); });
  const auto r = fuzz::compare_everywhere(in, [&](const auto& policy, bool, fuzz::outcome& o) {
    std::vector<token_index> out(capacity, -7);
    const auto res = bl::random::select(policy, n, rcfg, out, stream);
    o.indices.assign(out.begin(), out.begin() + res.count);
  });
  if (r.ok) fuzz::check_ascending(r.indices, n, "random: indices");

  const auto ucfg = draw_budget<bl::uniform::config>(in);
  fuzz::run_guarded([&](fuzz::outcome&) { (void)bl::uniform::keep_count(any_n, ucfg); });
  const token_grid grid{fuzz::draw_count(in, 7), fuzz::draw_count(in, 7)};
  const bool use_grid = in.ConsumeBool();
  const auto u = fuzz::compare_everywhere(in, [&](const auto& policy, bool, fuzz::outcome& o) {
    std::vector<token_index> out(capacity, -7);
    const auto res = use_grid ? bl::uniform::select(policy, grid, ucfg, out) : bl::uniform::select(policy, n, ucfg, out);
    o.indices.assign(out.begin(), out.begin() + res.count);
    o.stats = {fuzz::bits(res.rows_used)};
  });
  if (u.ok) fuzz::check_ascending(u.indices, std::max<index_t>(n, 1) * 64, "uniform: indices");
  std::vector<index_t> ns{n, in.ConsumeIntegralInRange<index_t>(0, 20)};
  fuzz::compare_everywhere(in, [&](const auto& policy, bool, fuzz::outcome& o) {
    std::vector<token_index> idx(2 * capacity, -7), counts(2, -7);
    const selection_batch out{tensor_view<token_index, 2>(idx.data(), {2, static_cast<index_t>(capacity)}), counts};
    bl::uniform::select(policy, std::span<const index_t>(ns), ucfg, out);
    o.indices = idx;
    o.stats = {fuzz::bits(index_t{counts[0]}), fuzz::bits(index_t{counts[1]})};
  });

  // Pooling over a small fuzzed grid of features.
  bl::pool::config pcfg{.window = fuzz::draw_count(in, 4), .partial_windows = in.ConsumeBool()};
  const token_grid pg{in.ConsumeIntegralInRange<index_t>(0, 6), in.ConsumeIntegralInRange<index_t>(0, 6)};
  const index_t rows = in.ConsumeIntegralInRange<int>(0, 7) == 0 ? in.ConsumeIntegralInRange<index_t>(0, 40) : pg.rows * pg.cols;
  const index_t dim = in.ConsumeIntegralInRange<index_t>(0, 3);
  const auto feats = fuzz::make_tensor<T, 2>(in, {rows, dim}, fuzz::draw_mode(in));
  const index_t out_rows = in.ConsumeIntegralInRange<index_t>(0, 40);
  fuzz::compare_everywhere(in, [&](const auto& policy, bool contiguous, fuzz::outcome& o) {
    std::vector<float> dst(static_cast<std::size_t>(out_rows * dim), -7.0f);
    const auto res = bl::pool::apply(policy, feats.view(contiguous), pg, pcfg, matrix_view<float>(dst.data(), {out_rows, dim}));
    o.stats.push_back(fuzz::bits(res.count));
    for (float v : dst) o.stats.push_back(fuzz::bits(v));
  });
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  fuzz::with_element(in.ConsumeIntegral<std::uint8_t>(), [&](auto tag) { run<decltype(tag)>(in); });
  return 0;
}
