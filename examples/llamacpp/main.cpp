// tokensel-llamacpp: tokensel inside llama.cpp's multimodal path (tools/mtmd), through its public
// API only.
//
//   tokensel-llamacpp --model TEXT.gguf --mmproj MMPROJ.gguf --image FILE --prompt TEXT
//                     [--template llava-hf|vicuna|raw] [--method NAME] [--keep RATIO|COUNT]
//                     [--from-qk] [--seed S] [--max-new-tokens N] [--threads T] [--json]
//
// The flow (docs/llamacpp.md): mtmd_tokenize splits the prompt into text and image chunks;
// mtmd_encode_chunk runs CLIP + the projector while cb_eval (capture.hpp) copies out what the
// method reads (Q/K with flash attention on, --from-qk; the softmax with it off); tokensel selects;
// only the kept rows of mtmd_get_output_embd go into the llama_batch (positions n_past + j), and
// greedy decoding follows. Flags and the JSON report follow examples/llava where they apply.
// Errors: one line on stderr; exit 2 for a bad command line, 1 for a failed run.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <gguf.h>
#include <llama.h>
#include <mtmd-helper.h>
#include <mtmd.h>

#include <tokensel/core/error.hpp>

#include "capture.hpp"
#include "common/cli_flags.hpp"
#include "projector.hpp"
#include "select.hpp"

namespace {

using json = nlohmann::ordered_json;
using clock_type = std::chrono::steady_clock;

using example_cli::parse_int;
using example_cli::usage_error;

constexpr const char* usage_text =
    "usage: tokensel-llamacpp --model TEXT.gguf --mmproj MMPROJ.gguf --image FILE --prompt TEXT [options]\n"
    "\n"
    "Answers a question about an image with a LLaVA GGUF model in llama.cpp, pruning the image\n"
    "tokens with a tokensel method between the encoder and the LLM prefill.\n"
    "\n"
    "  --model FILE           the text model (GGUF)\n"
    "  --mmproj FILE          the LLaVA vision encoder + projector (GGUF, clip architecture)\n"
    "  --image FILE           PNG or JPEG (mtmd pads it to a square and resizes it)\n"
    "  --prompt TEXT          the question (\"<image>\\n\" is put in front unless it has <image>)\n"
    "  --template NAME        llava-hf (default): USER: <image>\\n{q} ASSISTANT:\n"
    "                         vicuna: original LLaVA-1.5 system sentence + USER: ... ASSISTANT:\n"
    "                         raw: the prompt as given (must contain <image>)\n"
    "  --method NAME          none (default), fopru, freepruner, visionzip, random, uniform, pool,\n"
    "                         divprune, vispruner; prumerge, prumerge+, fastv, fitprune and dart\n"
    "                         are refused with the reason\n"
    "  --keep RATIO|COUNT     visual tokens to keep: a ratio in (0, 1] (0.5) or a count (144)\n"
    "  --from-qk              statistics from the layers' Q/K with CLIP flash attention on\n"
    "                         (default: flash attention off, statistics from the softmax)\n"
    "  --mtmd-prefill         prefill through llama.cpp's own mtmd_helper_eval_chunks (every image\n"
    "                         row, as llama-mtmd-cli); only with --method none: the reference\n"
    "  --seed S               seed of --method random (default 0)\n"
    "  --max-new-tokens N     greedy decoding stops at EOS or after N tokens (default 32)\n"
    "  --threads T            llama.cpp threads (default 1)\n"
    "  --json                 print one JSON object instead of text\n"
    "  -h, --help             this help\n";

struct cli_options {
  std::string model, mmproj, image, prompt, template_name = "llava-hf", method = "none", keep;
  bool json_out = false, from_qk = false, mtmd_prefill = false;
  int max_new_tokens = 32, threads = 1;
  std::uint64_t seed = 0;
};

std::map<std::string, std::string> parse_flags(int argc, char** argv) {
  static const std::map<std::string, bool> flags = {  // name -> takes a value
      {"model", true}, {"mmproj", true}, {"image", true}, {"prompt", true}, {"template", true},
      {"method", true}, {"keep", true}, {"seed", true}, {"max-new-tokens", true}, {"threads", true},
      {"json", false}, {"from-qk", false}, {"mtmd-prefill", false}, {"help", false}};
  return example_cli::parse_flags(argc, argv, flags);
}

cli_options parse(int argc, char** argv) {
  auto seen = parse_flags(argc, argv);
  if (seen.count("help")) {
    std::fputs(usage_text, stdout);
    std::exit(0);
  }
  for (const char* required : {"model", "mmproj", "image", "prompt"})
    if (!seen.count(required)) throw usage_error(std::string("--") + required + " is required (see --help)");
  cli_options o;
  o.model = seen["model"], o.mmproj = seen["mmproj"], o.image = seen["image"], o.prompt = seen["prompt"];
  if (seen.count("template")) o.template_name = seen["template"];
  if (seen.count("method")) o.method = seen["method"];
  if (seen.count("keep")) o.keep = seen["keep"];
  o.json_out = seen.count("json") != 0;
  o.from_qk = seen.count("from-qk") != 0;
  o.mtmd_prefill = seen.count("mtmd-prefill") != 0;
  if (seen.count("seed")) o.seed = static_cast<std::uint64_t>(parse_int("seed", seen["seed"], 0, INT64_MAX));
  if (seen.count("max-new-tokens")) o.max_new_tokens = static_cast<int>(parse_int("max-new-tokens", seen["max-new-tokens"], 0, 1 << 20));
  if (seen.count("threads")) o.threads = static_cast<int>(parse_int("threads", seen["threads"], 1, 4096));
  if (o.prompt.empty()) throw usage_error("--prompt is empty");
  return o;
}

/// examples/llava's templates, with mtmd's media marker in place of <image>.
std::string format_prompt(const std::string& name, std::string q) {
  static const std::string image = "<image>";
  if (name != "raw" && q.find(image) == std::string::npos) q = image + "\n" + q;
  std::string p;
  if (name == "raw") {
    if (q.find(image) == std::string::npos) throw usage_error("--template raw: the prompt must contain <image>");
    p = q;
  } else if (name == "llava-hf") {
    p = "USER: " + q + " ASSISTANT:";
  } else if (name == "vicuna") {
    p = "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: " + q + " ASSISTANT:";
  } else {
    throw usage_error("--template " + name + ": unknown template (llava-hf, vicuna, raw)");
  }
  const std::size_t at = p.find(image);
  if (p.find(image, at + 1) != std::string::npos) throw usage_error("the prompt has more than one <image>");
  return p.replace(at, image.size(), mtmd_default_marker());
}

double ms_since(clock_type::time_point t0) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
}

// llama.cpp's log: dropped, except the last error line, which a failed load then names.
std::string last_log_error;
void log_sink(ggml_log_level level, const char* text, void*) {
  if (level != GGML_LOG_LEVEL_ERROR || text == nullptr) return;
  std::string s(text);
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  if (!s.empty()) last_log_error = s;
}
std::string engine_reason() { return last_log_error.empty() ? "" : " (llama.cpp: " + last_log_error + ")"; }

void require_file(const std::string& flag, const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) throw std::runtime_error("--" + flag + " " + path + ": no such file");
  if (!std::filesystem::is_regular_file(path, ec)) throw std::runtime_error("--" + flag + " " + path + ": not a regular file");
}

std::string gguf_string(const gguf_context* g, const char* key) {
  const auto id = gguf_find_key(g, key);
  return id < 0 || gguf_get_kv_type(g, id) != GGUF_TYPE_STRING ? std::string() : gguf_get_val_str(g, id);
}
int gguf_int(const gguf_context* g, const char* key) {
  const auto id = gguf_find_key(g, key);
  if (id < 0) return -1;
  if (gguf_get_kv_type(g, id) == GGUF_TYPE_UINT32) return static_cast<int>(gguf_get_val_u32(g, id));
  if (gguf_get_kv_type(g, id) == GGUF_TYPE_ARRAY && gguf_get_arr_n(g, id) == 1 && gguf_get_arr_type(g, id) == GGUF_TYPE_INT32) {
    return static_cast<const std::int32_t*>(gguf_get_arr_data(g, id))[0];
  }
  return -1;
}

/// The mmproj's metadata, checked before mtmd loads it: a CLIP encoder with LLaVA's MLP projector
/// and one feature layer (what the selection's layer indices rest on).
tsl::vision_shape read_mmproj(const std::string& path) {
  gguf_init_params p{true, nullptr};
  std::unique_ptr<gguf_context, decltype(&gguf_free)> g(gguf_init_from_file(path.c_str(), p), gguf_free);
  if (!g) throw std::runtime_error("--mmproj " + path + ": not a GGUF file" + engine_reason());
  const std::string arch = gguf_string(g.get(), "general.architecture");
  if (arch != "clip") throw std::runtime_error("--mmproj " + path + ": architecture '" + arch + "', expected 'clip' (a LLaVA mmproj)");
  const std::string proj = gguf_string(g.get(), "clip.projector_type");
  if (proj != "mlp") throw std::runtime_error("--mmproj " + path + ": projector type '" + proj + "': only LLaVA's 'mlp' projector is served");
  tsl::vision_shape v;
  v.layers = gguf_int(g.get(), "clip.vision.block_count");
  const int image = gguf_int(g.get(), "clip.vision.image_size"), patch = gguf_int(g.get(), "clip.vision.patch_size");
  int hidden_index = gguf_int(g.get(), "clip.vision.feature_layer");  // hidden state index: layer + 1
  if (hidden_index < 0) hidden_index = v.layers;  // no key: llava default, the last stored layer
  if (v.layers < 1 || image < 1 || patch < 1 || hidden_index < 1 || hidden_index > v.layers) {
    throw std::runtime_error("--mmproj " + path + ": block_count / image_size / patch_size / feature_layer missing or inconsistent");
  }
  v.grid = image / patch;
  v.patches = v.grid * v.grid;
  v.feature_layer = hidden_index - 1;
  return v;
}

}  // namespace


namespace {

template <class T, void (*Free)(T*)>
struct deleter {
  void operator()(T* p) const noexcept { Free(p); }
};
using model_ptr = std::unique_ptr<llama_model, deleter<llama_model, llama_model_free>>;
using context_ptr = std::unique_ptr<llama_context, deleter<llama_context, llama_free>>;
using mtmd_ptr = std::unique_ptr<mtmd_context, deleter<mtmd_context, mtmd_free>>;
using bitmap_ptr = std::unique_ptr<mtmd_bitmap, deleter<mtmd_bitmap, mtmd_bitmap_free>>;
using chunks_ptr = std::unique_ptr<mtmd_input_chunks, deleter<mtmd_input_chunks, mtmd_input_chunks_free>>;

struct timings {  ///< milliseconds (wall clock)
  double load = 0, vision = 0, selection = 0, prefill = 0, decode = 0;
  /// CPU time of the process (all threads) during the prefill: the work done, less sensitive to
  /// other processes on a shared machine than the wall time (exact with --threads 1).
  double prefill_cpu = 0;
};

double cpu_ms() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) * 1e3 + static_cast<double>(t.tv_nsec) * 1e-6;
}

/// The prompt as llama.cpp splits it: text before the image, the image chunk, text after.
struct prompt_parts {
  std::vector<llama_token> before, after;
  const mtmd_input_chunk* image = nullptr;
};

prompt_parts split_prompt(const mtmd_input_chunks* chunks) {
  prompt_parts p;
  for (std::size_t i = 0; i < mtmd_input_chunks_size(chunks); ++i) {
    const auto* c = mtmd_input_chunks_get(chunks, i);
    if (mtmd_input_chunk_get_type(c) == MTMD_INPUT_CHUNK_TYPE_IMAGE) {
      if (p.image) throw usage_error("the prompt has more than one image");
      p.image = c;
      continue;
    }
    std::size_t n = 0;
    const llama_token* t = mtmd_input_chunk_get_tokens_text(c, &n);
    auto& dst = p.image ? p.after : p.before;
    dst.insert(dst.end(), t, t + n);
  }
  if (!p.image) throw usage_error("the prompt has no image chunk");
  return p;
}

struct engine {
  model_ptr model;
  mtmd_ptr mtmd;
  context_ptr ctx;
};

engine load(const cli_options& o, tsl::capture& cap) {
  engine e;
  llama_model_params mp = llama_model_default_params();
  mp.n_gpu_layers = 0;
  e.model.reset(llama_model_load_from_file(o.model.c_str(), mp));
  if (!e.model) throw std::runtime_error("--model " + o.model + ": llama.cpp could not load it" + engine_reason());
  mtmd_context_params p = mtmd_context_params_default();
  p.use_gpu = false;
  p.print_timings = false;
  p.n_threads = o.threads;
  p.warmup = false;  // a warm-up encode would run the capture callback too
  // Flash attention decides what the graph exposes: with it on there is no softmax node, only Q/K.
  p.flash_attn_type = o.from_qk ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
  p.cb_eval = &tsl::capture::callback;
  p.cb_eval_user_data = &cap;
  last_log_error.clear();
  e.mtmd.reset(mtmd_init_from_file(o.mmproj.c_str(), e.model.get(), p));
  if (!e.mtmd) throw std::runtime_error("--mmproj " + o.mmproj + ": mtmd could not load it" + engine_reason());
  if (!mtmd_support_vision(e.mtmd.get())) throw std::runtime_error("--mmproj " + o.mmproj + ": no vision encoder");
  return e;
}

/// CLIP + projector through mtmd, with the capture on; returns the projected rows [n, Dt].
std::vector<float> encode(engine& e, const mtmd_input_chunk* image, tsl::capture& cap, const tsl::vision_shape& v) {
  cap.reset();
  if (mtmd_encode_chunk(e.mtmd.get(), image) != 0) throw std::runtime_error("mtmd could not encode the image" + engine_reason());
  if (!cap.failure.empty()) throw std::runtime_error("capture: " + cap.failure);
  if (!cap.cls_first) throw std::runtime_error("the mmproj's CLIP graph has no CLS token (v.class_embd): not a LLaVA encoder");
  for (int l : cap.softmax_layers)
    if (!cap.probs.count(l)) throw std::runtime_error("the CLIP graph exposed no softmax for layer " + std::to_string(l) + " (flash attention on?)");
  for (int l : cap.qk_layers) {
    if (!cap.qk.count(l) || cap.qk.at(l).q.empty() || cap.qk.at(l).k.empty()) {
      throw std::runtime_error("the CLIP graph exposed no Qcur/Kcur for layer " + std::to_string(l));
    }
  }
  if (cap.hidden_layer >= 0 && cap.hidden.empty()) {
    throw std::runtime_error("the CLIP graph exposed no layer_out-" + std::to_string(cap.hidden_layer));
  }
  const auto n = static_cast<int>(mtmd_input_chunk_get_n_tokens(image));
  if (n != v.patches) {
    throw std::runtime_error("mtmd produced " + std::to_string(n) + " image rows; the mmproj's geometry says " + std::to_string(v.patches));
  }
  const int width = llama_model_n_embd_inp(e.model.get());
  const float* rows = mtmd_get_output_embd(e.mtmd.get());
  return std::vector<float>(rows, rows + static_cast<std::size_t>(n) * width);
}

void decode_or_throw(llama_context* ctx, const llama_batch& b, const char* what) {
  if (llama_decode(ctx, b) != 0) throw std::runtime_error(std::string("llama_decode failed on ") + what + engine_reason());
}

void decode_tokens(llama_context* ctx, std::vector<llama_token>& t, llama_pos& n_past, bool logits_last) {
  if (t.empty()) return;
  llama_batch b = llama_batch_init(static_cast<std::int32_t>(t.size()), 0, 1);
  for (std::size_t j = 0; j < t.size(); ++j) {
    b.token[j] = t[j];
    b.pos[j] = n_past + static_cast<llama_pos>(j);
    b.n_seq_id[j] = 1;
    b.seq_id[j][0] = 0;
    b.logits[j] = logits_last && j + 1 == t.size();
  }
  b.n_tokens = static_cast<std::int32_t>(t.size());
  try {
    decode_or_throw(ctx, b, "the text");
  } catch (...) {
    llama_batch_free(b);
    throw;
  }
  llama_batch_free(b);
  n_past += static_cast<llama_pos>(t.size());
}

/// The kept image rows [k, width], at consecutive positions n_past + j (the integration point).
void decode_rows(llama_context* ctx, const std::vector<float>& rows, int width, llama_pos& n_past, bool logits_last) {
  const auto k = static_cast<std::int32_t>(rows.size() / static_cast<std::size_t>(width));
  if (k == 0) return;
  llama_batch b = llama_batch_init(k, width, 1);
  std::memcpy(b.embd, rows.data(), sizeof(float) * rows.size());
  for (std::int32_t j = 0; j < k; ++j) {
    b.pos[j] = n_past + j;
    b.n_seq_id[j] = 1;
    b.seq_id[j][0] = 0;
    b.logits[j] = logits_last && j + 1 == k;
  }
  b.n_tokens = k;
  try {
    decode_or_throw(ctx, b, "the image rows");
  } catch (...) {
    llama_batch_free(b);
    throw;
  }
  llama_batch_free(b);
  n_past += k;
}

/// Greedy decoding from the prefill's last logits (ties: the lower id).
std::vector<llama_token> generate(llama_context* ctx, const llama_vocab* vocab, llama_pos n_past, int max_new) {
  std::vector<llama_token> out;
  const int n_vocab = llama_vocab_n_tokens(vocab);
  while (static_cast<int>(out.size()) < max_new) {
    const float* logits = llama_get_logits_ith(ctx, -1);
    llama_token best = 0;
    for (llama_token t = 1; t < n_vocab; ++t)
      if (logits[t] > logits[best]) best = t;
    out.push_back(best);
    if (llama_vocab_is_eog(vocab, best) || static_cast<int>(out.size()) == max_new) break;
    std::vector<llama_token> one{best};
    decode_tokens(ctx, one, n_past, true);
  }
  return out;
}

std::string detokenize(const llama_vocab* vocab, const std::vector<llama_token>& ids) {
  std::string s;
  char buf[256];
  for (llama_token t : ids) {
    if (llama_vocab_is_eog(vocab, t)) continue;
    const int n = llama_token_to_piece(vocab, t, buf, sizeof buf, 0, false);
    if (n > 0) s.append(buf, static_cast<std::size_t>(n));
  }
  const auto first = s.find_first_not_of(' ');
  return first == std::string::npos ? std::string() : s.substr(first);
}

/// mtmd row of each kept patch. CLS first (fixed graph): row p. CLS last (as shipped): row r is
/// graph token r + 1 = patch r + 1, so patch p is row p - 1 and patch 0 has no row.
std::vector<int> rows_of(const std::vector<std::int32_t>& kept, bool cls_first, std::vector<std::int32_t>& lost) {
  std::vector<int> rows;
  for (auto p : kept) {
    if (cls_first) {
      rows.push_back(p);
    } else if (p == 0) {
      lost.push_back(p);
    } else {
      rows.push_back(p - 1);
    }
  }
  return rows;
}

struct outcome {
  std::vector<std::int32_t> kept, lost;
  std::vector<llama_token> input_before, input_after, answer;
  std::int64_t sequence_length = 0;
  std::int64_t image_rows = 0;  ///< image rows the LLM reads
  timings t;
};

void print_report(const cli_options& o, const tsl::selection_options& sel, const tsl::vision_shape& v,
                  const tsl::capture& cap, const outcome& r, const std::string& prompt, const std::string& answer,
                  const llama_vocab* vocab, const mtmd_bitmap* bmp) {
  const bool eos = !r.answer.empty() && llama_vocab_is_eog(vocab, r.answer.back());
  const double total = r.t.load + r.t.vision + r.t.selection + r.t.prefill + r.t.decode;
  if (!o.json_out) {
    std::cout << answer << "\n\n";
    std::printf("method       %s%s%s\n", tsl::to_string(sel.name), o.keep.empty() ? "" : "  keep ", o.keep.c_str());
    std::printf("tokens kept  %lld / %d visual (LLM sequence %lld), CLS %s, statistics from %s\n", static_cast<long long>(r.image_rows),
                v.patches, static_cast<long long>(r.sequence_length), cap.cls_first.value_or(true) ? "first" : "last",
                o.from_qk ? "Q/K (flash attention on)" : "the softmax (flash attention off)");
    std::printf("load %.1f ms, vision %.1f ms, selection %.1f ms, prefill %.1f ms, decode %.1f ms (%zu tokens), total %.1f ms\n",
                r.t.load, r.t.vision, r.t.selection, r.t.prefill, r.t.decode, r.answer.size(), total);
    return;
  }
  json j;
  j["answer"] = answer;
  j["answer_ids"] = r.answer;
  j["stopped_at_eos"] = eos;
  j["prompt"] = prompt;
  json ids = r.input_before;
  ids.push_back(nullptr);  // the image slot (llama.cpp has no image token id)
  for (auto t : r.input_after) ids.push_back(t);
  j["input_ids"] = ids;
  j["model"] = o.model;
  j["mmproj"] = o.mmproj;
  j["image"] = {{"path", o.image}, {"width", mtmd_bitmap_get_nx(bmp)}, {"height", mtmd_bitmap_get_ny(bmp)}};
  j["template"] = o.template_name;
  j["pad"] = true;
  j["method"] = tsl::to_string(sel.name);
  if (!o.keep.empty()) j["keep"] = o.keep;
  j["kept_tokens"] = r.image_rows;  // image rows fed to the LLM (VisionZip: CLS + dominant + contextual)
  j["total_tokens"] = v.patches;
  j["kept"] = r.kept;
  j["sequence_length"] = r.sequence_length;
  j["from_qk"] = o.from_qk;
  j["attention_maps"] = cap.probs.size();  // softmax maps read for selection (0 with --from-qk)
  j["final_length"] = r.sequence_length;
  j["generated_tokens"] = r.answer.size();
  j["threads"] = o.threads;
  j["engine"] = "llama.cpp 0c1e570 (llama-cpp-python 0.3.36)";
  j["cls_layout"] = cap.cls_first.value_or(true) ? "first" : "last";
  if (!r.lost.empty()) j["kept_without_row"] = r.lost;
  j["timings_ms"] = {{"load", r.t.load},       {"vision", r.t.vision}, {"selection", r.t.selection},
                     {"prefill", r.t.prefill}, {"prefill_cpu", r.t.prefill_cpu}, {"decode", r.t.decode},
                     {"total", total}};
  std::cout << j.dump(2) << "\n";
}

tsl::selection_options selection_of(const cli_options& o) {
  tsl::selection_options sel;
  try {
    sel.name = tsl::parse_method(o.method);
    if (!o.keep.empty()) sel.keep = tsl::parse_keep(o.keep);
  } catch (const std::runtime_error& e) {
    throw usage_error(e.what());
  }
  if (!o.keep.empty() && sel.name == tsl::method::none) throw usage_error("--keep needs --method");
  if (o.mtmd_prefill && sel.name != tsl::method::none) throw usage_error("--mtmd-prefill decodes every image row: only with --method none");
  sel.seed = o.seed;
  sel.from_qk = o.from_qk;
  return sel;
}

/// Selection on what the encode captured: the kept patches, and the rows the LLM reads [k, width]
/// (mtmd's rows of the kept patches, or the method's own rows through the mmproj's projector).
std::vector<float> select_rows(const cli_options& o, const tsl::selection_options& sel, const tsl::vision_shape& v,
                               const tsl::capture& cap, const std::vector<float>& rows, int width, outcome& r) {
  const bool cls_first = *cap.cls_first;
  if (!cls_first && sel.name == tsl::method::divprune) {
    throw std::runtime_error("divprune reads every patch's projected row; this graph (CLS last, unpatched) drops patch 0: "
                             "build with tools/llamacpp/cls-first.patch");
  }
  auto chosen = tsl::select_tokens(sel, v, cap, rows.data(), width);
  r.kept = chosen.kept;
  if (chosen.feature_rows > 0) {  // VisionZip's and pool's own CLIP rows, projected here
    const tsl::mlp_projector proj(o.mmproj);
    if (proj.in_features() != cap.width || proj.out_features() != width) throw std::runtime_error("--mmproj " + o.mmproj + ": projector shape does not match the encoder / the text model");
    return proj.forward(chosen.features.data(), chosen.feature_rows, o.threads);
  }
  // No method: every mtmd row, exactly what llama.cpp itself decodes (in the CLS-last graph that
  // is patches 1 .. n-1 and CLS).
  std::vector<int> which(r.kept.begin(), r.kept.end());
  if (sel.name != tsl::method::none) which = rows_of(r.kept, cls_first, r.lost);
  if (!r.lost.empty()) {
    std::fprintf(stderr, "tokensel-llamacpp: warning: kept patch 0 has no mtmd row in the CLS-last graph; decoding %zu rows\n",
                 which.size());
  }
  std::vector<float> out(which.size() * static_cast<std::size_t>(width));
  for (std::size_t j = 0; j < which.size(); ++j)
    std::memcpy(out.data() + j * width, rows.data() + static_cast<std::size_t>(which[j]) * width, sizeof(float) * width);
  return out;
}

/// The prefill: ours (text, the kept image rows, text), or with --mtmd-prefill llama.cpp's own
/// (mtmd_helper_eval_chunks, as llama-mtmd-cli: it encodes the image again and decodes every row).
llama_pos prefill(const cli_options& o, engine& e, prompt_parts& parts, const mtmd_input_chunks* chunks,
                  const std::vector<float>& image_rows, int width, outcome& r) {
  llama_pos n_past = 0;
  const double cpu0 = cpu_ms();
  const auto t0 = clock_type::now();
  if (o.mtmd_prefill) {
    const auto n_batch = static_cast<std::int32_t>(llama_n_batch(e.ctx.get()));
    if (mtmd_helper_eval_chunks(e.mtmd.get(), e.ctx.get(), chunks, 0, 0, n_batch, true, &n_past) != 0) {
      throw std::runtime_error("mtmd_helper_eval_chunks failed" + engine_reason());
    }
  } else {
    decode_tokens(e.ctx.get(), parts.before, n_past, false);
    decode_rows(e.ctx.get(), image_rows, width, n_past, parts.after.empty());
    decode_tokens(e.ctx.get(), parts.after, n_past, true);
  }
  r.t.prefill = ms_since(t0);
  r.t.prefill_cpu = cpu_ms() - cpu0;
  return n_past;
}

int run(const cli_options& o) {
  const auto sel = selection_of(o);
  const std::string prompt = format_prompt(o.template_name, o.prompt);
  require_file("model", o.model);
  require_file("mmproj", o.mmproj);
  require_file("image", o.image);
  llama_log_set(log_sink, nullptr);
  mtmd_helper_log_set(log_sink, nullptr);  // mtmd's and its helpers' (image decoding) log
  const tsl::vision_shape v = read_mmproj(o.mmproj);
  tsl::capture cap;
  try {  // the method's config errors (a --keep it cannot take) before any load, as usage errors
    tsl::plan_capture(sel, v, cap);
  } catch (const tokensel::error& e) {
    std::string msg = e.what();
    if (msg.rfind("tokensel: ", 0) == 0) msg.erase(0, 10);
    throw usage_error("--method " + o.method + (o.keep.empty() ? "" : " --keep " + o.keep) + ": " + msg);
  }

  outcome r;
  auto t0 = clock_type::now();
  llama_backend_init();
  engine e = load(o, cap);
  r.t.load = ms_since(t0);
  bitmap_ptr bmp(mtmd_helper_bitmap_init_from_file(e.mtmd.get(), o.image.c_str(), false, mtmd_helper_init_opt_default()).bitmap);
  if (!bmp) throw std::runtime_error("--image " + o.image + ": cannot decode it as an image" + engine_reason());
  chunks_ptr chunks(mtmd_input_chunks_init());
  const mtmd_input_text text{prompt.c_str(), prompt.size(), true, true};
  const mtmd_bitmap* bitmaps[] = {bmp.get()};
  if (mtmd_tokenize(e.mtmd.get(), chunks.get(), &text, bitmaps, 1) != 0) throw std::runtime_error("mtmd could not tokenize the prompt" + engine_reason());
  auto parts = split_prompt(chunks.get());
  r.input_before = parts.before, r.input_after = parts.after;

  t0 = clock_type::now();
  const auto rows = encode(e, parts.image, cap, v);
  r.t.vision = ms_since(t0);
  const int width = llama_model_n_embd_inp(e.model.get());
  t0 = clock_type::now();
  const auto image_rows = select_rows(o, sel, v, cap, rows, width, r);
  r.t.selection = ms_since(t0);
  r.image_rows = static_cast<std::int64_t>(image_rows.size() / static_cast<std::size_t>(width));

  r.sequence_length = static_cast<std::int64_t>(parts.before.size() + parts.after.size()) + r.image_rows;
  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = cp.n_batch = cp.n_ubatch = static_cast<std::uint32_t>(r.sequence_length + o.max_new_tokens + 1);
  cp.n_threads = cp.n_threads_batch = o.threads;
  cp.no_perf = true;
  e.ctx.reset(llama_init_from_model(e.model.get(), cp));
  if (!e.ctx) throw std::runtime_error("llama.cpp could not create a context" + engine_reason());
  const llama_pos n_past = prefill(o, e, parts, chunks.get(), image_rows, width, r);
  const llama_vocab* vocab = llama_model_get_vocab(e.model.get());
  t0 = clock_type::now();
  if (o.max_new_tokens > 0) r.answer = generate(e.ctx.get(), vocab, n_past, o.max_new_tokens);
  r.t.decode = ms_since(t0);
  print_report(o, sel, v, cap, r, prompt, detokenize(vocab, r.answer), vocab, bmp.get());
  std::cout.flush();
  if (!std::cout) throw std::runtime_error("cannot write the output to stdout");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  cli_options o;
  try {
    o = parse(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tokensel-llamacpp: error: %s\n", e.what());
    return 2;
  }
  try {
    return run(o);
  } catch (const usage_error& e) {
    std::fprintf(stderr, "tokensel-llamacpp: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::string msg = e.what();
    for (char& c : msg)
      if (c == '\n' || c == '\r') c = ' ';
    if (msg.rfind("tokensel: ", 0) == 0) msg.erase(0, 10);
    std::fprintf(stderr, "tokensel-llamacpp: error: %s\n", msg.c_str());
    return 1;
  }
}
