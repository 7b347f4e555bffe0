// LLaVA-PruMerge / PruMerge+ at LLaVA-1.5, LLaVA-NeXT (5 views) and video (8 frames): inputs are the
// last CLIP layer's Q and K [N, 1024] (one 1024-wide head; only the CLS query row is used) and the
// features [N-1, 1024]. Variants: selection only (CLS attention + IQR count + top-Kc), and
// selection + merge (cosine 32-NN over the keys, weighted sums of features), plain and plus.
// Floors: one pass over the CLS query and the keys (selection), plus the features (merge).
// The merge is compute-bound, not streaming: the neighbour search is Kc x n x 1024 multiply-adds
// (29 M for Kc = 50, 133 M for PruMerge+'s 225 kept tokens, against 2.4 M values read), so its
// floor is a FLOP floor: floor/<t>/<shape>/flops_<variant> runs the same number of multiply-adds
// (similarity, plus the neighbour and extra-row sums) at this core's peak rate of separate vector
// multiplies and adds (the contract forbids FMA: -ffp-contract=off), from registers. The byte
// floors stay registered for reference. Counter "kept" = mean tokens kept per view.
#include <algorithm>
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

/// Multiply-adds of one merge call: cosines count x n x D, neighbour sums count x m x d, the
/// extra row (n - count) x d, per sample; count from a real run on the same inputs.
template <class T>
std::int64_t merge_muladds(const encoder_shape& s, const pm::config& cfg) {
  const data_of d{s};
  const auto& q = gaussian<T>(d.qk_count(), 31);
  const auto& k = gaussian<T>(d.qk_count(), 32);
  const index_t n = d.n();
  std::vector<token_index> idx(static_cast<std::size_t>(pm::max_count(n, cfg)));
  std::int64_t total = 0;
  for (index_t b = 0; b < s.samples; ++b) {
    const ts::tensor_view<const T, 2> qv(q.data() + b * s.tokens * kDim, {s.tokens, kDim});
    const ts::tensor_view<const T, 2> kv(k.data() + b * s.tokens * kDim, {s.tokens, kDim});
    const pm::config select_only{.mode = cfg.mode, .plus = cfg.plus, .merge = false};
    const std::int64_t c = pm::select(ts::seq, qv, kv, select_only, std::span<token_index>(idx)).count;
    const std::int64_t m = std::min<std::int64_t>(cfg.neighbours, n - 1);
    total += c * n * kDim + c * m * kDim + (n - c) * kDim;
  }
  return total;
}

/// `muladds` separate vector multiplies and adds into 16 independent accumulators: the peak
/// rate of the arithmetic the merge does, with no memory traffic (the barrier keeps the
/// products inside the loop).
inline float muladd_peak(std::int64_t muladds) {
#if defined(__AVX512F__)
  constexpr int W = 16;
#else
  constexpr int W = 8;
#endif
  constexpr int A = 16;
  using vec = float __attribute__((vector_size(W * sizeof(float))));
  vec acc[A], a[A];
  for (int i = 0; i < A; ++i) {
    acc[i] = vec{} + 0.0f;
    a[i] = vec{} + (1.0f + 1e-7f * static_cast<float>(i));
  }
  vec b = vec{} + 1e-9f;
  for (std::int64_t it = 0; it < muladds / (A * W); ++it) {
    asm volatile("" : "+v"(b));
#pragma GCC unroll 16
    for (int i = 0; i < A; ++i) acc[i] += a[i] * b;
  }
  float sum = 0;
  for (int i = 0; i < A; ++i) sum += acc[i][0];
  return sum;
}

template <class T>
std::string flops_floor_name(const encoder_shape& s, const std::string& variant) {
  return std::string("floor/") + dtype<T>() + "/" + s.name + "/flops_" + variant;
}

template <class T>
void register_flops_floor(const encoder_shape& s, const pm::config& cfg, const std::string& variant) {
  const data_of d{s};
  add(flops_floor_name<T>(s, variant), "", d.merge_bytes<T>(), s.samples, [=](benchmark::State& state) {
    const std::int64_t muladds = merge_muladds<T>(s, cfg);
    const auto [begin, end] = part_range(muladds);  // a 2-thread twin splits the work like every floor
    for (auto _ : state) benchmark::DoNotOptimize(muladd_peak(end - begin));
    state.counters["muladds"] = static_cast<double>(muladds);
  });
}

/// The bound a fp16 / bf16 selection cannot beat besides its read: the canonical dot of the CLS
/// query with every key row (widened, separate multiplies and adds, the lane tree), the library's
/// own register-blocked kernel, on blocks of f32_vector_width key rows (one set of lane trees, 32 kB
/// at fp16 with AVX-512) that stay in L1 (no memory traffic). Named
/// "bound/dots/..." so report_page.py prints it next to the PruMerge select rows.
template <class T>
void register_dots_bound(const encoder_shape& s) {
  if constexpr (pm::detail::widened_dots<T>) {
    add(std::string("bound/dots/") + dtype<T>() + "/" + s.name, "", 0, s.samples, [=](benchmark::State& state) {
      constexpr index_t R = ts::detail::f32_vector_width;
      const auto& q = gaussian<T>(kDim, 31);
      const auto& k = gaussian<T>(R * kDim, 32);
      std::vector<float> qf(static_cast<std::size_t>(kDim)), split(static_cast<std::size_t>(kDim));
      for (index_t c = 0; c < kDim; ++c) qf[static_cast<std::size_t>(c)] = ts::to_float(q[static_cast<std::size_t>(c)]);
      const float* q_step = qf.data();
      if constexpr (pm::detail::split_widened<T>) {
        pm::detail::split_query(qf.data(), kDim, split.data());
        q_step = split.data();
      }
      const T* rows[R];
      for (index_t r = 0; r < R; ++r) rows[r] = k.data() + r * kDim;
      const index_t blocks = s.samples * ((s.tokens + R - 1) / R);
      float dots[R];
      for (auto _ : state) {
        float acc = 0;
        for (index_t b = 0; b < blocks; ++b) {
          pm::detail::canonical_dots_widened(qf.data(), q_step, rows, static_cast<int>(R), kDim, dots);
          acc += dots[0];
          benchmark::ClobberMemory();
        }
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
  add(name, merge ? flops_floor_name<T>(s, variant) : floor_name<T>(s, false), merge ? d.merge_bytes<T>() : d.select_bytes<T>(), s.samples,
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
  register_dots_bound<T>(s);
  const pm::config select_only{.merge = false};
  const pm::config merge{};
  const pm::config plus{.plus = true};
  register_flops_floor<T>(s, merge, "merge");
  register_flops_floor<T>(s, plus, "plus_merge");
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
    register_shape<bf16>(s);
  }
}

}  // namespace

TOKENSEL_BENCH_MAIN(register_all)
