// LLaVA runtime image path: any byte string either decodes (stb_image, PNG/JPEG/...) into an RGB
// image that then preprocesses (pad to square, PIL bicubic resize, centre crop, normalise) into
// finite pixels of the requested size, or ends in llava::image_error / llava::error.
#include <llava/image.hpp>

#include <algorithm>
#include <cmath>

#include "common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  // First byte: options (crop side 14..77, padding on/off); the rest is the file.
  const int side = 14 + (data[0] & 0x3f);
  const bool pad = (data[0] & 0x40) != 0;
  llava::rgb_image image;
  try {
    image = llava::decode_image(std::span<const std::uint8_t>(data + 1, size - 1), "fuzz");
  } catch (const llava::error&) {
    return 0;
  }
  fuzz::require(image.width > 0 && image.height > 0, "llava_image: empty image decoded");
  fuzz::require(image.pixels.size() == static_cast<std::size_t>(image.width) * image.height * 3,
                "llava_image: pixel buffer size differs from the extents");
  // Keep the work bounded: huge images (or a padded square of a long strip) are legitimate but
  // slow to resample, as they are in PIL.
  const long long side_in = std::max(image.width, image.height);
  if ((pad ? side_in * side_in : static_cast<long long>(image.width) * image.height) > (1 << 20)) return 0;
  try {
    const auto out = llava::preprocess(image, {.size = side, .pad = pad});
    fuzz::require(out.size == side && out.pixels.size() == static_cast<std::size_t>(3 * side * side),
                  "llava_image: preprocessed size");
    for (float v : out.pixels) fuzz::require(std::isfinite(v), "llava_image: non-finite pixel");
  } catch (const llava::error&) {
  }
  return 0;
}
