// VisionZip (dominant 54 + contextual 10, the LLaVA-1.5 default) at LLaVA-1.5, LLaVA-NeXT (5 views)
// and video (8 frames): inputs are the layer-22 attention [16, N, N] (only the CLS row is read),
// keys [16, N, 64] and hidden states [N, 1024]; the output is 64 feature rows per view.
// Floor: one pass over the CLS rows, the keys and the hidden states (the bytes VisionZip reads).
#include <vector>

#include "bench_common.hpp"
#include "tokensel/core/batch.hpp"
#include "tokensel/methods/visionzip.hpp"

namespace {

using namespace bench;
namespace ts = tokensel;

constexpr index_t kHidden = 1024, kHeadDim = 64;

struct inputs_of {
  encoder_shape s;
  index_t key_count() const { return s.samples * s.heads * s.tokens * kHeadDim; }
  index_t hidden_count() const { return s.samples * s.tokens * kHidden; }
  template <class T>
  std::int64_t bytes() const {
    return static_cast<std::int64_t>(s.samples * s.heads * s.tokens + key_count() + hidden_count()) *
           static_cast<std::int64_t>(sizeof(T));
  }
};

template <class T>
std::string floor_name(const encoder_shape& s) {
  return std::string("floor/") + dtype<T>() + "/" + s.name + "/cls_rows+keys+hidden";
}

template <class T>
void register_floor(const encoder_shape& s) {
  const inputs_of in{s};
  add(floor_name<T>(s), "", in.bytes<T>(), s.samples, [=](benchmark::State& state) {
    const auto& a = encoder_attention<T>(s);
    const auto& keys = gaussian<T>(in.key_count(), 22);
    const auto& hidden = gaussian<T>(in.hidden_count(), 23);
    for (auto _ : state) {
      // The CLS row of every head of every sample, then the keys and the hidden states.
      float acc = stream_sum_rows(a.data(), s.samples * s.heads, s.tokens * s.tokens, s.tokens);
      acc += stream_sum(keys.data(), in.key_count());
      acc += stream_sum(hidden.data(), in.hidden_count());
      benchmark::DoNotOptimize(acc);
    }
  });
}

template <class T, class P>
void register_visionzip(const encoder_shape& s, const P& policy) {
  const inputs_of in{s};
  const ts::visionzip::config cfg{};
  const std::string name = std::string("visionzip/54+10/") + dtype<T>() + "/" + s.name + "/" + policy_name(policy);
  add(name, floor_name<T>(s), in.bytes<T>(), s.samples, [=](benchmark::State& state) {
    const auto& a = encoder_attention<T>(s);
    const auto& keys = gaussian<T>(in.key_count(), 22);
    const auto& hidden = gaussian<T>(in.hidden_count(), 23);
    const index_t k = ts::visionzip::keep_count(s.tokens, cfg);
    std::vector<token_index> idx(static_cast<std::size_t>(s.samples * k)), counts(static_cast<std::size_t>(s.samples));
    std::vector<T> out(static_cast<std::size_t>(s.samples * k * kHidden));
    if (s.samples == 1) {
      const auto attn = encoder_view(a, s, 0);
      const ts::tensor_view<const T, 3> kv(keys.data(), {s.heads, s.tokens, kHeadDim});
      const ts::matrix_view<const T> hv(hidden.data(), {s.tokens, kHidden});
      const ts::matrix_view<T> ov(out.data(), {k, kHidden});
      for (auto _ : state) {
        benchmark::DoNotOptimize(ts::visionzip::select(policy, attn, kv, hv, cfg, std::span<token_index>(idx), ov));
        benchmark::ClobberMemory();
      }
    } else {
      const auto attn = encoder_batch_view(a, s);
      const ts::tensor_view<const T, 4> kv(keys.data(), {s.samples, s.heads, s.tokens, kHeadDim});
      const ts::feature_view<const T> hv(hidden.data(), {s.samples, s.tokens, kHidden});
      const ts::feature_view<T> ov(out.data(), {s.samples, k, kHidden});
      const ts::selection_batch sel{{idx.data(), {s.samples, k}}, counts};
      for (auto _ : state) {
        ts::visionzip::select(policy, attn, kv, hv, cfg, sel, ov);
        benchmark::ClobberMemory();
      }
    }
  });
}

template <class T>
void register_shape(const encoder_shape& s) {
  register_floor<T>(s);
  register_visionzip<T>(s, ts::seq);
  register_visionzip<T>(s, ts::par);
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
