// llava: Llama decoder (LlamaForCausalLM) with a KV cache, RoPE at explicit positions (HF
// rotate-half), GQA, greedy decoding, and a per-layer hook through which FastV and FitPrune
// drop visual tokens inside the prefill.
//
// Token dropping: the hook of layer l sees that layer's attention probabilities over the current
// sequence and may return the rows to keep. Dropped rows leave the sequence right after layer
// l's attention (before o_proj: o_proj and the MLP are per-token, so survivors get exactly the
// values of "drop after the layer"); layer l's own KV cache still holds them, later layers never
// see them; survivors keep their original position ids (spec sections 4-5).
//
// Instead of the probabilities, a hook may take the layer's post-RoPE queries and keys as a
// causal tokensel::qk_source (after_qk): the layer then forms no [heads, L, L] map at all, like a
// FlashAttention engine, and the selection statistics are recomputed from Q/K.
//
// A hook may instead run at the END of layer l (after_layer: DART): it sees the hidden states
// leaving the layer and the layer's post-RoPE keys; the rows it drops leave before layer l + 1
// (the same survivors' values as a drop after the attention, since o_proj and the MLP are per-token).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <vector>

#include <tokensel/core/qk_source.hpp>

#include "llava/config.hpp"
#include "llava/weights.hpp"

namespace llava {

/// Inspection / pruning hook of the prefill.
struct prefill_hook {
  using keep_rows = std::optional<std::vector<std::int32_t>>;
  /// Whether the hook runs at layer l (absent: every layer). Only those layers materialise their
  /// probabilities, and only for after_attention.
  std::function<bool(int layer)> wants_attention;
  /// Called after layer l's softmax with probs [heads, L, L] (causal, rows = current sequence)
  /// and the current sequence length L. Return the rows to keep, ascending (std::nullopt: all).
  std::function<keep_rows(int layer, const float* probs, std::int64_t L)> after_attention;
  /// Map-free alternative (takes precedence over after_attention when set): called after layer l's
  /// attention with its queries [heads, L, head_dim] and keys [kv_heads, L, head_dim] after RoPE
  /// (views into the layer's buffers and KV cache, valid only during the call; causal, scale
  /// 1/sqrt(head_dim), GQA as the model). No probability map is formed for the layer.
  std::function<keep_rows(int layer, const tokensel::qk_source<float>& qk)> after_qk;
  /// Map-free end-of-layer alternative (takes precedence over both above): called after layer l's
  /// MLP with hidden [L, hidden] (the states entering layer l + 1) and the layer's keys after RoPE
  /// [kv_heads, L, head_dim] (views valid only during the call). No map is formed for the layer.
  std::function<keep_rows(int layer, const float* hidden, std::int64_t L, const tokensel::tensor_view<const float, 3>& keys)>
      after_layer;
  /// [heads, L, L] probability maps the prefill formed for this hook (after_attention calls).
  mutable std::int64_t maps_materialised = 0;
};

class llama_model {
 public:
  llama_model(const llama_config& cfg, const weight_store& weights);
  const llama_config& config() const noexcept { return cfg_; }

  /// Embedding rows of token ids -> out [ids.size(), hidden] (fp32).
  void embed(std::span<const std::int32_t> ids, float* out) const;

  /// Per-layer cache: K/V [kv_heads, capacity, head_dim] and the number of cached positions.
  struct kv_cache {
    std::vector<std::vector<float>> k, v;
    std::vector<std::int64_t> length;
    std::int64_t capacity = 0;
  };
  kv_cache make_cache(std::int64_t capacity) const;

  /// Runs the prompt: embeddings [L, hidden] at the given position ids (one per row), appending
  /// to `cache` (normally empty). Returns the logits of the last surviving row [vocab].
  /// `final_rows` (optional) receives the original row index of every row that reached the end.
  /// `layer_rows` (optional) receives, per layer, the rows that went on after its attention
  /// (o_proj and MLP); the rows entering layer l are layer_rows[l - 1] (the prompt length for l = 0).
  std::vector<float> prefill(const float* embeddings, std::span<const std::int32_t> positions, kv_cache& cache,
                             const prefill_hook* hook = nullptr, std::vector<std::int32_t>* final_rows = nullptr,
                             std::vector<std::int64_t>* layer_rows = nullptr) const;

  /// The final RMSNorm weight [hidden] in fp32 (DART compares hidden states under it).
  std::vector<float> final_norm_weight() const;

  /// One token at `position`: returns its logits [vocab].
  std::vector<float> decode_step(std::int32_t token, std::int32_t position, kv_cache& cache) const;

  /// Greedy decoding from the prefill's logits: argmax (lowest id on ties) until EOS (included
  /// in the output) or max_new tokens; the first token sits at `next_position`. `step_logits`
  /// (optional) receives the logits of every decode step (one per token fed back).
  std::vector<std::int32_t> generate(std::vector<float> logits, std::int32_t next_position, int max_new,
                                     kv_cache& cache, std::vector<std::vector<float>>* step_logits = nullptr) const;

 private:
  struct layer_weights {
    const tensor *in_norm, *q, *k, *v, *o, *post_norm, *gate, *up, *down;
  };
  void rms_norm(const float* x, const tensor& w, std::int64_t n, float* out) const;
  void mlp(const layer_weights& lw, const float* x, std::int64_t n, float* out) const;
  /// Final norm and lm_head of one row; non-finite logits are an error naming the prefill's final
  /// logits (decode_position < 0) or the decode step at that position.
  std::vector<float> logits_of(const float* hidden_row, std::int32_t decode_position) const;

  llama_config cfg_;
  const tensor *embed_, *norm_, *lm_head_;
  std::vector<layer_weights> layers_;
  std::vector<float> inv_freq_;
};

}  // namespace llava
