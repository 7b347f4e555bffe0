// tokensel: the byte source behind the file readers (a file or a caller's memory buffer), plus
// little-endian helpers. Readers check every offset against size() before they read or allocate.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <span>
#include <string>
#include <system_error>
#include <vector>

#include "tokensel/core/config.hpp"
#include "tokensel/core/error.hpp"

TOKENSEL_BEGIN_NAMESPACE
namespace detail {

/// Random-access bytes of known size: a whole memory buffer (not owned; it must outlive the
/// source) or a regular file opened for reading.
class byte_source {
 public:
  static byte_source from_buffer(std::span<const std::byte> buffer, std::string name = "buffer") {
    byte_source s;
    s.buffer_ = buffer;
    s.size_ = buffer.size();
    s.name_ = std::move(name);
    return s;
  }

  static byte_source from_file(const std::filesystem::path& path) {
    byte_source s;
    s.name_ = path.string();
    std::error_code ec;
    const auto status = std::filesystem::status(path, ec);
    if (ec || !std::filesystem::exists(status)) {
      fail(errc::io_error, "file", s.name_, "cannot open: no such file");
    }
    if (!std::filesystem::is_regular_file(status)) fail(errc::io_error, "file", s.name_, "not a regular file");
    const auto size = std::filesystem::file_size(path, ec);
    if (ec) fail(errc::io_error, "file", s.name_, "cannot read its size: " + ec.message());
    s.file_ = std::make_shared<std::ifstream>(path, std::ios::binary);
    if (!*s.file_) fail(errc::io_error, "file", s.name_, "cannot open for reading");
    s.size_ = static_cast<std::uint64_t>(size);
    return s;
  }

  std::uint64_t size() const noexcept { return size_; }
  const std::string& name() const noexcept { return name_; }

  /// Copies bytes [offset, offset + n) to dst. The caller has checked the range against size();
  /// a short read (the file changed under us) is an io_error.
  void read(std::uint64_t offset, void* dst, std::size_t n) const {
    if (n == 0) return;
    if (offset > size_ || n > size_ - offset) {
      fail(errc::parse_error, "file", name_, "read beyond the end of the data");
    }
    if (file_ == nullptr) {
      std::memcpy(dst, buffer_.data() + offset, n);
      return;
    }
    file_->clear();
    file_->seekg(static_cast<std::streamoff>(offset));
    file_->read(static_cast<char*>(dst), static_cast<std::streamsize>(n));
    if (!*file_ || static_cast<std::size_t>(file_->gcount()) != n) {
      fail(errc::io_error, "file", name_, "short read (file truncated while reading?)");
    }
  }

  /// Bytes [offset, offset + n) as a vector (n is bounded by size()).
  std::vector<std::byte> read_vector(std::uint64_t offset, std::size_t n) const {
    if (offset > size_ || n > size_ - offset) {
      fail(errc::parse_error, "file", name_, "read beyond the end of the data");
    }
    std::vector<std::byte> out(n);
    read(offset, out.data(), n);
    return out;
  }

 private:
  byte_source() = default;

  std::span<const std::byte> buffer_{};
  std::shared_ptr<std::ifstream> file_{};
  std::uint64_t size_ = 0;
  std::string name_;
};

/// Unsigned little-endian integer of N bytes at p.
template <class U>
U load_le(const std::byte* p) noexcept {
  U v = 0;
  for (std::size_t k = 0; k < sizeof(U); ++k) v |= static_cast<U>(std::to_integer<unsigned>(p[k])) << (8 * k);
  return v;
}

template <class U>
void store_le(std::byte* p, U v) noexcept {
  for (std::size_t k = 0; k < sizeof(U); ++k) p[k] = static_cast<std::byte>((v >> (8 * k)) & 0xFF);
}

/// Reverses the bytes of each itemsize-wide element in place.
inline void byteswap_elements(std::span<std::byte> bytes, std::size_t itemsize) noexcept {
  if (itemsize <= 1) return;
  for (std::size_t i = 0; i + itemsize <= bytes.size(); i += itemsize) {
    std::reverse(bytes.begin() + static_cast<std::ptrdiff_t>(i),
                 bytes.begin() + static_cast<std::ptrdiff_t>(i + itemsize));
  }
}

/// Converts elements stored little-endian (file_little = true) or big-endian to host order.
inline void to_host_order(std::span<std::byte> bytes, std::size_t itemsize, bool file_little) noexcept {
  const bool host_little = std::endian::native == std::endian::little;
  if (host_little != file_little) byteswap_elements(bytes, itemsize);
}

}  // namespace detail
TOKENSEL_END_NAMESPACE
