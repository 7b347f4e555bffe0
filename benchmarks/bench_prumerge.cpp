// LLaVA-PruMerge / PruMerge+ at LLaVA-1.5, LLaVA-NeXT (5 views) and video (8 frames): inputs are the
// last CLIP layer's Q and K [N, 1024] (one 1024-wide head; only the CLS query row is used) and the
// features [N-1, 1024]. Variants: selection only (CLS attention + IQR count + top-Kc), and
// selection + merge (cosine 32-NN over the keys, weighted sums of features), plain and plus.
// Floors: one pass over the CLS query and the keys (selection), plus the features (merge).
// The merge does Kc x n x 1024 multiply-adds for the neighbour search: compute, not streaming,
// so its ratio to the floor measures that work. Counter "kept" = mean tokens kept per view.
#include <vector>

#include "bench_common.hpp"
#include "tokensel/core/batch.hpp"
#include "tokensel/methods/prumerge.hpp"

namespace {

using namespace bench;
namespace ts = tokensel;
namespace pm = ts::prumerge;

constexpr index_t kDim = 1024;

struct data_of {
  encoder_shape s;
  index_t n() const { return s.tokens - 1; }
  index_t qk_count() const { return s.samples * s.tokens * kDim; }
  index_t feature_count() const { return s.samples * n() * kDim; }
  template <class T>
  std::int64_t select_bytes() const {
    return static_cast<std::int64_t>(s.samples * (kDim + s.tokens * kDim)) * static_cast<std::int64_t>(sizeof(T));
  }
  template <class T>
  std::int64_t merge_bytes() const {
    return select_bytes<T>() + static_cast<std::int64_t>(feature_count()) * static_cast<std::int64_t>(sizeof(T));
  }
};

template <class T>
std::string floor_name(const encoder_shape& s, bool merge) {
  return std::string("floor/") + dtype<T>() + "/" + s.name + (merge ? "/cls_q+keys+features" : "/cls_q+keys");
}

template <class T>
void register_floors(const encoder_shape& s) {
  const data_of d{s};
  for (bool merge : {false, true}) {
    add(floor_name<T>(s, merge), "", merge ? d.merge_bytes<T>() : d.select_bytes<T>(), s.samples,
        [=](benchmark::State& state) {
          const auto& q = gaussian<T>(d.qk_count(), 31);
          const auto& k = gaussian<T>(d.qk_count(), 32);
          const auto& x = gaussian<T>(d.feature_count(), 33);
          for (auto _ : state) {
            float acc = stream_sum_rows(q.data(), s.samples, s.tokens * kDim, kDim);  // CLS query rows
            acc += stream_sum(k.data(), d.qk_count());
            if (merge) acc += stream_sum(x.data(), d.feature_count());
            benchmark::DoNotOptimize(acc);
          }
        });
  }
}

template <class T, class P>
void register_prumerge(const encoder_shape& s, const pm::config& cfg, const std::string& variant, const P& policy) {
  const data_of d{s};
  const bool merge = cfg.merge;
  const std::string name = "prumerge/" + variant + "/" + dtype<T>() + "/" + s.name + "/" + policy_name(policy);
  add(name, floor_name<T>(s, merge), merge ? d.merge_bytes<T>() : d.select_bytes<T>(), s.samples,
      [=](benchmark::State& state) {
        const auto& q = gaussian<T>(d.qk_count(), 31);
        const auto& k = gaussian<T>(d.qk_count(), 32);
        const auto& x = gaussian<T>(d.feature_count(), 33);
        const index_t n = d.n(), cap = pm::max_count(n, cfg), rows = pm::max_rows(n, cfg);
        std::vector<token_index> idx(static_cast<std::size_t>(s.samples * cap)), counts(static_cast<std::size_t>(s.samples));
        std::vector<T> merged(static_cast<std::size_t>(s.samples * rows * kDim));
        const ts::tensor_view<const T, 3> qv(q.data(), {s.samples, s.tokens, kDim}), kv(k.data(), {s.samples, s.tokens, kDim});
        const ts::tensor_view<const T, 3> xv(x.data(), {s.samples, n, kDim});
        const ts::tensor_view<T, 3> mv(merged.data(), {s.samples, rows, kDim});
        const ts::selection_batch out{{idx.data(), {s.samples, cap}}, counts};
        std::vector<pm::qk_input<T>> qk;
        for (index_t b = 0; b < s.samples; ++b) qk.push_back({qv[b], kv[b]});
        for (auto _ : state) {
          if (s.samples == 1) {
            const std::span<token_index> o(idx);
            const pm::result r = merge ? pm::select(policy, qv[0], kv[0], xv[0], cfg, o, mv[0]) : pm::select(policy, qv[0], kv[0], cfg, o);
            counts[0] = static_cast<token_index>(r.count);
          } else if (merge) {
            pm::select(policy, qv, kv, xv, cfg, out, mv);
          } else {
            pm::select(policy, std::span<const pm::qk_input<T>>(qk), cfg, out);
          }
          benchmark::ClobberMemory();
        }
        double kept = 0;
        for (auto c : counts) kept += c;
        state.counters["kept"] = kept / static_cast<double>(s.samples);
      });
}

template <class T>
void register_shape(const encoder_shape& s) {
  register_floors<T>(s);
  const pm::config select_only{.merge = false};
  const pm::config merge{};
  const pm::config plus{.plus = true};
  register_prumerge<T>(s, select_only, "select", ts::seq);
  register_prumerge<T>(s, merge, "merge", ts::seq);
  register_prumerge<T>(s, plus, "plus_merge", ts::seq);
  register_prumerge<T>(s, select_only, "select", ts::par);
  register_prumerge<T>(s, merge, "merge", ts::par);
  register_prumerge<T>(s, plus, "plus_merge", ts::par);
}

void register_all() {
  for (const auto& s : encoder_shapes) {
    register_shape<float>(s);
    register_shape<f16>(s);
  }
}

}  // namespace

TOKENSEL_BENCH_MAIN(register_all)
