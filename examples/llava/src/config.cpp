// llava: config.json parsing with the transformers defaults (see config.hpp).
#include "llava/config.hpp"

#include <fstream>
#include <span>
#include <sstream>

#include <nlohmann/json.hpp>
#include <tokensel/core/error.hpp>
#include <tokensel/io/detail/byte_source.hpp>

namespace llava {

namespace {
// tokensel's "tokensel: <param> = PATH: problem" as "llava: <prefix>PATH: problem".
[[noreturn]] void rethrow_file_error(const tokensel::error& e, const std::string& prefix, const std::string& path) {
  std::string msg = e.what();
  const std::string head = "tokensel: " + e.parameter() + " = " + path + ": ";
  if (msg.rfind(head, 0) == 0) msg.erase(0, head.size());
  throw error("llava: " + prefix + path + ": " + msg);
}
}  // namespace

std::string read_input_file(const std::filesystem::path& path, std::uint64_t max_bytes, const char* kind) {
  try {
    return tokensel::detail::read_file(path, max_bytes, kind);
  } catch (const tokensel::error& e) {
    rethrow_file_error(e, "", path.string());
  }
}

std::uint64_t check_input_file(const std::filesystem::path& path, std::uint64_t max_bytes, const char* kind) {
  try {
    return tokensel::detail::check_regular_file(path, max_bytes, kind);
  } catch (const tokensel::error& e) {
    rethrow_file_error(e, "", path.string());
  }
}

void write_output_file(const std::filesystem::path& path, const std::string& bytes, const std::string& what) {
  try {
    tokensel::detail::write_file(path, std::string_view(bytes), what);
  } catch (const tokensel::error& e) {
    rethrow_file_error(e, what + " ", path.string());
  }
}

namespace {

using json = nlohmann::json;

struct reader {
  const std::string& file;
  [[noreturn]] void fail(const std::string& field, const std::string& problem) const {
    throw error("llava: " + file + ": " + field + ": " + problem);
  }
  /// Reads an optional integer field; false (out untouched) when it is absent or null.
  bool get_int(const json& j, const char* key, const std::string& prefix, int& out, int min = 1) const {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return false;
    if (!it->is_number_integer()) fail(prefix + key, "must be an integer (got " + it->dump() + ")");
    const auto v = it->get<long long>();
    if (v < min || v > 1'000'000'000) fail(prefix + key, "= " + std::to_string(v) + " is out of range");
    out = static_cast<int>(v);
    return true;
  }
  void get_double(const json& j, const char* key, const std::string& prefix, double& out) const {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return;
    if (!it->is_number()) fail(prefix + key, "must be a number (got " + it->dump() + ")");
    out = it->get<double>();
    if (!(out > 0)) fail(prefix + key, "must be > 0 (got " + it->dump() + ")");
  }
  void get_string(const json& j, const char* key, const std::string& prefix, std::string& out) const {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return;
    if (!it->is_string()) fail(prefix + key, "must be a string (got " + it->dump() + ")");
    out = it->get<std::string>();
  }
  void get_bool(const json& j, const char* key, const std::string& prefix, bool& out) const {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return;
    if (!it->is_boolean()) fail(prefix + key, "must be true or false (got " + it->dump() + ")");
    out = it->get<bool>();
  }
  // Keys of a nested object that may itself be absent or null; anything else is an error.
  const json* object_or_null(const json& j, const char* key, const std::string& prefix) const {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return nullptr;
    if (!it->is_object()) fail(prefix + key, "must be an object (got " + it->dump() + ")");
    return &*it;
  }
};

bool known_activation(const std::string& a) {
  return a == "quick_gelu" || a == "gelu" || a == "gelu_new" || a == "gelu_pytorch_tanh" || a == "relu" ||
         a == "silu" || a == "swish" || a == "gelu_fast";
}

/// vision_config, or LlavaConfig's default vision tower when it is absent (CLIP ViT-L/14-336).
void read_vision_config(const reader& r, const json& j, llava_config& c) {
  auto vit = j.find("vision_config");
  if (vit == j.end() || vit->is_null()) {
    c.vision.hidden = 1024;
    c.vision.intermediate = 4096;
    c.vision.layers = 24;
    c.vision.heads = 16;
    c.vision.patch = 14;
    c.vision.image_size = 336;
    return;
  }
  if (!vit->is_object()) r.fail("vision_config", "must be an object");
  const std::string p = "vision_config.";
  std::string type = "clip_vision_model";
  r.get_string(*vit, "model_type", p, type);
  if (type != "clip_vision_model") r.fail(p + "model_type", "'" + type + "' is not supported (clip_vision_model is)");
  r.get_int(*vit, "hidden_size", p, c.vision.hidden);
  r.get_int(*vit, "intermediate_size", p, c.vision.intermediate);
  r.get_int(*vit, "num_hidden_layers", p, c.vision.layers);
  r.get_int(*vit, "num_attention_heads", p, c.vision.heads);
  r.get_int(*vit, "patch_size", p, c.vision.patch);
  r.get_int(*vit, "image_size", p, c.vision.image_size);
  r.get_int(*vit, "num_channels", p, c.vision.channels);
  r.get_double(*vit, "layer_norm_eps", p, c.vision.layer_norm_eps);
  r.get_string(*vit, "hidden_act", p, c.vision.hidden_act);
}

/// text_config.rope_parameters (transformers >= 5 nests rope_theta there, with rope_type),
/// rope_scaling and the bias flags: only what the runtime implements.
void read_rope_and_biases(const reader& r, const json& txt, const std::string& p, llava_config& c) {
  if (const json* rp = r.object_or_null(txt, "rope_parameters", p)) {
    r.get_double(*rp, "rope_theta", p + "rope_parameters.", c.text.rope_theta);
    std::string t = "default";
    r.get_string(*rp, "rope_type", p + "rope_parameters.", t);
    if (t != "default") r.fail(p + "rope_parameters.rope_type", "rope type '" + t + "' is not supported");
  }
  if (const json* rs = r.object_or_null(txt, "rope_scaling", p)) {
    std::string t = "?";
    r.get_string(*rs, "type", p + "rope_scaling.", t);
    r.get_string(*rs, "rope_type", p + "rope_scaling.", t);
    if (t != "default") r.fail(p + "rope_scaling", "rope scaling '" + t + "' is not supported");
  }
  bool attention_bias = false, mlp_bias = false;
  r.get_bool(txt, "attention_bias", p, attention_bias);
  r.get_bool(txt, "mlp_bias", p, mlp_bias);
  if (attention_bias) r.fail(p + "attention_bias", "attention biases are not supported");
  if (mlp_bias) r.fail(p + "mlp_bias", "MLP biases are not supported");
}

/// text_config (LlamaConfig's defaults when absent); kv_heads and head_dim follow from the heads
/// when not given.
void read_text_config(const reader& r, const json& j, llava_config& c) {
  auto txt = j.find("text_config");
  bool kv_given = false, head_dim_given = false;
  if (txt != j.end() && !txt->is_null()) {
    if (!txt->is_object()) r.fail("text_config", "must be an object");
    const std::string p = "text_config.";
    std::string type = "llama";
    r.get_string(*txt, "model_type", p, type);
    if (type != "llama") r.fail(p + "model_type", "'" + type + "' is not supported (llama is)");
    r.get_int(*txt, "hidden_size", p, c.text.hidden);
    r.get_int(*txt, "intermediate_size", p, c.text.intermediate);
    r.get_int(*txt, "num_hidden_layers", p, c.text.layers);
    r.get_int(*txt, "num_attention_heads", p, c.text.heads);
    kv_given = r.get_int(*txt, "num_key_value_heads", p, c.text.kv_heads);
    head_dim_given = r.get_int(*txt, "head_dim", p, c.text.head_dim);
    r.get_int(*txt, "vocab_size", p, c.text.vocab);
    r.get_double(*txt, "rope_theta", p, c.text.rope_theta);
    r.get_double(*txt, "rms_norm_eps", p, c.text.rms_norm_eps);
    r.get_int(*txt, "max_position_embeddings", p, c.text.max_position);
    r.get_int(*txt, "bos_token_id", p, c.text.bos, 0);
    r.get_int(*txt, "eos_token_id", p, c.text.eos, 0);
    r.get_string(*txt, "hidden_act", p, c.text.hidden_act);
    read_rope_and_biases(r, *txt, p, c);
  }
  if (!kv_given) c.text.kv_heads = c.text.heads;
  if (!head_dim_given) {
    if (c.text.hidden % c.text.heads != 0) r.fail("text_config.hidden_size", "not divisible by num_attention_heads");
    c.text.head_dim = c.text.hidden / c.text.heads;
  }
}

/// The shape rules both towers must meet before anything is sized from them.
void check_shapes(const reader& r, const llava_config& c) {
  if (c.text.heads % c.text.kv_heads != 0) r.fail("text_config.num_key_value_heads", "must divide num_attention_heads");
  if (c.text.head_dim % 2 != 0) r.fail("text_config.head_dim", "must be even (rotary embedding)");
  if (c.vision.hidden % c.vision.heads != 0) r.fail("vision_config.hidden_size", "not divisible by num_attention_heads");
  if (c.vision.image_size % c.vision.patch != 0) r.fail("vision_config.image_size", "not a multiple of patch_size");
  // Token counts are int everywhere (as in the library's index type); 2048 patches per side is far
  // beyond any CLIP tower and keeps grid^2 + 1 and the N x N attention sizes representable.
  if (c.vision.grid() > max_patches_per_side) {
    r.fail("vision_config.image_size", "= " + std::to_string(c.vision.image_size) + " gives " + std::to_string(c.vision.grid()) +
                                           " patches per side with patch_size " + std::to_string(c.vision.patch) +
                                           " (at most " + std::to_string(max_patches_per_side) + ")");
  }
  // The one image-size rule: the model's input square is a pixel buffer like any other.
  if (static_cast<std::uint64_t>(c.vision.image_size) * static_cast<std::uint64_t>(c.vision.image_size) > max_image_pixels) {
    r.fail("vision_config.image_size", "= " + std::to_string(c.vision.image_size) + ": an input square of " +
                                           std::to_string(c.vision.image_size) + " x " + std::to_string(c.vision.image_size) +
                                           " pixels exceeds the limit of " + std::to_string(max_image_pixels) +
                                           " (PIL's decompression-bomb limit)");
  }
  if (c.vision.channels != 3) r.fail("vision_config.num_channels", "must be 3 (RGB)");
  if (!known_activation(c.vision.hidden_act)) r.fail("vision_config.hidden_act", "'" + c.vision.hidden_act + "' is not supported");
  if (c.text.hidden_act != "silu" && c.text.hidden_act != "swish") r.fail("text_config.hidden_act", "'" + c.text.hidden_act + "' is not supported (silu is)");
}

/// The top-level LlavaConfig fields: the image placeholder, the projector and the feature layer.
void read_llava_fields(const reader& r, const json& j, llava_config& c) {
  r.get_int(j, "image_token_index", "", c.image_token_index, 0);
  r.get_int(j, "image_token_id", "", c.image_token_index, 0);
  r.get_int(j, "pad_token_id", "", c.pad_token_id, 0);
  // The placeholder must be a token of its own: a BOS or EOS id would make the prompt's first
  // (or the answer's last) token an image slot.
  if (c.image_token_index == c.text.bos) {
    r.fail("image_token_index", "= " + std::to_string(c.image_token_index) + " equals text_config.bos_token_id");
  }
  if (c.image_token_index == c.text.eos) {
    r.fail("image_token_index", "= " + std::to_string(c.image_token_index) + " equals text_config.eos_token_id");
  }
  r.get_string(j, "projector_hidden_act", "", c.projector_hidden_act);
  if (!known_activation(c.projector_hidden_act)) r.fail("projector_hidden_act", "'" + c.projector_hidden_act + "' is not supported");
  if (auto it = j.find("vision_feature_layer"); it != j.end() && !it->is_null()) {
    if (!it->is_number_integer()) r.fail("vision_feature_layer", "must be an integer (lists of layers are not supported)");
    const auto layer = it->get<long long>();
    if (layer < -1'000'000'000LL || layer > 1'000'000'000LL ||
        (it->is_number_unsigned() && it->get<unsigned long long>() > 1'000'000'000ULL)) {
      r.fail("vision_feature_layer", "= " + it->dump() + " is out of range");
    }
    c.vision_feature_layer = static_cast<int>(layer);
  }
  const int h = c.feature_hidden_index();
  if (h < 1 || h > c.vision.layers) {
    r.fail("vision_feature_layer", "= " + std::to_string(c.vision_feature_layer) + " selects no encoder layer of " +
                                       std::to_string(c.vision.layers));
  }
  r.get_string(j, "vision_feature_select_strategy", "", c.vision_feature_select_strategy);
  if (c.vision_feature_select_strategy != "default" && c.vision_feature_select_strategy != "full") {
    r.fail("vision_feature_select_strategy", "'" + c.vision_feature_select_strategy + "' (default or full)");
  }
  bool projector_bias = true;
  r.get_bool(j, "multimodal_projector_bias", "", projector_bias);
  if (!projector_bias) r.fail("multimodal_projector_bias", "false is not supported");
}

/// LLaVA-NeXT: model_type llava_next and its image_grid_pinpoints, each [height, width] a positive
/// multiple of the tower's image size (AnyRes cuts the resized image into tiles of that size).
void read_anyres_fields(const reader& r, const json& j, llava_config& c) {
  r.get_string(j, "model_type", "", c.model_type);
  if (!c.anyres()) return;
  if (c.vision_feature_select_strategy != "default") {  // pack_image_features reshapes g^2 rows per tile
    r.fail("vision_feature_select_strategy", "'" + c.vision_feature_select_strategy + "': LLaVA-NeXT packs g^2 patch rows per tile (default)");
  }
  const auto it = j.find("image_grid_pinpoints");
  if (it == j.end() || !it->is_array() || it->empty()) {
    r.fail("image_grid_pinpoints", "must be a non-empty list of [height, width] (model_type llava_next)");
  }
  const int S = c.vision.image_size;
  for (std::size_t i = 0; i < it->size(); ++i) {
    const json& p = (*it)[i];
    const std::string name = "image_grid_pinpoints[" + std::to_string(i) + "]";
    if (!p.is_array() || p.size() != 2 || !p[0].is_number_integer() || !p[1].is_number_integer()) {
      r.fail(name, "must be [height, width] integers (got " + p.dump() + ")");
    }
    const long long h = p[0].get<long long>(), w = p[1].get<long long>();
    if (h < S || w < S || h % S != 0 || w % S != 0 || h > 64LL * S || w > 64LL * S) {
      r.fail(name, "= " + p.dump() + ": each side must be a multiple of the vision image_size " + std::to_string(S) +
                       " in [" + std::to_string(S) + ", " + std::to_string(64 * S) + "]");
    }
    c.image_grid_pinpoints.push_back({static_cast<int>(h), static_cast<int>(w)});
  }
}

}  // namespace

llava_config load_config(const std::filesystem::path& path) {
  const std::string file = path.string();
  std::error_code ec;
  if (!std::filesystem::exists(std::filesystem::symlink_status(path, ec))) {
    throw error("llava: " + file + ": cannot open the model config (config.json)");
  }
  const std::string text = read_input_file(path, max_json_file_bytes, "a JSON file");
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw error("llava: " + file + ": invalid JSON: " + e.what());
  }
  reader r{file};
  if (!j.is_object()) r.fail("config", "must be a JSON object");
  llava_config c;
  read_vision_config(r, j, c);
  read_text_config(r, j, c);
  check_shapes(r, c);
  read_llava_fields(r, j, c);
  read_anyres_fields(r, j, c);
  return c;
}

}  // namespace llava
