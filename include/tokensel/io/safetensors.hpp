// tokensel: .safetensors reader and writer (8-byte little-endian header length, JSON header,
// raw little-endian data), for attention maps and model weights.
//
// Needs nlohmann/json (CMake: find_package(nlohmann_json 3 REQUIRED) and link
// nlohmann_json::nlohmann_json); the rest of the library does not.
//
// Loadable element types: F32, F16, BF16 (others -> errc::unsupported naming the dtype; they are
// still indexed and validated so a file of mixed dtypes can be opened). "__metadata__" is kept as
// a string map and otherwise ignored. Malformed files (header length beyond the file or above
// 100 MB, invalid JSON, duplicate names, non-integer or negative extents, offsets out of range,
// overlapping, or not matching shape x dtype size) throw errc::parse_error; every size is checked
// against the file size before anything is allocated.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "tokensel/core/config.hpp"
#include "tokensel/io/detail/byte_source.hpp"
#include "tokensel/core/error.hpp"
#include "tokensel/io/host_tensor.hpp"

TOKENSEL_BEGIN_NAMESPACE
namespace safetensors {

/// One tensor entry of the header. Offsets are relative to the start of the data area.
struct tensor_info {
  std::string name;
  std::string dtype;           ///< as written in the file: "F32", "F16", "BF16", "I64", ...
  std::vector<index_t> shape;
  std::uint64_t begin = 0;     ///< data_offsets[0]
  std::uint64_t end = 0;       ///< data_offsets[1]
  /// The tensor's type when load() can return it (F32, F16, BF16).
  bool loadable() const noexcept { return dtype == "F32" || dtype == "F16" || dtype == "BF16"; }
};

/// Largest header accepted (the reference implementation's limit).
inline constexpr std::uint64_t max_header_size = 100'000'000;

namespace detail {

using tokensel::detail::fail;

[[noreturn]] inline void parse_fail(std::string_view what, const std::string& source, std::string_view problem) {
  fail(errc::parse_error, std::string("safetensors.") + std::string(what), std::string(problem) + " (in " + source + ")");
}

/// Bytes per element of the safetensors dtypes with a whole-byte size; 0 when unknown.
inline std::size_t dtype_bytes(std::string_view d) noexcept {
  if (d == "F64" || d == "I64" || d == "U64" || d == "C64") return 8;
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "BOOL" || d == "U8" || d == "I8" || d == "F8_E5M2" || d == "F8_E4M3" || d == "F8_E8M0") return 1;
  return 0;
}

inline tokensel::dtype to_dtype(std::string_view d) noexcept {
  return d == "F32" ? tokensel::dtype::f32 : d == "F16" ? tokensel::dtype::f16 : tokensel::dtype::bf16;
}

inline const char* from_dtype(tokensel::dtype t) noexcept {
  return t == tokensel::dtype::f32 ? "F32" : t == tokensel::dtype::f16 ? "F16" : "BF16";
}

inline std::uint64_t as_offset(const nlohmann::json& v, const std::string& name, const std::string& source) {
  if (!v.is_number_unsigned()) parse_fail("data_offsets", source, "tensor '" + name + "': offsets must be non-negative integers");
  return v.get<std::uint64_t>();
}

/// SAX handler of the header: records the first key that repeats within one object (the depth
/// and the top-level entry it is in) and stops there. Sets of keys per open object: O(n log n).
struct duplicate_key_finder {
  std::vector<std::set<std::string>> keys;  // one per open object; empty set for arrays
  std::vector<bool> is_object;
  std::string entry, duplicate, error;
  std::size_t depth_of_duplicate = 0;
  using number_integer_t = nlohmann::json::number_integer_t;
  using number_unsigned_t = nlohmann::json::number_unsigned_t;
  using number_float_t = nlohmann::json::number_float_t;
  using string_t = nlohmann::json::string_t;
  using binary_t = nlohmann::json::binary_t;
  bool null() { return true; }
  bool boolean(bool) { return true; }
  bool number_integer(number_integer_t) { return true; }
  bool number_unsigned(number_unsigned_t) { return true; }
  bool number_float(number_float_t, const string_t&) { return true; }
  bool string(string_t&) { return true; }
  bool binary(binary_t&) { return true; }
  bool start_object(std::size_t) {
    keys.emplace_back();
    is_object.push_back(true);
    return true;
  }
  bool end_object() {
    keys.pop_back();
    is_object.pop_back();
    return true;
  }
  bool start_array(std::size_t) {
    keys.emplace_back();
    is_object.push_back(false);
    return true;
  }
  bool end_array() { return end_object(); }
  bool key(string_t& k) {
    if (keys.size() == 1) entry = k;
    if (!keys.back().insert(k).second) {
      duplicate = k;
      depth_of_duplicate = keys.size();
      return false;  // stop: the caller reports it
    }
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) {
    error = e.what();
    return false;
  }
};

}  // namespace detail

/// An opened .safetensors file (or memory image): the validated header; tensors are read on demand.
class file {
 public:
  /// Opens and validates a file; tensor data is read by load().
  static file open(const std::filesystem::path& path) { return file(tokensel::detail::byte_source::from_file(path)); }
  /// Validates a memory image of a whole file; the buffer must outlive the returned object.
  static file from_buffer(std::span<const std::byte> buffer) {
    return file(tokensel::detail::byte_source::from_buffer(buffer));
  }

  /// Every tensor entry, sorted by name.
  const std::vector<tensor_info>& tensors() const noexcept { return tensors_; }
  /// The "__metadata__" string pairs (empty when absent; non-string values are skipped).
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
  /// Byte offset of the data area in the file (8 + header length).
  std::uint64_t data_offset() const noexcept { return data_offset_; }

  const tensor_info* find(std::string_view name) const noexcept {
    auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                               [](const tensor_info& t, std::string_view n) { return t.name < n; });
    return (it != tensors_.end() && it->name == name) ? &*it : nullptr;
  }

  /// Reads one tensor. Throws errc::invalid_argument when there is no such name and
  /// errc::unsupported when its dtype is not F32, F16 or BF16.
  host_tensor load(std::string_view name) const {
    const tensor_info* info = find(name);
    if (info == nullptr) {
      std::string known;
      std::size_t shown = 0;
      for (const auto& t : tensors_) {
        if (shown == 8) { known += ", ..."; break; }
        known += (shown++ ? ", " : "") + t.name;
      }
      // Built with append: GCC 12 warns (-Wrestrict, a false positive) on "'" + std::string + "'".
      std::string quoted;
      quoted.append(1, '\'').append(name).append(1, '\'');
      tokensel::detail::fail(errc::invalid_argument, "safetensors.tensor", quoted,
                             "no such tensor in " + src_.name() +
                                 (tensors_.empty() ? std::string(" (the file has none)") : " (it has: " + known + ")"));
    }
    if (!info->loadable()) {
      tokensel::detail::fail(errc::unsupported, "safetensors.dtype", info->dtype,
                             "tensor '" + info->name + "' has an unsupported dtype (F32, F16 and BF16 are) (in " +
                                 src_.name() + ")");
    }
    host_tensor t(detail::to_dtype(info->dtype), info->shape);
    const auto bytes = t.bytes();
    src_.read(data_offset_ + info->begin, bytes.data(), bytes.size());
    tokensel::detail::to_host_order(bytes, dtype_size(t.type()), true);
    return t;
  }

 private:
  explicit file(tokensel::detail::byte_source src) : src_(std::move(src)) { parse(); }

  void parse() {
    const std::string& name = src_.name();
    const std::uint64_t size = src_.size();
    if (size < 8) detail::parse_fail("header_len", name, "file too short for the 8-byte header length (" + std::to_string(size) + " bytes)");
    std::byte len_bytes[8];
    src_.read(0, len_bytes, 8);
    const auto header_len = tokensel::detail::load_le<std::uint64_t>(len_bytes);
    if (header_len > size - 8) {
      detail::parse_fail("header_len", name, "header length " + std::to_string(header_len) +
                                                 " runs beyond the end of the file (" + std::to_string(size) + " bytes)");
    }
    if (header_len > max_header_size) {
      detail::parse_fail("header_len", name, "header length " + std::to_string(header_len) + " exceeds the 100 MB limit");
    }
    data_offset_ = 8 + header_len;
    const std::uint64_t data_size = size - data_offset_;
    const std::vector<std::byte> raw = src_.read_vector(8, static_cast<std::size_t>(header_len));
    const char* text = reinterpret_cast<const char*>(raw.data());

    // The format pads the JSON with spaces; a NUL byte (or any control byte outside a string)
    // is not JSON, and nlohmann would stop at a NUL as if the text ended there.
    if (raw.empty()) detail::parse_fail("header_len", name, "header length 0: the JSON header is empty");
    if (const void* nul = std::memchr(text, 0, raw.size()); nul != nullptr) {
      detail::parse_fail("header", name,
                         "NUL byte at header offset " + std::to_string(static_cast<const char*>(nul) - text) +
                             " (the JSON header is padded with spaces, not NULs)");
    }
    // Two linear passes: a SAX pass that rejects a duplicate key in any object (nlohmann would keep
    // one silently), then the DOM parse. (nlohmann's callback parser rescans the parent object at
    // the end of every member, which made a header with many entries quadratic.)
    detail::duplicate_key_finder dups;
    try {
      nlohmann::json::sax_parse(text, text + raw.size(), &dups);
    } catch (const nlohmann::json::exception& e) {
      detail::parse_fail("header", name, std::string("invalid JSON header: ") + e.what());
    }
    if (!dups.duplicate.empty()) {
      detail::parse_fail("header", name,
                         dups.depth_of_duplicate == 1 ? "duplicate tensor name '" + dups.duplicate + "'"
                                                      : "duplicate key '" + dups.duplicate + "' inside the entry of '" +
                                                            dups.entry + "'");
    }
    if (!dups.error.empty()) detail::parse_fail("header", name, "invalid JSON header: " + dups.error);
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(text, text + raw.size());
    } catch (const nlohmann::json::exception& e) {
      detail::parse_fail("header", name, std::string("invalid JSON header: ") + e.what());
    }
    if (!header.is_object()) detail::parse_fail("header", name, "the JSON header must be an object");

    for (auto it = header.begin(); it != header.end(); ++it) {
      if (it.key() == "__metadata__") {
        if (it->is_object()) {
          for (auto m = it->begin(); m != it->end(); ++m) {
            if (m->is_string()) metadata_[m.key()] = m->get<std::string>();
          }
        }
        continue;
      }
      tensors_.push_back(parse_entry(it.key(), *it, data_size));
    }
    std::sort(tensors_.begin(), tensors_.end(), [](const auto& a, const auto& b) { return a.name < b.name; });

    // No two non-empty tensors may share bytes.
    std::vector<const tensor_info*> by_offset;
    for (const auto& t : tensors_) {
      if (t.end > t.begin) by_offset.push_back(&t);
    }
    std::sort(by_offset.begin(), by_offset.end(), [](const auto* a, const auto* b) { return a->begin < b->begin; });
    for (std::size_t k = 1; k < by_offset.size(); ++k) {
      if (by_offset[k]->begin < by_offset[k - 1]->end) {
        detail::parse_fail("data_offsets", name,
                           "tensors '" + by_offset[k - 1]->name + "' and '" + by_offset[k]->name + "' overlap");
      }
    }
  }

  tensor_info parse_entry(const std::string& key, const nlohmann::json& e, std::uint64_t data_size) const {
    const std::string& name = src_.name();
    const std::string who = "tensor '" + key + "'";
    if (!e.is_object()) detail::parse_fail("header", name, who + ": entry must be an object");
    tensor_info t;
    t.name = key;
    const auto d = e.find("dtype");
    if (d == e.end() || !d->is_string()) detail::parse_fail("dtype", name, who + ": missing or non-string \"dtype\"");
    t.dtype = d->get<std::string>();
    const auto s = e.find("shape");
    if (s == e.end() || !s->is_array()) detail::parse_fail("shape", name, who + ": missing or non-array \"shape\"");
    for (const auto& x : *s) {
      if (!x.is_number_unsigned()) detail::parse_fail("shape", name, who + ": extents must be non-negative integers");
      const auto v = x.get<std::uint64_t>();
      if (v > static_cast<std::uint64_t>(std::numeric_limits<index_t>::max())) {
        detail::parse_fail("shape", name, who + ": extent too large");
      }
      t.shape.push_back(static_cast<index_t>(v));
    }
    const auto o = e.find("data_offsets");
    if (o == e.end() || !o->is_array() || o->size() != 2) {
      detail::parse_fail("data_offsets", name, who + ": \"data_offsets\" must be [begin, end]");
    }
    t.begin = detail::as_offset((*o)[0], key, name);
    t.end = detail::as_offset((*o)[1], key, name);
    if (t.begin > t.end || t.end > data_size) {
      detail::parse_fail("data_offsets", name,
                         who + ": [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
                             ") lies outside the data area of " + std::to_string(data_size) + " bytes");
    }
    const std::size_t itemsize = detail::dtype_bytes(t.dtype);
    if (itemsize != 0) {
      const index_t count = tokensel::detail::checked_element_count(t.shape, itemsize);
      if (count < 0) detail::parse_fail("shape", name, who + ": the product of the extents overflows");
      const std::uint64_t need = static_cast<std::uint64_t>(count) * itemsize;
      if (t.end - t.begin != need) {
        detail::parse_fail("data_offsets", name,
                           who + ": " + std::to_string(t.end - t.begin) + " bytes, but shape x " + t.dtype +
                               " needs " + std::to_string(need));
      }
    }
    return t;
  }

  tokensel::detail::byte_source src_;
  std::uint64_t data_offset_ = 0;
  std::vector<tensor_info> tensors_;
  std::map<std::string, std::string> metadata_;
};

/// Reads one tensor of a file.
inline host_tensor read_tensor(const std::filesystem::path& path, std::string_view name) {
  return file::open(path).load(name);
}

/// The .safetensors image of tensors (sorted by name, data packed in that order, header padded
/// with spaces to a multiple of 8 bytes as the reference writer does).
inline std::vector<std::byte> write_buffer(const std::map<std::string, host_tensor>& tensors,
                                           const std::map<std::string, std::string>& metadata = {}) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__") {
      tokensel::detail::fail(errc::invalid_argument, "safetensors.tensor", name, "reserved name");
    }
    header[name] = {{"dtype", detail::from_dtype(t.type())},
                    {"shape", t.shape()},
                    {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    tokensel::detail::fail(errc::invalid_argument, "safetensors.header", std::string("cannot serialise: ") + e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  std::vector<std::byte> out(8 + text.size() + offset);
  tokensel::detail::store_le<std::uint64_t>(out.data(), text.size());
  std::memcpy(out.data() + 8, text.data(), text.size());
  std::byte* data = out.data() + 8 + text.size();
  for (const auto& [name, t] : tensors) {
    const auto bytes = t.bytes();
    if (!bytes.empty()) std::memcpy(data, bytes.data(), bytes.size());
    tokensel::detail::to_host_order(std::span<std::byte>(data, bytes.size()), dtype_size(t.type()), true);
    data += bytes.size();
  }
  return out;
}

/// Writes tensors to path (see write_buffer). Throws errc::io_error when the file cannot be written.
inline void write(const std::filesystem::path& path, const std::map<std::string, host_tensor>& tensors,
                  const std::map<std::string, std::string>& metadata = {}) {
  const std::vector<std::byte> image = write_buffer(tensors, metadata);
  tokensel::detail::write_file(path, image);  // checked: no partial file is left on failure
}

}  // namespace safetensors
TOKENSEL_END_NAMESPACE
