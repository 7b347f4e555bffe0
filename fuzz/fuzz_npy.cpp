// .npy reader: any byte string either parses into a tensor whose size matches its shape or ends
// in tokensel::error (parse_error / unsupported, or non_finite for a float64 value beyond the
// float32 range). A successful read round-trips through the writer.
#include <tokensel/io/npy.hpp>

#include "common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto bytes = std::as_bytes(std::span<const std::uint8_t>(data, size));
  tokensel::host_tensor t;
  try {
    t = tokensel::npy::read_buffer(bytes);
  } catch (const tokensel::error& e) {
    fuzz::require(e.code() == tokensel::errc::parse_error || e.code() == tokensel::errc::unsupported ||
                      e.code() == tokensel::errc::non_finite,
                  "npy: unexpected error code");
    return 0;
  }
  fuzz::index_t n = 1;
  for (auto e : t.shape()) {
    fuzz::require(e >= 0, "npy: negative extent");
    n *= e;
  }
  fuzz::require(n == t.size(), "npy: size differs from the shape");
  // What was read writes and reads back to the same shape and bytes.
  const auto image = tokensel::npy::write_buffer(t);
  const auto back = tokensel::npy::read_buffer(image);
  fuzz::require(back.shape() == t.shape() && back.type() == t.type(), "npy: round trip changed the shape");
  fuzz::require(std::equal(back.bytes().begin(), back.bytes().end(), t.bytes().begin(), t.bytes().end()),
                "npy: round trip changed the data");
  return 0;
}
