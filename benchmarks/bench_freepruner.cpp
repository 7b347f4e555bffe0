// freePruner (default config: mean heads, pivotal layers 6..22, k_pivotal 8, complementary layer
// 22, adaptive) at LLaVA-1.5, LLaVA-NeXT (5 views) and video (8 frames). One image = 17 encoder
// layers of attention [16, N, N] (layers 6..22, each a different synthetic map); the floor is one
// pass over those 17 layers. Two input forms: one-shot select over a layer stack, and the
// streaming selector fed one layer at a time (reset between images, storage reused).
// Counter "kept" = mean tokens kept per view.
#include <vector>

#include "bench_common.hpp"
#include "tokensel/core/batch.hpp"
#include "tokensel/methods/freepruner.hpp"

namespace {

using namespace bench;
namespace ts = tokensel;
namespace fp = ts::freepruner;

constexpr int kFirst = 6, kLast = 22;
constexpr int kLayers = kLast - kFirst + 1;

template <class T>
std::string floor_name(const encoder_shape& s) {
  return std::string("floor/") + dtype<T>() + "/" + s.name + "/17layers";
}

template <class T>
std::int64_t bytes(const encoder_shape& s) {
  return kLayers * encoder_bytes<T>(s);
}

/// The 17 layers' buffers (generated once, in layer order).
template <class T>
std::vector<const T*> layers(const encoder_shape& s) {
  std::vector<const T*> out;
  for (int l = kFirst; l <= kLast; ++l) out.push_back(encoder_attention<T>(s, l).data());
  return out;
}

double mean_count(const std::vector<token_index>& counts) {
  double s = 0;
  for (auto c : counts) s += c;
  return counts.empty() ? 0.0 : s / static_cast<double>(counts.size());
}

template <class T>
void register_floor(const encoder_shape& s) {
  add(floor_name<T>(s), "", bytes<T>(s), s.samples, [=](benchmark::State& state) {
    const auto ptrs = layers<T>(s);
    const index_t count = s.samples * s.heads * s.tokens * s.tokens;
    for (auto _ : state) {
      float acc = 0;
      for (const T* p : ptrs) acc += stream_sum(p, count);
      benchmark::DoNotOptimize(acc);
    }
  });
}

template <class T, class P>
void register_oneshot(const encoder_shape& s, const fp::config& cfg, const std::string& mode, const P& policy) {
  const std::string name = "freepruner/oneshot/" + mode + "/" + dtype<T>() + "/" + s.name + "/" + policy_name(policy);
  add(name, floor_name<T>(s), bytes<T>(s), s.samples, [=](benchmark::State& state) {
    const auto ptrs = layers<T>(s);
    const index_t cap = fp::max_count(s.tokens - 1, cfg);
    std::vector<token_index> idx(static_cast<std::size_t>(s.samples * cap)), counts(static_cast<std::size_t>(s.samples));
    if (s.samples == 1) {
      std::vector<ts::head_attention_view<T>> views;
      for (const T* p : ptrs) views.emplace_back(p, typename ts::head_attention_view<T>::extents_type{s.heads, s.tokens, s.tokens});
      const fp::layer_stack<T> stack{views, kFirst};
      for (auto _ : state) {
        const fp::result r = fp::select(policy, stack, cfg, std::span<token_index>(idx));
        counts[0] = static_cast<token_index>(r.count);
        benchmark::ClobberMemory();
      }
    } else {
      std::vector<ts::attention_view<T>> views;
      for (const T* p : ptrs) {
        views.emplace_back(p, typename ts::attention_view<T>::extents_type{s.samples, s.heads, s.tokens, s.tokens});
      }
      const fp::batch_layer_stack<T> stack{views, kFirst};
      const ts::selection_batch out{{idx.data(), {s.samples, cap}}, counts};
      for (auto _ : state) {
        fp::select(policy, stack, cfg, out);
        benchmark::ClobberMemory();
      }
    }
    state.counters["kept"] = mean_count(counts);
  });
}

template <class T, class P>
void register_stream(const encoder_shape& s, const P& policy) {
  const fp::config cfg{};
  const std::string name = std::string("freepruner/stream/adaptive/") + dtype<T>() + "/" + s.name + "/" + policy_name(policy);
  add(name, floor_name<T>(s), bytes<T>(s), s.samples, [=](benchmark::State& state) {
    const auto ptrs = layers<T>(s);
    const index_t cap = fp::max_count(s.tokens - 1, cfg);
    std::vector<token_index> idx(static_cast<std::size_t>(s.samples * cap)), counts(static_cast<std::size_t>(s.samples));
    const ts::selection_batch out{{idx.data(), {s.samples, cap}}, counts};
    fp::selector sel(s.tokens, cfg, s.samples);
    for (auto _ : state) {
      sel.reset();
      for (int l = kFirst; l <= kLast; ++l) {
        sel.add_layer(policy, l, ts::attention_view<T>(ptrs[static_cast<std::size_t>(l - kFirst)], {s.samples, s.heads, s.tokens, s.tokens}));
      }
      sel.finish(policy, out);
      benchmark::ClobberMemory();
    }
    state.counters["kept"] = mean_count(counts);
  });
}

template <class T>
void register_shape(const encoder_shape& s) {
  register_floor<T>(s);
  const fp::config adaptive{};
  for (auto policy : {0, 1}) {
    if (policy == 0) {
      register_oneshot<T>(s, adaptive, "adaptive", ts::seq);
      register_stream<T>(s, ts::seq);
    } else {
      register_oneshot<T>(s, adaptive, "adaptive", ts::par);
      register_stream<T>(s, ts::par);
    }
  }
  if (s.samples == 1) {
    const fp::config fixed{.mode = fp::mode::fixed, .budget = 144};
    register_oneshot<T>(s, fixed, "fixed144", ts::seq);
  }
}

void register_all() {
  for (const auto& s : encoder_shapes) {
    register_shape<float>(s);
    register_shape<f16>(s);
    register_shape<bf16>(s);
  }
}

}  // namespace

TOKENSEL_BENCH_MAIN(register_all)
