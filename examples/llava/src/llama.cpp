// llava: Llama decoder with KV cache, explicit-position RoPE, GQA and prefill hooks (llama.hpp).
#include "llava/llama.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include <Eigen/Core>

#include <tokensel/select/sequence.hpp>

#include "llava/clip.hpp"

namespace llava {

using rmat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

namespace {
std::string lm(const std::string& rest) { return "model.language_model." + rest; }

/// "LLM layer 2 (language_model.layers.2<suffix>)"
std::string llm_layer(int l, const char* suffix = "") {
  return "LLM layer " + std::to_string(l) + " (language_model.layers." + std::to_string(l) + suffix + ")";
}
}  // namespace

llama_model::llama_model(const llama_config& cfg, const weight_store& w) : cfg_(cfg) {
  const std::int64_t d = cfg.hidden, hd = cfg.head_dim, qd = cfg.heads * hd, kd = cfg.kv_heads * hd, m = cfg.intermediate;
  embed_ = &w.get(lm("embed_tokens.weight"), {cfg.vocab, d});
  norm_ = &w.get(lm("norm.weight"), {d});
  // LLaVA-1.5 has its own lm_head; tied checkpoints reuse the embedding table.
  lm_head_ = w.contains("lm_head.weight") ? &w.get("lm_head.weight", {cfg.vocab, d}) : embed_;
  for (int l = 0; l < cfg.layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    layer_weights lw{};
    lw.in_norm = &w.get(lm(p + "input_layernorm.weight"), {d});
    lw.q = &w.get(lm(p + "self_attn.q_proj.weight"), {qd, d});
    lw.k = &w.get(lm(p + "self_attn.k_proj.weight"), {kd, d});
    lw.v = &w.get(lm(p + "self_attn.v_proj.weight"), {kd, d});
    lw.o = &w.get(lm(p + "self_attn.o_proj.weight"), {d, qd});
    lw.post_norm = &w.get(lm(p + "post_attention_layernorm.weight"), {d});
    lw.gate = &w.get(lm(p + "mlp.gate_proj.weight"), {m, d});
    lw.up = &w.get(lm(p + "mlp.up_proj.weight"), {m, d});
    lw.down = &w.get(lm(p + "mlp.down_proj.weight"), {d, m});
    layers_.push_back(lw);
  }
  // inv_freq as transformers computes it: fp32 of base ** (2i / dim).
  for (std::int64_t i = 0; i < hd / 2; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(hd);
    inv_freq_.push_back(static_cast<float>(1.0 / std::pow(cfg.rope_theta, static_cast<double>(e))));
  }
}

void llama_model::embed(std::span<const std::int32_t> ids, float* out) const {
  const std::int64_t d = cfg_.hidden;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= cfg_.vocab) {
      throw error("llava: token id " + std::to_string(ids[i]) + " at position " + std::to_string(i) +
                  " is outside the vocabulary [0, " + std::to_string(cfg_.vocab) + ")");
    }
    float* row = out + static_cast<std::int64_t>(i) * d;
    embed_->to_float(ids[i], 1, row);
    if (!all_finite(row, d)) {
      throw error("llava: non-finite embedding of token id " + std::to_string(ids[i]) +
                  " (language_model.embed_tokens.weight row " + std::to_string(ids[i]) + "): the weight is NaN/Inf");
    }
  }
}

llama_model::kv_cache llama_model::make_cache(std::int64_t capacity) const {
  kv_cache c;
  c.capacity = capacity;
  const auto per = static_cast<std::size_t>(cfg_.kv_heads * capacity * cfg_.head_dim);
  c.k.assign(static_cast<std::size_t>(cfg_.layers), std::vector<float>(per));
  c.v.assign(static_cast<std::size_t>(cfg_.layers), std::vector<float>(per));
  c.length.assign(static_cast<std::size_t>(cfg_.layers), 0);
  return c;
}

void llama_model::rms_norm(const float* x, const tensor& w, std::int64_t n, float* out) const {
  const std::int64_t d = cfg_.hidden;
  const auto wf = w.to_float();
  const double eps = cfg_.rms_norm_eps;
#pragma omp parallel for schedule(static) if (n > 16)
  for (std::int64_t i = 0; i < n; ++i) {
    const float* r = x + i * d;
    double ss = 0;
    for (std::int64_t j = 0; j < d; ++j) ss += static_cast<double>(r[j]) * r[j];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(d) + eps));
    float* o = out + i * d;
    for (std::int64_t j = 0; j < d; ++j) o[j] = wf[static_cast<std::size_t>(j)] * (r[j] * inv);
  }
}

void llama_model::mlp(const layer_weights& lw, const float* x, std::int64_t n, float* out) const {
  const std::int64_t m = cfg_.intermediate;
  std::vector<float> g(static_cast<std::size_t>(n * m)), u(g.size());
  linear(*lw.gate, nullptr, x, n, g.data());
  linear(*lw.up, nullptr, x, n, u.data());
#pragma omp parallel for schedule(static) if (n * m > 65536)
  for (std::int64_t i = 0; i < n * m; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  linear(*lw.down, nullptr, g.data(), n, out);
}

std::vector<float> llama_model::logits_of(const float* row, std::int32_t decode_position) const {
  std::vector<float> h(static_cast<std::size_t>(cfg_.hidden)), logits(static_cast<std::size_t>(cfg_.vocab));
  rms_norm(row, *norm_, 1, h.data());
  linear(*lm_head_, nullptr, h.data(), 1, logits.data());
  if (!all_finite(logits.data(), cfg_.vocab)) {
    throw_non_finite(decode_position < 0 ? std::string("values in the LLM's final logits (lm_head)")
                                         : "values in the LLM's logits of the decode step at position " +
                                               std::to_string(decode_position) + " (lm_head)");
  }
  return logits;
}

namespace {

/// Rotate-half RoPE of rows [n, heads * hd] at the given positions, in place.
void rope(float* x, std::int64_t n, std::int64_t heads, std::int64_t hd, const std::int32_t* pos,
          const std::vector<float>& inv_freq) {
  const std::int64_t half = hd / 2;
#pragma omp parallel for schedule(static) if (n > 16)
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t j = 0; j < half; ++j) {
      const float angle = static_cast<float>(pos[i]) * inv_freq[static_cast<std::size_t>(j)];
      const float c = std::cos(angle), s = std::sin(angle);
      for (std::int64_t h = 0; h < heads; ++h) {
        float* r = x + (i * heads + h) * hd;
        const float a = r[j], b = r[j + half];
        r[j] = a * c - b * s;
        r[j + half] = b * c + a * s;
      }
    }
  }
}

/// Appends rows [n, kvh * hd] into the layer's cache [kvh, capacity, hd] at `at`.
void append(std::vector<float>& cache, std::int64_t capacity, const float* rows, std::int64_t n, std::int64_t kvh,
            std::int64_t hd, std::int64_t at) {
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t h = 0; h < kvh; ++h)
      std::memcpy(cache.data() + (h * capacity + at + i) * hd, rows + (i * kvh + h) * hd, static_cast<std::size_t>(hd) * 4);
}

/// Causal attention of the L prefill rows q [L, H * hd] over the layer's cached keys and values
/// kc, vc [KV, capacity, hd] (past earlier positions, then these rows) into att [L, H * hd]; the
/// probabilities [H, L, past + L] into probs when it is not null (zeros above the diagonal).
/// In blocks of query rows: block [i0, i1) multiplies only the keys 0 .. past + i1 - 1 it can see
/// (the masked upper triangle is never computed).
void causal_attention(const float* q, const float* kc, const float* vc, std::int64_t capacity, std::int64_t L,
                      std::int64_t past, std::int64_t H, std::int64_t KV, std::int64_t hd, float scale, float* probs,
                      float* att) {
  const std::int64_t group = H / KV, T = past + L;
  const bool want = probs != nullptr;
  constexpr std::int64_t rb = 64;
  const std::int64_t row_blocks = (L + rb - 1) / rb;
#pragma omp parallel
  {
    std::vector<float> local;
#pragma omp for schedule(dynamic, 1) collapse(2)
    for (std::int64_t hh = 0; hh < H; ++hh) {
      for (std::int64_t blk = 0; blk < row_blocks; ++blk) {
        const std::int64_t g = hh / group, i0 = blk * rb, i1 = std::min(L, i0 + rb), nr = i1 - i0;
        const std::int64_t vis_max = past + i1;  // keys visible to the block's last row
        float* P;
        std::int64_t stride;
        if (want) {
          P = probs + (hh * L + i0) * T;
          stride = T;
        } else {
          local.resize(static_cast<std::size_t>(rb * T));
          P = local.data();
          stride = vis_max;
        }
        using smap = Eigen::Map<const rmat, 0, Eigen::OuterStride<>>;
        smap Q(q + i0 * H * hd + hh * hd, nr, hd, Eigen::OuterStride<>(H * hd));
        Eigen::Map<const rmat> K(kc + g * capacity * hd, vis_max, hd);
        Eigen::Map<const rmat> V(vc + g * capacity * hd, vis_max, hd);
        Eigen::Map<rmat, 0, Eigen::OuterStride<>> S(P, nr, vis_max, Eigen::OuterStride<>(stride));
        S.noalias() = (Q * K.transpose()) * scale;
        for (std::int64_t i = 0; i < nr; ++i) {  // row i0 + i sees keys 0 .. past + i0 + i
          float* r = P + i * stride;
          const std::int64_t vis = past + i0 + i + 1;
          softmax_row(r, vis);
          for (std::int64_t j = vis; j < vis_max; ++j) r[j] = 0.0f;
        }
        Eigen::Map<rmat, 0, Eigen::OuterStride<>> O(att + i0 * H * hd + hh * hd, nr, hd, Eigen::OuterStride<>(H * hd));
        O.noalias() = S * V;
      }
    }
  }
}

/// The rows hook keeps at layer l: from the probabilities probs [H, L, L] when they were formed,
/// else from Q [L, heads, hd] rows and the cached K [kv_heads, capacity, hd] seen as [heads, L, hd]
/// and [kv_heads, L, hd] (past = 0: the cache holds exactly this prefill's keys).
prefill_hook::keep_rows call_hook(const prefill_hook& hook, int l, const float* probs, const float* q, const float* kc,
                                  std::int64_t capacity, std::int64_t L, std::int64_t H, std::int64_t KV, std::int64_t hd,
                                  float scale) {
  if (probs != nullptr) return hook.after_attention(l, probs, L);
  tokensel::qk_source<float> src{
      .queries = tokensel::tensor_view<const float, 3>(q, {H, L, hd}, {hd, H * hd, 1}),
      .keys = tokensel::tensor_view<const float, 3>(kc, {KV, L, hd}, {capacity * hd, hd, 1}),
      .scale = scale,
      .causal = true,
  };
  return hook.after_qk(l, src);
}

/// The survivors keep (ascending rows of [0, L)) of a prefill hook at layer l continue: their
/// rows of x [L, d] and att [L, width], their position ids and original rows move to the front.
/// Returns their number. The layer's cache keeps everything (it was filled before the hook).
std::int64_t keep_survivors(const std::vector<std::int32_t>& keep, int l, std::int64_t L, std::int64_t d,
                            std::int64_t width, std::vector<float>& x, std::vector<float>& att,
                            std::vector<std::int32_t>& pos, std::vector<std::int32_t>& rows) {
  const std::int64_t nk = static_cast<std::int64_t>(keep.size());
  for (std::int64_t i = 0; i < nk; ++i) {
    const std::int32_t r = keep[static_cast<std::size_t>(i)];
    if (r < 0 || r >= L || (i > 0 && r <= keep[static_cast<std::size_t>(i - 1)])) {
      throw error("llava: prefill hook returned an invalid row list at layer " + std::to_string(l));
    }
  }
  if (nk == 0) throw error("llava: prefill hook dropped every row");
  for (std::int64_t i = 0; i < nk; ++i) {
    const std::int32_t r = keep[static_cast<std::size_t>(i)];
    if (r == i) continue;
    std::memmove(x.data() + i * d, x.data() + r * d, static_cast<std::size_t>(d) * 4);
    std::memmove(att.data() + i * width, att.data() + r * width, static_cast<std::size_t>(width) * 4);
  }
  tokensel::compact_positions(pos, L, keep);  // survivors keep their original position ids
  tokensel::compact_positions(rows, L, keep);
  x.resize(static_cast<std::size_t>(nk * d));
  pos.resize(static_cast<std::size_t>(nk));
  rows.resize(static_cast<std::size_t>(nk));
  return nk;
}

}  // namespace

std::vector<float> llama_model::prefill(const float* embeddings, std::span<const std::int32_t> positions, kv_cache& cache,
                                        const prefill_hook* hook, std::vector<std::int32_t>* final_rows,
                                        std::vector<std::int64_t>* layer_rows) const {
  const std::int64_t d = cfg_.hidden, hd = cfg_.head_dim, H = cfg_.heads, KV = cfg_.kv_heads;
  std::int64_t L = static_cast<std::int64_t>(positions.size());
  if (L == 0) throw error("llava: empty prompt");
  if (static_cast<std::int64_t>(cache.length.size()) != cfg_.layers) throw error("llava: KV cache of the wrong model");
  std::vector<float> x(embeddings, embeddings + L * d);
  if (!all_finite(x.data(), L * d)) {
    throw error("llava: non-finite values in the LLM's input embeddings (the prompt's token rows or the image features)");
  }
  if (layer_rows) layer_rows->clear();
  std::vector<std::int32_t> pos(positions.begin(), positions.end());
  std::vector<std::int32_t> rows(static_cast<std::size_t>(L));
  for (std::int64_t i = 0; i < L; ++i) rows[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(i);
  std::vector<float> h, q, k, v, att, probs;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  for (int l = 0; l < cfg_.layers; ++l) {
    const auto& lw = layers_[static_cast<std::size_t>(l)];
    const std::int64_t past = cache.length[static_cast<std::size_t>(l)];
    if (past + L > cache.capacity) throw error("llava: KV cache capacity exceeded");
    const bool runs = hook && (!hook->wants_attention || hook->wants_attention(l));
    const bool at_end = runs && hook->after_layer;  // end-of-layer hook: no map, no Q/K call
    const bool hooked = runs && !at_end && (hook->after_qk || hook->after_attention);
    const bool want = hooked && !hook->after_qk;  // the probabilities are materialised
    if ((hooked || at_end) && past != 0) throw error("llava: prefill hooks need an empty KV cache");
    h.resize(static_cast<std::size_t>(L * d));
    q.resize(static_cast<std::size_t>(L * H * hd));
    k.resize(static_cast<std::size_t>(L * KV * hd));
    v.resize(k.size());
    att.resize(q.size());
    rms_norm(x.data(), *lw.in_norm, L, h.data());
    linear(*lw.q, nullptr, h.data(), L, q.data());
    linear(*lw.k, nullptr, h.data(), L, k.data());
    linear(*lw.v, nullptr, h.data(), L, v.data());
    rope(q.data(), L, H, hd, pos.data(), inv_freq_);
    rope(k.data(), L, KV, hd, pos.data(), inv_freq_);
    auto& kc = cache.k[static_cast<std::size_t>(l)];
    auto& vc = cache.v[static_cast<std::size_t>(l)];
    append(kc, cache.capacity, k.data(), L, KV, hd, past);
    append(vc, cache.capacity, v.data(), L, KV, hd, past);
    const std::int64_t T = past + L;  // keys visible to the last row
    if (want) {
      probs.assign(static_cast<std::size_t>(H * L * T), 0.0f);
      ++hook->maps_materialised;
    }
    causal_attention(q.data(), kc.data(), vc.data(), cache.capacity, L, past, H, KV, hd, scale,
                     want ? probs.data() : nullptr, att.data());
    cache.length[static_cast<std::size_t>(l)] = T;
    // The hook reads Q/K (or the probabilities formed from them) before the layer's output is
    // checked: a NaN/Inf there is named here rather than by the selection method.
    if (hooked && (!all_finite(q.data(), L * H * hd) || !all_finite(k.data(), L * KV * hd))) {
      throw_non_finite("queries/keys in " + llm_layer(l, ".self_attn"));
    }
    if (hooked) {
      const auto keep = call_hook(*hook, l, want ? probs.data() : nullptr, q.data(), kc.data(), cache.capacity, L, H, KV,
                                  hd, scale);
      if (keep) L = keep_survivors(*keep, l, L, d, H * hd, x, att, pos, rows);
    }
    h.resize(static_cast<std::size_t>(L * d));
    linear(*lw.o, nullptr, att.data(), L, h.data());
    for (std::int64_t i = 0; i < L * d; ++i) x[static_cast<std::size_t>(i)] += h[static_cast<std::size_t>(i)];
    std::vector<float> n2(static_cast<std::size_t>(L * d));
    rms_norm(x.data(), *lw.post_norm, L, n2.data());
    mlp(lw, n2.data(), L, h.data());
    for (std::int64_t i = 0; i < L * d; ++i) x[static_cast<std::size_t>(i)] += h[static_cast<std::size_t>(i)];
    if (!all_finite(x.data(), L * d)) throw_non_finite("activations after " + llm_layer(l));
    if (at_end) {
      const tokensel::tensor_view<const float, 3> keys(kc.data(), {KV, L, hd}, {cache.capacity * hd, hd, 1});
      const auto keep = hook->after_layer(l, x.data(), L, keys);
      if (keep) L = keep_survivors(*keep, l, L, d, 0, x, att, pos, rows);
    }
    if (layer_rows) layer_rows->push_back(L);
  }
  if (final_rows) *final_rows = rows;
  return logits_of(x.data() + (L - 1) * d, -1);
}

std::vector<float> llama_model::final_norm_weight() const { return norm_->to_float(); }

std::vector<float> llama_model::decode_step(std::int32_t token, std::int32_t position, kv_cache& cache) const {
  const std::int64_t d = cfg_.hidden, hd = cfg_.head_dim, H = cfg_.heads, KV = cfg_.kv_heads, group = H / KV;
  std::vector<float> x(static_cast<std::size_t>(d)), h(x.size()), n2(x.size());
  embed(std::span<const std::int32_t>(&token, 1), x.data());
  std::vector<float> q(static_cast<std::size_t>(H * hd)), k(static_cast<std::size_t>(KV * hd)), v(k.size()), att(q.size());
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  for (int l = 0; l < cfg_.layers; ++l) {
    const auto& lw = layers_[static_cast<std::size_t>(l)];
    const std::int64_t past = cache.length[static_cast<std::size_t>(l)];
    if (past + 1 > cache.capacity) throw error("llava: KV cache capacity exceeded");
    rms_norm(x.data(), *lw.in_norm, 1, h.data());
    linear(*lw.q, nullptr, h.data(), 1, q.data());
    linear(*lw.k, nullptr, h.data(), 1, k.data());
    linear(*lw.v, nullptr, h.data(), 1, v.data());
    rope(q.data(), 1, H, hd, &position, inv_freq_);
    rope(k.data(), 1, KV, hd, &position, inv_freq_);
    auto& kc = cache.k[static_cast<std::size_t>(l)];
    auto& vc = cache.v[static_cast<std::size_t>(l)];
    append(kc, cache.capacity, k.data(), 1, KV, hd, past);
    append(vc, cache.capacity, v.data(), 1, KV, hd, past);
    const std::int64_t T = past + 1;
    cache.length[static_cast<std::size_t>(l)] = T;
#pragma omp parallel for schedule(static) if (T * H > 4096)
    for (std::int64_t hh = 0; hh < H; ++hh) {
      const std::int64_t g = hh / group;
      Eigen::Map<const rmat> K(kc.data() + g * cache.capacity * hd, T, hd);
      Eigen::Map<const rmat> V(vc.data() + g * cache.capacity * hd, T, hd);
      Eigen::Map<const Eigen::VectorXf> Q(q.data() + hh * hd, hd);
      Eigen::VectorXf s = (K * Q) * scale;
      const float mx = s.maxCoeff();
      s = (s.array() - mx).exp();
      s /= s.sum();
      Eigen::Map<Eigen::VectorXf>(att.data() + hh * hd, hd).noalias() = V.transpose() * s;
    }
    linear(*lw.o, nullptr, att.data(), 1, h.data());
    for (std::int64_t i = 0; i < d; ++i) x[static_cast<std::size_t>(i)] += h[static_cast<std::size_t>(i)];
    rms_norm(x.data(), *lw.post_norm, 1, n2.data());
    mlp(lw, n2.data(), 1, h.data());
    for (std::int64_t i = 0; i < d; ++i) x[static_cast<std::size_t>(i)] += h[static_cast<std::size_t>(i)];
  }
  return logits_of(x.data(), position);
}

std::vector<std::int32_t> llama_model::generate(std::vector<float> logits, std::int32_t next_position, int max_new,
                                                kv_cache& cache, std::vector<std::vector<float>>* step_logits) const {
  std::vector<std::int32_t> out;
  for (int t = 0; t < max_new; ++t) {
    const auto best = std::max_element(logits.begin(), logits.end()) - logits.begin();  // first max
    const auto id = static_cast<std::int32_t>(best);
    out.push_back(id);
    if (id == cfg_.eos || t + 1 == max_new) break;
    logits = decode_step(id, next_position++, cache);
    if (step_logits) step_logits->push_back(logits);
  }
  return out;
}

}  // namespace llava
