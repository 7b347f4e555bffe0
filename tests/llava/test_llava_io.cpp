// LLaVA runtime I/O: tokenizer ids against transformers' goldens, CLIP preprocessing against
// transformers' pixel_values, PIL-exact bicubic resize, image errors, the kept-patch overlay.
// Goldens: tests/data/llava-tiny-*/golden.{json,safetensors} (tools/llava/make_tiny_llava.py).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sys/stat.h>
#include <unistd.h>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <tokensel/io/safetensors.hpp>

#include "llava/image.hpp"
#include "llava/tokenizer.hpp"

namespace fs = std::filesystem;

namespace {

const fs::path data_dir = LLAVA_TEST_DATA;
const fs::path images_dir = data_dir / "llava-images";
const char* variants[] = {"llava-tiny-fp32", "llava-tiny-bf16"};

nlohmann::json golden(const std::string& variant) {
  std::ifstream in(data_dir / variant / "golden.json");
  return nlohmann::json::parse(in);
}

std::vector<std::uint8_t> read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

fs::path temp_file(const std::string& name) {
  return fs::temp_directory_path() / ("llava_io_" + std::to_string(::getpid()) + "_" + name);
}

void write_bytes(const fs::path& p, const std::vector<std::uint8_t>& b) {
  std::ofstream out(p, std::ios::binary);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const llava::error& e) {
    return e.what();
  }
  return "<no error>";
}

}  // namespace

// ---- tokenizer -----------------------------------------------------------------------------

TEST(LlavaTokenizer, GoldenPromptIdsAndTemplates) {
  for (const char* v : variants) {
    SCOPED_TRACE(v);
    const auto g = golden(v);
    const llava::tokenizer tok(data_dir / v, g["image_token_index"].get<int>(), 1001);
    EXPECT_EQ(tok.image_id(), 1000);
    EXPECT_EQ(tok.pad_id(), 1001);
    EXPECT_EQ(tok.bos_id(), 1);
    EXPECT_EQ(tok.eos_id(), 2);
    // fp32: transformers 5's Metaspace prepend_scheme "first"; bf16: "always" (legacy-like).
    EXPECT_EQ(tok.rule(), std::string(v) == "llava-tiny-fp32" ? llava::prefix_rule::first_segment
                                                               : llava::prefix_rule::unless_space);
    const std::string tmpl = g["template"];
    const std::string prompt = llava::format_prompt(llava::parse_template(tmpl), g["question"].get<std::string>());
    EXPECT_EQ(prompt, g["prompt"].get<std::string>());
    const auto ids = tok.encode_prompt(prompt);
    EXPECT_EQ(ids, g["input_ids"].get<std::vector<std::int32_t>>());
    EXPECT_EQ(ids.at(g["image_token_position"].get<std::size_t>()), 1000);
  }
}

TEST(LlavaTokenizer, GoldenTokenizerCases) {
  for (const char* v : variants) {
    SCOPED_TRACE(v);
    const auto g = golden(v);
    const llava::tokenizer tok(data_dir / v, 1000, 1001);
    ASSERT_GE(g["tokenizer_cases"].size(), 10u);
    for (const auto& c : g["tokenizer_cases"]) {
      const std::string text = c["text"];
      SCOPED_TRACE(text);
      const auto ids = tok.encode(text);
      EXPECT_EQ(ids, c["ids"].get<std::vector<std::int32_t>>());
      if (c.contains("pieces")) {
        std::vector<std::string> pieces;
        for (auto id : ids) pieces.push_back(tok.piece(id));
        EXPECT_EQ(pieces, c["pieces"].get<std::vector<std::string>>());
      }
    }
  }
}

TEST(LlavaTokenizer, DecodeMatchesTransformers) {
  for (const char* v : variants) {
    SCOPED_TRACE(v);
    const auto g = golden(v);
    const llava::tokenizer tok(data_dir / v, 1000, 1001);
    // golden greedy_text = tokenizer.decode(greedy_tokens, skip_special_tokens=True)
    EXPECT_EQ(tok.decode(g["greedy_tokens"].get<std::vector<std::int32_t>>()), g["greedy_text"].get<std::string>());
  }
  const llava::tokenizer tok(data_dir / variants[0], 1000, 1001);
  // Round trips (BOS and <image> are special: skipped), byte fallback included.
  for (const std::string text : {"Hello world", "two  spaces and trailing ", "unicode: caf\xC3\xA9, \xE6\x9D\xB1\xE4\xBA\xAC \xF0\x9F\x99\x82",
                                 "line one\nline two\n\nend"}) {
    EXPECT_EQ(tok.decode(tok.encode(text)), text);
  }
  const auto ids = tok.encode("USER: <image>\nhi");
  EXPECT_EQ(tok.decode(ids), "USER: \nhi");
  EXPECT_EQ(tok.decode(ids, false), "<s> USER: <image>\nhi");  // transformers 5.23 output
  // A lone invalid UTF-8 byte token decodes to U+FFFD, as tokenizers' ByteFallback does.
  const std::int32_t byte_ff = 3 + 0xFF;  // <0xFF> (byte pieces follow <unk> <s> </s>)
  ASSERT_EQ(tok.piece(byte_ff), "<0xFF>");
  EXPECT_EQ(tok.decode(std::vector<std::int32_t>{byte_ff}), "\xEF\xBF\xBD");
}

TEST(LlavaTokenizer, Templates) {
  EXPECT_EQ(llava::format_prompt(llava::prompt_template::llava_hf, "Why?"), "USER: <image>\nWhy? ASSISTANT:");
  EXPECT_EQ(llava::format_prompt(llava::prompt_template::vicuna_v1, "Why?"),
            "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
            "helpful, detailed, and polite answers to the user's questions. USER: <image>\nWhy? ASSISTANT:");
  // A question with its own <image> keeps it where it is; raw leaves the text alone.
  EXPECT_EQ(llava::format_prompt(llava::prompt_template::llava_hf, "Look: <image> ok"), "USER: Look: <image> ok ASSISTANT:");
  EXPECT_EQ(llava::format_prompt(llava::prompt_template::raw, "x"), "x");
  EXPECT_EQ(llava::parse_template("vicuna"), llava::prompt_template::vicuna_v1);
  EXPECT_EQ(llava::parse_template("vicuna_v1"), llava::prompt_template::vicuna_v1);
  EXPECT_EQ(llava::parse_template("llava-hf"), llava::prompt_template::llava_hf);
  EXPECT_NE(error_of([] { llava::parse_template("chatml"); }).find("--template chatml: unknown template"), std::string::npos);
}

TEST(LlavaTokenizer, Errors) {
  const llava::tokenizer tok(data_dir / variants[0], 1000, 1001);
  const auto no_image = error_of([&] { tok.encode_prompt("USER: hello ASSISTANT:"); });
  EXPECT_EQ(no_image, "llava: prompt: no <image> placeholder in the prompt (put <image> where the image goes)");
  EXPECT_NE(error_of([&] { tok.encode_prompt("<image><image>"); }).find("2 <image> placeholders"), std::string::npos);
  EXPECT_NE(error_of([&] { tok.piece(5000); }).find("token id 5000 outside the vocabulary"), std::string::npos);
  const auto missing = error_of([] { llava::tokenizer t(data_dir / "no-such-model", 1000, 1001); });
  EXPECT_EQ(missing, "llava: tokenizer: " + (data_dir / "no-such-model").string() + ": no such file or directory");
  // A file that is not a SentencePiece model.
  const auto bogus = temp_file("bogus.model");
  write_bytes(bogus, {0xFF, 0xFF, 0xFF, 0xFF, 0x07});
  const auto bad = error_of([&] { llava::tokenizer t(bogus, 1000, 1001); });
  EXPECT_NE(bad.find("not a SentencePiece model"), std::string::npos) << bad;
  fs::remove(bogus);
}

// ---- preprocessing -------------------------------------------------------------------------

TEST(LlavaImage, HelpersMatchTransformers) {
  EXPECT_EQ(llava::mean_colour(), (std::array<std::uint8_t, 3>{122, 116, 104}));
  // get_resize_output_image_size: int(112 * 150 / 100) = 168, int(112 * 128 / 96) = 149
  EXPECT_EQ(llava::shortest_edge_size(150, 100, 112), (std::array<int, 2>{168, 112}));
  EXPECT_EQ(llava::shortest_edge_size(96, 128, 112), (std::array<int, 2>{112, 149}));
  EXPECT_EQ(llava::shortest_edge_size(640, 480, 336), (std::array<int, 2>{448, 336}));
  EXPECT_EQ(llava::shortest_edge_size(336, 336, 336), (std::array<int, 2>{336, 336}));
}

TEST(LlavaImage, BicubicIsPilExact) {
  // Expected values: PIL 13 Image.resize(..., Resampling.BICUBIC) of this 7x3 image.
  const std::vector<std::uint8_t> row0 = {0, 10, 200, 255, 0, 50, 30, 30, 30, 200, 100, 0, 5, 250, 128, 90, 60, 255, 0, 0, 0};
  llava::rgb_image img{7, 3, {}};
  img.pixels = row0;
  img.pixels.insert(img.pixels.end(), 21, 77);
  for (int x = 6; x >= 0; --x) img.pixels.insert(img.pixels.end(), row0.begin() + 3 * x, row0.begin() + 3 * x + 3);
  const auto down = llava::resize_bicubic(img, 3, 2);  // both passes, downscale (support scaled)
  EXPECT_EQ(down.pixels, (std::vector<std::uint8_t>{105, 28, 90, 97, 104, 61, 51, 81, 116, 51, 81, 116, 97, 104, 61, 105, 28, 90}));
  const auto up = llava::resize_bicubic(img, 11, 5);  // upscale: overshoot clipped to [0, 255]
  const std::vector<std::vector<int>> red = {{0, 121, 255, 76, 78, 209, 71, 8, 89, 39, 0},
                                             {30, 105, 189, 79, 78, 151, 73, 35, 76, 52, 30},
                                             {77, 77, 77, 77, 77, 77, 77, 77, 77, 77, 77},
                                             {30, 52, 76, 35, 73, 151, 78, 79, 189, 105, 30},
                                             {0, 39, 89, 8, 71, 209, 78, 76, 255, 121, 0}};
  for (int y = 0; y < 5; ++y) {
    for (int x = 0; x < 11; ++x) EXPECT_EQ(up.at(x, y)[0], red[y][x]) << x << "," << y;
  }
  EXPECT_EQ(llava::resize_bicubic(img, 7, 3).pixels, img.pixels);  // same size: a copy
}

TEST(LlavaImage, ResizeWindowEqualsCropOfFullResize) {
  llava::rgb_image img{37, 23, {}};
  for (int i = 0; i < 37 * 23 * 3; ++i) img.pixels.push_back(static_cast<std::uint8_t>((i * 7919) % 251));
  for (const auto& [w, h] : {std::array<int, 2>{61, 40}, {20, 13}, {37, 50}, {90, 23}}) {
    const auto full = llava::resize_bicubic(img, w, h);
    const int x0 = w / 3, y0 = h / 4, cw = w / 2, ch = h / 2;
    const auto win = llava::resize_bicubic_window(img, w, h, x0, y0, cw, ch);
    ASSERT_EQ(win.width, cw);
    ASSERT_EQ(win.height, ch);
    for (int y = 0; y < ch; ++y) {
      for (int x = 0; x < cw; ++x) ASSERT_TRUE(std::equal(win.at(x, y), win.at(x, y) + 3, full.at(x0 + x, y0 + y))) << w << "x" << h;
    }
  }
  // A 1 x 20000 strip without padding: the resize would be 112 x 2240000, only the crop is built.
  llava::rgb_image strip{1, 20000, std::vector<std::uint8_t>(60000, 200)};
  llava::preprocess_options opt;
  opt.size = 112;
  opt.pad = false;
  const auto out = llava::preprocess(strip, opt);
  EXPECT_EQ(out.geometry.resized_height, 2240000);
  EXPECT_EQ(out.pixels.size(), 3u * 112 * 112);
  EXPECT_NE(error_of([] { llava::shortest_edge_size(1, 10000000, 336); }).find("aspect ratio too extreme"), std::string::npos);
}

TEST(LlavaImage, PixelValuesMatchTransformers) {
  // PNG (stb_image) and JPEG (libjpeg, PIL's decoder) pixels are bit-exact (docs/llava.md).
  ASSERT_STREQ(llava::jpeg_decoder(), "libjpeg");
  const auto g = golden(variants[0]);
  const fs::path golden_file = data_dir / variants[0] / "golden.safetensors";
  int checked = 0;
  for (const auto& [key, info] : g["preprocessing"].items()) {
    SCOPED_TRACE(key);
    const std::string file = info["image"];
    const bool pad = info["pad"];
    const auto img = llava::load_image(images_dir / file);
    llava::preprocess_options opt;
    opt.size = 112;
    opt.pad = pad;
    const auto out = llava::preprocess(img, opt);
    // Geometry as transformers computed it.
    EXPECT_EQ(out.geometry.padded_width, info["size_before_resize"][0].get<int>());
    EXPECT_EQ(out.geometry.padded_height, info["size_before_resize"][1].get<int>());
    EXPECT_EQ(out.geometry.resized_width, info["resized"][0].get<int>());
    EXPECT_EQ(out.geometry.resized_height, info["resized"][1].get<int>());
    EXPECT_EQ(out.geometry.crop_x, info["crop_left"].get<int>());
    EXPECT_EQ(out.geometry.crop_y, info["crop_top"].get<int>());

    const auto ref = tokensel::safetensors::read_tensor(golden_file, key);
    const auto r = ref.data<float>();
    ASSERT_EQ(r.size(), out.pixels.size());
    double max_diff = 0, sum_diff = 0;
    for (std::size_t i = 0; i < r.size(); ++i) {
      const double d = std::abs(static_cast<double>(r[i]) - out.pixels[i]);
      max_diff = std::max(max_diff, d);
      sum_diff += d;
    }
    EXPECT_EQ(max_diff, 0.0);  // same bits
    ++checked;
  }
  EXPECT_EQ(checked, 4);
}

TEST(LlavaImage, GreyAndAlphaBecomeRgb) {
  // 2x1 grey+alpha PNG written by stb: grey replicated, alpha dropped (PIL convert("RGB")).
  const auto path = temp_file("ga.png");
  llava::rgb_image rgb{2, 1, {10, 10, 10, 200, 200, 200}};
  llava::write_png(path, rgb);
  const auto back = llava::load_image(path);
  EXPECT_EQ(back.width, 2);
  EXPECT_EQ(back.pixels, rgb.pixels);
  fs::remove(path);
}

// ---- errors --------------------------------------------------------------------------------

TEST(LlavaImage, Errors) {
  const auto missing = images_dir / "missing.png";
  EXPECT_EQ(error_of([&] { llava::load_image(missing); }), "llava: image " + missing.string() + ": no such file");
  EXPECT_NE(error_of([&] { llava::load_image(images_dir); }).find("is a directory"), std::string::npos);

  const auto text = temp_file("not_an_image.png");
  write_bytes(text, {'h', 'e', 'l', 'l', 'o', '\n'});
  const auto not_image = error_of([&] { llava::load_image(text); });
  EXPECT_EQ(not_image, "llava: image " + text.string() + ": not a PNG or JPEG file (unrecognised signature); PNG and JPEG are supported");

  const auto empty = temp_file("empty.png");
  write_bytes(empty, {});
  EXPECT_EQ(error_of([&] { llava::load_image(empty); }), "llava: image " + empty.string() + ": empty file");

  auto png = read_bytes(images_dir / "shapes.png");
  ASSERT_GT(png.size(), 100u);
  png.resize(png.size() / 2);
  const auto half_png = temp_file("truncated.png");
  write_bytes(half_png, png);
  EXPECT_NE(error_of([&] { llava::load_image(half_png); }).find("truncated PNG"), std::string::npos);

  auto jpg = read_bytes(images_dir / "scene.jpg");
  jpg.resize(jpg.size() - 200);
  const auto short_jpg = temp_file("truncated.jpg");
  write_bytes(short_jpg, jpg);
  EXPECT_NE(error_of([&] { llava::load_image(short_jpg); }).find("truncated JPEG"), std::string::npos);

  // A PNG signature followed by garbage chunks: decoder error, not a crash.
  std::vector<std::uint8_t> fake = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 0, 'I', 'E', 'N', 'D', 0, 0, 0, 0};
  const auto fake_png = temp_file("fake.png");
  write_bytes(fake_png, fake);
  // (its IEND chunk's CRC is wrong: refused before decoding, as PIL does)
  EXPECT_NE(error_of([&] { llava::load_image(fake_png); }).find("broken PNG (bad CRC in chunk 'IEND')"), std::string::npos);

  // Other formats never reach stb_image's format guessing (a fuzzed TGA-like input read out of
  // bounds inside libstb): BMP, GIF, a JPEG signature one byte late (the fuzz finding's start).
  const std::vector<std::vector<std::uint8_t>> others = {
      {'B', 'M', 0x3e, 0, 0, 0, 0, 0, 0, 0, 0x3e, 0, 0, 0, 0x28, 0},
      {'G', 'I', 'F', '8', '9', 'a', 1, 0, 1, 0, 0x80, 0, 0},
      {0x2d, 0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 'J', 'F', 'I', 0x20, 0x22, 0x2c, 0x23, 0x1c, 0x1c}};
  const auto other = temp_file("other_format.img");
  for (const auto& bytes : others) {
    write_bytes(other, bytes);
    EXPECT_NE(error_of([&] { llava::load_image(other); }).find("not a PNG or JPEG file"), std::string::npos);
  }

  // Declared sizes beyond PIL's decompression-bomb limit (2 x 89,478,485 pixels) are refused from
  // the header, before any pixel is decoded (a fuzzed 300-byte JPEG asked for 1.6 GB).
  std::vector<std::uint8_t> huge_png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R',
                                        0, 0, 0x36, 0xb0, 0, 0, 0x36, 0xb0, 8, 2, 0, 0, 0, 0x2b, 0xb9, 0x62, 0x3e,
                                        0, 0, 0, 0, 'I', 'E', 'N', 'D', 0xae, 0x42, 0x60, 0x82};
  const auto huge = temp_file("huge.png");
  write_bytes(huge, huge_png);
  EXPECT_NE(error_of([&] { llava::load_image(huge); }).find("14000 x 14000 pixels exceeds the limit of 178956970"), std::string::npos)
      << error_of([&] { llava::load_image(huge); });
  auto huge_jpg = read_bytes(images_dir / "scene.jpg");
  for (std::size_t i = 2; i + 8 < huge_jpg.size(); ++i) {  // SOFn: FF C0..C2, length, precision, height, width
    if (huge_jpg[i] == 0xFF && huge_jpg[i + 1] >= 0xC0 && huge_jpg[i + 1] <= 0xC2) {
      huge_jpg[i + 5] = 0x36, huge_jpg[i + 6] = 0xb0, huge_jpg[i + 7] = 0x36, huge_jpg[i + 8] = 0xb0;
      break;
    }
  }
  write_bytes(huge, huge_jpg);
  EXPECT_NE(error_of([&] { llava::load_image(huge); }).find("14000 x 14000 pixels exceeds the limit"), std::string::npos)
      << error_of([&] { llava::load_image(huge); });

  for (const auto& p : {text, empty, half_png, short_jpg, fake_png, other, huge}) fs::remove(p);
}

// ---- overlay -------------------------------------------------------------------------------

TEST(LlavaImage, OverlayMarksKeptPatches) {
  // shapes.png (150x100) without padding: resized to 168x112, crop x in [28, 140), 8x8 patches of 14.
  const auto img = llava::load_image(images_dir / "shapes.png");
  ASSERT_EQ(img.width, 150);
  ASSERT_EQ(img.height, 100);
  llava::preprocess_options opt;
  opt.size = 112;
  opt.pad = false;
  const auto pre = llava::preprocess(img, opt);
  const std::vector<tokensel::token_index> kept = {0, 9, 63};
  const auto path = temp_file("overlay.png");
  llava::write_overlay(path, img, kept, {8, 8}, pre.geometry);
  const auto out = llava::load_image(path);
  ASSERT_EQ(out.width, img.width);
  ASSERT_EQ(out.height, img.height);
  auto same = [&](int x, int y) { return std::equal(out.at(x, y), out.at(x, y) + 3, img.at(x, y)); };
  auto dimmed = [&](int x, int y) {
    for (int c = 0; c < 3; ++c) {
      if (out.at(x, y)[c] != 24 + img.at(x, y)[c] / 4) return false;
    }
    return true;
  };
  auto cropped = [&](int x, int y) {
    for (int c = 0; c < 3; ++c) {
      if (out.at(x, y)[c] != img.at(x, y)[c] / 8) return false;
    }
    return true;
  };
  // (30, 5) -> resized (34.2, 6.2) -> crop (6.2, 6.2): patch 0, kept.
  EXPECT_TRUE(same(30, 5));
  // (45, 20) -> crop (22.9, 23.0): patch (1, 1) = 9, kept.
  EXPECT_TRUE(same(45, 20));
  // (120, 95) -> crop (107, 107): patch 63, kept.
  EXPECT_TRUE(same(120, 95));
  // (100, 50) -> crop (84.6, 56.6): patch (4, 6) = 38, dropped.
  EXPECT_TRUE(dimmed(100, 50));
  // (5, 5) -> resized x 6.2 < 28: cut away by the centre crop.
  EXPECT_TRUE(cropped(5, 5));
  EXPECT_TRUE(cropped(145, 50));

  // With padding every input pixel is inside the crop; all kept -> the image unchanged.
  opt.pad = true;
  const auto pre_pad = llava::preprocess(img, opt);
  std::vector<tokensel::token_index> all(64);
  for (int i = 0; i < 64; ++i) all[i] = i;
  llava::write_overlay(path, img, all, {8, 8}, pre_pad.geometry);
  EXPECT_EQ(llava::load_image(path).pixels, img.pixels);

  const std::vector<tokensel::token_index> bad = {64};
  EXPECT_NE(error_of([&] { llava::write_overlay(path, img, bad, {8, 8}, pre.geometry); }).find("kept index 64 outside"),
            std::string::npos);
  EXPECT_NE(error_of([&] { llava::write_overlay("/no/such/dir/o.png", img, kept, {8, 8}, pre.geometry); })
                .find("overlay /no/such/dir/o.png: cannot open for writing"),
            std::string::npos);
  fs::remove(path);
}

// ---- issue 18: the one file rule, the one image-size rule, images PIL refuses ----------------

TEST(LlavaImage, HostileFilesAndSizes) {
  // A FIFO is refused from its type (opening it would block forever).
  const auto fifo = temp_file("hostile.fifo");
  fs::remove(fifo);
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_EQ(error_of([&] { llava::load_image(fifo); }),
            "llava: image " + fifo.string() + ": is a FIFO (named pipe), not a regular file (only regular files are read)");
  fs::remove(fifo);
  EXPECT_NE(error_of([&] { llava::load_image("/dev/zero"); }).find("is a character device"), std::string::npos);

  // The padded square counts: a 1 x 100000 strip is 10^10 pixels once padded (the decoder never runs).
  const auto png = [](std::uint32_t w, std::uint32_t h, bool bad_crc) {
    auto be = [](std::vector<std::uint8_t>& v, std::uint32_t x) {
      for (int s = 24; s >= 0; s -= 8) v.push_back(static_cast<std::uint8_t>(x >> s));
    };
    std::vector<std::uint8_t> f = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    std::vector<std::uint8_t> ihdr = {'I', 'H', 'D', 'R'};
    be(ihdr, w);
    be(ihdr, h);
    for (int b : {8, 2, 0, 0, 0}) ihdr.push_back(static_cast<std::uint8_t>(b));
    std::uint32_t crc = 0xFFFFFFFFu;
    for (auto b : ihdr) {
      crc ^= b;
      for (int k = 0; k < 8; ++k) crc = (crc & 1) ? 0xEDB88320u ^ (crc >> 1) : crc >> 1;
    }
    crc ^= 0xFFFFFFFFu;
    if (bad_crc) crc ^= 1;
    be(f, 13);
    f.insert(f.end(), ihdr.begin(), ihdr.end());
    be(f, crc);
    for (int b : {0, 0, 0, 0, int{'I'}, int{'E'}, int{'N'}, int{'D'}, 0xAE, 0x42, 0x60, 0x82}) f.push_back(static_cast<std::uint8_t>(b));
    return f;
  };
  const auto strip = png(1, 100000, false);
  EXPECT_NE(error_of([&] { llava::decode_image(strip, "strip", true); })
                .find("padded to a 100000 x 100000 square exceeds the limit of 178956970 pixels"),
            std::string::npos);
  // A chunk with a bad CRC is refused, as PIL does ("broken PNG file").
  const auto broken = png(2, 2, true);
  EXPECT_EQ(error_of([&] { llava::decode_image(broken, "broken"); }), "llava: image broken: broken PNG (bad CRC in chunk 'IHDR')");
}
