// llava: the whole model (CLIP + projector + Llama) with token selection plugged in.
//
// Encoder-side methods (fopru, freepruner, prumerge, prumerge+, visionzip, random, uniform, pool)
// run between CLIP and the projector through tokensel's public API; fastv and fitprune run
// inside the LLM prefill (llama.hpp hook). No method = the unpruned model, exactly.
//
// Every method is driven the same way (pipeline.cpp): its config from the runtime's defaults below
// and `keep` through `method::with_budget(budget, n, base)` (tokensel/core/budget.hpp), then
// `requirements(config, shape)` decides what CLIP / the prefill hand over (layers, full maps or the
// CLS row and keys, encoder or LLM stage) and sizes the outputs (keep, output_rows; adaptive: the
// maximum), then the method's select. `keep` (a fraction in (0, 1] or an absolute count):
//   fopru, random, uniform   fraction -> the method's own ratio rule; count -> exactly count
//                            (fopru: the ratio whose keep_count is count); random and uniform
//                            default to 0.5
//   freepruner               absent: adaptive (paper); present: fixed mode, budget = count
//                            (fraction: max(1, floor(n * f))). Layers scaled to the tower:
//                            pivotal [round(6/22 f), f], complementary f, f = feature attention layer
//   prumerge, prumerge+      adaptive only (IQR); a keep value is an error. Merged features (+1
//                            extra row, official merge) feed the projector in the official
//                            order (prumerge::mode::parity: top-Kc by attention, grid, extra row)
//   visionzip                keep = output rows k (CLS counts as a dominant token):
//                            contextual = floor(k * 10 / 64), dominant = k - contextual
//                            (the paper's 54 + 10 split); default without keep: 54 + 10
//   pool                     the window whose pooled grid holds exactly k tokens (0.25 -> 2x2);
//                            any other k is an error naming the nearest achievable counts;
//                            default without keep: 2x2
//   fastv                    drop ratio R = 1 - keep fraction (count: the R that keeps exactly
//                            count), layer K = selection_options::fastv_layer (2)
//   divprune, vispruner,     fraction -> the method's own ratio rule (divprune: round half to even,
//   dart                     the others floor, at least 1); count -> exactly count; defaults: the
//                            methods' own (divprune 0.098, vispruner 64 tokens, dart 0.222).
//                            divprune selects on the PROJECTED features (the official LLaVA placement:
//                            the LLM input rows of the image), then the kept CLIP rows are projected;
//                            vispruner reads the feature layer's CLS attention row (or its Q/K) and
//                            the CLIP features; dart runs inside the prefill at the end of layer K - 1
//                            (K = selection_options::dart_layer, 2): that layer's post-RoPE keys and
//                            the hidden states leaving it, under the final RMSNorm weight. None of the
//                            three reads a probability map (with or without from_qk)
//   fitprune                 recipe JSON (selection_options::fitprune_recipe, its layer count must
//                            equal the LLM's) or, from keep, a synthetic recipe that drops
//                            n - keep tokens spread evenly over the first half of the LLM
//                            layers (project decision: no calibration data at run time; a
//                            calibrated recipe comes from calibrate_fitprune below, which
//                            `llava --eval FILE --fitprune-calibrate OUT.json` drives)
//
// selection_options::from_qk (llava --from-qk): fopru, freepruner, visionzip, fastv and fitprune
// read their attention statistics from the layer's queries and keys (tokensel::qk_source, as with
// a FlashAttention engine) instead of materialised maps: CLIP hands over Q/K (after bias) of the
// layers the method reads, the LLM prefill hook its post-RoPE Q and cached K; neither forms a
// probability map for selection (run_result::attention_maps = 0). Same selections as the maps
// barring near-ties (docs/flashattention.md). The other methods read no attention: no effect.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <tokensel/core/budget.hpp>
#include <tokensel/methods/fitprune.hpp>
#include <tokensel/methods/fopru.hpp>

#include "llava/anyres.hpp"
#include "llava/clip.hpp"
#include "llava/config.hpp"
#include "llava/llama.hpp"
#include "llava/weights.hpp"

namespace llava {

enum class method {
  none, fopru, freepruner, prumerge, prumerge_plus, visionzip, fastv, fitprune, random, uniform, pool,
  divprune, dart, vispruner
};

/// "none", "fopru", "freepruner", "prumerge", "prumerge+", "visionzip", "fastv", "fitprune",
/// "random", "uniform", "pool", "divprune", "dart", "vispruner"; throws llava::error listing them otherwise.
method parse_method(std::string_view name);
const char* to_string(method m) noexcept;

/// --keep: text with '.', 'e' or 'E' is a keep fraction ("0.5", "1.0"), an integer is a count
/// ("144"); either becomes a tokensel::budget, which each method turns into its config with its
/// own with_budget (its rounding, and its refusals: a count it cannot keep exactly, an adaptive
/// method).
struct keep_spec {
  std::optional<tokensel::budget> value;  ///< absent: the method's default
  bool empty() const noexcept { return !value; }
  /// Throws llava::error for non-numbers, fractions outside (0, 1], counts < 1.
  static keep_spec parse(std::string_view text);
};

/// Where an AnyRes (LLaVA-NeXT) image is selected: per tile (each tile on its own, budget per tile)
/// or over the whole image (the image's packed patch tokens at once, budget for the image).
enum class anyres_scope { tile, image };

/// "tile" or "image"; throws llava::error naming both otherwise.
anyres_scope parse_anyres_scope(std::string_view name);

/// "rank" or "row" (FoPru's pruning strategy); throws llava::error naming both otherwise.
tokensel::fopru::strategy parse_fopru_strategy(std::string_view name);

struct selection_options {
  method name = method::none;
  keep_spec keep;
  int fastv_layer = 2;                 ///< K
  int dart_layer = 2;                  ///< DART's K (tokens leave after layer K - 1)
  std::string fitprune_recipe;         ///< path of a recipe JSON (tokensel.fitprune.recipe)
  std::uint64_t seed = 0;              ///< random
  /// FoPru: rank (top tokens) or row (whole grid rows by aggregated significance)
  tokensel::fopru::strategy fopru_strategy = tokensel::fopru::strategy::rank;
  bool from_qk = false;                ///< statistics from Q/K, no attention maps (see above)
  /// LLaVA-NeXT only (absent: the method's natural scope, tile for the patch-keeping encoder-side
  /// methods, image for the LLM-stage ones): image applies to divprune and random (they read no
  /// per-tile attention and no grid) and the LLM-stage methods; tile to the encoder-side ones.
  std::optional<anyres_scope> anyres;
};

struct run_options {
  selection_options selection;
  int max_new_tokens = 32;
  /// Keep run_result::projector_input and decode_logits (tests against independent references).
  bool record_intermediates = false;
};

/// Wall-clock milliseconds since t0 (every timing of the runtime and its front ends).
inline double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

struct timings {           ///< milliseconds (wall clock)
  double load = 0, vision = 0, selection = 0, projector = 0, prefill = 0, decode = 0;
  /// CPU time of the process (all threads) during the LLM prefill, selection hooks included:
  /// the work done, insensitive to other processes on a shared machine (with passive OpenMP waiting).
  double prefill_cpu = 0;
};

struct run_result {
  std::vector<std::int32_t> answer_ids;   ///< generated ids (EOS included when reached)
  /// Kept patch indices (0 .. n-1, CLS excluded), ascending: encoder-side = the method's anchors
  /// (prumerge/visionzip: the kept/anchor tokens; pool: top-left patch of each window; merged
  /// extra rows have no index); fastv/fitprune: the visual tokens that reach the last layer.
  /// LLaVA-NeXT: positions among the image's packed tokens, or, for the merging methods, the
  /// anchors as tile * g^2 + patch (tile 0 = the base image).
  std::vector<std::int32_t> kept;
  std::int64_t kept_tokens = 0;           ///< visual tokens fed to (fastv/fitprune: surviving in) the LLM
  std::int64_t total_tokens = 0;          ///< visual tokens without selection (n)
  std::int64_t sequence_length = 0;       ///< prompt length the LLM prefill started with
  std::int64_t visual_begin = 0;          ///< s0: first visual row in that sequence
  std::int64_t final_length = 0;          ///< rows that reached the last layer
  /// Per LLM layer: rows that went on after its attention (fastv/fitprune shrink them; the rows
  /// entering layer l are layer_rows[l - 1], sequence_length for l = 0). For FLOP accounting.
  std::vector<std::int64_t> layer_rows;
  /// Attention probability maps formed for selection: CLIP layers' [heads, N, N] / head-mean
  /// maps and LLM layers' [heads, L, L] maps (0 with from_qk or a method that reads none).
  std::int64_t attention_maps = 0;
  std::vector<float> logits;              ///< logits of the last prompt position
  /// With run_options::record_intermediates only: the vision rows fed to the projector [rows, D]
  /// (gathered, merged or pooled, in the order the LLM sees them) and the logits of every decode
  /// step after the first token (step t: after feeding answer_ids[t] at position sequence_length + t).
  std::vector<float> projector_input;
  std::vector<std::vector<float>> decode_logits;
  /// With record_intermediates: the LLM input rows of the image span [k, text hidden] (projected;
  /// AnyRes: the packed base, grid and image_newline rows).
  std::vector<float> image_features;
  timings time;
};

class llava_model {
 public:
  /// Loads config.json and the weights (mmap) of a model directory; progress as weight_store.
  explicit llava_model(const std::filesystem::path& dir, weight_store::progress_fn progress = {});
  ~llava_model();

  const llava_config& config() const noexcept { return cfg_; }
  const weight_store& weights() const noexcept { return *weights_; }
  const clip_model& vision() const noexcept { return *clip_; }
  const projector& mm_projector() const noexcept { return *projector_; }
  const llama_model& language() const noexcept { return *llama_; }
  double load_ms() const noexcept { return load_ms_; }

  /// pixels [3, S, S] (pixel_values); input_ids hold the image slot either as ONE
  /// image_token_index (expanded here, as the processor does) or already expanded to
  /// config().image_tokens() copies. Throws llava::error when there is no / a wrong image slot.
  run_result run(const float* pixels, std::span<const std::int32_t> input_ids, const run_options& options) const;

  /// LLaVA-NeXT (config().anyres()): one image's tiles (preprocess_anyres), the prompt with one
  /// <image> id or image.layout.image_tokens() consecutive ones. Selection: the patch-keeping
  /// encoder-side methods (fopru, freepruner, random, uniform, divprune, vispruner) per tile with
  /// the budget per tile, or (selection_options::anyres = image; divprune, random) over the image's
  /// packed patch tokens (kept packed tokens and every newline row go on; kept = positions among
  /// the image tokens); the LLM-stage ones (fastv, fitprune, dart) over the whole image span
  /// (newline rows included); the merging ones (prumerge, prumerge+, visionzip, pool) per tile,
  /// their rows laid out as docs/llava.md says (visionzip: VisionZip's own LLaVA-NeXT layout;
  /// prumerge(+): the tiles' rows in tile order, no newline; pool: the pooled grids packed and
  /// unpadded like the patch grid), kept = anchors as tile * g^2 + patch.
  run_result run(const anyres_image& image, std::span<const std::int32_t> input_ids, const run_options& options) const;

  /// Either of the two above, as prepare_image made the input (tiles or one square).
  run_result run(const model_image& image, std::span<const std::int32_t> input_ids, const run_options& options) const;

  /// The same up to the prefill only (no decoding): for benchmarks and tests.
  run_result prefill(const float* pixels, std::span<const std::int32_t> input_ids,
                     const selection_options& selection) const;

  /// One FitPrune calibration sample: the unpruned model's prefill on this image and prompt (no
  /// selection, no decoding; the same path as run with method none). Each LLM layer's prefill
  /// attention over the image span, reduced over heads by max (FitPrune's reduction), goes to
  /// `cal` as a new sample (calibrator::add_layer; with from_qk from the layer's post-RoPE Q/K,
  /// no map formed). cal's geometry must match the model: layers = the LLM layers, visual_tokens
  /// = config().image_tokens(). LLaVA-1.5 layout only (an AnyRes image's token count varies).
  run_result calibrate_fitprune(const float* pixels, std::span<const std::int32_t> input_ids,
                                tokensel::fitprune::calibrator& cal, bool from_qk = false) const;

 private:
  run_result run_impl(const float* pixels, std::span<const std::int32_t> input_ids, const selection_options& sel,
                      int max_new_tokens, bool decode, bool record = false,
                      tokensel::fitprune::calibrator* calibration = nullptr) const;
  run_result run_anyres_impl(const anyres_image& image, std::span<const std::int32_t> input_ids,
                             const selection_options& sel, int max_new_tokens, bool decode, bool record) const;
  std::filesystem::path dir_;
  llava_config cfg_;
  std::unique_ptr<weight_store> weights_;
  std::unique_ptr<clip_model> clip_;
  std::unique_ptr<projector> projector_;
  std::unique_ptr<llama_model> llama_;
  double load_ms_ = 0;
  std::vector<float> newline_;  ///< image_newline [text hidden] (LLaVA-NeXT)
};

}  // namespace llava
