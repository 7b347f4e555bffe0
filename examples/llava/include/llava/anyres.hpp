// llava: LLaVA-NeXT's AnyRes (LlavaNextForConditionalGeneration, llava-hf layout), as transformers
// does it (LlavaNextImageProcessorPil + LlavaNextModel.pack_image_features); docs/llava.md#anyres.
//
//   best resolution  the pinpoint (H, W) maximising the effective resolution
//                    min(int(w s) * int(h s), w h), s = min(W / w, H / h), then the least wasted
//                    H W - effective; the first such pinpoint in config order.
//   resize + pad     the image resized (PIL bicubic) to fit (H, W) keeping its aspect ratio
//                    (the side that limits is exact, the other ceil(side * s), at most the
//                    target), pasted centred (floor) on black, then cut into (H / S) x (W / S)
//                    tiles of the tower's size S, row-major; the base image is the whole image
//                    resized to S x S (aspect ratio not kept). Model input: base, then the tiles.
//   packing          per tile, the projected patch rows (g x g, g = S / patch); the tiles' grids
//                    form one (H / S * g) x (W / S * g) grid, whose rows or columns of padding
//                    are cut (unpadding to the original aspect ratio), each remaining grid row
//                    followed by the image_newline vector; the LLM sees the base tile's rows,
//                    then that grid row by row.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "llava/config.hpp"
#include "llava/image.hpp"

namespace llava {

/// transformers' select_best_resolution over [height, width] pinpoints; returns {height, width}.
/// Throws llava::error for an empty list, a non-positive size or pinpoint.
std::array<int, 2> select_best_resolution(int height, int width, std::span<const std::array<int, 2>> pinpoints);

/// transformers' get_patch_output_size: the size {height, width} the image is resized to inside
/// the target resolution (aspect ratio kept).
std::array<int, 2> patch_output_size(int height, int width, int target_height, int target_width);

/// The layout of one image under AnyRes.
struct anyres_layout {
  int height = 0, width = 0;            ///< the original image
  int best_height = 0, best_width = 0;  ///< the chosen pinpoint
  int tiles_y = 0, tiles_x = 0;         ///< tiles per column / row of the pinpoint
  int tile = 0;                         ///< S, the vision tower's image size
  int grid = 0;                         ///< g = S / patch: patch rows per tile side
  int row0 = 0, rows = 0;               ///< unpadded window of the full grid (tiles_y * g rows)
  int col0 = 0, cols = 0;               ///< and (tiles_x * g columns)

  int tile_count() const noexcept { return tiles_y * tiles_x + 1; }  ///< base image included
  int base_tokens() const noexcept { return grid * grid; }
  /// Visual tokens fed to the LLM: base g^2, the unpadded grid, one newline per grid row.
  std::int64_t image_tokens() const noexcept {
    return static_cast<std::int64_t>(base_tokens()) + static_cast<std::int64_t>(rows) * cols + rows;
  }
};

/// The layout of an image of height x width under cfg (cfg.anyres() must hold).
anyres_layout make_anyres_layout(const llava_config& cfg, int height, int width);

/// Model input of one image: [tile_count, 3, S, S] normalised pixels, the base image first.
struct anyres_image {
  std::vector<float> pixels;
  anyres_layout layout;
};

/// LlavaNextImageProcessor (PIL backend): best resolution, resize + pad, tiles, base image, then
/// x / 255 and (x - mean) / std per tile, with the same arithmetic as preprocess().
anyres_image preprocess_anyres(const rgb_image& image, const llava_config& cfg, const preprocess_options& options = {});

/// One image as the model takes it: AnyRes tiles under a LLaVA-NeXT config (cfg.anyres()), else
/// one preprocessed square. The CLI, the batch evaluation and the benchmarks all start here.
struct model_image {
  bool anyres = false;
  anyres_image tiles;         ///< when anyres
  preprocessed_image square;  ///< otherwise
};

/// preprocess_anyres for a LLaVA-NeXT config (LlavaNextImageProcessor: no square padding), else
/// preprocess.
model_image prepare_image(const rgb_image& image, const llava_config& cfg, const preprocess_options& options = {});

/// The source of every packed image token (image_tokens() entries): tile * g^2 + the patch's index
/// in its tile, or -1 for an image_newline row. Selection per tile keeps the packed tokens whose
/// source its tile kept, and every newline row.
std::vector<std::int64_t> anyres_token_sources(const anyres_layout& layout);

/// The layout on a coarser per-tile grid (pooling: grid = the pooled side): the same tiles, the
/// grid's unpadded window recomputed by unpad_image's rule for that grid. Throws unless 1 <= grid
/// <= layout.grid.
anyres_layout coarser_layout(const anyres_layout& layout, int grid);

/// VisionZip's LLaVA-NeXT layout (dvlab-research/VisionZip, llava_arch.py,
/// restore_image_features_sorted): tile_rows[t] = tile t's VisionZip rows [k, D] as the library
/// gives them (CLS, the dominant patches ascending, the contextual rows); dominant[t] = those
/// dominant patches' indices in the tile (ascending). Output: the base tile's k rows, then every
/// crop's dominant patch rows in the order they lie on the crops' joint (tiles_y g) x (tiles_x g)
/// grid, row-major, without unpadding and without image_newline, then the crops' CLS rows, then
/// their contextual rows (crop order): tile_count() * k rows.
std::vector<float> pack_anyres_visionzip(const anyres_layout& layout, const std::vector<std::vector<float>>& tile_rows,
                                         const std::vector<std::vector<std::int32_t>>& dominant, std::int64_t D);

/// pack_image_features: tile_rows [tile_count, g * g, D] (projected, base tile first), newline [D]
/// -> out [layout.image_tokens(), D].
void pack_anyres(const anyres_layout& layout, const float* tile_rows, const float* newline, std::int64_t D, float* out);

}  // namespace llava
