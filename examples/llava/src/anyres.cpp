// llava: LLaVA-NeXT AnyRes geometry, preprocessing and feature packing (anyres.hpp).
#include "llava/anyres.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

namespace llava {

std::array<int, 2> select_best_resolution(int height, int width, std::span<const std::array<int, 2>> pinpoints) {
  if (height <= 0 || width <= 0) {
    throw error("llava: anyres: image size " + std::to_string(width) + "x" + std::to_string(height) + " must be positive");
  }
  if (pinpoints.empty()) throw error("llava: anyres: image_grid_pinpoints is empty");
  std::array<int, 2> best{0, 0};
  std::int64_t max_effective = 0, min_wasted = std::numeric_limits<std::int64_t>::max();
  const std::int64_t original = static_cast<std::int64_t>(height) * width;
  for (const auto& [h, w] : pinpoints) {
    if (h <= 0 || w <= 0) throw error("llava: anyres: pinpoint [" + std::to_string(h) + ", " + std::to_string(w) + "] must be positive");
    // Python: scale = min(w / ow, h / oh); int(ow * scale), int(oh * scale) (double, truncated)
    const double scale = std::min(static_cast<double>(w) / width, static_cast<double>(h) / height);
    const auto dw = static_cast<std::int64_t>(width * scale), dh = static_cast<std::int64_t>(height * scale);
    const std::int64_t effective = std::min(dw * dh, original);
    const std::int64_t wasted = static_cast<std::int64_t>(h) * w - effective;
    if (effective > max_effective || (effective == max_effective && wasted < min_wasted)) {
      max_effective = effective;
      min_wasted = wasted;
      best = {h, w};
    }
  }
  return best;
}

std::array<int, 2> patch_output_size(int height, int width, int target_height, int target_width) {
  const double scale_w = static_cast<double>(target_width) / width;
  const double scale_h = static_cast<double>(target_height) / height;
  if (scale_w < scale_h) {
    return {std::min(static_cast<int>(std::ceil(height * scale_w)), target_height), target_width};
  }
  return {target_height, std::min(static_cast<int>(std::ceil(width * scale_h)), target_width)};
}

namespace {

/// Python's int(round(x, 7)) for the non-negative sizes unpad_image computes: rounding to 7
/// decimals first keeps 23.9999999999 (a ratio's rounding error) at 24.
int round7_trunc(double x) { return static_cast<int>(std::round(x * 1e7) / 1e7); }

/// unpad_image on the (tiles_y g) x (tiles_x g) grid: cut the rows (or columns) the padding added.
void set_unpadded_window(anyres_layout& a) {
  const int ch = a.tiles_y * a.grid, cw = a.tiles_x * a.grid;
  a.row0 = a.col0 = 0;
  a.rows = ch;
  a.cols = cw;
  const double original_aspect = static_cast<double>(a.width) / a.height, current_aspect = static_cast<double>(cw) / ch;
  if (original_aspect > current_aspect) {
    const int new_h = round7_trunc(a.height * (static_cast<double>(cw) / a.width));
    a.row0 = (ch - new_h) / 2;
    a.rows = ch - 2 * a.row0;
  } else {
    const int new_w = round7_trunc(a.width * (static_cast<double>(ch) / a.height));
    a.col0 = (cw - new_w) / 2;
    a.cols = cw - 2 * a.col0;
  }
}

}  // namespace

anyres_layout make_anyres_layout(const llava_config& cfg, int height, int width) {
  if (!cfg.anyres()) throw error("llava: anyres: the model is not LLaVA-NeXT (model_type " + cfg.model_type + ")");
  anyres_layout a;
  a.height = height;
  a.width = width;
  const auto best = select_best_resolution(height, width, cfg.image_grid_pinpoints);
  a.best_height = best[0];
  a.best_width = best[1];
  a.tile = cfg.vision.image_size;
  a.grid = cfg.vision.grid();
  a.tiles_y = a.best_height / a.tile;
  a.tiles_x = a.best_width / a.tile;
  set_unpadded_window(a);
  return a;
}

namespace {

/// x / 255 (double, then float) and (x - mean) / std in float32 into out [3, S, S], as preprocess().
void normalise_tile(const rgb_image& tile, const preprocess_options& o, float* out) {
  const std::size_t plane = static_cast<std::size_t>(tile.width) * tile.height;
  constexpr double scale = 1.0 / 255.0;
  for (std::size_t i = 0; i < plane; ++i) {
    for (int c = 0; c < 3; ++c) {
      const float x = static_cast<float>(tile.pixels[3 * i + c] * scale);
      out[c * plane + i] = (x - o.mean[c]) / o.std[c];
    }
  }
}

/// The S x S tile at (x0, y0) of the padded canvas, read from the resized image pasted at (px, py)
/// (black outside it, as np.pad with 0).
rgb_image tile_of(const rgb_image& resized, int px, int py, int x0, int y0, int S) {
  rgb_image t;
  t.width = t.height = S;
  t.pixels.assign(static_cast<std::size_t>(S) * S * 3, 0);
  for (int y = 0; y < S; ++y) {
    const int sy = y0 + y - py;
    if (sy < 0 || sy >= resized.height) continue;
    const int xa = std::max(0, px - x0), xb = std::min(S, px + resized.width - x0);
    if (xa < xb) std::memcpy(t.at(xa, y), resized.at(x0 + xa - px, sy), static_cast<std::size_t>(xb - xa) * 3);
  }
  return t;
}

}  // namespace

anyres_image preprocess_anyres(const rgb_image& image, const llava_config& cfg, const preprocess_options& options) {
  anyres_image out;
  out.layout = make_anyres_layout(cfg, image.height, image.width);
  const auto& a = out.layout;
  const int S = a.tile;
  const std::size_t per_tile = 3 * static_cast<std::size_t>(S) * S;
  out.pixels.resize(per_tile * static_cast<std::size_t>(a.tile_count()));
  // the base image: the whole image resized to S x S
  normalise_tile(resize_bicubic(image, S, S), options, out.pixels.data());
  const auto [nh, nw] = patch_output_size(image.height, image.width, a.best_height, a.best_width);
  const rgb_image resized = resize_bicubic(image, nw, nh);
  const int px = (a.best_width - nw) / 2, py = (a.best_height - nh) / 2;  // divmod(target - new, 2)
  for (int ty = 0; ty < a.tiles_y; ++ty) {
    for (int tx = 0; tx < a.tiles_x; ++tx) {
      const std::size_t index = 1 + static_cast<std::size_t>(ty) * a.tiles_x + tx;
      normalise_tile(tile_of(resized, px, py, tx * S, ty * S, S), options, out.pixels.data() + index * per_tile);
    }
  }
  return out;
}

model_image prepare_image(const rgb_image& image, const llava_config& cfg, const preprocess_options& options) {
  model_image m;
  m.anyres = cfg.anyres();
  if (m.anyres) {
    m.tiles = preprocess_anyres(image, cfg, options);
  } else {
    m.square = preprocess(image, options);
  }
  return m;
}

std::vector<std::int64_t> anyres_token_sources(const anyres_layout& a) {
  const std::int64_t g = a.grid, per_tile = g * g;
  std::vector<std::int64_t> src;
  src.reserve(static_cast<std::size_t>(a.image_tokens()));
  for (std::int64_t j = 0; j < per_tile; ++j) src.push_back(j);  // the base tile
  for (int r = a.row0; r < a.row0 + a.rows; ++r) {
    for (int c = a.col0; c < a.col0 + a.cols; ++c) {
      const std::int64_t tile = 1 + static_cast<std::int64_t>(r / a.grid) * a.tiles_x + c / a.grid;
      src.push_back(tile * per_tile + static_cast<std::int64_t>(r % a.grid) * g + c % a.grid);
    }
    src.push_back(-1);
  }
  return src;
}

anyres_layout coarser_layout(const anyres_layout& a, int grid) {
  if (grid < 1 || grid > a.grid) {
    throw error("llava: anyres: a coarser grid of " + std::to_string(grid) + " per tile side must be in [1, " +
                std::to_string(a.grid) + "]");
  }
  anyres_layout c = a;
  c.grid = grid;
  set_unpadded_window(c);
  return c;
}

std::vector<float> pack_anyres_visionzip(const anyres_layout& a, const std::vector<std::vector<float>>& tile_rows,
                                         const std::vector<std::vector<std::int32_t>>& dominant, std::int64_t D) {
  const auto tiles = static_cast<std::size_t>(a.tile_count());
  if (tile_rows.size() != tiles || dominant.size() != tiles) {
    throw error("llava: anyres: VisionZip packing needs " + std::to_string(tiles) + " tiles, got " +
                std::to_string(tile_rows.size()) + " row sets and " + std::to_string(dominant.size()) + " patch lists");
  }
  const auto row = [&](std::size_t t, std::size_t r) { return tile_rows[t].begin() + static_cast<std::ptrdiff_t>(r) * D; };
  std::vector<float> out(tile_rows[0]);  // the base tile as the method gave it
  // crops: the dominant patches where they lie on the crops' joint grid (row-major, no unpadding)
  const int g = a.grid;
  std::vector<std::size_t> next(tiles, 0);  // per tile: the next dominant patch (ascending)
  for (int r = 0; r < a.tiles_y * g; ++r) {
    for (int c = 0; c < a.tiles_x * g; ++c) {
      const std::size_t t = 1 + static_cast<std::size_t>(r / g) * a.tiles_x + c / g;
      const std::int32_t patch = (r % g) * g + c % g;
      if (next[t] < dominant[t].size() && dominant[t][next[t]] == patch) {
        out.insert(out.end(), row(t, 1 + next[t]), row(t, 2 + next[t]));
        ++next[t];
      }
    }
  }
  for (std::size_t t = 1; t < tiles; ++t) {
    if (next[t] != dominant[t].size() || tile_rows[t].size() < (1 + next[t]) * static_cast<std::size_t>(D)) {
      throw error("llava: anyres: VisionZip packing: tile " + std::to_string(t) + "'s " + std::to_string(dominant[t].size()) +
                  " dominant patches must be distinct patch indices in [0, " + std::to_string(g * g) +
                  "), ascending, each with a row after the CLS row");
    }
  }
  for (std::size_t t = 1; t < tiles; ++t) out.insert(out.end(), row(t, 0), row(t, 1));  // the crops' CLS rows
  for (std::size_t t = 1; t < tiles; ++t) {  // the crops' contextual rows
    out.insert(out.end(), row(t, 1 + dominant[t].size()), tile_rows[t].end());
  }
  return out;
}

void pack_anyres(const anyres_layout& a, const float* tile_rows, const float* newline, std::int64_t D, float* out) {
  const std::int64_t g = a.grid, per_tile = g * g;
  const auto row_bytes = static_cast<std::size_t>(D) * sizeof(float);
  std::memcpy(out, tile_rows, static_cast<std::size_t>(per_tile) * row_bytes);  // the base tile
  float* o = out + per_tile * D;
  for (int r = a.row0; r < a.row0 + a.rows; ++r) {
    const int ty = r / a.grid, gy = r % a.grid;
    for (int c = a.col0; c < a.col0 + a.cols; ++c) {
      const int tx = c / a.grid, gx = c % a.grid;
      const std::int64_t tile = 1 + static_cast<std::int64_t>(ty) * a.tiles_x + tx;
      std::memcpy(o, tile_rows + (tile * per_tile + static_cast<std::int64_t>(gy) * g + gx) * D, row_bytes);
      o += D;
    }
    std::memcpy(o, newline, row_bytes);
    o += D;
  }
}

}  // namespace llava
