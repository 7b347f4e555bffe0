// llava: command-line front end of the bundled LLaVA runtime.
//
//   llava --model DIR --image FILE --prompt TEXT [--template llava-hf|vicuna|raw] [--no-pad]
//         [--method NAME] [--keep RATIO|COUNT] [--max-new-tokens N] [--threads T]
//         [--overlay out.png] [--json] [--from-qk] [--fastv-layer K] [--fitprune-recipe FILE]
//         [--seed S] [--fopru-strategy rank|row] [--anyres-scope tile|image]
//   llava --model DIR --eval FILE.jsonl [selection options] [--predictions OUT.jsonl] [--limit N]
//   llava --model DIR --eval FILE.jsonl --fitprune-calibrate OUT.json --fitprune-reduction R
//
// Prints the answer and a timing breakdown (or one JSON object with --json); with --eval the
// accuracy over a question file (llava/eval.hpp); progress goes to stderr. Every error is one
// line on stderr and a non-zero exit (2: bad command line, 1: the run failed).
#include <algorithm>
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
#include <memory>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <tokensel/io/fitprune_json.hpp>

#include "llava/anyres.hpp"
#include "llava/eval.hpp"
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
    "       llava --model DIR --eval FILE.jsonl [options] [--predictions OUT.jsonl] [--limit N]\n"
    "       llava --model DIR --eval FILE.jsonl --fitprune-calibrate OUT.json --fitprune-reduction R\n"
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
    "  --fopru-strategy S     FoPru's pruning: rank (default: the top tokens) or row (whole grid rows)\n"
    "  --anyres-scope tile|image  LLaVA-NeXT: select per tile (default for the encoder-side methods)\n"
    "                         or over the whole image (divprune, random; the LLM-stage methods)\n"
    "  --from-qk              select from the layers' queries and keys, no attention maps\n"
    "  --max-new-tokens N     greedy decoding stops at EOS or after N tokens (default 32)\n"
    "  --threads T            worker threads (default: OpenMP's)\n"
    "  --overlay FILE.png     write the input image with the kept patches highlighted\n"
    "  --json                 print one JSON object instead of text\n"
    "  -h, --help             this help\n"
    "\n"
    "Batch evaluation (instead of --image/--prompt):\n"
    "  --eval FILE.jsonl      one JSON object a line: {\"id\", \"image\", \"question\", \"answer\", \"type\"}\n"
    "                         (image relative to the file's folder; id, type optional); prints the\n"
    "                         accuracy (overall and per type, 95 % Wilson intervals), kept tokens, timings\n"
    "  --predictions OUT      one JSON line per question (id, type, answer, prediction, correct, kept)\n"
    "  --limit N              only the first N questions\n"
    "  --fitprune-calibrate OUT.json  fit a FitPrune recipe on the questions (unpruned runs) and save it\n"
    "  --fitprune-reduction R         its FLOPs reduction target, in (0, 1)\n";

struct cli_options {
  std::string model, image, prompt, overlay;
  std::string template_name = "llava-hf";
  bool pad = true, json_out = false, from_qk = false;
  std::string method = "none", keep, fitprune_recipe, anyres_scope, fopru_strategy;
  std::optional<int> fastv_layer, max_new_tokens, threads;
  std::optional<std::uint64_t> seed;
  // --eval mode
  std::string eval, predictions, calibrate_out;
  std::optional<long long> limit;
  std::optional<double> reduction;
};

/// The strict number of --fitprune-reduction, in (0, 1) (fitprune::calibrator::fit's domain).
double parse_reduction(const std::string& v) {
  std::size_t used = 0;
  double x = 0;
  try {
    x = std::stod(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (v.empty() || used != v.size() || !std::isfinite(x)) throw usage_error("--fitprune-reduction " + v + ": not a number");
  if (!(x > 0.0 && x < 1.0)) throw usage_error("--fitprune-reduction " + v + ": must be in (0, 1) (the FLOPs reduction)");
  return x;
}

/// Which flags go with which mode: single image (--image, --prompt) or --eval (and calibration).
void check_modes(const std::map<std::string, std::string>& seen) {
  auto has = [&](const char* f) { return seen.count(f) != 0; };
  if (!has("model")) throw usage_error("--model is required (see --help)");
  if (has("eval")) {
    for (const char* f : {"image", "prompt", "overlay"}) {
      if (has(f)) throw usage_error(std::string("--eval and --") + f + " conflict: --eval takes the images and questions from its file");
    }
  } else {
    for (const char* f : {"image", "prompt"}) {
      if (!has(f)) throw usage_error(std::string("--") + f + " is required (see --help)");
    }
    for (const char* f : {"predictions", "limit", "fitprune-calibrate", "fitprune-reduction"}) {
      if (has(f)) throw usage_error(std::string("--") + f + " needs --eval FILE.jsonl");
    }
  }
  if (has("fitprune-calibrate") != has("fitprune-reduction")) {
    throw usage_error("--fitprune-calibrate and --fitprune-reduction go together");
  }
  if (has("fitprune-calibrate")) {
    for (const char* f : {"method", "keep", "predictions", "fitprune-recipe", "max-new-tokens"}) {
      if (has(f)) throw usage_error(std::string("--fitprune-calibrate and --") + f + " conflict: calibration runs the unpruned model without decoding");
    }
  }
}

cli_options parse(int argc, char** argv) {
  cli_options o;
  static const std::map<std::string, bool> flags = {  // name -> takes a value
      {"model", true},   {"image", true},          {"prompt", true},  {"template", true},
      {"no-pad", false}, {"method", true},         {"keep", true},    {"fastv-layer", true},
      {"fitprune-recipe", true}, {"seed", true},   {"max-new-tokens", true}, {"threads", true},
      {"overlay", true}, {"json", false},          {"help", false}, {"from-qk", false}, {"anyres-scope", true},
      {"eval", true},    {"predictions", true},    {"limit", true},   {"fitprune-calibrate", true},
      {"fitprune-reduction", true}, {"fopru-strategy", true}};
  auto seen = example_cli::parse_flags(argc, argv, flags);
  if (seen.count("help")) {
    std::fputs(usage_text, stdout);
    std::exit(0);
  }
  check_modes(seen);
  auto text = [&](const char* f, std::string& out) {
    if (seen.count(f)) out = seen[f];
  };
  for (auto [f, out] : {std::pair<const char*, std::string*>{"model", &o.model}, {"image", &o.image}, {"prompt", &o.prompt},
                        {"template", &o.template_name}, {"method", &o.method}, {"keep", &o.keep},
                        {"anyres-scope", &o.anyres_scope}, {"overlay", &o.overlay}, {"fitprune-recipe", &o.fitprune_recipe},
                        {"eval", &o.eval}, {"predictions", &o.predictions}, {"fitprune-calibrate", &o.calibrate_out},
                        {"fopru-strategy", &o.fopru_strategy}}) {
    text(f, *out);
  }
  o.pad = !seen.count("no-pad");
  o.json_out = seen.count("json") != 0;
  o.from_qk = seen.count("from-qk") != 0;
  if (seen.count("fastv-layer")) o.fastv_layer = static_cast<int>(parse_int("fastv-layer", seen["fastv-layer"], 0, 1 << 20));
  if (seen.count("max-new-tokens")) o.max_new_tokens = static_cast<int>(parse_int("max-new-tokens", seen["max-new-tokens"], 0, 1 << 20));
  if (seen.count("threads")) o.threads = static_cast<int>(parse_int("threads", seen["threads"], 1, 4096));
  if (seen.count("seed")) o.seed = static_cast<std::uint64_t>(parse_int("seed", seen["seed"], 0, INT64_MAX));
  if (seen.count("limit")) o.limit = parse_int("limit", seen["limit"], 1, INT64_MAX);
  if (seen.count("fitprune-reduction")) o.reduction = parse_reduction(seen["fitprune-reduction"]);
  if (o.eval.empty() && o.prompt.empty()) throw usage_error("--prompt is empty");
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

std::string one_line(std::string s) {
  for (char& c : s) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return s;
}

/// One progress line on stderr (a tty: rewritten in place).
void progress(const std::string& msg, bool done) {
  static const bool tty = isatty(fileno(stderr)) != 0;
  if (tty) {
    std::fprintf(stderr, "\r\033[Kllava: %s%s", msg.c_str(), done ? "\n" : "");
  } else {
    std::fprintf(stderr, "llava: %s\n", msg.c_str());
  }
  std::fflush(stderr);
}

/// The template and selection flags, checked before anything is loaded (usage errors, exit 2).
llava::selection_options selection_of(const cli_options& o, llava::prompt_template& tmpl) {
  llava::selection_options sel;
  try {
    tmpl = llava::parse_template(o.template_name);
    sel.name = llava::parse_method(o.method);
    if (!o.keep.empty()) sel.keep = llava::keep_spec::parse(o.keep);
    if (!o.anyres_scope.empty()) sel.anyres = llava::parse_anyres_scope(o.anyres_scope);
    if (!o.fopru_strategy.empty()) sel.fopru_strategy = llava::parse_fopru_strategy(o.fopru_strategy);
  } catch (const llava::error& e) {
    std::string msg = e.what();
    throw usage_error(msg.rfind("llava: ", 0) == 0 ? msg.substr(7) : msg);
  }
  if (!o.keep.empty() && sel.name == llava::method::none) throw usage_error("--keep needs --method");
  if (!o.fopru_strategy.empty() && sel.name != llava::method::fopru) throw usage_error("--fopru-strategy needs --method fopru");
  if (o.fastv_layer) sel.fastv_layer = *o.fastv_layer;
  if (!o.fitprune_recipe.empty()) sel.fitprune_recipe = o.fitprune_recipe;
  if (o.seed) sel.seed = *o.seed;
  sel.from_qk = o.from_qk;
  if (o.threads) llava::set_threads(*o.threads);
  return sel;
}

std::filesystem::path model_dir(const cli_options& o) {
  std::error_code ec;
  if (!std::filesystem::is_directory(o.model, ec)) throw llava::error("llava: model directory " + o.model + ": not found");
  return o.model;
}

llava::preprocess_options preprocessing(const std::filesystem::path& dir, const llava::llava_config& config, bool pad) {
  llava::preprocess_options pre;
  pre.size = config.vision.image_size;
  pre.pad = pad;
  read_preprocessor(dir, pre);
  return pre;
}

std::unique_ptr<llava::llava_model> load_model(const cli_options& o, const std::filesystem::path& dir) {
  progress("loading " + o.model, false);
  auto model = std::make_unique<llava::llava_model>(dir, [&](std::size_t done, std::size_t total, const std::string& file) {
    const std::string name = std::filesystem::path(file).filename().string();
    progress("loading weights " + std::to_string(done) + "/" + std::to_string(total) + (name.empty() ? "" : " " + name), false);
  });
  progress("loaded " + o.model + " (" + std::to_string(model->weights().size()) + " tensors, " +
               llava::to_string(model->weights().dominant_type()) + ")", true);
  return model;
}

/// The output folder of a file written at the end must exist before the run.
void check_output_folder(const std::string& path, const char* what) {
  const auto parent = std::filesystem::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty() && !std::filesystem::is_directory(parent, ec)) {
    throw llava::error(std::string("llava: ") + what + " " + path + ": cannot write: the folder " + parent.string() + " does not exist");
  }
}

void flush_stdout() {
  std::cout.flush();
  if (!std::cout || std::fflush(stdout) != 0 || std::ferror(stdout)) throw llava::error("llava: cannot write the output to stdout");
}

// ---- single image ------------------------------------------------------------------------------

struct single_run {
  std::string prompt;
  std::vector<std::int32_t> input_ids;
  llava::rgb_image image;
  llava::model_image input;  // AnyRes tiles or one square
  llava::preprocess_options pre;
  double preprocess_ms = 0;
  llava::run_result result;
  std::string answer;
  bool eos = false;
};

void print_single_json(const cli_options& o, const llava::selection_options& sel, const llava::llava_config& config,
                       const single_run& s) {
  const auto& result = s.result;
  const auto& t = result.time;
  const double total_ms = t.load + s.preprocess_ms + t.vision + t.selection + t.projector + t.prefill + t.decode;
  json j;
  j["answer"] = s.answer;
  j["answer_ids"] = result.answer_ids;
  j["stopped_at_eos"] = s.eos;
  j["prompt"] = s.prompt;
  j["input_ids"] = s.input_ids;
  j["model"] = o.model;
  j["image"] = {{"path", o.image}, {"width", s.image.width}, {"height", s.image.height}};
  j["template"] = o.template_name;
  j["pad"] = o.pad && !config.anyres();
  if (config.anyres()) {
    const auto& a = s.input.tiles.layout;
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
  j["generated_tokens"] = static_cast<long long>(result.answer_ids.size());
  j["threads"] = llava::threads();
  j["timings_ms"] = {{"load", t.load},           {"preprocess", s.preprocess_ms}, {"vision", t.vision},
                     {"selection", t.selection}, {"projector", t.projector},      {"prefill", t.prefill},
                     {"decode", t.decode},       {"total", total_ms}};
  if (!o.overlay.empty()) j["overlay"] = o.overlay;
  std::cout << j.dump(2) << "\n";
}

void print_single_text(const cli_options& o, const llava::selection_options& sel, const single_run& s) {
  const auto& result = s.result;
  const auto& t = result.time;
  const double total_ms = t.load + s.preprocess_ms + t.vision + t.selection + t.projector + t.prefill + t.decode;
  const auto generated = static_cast<long long>(result.answer_ids.size());
  std::cout << s.answer << "\n\n";
  std::cout.flush();
  std::printf("method       %s%s%s\n", llava::to_string(sel.name), o.keep.empty() ? "" : "  keep ", o.keep.c_str());
  std::printf("tokens kept  %lld / %lld visual (prompt %lld tokens -> LLM sequence %lld)\n",
              static_cast<long long>(result.kept_tokens), static_cast<long long>(result.total_tokens),
              static_cast<long long>(s.input_ids.size()), static_cast<long long>(result.sequence_length));
  std::printf("load         %10.1f ms\n", t.load);
  std::printf("preprocess   %10.1f ms\n", s.preprocess_ms);
  std::printf("vision       %10.1f ms\n", t.vision);
  std::printf("selection    %10.1f ms\n", t.selection);
  std::printf("projector    %10.1f ms\n", t.projector);
  std::printf("prefill      %10.1f ms\n", t.prefill);
  std::printf("decode       %10.1f ms  (%lld tokens%s, %.1f tokens/s)\n", t.decode, generated,
              s.eos ? " incl. EOS" : "", t.decode > 0 ? 1000.0 * generated / t.decode : 0.0);
  std::printf("total        %10.1f ms  (%d threads)\n", total_ms, llava::threads());
  if (!o.overlay.empty()) std::printf("overlay      %s\n", o.overlay.c_str());
}

int run_single(const cli_options& o) {
  llava::prompt_template tmpl{};
  const llava::selection_options sel = selection_of(o, tmpl);
  const std::filesystem::path dir = model_dir(o);
  // Cheap checks first (the image's header and size, the config, the tokenizer), then the weights;
  // the image is preprocessed only once the weight shapes have been compared with the config, so
  // no buffer is sized by a config field that the weights contradict.
  single_run s;
  s.image = llava::load_image(o.image, o.pad);
  const auto config = llava::load_config(dir / "config.json");
  llava::tokenizer tok(dir, config.image_token_index, config.pad_token_id >= 0 ? config.pad_token_id : 32001);
  s.prompt = llava::format_prompt(tmpl, o.prompt);
  s.input_ids = tok.encode_prompt(s.prompt);
  s.pre = preprocessing(dir, config, o.pad);
  if (!o.overlay.empty()) check_output_folder(o.overlay, "overlay");  // checked again when written
  const auto model = load_model(o, dir);

  // LLaVA-NeXT: AnyRes tiles (LlavaNextImageProcessor, which never pads to a square); else one square.
  if (config.anyres() && !o.overlay.empty()) throw llava::error("llava: --overlay is not supported for LLaVA-NeXT (AnyRes) models");
  const auto t_pre = std::chrono::steady_clock::now();
  s.input = llava::prepare_image(s.image, config, s.pre);
  s.preprocess_ms = llava::ms_since(t_pre);

  llava::run_options ro;
  ro.selection = sel;
  if (o.max_new_tokens) ro.max_new_tokens = *o.max_new_tokens;
  progress("running (" + std::to_string(s.input_ids.size()) + " prompt tokens, method " + o.method + ")", true);
  s.result = model->run(s.input, s.input_ids, ro);
  s.answer = tok.decode(s.result.answer_ids);
  s.eos = !s.result.answer_ids.empty() && s.result.answer_ids.back() == tok.eos_id();
  if (!o.overlay.empty()) {
    const int g = config.vision.grid();
    llava::write_overlay(o.overlay, s.image, s.result.kept, tokensel::token_grid{g, g}, s.input.square.geometry);
  }
  if (o.json_out) {
    print_single_json(o, sel, config, s);
  } else {
    print_single_text(o, sel, s);
  }
  flush_stdout();
  return 0;
}

// ---- --eval ------------------------------------------------------------------------------------

void print_eval_text(const json& j) {
  auto pct = [](const json& t) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "%5lld / %-5lld  %6.2f %%  [%6.2f, %6.2f]", t["correct"].get<long long>(),
                  t["questions"].get<long long>(), 100 * t["accuracy"].get<double>(),
                  100 * t["ci95_wilson"][0].get<double>(), 100 * t["ci95_wilson"][1].get<double>());
    return std::string(buf);
  };
  std::printf("model        %s\n", j["model"].get<std::string>().c_str());
  std::printf("method       %s%s%s\n", j["method"].get<std::string>().c_str(), j["keep"].is_null() ? "" : "  keep ",
              j["keep"].is_null() ? "" : j["keep"].get<std::string>().c_str());
  std::printf("%-12s %s  (correct / questions, accuracy, 95 %% Wilson interval)\n", "overall", pct(j).c_str());
  for (const auto& [type, t] : j["per_type"].items()) std::printf("%-12s %s\n", type.c_str(), pct(t).c_str());
  std::printf("tokens       %.1f of %.1f visual kept (mean)\n", j["mean_kept_tokens"].get<double>(),
              j["mean_total_tokens"].get<double>());
  const auto& m = j["mean_timings_ms"];
  std::printf("mean ms      preprocess %.1f  vision %.1f  selection %.1f  projector %.1f  prefill %.1f (CPU %.1f)"
              "  decode %.1f  first token %.1f\n",
              m["preprocess"].get<double>(), m["vision"].get<double>(), m["selection"].get<double>(),
              m["projector"].get<double>(), m["prefill"].get<double>(), m["prefill_cpu"].get<double>(),
              m["decode"].get<double>(), m["first_token"].get<double>());
  std::printf("wall         %.2f s  (%d threads)\n", j["wall_s"].get<double>(), j["threads"].get<int>());
}

/// The calibration's outcome: the recipe written, its drops, keep count and FLOPs ratio.
json calibration_json(const cli_options& o, const tokensel::fitprune::fit_result& fit, std::size_t samples, double wall_s) {
  const auto& r = fit.recipe;
  const auto n = r.geometry.visual_tokens;
  json j;
  j["model"] = o.model;
  j["eval"] = o.eval;
  j["samples"] = samples;
  j["recipe"] = o.calibrate_out;
  j["reduction"] = r.reduction;
  j["geometry"] = {{"hidden", r.geometry.hidden}, {"ffn", r.geometry.ffn}, {"layers", r.geometry.layers}, {"visual_tokens", n}};
  j["drops"] = r.drops;
  j["keep_count"] = tokensel::fitprune::keep_count(n, r);
  j["flops_ratio"] = tokensel::fitprune::flops_ratio(r, n);  // the recipe's, by the library's FLOPs model
  j["fit_flops_ratio"] = fit.flops_ratio;                     // FIT's per-sample mean estimate
  j["alpha"] = fit.alpha;
  j["iterations"] = fit.iterations;
  j["reached"] = fit.reached;
  j["stop_layer"] = fit.stop_layer;
  j["from_qk"] = o.from_qk;
  j["wall_s"] = wall_s;
  return j;
}

void print_calibration_text(const json& j) {
  std::printf("recipe       %s (%zu samples)\n", j["recipe"].get<std::string>().c_str(), j["samples"].get<std::size_t>());
  std::printf("reduction    %.4f asked; flops_ratio %.4f (FIT estimate %.4f), alpha %.4f\n", j["reduction"].get<double>(),
              j["flops_ratio"].get<double>(), j["fit_flops_ratio"].get<double>(), j["alpha"].get<double>());
  std::string drops;
  for (const auto& d : j["drops"]) {
    if (!drops.empty()) drops += ' ';
    drops += std::to_string(d.get<long long>());
  }
  std::printf("drops        %s (per layer)\n", drops.c_str());
  std::printf("keep_count   %lld of %lld visual tokens reach the last layer\n", j["keep_count"].get<long long>(),
              j["geometry"]["visual_tokens"].get<long long>());
  std::printf("wall         %.2f s\n", j["wall_s"].get<double>());
}

int run_calibration(const cli_options& o, const llava::eval::setup& s, std::span<const llava::eval::question> qs,
                    const llava::eval::progress_fn& prog) {
  const auto t0 = std::chrono::steady_clock::now();
  const auto fit = llava::eval::calibrate_fitprune(s, qs, *o.reduction, std::filesystem::path(o.model).filename().string(), prog);
  try {
    tokensel::fitprune::save_recipe(fit.recipe, o.calibrate_out);
  } catch (const std::exception& e) {
    throw llava::error(std::string("llava: --fitprune-calibrate: ") + e.what());
  }
  const json j = calibration_json(o, fit, qs.size(), llava::ms_since(t0) / 1000.0);
  if (o.json_out) {
    std::cout << j.dump(2) << "\n";
  } else {
    print_calibration_text(j);
  }
  flush_stdout();
  return 0;
}

int run_eval(const cli_options& o) {
  llava::prompt_template tmpl{};
  const llava::selection_options sel = selection_of(o, tmpl);
  const std::filesystem::path dir = model_dir(o);
  auto questions = llava::eval::read_questions(o.eval);
  if (o.limit && static_cast<std::size_t>(*o.limit) < questions.size()) questions.resize(static_cast<std::size_t>(*o.limit));
  const auto config = llava::load_config(dir / "config.json");
  const llava::tokenizer tok(dir, config.image_token_index, config.pad_token_id >= 0 ? config.pad_token_id : 32001);
  const auto pre = preprocessing(dir, config, o.pad);
  if (!o.predictions.empty()) check_output_folder(o.predictions, "--predictions");
  if (!o.calibrate_out.empty()) {
    check_output_folder(o.calibrate_out, "--fitprune-calibrate");
    if (config.anyres()) throw llava::error("llava: --fitprune-calibrate needs a LLaVA-1.5 model (an AnyRes image's token count varies)");
  }
  const auto model = load_model(o, dir);

  llava::run_options ro;
  ro.selection = sel;
  if (o.max_new_tokens) ro.max_new_tokens = *o.max_new_tokens;
  const llava::eval::setup s{*model, tok, tmpl, pre, ro};
  const std::size_t step = std::max<std::size_t>(1, questions.size() / 10);
  const auto prog = [&](std::size_t done, std::size_t total) {
    if (isatty(fileno(stderr)) || done % step == 0 || done == total) {
      progress(std::to_string(done) + "/" + std::to_string(total) + " questions", done == total);
    }
  };
  if (!o.calibrate_out.empty()) return run_calibration(o, s, questions, prog);

  std::ofstream predictions;
  if (!o.predictions.empty()) {
    predictions.open(o.predictions, std::ios::binary | std::ios::trunc);
    if (!predictions) throw llava::error("llava: --predictions " + o.predictions + ": cannot open for writing");
  }
  const auto sum = llava::eval::evaluate(s, questions, o.predictions.empty() ? nullptr : &predictions, prog);
  predictions.close();
  if (!o.predictions.empty() && !predictions) throw llava::error("llava: --predictions " + o.predictions + ": write failed");
  json j = {{"model", o.model}, {"eval", o.eval}, {"method", llava::to_string(sel.name)},
            {"keep", o.keep.empty() ? json(nullptr) : json(o.keep)}, {"from_qk", sel.from_qk},
            {"template", o.template_name}, {"pad", o.pad && !config.anyres()}, {"max_new_tokens", ro.max_new_tokens},
            {"answer_rule", "lowercase, trim whitespace, strip trailing '.'; exact match"}};
  if (!o.fitprune_recipe.empty()) j["fitprune_recipe"] = o.fitprune_recipe;
  j.update(sum.to_json());
  j["threads"] = llava::threads();
  j["load_ms"] = model->load_ms();
  if (o.json_out) {
    std::cout << j.dump(2) << "\n";
  } else {
    print_eval_text(j);
  }
  flush_stdout();
  return 0;
}

int run(const cli_options& o) { return o.eval.empty() ? run_single(o) : run_eval(o); }

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
