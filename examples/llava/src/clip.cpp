// llava: CLIP vision tower and projector (see clip.hpp).
#include "llava/clip.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <Eigen/Core>

namespace llava {

using rmat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

void softmax_row(float* row, std::int64_t count) {
  float mx = row[0];
  for (std::int64_t j = 1; j < count; ++j) mx = std::max(mx, row[j]);
  float sum = 0;
  for (std::int64_t j = 0; j < count; ++j) {
    row[j] = std::exp(row[j] - mx);
    sum += row[j];
  }
  const float inv = 1.0f / sum;
  for (std::int64_t j = 0; j < count; ++j) row[j] *= inv;
}

bool all_finite(const float* x, std::int64_t count) noexcept {
  constexpr std::uint32_t exponent = 0x7f800000u;  // all ones: Inf or NaN
  std::uint32_t bad = 0;
  for (std::int64_t i = 0; i < count; ++i) {
    std::uint32_t b;
    std::memcpy(&b, x + i, sizeof b);
    bad |= static_cast<std::uint32_t>((b & exponent) == exponent);
  }
  return bad == 0;
}

void throw_non_finite(const std::string& what) {
  throw error("llava: non-finite " + what + ": a weight of that layer or an earlier one is NaN/Inf (or the values overflow fp32)");
}

void apply_activation(const std::string& name, float* x, std::int64_t count) {
  if (name == "quick_gelu") {
#pragma omp parallel for schedule(static) if (count > 65536)
    for (std::int64_t i = 0; i < count; ++i) x[i] = x[i] / (1.0f + std::exp(-1.702f * x[i]));
  } else if (name == "gelu") {
#pragma omp parallel for schedule(static) if (count > 65536)
    for (std::int64_t i = 0; i < count; ++i) x[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * 0.70710678118654752f));
  } else if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast") {
#pragma omp parallel for schedule(static) if (count > 65536)
    for (std::int64_t i = 0; i < count; ++i) {
      const float v = x[i];
      x[i] = 0.5f * v * (1.0f + std::tanh(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    }
  } else if (name == "relu") {
    for (std::int64_t i = 0; i < count; ++i) x[i] = std::max(x[i], 0.0f);
  } else if (name == "silu" || name == "swish") {
#pragma omp parallel for schedule(static) if (count > 65536)
    for (std::int64_t i = 0; i < count; ++i) x[i] = x[i] / (1.0f + std::exp(-x[i]));
  } else {
    throw error("llava: activation '" + name + "' is not supported");
  }
}

tokensel::qk_source<float> clip_qk_source(const float* q, const float* k, std::int64_t tokens, std::int64_t heads,
                                          std::int64_t head_dim) {
  const std::int64_t D = heads * head_dim;
  return tokensel::qk_source<float>{
      .queries = tokensel::tensor_view<const float, 3>(q, {heads, tokens, head_dim}, {head_dim, D, 1}),
      .keys = tokensel::tensor_view<const float, 3>(k, {heads, tokens, head_dim}, {head_dim, D, 1}),
      .scale = 1.0f / std::sqrt(static_cast<float>(head_dim)),  // CLIP's softmax scale
  };
}

tokensel::qk_source<float> clip_output::qk_source(int layer) const {
  const auto& qs = q.at(layer);
  const std::int64_t hd = hidden / heads;
  return clip_qk_source(qs.data(), k.at(layer).data(), tokens, heads, hd);
}

namespace {

/// LayerNorm over rows of x [n, d] (biased variance, double accumulation) into out.
void layer_norm(const float* x, std::int64_t n, std::int64_t d, const std::vector<float>& w, const std::vector<float>& b,
                double eps, float* out) {
#pragma omp parallel for schedule(static) if (n > 16)
  for (std::int64_t i = 0; i < n; ++i) {
    const float* r = x + i * d;
    double mean = 0;
    for (std::int64_t j = 0; j < d; ++j) mean += r[j];
    mean /= static_cast<double>(d);
    double var = 0;
    for (std::int64_t j = 0; j < d; ++j) var += (r[j] - mean) * (r[j] - mean);
    var /= static_cast<double>(d);
    const double inv = 1.0 / std::sqrt(var + eps);
    float* o = out + i * d;
    for (std::int64_t j = 0; j < d; ++j) o[j] = static_cast<float>((r[j] - mean) * inv) * w[j] + b[j];
  }
}

/// Softmax of each row in place.
void softmax_rows(float* s, std::int64_t rows, std::int64_t cols) {
  for (std::int64_t i = 0; i < rows; ++i) softmax_row(s + i * cols, cols);
}

std::string vt(const std::string& rest) { return "model.vision_tower.vision_model." + rest; }

/// "CLIP layer 3 (vision_model.encoder.layers.3<suffix>)"
std::string clip_layer(int l, const char* suffix = "") {
  return "CLIP layer " + std::to_string(l) + " (vision_model.encoder.layers." + std::to_string(l) + suffix + ")";
}

}  // namespace

clip_model::clip_model(const llava_config& cfg, const weight_store& w) : cfg_(cfg) {
  const auto& v = cfg.vision;
  const std::int64_t D = v.hidden, P = v.patch, N = v.tokens(), I = v.intermediate;
  patch_w_ = &w.get(vt("embeddings.patch_embedding.weight"), {D, v.channels, P, P});
  class_emb_ = &w.get(vt("embeddings.class_embedding"), {D});
  pos_emb_ = &w.get(vt("embeddings.position_embedding.weight"), {N, D});
  pre_ln_w_ = &w.get(vt("pre_layrnorm.weight"), {D});
  pre_ln_b_ = &w.get(vt("pre_layrnorm.bias"), {D});
  const int need = cfg.feature_hidden_index();
  for (int l = 0; l < v.layers; ++l) {
    const std::string p = "encoder.layers." + std::to_string(l) + ".";
    if (l >= need && !w.contains(vt(p + "self_attn.q_proj.weight"))) break;  // optional trailing layers
    layer_weights lw{};
    lw.ln1_w = &w.get(vt(p + "layer_norm1.weight"), {D});
    lw.ln1_b = &w.get(vt(p + "layer_norm1.bias"), {D});
    lw.q_w = &w.get(vt(p + "self_attn.q_proj.weight"), {D, D});
    lw.q_b = &w.get(vt(p + "self_attn.q_proj.bias"), {D});
    lw.k_w = &w.get(vt(p + "self_attn.k_proj.weight"), {D, D});
    lw.k_b = &w.get(vt(p + "self_attn.k_proj.bias"), {D});
    lw.v_w = &w.get(vt(p + "self_attn.v_proj.weight"), {D, D});
    lw.v_b = &w.get(vt(p + "self_attn.v_proj.bias"), {D});
    lw.o_w = &w.get(vt(p + "self_attn.out_proj.weight"), {D, D});
    lw.o_b = &w.get(vt(p + "self_attn.out_proj.bias"), {D});
    lw.ln2_w = &w.get(vt(p + "layer_norm2.weight"), {D});
    lw.ln2_b = &w.get(vt(p + "layer_norm2.bias"), {D});
    lw.fc1_w = &w.get(vt(p + "mlp.fc1.weight"), {I, D});
    lw.fc1_b = &w.get(vt(p + "mlp.fc1.bias"), {I});
    lw.fc2_w = &w.get(vt(p + "mlp.fc2.weight"), {D, I});
    lw.fc2_b = &w.get(vt(p + "mlp.fc2.bias"), {D});
    layers_.push_back(lw);
  }
}

namespace {

bool listed(const std::vector<int>& layers, int l) { return std::find(layers.begin(), layers.end(), l) != layers.end(); }

/// Keys k [N, H * hd] as [H, N, hd] (clip_output::keys).
std::vector<float> keys_per_head(const float* k, std::int64_t N, std::int64_t H, std::int64_t hd) {
  const std::int64_t D = H * hd;
  std::vector<float> keys(static_cast<std::size_t>(H * N * hd));
  for (std::int64_t hh = 0; hh < H; ++hh)
    for (std::int64_t i = 0; i < N; ++i)
      std::memcpy(keys.data() + (hh * N + i) * hd, k + i * D + hh * hd, static_cast<std::size_t>(hd) * 4);
  return keys;
}

/// Self-attention of one layer: att [N, D] from q, k, val [N, D]; the probabilities [H, N, N] into
/// probs when it is not null, their head mean [N, N] into mean when it is not null.
/// Attention by blocks of query rows, each block through the heads in ascending order, so the
/// head-mean map is summed while the block's probabilities are in cache, in reduce_heads' order.
/// The block height is a multiple of Eigen's GEMM micro-kernel rows (12 / 24 / 48 for SSE / AVX /
/// AVX-512 floats) and the last block takes the tail, so every row goes through the same kernel
/// path as in one [N, N] product per head: the probabilities are the same bits either way
/// (checked on AVX2 against the former one-product-per-head loop). Threads split the blocks.
void attend(const float* q, const float* k, const float* val, std::int64_t N, std::int64_t H, std::int64_t hd,
            float* probs, float* mean, float* att) {
  const std::int64_t D = H * hd;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const auto hf = static_cast<float>(H);
  const bool full = probs != nullptr;
  constexpr std::int64_t row_block = 48;
  const std::int64_t blocks = std::max<std::int64_t>(1, N / row_block);
#pragma omp parallel for schedule(static)
  for (std::int64_t b = 0; b < blocks; ++b) {
    const std::int64_t i0 = b * row_block, rows = b + 1 == blocks ? N - i0 : row_block;
    thread_local std::vector<float> tile;  // the block's rows of one head when no full map is kept
    if (!full && tile.size() < static_cast<std::size_t>(rows * N)) tile.resize(static_cast<std::size_t>(rows * N));
    float* acc = mean != nullptr ? mean + i0 * N : nullptr;
    const std::int64_t count = rows * N;
    for (std::int64_t hh = 0; hh < H; ++hh) {
      using smap = Eigen::Map<const rmat, 0, Eigen::OuterStride<>>;
      smap Q(q + i0 * D + hh * hd, rows, hd, Eigen::OuterStride<>(D));
      smap K(k + hh * hd, N, hd, Eigen::OuterStride<>(D));
      smap V(val + hh * hd, N, hd, Eigen::OuterStride<>(D));
      float* p = full ? probs + (hh * N + i0) * N : tile.data();
      Eigen::Map<rmat> Pm(p, rows, N);
      Pm.noalias() = (Q * K.transpose()) * scale;
      softmax_rows(p, rows, N);
      if (acc != nullptr) {
        if (hh == 0) {
          std::copy_n(p, count, acc);
        } else {
          for (std::int64_t e = 0; e < count; ++e) acc[e] += p[e];
        }
      }
      Eigen::Map<rmat, 0, Eigen::OuterStride<>> O(att + i0 * D + hh * hd, rows, hd, Eigen::OuterStride<>(D));
      O.noalias() = Pm * V;
    }
    if (acc != nullptr) {
      for (std::int64_t e = 0; e < count; ++e) acc[e] = acc[e] / hf;  // a division, as reduce_heads
    }
  }
}

/// What layer l hands on as opt asks: its probabilities, head mean and Q/K, to the callbacks or
/// into out.
void hand_out(int l, const clip_options& opt, std::vector<float>& probs, std::vector<float>& mean, bool want_mean,
              const std::vector<float>& q, const std::vector<float>& k, std::int64_t N, std::int64_t H, std::int64_t hd,
              clip_output& out) {
  if (opt.on_attention) opt.on_attention(l, probs.data());
  if (listed(opt.attention_layers, l)) out.attention[l] = probs;
  if (want_mean) {
    if (opt.on_head_mean) opt.on_head_mean(l, mean.data());
    else out.head_mean[l] = mean;
  }
  if (listed(opt.qk_layers, l)) {
    if (opt.on_qk) {
      opt.on_qk(l, clip_qk_source(q.data(), k.data(), N, H, hd));
    } else {
      out.q[l] = q;
      out.k[l] = k;
    }
  }
}

}  // namespace

int clip_model::layers_to_run(const clip_options& opt) const {
  const auto& v = cfg_.vision;
  const int last = v.layers - 1;
  int run = cfg_.feature_hidden_index();  // layers 0 .. run-1 run fully
  if (opt.keys_layer >= run) run = opt.keys_layer + 1;
  for (int l : opt.attention_layers) run = std::max(run, l + 1);
  for (int l : opt.head_mean_layers) run = std::max(run, l + 1);
  for (int l : opt.qk_layers) run = std::max(run, l + 1);
  if (opt.last_layer_qk && static_cast<int>(layers_.size()) < v.layers) {
    throw error("llava: the checkpoint has no CLIP layer " + std::to_string(last) + " (PruMerge needs its Q/K)");
  }
  if (opt.last_layer_qk) run = std::max(run, last);  // hidden_states[last] is the last layer's input
  if (run > static_cast<int>(layers_.size())) throw error("llava: CLIP layer " + std::to_string(run - 1) + " requested but absent");
  return run;
}

std::vector<float> clip_model::embed(const float* pixels) const {
  const auto& v = cfg_.vision;
  const std::int64_t D = v.hidden, P = v.patch, G = v.grid(), n = v.patches(), N = v.tokens(), S = v.image_size;
  const std::int64_t C = v.channels;
  // Patch embedding: unfold [C, S, S] into [n, C*P*P] rows (c, ky, kx) = the conv weight's order.
  std::vector<float> patches(static_cast<std::size_t>(n * C * P * P));
#pragma omp parallel for schedule(static)
  for (std::int64_t p = 0; p < n; ++p) {
    const std::int64_t gy = p / G, gx = p % G;
    float* dst = patches.data() + p * C * P * P;
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t ky = 0; ky < P; ++ky)
        std::memcpy(dst + (c * P + ky) * P, pixels + (c * S + gy * P + ky) * S + gx * P, static_cast<std::size_t>(P) * 4);
  }
  std::vector<float> x(static_cast<std::size_t>(N * D));
  linear(*patch_w_, nullptr, patches.data(), n, x.data() + D);
  const auto cls = class_emb_->to_float();
  std::copy(cls.begin(), cls.end(), x.begin());
  const auto pos = pos_emb_->to_float();
  for (std::size_t i = 0; i < x.size(); ++i) x[i] += pos[i];
  const auto w = pre_ln_w_->to_float(), b = pre_ln_b_->to_float();
  layer_norm(x.data(), N, D, w, b, v.layer_norm_eps, x.data());
  return x;
}

void clip_model::last_layer_qk(const std::vector<float>& x, std::vector<float>& h, clip_output& out) const {
  const auto& v = cfg_.vision;
  const std::int64_t D = v.hidden, N = v.tokens();
  const int last = v.layers - 1;
  const auto& lw2 = layers_[static_cast<std::size_t>(last)];
  layer_norm(x.data(), N, D, lw2.ln1_w->to_float(), lw2.ln1_b->to_float(), v.layer_norm_eps, h.data());
  out.last_q.resize(x.size());
  out.last_k.resize(x.size());
  linear(*lw2.q_w, lw2.q_b, h.data(), N, out.last_q.data());
  linear(*lw2.k_w, lw2.k_b, h.data(), N, out.last_k.data());
  if (!all_finite(out.last_q.data(), N * D) || !all_finite(out.last_k.data(), N * D)) {
    throw_non_finite("queries/keys in " + clip_layer(last, ".self_attn"));
  }
}

clip_output clip_model::encode(const float* pixels, const clip_options& opt) const {
  const auto& v = cfg_.vision;
  const std::int64_t D = v.hidden, N = v.tokens();
  const std::int64_t H = v.heads, hd = v.head_dim(), I = v.intermediate;
  const int feature = cfg_.feature_hidden_index();
  const int last = v.layers - 1;
  const int run = layers_to_run(opt);

  clip_output out;
  out.tokens = static_cast<int>(N);
  out.hidden = static_cast<int>(D);
  out.heads = static_cast<int>(H);
  std::vector<float> x = embed(pixels);
  if (!all_finite(x.data(), N * D)) {
    throw_non_finite("activations after the CLIP embeddings (vision_model.embeddings, vision_model.pre_layrnorm)");
  }
  if (feature == 0) out.features = x;

  std::vector<float> h(static_cast<std::size_t>(N * D)), q(h.size()), k(h.size()), val(h.size()), att(h.size());
  std::vector<float> mid(static_cast<std::size_t>(N * I));
  std::vector<float> probs, mean;  // [H, N, N] / [N, N], for the layers that want them
  for (int l = 0; l < run; ++l) {
    const auto& lw = layers_[static_cast<std::size_t>(l)];
    layer_norm(x.data(), N, D, lw.ln1_w->to_float(), lw.ln1_b->to_float(), v.layer_norm_eps, h.data());
    linear(*lw.q_w, lw.q_b, h.data(), N, q.data());
    linear(*lw.k_w, lw.k_b, h.data(), N, k.data());
    linear(*lw.v_w, lw.v_b, h.data(), N, val.data());
    const bool full = opt.on_attention || listed(opt.attention_layers, l);
    const bool want_mean = listed(opt.head_mean_layers, l);
    // Q and K leave this function (maps, head means, Q/K, keys) before the layer's output is
    // checked: a NaN/Inf there is named here rather than by the selection method reading them.
    if ((full || want_mean || l == opt.keys_layer || listed(opt.qk_layers, l)) &&
        (!all_finite(q.data(), N * D) || !all_finite(k.data(), N * D))) {
      throw_non_finite("queries/keys in " + clip_layer(l, ".self_attn"));
    }
    if (l == opt.keys_layer) out.keys = keys_per_head(k.data(), N, H, hd);
    if (full) probs.resize(static_cast<std::size_t>(H * N * N));
    if (want_mean) mean.resize(static_cast<std::size_t>(N * N));
    if (full || want_mean) ++out.maps_materialised;
    attend(q.data(), k.data(), val.data(), N, H, hd, full ? probs.data() : nullptr, want_mean ? mean.data() : nullptr,
           att.data());
    hand_out(l, opt, probs, mean, want_mean, q, k, N, H, hd, out);
    linear(*lw.o_w, lw.o_b, att.data(), N, h.data());
    for (std::size_t i = 0; i < x.size(); ++i) x[i] += h[i];
    layer_norm(x.data(), N, D, lw.ln2_w->to_float(), lw.ln2_b->to_float(), v.layer_norm_eps, h.data());
    linear(*lw.fc1_w, lw.fc1_b, h.data(), N, mid.data());
    apply_activation(v.hidden_act, mid.data(), N * I);
    linear(*lw.fc2_w, lw.fc2_b, mid.data(), N, h.data());
    for (std::size_t i = 0; i < x.size(); ++i) x[i] += h[i];
    if (!all_finite(x.data(), N * D)) throw_non_finite("activations after " + clip_layer(l));
    if (l + 1 == feature) out.features = x;
    if (opt.last_layer_qk && l + 1 == last) last_layer_qk(x, h, out);
  }
  if (opt.last_layer_qk && last == 0) {
    // One-layer tower: the last layer's input is the embedding output (not reached above).
    throw error("llava: PruMerge needs a CLIP tower of at least 2 layers");
  }
  return out;
}

// ---- projector ---------------------------------------------------------------------------------

projector::projector(const llava_config& cfg, const weight_store& w) : act_(cfg.projector_hidden_act) {
  in_ = cfg.vision.hidden;
  mid_ = out_ = cfg.text.hidden;
  w1_ = &w.get("model.multi_modal_projector.linear_1.weight", {mid_, in_});
  b1_ = &w.get("model.multi_modal_projector.linear_1.bias", {mid_});
  w2_ = &w.get("model.multi_modal_projector.linear_2.weight", {out_, mid_});
  b2_ = &w.get("model.multi_modal_projector.linear_2.bias", {out_});
}

void projector::forward(const float* x, std::int64_t n, float* out) const {
  std::vector<float> mid(static_cast<std::size_t>(n * mid_));
  linear(*w1_, b1_, x, n, mid.data());
  apply_activation(act_, mid.data(), n * mid_);
  linear(*w2_, b2_, mid.data(), n, out);
  if (!all_finite(out, n * out_)) throw_non_finite("activations after the projector (multi_modal_projector)");
}

}  // namespace llava
