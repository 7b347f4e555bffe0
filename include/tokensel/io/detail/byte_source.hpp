// tokensel: the byte source behind the file readers (a file or a caller's memory buffer), plus
// little-endian helpers. Readers check every offset against size() before they read or allocate.
//
// The file-access rules of every reader and writer of the project (the library's, the CLI's and
// the LLaVA runtime's) live here, once (docs/reliability.md, "Hostile input"):
//   * check_regular_file: only regular files are opened (symbolic links followed; a link loop,
//     a FIFO, a device, a socket or a directory is an io_error naming the file), and the file's
//     size is checked against the bound of its kind before a byte is read;
//   * read_file: the whole of such a file, bounded (text: JSON configs, recipes, layer lists);
//   * write_file: the checked write: a temporary file in the target's folder, written, flushed,
//     closed and checked, then renamed over the target; on any failure the temporary is removed
//     and the target left as it was (a device such as /dev/null is written in place, checked).
#pragma once

#include <cerrno>
#include <cstdio>
#include <string_view>
#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <unistd.h>
#define TOKENSEL_HAVE_POSIX_IO 1
#endif

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

/// Size bounds of the file kinds the project reads (bytes). Tensor files (.npy, .safetensors) have
/// no bound of their own: every size in them is checked against the file's size, and weights are
/// mapped, not read.
inline constexpr std::uint64_t max_text_file_bytes = 64ull << 20;    ///< JSON, recipes, layer lists, tokenizer files
inline constexpr std::uint64_t max_image_file_bytes = 1ull << 30;    ///< PNG / JPEG files
inline constexpr std::uint64_t max_tensor_file_bytes = ~0ull;        ///< .npy / .safetensors: bounded by their content

/// What a non-regular file is, for the error message.
inline const char* file_kind_name(std::filesystem::file_type t) noexcept {
  switch (t) {
    case std::filesystem::file_type::directory: return "a directory";
    case std::filesystem::file_type::fifo: return "a FIFO (named pipe)";
    case std::filesystem::file_type::character: return "a character device";
    case std::filesystem::file_type::block: return "a block device";
    case std::filesystem::file_type::socket: return "a socket";
    default: return "a special file";
  }
}

/// The one rule for opening an input: path must name a regular file (after following symbolic
/// links) of at most max_bytes bytes; `kind` names what it is for the message ("image", "JSON
/// file"). Returns its size. Throws errc::io_error ("tokensel: file = PATH: ...") otherwise.
inline std::uint64_t check_regular_file(const std::filesystem::path& path, std::uint64_t max_bytes,
                                        std::string_view kind = "a file", std::string_view param = "file") {
  const std::string name = path.string();
  std::error_code ec;
  const auto st = std::filesystem::status(path, ec);
  if (ec) {
    if (ec == std::errc::too_many_symbolic_link_levels) {
      fail(errc::io_error, param, name, "cannot open: a loop of symbolic links (too many levels)");
    }
    if (ec == std::errc::permission_denied) fail(errc::io_error, param, name, "cannot open: permission denied");
    if (ec == std::errc::no_such_file_or_directory || ec == std::errc::not_a_directory) {
      fail(errc::io_error, param, name, "cannot open: no such file");
    }
    fail(errc::io_error, param, name, "cannot open: " + ec.message());
  }
  if (!std::filesystem::exists(st)) fail(errc::io_error, param, name, "cannot open: no such file");
  if (!std::filesystem::is_regular_file(st)) {
    fail(errc::io_error, param, name,
         std::string("is ") + file_kind_name(st.type()) + ", not a regular file (only regular files are read)");
  }
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) fail(errc::io_error, param, name, "cannot read its size: " + ec.message());
  if (static_cast<std::uint64_t>(size) > max_bytes) {
    fail(errc::io_error, param, name,
         std::to_string(size) + " bytes exceeds the limit of " + std::to_string(max_bytes) + " bytes for " +
             std::string(kind));
  }
  return static_cast<std::uint64_t>(size);
}

/// The whole of a regular file of at most max_bytes bytes (check_regular_file first; a file that
/// changes size while read is an io_error).
inline std::string read_file(const std::filesystem::path& path, std::uint64_t max_bytes, std::string_view kind = "a file",
                             std::string_view param = "file") {
  const std::uint64_t size = check_regular_file(path, max_bytes, kind, param);
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(errc::io_error, param, path.string(), "cannot open for reading");
  std::string out(static_cast<std::size_t>(size), '\0');
  if (size > 0) in.read(out.data(), static_cast<std::streamsize>(size));
  if (!in || static_cast<std::uint64_t>(in.gcount()) != size) {
    fail(errc::io_error, param, path.string(), "short read (file truncated while reading?)");
  }
  return out;
}

#if defined(TOKENSEL_HAVE_POSIX_IO)
/// write_file's in-place write of an existing special file (device, FIFO): never created;
/// O_NONBLOCK so a FIFO without a reader fails (ENXIO) instead of blocking; then blocking writes.
inline void write_special_in_place(const std::string& name, std::span<const std::byte> bytes, const std::string& who) {
  const int fd = ::open(name.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    const int e = errno;
    fail(errc::io_error, who, name,
         std::string("cannot open for writing: ") +
             (e == ENXIO ? "a FIFO with no reader" : std::generic_category().message(e)));
  }
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  std::size_t done = 0;
  while (done < bytes.size()) {
    const auto n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int e = errno;
      ::close(fd);
      fail(errc::io_error, who, name, "write failed: " + std::generic_category().message(e));
    }
    done += static_cast<std::size_t>(n);
  }
  if (::close(fd) != 0) {
    fail(errc::io_error, who, name, "write failed on close: " + std::generic_category().message(errno));
  }
}
#endif

/// write_file's temporary next to the target (same file system, so the rename is atomic), opened
/// exclusively (never follows or reuses an existing name); its name goes to tmp. Throws when no
/// name can be opened.
inline std::FILE* open_temporary_beside(const std::filesystem::path& path, std::string& tmp, const std::string& name,
                                        const std::string& who) {
  namespace fs = std::filesystem;
  const fs::path dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
  std::FILE* f = nullptr;
  for (unsigned attempt = 0; attempt < 100 && f == nullptr; ++attempt) {
    const auto salt = static_cast<unsigned long long>(reinterpret_cast<std::uintptr_t>(&tmp)) ^
                      (static_cast<unsigned long long>(attempt) * 0x9E3779B97F4A7C15ull);
#if defined(TOKENSEL_HAVE_POSIX_IO)
    const auto pid = static_cast<unsigned long long>(::getpid());
#else
    const auto pid = 0ull;
#endif
    // Built with append: GCC 12 warns (-Wrestrict, a false positive) on "." + std::string.
    std::string leaf(".");
    leaf.append(path.filename().string()).append(".tmp-").append(std::to_string(pid)).append("-");
    leaf.append(std::to_string(salt % 1000000007ull));
    tmp = (dir / leaf).string();
    f = std::fopen(tmp.c_str(), "wbx");  // exclusive: never follows or reuses an existing name
    if (f == nullptr && errno != EEXIST) break;
  }
  if (f == nullptr) {
    fail(errc::io_error, who, name, "cannot open for writing: " + std::generic_category().message(errno));
  }
  return f;
}

/// The checked write: bytes become the content of path, or an io_error is thrown and nothing is
/// left behind. A regular (or new) target is written to a temporary file in the same folder,
/// flushed, closed, checked and renamed over the target; an existing device, FIFO with a reader
/// or other special file is written in place (never created), and a FIFO without a reader is an
/// error, not a hang. `what` names the output for messages ("--out", "overlay").
inline void write_file(const std::filesystem::path& path, std::span<const std::byte> bytes, std::string_view what = "file") {
  namespace fs = std::filesystem;
  const std::string name = path.string();
  const std::string who(what);
  std::error_code ec;
  const auto st = fs::status(path, ec);
  if (ec && ec != std::errc::no_such_file_or_directory) {
    if (ec == std::errc::too_many_symbolic_link_levels) {
      fail(errc::io_error, who, name, "cannot write: a loop of symbolic links (too many levels)");
    }
    fail(errc::io_error, who, name, "cannot write: " + ec.message());
  }
  if (fs::exists(st) && fs::is_directory(st)) fail(errc::io_error, who, name, "cannot write: is a directory");
#if defined(TOKENSEL_HAVE_POSIX_IO)
  if (fs::exists(st) && !fs::is_regular_file(st)) {
    write_special_in_place(name, bytes, who);
    return;
  }
#endif
  std::string tmp;
  std::FILE* f = open_temporary_beside(path, tmp, name, who);
  bool ok = bytes.empty() || std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  int e = ok ? 0 : errno;
  if (std::fflush(f) != 0 && ok) { ok = false; e = errno; }
  if (std::fclose(f) != 0 && ok) { ok = false; e = errno; }
  if (ok) {
    fs::rename(tmp, path, ec);
    if (ec) {
      fs::remove(tmp, ec);
      fail(errc::io_error, who, name, "cannot write: " + ec.message());
    }
    return;
  }
  std::error_code ignore;
  fs::remove(tmp, ignore);
  fail(errc::io_error, who, name, "write failed: " + std::generic_category().message(e));
}

inline void write_file(const std::filesystem::path& path, std::string_view text, std::string_view what = "file") {
  write_file(path, std::as_bytes(std::span<const char>(text.data(), text.size())), what);
}

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
    const std::uint64_t size = check_regular_file(path, max_tensor_file_bytes);
    s.file_ = std::make_shared<std::ifstream>(path, std::ios::binary);
    if (!*s.file_) fail(errc::io_error, "file", s.name_, "cannot open for reading");
    s.size_ = size;
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
