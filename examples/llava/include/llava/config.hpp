// llava: model configuration (config.json of LlavaForConditionalGeneration).
//
// Fields absent from the JSON take the defaults of the transformers config classes:
// CLIPVisionConfig (hidden 768, intermediate 3072, 12 layers, 12 heads, patch 32, image 224,
// 3 channels, layer_norm_eps 1e-5, quick_gelu), LlamaConfig (hidden 4096, intermediate 11008,
// 32 layers, 32 heads, kv_heads = heads, vocab 32000, rope_theta 10000, rms_norm_eps 1e-6,
// max_position 2048, bos 1, eos 2, head_dim = hidden / heads) and LlavaConfig
// (image_token_index 32000, projector_hidden_act gelu, vision_feature_layer -2,
// vision_feature_select_strategy default). A missing "vision_config" is LlavaConfig's own
// default tower (CLIP ViT-L/14-336: hidden 1024, intermediate 4096, 24 layers, 16 heads, patch 14,
// image 336); a missing "text_config" is LlamaConfig().
#pragma once

#include <array>
#include <vector>

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>

namespace llava {

/// Every runtime error (missing file, malformed weights, shape or dtype mismatch, bad option):
/// one line that names the file / tensor / parameter.
struct error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Largest patch grid side load_config accepts (image_size / patch_size): token counts stay int.
inline constexpr int max_patches_per_side = 2048;

/// The one image-size rule (PIL's decompression-bomb limit: Image.MAX_IMAGE_PIXELS = 89,478,485,
/// above twice that PIL raises DecompressionBombError). It bounds every pixel buffer the runtime
/// makes: a decoded image (checked from its header, before decoding), the padded square of
/// pad-to-square (max(w, h)^2, checked from the header too when padding is on), and the model's
/// input square (vision_config.image_size^2, checked when the config is read).
inline constexpr std::uint64_t max_image_pixels = 2ull * 89'478'485ull;

/// Size bounds of the runtime's files (bytes), on top of the one file rule of
/// tokensel/io/detail/byte_source.hpp (regular files only): JSON and tokenizer files 64 MiB,
/// images 1 GiB. Weights are mapped, and every size in them is checked against the file.
inline constexpr std::uint64_t max_json_file_bytes = 64ull << 20;
inline constexpr std::uint64_t max_image_file_bytes = 1ull << 30;

/// The whole of an input file through tokensel's one file rule (a regular file after following
/// links, at most max_bytes), as llava::error "llava: PATH: problem" otherwise. `kind` names the
/// file for the size message ("a JSON file").
std::string read_input_file(const std::filesystem::path& path, std::uint64_t max_bytes, const char* kind);
/// The same check without reading (files that are mapped); returns the size.
std::uint64_t check_input_file(const std::filesystem::path& path, std::uint64_t max_bytes, const char* kind);
/// tokensel's checked write (temporary file + rename; nothing left behind on failure), as
/// llava::error "llava: <what> PATH: problem".
void write_output_file(const std::filesystem::path& path, const std::string& bytes, const std::string& what);

struct clip_config {
  int hidden = 768;
  int intermediate = 3072;
  int layers = 12;
  int heads = 12;
  int patch = 32;
  int image_size = 224;
  int channels = 3;
  double layer_norm_eps = 1e-5;
  std::string hidden_act = "quick_gelu";  ///< quick_gelu, gelu (erf), gelu_new / gelu_pytorch_tanh, relu, silu

  int grid() const noexcept { return image_size / patch; }        ///< patches per side
  int patches() const noexcept { return grid() * grid(); }        ///< n (576 for ViT-L/14-336)
  int tokens() const noexcept { return patches() + 1; }           ///< N = n + CLS
  int head_dim() const noexcept { return hidden / heads; }
};

struct llama_config {
  int hidden = 4096;
  int intermediate = 11008;
  int layers = 32;
  int heads = 32;
  int kv_heads = 32;          ///< num_key_value_heads (GQA); absent -> heads
  int head_dim = 128;         ///< "head_dim" when present, else hidden / heads
  int vocab = 32000;
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-6;
  int max_position = 2048;
  int bos = 1;
  int eos = 2;
  std::string hidden_act = "silu";
};

struct llava_config {
  clip_config vision;
  llama_config text;
  int image_token_index = 32000;
  int pad_token_id = -1;                    ///< -1 when absent
  std::string projector_hidden_act = "gelu";
  int vision_feature_layer = -2;            ///< HF hidden_states index (negative: from the end)
  std::string vision_feature_select_strategy = "default";  ///< default (drop CLS) or full
  /// "llava_next": LLaVA-NeXT (AnyRes: image_grid_pinpoints, image_newline; anyres.hpp); any other
  /// model_type, or none, is LLaVA-1.5.
  std::string model_type = "llava";
  std::vector<std::array<int, 2>> image_grid_pinpoints;  ///< [height, width], multiples of the tower's size

  bool anyres() const noexcept { return model_type == "llava_next"; }

  /// hidden_states index of the feature layer, in [1, vision.layers]: the CLIP layers to run.
  int feature_hidden_index() const noexcept {
    return vision_feature_layer < 0 ? vision.layers + 1 + vision_feature_layer : vision_feature_layer;
  }
  /// Visual tokens per image fed to the LLM without selection (576 for LLaVA-1.5).
  int image_tokens() const noexcept {
    return vision.patches() + (vision_feature_select_strategy == "full" ? 1 : 0);
  }
};

/// Parses config.json. Throws llava::error naming the file and field for unreadable files,
/// invalid JSON, mistyped fields, unsupported values (rope_scaling, a list-valued
/// vision_feature_layer, an unknown activation or strategy) and inconsistent sizes.
llava_config load_config(const std::filesystem::path& config_json);

}  // namespace llava
