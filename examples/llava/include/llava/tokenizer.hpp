// llava: the Llama SentencePiece tokenizer with LLaVA's added tokens, reproducing the ids of the
// Hugging Face tokenizer (tokenizers' LlamaTokenizerFast) and its decoding; prompt templates.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "llava/config.hpp"

namespace llava {

/// A tokenizer that cannot be loaded, or a prompt it refuses; what() is one line.
struct tokenizer_error : error {
  using error::error;
};

/// The literal image placeholder of LLaVA prompts.
inline constexpr std::string_view image_placeholder = "<image>";

/// How the Hugging Face tokenizer puts the SentencePiece word-start mark "▁" in front of the text
/// between added tokens (the segments): `every_segment` is the legacy Llama tokenizer (normalizer
/// Prepend("▁"), also what original LLaVA's chunk-wise tokenisation gives); `first_segment` the
/// non-legacy one (Metaspace prepend_scheme "first": only text at the very start of the input,
/// and only if it does not already start with a space); `unless_space` Metaspace "always" (every
/// segment not starting with a space); `never` no mark.
enum class prefix_rule { every_segment, first_segment, unless_space, never };

class tokenizer {
 public:
  /// Loads `dir/tokenizer.model` and the HF side files when present (tokenizer_config.json:
  /// added_tokens_decoder, legacy, add_bos_token, add_eos_token, clean_up_tokenization_spaces;
  /// tokenizer.json: normalizer / pre_tokenizer, which decide the prefix rule when present).
  /// `image_token_id` / `pad_token_id` (from the model config) name `<image>` and `<pad>` when
  /// the side files do not list them. `dir` may also be the tokenizer.model file itself.
  explicit tokenizer(const std::filesystem::path& dir, int image_token_id = 32000, int pad_token_id = 32001);
  ~tokenizer();
  tokenizer(tokenizer&&) noexcept;
  tokenizer& operator=(tokenizer&&) noexcept;

  /// Token ids of `text` as the HF tokenizer gives them (`tokenizer(text).input_ids`): BOS when
  /// add_bos_token, added tokens (`<image>`, `<pad>`, `<s>`, ...) matched literally, the rest
  /// SentencePiece-encoded segment by segment.
  std::vector<std::int32_t> encode(std::string_view text) const;
  /// encode() of a multimodal prompt: throws tokenizer_error unless the text holds exactly one
  /// `<image>`.
  std::vector<std::int32_t> encode_prompt(std::string_view text) const;
  /// Text of `ids` as HF `decode(ids, skip_special_tokens=skip_special)` gives it.
  std::string decode(std::span<const std::int32_t> ids, bool skip_special = true) const;

  /// The piece of one id (added tokens: their content).
  std::string piece(std::int32_t id) const;

  std::int32_t bos_id() const noexcept { return bos_; }
  std::int32_t eos_id() const noexcept { return eos_; }
  std::int32_t image_id() const noexcept { return image_; }
  std::int32_t pad_id() const noexcept { return pad_; }
  /// SentencePiece vocabulary plus added tokens (max id + 1).
  std::int32_t vocab_size() const noexcept;
  prefix_rule rule() const noexcept { return rule_; }
  bool adds_bos() const noexcept { return add_bos_; }

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
  std::int32_t bos_ = 1, eos_ = 2, image_ = 32000, pad_ = 32001;
  prefix_rule rule_ = prefix_rule::every_segment;
  bool add_bos_ = true, add_eos_ = false, cleanup_ = false;
};

enum class prompt_template {
  llava_hf,   ///< "USER: <image>\n{q} ASSISTANT:" (llava-hf model cards)
  vicuna_v1,  ///< original LLaVA-1.5 conv_vicuna_v1: system sentence + " USER: <image>\n{q} ASSISTANT:"
  raw,        ///< the prompt as given (it must contain <image>)
};

/// "llava-hf", "vicuna" (or "vicuna_v1", "vicuna-v1"), "raw"; throws tokenizer_error otherwise.
prompt_template parse_template(std::string_view name);
/// The system sentence of vicuna_v1.
inline constexpr std::string_view vicuna_system =
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.";
/// The full prompt for a question. Like original LLaVA, "<image>\n" is put in front of a question
/// that has no <image> of its own (templates other than raw).
std::string format_prompt(prompt_template t, std::string_view question);

}  // namespace llava
