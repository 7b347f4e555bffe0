// freePruner: keep_count / max_count on fuzzed n and configs (layer ranges, k, multiplier, mode,
// budget); select on a fuzzed stack of [heads, N, N] layers (offset, per-layer heads, layouts).
#include <tokensel/methods/freepruner.hpp>

#include "common.hpp"

namespace {
using namespace tokensel;

template <class T>
void run(FuzzedDataProvider& in) {
  freepruner::config cfg;
  cfg.heads = static_cast<head_reduction>(in.ConsumeIntegralInRange<int>(0, 3));
  cfg.first_layer = in.ConsumeIntegralInRange<int>(0, 7) == 0 ? fuzz::draw_count(in, 3) : in.ConsumeIntegralInRange<index_t>(0, 2);
  cfg.last_layer = in.ConsumeIntegralInRange<int>(0, 7) == 0 ? fuzz::draw_count(in, 3) : std::min<index_t>(cfg.first_layer, 100) + in.ConsumeIntegralInRange<index_t>(0, 2);
  cfg.complementary_layer = in.ConsumeIntegralInRange<int>(0, 7) == 0 ? fuzz::draw_count(in, 3) : in.ConsumeIntegralInRange<index_t>(0, 4);
  cfg.k_pivotal = fuzz::draw_count(in, 4);
  cfg.iqr_multiplier = fuzz::draw_scalar(in);
  cfg.mode = static_cast<freepruner::mode>(in.ConsumeIntegralInRange<int>(0, 2));
  cfg.budget = fuzz::draw_count(in, 8);
  cfg.skip_cls = in.ConsumeIntegralInRange<int>(0, 3) != 0;
  const index_t any_n = fuzz::draw_count(in, 64);
  fuzz::run_guarded([&](fuzz::outcome&) { (void)freepruner::keep_count(any_n, cfg); });
  fuzz::run_guarded([&](fuzz::outcome&) { (void)freepruner::max_count(any_n, cfg); });

  const auto mode = fuzz::draw_mode(in);
  const index_t tokens = in.ConsumeIntegralInRange<index_t>(0, 9);
  const index_t layer_count = in.ConsumeIntegralInRange<index_t>(0, 6);
  const index_t offset = in.ConsumeIntegralInRange<int>(0, 7) == 0 ? in.ConsumeIntegralInRange<index_t>(0, 2) : 0;
  std::vector<fuzz::tensor<T, 3>> layers;
  for (index_t l = 0; l < layer_count; ++l) {
    const index_t heads = in.ConsumeIntegralInRange<index_t>(0, 2);
    const index_t n = in.ConsumeIntegralInRange<int>(0, 15) == 0 ? in.ConsumeIntegralInRange<index_t>(0, 9) : tokens;
    layers.push_back(fuzz::make_tensor<T, 3>(in, {heads, n, n}, mode));
  }
  std::vector<head_attention_view<T>> strided, contiguous;
  for (const auto& l : layers) {
    strided.push_back(l.view(false));
    contiguous.push_back(l.view(true));
  }
  const std::size_t capacity = in.ConsumeIntegralInRange<std::size_t>(0, 10);
  const auto sel = fuzz::compare_everywhere(in, [&](const auto& policy, bool use_contiguous, fuzz::outcome& o) {
    std::vector<token_index> out(capacity, -7);
    const freepruner::layer_stack<T> stack{use_contiguous ? contiguous : strided, offset};
    const auto r = freepruner::select(policy, stack, cfg, out);
    o.indices.assign(out.begin(), out.begin() + r.count);
    o.stats = {fuzz::bits(r.pivotal), fuzz::bits(r.complementary), fuzz::bits(r.candidates), fuzz::bits(r.dropped),
               fuzz::bits(r.filled)};
  });
  if (sel.ok) {
    // The token count is that of the layers the config reads (a layer outside them may have
    // another size), i.e. of the first pivotal layer.
    const index_t used_tokens = layers[static_cast<std::size_t>(cfg.first_layer - offset)].view(true).extent(1);
    const index_t n = cfg.skip_cls ? std::max<index_t>(used_tokens - 1, 0) : used_tokens;
    fuzz::require(static_cast<index_t>(sel.indices.size()) <= freepruner::max_count(n, cfg), "freepruner: count above max_count");
    fuzz::check_ascending(sel.indices, n, "freepruner: indices");
  }
  // The inspection overload must agree with the plain one.
  if (sel.ok) {
    std::vector<token_index> out(capacity, -7);
    freepruner::inspection info;
    const auto r = freepruner::select(seq, freepruner::layer_stack<T>{strided, offset}, cfg, out, info);
    fuzz::require(std::equal(out.begin(), out.begin() + r.count, sel.indices.begin(), sel.indices.end()),
                  "freepruner: inspection overload differs");
  }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  fuzz::with_element(in.ConsumeIntegral<std::uint8_t>(), [&](auto tag) { run<decltype(tag)>(in); });
  return 0;
}
