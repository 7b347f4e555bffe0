// llava: Hugging Face-compatible Llama tokenizer on top of libsentencepiece.
//
// The HF fast tokenizer does not run SentencePiece's own normaliser: it splits the text on the
// added tokens, replaces ' ' by U+2581 in each remaining segment, puts a U+2581 in front per its
// prefix rule, and runs the BPE model over the result. We do the same and hand SentencePiece the
// already-normalised segment with its normaliser switched to identity (no dummy prefix, no
// whitespace folding, no NFKC), so its BPE sees exactly the string the HF model sees.
#include "llava/tokenizer.hpp"

#include <charconv>
#include <climits>
#include <algorithm>
#include <fstream>
#include <map>
#include <optional>

#include <nlohmann/json.hpp>
#include <sentencepiece_processor.h>

namespace llava {
namespace {

constexpr std::string_view meta = "\xE2\x96\x81";  // U+2581, SentencePiece's word-start mark

[[noreturn]] void fail(const std::string& what) { throw tokenizer_error("llava: tokenizer: " + what); }

// --- minimal protobuf wire-format handling, to replace ModelProto.normalizer_spec (field 3) ----
bool read_varint(std::string_view s, std::size_t& pos, std::uint64_t& v) {
  v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (pos >= s.size()) return false;
    const auto b = static_cast<std::uint8_t>(s[pos++]);
    v |= std::uint64_t{b & 0x7fu} << shift;
    if (!(b & 0x80)) return true;
  }
  return false;
}

void write_varint(std::string& out, std::uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

// The model with an identity normaliser; the other fields are copied byte for byte.
std::string with_identity_normalizer(std::string_view model, const std::string& file) {
  std::string out;
  out.reserve(model.size());
  std::size_t pos = 0;
  while (pos < model.size()) {
    const std::size_t start = pos;
    std::uint64_t tag = 0, len = 0;
    if (!read_varint(model, pos, tag)) fail(file + ": not a SentencePiece model (bad protobuf)");
    switch (tag & 7) {
      case 0:
        if (!read_varint(model, pos, len)) fail(file + ": not a SentencePiece model (bad protobuf)");
        break;
      case 1: pos += 8; break;
      case 5: pos += 4; break;
      case 2:
        if (!read_varint(model, pos, len) || len > model.size() - pos) {
          fail(file + ": not a SentencePiece model (truncated)");
        }
        pos += len;
        break;
      default: fail(file + ": not a SentencePiece model (bad protobuf)");
    }
    if (pos > model.size()) fail(file + ": not a SentencePiece model (truncated)");
    if ((tag >> 3) != 3) out.append(model.substr(start, pos - start));
  }
  // NormalizerSpec{name: "identity", add_dummy_prefix: false, remove_extra_whitespaces: false,
  // escape_whitespaces: true}
  std::string spec;
  spec += '\x0A';
  write_varint(spec, 8);
  spec += "identity";
  spec += std::string("\x18\x00\x20\x00\x28\x01", 6);
  write_varint(out, (3u << 3) | 2u);
  write_varint(out, spec.size());
  out += spec;
  return out;
}

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size());
  std::size_t pos = 0;
  for (std::size_t p = s.find(from); p != std::string_view::npos; p = s.find(from, pos)) {
    out.append(s.substr(pos, p - pos)).append(to);
    pos = p + from.size();
  }
  out.append(s.substr(pos));
  return out;
}

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// The one file rule: a regular file of at most 64 MiB (a FIFO, a device, a link loop: error),
// its message as a tokenizer error.
std::string read_tokenizer_file(const std::filesystem::path& p, const char* kind) {
  try {
    return read_input_file(p, max_json_file_bytes, kind);
  } catch (const error& e) {
    std::string msg = e.what();
    fail(msg.rfind("llava: ", 0) == 0 ? msg.substr(7) : msg);
  }
}

std::optional<nlohmann::json> read_json(const std::filesystem::path& p) {
  std::error_code ec;
  if (!std::filesystem::exists(std::filesystem::symlink_status(p, ec))) return std::nullopt;
  const std::string text = read_tokenizer_file(p, "a JSON file");
  try {
    return nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    fail(p.string() + ": invalid JSON (" + e.what() + ")");
  }
}

}  // namespace

struct added_token {
  std::string content;
  std::int32_t id = 0;
  bool lstrip = false, rstrip = false, special = true;
};

struct tokenizer::impl {
  sentencepiece::SentencePieceProcessor sp;
  std::vector<added_token> added;            // matched literally in the input
  std::map<std::int32_t, std::size_t> by_id;  // id -> index in `added`
};

namespace {

/// Adds t to the literal tokens, or replaces the one with its content or id (empty: ignored).
void add_token(std::vector<added_token>& added, added_token t) {
  if (t.content.empty()) return;
  for (auto& a : added) {
    if (a.content == t.content || a.id == t.id) {
      a = t;
      return;
    }
  }
  added.push_back(std::move(t));
}

added_token entry(const nlohmann::json& j, std::int32_t id) {
  added_token t;
  t.id = id;
  t.content = j.value("content", "");
  t.lstrip = j.value("lstrip", false);
  t.rstrip = j.value("rstrip", false);
  t.special = j.value("special", true);
  return t;
}

/// What tokenizer_config.json and tokenizer.json say; unset where they say nothing.
struct tokenizer_settings {
  std::optional<bool> legacy, bos_flag, eos_flag, cleanup;
  std::optional<prefix_rule> rule;
};

void read_tokenizer_config(const nlohmann::json& cfg, const std::filesystem::path& file, tokenizer_settings& s,
                           std::vector<added_token>& added) {
  if (cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean()) s.bos_flag = cfg["add_bos_token"].get<bool>();
  if (cfg.contains("add_eos_token") && cfg["add_eos_token"].is_boolean()) s.eos_flag = cfg["add_eos_token"].get<bool>();
  s.cleanup = cfg.value("clean_up_tokenization_spaces", false);
  if (cfg.contains("legacy") && cfg["legacy"].is_boolean()) s.legacy = cfg["legacy"].get<bool>();
  if (!cfg.contains("added_tokens_decoder")) return;
  for (const auto& [key, val] : cfg["added_tokens_decoder"].items()) {
    std::int32_t id = -1;
    const auto [end, e] = std::from_chars(key.data(), key.data() + key.size(), id);
    if (e != std::errc() || end != key.data() + key.size() || id < 0 || !val.is_object()) {
      fail(file.string() + ": added_tokens_decoder['" + key.substr(0, 40) +
           "']: expected a token id (a non-negative integer) mapping to an object");
    }
    add_token(added, entry(val, id));
  }
}

void read_added_tokens(const nlohmann::json& tj, const std::filesystem::path& file, std::vector<added_token>& added) {
  if (!tj.contains("added_tokens")) return;
  for (const auto& val : tj["added_tokens"]) {
    const bool ok = val.is_object() && val.contains("id") && val["id"].is_number_integer() &&
                    val["id"].get<long long>() >= 0 && val["id"].get<long long>() <= INT32_MAX;
    if (!ok) {
      fail(file.string() + ": added_tokens[]: expected an object with an integer \"id\" in [0, 2^31), got " +
           val.dump().substr(0, 80));
    }
    add_token(added, entry(val, val["id"].get<std::int32_t>()));
  }
}

/// BOS / EOS: the post-processor template of a single sequence (special tokens around $A); a flag
/// tokenizer_config.json gave stays.
void read_post_processor(const nlohmann::json& tj, const sentencepiece::SentencePieceProcessor& sp, std::int32_t bos_id,
                         std::int32_t eos_id, tokenizer_settings& s) {
  if (!tj.contains("post_processor") || !tj["post_processor"].is_object()) return;
  const auto& pp = tj["post_processor"];
  if (pp.value("type", "") != "TemplateProcessing" || !pp.contains("single")) return;
  bool seen_seq = false, bos = false, eos = false;
  for (const auto& piece : pp["single"]) {
    if (piece.contains("Sequence")) {
      seen_seq = true;
    } else if (piece.contains("SpecialToken")) {
      const std::string id = piece["SpecialToken"].value("id", "");
      if (!seen_seq && id == sp.IdToPiece(bos_id)) bos = true;
      if (seen_seq && id == sp.IdToPiece(eos_id)) eos = true;
    }
  }
  if (!s.bos_flag) s.bos_flag = bos;
  if (!s.eos_flag) s.eos_flag = eos;
}

/// Each element of a "Sequence" (its list under `list`), or j itself.
template <class F>
void for_each_step(const nlohmann::json& j, const char* list, F&& f) {
  if (j.value("type", "") == "Sequence") {
    for (const auto& m : j.value(list, nlohmann::json::array())) f(m);
  } else {
    f(j);
  }
}

/// The prefix rule as the fast tokenizer defines it: a Prepend normaliser (legacy), or a Metaspace
/// pre-tokenizer's prepend scheme (non-legacy).
void read_prefix_rule(const nlohmann::json& tj, tokenizer_settings& s) {
  bool prepend = false;
  std::optional<prefix_rule> meta_rule;
  auto scan_norm = [&](const nlohmann::json& n) {
    if (n.is_object() && n.value("type", "") == "Prepend") prepend = true;
  };
  if (tj.contains("normalizer") && tj["normalizer"].is_object()) for_each_step(tj["normalizer"], "normalizers", scan_norm);
  auto scan_pre = [&](const nlohmann::json& p) {
    if (!p.is_object() || p.value("type", "") != "Metaspace") return;
    const std::string scheme = p.value("prepend_scheme", p.value("add_prefix_space", true) ? "always" : "never");
    meta_rule = scheme == "first" ? prefix_rule::first_segment
                : scheme == "never" ? prefix_rule::never
                                    : prefix_rule::unless_space;
  };
  if (tj.contains("pre_tokenizer") && tj["pre_tokenizer"].is_object()) {
    for_each_step(tj["pre_tokenizer"], "pretokenizers", scan_pre);
  }
  if (prepend) {
    s.legacy = true;
    s.rule = prefix_rule::every_segment;
  } else if (meta_rule) {
    s.legacy = false;
    s.rule = *meta_rule;
  }
}

/// tokenizer_config.json and tokenizer.json of dir, where present.
tokenizer_settings read_tokenizer_files(const std::filesystem::path& dir, const sentencepiece::SentencePieceProcessor& sp,
                                        std::int32_t bos_id, std::int32_t eos_id, std::vector<added_token>& added) {
  tokenizer_settings s;
  try {
    if (const auto cfg = read_json(dir / "tokenizer_config.json")) {
      read_tokenizer_config(*cfg, dir / "tokenizer_config.json", s, added);
    }
    if (const auto tj = read_json(dir / "tokenizer.json")) {
      read_added_tokens(*tj, dir / "tokenizer.json", added);
      read_post_processor(*tj, sp, bos_id, eos_id, s);
      read_prefix_rule(*tj, s);
    }
  } catch (const tokenizer_error&) {
    throw;
  } catch (const std::exception& e) {
    fail(dir.string() + ": unreadable tokenizer files (" + e.what() + ")");
  }
  return s;
}

}  // namespace

tokenizer::tokenizer(const std::filesystem::path& path, int image_token_id, int pad_token_id)
    : impl_(std::make_unique<impl>()), image_(image_token_id), pad_(pad_token_id) {
  std::error_code ec;
  const bool is_dir = std::filesystem::is_directory(path, ec);
  const auto dir = is_dir ? path : path.parent_path();
  if (!is_dir && !std::filesystem::exists(path, ec)) fail(path.string() + ": no such file or directory");
  const auto model_file = is_dir ? path / "tokenizer.model" : path;
  if (!std::filesystem::exists(std::filesystem::symlink_status(model_file, ec))) fail(model_file.string() + ": no such file");
  const std::string bytes = read_tokenizer_file(model_file, "a tokenizer file");
  const auto status = impl_->sp.LoadFromSerializedProto(with_identity_normalizer(bytes, model_file.string()));
  if (!status.ok()) fail(model_file.string() + ": not a SentencePiece model (" + status.ToString() + ")");
  bos_ = impl_->sp.bos_id() >= 0 ? impl_->sp.bos_id() : 1;
  eos_ = impl_->sp.eos_id() >= 0 ? impl_->sp.eos_id() : 2;

  auto& added = impl_->added;
  // HF registers <unk>, <s>, </s> as added (special) tokens: they are matched literally in text.
  for (int id : {impl_->sp.unk_id(), impl_->sp.bos_id(), impl_->sp.eos_id()}) {
    if (id >= 0) add_token(added, {impl_->sp.IdToPiece(id), id, false, false, true});
  }
  const tokenizer_settings s = read_tokenizer_files(dir, impl_->sp, bos_, eos_, added);
  if (s.cleanup) cleanup_ = *s.cleanup;
  if (s.rule) rule_ = *s.rule;
  add_bos_ = s.bos_flag.value_or(true);
  add_eos_ = s.eos_flag.value_or(false);
  if (!std::filesystem::is_regular_file(dir / "tokenizer.json", ec) && s.legacy.has_value()) {
    // transformers builds the fast tokenizer from tokenizer.model: legacy (the default) prepends to
    // every segment, non-legacy uses Metaspace with prepend_scheme "first".
    rule_ = *s.legacy ? prefix_rule::every_segment : prefix_rule::first_segment;
  }
  bool listed_image = false, listed_pad = false;
  for (const auto& a : added) {
    if (a.content == image_placeholder) {
      image_ = a.id;
      listed_image = true;
    }
    if (a.content == "<pad>") {
      pad_ = a.id;
      listed_pad = true;
    }
  }
  if (!listed_image) add_token(added, {std::string(image_placeholder), image_, false, false, true});
  if (!listed_pad && pad_ >= impl_->sp.GetPieceSize()) add_token(added, {"<pad>", pad_, false, false, true});
  for (std::size_t i = 0; i < added.size(); ++i) impl_->by_id[added[i].id] = i;
}

tokenizer::~tokenizer() = default;
tokenizer::tokenizer(tokenizer&&) noexcept = default;
tokenizer& tokenizer::operator=(tokenizer&&) noexcept = default;

std::int32_t tokenizer::vocab_size() const noexcept {
  std::int32_t n = impl_->sp.GetPieceSize();
  for (const auto& a : impl_->added) n = std::max(n, a.id + 1);
  return n;
}

std::vector<std::int32_t> tokenizer::encode(std::string_view text) const {
  // 1. Split on the added tokens (leftmost, then longest match), honouring lstrip / rstrip.
  struct part {
    std::size_t begin, end;   // byte range in `text`
    std::int32_t token = -1;  // added token id, or -1 for a text segment
  };
  std::vector<part> parts;
  std::size_t seg_begin = 0, i = 0;
  while (i < text.size()) {
    const added_token* best = nullptr;
    for (const auto& a : impl_->added) {
      if (text.compare(i, a.content.size(), a.content) == 0 && (!best || a.content.size() > best->content.size())) {
        best = &a;
      }
    }
    if (!best) {
      ++i;
      continue;
    }
    std::size_t seg_end = i, next = i + best->content.size();
    if (best->lstrip) {
      while (seg_end > seg_begin && is_space(text[seg_end - 1])) --seg_end;
    }
    if (best->rstrip) {
      while (next < text.size() && is_space(text[next])) ++next;
    }
    parts.push_back({seg_begin, seg_end});
    parts.push_back({i, i + best->content.size(), best->id});
    seg_begin = i = next;
  }
  parts.push_back({seg_begin, text.size()});

  // 2. Normalise and encode each non-empty text segment.
  std::vector<std::int32_t> ids;
  if (add_bos_) ids.push_back(bos_);
  std::vector<int> piece_ids;
  for (const auto& p : parts) {
    if (p.token >= 0) {
      ids.push_back(p.token);
      continue;
    }
    if (p.end == p.begin) continue;
    std::string seg = replace_all(text.substr(p.begin, p.end - p.begin), " ", meta);
    const bool starts_with_meta = seg.compare(0, meta.size(), meta) == 0;
    switch (rule_) {
      case prefix_rule::every_segment: seg.insert(0, meta); break;
      case prefix_rule::first_segment:
        if (p.begin == 0 && !starts_with_meta) seg.insert(0, meta);
        break;
      case prefix_rule::unless_space:
        if (!starts_with_meta) seg.insert(0, meta);
        break;
      case prefix_rule::never: break;
    }
    const auto status = impl_->sp.Encode(seg, &piece_ids);
    if (!status.ok()) fail("cannot encode text (" + status.ToString() + ")");
    ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
  }
  if (add_eos_) ids.push_back(eos_);
  return ids;
}

std::vector<std::int32_t> tokenizer::encode_prompt(std::string_view text) const {
  std::size_t count = 0;
  for (std::size_t p = text.find(image_placeholder); p != std::string_view::npos;
       p = text.find(image_placeholder, p + image_placeholder.size())) {
    ++count;
  }
  if (count == 0) {
    throw tokenizer_error("llava: prompt: no <image> placeholder in the prompt (put <image> where the image goes)");
  }
  if (count > 1) {
    throw tokenizer_error("llava: prompt: " + std::to_string(count) + " <image> placeholders; exactly one image is supported");
  }
  return encode(text);
}

std::string tokenizer::piece(std::int32_t id) const {
  if (const auto it = impl_->by_id.find(id); it != impl_->by_id.end()) return impl_->added[it->second].content;
  if (id < 0 || id >= impl_->sp.GetPieceSize()) fail("token id " + std::to_string(id) + " outside the vocabulary");
  return impl_->sp.IdToPiece(id);
}

std::string tokenizer::decode(std::span<const std::int32_t> ids, bool skip_special) const {
  // HF's Llama decoder: "▁" -> " ", runs of <0xNN> byte tokens -> their bytes (U+FFFD per byte
  // when they are not valid UTF-8), concatenate, drop one leading space.
  std::string out, bytes;
  auto flush_bytes = [&] {
    if (bytes.empty()) return;
    // Validate UTF-8 as tokenizers' ByteFallback does (String::from_utf8 on the run).
    bool ok = true;
    for (std::size_t k = 0; k < bytes.size() && ok;) {
      const auto c = static_cast<unsigned char>(bytes[k]);
      const std::size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
      if (n == 0 || k + n > bytes.size()) {
        ok = false;
        break;
      }
      for (std::size_t m = 1; m < n; ++m) ok = ok && (static_cast<unsigned char>(bytes[k + m]) >> 6) == 2;
      k += n;
    }
    if (ok) {
      out += bytes;
    } else {
      for (std::size_t k = 0; k < bytes.size(); ++k) out += "\xEF\xBF\xBD";
    }
    bytes.clear();
  };
  for (const auto id : ids) {
    if (const auto it = impl_->by_id.find(id); it != impl_->by_id.end()) {
      const auto& a = impl_->added[it->second];
      if (skip_special && a.special) continue;
      flush_bytes();
      out += a.content;
      continue;
    }
    if (id < 0 || id >= impl_->sp.GetPieceSize()) fail("token id " + std::to_string(id) + " outside the vocabulary");
    if (impl_->sp.IsByte(id)) {
      const std::string& p = impl_->sp.IdToPiece(id);  // "<0xNN>"
      bytes.push_back(static_cast<char>(std::stoi(p.substr(3, 2), nullptr, 16)));
      continue;
    }
    if (skip_special && (impl_->sp.IsControl(id) || impl_->sp.IsUnknown(id))) continue;
    flush_bytes();
    out += replace_all(impl_->sp.IdToPiece(id), meta, " ");
  }
  flush_bytes();
  if (rule_ != prefix_rule::never && !out.empty() && out.front() == ' ') out.erase(0, 1);
  if (cleanup_) {
    for (const auto& [from, to] : std::initializer_list<std::pair<std::string_view, std::string_view>>{
             {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"},
             {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}}) {
      out = replace_all(out, from, to);
    }
  }
  return out;
}

prompt_template parse_template(std::string_view name) {
  if (name == "llava-hf" || name == "llava_hf") return prompt_template::llava_hf;
  if (name == "vicuna" || name == "vicuna_v1" || name == "vicuna-v1") return prompt_template::vicuna_v1;
  if (name == "raw") return prompt_template::raw;
  throw tokenizer_error("llava: --template " + std::string(name) + ": unknown template (llava-hf, vicuna, raw)");
}

std::string format_prompt(prompt_template t, std::string_view question) {
  if (t == prompt_template::raw) return std::string(question);
  std::string q(question);
  if (q.find(image_placeholder) == std::string::npos) q = std::string(image_placeholder) + "\n" + q;
  if (t == prompt_template::llava_hf) return "USER: " + q + " ASSISTANT:";
  return std::string(vicuna_system) + " USER: " + q + " ASSISTANT:";
}

}  // namespace llava
