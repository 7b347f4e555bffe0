// llava: command-line front end of the bundled LLaVA runtime.
//
//   llava --model DIR --image FILE --prompt TEXT [--template llava-hf|vicuna|raw] [--no-pad]
//         [--method NAME] [--keep RATIO|COUNT] [--max-new-tokens N] [--threads T]
//         [--overlay out.png] [--json] [--from-qk] [--fastv-layer K] [--fitprune-recipe FILE]
//         [--seed S] [--anyres-scope tile|image]
//
// Prints the answer and a timing breakdown (or one JSON object with --json); progress goes to
// stderr. Every error is one line on stderr and a non-zero exit (2: bad command line, 1: the
// run failed).
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "llava/image.hpp"
#include "llava/pipeline.hpp"
#include "common/cli_flags.hpp"
#include "llava/tokenizer.hpp"
#include "llava/weights.hpp"

#include <unistd.h>

namespace {

using json = nlohmann::ordered_json;

using example_cli::parse_int;
using example_cli::usage_error;

constexpr const char* usage_text =
    "usage: llava --model DIR --image FILE --prompt TEXT [options]\n"
    "\n"
    "Answers a question about an image with a LLaVA-1.5 checkpoint (Hugging Face llava-hf layout),\n"
    "optionally pruning the visual tokens with a tokensel method.\n"
    "\n"
    "  --model DIR            config.json, model.safetensors (or shards + index), tokenizer.model\n"
    "  --image FILE           PNG or JPEG\n"
    "  --prompt TEXT          the question (\"<image>\\n\" is put in front unless it has <image>)\n"
    "  --template NAME        llava-hf (default): USER: <image>\\n{q} ASSISTANT:\n"
    "                         vicuna: original LLaVA-1.5 system sentence + USER: ... ASSISTANT:\n"
    "                         raw: the prompt as given (must contain <image>)\n"
    "  --no-pad               resize + centre crop only (llava-hf processor); default pads the\n"
    "                         image to a square with the CLIP mean colour (original LLaVA)\n"
    "  --method NAME          none (default), fopru, freepruner, prumerge, prumerge+, visionzip,\n"
    "                         fastv, fitprune, random, uniform, pool, divprune, dart, vispruner\n"
    "  --keep RATIO|COUNT     visual tokens to keep: a ratio in (0, 1] (0.5) or a count (144)\n"
    "  --fastv-layer K        FastV's layer (default 2)\n"
    "  --fitprune-recipe FILE FitPrune recipe JSON (default: a synthetic one from --keep)\n"
    "  --seed S               seed of --method random (default 0)\n"
    "  --anyres-scope tile|image  LLaVA-NeXT: select per tile (default for the encoder-side methods)\n"
    "                         or over the whole image (divprune, random; the LLM-stage methods)\n"
    "  --from-qk              select from the layers' queries and keys, no attention maps\n"
    "  --max-new-tokens N     greedy decoding stops at EOS or after N tokens (default 32)\n"
    "  --threads T            worker threads (default: OpenMP's)\n"
    "  --overlay FILE.png     write the input image with the kept patches highlighted\n"
    "  --json                 print one JSON object instead of text\n"
    "  -h, --help             this help\n";

struct cli_options {
  std::string model, image, prompt, overlay;
  std::string template_name = "llava-hf";
  bool pad = true, json_out = false, from_qk = false;
  std::string method = "none", keep, fitprune_recipe, anyres_scope;
  std::optional<int> fastv_layer, max_new_tokens, threads;
  std::optional<std::uint64_t> seed;
};

cli_options parse(int argc, char** argv) {
  cli_options o;
  static const std::map<std::string, bool> flags = {  // name -> takes a value
      {"model", true},   {"image", true},          {"prompt", true},  {"template", true},
      {"no-pad", false}, {"method", true},         {"keep", true},    {"fastv-layer", true},
      {"fitprune-recipe", true}, {"seed", true},   {"max-new-tokens", true}, {"threads", true},
      {"overlay", true}, {"json", false},          {"help", false}, {"from-qk", false}, {"anyres-scope", true}};
  auto seen = example_cli::parse_flags(argc, argv, flags);
  if (seen.count("help")) {
    std::fputs(usage_text, stdout);
    std::exit(0);
  }
  for (const char* required : {"model", "image", "prompt"}) {
    if (!seen.count(required)) throw usage_error(std::string("--") + required + " is required (see --help)");
  }
  o.model = seen["model"];
  o.image = seen["image"];
  o.prompt = seen["prompt"];
  if (seen.count("template")) o.template_name = seen["template"];
  o.pad = !seen.count("no-pad");
  o.json_out = seen.count("json") != 0;
  o.from_qk = seen.count("from-qk") != 0;
  if (seen.count("method")) o.method = seen["method"];
  if (seen.count("keep")) o.keep = seen["keep"];
  if (seen.count("anyres-scope")) o.anyres_scope = seen["anyres-scope"];
  if (seen.count("overlay")) o.overlay = seen["overlay"];
  if (seen.count("fitprune-recipe")) o.fitprune_recipe = seen["fitprune-recipe"];
  if (seen.count("fastv-layer")) o.fastv_layer = static_cast<int>(parse_int("fastv-layer", seen["fastv-layer"], 0, 1 << 20));
  if (seen.count("max-new-tokens")) o.max_new_tokens = static_cast<int>(parse_int("max-new-tokens", seen["max-new-tokens"], 0, 1 << 20));
  if (seen.count("threads")) o.threads = static_cast<int>(parse_int("threads", seen["threads"], 1, 4096));
  if (seen.count("seed")) o.seed = static_cast<std::uint64_t>(parse_int("seed", seen["seed"], 0, INT64_MAX));
  if (o.prompt.empty()) throw usage_error("--prompt is empty");
  return o;
}

// CLIP normalisation of the checkpoint's preprocessor_config.json when it has one: image_mean
// three finite numbers, image_std three finite numbers > 0 (transformers would divide by a zero
// std and broadcast a list of another length into an error or a wrong image).
void read_preprocessor(const std::filesystem::path& dir, llava::preprocess_options& p) {
  const auto file = dir / "preprocessor_config.json";
  std::error_code ec;
  if (!std::filesystem::exists(std::filesystem::symlink_status(file, ec))) return;
  const std::string name = file.string();
  const std::string text = llava::read_input_file(file, llava::max_json_file_bytes, "a JSON file");
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw llava::error("llava: " + name + ": invalid JSON: " + e.what());
  }
  if (!j.is_object()) throw llava::error("llava: " + name + ": must be a JSON object");
  auto triple = [&](const char* key, bool positive, std::array<float, 3>& out) {
    const auto it = j.find(key);
    if (it == j.end() || it->is_null()) return;
    const bool ok_shape = it->is_array() && it->size() == 3;
    if (!ok_shape) {
      throw llava::error("llava: " + name + ": " + key + ": must be a list of 3 numbers (R, G, B), got " +
                         it->dump().substr(0, 80));
    }
    for (std::size_t c = 0; c < 3; ++c) {
      const auto& v = (*it)[c];
      const double x = v.is_number() ? v.get<double>() : 0.0;
      if (!v.is_number() || !std::isfinite(x) || (positive && !(x > 0))) {
        throw llava::error("llava: " + name + ": " + key + "[" + std::to_string(c) + "]: must be a finite number" +
                           (positive ? " > 0" : "") + ", got " + v.dump().substr(0, 80));
      }
      out[c] = static_cast<float>(x);
    }
  };
  triple("image_mean", false, p.mean);
  triple("image_std", true, p.std);
}

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

std::string one_line(std::string s) {
  for (char& c : s) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return s;
}

int run(const cli_options& o) {
  const bool tty = isatty(fileno(stderr)) != 0;
  auto progress = [&](const std::string& msg, bool done) {
    if (tty) {
      std::fprintf(stderr, "\r\033[Kllava: %s%s", msg.c_str(), done ? "\n" : "");
    } else {
      std::fprintf(stderr, "llava: %s\n", msg.c_str());
    }
    std::fflush(stderr);
  };

  // Validate the cheap inputs before the (possibly long) weight load.
  llava::prompt_template tmpl{};
  llava::selection_options sel;
  try {  // bad flag values are usage errors (exit 2)
    tmpl = llava::parse_template(o.template_name);
    sel.name = llava::parse_method(o.method);
    if (!o.keep.empty()) sel.keep = llava::keep_spec::parse(o.keep);
    if (!o.anyres_scope.empty()) sel.anyres = llava::parse_anyres_scope(o.anyres_scope);
  } catch (const llava::error& e) {
    std::string msg = e.what();
    throw usage_error(msg.rfind("llava: ", 0) == 0 ? msg.substr(7) : msg);
  }
  if (!o.keep.empty() && sel.name == llava::method::none) throw usage_error("--keep needs --method");
  if (o.fastv_layer) sel.fastv_layer = *o.fastv_layer;
  if (!o.fitprune_recipe.empty()) sel.fitprune_recipe = o.fitprune_recipe;
  if (o.seed) sel.seed = *o.seed;
  sel.from_qk = o.from_qk;
  if (o.threads) llava::set_threads(*o.threads);

  const std::filesystem::path dir = o.model;
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) throw llava::error("llava: model directory " + o.model + ": not found");
  // Cheap checks first (the image's header and size, the config, the tokenizer), then the weights;
  // the image is preprocessed only once the weight shapes have been compared with the config, so
  // no buffer is sized by a config field that the weights contradict.
  const auto image = llava::load_image(o.image, o.pad);
  const auto config = llava::load_config(dir / "config.json");
  llava::tokenizer tok(dir, config.image_token_index, config.pad_token_id >= 0 ? config.pad_token_id : 32001);
  const std::string prompt = llava::format_prompt(tmpl, o.prompt);
  const auto input_ids = tok.encode_prompt(prompt);

  llava::preprocess_options pre;
  pre.size = config.vision.image_size;
  pre.pad = o.pad;
  read_preprocessor(dir, pre);
  if (!o.overlay.empty()) {
    // The output's folder must exist before the run (its write is checked again at the end).
    const auto parent = std::filesystem::path(o.overlay).parent_path();
    if (!parent.empty() && !std::filesystem::is_directory(parent, ec)) {
      throw llava::error("llava: overlay " + o.overlay + ": cannot write: the folder " + parent.string() + " does not exist");
    }
  }

  progress("loading " + o.model, false);
  llava::llava_model model(dir, [&](std::size_t done, std::size_t total, const std::string& file) {
    const std::string name = std::filesystem::path(file).filename().string();
    progress("loading weights " + std::to_string(done) + "/" + std::to_string(total) + (name.empty() ? "" : " " + name), false);
  });
  progress("loaded " + o.model + " (" + std::to_string(model.weights().size()) + " tensors, " +
               llava::to_string(model.weights().dominant_type()) + ")", true);

  // LLaVA-NeXT: AnyRes tiles (LlavaNextImageProcessor, which never pads to a square); else one square.
  const auto t_pre = std::chrono::steady_clock::now();
  llava::preprocessed_image pixels;
  llava::anyres_image tiles;
  if (config.anyres()) {
    if (!o.overlay.empty()) throw llava::error("llava: --overlay is not supported for LLaVA-NeXT (AnyRes) models");
    tiles = llava::preprocess_anyres(image, config, pre);
  } else {
    pixels = llava::preprocess(image, pre);
  }
  const double preprocess_ms = ms_since(t_pre);

  llava::run_options ro;
  ro.selection = sel;
  if (o.max_new_tokens) ro.max_new_tokens = *o.max_new_tokens;
  progress("running (" + std::to_string(input_ids.size()) + " prompt tokens, method " + o.method + ")", true);
  const auto result = config.anyres() ? model.run(tiles, input_ids, ro) : model.run(pixels.pixels.data(), input_ids, ro);
  const std::string answer = tok.decode(result.answer_ids);
  const bool eos = !result.answer_ids.empty() && result.answer_ids.back() == tok.eos_id();

  if (!o.overlay.empty()) {
    const int g = config.vision.grid();
    llava::write_overlay(o.overlay, image, result.kept, tokensel::token_grid{g, g}, pixels.geometry);
  }

  const auto& t = result.time;
  const double total_ms = t.load + preprocess_ms + t.vision + t.selection + t.projector + t.prefill + t.decode;
  const auto generated = static_cast<long long>(result.answer_ids.size());
  if (o.json_out) {
    json j;
    j["answer"] = answer;
    j["answer_ids"] = result.answer_ids;
    j["stopped_at_eos"] = eos;
    j["prompt"] = prompt;
    j["input_ids"] = input_ids;
    j["model"] = o.model;
    j["image"] = {{"path", o.image}, {"width", image.width}, {"height", image.height}};
    j["template"] = o.template_name;
    j["pad"] = o.pad && !config.anyres();
    if (config.anyres()) {
      const auto& a = tiles.layout;
      j["anyres"] = {{"best_resolution", {a.best_height, a.best_width}}, {"tiles", {a.tiles_y, a.tiles_x}},
                     {"unpadded_grid", {a.rows, a.cols}}, {"image_tokens", a.image_tokens()}};
    }
    j["method"] = llava::to_string(sel.name);
    if (!o.keep.empty()) j["keep"] = o.keep;
    j["kept_tokens"] = result.kept_tokens;
    j["total_tokens"] = result.total_tokens;
    j["kept"] = result.kept;
    j["sequence_length"] = result.sequence_length;
    j["from_qk"] = sel.from_qk;
    j["attention_maps"] = result.attention_maps;  // maps formed for selection (0 with --from-qk)
    j["final_length"] = result.final_length;
    j["generated_tokens"] = generated;
    j["threads"] = llava::threads();
    j["timings_ms"] = {{"load", t.load},           {"preprocess", preprocess_ms}, {"vision", t.vision},
                       {"selection", t.selection}, {"projector", t.projector},    {"prefill", t.prefill},
                       {"decode", t.decode},       {"total", total_ms}};
    if (!o.overlay.empty()) j["overlay"] = o.overlay;
    std::cout << j.dump(2) << "\n";
    std::cout.flush();
    if (!std::cout) throw llava::error("llava: cannot write the JSON output to stdout");
    return 0;
  }
  std::cout << answer << "\n\n";
  std::printf("method       %s%s%s\n", llava::to_string(sel.name), o.keep.empty() ? "" : "  keep ", o.keep.c_str());
  std::printf("tokens kept  %lld / %lld visual (prompt %lld tokens -> LLM sequence %lld)\n",
              static_cast<long long>(result.kept_tokens), static_cast<long long>(result.total_tokens),
              static_cast<long long>(input_ids.size()), static_cast<long long>(result.sequence_length));
  std::printf("load         %10.1f ms\n", t.load);
  std::printf("preprocess   %10.1f ms\n", preprocess_ms);
  std::printf("vision       %10.1f ms\n", t.vision);
  std::printf("selection    %10.1f ms\n", t.selection);
  std::printf("projector    %10.1f ms\n", t.projector);
  std::printf("prefill      %10.1f ms\n", t.prefill);
  std::printf("decode       %10.1f ms  (%lld tokens%s, %.1f tokens/s)\n", t.decode, generated,
              eos ? " incl. EOS" : "", t.decode > 0 ? 1000.0 * generated / t.decode : 0.0);
  std::printf("total        %10.1f ms  (%d threads)\n", total_ms, llava::threads());
  if (!o.overlay.empty()) std::printf("overlay      %s\n", o.overlay.c_str());
  std::cout.flush();
  if (std::fflush(stdout) != 0 || std::ferror(stdout)) throw llava::error("llava: cannot write the output to stdout");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  cli_options o;
  try {
    o = parse(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "llava: error: %s\n", one_line(e.what()).c_str());
    return 2;
  }
  try {
    return run(o);
  } catch (const usage_error& e) {
    std::fprintf(stderr, "llava: error: %s\n", one_line(e.what()).c_str());
    return 2;
  } catch (const std::bad_alloc&) {
    std::fputs("llava: error: out of memory: the model or the image does not fit in this machine's memory\n", stderr);
    return 1;
  } catch (const std::exception& e) {
    std::string msg = one_line(e.what());
    if (msg.rfind("llava: ", 0) == 0) msg.erase(0, 7);
    if (msg.rfind("tokensel: ", 0) == 0) msg.erase(0, 10);
    std::fprintf(stderr, "llava: error: %s\n", msg.c_str());
    return 1;
  } catch (...) {
    std::fputs("llava: error: unknown failure\n", stderr);
    return 1;
  }
}
