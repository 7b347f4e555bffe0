// llava: image decoding (PNG: stb_image, JPEG: libjpeg), PIL-exact bicubic resize, CLIP preprocessing, overlay.
#include "llava/image.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>

#include <stb_image.h>
#include <stb_image_write.h>

#include <csetjmp>
#include <cstdio>
#include <jpeglib.h>
#include <jerror.h>  // JWRN_JPEG_EOF

namespace llava {
using tokensel::index_t;
namespace {

[[noreturn]] void fail(const std::string& name, const std::string& problem) {
  throw image_error("llava: image " + name + ": " + problem);
}

std::uint32_t be32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
}

// The one image-size rule (config.hpp, max_image_pixels: PIL's decompression-bomb limit) over
// the largest buffer the image will need: w x h, or the padded square max(w, h)^2 when padding.
// Checked from the header, before any pixel is decoded, and again before padding.
void check_pixel_count(std::uint64_t width, std::uint64_t height, bool pad, const std::string& name) {
  if (width * height > max_image_pixels) {
    fail(name, std::to_string(width) + " x " + std::to_string(height) + " pixels exceeds the limit of " +
                   std::to_string(max_image_pixels) + " (PIL's decompression-bomb limit)");
  }
  const std::uint64_t side = std::max(width, height);
  if (pad && side * side > max_image_pixels) {
    fail(name, std::to_string(width) + " x " + std::to_string(height) + " pixels padded to a " + std::to_string(side) +
                   " x " + std::to_string(side) + " square exceeds the limit of " + std::to_string(max_image_pixels) +
                   " pixels (PIL's decompression-bomb limit; --no-pad avoids the padding)");
  }
}

// CRC-32 of PNG chunks (ISO 3309 / ITU-T V.42, polynomial 0xEDB88320).
std::uint32_t crc32_update(std::uint32_t crc, const std::uint8_t* p, std::size_t n) {
  static const auto table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  for (std::size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return crc;
}

// stb_image decodes some damaged files without complaint (it reads zeros past the end), which
// would feed garbage to the model; PIL refuses them ("image file is truncated"). Check that the
// container is complete before decoding.
enum class image_format { png, jpeg };

// The format from the file's signature, after checking the file is complete. Only PNG and JPEG
// reach a decoder: stb_image would otherwise guess among its other formats (TGA has no signature
// at all), and its less-used decoders read out of bounds on hostile input (a fuzz finding).
image_format detect_format(std::span<const std::uint8_t> b, const std::string& name) {
  static constexpr std::uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (b.size() >= 8 && std::memcmp(b.data(), png_sig, 8) == 0) {
    std::size_t pos = 8;
    while (true) {
      if (b.size() - pos < 12) fail(name, "truncated PNG (no IEND chunk)");
      const std::uint32_t len = be32(b.data() + pos);
      if (len > b.size() - pos - 12) fail(name, "truncated PNG (chunk runs past the end of the file)");
      // PIL checks the CRC of every chunk it parses (all but the image data, IDAT) and refuses a
      // mismatch ("broken PNG file"); stb_image checks none.
      if (std::memcmp(b.data() + pos + 4, "IDAT", 4) != 0) {
        const std::uint32_t crc = crc32_update(0xFFFFFFFFu, b.data() + pos + 4, 4 + static_cast<std::size_t>(len)) ^ 0xFFFFFFFFu;
        if (crc != be32(b.data() + pos + 8 + len)) {
          fail(name, "broken PNG (bad CRC in chunk '" + std::string(reinterpret_cast<const char*>(b.data() + pos + 4), 4) + "')");
        }
      }
      if (std::memcmp(b.data() + pos + 4, "IEND", 4) == 0) return image_format::png;
      pos += 12 + static_cast<std::size_t>(len);
    }
  }
  if (b.size() >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF) {
    // Entropy-coded data never contains FF D9 (FF is stuffed as FF 00), so an EOI after the
    // start of the scan data marks a complete image.
    for (std::size_t i = b.size() - 1; i >= 3; --i) {
      if (b[i - 1] == 0xFF && b[i] == 0xD9) return image_format::jpeg;
    }
    fail(name, "truncated JPEG (no end-of-image marker)");
  }
  fail(name, "not a PNG or JPEG file (unrecognised signature); PNG and JPEG are supported");
}

// PIL's bicubic kernel (Resample.c, a = -0.5).
double bicubic(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

constexpr int precision_bits = 32 - 8 - 2;  // PIL's PRECISION_BITS for 8-bit images

// One output position's taps: first input index and fixed-point weights.
struct taps {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<std::int32_t> weights;  // [out, ksize]
};

// PIL's precompute_coeffs + normalize_coeffs_8bpc for the box [0, in_size), for the outputs
// [out0, out0 + count) of a resize to out_size (each output's taps depend on its position only).
taps precompute(int in_size, int out_size, int out0, int count) {
  const double scale = static_cast<double>(static_cast<float>(in_size)) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = 2.0 * filterscale;
  taps t;
  t.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  t.first.resize(count);
  t.count.resize(count);
  t.weights.assign(static_cast<std::size_t>(count) * t.ksize, 0);
  std::vector<double> k(t.ksize);
  for (int i = 0; i < count; ++i) {
    const int xx = out0 + i;
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      k[x] = bicubic((x + xmin - center + 0.5) * ss);
      ww += k[x];
    }
    for (int x = 0; x < xmax; ++x) {
      if (ww != 0.0) k[x] /= ww;
      const double v = k[x] * (1 << precision_bits);
      t.weights[static_cast<std::size_t>(i) * t.ksize + x] = static_cast<std::int32_t>(k[x] < 0 ? -0.5 + v : 0.5 + v);
    }
    t.first[i] = xmin;
    t.count[i] = xmax;
  }
  return t;
}

std::uint8_t clip8(std::int32_t v) {
  const std::int32_t s = v >> precision_bits;  // arithmetic shift, as in PIL
  return static_cast<std::uint8_t>(std::clamp<std::int32_t>(s, 0, 255));
}

// JPEG through libjpeg(-turbo), the decoder PIL uses: with its defaults (islow IDCT, fancy
// upsampling) the RGB output is bit-identical to PIL's, where stb_image's differs by up to a few
// levels. Errors longjmp out of libjpeg into a one-line image_error.
struct jpeg_failure {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
  bool pad = false;  // the padded square is checked against the pixel limit too
};

// The libjpeg calls, in a frame that owns no C++ object (longjmp skips no destructor and leaves
// no modified local behind). Returns false with err.message set when libjpeg failed.
bool run_libjpeg(jpeg_decompress_struct& cinfo, jpeg_failure& err, std::span<const std::uint8_t> bytes,
                 rgb_image& img) {
  if (setjmp(err.jump)) return false;
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, bytes.data(), static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(&cinfo, TRUE);
  if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
    std::snprintf(err.message, sizeof err.message, "CMYK JPEG is not supported; convert it to RGB");
    return false;
  }
  if (std::uint64_t{cinfo.image_width} * cinfo.image_height > max_image_pixels) {
    std::snprintf(err.message, sizeof err.message, "%u x %u pixels exceeds the limit of %llu (PIL's decompression-bomb limit)",
                  cinfo.image_width, cinfo.image_height, static_cast<unsigned long long>(max_image_pixels));
    return false;
  }
  if (err.pad) {
    const std::uint64_t side = std::max(cinfo.image_width, cinfo.image_height);
    if (side * side > max_image_pixels) {
      std::snprintf(err.message, sizeof err.message,
                    "%u x %u pixels padded to a %llu x %llu square exceeds the limit of %llu pixels (PIL's "
                    "decompression-bomb limit; --no-pad avoids the padding)",
                    cinfo.image_width, cinfo.image_height, static_cast<unsigned long long>(side),
                    static_cast<unsigned long long>(side), static_cast<unsigned long long>(max_image_pixels));
      return false;
    }
  }
  cinfo.out_color_space = JCS_RGB;
  jpeg_start_decompress(&cinfo);
  img.width = static_cast<int>(cinfo.output_width);
  img.height = static_cast<int>(cinfo.output_height);
  img.pixels.resize(static_cast<std::size_t>(img.width) * img.height * 3);
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = img.at(0, static_cast<int>(cinfo.output_scanline));
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_decompress(&cinfo);
  return true;
}

rgb_image decode_jpeg(std::span<const std::uint8_t> bytes, const std::string& name, bool pad) {
  jpeg_decompress_struct cinfo{};
  jpeg_failure err{};
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = [](j_common_ptr c) {
    auto* e = reinterpret_cast<jpeg_failure*>(c->err);
    (*c->err->format_message)(c, e->message);
    std::longjmp(e->jump, 1);
  };
  err.mgr.output_message = [](j_common_ptr) {};
  // Warnings are ignored (as PIL does: corrupt-data notes), except the data ending inside the
  // entropy-coded segment (the file ends, JWRN_JPEG_EOF, or a marker comes where data should,
  // JWRN_HIT_MARKER): libjpeg then pads with grey; PIL refuses a cut file ("image file is
  // truncated").
  err.mgr.emit_message = [](j_common_ptr c, int level) {
    if (level < 0 && (c->err->msg_code == JWRN_JPEG_EOF || c->err->msg_code == JWRN_HIT_MARKER)) {
      auto* e = reinterpret_cast<jpeg_failure*>(c->err);
      std::snprintf(e->message, sizeof e->message, "truncated JPEG: the data ends inside the compressed image");
      std::longjmp(e->jump, 1);
    }
    if (level < 0) c->err->num_warnings++;
  };
  err.pad = pad;
  rgb_image img;
  const bool ok = run_libjpeg(cinfo, err, bytes, img);
  jpeg_destroy_decompress(&cinfo);
  if (!ok) fail(name, std::string("cannot decode JPEG (") + err.message + ")");
  return img;
}

}  // namespace

const char* jpeg_decoder() noexcept { return "libjpeg"; }

rgb_image decode_image(std::span<const std::uint8_t> bytes, const std::string& name, bool pad) {
  if (bytes.empty()) fail(name, "empty file");
  if (bytes.size() > static_cast<std::size_t>(INT32_MAX)) fail(name, "file too large");
  const image_format format = detect_format(bytes, name);
  // JPEG never reaches stb_image: its JPEG decoder reads out of bounds on hostile input (fuzzing).
  if (format == image_format::jpeg) return decode_jpeg(bytes, name, pad);
  auto stb_failure = [&name] {
    const char* why = stbi_failure_reason();
    fail(name, std::string("cannot decode (") + (why ? why : "unknown error") + "); PNG and JPEG are supported");
  };
  // The header first: a tiny file may declare a huge image, refused before any pixel is decoded.
  int w = 0, h = 0, channels = 0;
  if (stbi_info_from_memory(bytes.data(), static_cast<int>(bytes.size()), &w, &h, &channels) == 0) stb_failure();
  check_pixel_count(static_cast<std::uint64_t>(w), static_cast<std::uint64_t>(h), pad, name);
  std::unique_ptr<stbi_uc, void (*)(void*)> data(
      stbi_load_from_memory(bytes.data(), static_cast<int>(bytes.size()), &w, &h, &channels, 3),
      stbi_image_free);
  if (!data) stb_failure();
  if (w <= 0 || h <= 0) fail(name, "image has no pixels");
  rgb_image img;
  img.width = w;
  img.height = h;
  img.pixels.assign(data.get(), data.get() + static_cast<std::size_t>(w) * h * 3);
  return img;
}

rgb_image load_image(const std::filesystem::path& path, bool pad) {
  const std::string name = path.string();
  std::string bytes;
  try {  // the one file rule: a regular file of at most 1 GiB (FIFOs, devices, link loops refused)
    bytes = read_input_file(path, max_image_file_bytes, "an image");
  } catch (const error& e) {
    std::string msg = e.what();
    const std::string head = "llava: " + name + ": ";
    if (msg.rfind(head, 0) == 0) msg.erase(0, head.size());
    fail(name, msg == "cannot open: no such file" ? "no such file" : msg);
  }
  return decode_image(std::span(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()), name, pad);
}

std::array<std::uint8_t, 3> mean_colour(const std::array<float, 3>& mean) {
  std::array<std::uint8_t, 3> c{};
  // Python: int(x * 255) with x the Python float of the processor config (a double).
  for (int i = 0; i < 3; ++i) c[i] = static_cast<std::uint8_t>(static_cast<int>(static_cast<double>(mean[i]) * 255.0));
  return c;
}

rgb_image pad_to_square(const rgb_image& image, std::array<std::uint8_t, 3> colour) {
  if (image.width == image.height) return image;
  const int side = std::max(image.width, image.height);
  rgb_image out;
  out.width = out.height = side;
  out.pixels.resize(static_cast<std::size_t>(side) * side * 3);
  for (std::size_t i = 0; i < out.pixels.size(); i += 3) std::memcpy(&out.pixels[i], colour.data(), 3);
  const int ox = (side - image.width) / 2, oy = (side - image.height) / 2;
  for (int y = 0; y < image.height; ++y) {
    std::memcpy(out.at(ox, oy + y), image.at(0, y), static_cast<std::size_t>(image.width) * 3);
  }
  return out;
}

namespace {

/// One horizontal pass: out(i, y) = the taps th[i] over row src_y0 + y of src, whose column 0 is
/// input column src_x0 (th holds input columns). out: th's outputs x rows.
rgb_image pass_x(const rgb_image& src, const taps& th, int src_x0, int src_y0, int rows) {
  const std::int32_t half = std::int32_t{1} << (precision_bits - 1);
  rgb_image out;
  out.width = static_cast<int>(th.first.size());
  out.height = rows;
  out.pixels.resize(static_cast<std::size_t>(out.width) * rows * 3);
  for (int y = 0; y < rows; ++y) {
    for (int i = 0; i < out.width; ++i) {
      const std::int32_t* k = &th.weights[static_cast<std::size_t>(i) * th.ksize];
      const std::uint8_t* row = src.at(th.first[i] - src_x0, src_y0 + y);
      std::int32_t s0 = half, s1 = half, s2 = half;
      for (int x = 0; x < th.count[i]; ++x) {
        s0 += row[3 * x + 0] * k[x];
        s1 += row[3 * x + 1] * k[x];
        s2 += row[3 * x + 2] * k[x];
      }
      std::uint8_t* o = out.at(i, y);
      o[0] = clip8(s0);
      o[1] = clip8(s1);
      o[2] = clip8(s2);
    }
  }
  return out;
}

/// One vertical pass: out(i, j) = the taps tv[j] over column src_x0 + i of src, whose row 0 is
/// input row src_y0 (tv holds input rows). out: cols x tv's outputs.
rgb_image pass_y(const rgb_image& src, const taps& tv, int src_y0, int src_x0, int cols) {
  const std::int32_t half = std::int32_t{1} << (precision_bits - 1);
  rgb_image out;
  out.width = cols;
  out.height = static_cast<int>(tv.first.size());
  out.pixels.resize(static_cast<std::size_t>(cols) * out.height * 3);
  for (int j = 0; j < out.height; ++j) {
    const std::int32_t* k = &tv.weights[static_cast<std::size_t>(j) * tv.ksize];
    for (int i = 0; i < cols; ++i) {
      std::int32_t s0 = half, s1 = half, s2 = half;
      for (int y = 0; y < tv.count[j]; ++y) {
        const std::uint8_t* p = src.at(src_x0 + i, tv.first[j] - src_y0 + y);
        s0 += p[0] * k[y];
        s1 += p[1] * k[y];
        s2 += p[2] * k[y];
      }
      std::uint8_t* o = out.at(i, j);
      o[0] = clip8(s0);
      o[1] = clip8(s1);
      o[2] = clip8(s2);
    }
  }
  return out;
}

/// The columns [x0, x0 + w) x rows [y0, y0 + h) of image (a pass that is skipped).
rgb_image window_of(const rgb_image& image, int x0, int y0, int w, int h) {
  rgb_image out;
  out.width = w;
  out.height = h;
  out.pixels.resize(static_cast<std::size_t>(w) * h * 3);
  for (int y = 0; y < h; ++y) std::memcpy(out.at(0, y), image.at(x0, y0 + y), static_cast<std::size_t>(w) * 3);
  return out;
}

}  // namespace

rgb_image resize_bicubic_window(const rgb_image& image, int width, int height, int x0, int y0, int w, int h) {
  if (width <= 0 || height <= 0 || image.width <= 0 || image.height <= 0 || w <= 0 || h <= 0 || x0 < 0 ||
      y0 < 0 || x0 > width - w || y0 > height - h) {
    throw image_error("llava: resize: bad size " + std::to_string(width) + "x" + std::to_string(height) +
                      " or window for a " + std::to_string(image.width) + "x" + std::to_string(image.height) + " image");
  }
  // PIL's ImagingResampleInner: a pass whose size does not change is skipped. Pillow >= 13 runs the
  // vertical pass first when the height shrinks by more than twice the pixels the width does
  // (Pillow PR #9549), else the horizontal pass first, over only the rows the vertical pass reads.
  // Each pass rounds to uint8, so the order changes bits. Only the window's outputs are computed
  // (each output depends on its taps only: the same bits as the whole resize, cropped).
  const bool horizontal = width != image.width, vertical = height != image.height;
  const taps tv = vertical ? precompute(image.height, height, y0, h) : taps{};
  const taps th = horizontal ? precompute(image.width, width, x0, w) : taps{};
  const int dy = image.height - height, dx = image.width - width;
  if (dy > 0 && dy > 2 * dx) {  // vertical first, over the columns the horizontal pass reads
    const int c0 = horizontal ? th.first.front() : x0;
    const int c1 = horizontal ? th.first.back() + th.count.back() : x0 + w;
    const rgb_image tmp = pass_y(image, tv, 0, c0, c1 - c0);
    return horizontal ? pass_x(tmp, th, c0, 0, h) : tmp;
  }
  const int r0 = vertical ? tv.first.front() : y0;
  const int r1 = vertical ? tv.first.back() + tv.count.back() : y0 + h;
  const rgb_image tmp = horizontal ? pass_x(image, th, 0, r0, r1 - r0) : window_of(image, x0, r0, w, r1 - r0);
  return vertical ? pass_y(tmp, tv, r0, 0, w) : tmp;
}

rgb_image resize_bicubic(const rgb_image& image, int width, int height) {
  return resize_bicubic_window(image, width, height, 0, 0, width, height);
}

std::array<int, 2> shortest_edge_size(int width, int height, int shortest) {
  const bool portrait = width <= height;
  const int short_side = portrait ? width : height, long_side = portrait ? height : width;
  if (short_side <= 0 || shortest <= 0) throw image_error("llava: resize: empty image or size");
  // Python: int(size * long / short), true division of ints (a correctly rounded double).
  const double new_long_d = static_cast<double>(static_cast<long long>(shortest) * long_side) / short_side;
  if (new_long_d >= 1 << 30) {
    throw image_error("llava: image " + std::to_string(width) + "x" + std::to_string(height) +
                      ": aspect ratio too extreme to resize (use padding)");
  }
  const int new_long = static_cast<int>(new_long_d);
  return portrait ? std::array<int, 2>{shortest, new_long} : std::array<int, 2>{new_long, shortest};
}

rgb_image center_crop(const rgb_image& image, int width, int height) {
  if (width > image.width || height > image.height || width <= 0 || height <= 0) {
    throw image_error("llava: center crop " + std::to_string(width) + "x" + std::to_string(height) +
                      " does not fit in a " + std::to_string(image.width) + "x" + std::to_string(image.height) + " image");
  }
  const int top = (image.height - height) / 2, left = (image.width - width) / 2;
  rgb_image out;
  out.width = width;
  out.height = height;
  out.pixels.resize(static_cast<std::size_t>(width) * height * 3);
  for (int y = 0; y < height; ++y) std::memcpy(out.at(0, y), image.at(left, top + y), static_cast<std::size_t>(width) * 3);
  return out;
}

preprocessed_image preprocess(const rgb_image& image, const preprocess_options& options) {
  if (options.size <= 0) throw image_error("llava: preprocess: image size must be positive");
  crop_geometry g;
  g.input_width = image.width;
  g.input_height = image.height;
  g.size = options.size;
  rgb_image padded;
  const rgb_image* src = &image;
  if (options.pad && image.width != image.height) {
    check_pixel_count(static_cast<std::uint64_t>(image.width), static_cast<std::uint64_t>(image.height), true, "to preprocess");
    padded = pad_to_square(image, mean_colour(options.mean));
    g.pad_x = (padded.width - image.width) / 2;
    g.pad_y = (padded.height - image.height) / 2;
    src = &padded;
  }
  g.padded_width = src->width;
  g.padded_height = src->height;
  const auto [rw, rh] = shortest_edge_size(src->width, src->height, options.size);
  g.resized_width = rw;
  g.resized_height = rh;
  g.crop_x = (rw - options.size) / 2;
  g.crop_y = (rh - options.size) / 2;
  // Only the centre-crop window of the resize is computed: the same pixels as resizing the whole
  // image and cropping, in O(size^2) memory whatever the aspect ratio.
  const rgb_image crop = resize_bicubic_window(*src, rw, rh, g.crop_x, g.crop_y, options.size, options.size);

  preprocessed_image out;
  out.size = options.size;
  out.geometry = g;
  const std::size_t plane = static_cast<std::size_t>(options.size) * options.size;
  out.pixels.resize(3 * plane);
  // transformers: rescale in double then cast to float32; normalise in float32.
  constexpr double scale = 1.0 / 255.0;
  for (std::size_t i = 0; i < plane; ++i) {
    for (int c = 0; c < 3; ++c) {
      const float x = static_cast<float>(crop.pixels[3 * i + c] * scale);
      out.pixels[c * plane + i] = (x - options.mean[c]) / options.std[c];
    }
  }
  return out;
}

void write_png(const std::filesystem::path& path, const rgb_image& image) {
  // Encoded in memory, then tokensel's checked write (temporary + rename): a failed write (a full
  // disk, /dev/full) is an error and leaves no partial file behind.
  std::string png;
  auto append = [](void* ctx, void* data, int size) {
    static_cast<std::string*>(ctx)->append(static_cast<const char*>(data), static_cast<std::size_t>(size));
  };
  if (!stbi_write_png_to_func(append, &png, image.width, image.height, 3, image.pixels.data(), image.width * 3)) {
    throw image_error("llava: overlay " + path.string() + ": cannot encode PNG");
  }
  try {
    write_output_file(path, png, "overlay");
  } catch (const error& e) {
    throw image_error(e.what());
  }
}

void write_overlay(const std::filesystem::path& path, const rgb_image& image,
                   std::span<const tokensel::token_index> kept, tokensel::token_grid grid,
                   const crop_geometry& g) {
  if (grid.rows <= 0 || grid.cols <= 0) throw image_error("llava: overlay: empty patch grid");
  if (g.input_width != image.width || g.input_height != image.height || g.size <= 0 ||
      g.padded_width <= 0 || g.padded_height <= 0) {
    throw image_error("llava: overlay: crop geometry does not belong to this image");
  }
  std::vector<char> keep(static_cast<std::size_t>(grid.size()), 0);
  for (const auto t : kept) {
    if (t < 0 || t >= grid.size()) {
      throw image_error("llava: overlay: kept index " + std::to_string(t) + " outside the " +
                        std::to_string(grid.rows) + "x" + std::to_string(grid.cols) + " patch grid");
    }
    keep[static_cast<std::size_t>(t)] = 1;
  }
  // Map each input pixel centre through pad -> resize (PIL's centre mapping) -> crop to a patch.
  auto patch_coord = [&](int p, int pad, int padded, int resized, int crop, index_t cells) -> index_t {
    const double r = (p + pad + 0.5) * resized / padded - crop;
    if (r < 0 || r >= g.size) return -1;
    return std::min<index_t>(static_cast<index_t>(r * cells / g.size), cells - 1);
  };
  std::vector<index_t> col_of(image.width), row_of(image.height);
  for (int x = 0; x < image.width; ++x) col_of[x] = patch_coord(x, g.pad_x, g.padded_width, g.resized_width, g.crop_x, grid.cols);
  for (int y = 0; y < image.height; ++y) row_of[y] = patch_coord(y, g.pad_y, g.padded_height, g.resized_height, g.crop_y, grid.rows);

  rgb_image out = image;
  for (int y = 0; y < image.height; ++y) {
    for (int x = 0; x < image.width; ++x) {
      const index_t r = row_of[y], c = col_of[x];
      const bool inside = r >= 0 && c >= 0;
      if (inside && keep[static_cast<std::size_t>(grid.at(r, c))]) continue;
      // Dropped patches: a quarter of the brightness, pulled toward grey so they read as "off";
      // pixels the centre crop removed (never seen by the model): darker still.
      std::uint8_t* p = out.at(x, y);
      for (int ch = 0; ch < 3; ++ch) p[ch] = static_cast<std::uint8_t>(inside ? 24 + p[ch] / 4 : p[ch] / 8);
    }
  }
  write_png(path, out);
}

}  // namespace llava
