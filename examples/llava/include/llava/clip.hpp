// llava: CLIP vision tower (CLIPVisionModel as LLaVA uses it) and the multi-modal projector.
//
// Embeddings: Conv2d patch embedding (no bias), class embedding, position embedding,
// pre_layrnorm. Pre-LN encoder layers: x + out_proj(attn(LN1 x)); x + fc2(act(fc1(LN2 x))).
// Only the layers up to the feature layer run (hidden_states[-2] = output of layer L-2 for
// LLaVA-1.5); the last layer's Q/K are computed on request (PruMerge) without running it.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <tokensel/core/qk_source.hpp>

#include "llava/config.hpp"
#include "llava/weights.hpp"

namespace llava {

struct clip_options {
  /// Layers (0-based encoder layer index) whose attention probabilities [heads, N, N] are copied
  /// into clip_output::attention. HF's `attentions[l]`.
  std::vector<int> attention_layers;
  /// Streaming alternative: called after each layer's softmax with probs [heads, N, N] (valid only
  /// during the call), for every layer that runs. Cheaper than storing many maps.
  std::function<void(int layer, const float* probs)> on_attention;
  /// Layers whose head-mean map [N, N] is computed inside the attention, while each block of
  /// probability rows is still in cache: the heads' rows summed in ascending head order in fp32,
  /// the sum divided by the head count, i.e. bit for bit tokensel::reduce_heads(mean) of the
  /// [heads, N, N] map. A method that head-means (freePruner, FoPru) then reads N * N floats per
  /// layer instead of heads * N * N; the per-head maps are not formed for a layer nobody else asks
  /// for. Each map goes to on_head_mean when it is set (valid only during the call), else into
  /// clip_output::head_mean.
  std::vector<int> head_mean_layers;
  std::function<void(int layer, const float* mean)> on_head_mean;
  /// Map-free selection (llava --from-qk): layers whose queries and keys (after bias, before
  /// scaling) are handed over as a tokensel::qk_source (views [heads, N, head_dim] into [N, D]
  /// buffers, scale 1/sqrt(head_dim)), to on_qk when it is set (valid only during the call), else
  /// copied into clip_output::q / k. Nothing is materialised for them beyond Q and K themselves.
  std::vector<int> qk_layers;
  std::function<void(int layer, const tokensel::qk_source<float>& qk)> on_qk;
  /// Keys [heads, N, head_dim] (after bias) of this layer into clip_output::keys; -1: none.
  /// VisionZip reads the feature layer's (layer feature_hidden_index() - 1).
  int keys_layer = -1;
  /// Q and K [N, hidden] (after bias, before scaling) of the LAST encoder layer applied to
  /// LN1(hidden_states[layers - 1]) (PruMerge), without running that layer's attention or MLP.
  /// Layers between the feature layer and the last one run when needed.
  bool last_layer_qk = false;
};

struct clip_output {
  int tokens = 0;   ///< N = patches + 1 (CLS first)
  int hidden = 0;   ///< D
  std::vector<float> features;                 ///< hidden_states[feature layer] [N, D], CLS included
  std::map<int, std::vector<float>> attention; ///< requested layers: [heads, N, N]
  std::map<int, std::vector<float>> head_mean; ///< options.head_mean_layers: [N, N] (no on_head_mean)
  std::vector<float> keys;                     ///< [heads, N, head_dim] of options.keys_layer
  std::vector<float> last_q, last_k;           ///< [N, D] (options.last_layer_qk)
  std::map<int, std::vector<float>> q, k;      ///< options.qk_layers without on_qk: [N, D] each
  int heads = 0;
  /// Probability maps the encoder formed (per layer: the [heads, N, N] map and/or the head mean).
  int maps_materialised = 0;
  /// The stored Q/K of layer l (options.qk_layers) as a qk_source; the views point into q / k.
  tokensel::qk_source<float> qk_source(int layer) const;
};

/// Q and K [N, heads * head_dim] of one CLIP layer (after bias) as a qk_source [heads, N, head_dim].
tokensel::qk_source<float> clip_qk_source(const float* q, const float* k, std::int64_t tokens, std::int64_t heads,
                                          std::int64_t head_dim);

class clip_model {
 public:
  /// Checks every tensor it uses (names and shapes) at construction.
  clip_model(const llava_config& cfg, const weight_store& weights);
  /// pixels: [channels, S, S] normalised fp32 (transformers' pixel_values of one image).
  clip_output encode(const float* pixels, const clip_options& options = {}) const;
  const clip_config& config() const noexcept { return cfg_.vision; }

 private:
  struct layer_weights {
    const tensor *ln1_w, *ln1_b, *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *o_w, *o_b, *ln2_w, *ln2_b, *fc1_w, *fc1_b,
        *fc2_w, *fc2_b;
  };
  /// encode's steps: the layers to run for options (throws when the checkpoint lacks them), the
  /// embeddings [N, D] of the pixels, and the last layer's Q/K from its input x (h: scratch).
  int layers_to_run(const clip_options& options) const;
  std::vector<float> embed(const float* pixels) const;
  void last_layer_qk(const std::vector<float>& x, std::vector<float>& h, clip_output& out) const;

  llava_config cfg_;
  const tensor *patch_w_, *class_emb_, *pos_emb_, *pre_ln_w_, *pre_ln_b_;
  std::vector<layer_weights> layers_;
};

/// linear_1 -> act -> linear_2 (LlavaMultiModalProjector).
class projector {
 public:
  projector(const llava_config& cfg, const weight_store& weights);
  /// x [n, vision hidden] -> out [n, text hidden].
  void forward(const float* x, std::int64_t n, float* out) const;
  int in_features() const noexcept { return in_; }
  int out_features() const noexcept { return out_; }

 private:
  const tensor *w1_, *b1_, *w2_, *b2_;
  std::string act_;
  int in_ = 0, mid_ = 0, out_ = 0;
};

/// Whether every x[i] is finite: one pass over the bit patterns (an exponent of all ones is Inf or
/// NaN), an integer OR that the compiler vectorises; no floating-point comparison, so it holds
/// under -ffast-math too.
bool all_finite(const float* x, std::int64_t count) noexcept;

/// Throws llava::error "llava: non-finite <what>: a weight of that layer or an earlier one is
/// NaN/Inf (or the values overflow fp32)". The forward passes (CLIP, projector, Llama) check the
/// rows each layer hands on with all_finite and call this naming the layer, e.g. "activations after
/// CLIP layer 3 (vision_model.encoder.layers.3)": a NaN/Inf weight fails the run, never answers.
[[noreturn]] void throw_non_finite(const std::string& what);

/// Activations shared by CLIP, the projector and Llama (by transformers name).
void apply_activation(const std::string& name, float* x, std::int64_t count);

/// Softmax of the first `count` entries of a row in place (max-subtracted, fp32 like torch);
/// shared by CLIP's and Llama's attention.
void softmax_row(float* row, std::int64_t count);

}  // namespace llava
