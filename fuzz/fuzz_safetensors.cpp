// .safetensors reader: any byte string either opens (header validated) or ends in tokensel::error;
// every listed tensor then loads or fails with tokensel::error, and loads within the data area.
#include <tokensel/io/safetensors.hpp>

#include "common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto bytes = std::as_bytes(std::span<const std::uint8_t>(data, size));
  std::optional<tokensel::safetensors::file> f;
  try {
    f.emplace(tokensel::safetensors::file::from_buffer(bytes));
  } catch (const tokensel::error& e) {
    fuzz::require(e.code() == tokensel::errc::parse_error, "safetensors: open failed without parse_error");
    return 0;
  }
  fuzz::require(f->data_offset() >= 8 && f->data_offset() <= size, "safetensors: data offset outside the file");
  std::map<std::string, tokensel::host_tensor> loaded;
  for (const auto& info : f->tensors()) {
    fuzz::require(info.begin <= info.end && f->data_offset() + info.end <= size, "safetensors: entry outside the file");
    try {
      auto t = f->load(info.name);
      fuzz::require(t.nbytes() == info.end - info.begin, "safetensors: loaded size differs from the entry");
      loaded.emplace(info.name, std::move(t));
    } catch (const tokensel::error& e) {
      fuzz::require(e.code() == tokensel::errc::unsupported, "safetensors: load failed without unsupported");
    }
  }
  try {
    (void)f->load("\x01no such tensor");
    fuzz::finding("safetensors: a missing name loaded");
  } catch (const tokensel::error& e) {
    fuzz::require(e.code() == tokensel::errc::invalid_argument, "safetensors: missing name without invalid_argument");
  }
  // The loadable tensors write and reopen.
  const auto image = tokensel::safetensors::write_buffer(loaded);
  const auto again = tokensel::safetensors::file::from_buffer(image);
  fuzz::require(again.tensors().size() == loaded.size(), "safetensors: round trip lost tensors");
  return 0;
}
