// tokensel: NumPy .npy reader and writer (format versions 1.0, 2.0 and 3.0), for attention maps,
// scores and features dumped from Python with numpy.save.
//
// Accepted element types: '<f4'/'>f4' (float32), '<f2'/'>f2' (float16) and '<f8'/'>f8' (float64,
// converted to float32 on read, round to nearest; a finite value beyond the float32 range is an
// error, NaN/Inf pass through for the methods to reject). C order only. Any rank (0 included).
// bfloat16 has no NumPy dtype: write such tensors with safetensors.hpp instead.
//
// Every malformed input (bad magic, truncated preamble or header, header length beyond the file,
// malformed header dictionary, extent overflow, data shorter or longer than the shape) throws
// tokensel::error with errc::parse_error; unsupported but well-formed files (other dtypes,
// fortran_order True, unknown format version) throw errc::unsupported. Sizes are checked against
// the file size before anything is allocated.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tokensel/core/config.hpp"
#include "tokensel/io/detail/byte_source.hpp"
#include "tokensel/core/error.hpp"
#include "tokensel/io/host_tensor.hpp"

TOKENSEL_BEGIN_NAMESPACE
namespace npy {

/// The parsed preamble of a .npy file.
struct header {
  int major_version = 1;
  int minor_version = 0;
  std::string descr;           ///< e.g. "<f4"
  bool fortran_order = false;  ///< always false for files read successfully
  std::vector<index_t> shape;  ///< () for a scalar
  std::uint64_t data_offset = 0;
  std::size_t itemsize = 0;    ///< bytes per stored element (4, 2 or 8)
  bool little_endian = true;   ///< byte order of the stored elements
  dtype type = dtype::f32;     ///< type of the tensor read() returns
};

namespace detail {

using tokensel::detail::fail;

inline constexpr unsigned char magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};

[[noreturn]] inline void parse_fail(std::string_view what, const std::string& source, std::string_view problem) {
  fail(errc::parse_error, std::string("npy.") + std::string(what),
       std::string(problem) + " (in " + source + ")");
}

/// Recursive-descent parser of the header: a Python dict literal with exactly the keys 'descr'
/// (a string), 'fortran_order' (True/False) and 'shape' (a tuple of non-negative ints).
class header_parser {
 public:
  header_parser(std::string_view text, const std::string& source) : s_(text), source_(source) {}

  void parse(header& h) {
    bool have_descr = false, have_order = false, have_shape = false;
    skip_ws();
    expect('{', "the header must be a Python dict literal starting with '{'");
    for (;;) {
      skip_ws();
      if (peek() == '}') { ++i_; break; }
      const std::string key = parse_string("header key");
      skip_ws();
      expect(':', "expected ':' after a header key");
      skip_ws();
      if (key == "descr") {
        if (have_descr) bad("header", "duplicate key 'descr'");
        have_descr = true;
        if (peek() == '[') {
          fail(errc::unsupported, "npy.descr", "a structured dtype",
               "only plain float arrays are supported (in " + source_ + ")");
        }
        h.descr = parse_string("descr");
      } else if (key == "fortran_order") {
        if (have_order) bad("header", "duplicate key 'fortran_order'");
        have_order = true;
        h.fortran_order = parse_bool();
      } else if (key == "shape") {
        if (have_shape) bad("header", "duplicate key 'shape'");
        have_shape = true;
        h.shape = parse_shape();
      } else {
        bad("header", "unexpected key '" + key + "' (expected descr, fortran_order, shape)");
      }
      skip_ws();
      if (peek() == ',') { ++i_; continue; }
      if (peek() == '}') { ++i_; break; }
      bad("header", "expected ',' or '}' in the header dict");
    }
    skip_ws();
    if (i_ != s_.size()) bad("header", "unexpected characters after the header dict");
    if (!have_descr) bad("header", "missing key 'descr'");
    if (!have_order) bad("header", "missing key 'fortran_order'");
    if (!have_shape) bad("header", "missing key 'shape'");
  }

 private:
  [[noreturn]] void bad(std::string_view what, std::string_view problem) const {
    parse_fail(what, source_, std::string(problem) + " at header byte " + std::to_string(i_));
  }
  char peek() const noexcept { return i_ < s_.size() ? s_[i_] : '\0'; }
  bool at_end() const noexcept { return i_ >= s_.size(); }
  void skip_ws() noexcept {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  void expect(char c, std::string_view problem) {
    if (at_end() || s_[i_] != c) bad("header", problem);
    ++i_;
  }

  std::string parse_string(std::string_view what) {
    const char q = peek();
    if (q != '\'' && q != '"') bad(what, "expected a quoted string");
    ++i_;
    std::string out;
    while (!at_end() && s_[i_] != q) {
      if (s_[i_] == '\\') {
        ++i_;
        if (at_end()) break;
      }
      out.push_back(s_[i_++]);
    }
    if (at_end()) bad(what, "unterminated string");
    ++i_;  // closing quote
    return out;
  }

  bool parse_bool() {
    if (s_.substr(i_, 4) == "True") { i_ += 4; return true; }
    if (s_.substr(i_, 5) == "False") { i_ += 5; return false; }
    bad("fortran_order", "expected True or False");
  }

  index_t parse_extent() {
    if (peek() == '-') bad("shape", "negative extent");
    if (peek() < '0' || peek() > '9') bad("shape", "expected a non-negative integer extent");
    index_t v = 0;
    while (peek() >= '0' && peek() <= '9') {
      const index_t digit = peek() - '0';
      if (v > (std::numeric_limits<index_t>::max() - digit) / 10) bad("shape", "extent too large");
      v = v * 10 + digit;
      ++i_;
    }
    if (peek() == 'L' || peek() == 'l') ++i_;  // Python 2 long suffix written by old numpy
    return v;
  }

  std::vector<index_t> parse_shape() {
    expect('(', "shape must be a tuple");
    std::vector<index_t> shape;
    skip_ws();
    if (peek() == ')') { ++i_; return shape; }
    for (;;) {
      skip_ws();
      shape.push_back(parse_extent());
      skip_ws();
      if (peek() == ',') {
        ++i_;
        skip_ws();
        if (peek() == ')') { ++i_; break; }
        continue;
      }
      if (peek() == ')') {
        // Python needs the trailing comma for a 1-tuple: "(3)" is an int, not a shape.
        if (shape.size() == 1) bad("shape", "a 1-element shape needs a trailing comma, e.g. (3,)");
        ++i_;
        break;
      }
      bad("shape", "expected ',' or ')' in the shape tuple");
    }
    return shape;
  }

  std::string_view s_;
  std::size_t i_ = 0;
  const std::string& source_;
};

/// Reads and validates the preamble and header of src (all sizes checked against src.size()).
inline header parse_header(const tokensel::detail::byte_source& src) {
  const std::string& name = src.name();
  const std::uint64_t size = src.size();
  if (size < 10) parse_fail("preamble", name, "file too short for the .npy preamble (" + std::to_string(size) + " bytes)");
  std::byte pre[12]{};
  src.read(0, pre, size >= 12 ? 12 : 10);
  for (int k = 0; k < 6; ++k) {
    if (std::to_integer<unsigned char>(pre[k]) != magic[k]) parse_fail("magic", name, "bad magic: not a .npy file");
  }
  header h;
  h.major_version = std::to_integer<int>(pre[6]);
  h.minor_version = std::to_integer<int>(pre[7]);
  if (h.major_version < 1 || h.major_version > 3 || h.minor_version != 0) {
    fail(errc::unsupported, "npy.version",
         std::to_string(h.major_version) + "." + std::to_string(h.minor_version),
         "unsupported .npy format version (1.0, 2.0 and 3.0 are) (in " + name + ")");
  }
  std::uint64_t header_len = 0, prefix = 0;
  if (h.major_version == 1) {
    header_len = tokensel::detail::load_le<std::uint16_t>(pre + 8);
    prefix = 10;
  } else {
    if (size < 12) parse_fail("preamble", name, "file too short for the version 2/3 preamble");
    header_len = tokensel::detail::load_le<std::uint32_t>(pre + 8);
    prefix = 12;
  }
  if (header_len > size - prefix) {
    parse_fail("header_len", name,
               "header length " + std::to_string(header_len) + " runs beyond the end of the file (" +
                   std::to_string(size) + " bytes)");
  }
  const std::vector<std::byte> raw = src.read_vector(prefix, static_cast<std::size_t>(header_len));
  const std::string text(reinterpret_cast<const char*>(raw.data()), raw.size());
  header_parser(text, name).parse(h);
  h.data_offset = prefix + header_len;

  // descr: byte order, kind 'f', size 2 / 4 / 8.
  const std::string& d = h.descr;
  const bool known = d.size() == 3 && (d[0] == '<' || d[0] == '>') && d[1] == 'f' &&
                     (d[2] == '2' || d[2] == '4' || d[2] == '8');
  if (!known) {
    fail(errc::unsupported, "npy.descr", "'" + d + "'",
         "unsupported dtype (f4, f2 and f8 are; bfloat16 has no NumPy dtype) (in " + name + ")");
  }
  h.little_endian = d[0] == '<';
  h.itemsize = static_cast<std::size_t>(d[2] - '0');
  h.type = h.itemsize == 2 ? dtype::f16 : dtype::f32;
  if (h.fortran_order) {
    fail(errc::unsupported, "npy.fortran_order", "True",
         "Fortran-order arrays are not supported; save a C-order array (numpy.ascontiguousarray) (in " + name + ")");
  }

  const index_t count = tokensel::detail::checked_element_count(h.shape, h.itemsize);
  if (count < 0) parse_fail("shape", name, "the product of the extents overflows");
  const std::uint64_t need = static_cast<std::uint64_t>(count) * h.itemsize;
  const std::uint64_t have = size - h.data_offset;
  if (have != need) {
    parse_fail("data", name,
               std::string(have < need ? "data too short" : "unexpected trailing bytes") + ": the shape " +
                   "needs " + std::to_string(need) + " bytes of " + d + ", the file has " + std::to_string(have));
  }
  return h;
}

inline host_tensor read_data(const tokensel::detail::byte_source& src, const header& h) {
  host_tensor t(h.type, h.shape);
  if (h.itemsize != 8) {
    const auto bytes = t.bytes();
    src.read(h.data_offset, bytes.data(), bytes.size());
    tokensel::detail::to_host_order(bytes, h.itemsize, h.little_endian);
    return t;
  }
  // float64: convert in chunks so the peak extra memory stays small.
  auto out = t.data<float>();
  constexpr std::size_t chunk = 1 << 14;
  std::vector<double> buf(std::min<std::size_t>(chunk, out.size()));
  for (std::size_t base = 0; base < out.size(); base += chunk) {
    const std::size_t n = std::min(chunk, out.size() - base);
    auto bytes = std::as_writable_bytes(std::span<double>(buf.data(), n));
    src.read(h.data_offset + base * 8, bytes.data(), bytes.size());
    tokensel::detail::to_host_order(bytes, 8, h.little_endian);
    for (std::size_t i = 0; i < n; ++i) {
      const double v = buf[i];
      if (std::isfinite(v) && std::fabs(v) > static_cast<double>(std::numeric_limits<float>::max())) {
        fail(errc::non_finite, "npy.data[" + std::to_string(base + i) + "]", v,
             "float64 value overflows float32 (in " + src.name() + ")");
      }
      out[base + i] = static_cast<float>(v);
    }
  }
  return t;
}

inline std::string header_text(const host_tensor& t) {
  std::string shape = "(";
  for (std::size_t k = 0; k < t.rank(); ++k) {
    shape += std::to_string(t.extent(k));
    if (t.rank() == 1 || k + 1 < t.rank()) shape += t.rank() == 1 ? "," : ", ";
  }
  shape += ")";
  const char* descr = t.type() == dtype::f32 ? "<f4" : "<f2";
  return std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
}

}  // namespace detail

/// Reads the header of a .npy file without its data (all sizes validated).
inline header read_header(const std::filesystem::path& path) {
  return detail::parse_header(tokensel::detail::byte_source::from_file(path));
}

/// Reads a .npy file. f4 -> f32, f2 -> f16, f8 -> f32 (converted).
inline host_tensor read(const std::filesystem::path& path) {
  const auto src = tokensel::detail::byte_source::from_file(path);
  return detail::read_data(src, detail::parse_header(src));
}

/// Reads a .npy image held in memory (the whole file's bytes).
inline host_tensor read_buffer(std::span<const std::byte> buffer) {
  const auto src = tokensel::detail::byte_source::from_buffer(buffer);
  return detail::read_data(src, detail::parse_header(src));
}

/// The .npy image of t (format 1.0, or 2.0 when the header needs it; little-endian; C order).
/// f32 -> '<f4', f16 -> '<f2'; bf16 throws errc::unsupported.
inline std::vector<std::byte> write_buffer(const host_tensor& t) {
  if (t.type() == dtype::bf16) {
    tokensel::detail::fail(errc::unsupported, "npy.dtype", "bf16",
                           "bfloat16 has no NumPy dtype; write it with safetensors or convert to f32");
  }
  std::string text = detail::header_text(t);
  // Pad with spaces so that the data starts on a 64-byte boundary; the header ends with '\n'.
  const auto padded = [&](std::size_t prefix) { return (prefix + text.size() + 1 + 63) / 64 * 64; };
  const bool v2 = padded(10) - 10 > 65535;  // version 1.0 stores the header length in 16 bits
  const std::size_t prefix = v2 ? 12 : 10;
  const std::size_t total = padded(prefix);
  text.append(total - prefix - text.size() - 1, ' ');
  text.push_back('\n');

  std::vector<std::byte> out(prefix + text.size() + t.nbytes());
  for (int k = 0; k < 6; ++k) out[static_cast<std::size_t>(k)] = static_cast<std::byte>(detail::magic[k]);
  out[6] = static_cast<std::byte>(v2 ? 2 : 1);
  out[7] = std::byte{0};
  if (v2) tokensel::detail::store_le<std::uint32_t>(out.data() + 8, static_cast<std::uint32_t>(text.size()));
  else tokensel::detail::store_le<std::uint16_t>(out.data() + 8, static_cast<std::uint16_t>(text.size()));
  std::memcpy(out.data() + prefix, text.data(), text.size());
  const auto bytes = t.bytes();
  std::byte* data = out.data() + prefix + text.size();
  if (!bytes.empty()) std::memcpy(data, bytes.data(), bytes.size());
  tokensel::detail::to_host_order(std::span<std::byte>(data, bytes.size()), dtype_size(t.type()), true);
  return out;
}

/// Writes t to path as .npy (see write_buffer). Throws errc::io_error when the file cannot be written.
inline void write(const std::filesystem::path& path, const host_tensor& t) {
  const std::vector<std::byte> image = write_buffer(t);
  tokensel::detail::write_file(path, image);  // checked: no partial file is left on failure
}

}  // namespace npy
TOKENSEL_END_NAMESPACE
