// llava: image loading and CLIP preprocessing, matching transformers' CLIPImageProcessor (PIL
// backend) and original LLaVA's pad-to-square, plus the kept-patch overlay.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include <tokensel/core/config.hpp>
#include <tokensel/core/token_grid.hpp>

#include "llava/config.hpp"

namespace llava {

/// An image that cannot be read, decoded or written; what() is one line naming the file.
struct image_error : error {
  using error::error;
};

/// 8-bit RGB, row-major, interleaved (height x width x 3).
struct rgb_image {
  int width = 0;
  int height = 0;
  std::vector<std::uint8_t> pixels;

  std::uint8_t* at(int x, int y) { return pixels.data() + (static_cast<std::size_t>(y) * width + x) * 3; }
  const std::uint8_t* at(int x, int y) const {
    return pixels.data() + (static_cast<std::size_t>(y) * width + x) * 3;
  }
};

/// Decodes PNG or JPEG (anything stb_image reads) to RGB: grey is replicated, alpha dropped, as
/// PIL's convert("RGB") does. `name` only labels errors.
/// `pad`: the image will be padded to a square, whose max(w, h)^2 pixels must also stay within
/// max_image_pixels (checked from the header, before decoding).
rgb_image decode_image(std::span<const std::uint8_t> bytes, const std::string& name, bool pad = false);
/// Reads and decodes a file; throws image_error for a missing/unreadable/undecodable file (only
/// a regular file of at most max_image_file_bytes is read).
rgb_image load_image(const std::filesystem::path& path, bool pad = false);
/// The JPEG decoder: "libjpeg" (libjpeg-turbo, the decoder PIL uses: bit-identical pixels). PNG
/// goes through stb_image, which is exact. No other format is decoded.
const char* jpeg_decoder() noexcept;

/// CLIP's normalisation constants (OpenAI CLIP, used by LLaVA-1.5).
inline constexpr std::array<float, 3> clip_mean{0.48145466f, 0.4578275f, 0.40821073f};
inline constexpr std::array<float, 3> clip_std{0.26862954f, 0.26130258f, 0.27577711f};

/// The padding colour of original LLaVA's expand2square: int(mean * 255) per channel
/// (truncation, as the Python code does): (122, 116, 104) for CLIP.
std::array<std::uint8_t, 3> mean_colour(const std::array<float, 3>& mean = clip_mean);

/// expand2square: a square of side max(w, h) filled with `colour`, the image pasted at
/// ((side - w) / 2, (side - h) / 2) (floor). A square image is returned unchanged.
rgb_image pad_to_square(const rgb_image& image, std::array<std::uint8_t, 3> colour);

/// PIL's Image.resize(size, Resampling.BICUBIC) on an 8-bit image, bit for bit (Pillow 13): separable
/// convolution, horizontal pass first unless the height shrinks by more than twice the pixels
/// the width does (then vertical first; Pillow <= 12 always went horizontal first), support
/// 2 * max(1, in/out), a = -0.5, coefficients rounded to 22-bit fixed point, each pass rounded
/// and clipped to uint8.
rgb_image resize_bicubic(const rgb_image& image, int width, int height);
/// The window [x0, x0 + w) x [y0, y0 + h) of resize_bicubic(image, width, height), computed
/// without the rest (same bits).
rgb_image resize_bicubic_window(const rgb_image& image, int width, int height, int x0, int y0, int w, int h);

/// transformers' get_resize_output_image_size(shortest_edge): the short side becomes `shortest`,
/// the long side int(shortest * long / short) (truncated). Returns {width, height}.
std::array<int, 2> shortest_edge_size(int width, int height, int shortest);

/// transformers' center_crop: offsets ((h - ch) / 2, (w - cw) / 2) with floor division. The crop
/// must lie inside the image.
rgb_image center_crop(const rgb_image& image, int width, int height);

struct preprocess_options {
  int size = 336;           ///< shortest edge after resize, and the crop side
  bool pad = true;          ///< original LLaVA's pad-to-square (false: llava-hf processor)
  std::array<float, 3> mean = clip_mean;
  std::array<float, 3> std = clip_std;
};

/// Where the model's input square came from, to map patches back onto the input image.
struct crop_geometry {
  int input_width = 0, input_height = 0;   ///< the decoded image
  int pad_x = 0, pad_y = 0;                ///< offset of the input inside the padded square
  int padded_width = 0, padded_height = 0; ///< after padding (= input when not padded)
  int resized_width = 0, resized_height = 0;
  int crop_x = 0, crop_y = 0;              ///< offset of the crop in the resized image
  int size = 0;                            ///< crop side (model image size)
};

struct preprocessed_image {
  std::vector<float> pixels;  ///< [3, size, size] channel-major, normalised
  int size = 0;
  crop_geometry geometry;
};

/// Pad (optional) -> bicubic resize of the shortest edge -> centre crop -> x / 255 ->
/// (x - mean) / std, with transformers' float32 arithmetic.
preprocessed_image preprocess(const rgb_image& image, const preprocess_options& options = {});

/// Writes `image` (the decoded input) as PNG with the patches in `kept` (patch indices, row-major
/// over `grid`, CLS excluded) at full brightness and every other pixel dimmed (dropped patches,
/// and the parts the centre crop cut away). Throws image_error if the file cannot be written or an
/// index is outside the grid.
void write_overlay(const std::filesystem::path& path, const rgb_image& image,
                   std::span<const tokensel::token_index> kept, tokensel::token_grid grid,
                   const crop_geometry& geometry);

/// Writes an RGB image as PNG (throws image_error on failure).
void write_png(const std::filesystem::path& path, const rgb_image& image);

}  // namespace llava
