// End-to-end tests of the `llava` CLI (binary path LLAVA_CLI_PATH) on the committed tiny
// checkpoints: the answer equals transformers' greedy tokens, --json fields, selection counts,
// the overlay, and one-line errors with a non-zero exit for bad input.
#include <gtest/gtest.h>

#include <algorithm>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli_process.hpp"
#include "llava/image.hpp"

namespace fs = std::filesystem;

namespace {

const fs::path data_dir = LLAVA_TEST_DATA;
const std::string cli = LLAVA_CLI_PATH;

using run_result = llava_test::process_result;
using llava_test::slurp;

fs::path temp_path(const std::string& name) {
  return fs::temp_directory_path() / ("llava_cli_" + std::to_string(::getpid()) + "_" + name);
}

run_result run(const std::vector<std::string>& args) {
  return llava_test::run_process(cli, args, temp_path("stderr.txt"));
}

nlohmann::json golden(const std::string& variant) {
  std::ifstream in(data_dir / variant / "golden.json");
  return nlohmann::json::parse(in);
}

std::vector<std::string> base_args(const std::string& variant = "llava-tiny-fp32") {
  const auto g = golden(variant);
  return {"--model", (data_dir / variant).string(), "--image", (data_dir / "llava-images" / g["image"].get<std::string>()).string(),
          "--prompt", g["question"].get<std::string>(), "--max-new-tokens", "8"};
}

void expect_one_line_error(const run_result& r, const std::string& needle) {
  EXPECT_NE(r.status, 0);
  EXPECT_TRUE(r.out.empty()) << r.out;
  ASSERT_FALSE(r.err.empty());
  // The last stderr line is the error (progress lines may precede it for late failures).
  std::string last = r.err.substr(0, r.err.size() - 1);
  last = last.substr(last.find_last_of('\n') == std::string::npos ? 0 : last.find_last_of('\n') + 1);
  EXPECT_EQ(r.err.back(), '\n');
  EXPECT_EQ(last.rfind("llava: error: ", 0), 0u) << r.err;
  EXPECT_NE(last.find(needle), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("llava: error: "), r.err.rfind("llava: error: ")) << "more than one error line: " << r.err;
}

}  // namespace

TEST(LlavaCli, BinaryExists) { ASSERT_TRUE(fs::exists(cli)) << cli << " not built (build the `llava` target)"; }

TEST(LlavaCli, AnswerEqualsTransformersGreedy) {
  const auto g = golden("llava-tiny-fp32");
  const auto r = run(base_args());
  ASSERT_EQ(r.status, 0) << r.err;
  // First line: the decoded answer; then the timing table.
  EXPECT_EQ(r.out.substr(0, r.out.find('\n')), g["greedy_text"].get<std::string>());
  for (const char* row : {"tokens kept  64 / 64", "load ", "vision ", "selection ", "prefill ", "decode ", "total "}) {
    EXPECT_NE(r.out.find(row), std::string::npos) << row << "\n" << r.out;
  }
  EXPECT_NE(r.err.find("llava: loaded"), std::string::npos) << r.err;  // progress on stderr
}

TEST(LlavaCli, JsonFields) {
  const auto g = golden("llava-tiny-fp32");
  auto args = base_args();
  args.push_back("--json");
  const auto r = run(args);
  ASSERT_EQ(r.status, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["answer"], g["greedy_text"]);
  EXPECT_EQ(j["answer_ids"], g["greedy_tokens"]);
  EXPECT_EQ(j["input_ids"], g["input_ids"]);
  EXPECT_EQ(j["prompt"], g["prompt"]);
  EXPECT_EQ(j["method"], "none");
  EXPECT_EQ(j["kept_tokens"], 64);
  EXPECT_EQ(j["total_tokens"], 64);
  EXPECT_EQ(j["kept"].size(), 64u);
  EXPECT_EQ(j["sequence_length"], g["sequence_length"]);
  EXPECT_EQ(j["generated_tokens"], 8);
  EXPECT_EQ(j["stopped_at_eos"], false);
  EXPECT_EQ(j["pad"], true);
  EXPECT_EQ(j["image"]["width"], 150);
  EXPECT_EQ(j["image"]["height"], 100);
  for (const char* k : {"load", "preprocess", "vision", "selection", "projector", "prefill", "decode", "total"}) {
    ASSERT_TRUE(j["timings_ms"].contains(k)) << k;
    EXPECT_GE(j["timings_ms"][k].get<double>(), 0.0) << k;
  }
}

TEST(LlavaCli, VicunaNoPadShardedBf16) {
  // bf16 checkpoint (pre-4.52 names, sharded), vicuna template, no padding, JPEG input.
  const auto g = golden("llava-tiny-bf16");
  ASSERT_EQ(g["template"], "vicuna_v1");
  ASSERT_EQ(g["pad_to_square"], false);
  auto args = base_args("llava-tiny-bf16");
  for (const char* a : {"--template", "vicuna", "--no-pad", "--json"}) args.push_back(a);
  const auto r = run(args);
  ASSERT_EQ(r.status, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["input_ids"], g["input_ids"]);
  EXPECT_EQ(j["pad"], false);
  // JPEG through libjpeg: pixel_values bit-identical to transformers', so the same greedy tokens.
  EXPECT_EQ(j["answer_ids"], g["greedy_tokens"]);
  EXPECT_EQ(j["answer"], g["greedy_text"]);
}

TEST(LlavaCli, FopruKeepsHalf) {
  for (const std::string keep : {"0.5", "32"}) {
    SCOPED_TRACE(keep);
    auto args = base_args();
    args.insert(args.end(), {"--method", "fopru", "--keep", keep, "--json"});
    const auto r = run(args);
    ASSERT_EQ(r.status, 0) << r.err;
    const auto j = nlohmann::json::parse(r.out);
    EXPECT_EQ(j["method"], "fopru");
    EXPECT_EQ(j["kept_tokens"], 32);
    EXPECT_EQ(j["total_tokens"], 64);
    const auto kept = j["kept"].get<std::vector<int>>();
    ASSERT_EQ(kept.size(), 32u);
    for (std::size_t i = 0; i < kept.size(); ++i) {
      EXPECT_GE(kept[i], 0);
      EXPECT_LT(kept[i], 64);
      if (i > 0) {
        EXPECT_LT(kept[i - 1], kept[i]);
      }
    }
    // The LLM sequence shrinks by the 32 dropped visual tokens.
    EXPECT_EQ(j["sequence_length"], golden("llava-tiny-fp32")["sequence_length"].get<int>() - 32);
    EXPECT_EQ(j["answer_ids"].size(), 8u);
  }
}

// --fopru-strategy row keeps whole rows of the 8 x 8 patch grid; rank (the default) need not.
TEST(LlavaCli, FopruRowStrategyKeepsWholeGridRows) {
  auto args = base_args();
  args.insert(args.end(), {"--method", "fopru", "--keep", "0.5", "--fopru-strategy", "row", "--json"});
  const auto r = run(args);
  ASSERT_EQ(r.status, 0) << r.err;
  const auto kept = nlohmann::json::parse(r.out)["kept"].get<std::vector<int>>();
  ASSERT_EQ(kept.size(), 32u);
  std::vector<int> per_row(8, 0);
  for (int k : kept) ++per_row.at(static_cast<std::size_t>(k / 8));
  for (int c : per_row) EXPECT_TRUE(c == 0 || c == 8) << "a grid row kept in part: " << c << " of 8";
  auto rank_args = base_args();
  rank_args.insert(rank_args.end(), {"--method", "fopru", "--keep", "0.5", "--json"});
  const auto rank = run(rank_args);
  ASSERT_EQ(rank.status, 0) << rank.err;
  EXPECT_NE(nlohmann::json::parse(rank.out)["kept"].get<std::vector<int>>(), kept) << "row = rank on this image";
  // A count that is not a whole number of rows is refused with the reason.
  auto odd = base_args();
  odd.insert(odd.end(), {"--method", "fopru", "--keep", "12", "--fopru-strategy", "row"});
  expect_one_line_error(run(odd), "whole grid rows");
  auto bad = base_args();
  bad.insert(bad.end(), {"--method", "fopru", "--fopru-strategy", "column"});
  const auto b = run(bad);
  EXPECT_EQ(b.status, 2);
  expect_one_line_error(b, "unknown FoPru strategy 'column' (known: rank, row)");
  auto other = base_args();
  other.insert(other.end(), {"--method", "visionzip", "--keep", "0.5", "--fopru-strategy", "row"});
  expect_one_line_error(run(other), "--fopru-strategy needs --method fopru");
}

TEST(LlavaCli, OverlayPng) {
  const auto out = temp_path("overlay.png");
  auto args = base_args();
  args.insert(args.end(), {"--method", "fopru", "--keep", "0.25", "--overlay", out.string()});
  const auto r = run(args);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("tokens kept  16 / 64"), std::string::npos) << r.out;
  const auto img = llava::load_image(out);
  EXPECT_EQ(img.width, 150);
  EXPECT_EQ(img.height, 100);
  EXPECT_NE(img.pixels, llava::load_image(data_dir / "llava-images" / "shapes.png").pixels);  // something dimmed
  fs::remove(out);
}

TEST(LlavaCli, Help) {
  const auto r = run({"--help"});
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(r.out.find("usage: llava --model DIR --image FILE --prompt TEXT"), std::string::npos);
}

TEST(LlavaCli, BadFlagsOneLineNonZero) {
  const auto model = (data_dir / "llava-tiny-fp32").string();
  const auto image = (data_dir / "llava-images" / "shapes.png").string();
  struct bad {
    std::vector<std::string> args;
    std::string needle;
  };
  const std::vector<bad> cases = {
      {{"--image", image, "--prompt", "x"}, "--model is required"},
      {{"--model", model, "--image", image, "--prompt", "x", "--frobnicate"}, "unknown option --frobnicate"},
      {{"--model", model, "--image", image, "--prompt", "x", "--method", "bogus"}, "unknown method 'bogus'"},
      {{"--model", model, "--image", image, "--prompt", "x", "--method", "fopru", "--keep", "1.5"}, "1.5"},
      {{"--model", model, "--image", image, "--prompt", "x", "--keep", "0.5"}, "--keep needs --method"},
      {{"--model", model, "--image", image, "--prompt", "x", "--max-new-tokens", "many"}, "--max-new-tokens many: not an integer"},
      {{"--model", model, "--image", image, "--prompt", "x", "--threads", "0"}, "--threads 0"},
      {{"--model", model, "--image", image, "--prompt", "x", "--template", "chatml"}, "unknown template"},
      {{"--model", model, "--image", image, "--prompt"}, "--prompt needs a value"},
      {{"--model", model, "--image", image, "--prompt", "x", "--json=yes"}, "--json takes no value"},
      {{"stray"}, "unexpected argument 'stray'"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.needle);
    const auto r = run(c.args);
    EXPECT_EQ(r.status, 2);
    expect_one_line_error(r, c.needle);
  }
}

TEST(LlavaCli, BadInputsOneLineNonZero) {
  const auto model = (data_dir / "llava-tiny-fp32").string();
  const auto image = (data_dir / "llava-images" / "shapes.png").string();
  const auto junk = temp_path("junk.png");
  std::ofstream(junk) << "not an image\n";
  // A model directory whose weights file is cut short.
  const auto broken = temp_path("broken-model");
  fs::create_directories(broken);
  for (const char* f : {"config.json", "tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}) {
    fs::copy_file(data_dir / "llava-tiny-fp32" / f, broken / f, fs::copy_options::overwrite_existing);
  }
  {
    const std::string w = slurp(data_dir / "llava-tiny-fp32" / "model.safetensors");
    std::ofstream(broken / "model.safetensors", std::ios::binary) << w.substr(0, w.size() / 2);
  }
  struct bad {
    std::vector<std::string> args;
    std::string needle;
  };
  const std::vector<bad> cases = {
      {{"--model", model, "--image", "missing.png", "--prompt", "x"}, "image missing.png: no such file"},
      {{"--model", model, "--image", junk.string(), "--prompt", "x"}, "not a PNG or JPEG file"},
      {{"--model", (data_dir / "nope").string(), "--image", image, "--prompt", "x"}, "not found"},
      {{"--model", model, "--image", image, "--prompt", "no placeholder", "--template", "raw"}, "no <image> placeholder"},
      {{"--model", broken.string(), "--image", image, "--prompt", "x"}, "model.safetensors"},
      // Pooling the 8x8 grid keeps 64, 16, 9, ... tokens: half of them is refused (it used to keep
      // every token silently, window round(sqrt(2)) = 1), naming the achievable counts.
      {{"--model", model, "--image", image, "--prompt", "x", "--method", "pool", "--keep", "0.5"},
       "pool.budget = 0.5: pooling 8x8 keeps 64 or 16 tokens, not 32"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.needle);
    const auto r = run(c.args);
    EXPECT_EQ(r.status, 1);
    expect_one_line_error(r, c.needle);
  }
  fs::remove(junk);
  fs::remove_all(broken);
}

// A LLaVA-NeXT checkpoint: the CLI takes the AnyRes path from config.json (the transformers greedy
// tokens of the pruned and unpruned goldens, the layout in --json), and refuses --overlay and a scope
// that does not apply, with one error line each.
TEST(LlavaCli, LlavaNextAnyRes) {
  const fs::path dir = data_dir / "llava-next-tiny-bf16";
  std::ifstream in(dir / "golden.json");
  const auto g = nlohmann::json::parse(in);
  const auto& c = g["cases"]["tall"];
  const std::vector<std::string> base = {"--model", dir.string(), "--image", (dir / "tall.png").string(), "--prompt",
                                         g["question"].get<std::string>(), "--max-new-tokens", "8", "--json"};
  auto r = run(base);
  ASSERT_EQ(r.status, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["input_ids"], c["input_ids"]);
  EXPECT_EQ(j["answer_ids"], c["greedy_tokens"]);
  EXPECT_EQ(j["anyres"]["best_resolution"], c["best_resolution"]);
  EXPECT_EQ(j["anyres"]["tiles"], c["tiles"]);
  EXPECT_EQ(j["anyres"]["unpadded_grid"], c["unpadded_grid"]);
  EXPECT_EQ(j["anyres"]["image_tokens"], c["image_tokens"]);
  EXPECT_EQ(j["total_tokens"], c["image_tokens"]);
  EXPECT_EQ(j["pad"], false);

  auto args = base;
  for (const char* a : {"--method", "divprune", "--keep", "0.25"}) args.push_back(a);
  r = run(args);
  ASSERT_EQ(r.status, 0) << r.err;
  j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["answer_ids"], g["pruned"]["tall.divprune.0.25"]["greedy_tokens"]);
  EXPECT_EQ(j["kept"], g["pruned"]["tall.divprune.0.25"]["kept"]);

  args.push_back("--anyres-scope");
  args.push_back("tile");
  args[std::find(args.begin(), args.end(), "divprune") - args.begin()] = "fastv";
  expect_one_line_error(run(args), "fastv runs inside the LLM over the whole image span");
  auto overlay = base;
  overlay.push_back("--overlay");
  overlay.push_back(temp_path("next.png").string());
  expect_one_line_error(run(overlay), "--overlay is not supported for LLaVA-NeXT");
}
