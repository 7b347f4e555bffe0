// llava: Llama decoder (LlamaForCausalLM) with a KV cache, RoPE at explicit positions (HF
// rotate-half), GQA, greedy decoding, and a per-layer hook through which FastV and FitPrune
// drop visual tokens inside the prefill.
//
// Token dropping: the hook of layer l sees that layer's attention probabilities over the current
// sequence and may return the rows to keep. Dropped rows leave the sequence right after layer
// l's attention (before o_proj: o_proj and the MLP are per-token, so survivors get exactly the
// values of "drop after the layer"); layer l's own KV cache still holds them, later layers never
// see them; survivors keep their original position ids (spec sections 4-5).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <vector>

#include "llava/config.hpp"
#include "llava/weights.hpp"

namespace llava {

/// Inspection / pruning hook of the prefill.
struct prefill_hook {
  /// Whether layer l's attention probabilities are needed (only those layers materialise them).
  std::function<bool(int layer)> wants_attention;
  /// Called after layer l's softmax with probs [heads, L, L] (causal, rows = current sequence)
  /// and the current sequence length L. Return the rows to keep, ascending (std::nullopt: all).
  std::function<std::optional<std::vector<std::int32_t>>(int layer, const float* probs, std::int64_t L)>
      after_attention;
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

  /// One token at `position`: returns its logits [vocab].
  std::vector<float> decode_step(std::int32_t token, std::int32_t position, kv_cache& cache) const;

  /// Greedy decoding from the prefill's logits: argmax (lowest id on ties) until EOS (included
  /// in the output) or max_new tokens; the first token sits at `next_position`.
  std::vector<std::int32_t> generate(std::vector<float> logits, std::int32_t next_position, int max_new,
                                     kv_cache& cache) const;

 private:
  struct layer_weights {
    const tensor *in_norm, *q, *k, *v, *o, *post_norm, *gate, *up, *down;
  };
  void rms_norm(const float* x, const tensor& w, std::int64_t n, float* out) const;
  void mlp(const layer_weights& lw, const float* x, std::int64_t n, float* out) const;
  std::vector<float> logits_of(const float* hidden_row) const;

  llama_config cfg_;
  const tensor *embed_, *norm_, *lm_head_;
  std::vector<layer_weights> layers_;
  std::vector<float> inv_freq_;
};

}  // namespace llava
