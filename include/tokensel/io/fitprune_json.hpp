// tokensel: FitPrune recipes as JSON (nlohmann/json). Kept apart from fitprune.hpp so that the
// method itself needs no JSON library. Format (version 1):
//   {
//     "format": "tokensel.fitprune.recipe", "version": 1,
//     "model": "llava-v1.5-7b", "source": "...",
//     "geometry": {"hidden": 4096, "ffn": 11008, "layers": 32, "visual_tokens": 576},
//     "reduction": 0.5, "alpha": 0.3125,            (alpha: optional, may be null)
//     "drops": [3, 7, 49, ...]                       (one count per layer)
//   }
// Reading rejects malformed JSON, missing or mistyped fields, negative counts, a drop list whose
// length differs from geometry.layers and counts summing above visual_tokens, with
// tokensel::error(errc::parse_error) naming the field.
#pragma once

#include <cstdint>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "tokensel/core/config.hpp"
#include "tokensel/core/error.hpp"
#include "tokensel/io/detail/byte_source.hpp"
#include "tokensel/methods/fitprune.hpp"

TOKENSEL_BEGIN_NAMESPACE
namespace fitprune {

inline constexpr const char* recipe_format = "tokensel.fitprune.recipe";
inline constexpr int recipe_format_version = 1;

/// The recipe as a JSON value (validated first; keys in the documented order).
inline nlohmann::ordered_json recipe_to_json_value(const recipe& r) {
  validate(r);
  nlohmann::ordered_json j;
  j["format"] = recipe_format;
  j["version"] = recipe_format_version;
  j["model"] = r.model;
  j["source"] = r.source;
  j["geometry"] = {{"hidden", r.geometry.hidden},
                   {"ffn", r.geometry.ffn},
                   {"layers", r.geometry.layers},
                   {"visual_tokens", r.geometry.visual_tokens}};
  j["reduction"] = r.reduction;
  j["alpha"] = r.alpha ? nlohmann::ordered_json(*r.alpha) : nlohmann::ordered_json(nullptr);
  j["drops"] = r.drops;
  return j;
}

/// Serialises a recipe (indent < 0: one line). Drops stay on one line for readability.
inline std::string recipe_to_json(const recipe& r, int indent = 2) {
  nlohmann::ordered_json j = recipe_to_json_value(r);
  if (indent < 0) return j.dump();
  // Dump without the drop list, then splice it in on one line: [3, 7, 49, ...].
  std::string drops = "[";
  for (std::size_t l = 0; l < r.drops.size(); ++l) drops += (l == 0 ? "" : ", ") + std::to_string(r.drops[l]);
  drops += "]";
  j["drops"] = "@drops@";
  std::string text = j.dump(indent);
  const auto at = text.find("\"@drops@\"");
  text.replace(at, 9, drops);
  return text;
}

namespace detail {

[[noreturn]] inline void parse_fail(const std::string& field, std::string_view problem) {
  tokensel::detail::fail(errc::parse_error, "fitprune.recipe." + field, problem);
}

inline const nlohmann::ordered_json& member(const nlohmann::ordered_json& obj, const char* key, const std::string& path) {
  const auto it = obj.find(key);
  if (it == obj.end()) parse_fail(path + key, "missing");
  return *it;
}

inline index_t integer_field(const nlohmann::ordered_json& value, const std::string& field) {
  if (!value.is_number_integer()) parse_fail(field, "must be an integer, got " + value.dump());
  if (value.is_number_unsigned()) {
    const auto u = value.get<std::uint64_t>();
    if (u > static_cast<std::uint64_t>(INT32_MAX)) parse_fail(field, "out of range: " + value.dump());
    return static_cast<index_t>(u);
  }
  const auto v = value.get<std::int64_t>();
  if (v < INT32_MIN || v > INT32_MAX) parse_fail(field, "out of range: " + value.dump());
  return static_cast<index_t>(v);
}

inline double number_field(const nlohmann::ordered_json& value, const std::string& field) {
  if (!value.is_number()) parse_fail(field, "must be a number, got " + value.dump());
  return value.get<double>();
}

inline std::string string_field(const nlohmann::ordered_json& obj, const char* key) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return {};
  if (!it->is_string()) parse_fail(key, "must be a string, got " + it->dump());
  return it->get<std::string>();
}

}  // namespace detail

/// Reads a recipe from a JSON value; throws errc::parse_error naming the field.
inline recipe recipe_from_json_value(const nlohmann::ordered_json& j) {
  if (!j.is_object()) detail::parse_fail("json", "must be a JSON object");
  if (const auto it = j.find("format"); it != j.end()) {
    if (!it->is_string() || it->get<std::string>() != recipe_format) detail::parse_fail("format", std::string("must be \"") + recipe_format + "\"");
  }
  if (const auto it = j.find("version"); it != j.end()) {
    if (detail::integer_field(*it, "version") != recipe_format_version) detail::parse_fail("version", "unsupported version " + it->dump());
  }
  recipe r;
  r.model = detail::string_field(j, "model");
  r.source = detail::string_field(j, "source");
  const auto& g = detail::member(j, "geometry", "");
  if (!g.is_object()) detail::parse_fail("geometry", "must be an object");
  r.geometry.hidden = detail::integer_field(detail::member(g, "hidden", "geometry."), "geometry.hidden");
  r.geometry.ffn = detail::integer_field(detail::member(g, "ffn", "geometry."), "geometry.ffn");
  r.geometry.layers = detail::integer_field(detail::member(g, "layers", "geometry."), "geometry.layers");
  r.geometry.visual_tokens = detail::integer_field(detail::member(g, "visual_tokens", "geometry."), "geometry.visual_tokens");
  r.reduction = detail::number_field(detail::member(j, "reduction", ""), "reduction");
  if (const auto it = j.find("alpha"); it != j.end() && !it->is_null()) r.alpha = detail::number_field(*it, "alpha");
  const auto& drops = detail::member(j, "drops", "");
  if (!drops.is_array()) detail::parse_fail("drops", "must be an array of integers");
  for (std::size_t l = 0; l < drops.size(); ++l) {
    r.drops.push_back(detail::integer_field(drops[l], "drops[" + std::to_string(l) + "]"));
  }
  try {
    validate(r);
  } catch (const error& e) {
    throw error(errc::parse_error, e.parameter(), e.what());  // same field and message, parse category
  }
  return r;
}

/// Reads a recipe from JSON text; malformed JSON -> errc::parse_error.
inline recipe recipe_from_json(std::string_view text) {
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& e) {  // parse_error, and out_of_range for number overflow
    tokensel::detail::fail(errc::parse_error, "fitprune.recipe.json", std::string("malformed JSON: ") + e.what());
  }
  return recipe_from_json_value(j);
}

/// File helpers: errc::io_error when the file cannot be opened or written.
inline recipe load_recipe(const std::string& path) {
  // A regular file of at most 64 MiB (a FIFO or /dev/zero is refused before it is read).
  return recipe_from_json(tokensel::detail::read_file(path, tokensel::detail::max_text_file_bytes, "a recipe",
                                                      "fitprune.recipe.path"));
}

inline void save_recipe(const recipe& r, const std::string& path) {
  const std::string text = recipe_to_json(r) + "\n";
  tokensel::detail::write_file(path, text, "fitprune.recipe.path");  // checked, no partial file
}

}  // namespace fitprune
TOKENSEL_END_NAMESPACE
