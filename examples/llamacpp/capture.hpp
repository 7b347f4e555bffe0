// tokensel-llamacpp: what the selection reads, taken from llama.cpp's CLIP graph through the
// scheduler's eval callback (mtmd_context_params::cb_eval), which sees every node as it is computed.
//
//   Qcur-<il>, Kcur-<il>   [d_head, heads, N] f32, after the projections and biases (what the
//                          attention consumes; under flash attention K is cast to f16 afterwards)
//   softmax node           [N keys, N queries, heads] f32, unnamed, one per layer in layer order
//                          (exists only with flash attention off)
//   layer_out-<il>         [D, N] f32, the hidden states leaving layer il
//   concat with v.class_embd   tells where CLS sits: first (fixed graph) or last (as shipped)
//
// Everything is copied out in tokensel's canonical order, CLS first then patches 0 .. n-1, so the
// methods see the layout of the transformers model whichever layout the graph has.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <ggml.h>

namespace tsl {

/// One layer's queries and keys, canonical order: [heads, N, d] each.
struct layer_qk {
  std::vector<float> q, k;
};

class capture {
 public:
  std::set<int> qk_layers;       ///< layers whose Q/K to keep
  std::set<int> softmax_layers;  ///< layers whose probabilities to keep
  int hidden_layer = -1;         ///< layer whose output (hidden states) to keep; -1: none

  /// Set by the callback.
  std::optional<bool> cls_first;  ///< from the CLS concat node; empty: no CLS seen
  int heads = 0, tokens = 0, head_dim = 0, width = 0;
  std::map<int, layer_qk> qk;
  std::map<int, std::vector<float>> probs;  ///< [heads, N, N]
  std::vector<float> hidden;                ///< [N, D]
  std::string failure;                      ///< a capture problem (reported after the encode)

  /// Forget the previous encode (the node counters restart).
  void reset();

  /// ggml_backend_sched_eval_callback: ask = true before a node runs (return whether to see
  /// it), ask = false once it has run (its data is then readable; return true to go on).
  static bool callback(ggml_tensor* t, bool ask, void* self);

  /// The graph's token of canonical index c (0 = CLS, 1 + p = patch p).
  int graph_token(int c) const noexcept;

 private:
  enum class kind { none, q, k, softmax, hidden };
  bool wants(ggml_tensor* t);
  void take(const ggml_tensor* t);
  int softmax_seen_ = 0;
  kind pending_ = kind::none;
  int pending_layer_ = -1;
};

}  // namespace tsl
