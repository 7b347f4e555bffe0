// CUDA backend: DivPrune, DART and VisPruner (the feature-similarity methods). Parity with the CPU
// backend (kept indices, counts and statistics bit for bit) on random batches, 4-D and ragged,
// f32 / f16 / bf16, with ties (quantised values, duplicated and zero rows, constant attention) and
// strided layouts; non-finite inputs reported per sample; host validation and workspace sizes
// (these run without a GPU).
#include "cuda_test_util.cuh"

#include <span>
#include <vector>

#include "tokensel/cuda/methods/dart.cuh"
#include "tokensel/cuda/methods/divprune.cuh"
#include "tokensel/cuda/methods/vispruner.cuh"
#include "tokensel/methods/dart.hpp"
#include "tokensel/methods/divprune.hpp"
#include "tokensel/methods/vispruner.hpp"

using namespace tokensel;
using namespace tokensel_test;

namespace {

index_t pick(std::mt19937_64& rng, index_t lo, index_t hi) { return std::uniform_int_distribution<index_t>(lo, hi)(rng); }

/// `rows` feature rows of width d: normal values, values quantised to halves (many equal
/// cosines), or normal rows with some rows copied onto others and some set to zero.
template <class E>
std::vector<E> random_rows(std::mt19937_64& rng, index_t rows, index_t d, int kind) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(static_cast<std::size_t>(std::max<index_t>(rows * d, 1)));
  for (auto& x : v) x = kind == 1 ? std::round(normal(rng) * 2.0f) / 2.0f : normal(rng);
  if (kind == 2 && rows > 1) {
    for (index_t c = 0; c < rows / 3 + 1; ++c) {
      const index_t from = pick(rng, 0, rows - 1), to = pick(rng, 0, rows - 1);
      std::copy_n(v.begin() + from * d, d, v.begin() + to * d);
    }
    std::fill_n(v.begin() + pick(rng, 0, rows - 1) * d, d, 0.0f);
  }
  std::vector<E> e(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) e[i] = to_storage<E>(v[i]);
  return e;
}

/// Row/column strides of a [rows, d] matrix stored row-major or column-major.
std::array<index_t, 2> strides_of(bool column_major, index_t rows, index_t d) {
  return column_major ? std::array<index_t, 2>{1, std::max<index_t>(rows, 1)} : std::array<index_t, 2>{d, 1};
}

template <class R>
std::span<R> results_span(device_buffer<R>& r, index_t batch) {
  return std::span<R>(r.data(), static_cast<std::size_t>(batch));
}

/// Host selection outputs for the CPU reference.
struct host_selection {
  std::vector<token_index> idx, cnt;
  index_t batch, capacity;
  host_selection(index_t b, index_t cap)
      : idx(static_cast<std::size_t>(std::max<index_t>(b * cap, 1)), -1), cnt(static_cast<std::size_t>(std::max<index_t>(b, 1)), -1),
        batch(b), capacity(cap) {}
  selection_batch view() {
    return {tensor_view<token_index, 2>(idx.data(), {batch, capacity}), std::span<token_index>(cnt.data(), static_cast<std::size_t>(batch))};
  }
  std::vector<token_index> row(index_t b) const {
    const auto n = cnt[static_cast<std::size_t>(b)];
    return std::vector<token_index>(idx.begin() + b * capacity, idx.begin() + b * capacity + n);
  }
};

divprune::config divprune_cfg(std::mt19937_64& rng, index_t n_min) {
  divprune::config cfg;
  if (n_min > 0 && pick(rng, 0, 1) == 0) cfg.count = pick(rng, 1, n_min);
  else if (pick(rng, 0, 4) > 0) cfg.ratio = std::uniform_real_distribution<double>(0.01, 1.0)(rng);
  return cfg;
}

// ---- DivPrune ---------------------------------------------------------------------------------

template <class E>
void divprune_case(std::mt19937_64& rng, const std::string& label, index_t forced_n = -1, index_t forced_d = -1) {
  using D = cuda_detail::device_type_t<E>;
  const index_t B = pick(rng, 1, 3);
  const index_t n = forced_n >= 0 ? forced_n : (pick(rng, 0, 9) == 0 ? pick(rng, 0, 3) : pick(rng, 2, 120));
  const index_t d = forced_d >= 0 ? forced_d : pick(rng, 1, 70);
  const divprune::config cfg = divprune_cfg(rng, n);
  const bool column_major = pick(rng, 0, 1) == 0;
  const auto host = random_rows<E>(rng, B * n, d, static_cast<int>(pick(rng, 0, 2)));
  const auto st = strides_of(column_major, n, d);
  const std::array<index_t, 3> strides{n * d, st[0], st[1]};
  const index_t k = divprune::keep_count(n, cfg), cap = std::max<index_t>(k, 1);
  host_selection want(B, cap);
  std::vector<divprune::result> want_r(static_cast<std::size_t>(B));
  divprune::select(seq, feature_view<const E>(host.data(), {B, n, d}, strides), cfg, want.view(), std::span<divprune::result>(want_r));
  auto dev = to_device(host);
  const feature_view<const D> dview(reinterpret_cast<const D*>(dev.data()), {B, n, d}, strides);
  device_selection out(B, cap);
  device_buffer<divprune::result> dres(static_cast<std::size_t>(B));
  workspace ws(divprune::workspace_size(dview, cfg));
  divprune::select(ws.policy, dview, cfg, out.view(), results_span(dres, B));
  const cuda_status s = status(ws.policy);
  ASSERT_TRUE(s.ok) << label << ": " << s.message;
  const auto rows = out.rows();
  const auto res = dres.download();
  for (index_t b = 0; b < B; ++b) {
    const auto i = static_cast<std::size_t>(b);
    ASSERT_EQ(rows[i], want.row(b)) << label << " sample " << b << " n " << n << " d " << d;
    EXPECT_EQ(res[i].count, want_r[i].count) << label;
    EXPECT_EQ(std::memcmp(&res[i].min_distance, &want_r[i].min_distance, sizeof(float)), 0) << label << " min_distance";
  }
}

template <class E>
void divprune_ragged_case(std::mt19937_64& rng, const std::string& label) {
  using D = cuda_detail::device_type_t<E>;
  const index_t B = pick(rng, 1, 5);
  std::vector<index_t> ns(static_cast<std::size_t>(B)), ds(static_cast<std::size_t>(B));
  index_t n_min = 1 << 20;
  for (auto& n : ns) n_min = std::min(n_min, n = pick(rng, 0, 6) == 0 ? 0 : pick(rng, 1, 90));
  for (auto& d : ds) d = pick(rng, 1, 50);
  const divprune::config cfg = divprune_cfg(rng, n_min > 0 ? n_min : 0);
  std::vector<std::vector<E>> host;
  std::vector<device_buffer<E>> dev;
  std::vector<matrix_view<const E>> hv;
  std::vector<matrix_view<const D>> dv;
  index_t cap = 1;
  for (index_t b = 0; b < B; ++b) {
    const auto i = static_cast<std::size_t>(b);
    host.push_back(random_rows<E>(rng, ns[i], ds[i], static_cast<int>(pick(rng, 0, 2))));
    dev.push_back(to_device(host.back()));
    const auto st = strides_of(pick(rng, 0, 1) == 0, ns[i], ds[i]);
    hv.emplace_back(host.back().data(), std::array<index_t, 2>{ns[i], ds[i]}, st);
    dv.emplace_back(reinterpret_cast<const D*>(dev.back().data()), std::array<index_t, 2>{ns[i], ds[i]}, st);
    cap = std::max(cap, divprune::keep_count(ns[i], cfg));
  }
  host_selection want(B, cap);
  std::vector<divprune::result> want_r(static_cast<std::size_t>(B));
  divprune::select(seq, std::span<const matrix_view<const E>>(hv), cfg, want.view(), std::span<divprune::result>(want_r));
  device_selection out(B, cap);
  device_buffer<divprune::result> dres(static_cast<std::size_t>(B));
  const std::span<const matrix_view<const D>> ds_(dv);
  workspace ws(divprune::workspace_size(ds_, cfg));
  divprune::select(ws.policy, ds_, cfg, out.view(), results_span(dres, B));
  const cuda_status s = status(ws.policy);
  ASSERT_TRUE(s.ok) << label << ": " << s.message;
  const auto rows = out.rows();
  const auto res = dres.download();
  for (index_t b = 0; b < B; ++b) {
    const auto i = static_cast<std::size_t>(b);
    ASSERT_EQ(rows[i], want.row(b)) << label << " sample " << b;
    EXPECT_EQ(res[i].count, want_r[i].count) << label;
    EXPECT_EQ(std::memcmp(&res[i].min_distance, &want_r[i].min_distance, sizeof(float)), 0) << label;
  }
}

// ---- DART -------------------------------------------------------------------------------------

dart::config dart_cfg(std::mt19937_64& rng, index_t n, index_t m) {
  dart::config cfg;
  cfg.image_pivots = pick(rng, 0, 6);
  cfg.text_pivots = pick(rng, 0, 6);
  if (m == 0 && cfg.image_pivots == 0) cfg.image_pivots = 1;  // a pivot must exist to take tokens
  if (cfg.image_pivots + cfg.text_pivots == 0) cfg.text_pivots = 1;
  if (n > 0 && pick(rng, 0, 1) == 0) cfg.count = pick(rng, 1, n);
  else if (pick(rng, 0, 4) > 0) cfg.ratio = std::uniform_real_distribution<double>(0.01, 1.0)(rng);
  return cfg;
}

template <class E>
void dart_case(std::mt19937_64& rng, const std::string& label, index_t forced_len = -1) {
  using D = cuda_detail::device_type_t<E>;
  const index_t B = pick(rng, 1, 3);
  const index_t len = forced_len > 0 ? forced_len : pick(rng, 1, 140);
  const index_t begin = forced_len > 0 ? 5 : pick(rng, 0, len - 1);
  const index_t n = forced_len > 0 ? 576 : (pick(rng, 0, 9) == 0 ? 0 : pick(rng, 1, len - begin));
  const token_range visual{begin, n};
  const dart::config cfg = dart_cfg(rng, n, len - visual.end());
  const index_t heads = pick(rng, 1, 4), dh = pick(rng, 1, 40), d = pick(rng, 1, 64);
  const auto keys = random_rows<E>(rng, B * heads * len, dh, static_cast<int>(pick(rng, 0, 1)));
  const auto hidden = random_rows<E>(rng, B * len, d, static_cast<int>(pick(rng, 0, 2)));
  std::vector<float> weight;
  if (pick(rng, 0, 1) == 0) {
    std::uniform_real_distribution<float> w(0.25f, 2.0f);
    for (index_t c = 0; c < d; ++c) weight.push_back(w(rng));
  }
  const auto st = strides_of(pick(rng, 0, 1) == 0, len, d);
  const std::array<index_t, 3> hstr{len * d, st[0], st[1]};
  const index_t k = dart::keep_count(n, cfg), cap = std::max<index_t>(k, 1);
  host_selection want(B, cap);
  std::vector<dart::result> want_r(static_cast<std::size_t>(B));
  const vector_view<const float> hw(weight.data(), {static_cast<index_t>(weight.size())});
  dart::select(seq, tensor_view<const E, 4>(keys.data(), {B, heads, len, dh}), feature_view<const E>(hidden.data(), {B, len, d}, hstr), hw,
               visual, cfg, want.view(), std::span<dart::result>(want_r));
  auto dk = to_device(keys);
  auto dhid = to_device(hidden);
  device_buffer<float> dw(std::max<std::size_t>(weight.size(), 1));
  if (!weight.empty()) dw.upload(weight);
  const tensor_view<const D, 4> kv(reinterpret_cast<const D*>(dk.data()), {B, heads, len, dh});
  const feature_view<const D> hv(reinterpret_cast<const D*>(dhid.data()), {B, len, d}, hstr);
  const vector_view<const float> wv(weight.empty() ? nullptr : dw.data(), {static_cast<index_t>(weight.size())});
  device_selection out(B, cap);
  device_buffer<dart::result> dres(static_cast<std::size_t>(B));
  workspace ws(dart::workspace_size(kv, hv, visual, cfg));
  dart::select(ws.policy, kv, hv, wv, visual, cfg, out.view(), results_span(dres, B));
  const cuda_status s = status(ws.policy);
  ASSERT_TRUE(s.ok) << label << ": " << s.message;
  const auto rows = out.rows();
  const auto res = dres.download();
  for (index_t b = 0; b < B; ++b) {
    const auto i = static_cast<std::size_t>(b);
    ASSERT_EQ(rows[i], want.row(b)) << label << " sample " << b << " L " << len << " span " << begin << "+" << n;
    EXPECT_EQ(res[i].count, want_r[i].count) << label;
    EXPECT_EQ(res[i].image_pivots, want_r[i].image_pivots) << label;
    EXPECT_EQ(res[i].text_pivots, want_r[i].text_pivots) << label;
  }
}

template <class E>
void dart_ragged_case(std::mt19937_64& rng, const std::string& label) {
  using D = cuda_detail::device_type_t<E>;
  const index_t B = pick(rng, 1, 4), heads = pick(rng, 1, 3), dh = pick(rng, 1, 24), d = pick(rng, 1, 40);
  std::vector<token_range> spans;
  std::vector<std::vector<E>> keys, hidden;
  std::vector<device_buffer<E>> dk, dhid;
  std::vector<tensor_view<const E, 3>> hk;
  std::vector<matrix_view<const E>> hh;
  std::vector<tensor_view<const D, 3>> dkv;
  std::vector<matrix_view<const D>> dhv;
  index_t n_min = 1 << 20, m_min = 1 << 20;
  for (index_t b = 0; b < B; ++b) {
    const index_t len = pick(rng, 1, 90), begin = pick(rng, 0, len - 1), n = pick(rng, 1, len - begin);
    spans.push_back({begin, n});
    n_min = std::min(n_min, n);
    m_min = std::min(m_min, len - begin - n);
    keys.push_back(random_rows<E>(rng, heads * len, dh, static_cast<int>(pick(rng, 0, 1))));
    hidden.push_back(random_rows<E>(rng, len, d, static_cast<int>(pick(rng, 0, 2))));
    dk.push_back(to_device(keys.back()));
    dhid.push_back(to_device(hidden.back()));
    hk.emplace_back(keys.back().data(), std::array<index_t, 3>{heads, len, dh});
    hh.emplace_back(hidden.back().data(), std::array<index_t, 2>{len, d});
    dkv.emplace_back(reinterpret_cast<const D*>(dk.back().data()), std::array<index_t, 3>{heads, len, dh});
    dhv.emplace_back(reinterpret_cast<const D*>(dhid.back().data()), std::array<index_t, 2>{len, d});
  }
  const dart::config cfg = dart_cfg(rng, n_min, m_min);
  index_t cap = 1;
  for (const auto& r : spans) cap = std::max(cap, dart::keep_count(r.count, cfg));
  host_selection want(B, cap);
  std::vector<dart::result> want_r(static_cast<std::size_t>(B));
  dart::select(seq, std::span<const tensor_view<const E, 3>>(hk), std::span<const matrix_view<const E>>(hh), vector_view<const float>{},
               std::span<const token_range>(spans), cfg, want.view(), std::span<dart::result>(want_r));
  device_selection out(B, cap);
  device_buffer<dart::result> dres(static_cast<std::size_t>(B));
  const std::span<const tensor_view<const D, 3>> ks(dkv);
  const std::span<const matrix_view<const D>> hs(dhv);
  workspace ws(dart::workspace_size(ks, hs, std::span<const token_range>(spans), cfg));
  dart::select(ws.policy, ks, hs, vector_view<const float>{}, std::span<const token_range>(spans), cfg, out.view(), results_span(dres, B));
  const cuda_status s = status(ws.policy);
  ASSERT_TRUE(s.ok) << label << ": " << s.message;
  const auto rows = out.rows();
  const auto res = dres.download();
  for (index_t b = 0; b < B; ++b) {
    ASSERT_EQ(rows[static_cast<std::size_t>(b)], want.row(b)) << label << " sample " << b;
    EXPECT_EQ(res[static_cast<std::size_t>(b)].text_pivots, want_r[static_cast<std::size_t>(b)].text_pivots) << label;
  }
}

// ---- VisPruner --------------------------------------------------------------------------------

vispruner::config vispruner_cfg(std::mt19937_64& rng, index_t n_min) {
  vispruner::config cfg;
  const int r = static_cast<int>(pick(rng, 0, 5));
  if (n_min > 0 && r < 3) cfg.count = pick(rng, 1, n_min);
  else cfg.ratio = std::uniform_real_distribution<double>(0.01, 1.0)(rng);
  static constexpr double shares[] = {0.0, 0.25, 0.5, 0.75, 1.0};
  cfg.important_ratio = pick(rng, 0, 5) == 5 ? std::uniform_real_distribution<double>(0.0, 1.0)(rng) : shares[pick(rng, 0, 4)];
  cfg.rounds_drop = pick(rng, 0, 2) == 0 ? 8 : pick(rng, 1, 12);
  return cfg;
}

template <class E>
void vispruner_case(std::mt19937_64& rng, const std::string& label, index_t forced_n = -1) {
  using D = cuda_detail::device_type_t<E>;
  const index_t B = pick(rng, 1, 3);
  const index_t n = forced_n > 0 ? forced_n : pick(rng, 1, 150);  // patches; N = n + 1 with the CLS token
  const vispruner::config cfg = vispruner_cfg(rng, n);
  const index_t heads = pick(rng, 1, 8), d = pick(rng, 1, 64);
  const bool cls_only = pick(rng, 0, 2) == 0;
  const attention_batch<E> attn(true, heads, std::vector<index_t>(static_cast<std::size_t>(B), cls_only ? 1 : n + 1),
                                std::vector<index_t>(static_cast<std::size_t>(B), n + 1), static_cast<layout>(pick(rng, 0, 2)),
                                static_cast<values>(pick(rng, 0, 2)), rng);
  const auto features = random_rows<E>(rng, B * n, d, static_cast<int>(pick(rng, 0, 2)));
  const auto st = strides_of(pick(rng, 0, 1) == 0, n, d);
  const std::array<index_t, 3> fstr{n * d, st[0], st[1]};
  const index_t k = vispruner::keep_count(n, cfg), cap = std::max<index_t>(k, 1);
  host_selection want(B, cap);
  std::vector<vispruner::result> want_r(static_cast<std::size_t>(B));
  for (index_t b = 0; b < B; ++b) {
    std::vector<token_index> row(static_cast<std::size_t>(cap));
    want_r[static_cast<std::size_t>(b)] =
        vispruner::select(seq, attn.host_view(b), matrix_view<const E>(features.data() + b * n * d, {n, d}, st), cfg, std::span(row));
    std::copy_n(row.begin(), k, want.idx.begin() + b * cap);
    want.cnt[static_cast<std::size_t>(b)] = static_cast<token_index>(want_r[static_cast<std::size_t>(b)].count);
  }
  auto df = to_device(features);
  const attention_view<D> av = attn.template device_batch<D>();
  const feature_view<const D> fv(reinterpret_cast<const D*>(df.data()), {B, n, d}, fstr);
  device_selection out(B, cap);
  device_buffer<vispruner::result> dres(static_cast<std::size_t>(B));
  workspace ws(vispruner::workspace_size(av, fv, cfg));
  vispruner::select(ws.policy, av, fv, cfg, out.view(), results_span(dres, B));
  const cuda_status s = status(ws.policy);
  ASSERT_TRUE(s.ok) << label << ": " << s.message;
  const auto rows = out.rows();
  const auto res = dres.download();
  for (index_t b = 0; b < B; ++b) {
    const auto i = static_cast<std::size_t>(b);
    ASSERT_EQ(rows[i], want.row(b)) << label << " sample " << b << " n " << n;
    EXPECT_EQ(res[i].count, want_r[i].count) << label;
    EXPECT_EQ(res[i].important, want_r[i].important) << label;
    EXPECT_EQ(res[i].diverse, want_r[i].diverse) << label;
    EXPECT_EQ(res[i].rounds, want_r[i].rounds) << label;
  }
}

template <class E>
void vispruner_ragged_case(std::mt19937_64& rng, const std::string& label) {
  using D = cuda_detail::device_type_t<E>;
  const index_t B = pick(rng, 1, 4), heads = pick(rng, 1, 6);
  std::vector<index_t> ns(static_cast<std::size_t>(B)), qs(static_cast<std::size_t>(B)), ds(static_cast<std::size_t>(B));
  index_t n_min = 1 << 20;
  for (index_t b = 0; b < B; ++b) {
    const auto i = static_cast<std::size_t>(b);
    const index_t n = pick(rng, 1, 100);
    n_min = std::min(n_min, n);
    ns[i] = n + 1;
    qs[i] = pick(rng, 0, 1) == 0 ? 1 : n + 1;
    ds[i] = pick(rng, 1, 48);
  }
  const vispruner::config cfg = vispruner_cfg(rng, n_min);
  const attention_batch<E> attn(false, heads, qs, ns, static_cast<layout>(pick(rng, 0, 2)), static_cast<values>(pick(rng, 0, 2)), rng);
  std::vector<std::vector<E>> host;
  std::vector<device_buffer<E>> dev;
  std::vector<matrix_view<const E>> hv;
  std::vector<matrix_view<const D>> dv;
  std::vector<head_attention_view<E>> ha;
  index_t cap = 1;
  for (index_t b = 0; b < B; ++b) {
    const auto i = static_cast<std::size_t>(b);
    host.push_back(random_rows<E>(rng, ns[i] - 1, ds[i], static_cast<int>(pick(rng, 0, 2))));
    dev.push_back(to_device(host.back()));
    hv.emplace_back(host.back().data(), std::array<index_t, 2>{ns[i] - 1, ds[i]});
    dv.emplace_back(reinterpret_cast<const D*>(dev.back().data()), std::array<index_t, 2>{ns[i] - 1, ds[i]});
    ha.push_back(attn.host_view(b));
    cap = std::max(cap, vispruner::keep_count(ns[i] - 1, cfg));
  }
  host_selection want(B, cap);
  std::vector<vispruner::result> want_r(static_cast<std::size_t>(B));
  vispruner::select(seq, std::span<const head_attention_view<E>>(ha), std::span<const matrix_view<const E>>(hv), cfg, want.view(),
                    std::span<vispruner::result>(want_r));
  const auto da = attn.template device_samples<D>();
  const std::span<const head_attention_view<D>> das(da);
  const std::span<const matrix_view<const D>> dvs(dv);
  device_selection out(B, cap);
  device_buffer<vispruner::result> dres(static_cast<std::size_t>(B));
  workspace ws(vispruner::workspace_size(das, dvs, cfg));
  vispruner::select(ws.policy, das, dvs, cfg, out.view(), results_span(dres, B));
  const cuda_status s = status(ws.policy);
  ASSERT_TRUE(s.ok) << label << ": " << s.message;
  const auto rows = out.rows();
  const auto res = dres.download();
  for (index_t b = 0; b < B; ++b) {
    ASSERT_EQ(rows[static_cast<std::size_t>(b)], want.row(b)) << label << " sample " << b;
    EXPECT_EQ(res[static_cast<std::size_t>(b)].rounds, want_r[static_cast<std::size_t>(b)].rounds) << label;
  }
}

/// The LLaVA-sized cases run unless the parity loops are capped (TOKENSEL_PARITY_LIMIT: the short
/// runs under compute-sanitizer, where one of them would take minutes).
bool uncapped() { return parity_cases(1 << 20) >= (1 << 20); }

/// A device selection_batch over fake pointers (host validation only: never dereferenced).
selection_batch fake_out(index_t batch, index_t capacity) {
  return {tensor_view<token_index, 2>(fake_device_pointer<token_index>(), {batch, capacity}),
          std::span<token_index>(fake_device_pointer<token_index>(), static_cast<std::size_t>(batch))};
}

const cuda_policy big{nullptr, fake_device_pointer<void>(), std::size_t{1} << 40};

}  // namespace

// ---- parity -------------------------------------------------------------------------------------

TEST(CudaDivPrune, Parity) {
  TOKENSEL_REQUIRE_DEVICE();
  std::mt19937_64 rng(151);
  for (int c = 0; c < parity_cases(300); ++c) {
    parity_case(c);
    divprune_case<float>(rng, "f32 case " + std::to_string(c));
    divprune_case<Eigen::half>(rng, "f16 case " + std::to_string(c));
    divprune_case<Eigen::bfloat16>(rng, "bf16 case " + std::to_string(c));
    if (::testing::Test::HasFatalFailure()) return;
  }
  if (uncapped()) divprune_case<Eigen::half>(rng, "llava-1.5 576 x 4096", 576, 4096);
}

TEST(CudaDivPrune, RaggedParity) {
  TOKENSEL_REQUIRE_DEVICE();
  std::mt19937_64 rng(152);
  for (int c = 0; c < parity_cases(200); ++c) {
    parity_case(c);
    divprune_ragged_case<float>(rng, "f32 ragged " + std::to_string(c));
    divprune_ragged_case<Eigen::bfloat16>(rng, "bf16 ragged " + std::to_string(c));
    if (::testing::Test::HasFatalFailure()) return;
  }
}

TEST(CudaDart, Parity) {
  TOKENSEL_REQUIRE_DEVICE();
  std::mt19937_64 rng(153);
  for (int c = 0; c < parity_cases(300); ++c) {
    parity_case(c);
    dart_case<float>(rng, "f32 case " + std::to_string(c));
    dart_case<Eigen::half>(rng, "f16 case " + std::to_string(c));
    dart_case<Eigen::bfloat16>(rng, "bf16 case " + std::to_string(c));
    if (::testing::Test::HasFatalFailure()) return;
  }
  if (uncapped()) dart_case<Eigen::half>(rng, "llava-1.5 span 5 + 576 of 640", 640);
}

TEST(CudaDart, RaggedParity) {
  TOKENSEL_REQUIRE_DEVICE();
  std::mt19937_64 rng(154);
  for (int c = 0; c < parity_cases(200); ++c) {
    parity_case(c);
    dart_ragged_case<float>(rng, "f32 ragged " + std::to_string(c));
    dart_ragged_case<Eigen::half>(rng, "f16 ragged " + std::to_string(c));
    if (::testing::Test::HasFatalFailure()) return;
  }
}

TEST(CudaVisPruner, Parity) {
  TOKENSEL_REQUIRE_DEVICE();
  std::mt19937_64 rng(155);
  for (int c = 0; c < parity_cases(300); ++c) {
    parity_case(c);
    vispruner_case<float>(rng, "f32 case " + std::to_string(c));
    vispruner_case<Eigen::half>(rng, "f16 case " + std::to_string(c));
    vispruner_case<Eigen::bfloat16>(rng, "bf16 case " + std::to_string(c));
    if (::testing::Test::HasFatalFailure()) return;
  }
  if (uncapped()) vispruner_case<Eigen::half>(rng, "llava-1.5 576 patches", 576);
}

TEST(CudaVisPruner, RaggedParity) {
  TOKENSEL_REQUIRE_DEVICE();
  std::mt19937_64 rng(156);
  for (int c = 0; c < parity_cases(200); ++c) {
    parity_case(c);
    vispruner_ragged_case<float>(rng, "f32 ragged " + std::to_string(c));
    vispruner_ragged_case<Eigen::bfloat16>(rng, "bf16 ragged " + std::to_string(c));
    if (::testing::Test::HasFatalFailure()) return;
  }
}

// ---- single-sample calls --------------------------------------------------------------------------

TEST(CudaFeatureMethods, SingleSampleCallsMatchTheCpu) {
  TOKENSEL_REQUIRE_DEVICE();
  std::mt19937_64 rng(157);
  const index_t n = 60, d = 24;
  const auto x = random_rows<float>(rng, n, d, 2);
  auto dx = to_device(x);
  const matrix_view<const float> hv(x.data(), {n, d}), dv(dx.data(), {n, d});
  const divprune::config cfg{.ratio = 0.3};
  std::vector<token_index> want(static_cast<std::size_t>(divprune::keep_count(n, cfg)));
  const auto wr = divprune::select(seq, hv, cfg, std::span(want));
  device_buffer<token_index> out(want.size());
  device_buffer<divprune::result> res(1);
  workspace ws(divprune::workspace_size(dv, cfg));
  divprune::select(ws.policy, dv, cfg, std::span<token_index>(out.data(), want.size()), res.data());
  ASSERT_TRUE(status(ws.policy).ok);
  EXPECT_EQ(out.download(), want);
  EXPECT_EQ(res.download()[0].count, wr.count);
}

TEST(CudaFeatureMethods, VisPrunerFromQkMatchesTheCpu) {
  TOKENSEL_REQUIRE_DEVICE();
  std::mt19937_64 rng(159);
  const index_t B = 2, H = 4, N = 50, D = 16, d = 12;
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> q(static_cast<std::size_t>(B * H * N * D)), k(q.size());
  for (auto& x : q) x = normal(rng);
  for (auto& x : k) x = normal(rng);
  const auto feats = random_rows<float>(rng, B * (N - 1), d, 2);
  auto dq = to_device(q), dk = to_device(k), df = to_device(feats);
  const vispruner::config cfg{.count = 10, .important_ratio = 0.4, .rounds_drop = 3};
  const qk_batch<float> batch{.queries = tensor_view<const float, 4>(dq.data(), {B, H, N, D}), .keys = tensor_view<const float, 4>(dk.data(), {B, H, N, D})};
  const feature_view<const float> fv(df.data(), {B, N - 1, d});
  device_selection out(B, 10);
  workspace ws(vispruner::workspace_size(batch, fv, cfg));
  vispruner::select(ws.policy, batch, fv, cfg, out.view());
  ASSERT_TRUE(status(ws.policy).ok);
  const auto got = out.rows();
  for (index_t b = 0; b < B; ++b) {
    const qk_source<float> src{.queries = tensor_view<const float, 3>(q.data() + b * H * N * D, {H, N, D}),
                               .keys = tensor_view<const float, 3>(k.data() + b * H * N * D, {H, N, D})};
    std::vector<token_index> want(10);
    const auto r = vispruner::select(seq, src, matrix_view<const float>(feats.data() + b * (N - 1) * d, {N - 1, d}), cfg, std::span(want));
    want.resize(static_cast<std::size_t>(r.count));
    EXPECT_EQ(got[static_cast<std::size_t>(b)], want) << "sample " << b;
  }
}

// ---- data problems reported on the device -----------------------------------------------------------

TEST(CudaFeatureMethods, NonFiniteInputsAreReported) {
  TOKENSEL_REQUIRE_DEVICE();
  std::mt19937_64 rng(158);
  const index_t B = 2, n = 20, d = 8;
  auto x = random_rows<float>(rng, B * n, d, 0);
  x[static_cast<std::size_t>((1 * n + 3) * d + 2)] = NAN;  // sample 1, token 3, channel 2
  auto dx = to_device(x);
  const feature_view<const float> fv(dx.data(), {B, n, d});
  const divprune::config cfg{.count = 5};
  device_selection out(B, 5);
  workspace ws(divprune::workspace_size(fv, cfg));
  divprune::select(ws.policy, fv, cfg, out.view());
  const cuda_status st = status(ws.policy);
  ASSERT_FALSE(st.ok);
  EXPECT_EQ(st.code, errc::non_finite);
  EXPECT_EQ(st.sample, 1);
  EXPECT_EQ(st.row, 3);
  EXPECT_EQ(st.index, 2);
  EXPECT_EQ(st.parameter, "divprune.features[3, 2]");
  EXPECT_EQ(out.cnt.download()[1], 0);
  EXPECT_EQ(out.cnt.download()[0], 5);
}

// ---- host validation and workspace sizes (no device needed) --------------------------------------

TEST(CudaFeatureMethods, DivPruneHostValidation) {
  const feature_view<const __half> x(fake_device_pointer<const __half>(), {2, 30, 16});
  const auto out = fake_out(2, 10);
  expect_error([&] { divprune::select(big, x, divprune::config{.ratio = 0.5, .count = 3}, out); }, errc::invalid_argument,
               "divprune.ratio/divprune.count");
  expect_error([&] { divprune::select(big, x, divprune::config{.count = 31}, out); }, errc::invalid_argument, "divprune.count");
  expect_error([&] { divprune::select(big, x, divprune::config{.count = 11}, out); }, errc::shape_mismatch, "divprune.out.size()");
  expect_error([&] { divprune::select(big, feature_view<const __half>(fake_device_pointer<const __half>(), {2, 30, 0}), divprune::config{.count = 3}, out); },
               errc::shape_mismatch, "divprune.features.extent(1)");
  expect_error([&] { divprune::select(big, x, divprune::config{.count = 3}, fake_out(3, 10)); }, errc::shape_mismatch, "divprune.out.indices.extent(0)");
  const divprune::config cfg{.count = 4};
  const std::size_t need = divprune::workspace_size(x, cfg);
  expect_error([&] { divprune::select(cuda_policy{nullptr, fake_device_pointer<void>(), need - 1}, x, cfg, out); }, errc::invalid_argument,
               "divprune.policy.workspace_bytes");
  expect_error([&] { divprune::select(cuda_policy{}, x, cfg, out); }, errc::invalid_argument, "divprune.policy.workspace");
  // Ragged: each sample is checked (the second one's count is too large).
  const std::vector<matrix_view<const float>> rag{matrix_view<const float>(fake_device_pointer<const float>(), {30, 8}),
                                                  matrix_view<const float>(fake_device_pointer<const float>(), {3, 8})};
  expect_error([&] { divprune::select(big, std::span<const matrix_view<const float>>(rag), cfg, out); }, errc::invalid_argument, "divprune.count");
  // Single sample: the workspace must hold the count slot too.
  const matrix_view<const float> one(fake_device_pointer<const float>(), {30, 8});
  const std::size_t single = divprune::workspace_size(one, cfg);
  EXPECT_GT(single, divprune::workspace_size(std::span<const matrix_view<const float>>(&one, 1), cfg));
  expect_error([&] { divprune::select(cuda_policy{nullptr, fake_device_pointer<void>(), single - 1}, one, cfg,
                                      std::span<token_index>(fake_device_pointer<token_index>(), 4)); },
               errc::invalid_argument, "divprune.policy.workspace_bytes");
}

TEST(CudaFeatureMethods, DartHostValidation) {
  const tensor_view<const __half, 4> keys(fake_device_pointer<const __half>(), {2, 4, 40, 16});
  const feature_view<const float> hidden(fake_device_pointer<const float>(), {2, 40, 32});
  const vector_view<const float> no_weight{};
  const auto out = fake_out(2, 12);
  const dart::config cfg{.count = 10};
  expect_error([&] { dart::select(big, keys, hidden, no_weight, token_range{30, 20}, cfg, out); }, errc::invalid_argument, "dart.visual");
  expect_error([&] { dart::select(big, keys, hidden, no_weight, token_range{5, 20}, dart::config{.count = 13}, out); }, errc::shape_mismatch,
               "dart.out.size()");
  expect_error([&] { dart::select(big, keys, hidden, no_weight, token_range{5, 20}, dart::config{.count = 21}, out); }, errc::invalid_argument,
               "dart.count");
  expect_error([&] { dart::select(big, keys, hidden, no_weight, token_range{5, 20}, dart::config{.count = 5, .layer = 0}, out); },
               errc::invalid_argument, "dart.layer");
  expect_error([&] { dart::select(big, keys, hidden, no_weight, token_range{20, 20}, dart::config{.count = 10, .image_pivots = 0}, out); },
               errc::invalid_argument, "dart.image_pivots");
  expect_error([&] { dart::select(big, tensor_view<const __half, 4>(fake_device_pointer<const __half>(), {2, 4, 39, 16}), hidden, no_weight,
                                  token_range{5, 20}, cfg, out); },
               errc::shape_mismatch, "dart.keys.extent(1)");
  expect_error([&] { dart::select(big, tensor_view<const __half, 4>(fake_device_pointer<const __half>(), {3, 4, 40, 16}), hidden, no_weight,
                                  token_range{5, 20}, cfg, out); },
               errc::shape_mismatch, "dart.keys.extent(0)");
  expect_error([&] { dart::select(big, keys, hidden, vector_view<const float>(fake_device_pointer<const float>(), {31}), token_range{5, 20}, cfg, out); },
               errc::shape_mismatch, "dart.norm_weight.extent(0)");
  const std::size_t need = dart::workspace_size(keys, hidden, token_range{5, 20}, cfg);
  expect_error([&] { dart::select(cuda_policy{nullptr, fake_device_pointer<void>(), need - 1}, keys, hidden, no_weight, token_range{5, 20}, cfg, out); },
               errc::invalid_argument, "dart.policy.workspace_bytes");
  const std::vector<token_range> spans{{5, 20}};
  const std::vector<tensor_view<const __half, 3>> ks{keys[0], keys[1]};
  const std::vector<matrix_view<const float>> hs{hidden[0], hidden[1]};
  expect_error([&] { dart::select(big, std::span<const tensor_view<const __half, 3>>(ks), std::span<const matrix_view<const float>>(hs), no_weight,
                                  std::span<const token_range>(spans), cfg, out); },
               errc::shape_mismatch, "dart.visual.size()");
}

TEST(CudaFeatureMethods, VisPrunerHostValidation) {
  const attention_view<__half> attn(fake_device_pointer<const __half>(), {2, 4, 1, 31});
  const feature_view<const float> feats(fake_device_pointer<const float>(), {2, 30, 16});
  const auto out = fake_out(2, 12);
  const vispruner::config cfg{.count = 10};
  expect_error([&] { vispruner::select(big, attn, feature_view<const float>(fake_device_pointer<const float>(), {2, 31, 16}), cfg, out); },
               errc::shape_mismatch, "vispruner.features.extent(0)");
  expect_error([&] { vispruner::select(big, attention_view<__half>(fake_device_pointer<const __half>(), {2, 4, 2, 31}), feats, cfg, out); },
               errc::shape_mismatch, "vispruner.attention.extent(1)");
  expect_error([&] { vispruner::select(big, attn, feats, vispruner::config{.count = 13}, out); }, errc::shape_mismatch, "vispruner.out.size()");
  expect_error([&] { vispruner::select(big, attn, feats, vispruner::config{.count = 5, .important_ratio = 1.5}, out); }, errc::invalid_argument,
               "vispruner.important_ratio");
  expect_error([&] { vispruner::select(big, attn, feats, vispruner::config{.count = 5, .rounds_drop = 0}, out); }, errc::invalid_argument,
               "vispruner.rounds_drop");
  expect_error([&] { vispruner::select(big, attn, feature_view<const float>(fake_device_pointer<const float>(), {2, 30, 0}), cfg, out); },
               errc::shape_mismatch, "vispruner.features.extent(1)");
  expect_error([&] { vispruner::select(big, attn, feature_view<const float>(fake_device_pointer<const float>(), {3, 30, 16}), cfg, out); },
               errc::shape_mismatch, "vispruner.features.extent(0)");
  const std::size_t need = vispruner::workspace_size(attn, feats, cfg);
  expect_error([&] { vispruner::select(cuda_policy{nullptr, fake_device_pointer<void>(), need - 1}, attn, feats, cfg, out); }, errc::invalid_argument,
               "vispruner.policy.workspace_bytes");
  // From Q/K: the same checks run before the CLS row is computed.
  const qk_batch<Eigen::half> qk{.queries = tensor_view<const Eigen::half, 4>(fake_device_pointer<const Eigen::half>(), {2, 4, 1, 64}),
                                 .keys = tensor_view<const Eigen::half, 4>(fake_device_pointer<const Eigen::half>(), {2, 4, 31, 64})};
  expect_error([&] { vispruner::select(big, qk, feature_view<const float>(fake_device_pointer<const float>(), {2, 31, 16}), cfg, out); },
               errc::shape_mismatch, "vispruner.features.extent(0)");
  expect_error([&] { vispruner::select(big, qk, feats, vispruner::config{.count = 13}, out); }, errc::shape_mismatch, "vispruner.out.size()");
  EXPECT_GT(vispruner::workspace_size(qk, feats, cfg), vispruner::workspace_size(attn, feats, cfg));
}

TEST(CudaFeatureMethods, WorkspaceSizesCoverTheDocumentedBuffers) {
  // DivPrune at LLaVA-NeXT's 2880 x 4096 (fp32 unit rows, n floats and n ints per sample).
  const feature_view<const __half> next(fake_device_pointer<const __half>(), {2, 2880, 4096});
  const std::size_t dp = divprune::workspace_size(next, divprune::config{});
  EXPECT_GE(dp, std::size_t{2} * 2880 * 4096 * 4 + 2 * 2880 * 8);
  EXPECT_LE(dp, std::size_t{2} * 2880 * 4096 * 4 + 2 * 2880 * 8 + 4096);
  // VisPruner at LLaVA-1.5: the n x n cosines dominate (576^2 floats per image).
  const attention_view<__half> attn(fake_device_pointer<const __half>(), {1, 16, 1, 577});
  const feature_view<const __half> feats(fake_device_pointer<const __half>(), {1, 576, 1024});
  const std::size_t vp = vispruner::workspace_size(attn, feats, vispruner::config{});
  EXPECT_GE(vp, std::size_t{576} * 576 * 4 + std::size_t{576} * 1024 * 4);
  EXPECT_LE(vp, std::size_t{576} * 576 * 4 + std::size_t{576} * 1024 * 4 + 576 * 24 + 4096);
  // DART: grows with the sequence, not with the key width.
  const tensor_view<const __half, 4> k1(fake_device_pointer<const __half>(), {1, 8, 700, 128});
  const tensor_view<const __half, 4> k2(fake_device_pointer<const __half>(), {1, 8, 700, 64});
  const feature_view<const __half> h(fake_device_pointer<const __half>(), {1, 700, 4096});
  const dart::config cfg{.count = 128};
  EXPECT_EQ(dart::workspace_size(k1, h, token_range{35, 576}, cfg), dart::workspace_size(k2, h, token_range{35, 576}, cfg));
  EXPECT_LT(dart::workspace_size(k1, h, token_range{35, 576}, cfg), dart::workspace_size(k1, h, token_range{35, 660}, cfg));
}
