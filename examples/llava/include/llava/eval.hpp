// llava: batch evaluation (`llava --eval FILE.jsonl`) and FitPrune calibration on a question file
// (`--fitprune-calibrate`).
//
// Question file: JSON lines, one object per line
//   {"id": ..., "image": "path", "question": "...", "answer": "red", "type": "color"}
// image relative to the file's folder (absolute allowed); id (any JSON value; default: the line
// number) and type (default "all") optional; blank lines skipped. Every other mistake (bad JSON, a
// missing or non-string field, an image that does not exist) is an error naming FILE:LINE.
//
// Each question runs the single-image path of the `llava` program (same template, padding and
// preprocessing; llava_model::run, greedy decoding). Correct when normalise(prediction) ==
// normalise(answer): ASCII lowercase, surrounding whitespace trimmed, trailing '.' removed (then
// trimmed again). Accuracy intervals: Wilson score interval at 95 % (z = 1.959963984540054).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <ostream>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>
#include <tokensel/methods/fitprune.hpp>

#include "llava/image.hpp"
#include "llava/pipeline.hpp"
#include "llava/tokenizer.hpp"

namespace llava::eval {

struct question {
  nlohmann::ordered_json id;      ///< the line's "id", or its line number
  std::filesystem::path image;    ///< resolved against the file's folder
  std::string text;               ///< "question"
  std::string answer;
  std::string type = "all";
  std::string where;              ///< "FILE:LINE", for messages
};

/// Every question of a JSON-lines file, in file order; throws llava::error naming FILE:LINE.
/// An empty file (no question) is an error too.
std::vector<question> read_questions(const std::filesystem::path& file);

/// ASCII lowercase, whitespace trimmed, trailing '.' removed, trimmed again.
std::string normalise_answer(std::string_view text);
bool answer_correct(std::string_view prediction, std::string_view answer);

/// Wilson score interval of a proportion correct / n (n >= 1) at the normal quantile z.
struct interval {
  double lo = 0.0, hi = 1.0;
};
inline constexpr double z95 = 1.959963984540054;
interval wilson_interval(std::int64_t correct, std::int64_t n, double z = z95);

struct tally {
  std::int64_t questions = 0, correct = 0;
  double accuracy() const noexcept { return questions > 0 ? static_cast<double>(correct) / static_cast<double>(questions) : 0.0; }
};

/// Sums over the questions of a run; to_json() gives the means.
struct summary {
  tally all;
  std::map<std::string, tally> per_type;
  double kept_tokens = 0, total_tokens = 0;
  timings time;             ///< sums of the per-question timings (load unused)
  double preprocess = 0;    ///< sum of image decode + preprocessing, ms
  double wall_s = 0;        ///< the whole loop, seconds

  void add(const question& q, bool correct, const run_result& r, double preprocess_ms);
  /// questions, correct, accuracy, ci95_wilson, per_type, mean_kept_tokens, mean_total_tokens,
  /// mean_timings_ms {preprocess, vision, selection, projector, prefill, prefill_cpu, decode,
  /// first_token}, wall_s.
  nlohmann::ordered_json to_json() const;
};

/// What every question shares: the model, the tokenizer, the prompt template, the preprocessing
/// and the run options (selection, max_new_tokens).
struct setup {
  const llava_model& model;
  const tokenizer& tok;
  prompt_template tmpl;
  preprocess_options pre;
  run_options options;
};

/// Progress: questions done, total.
using progress_fn = std::function<void(std::size_t, std::size_t)>;

/// Runs the questions; writes one JSON line per question to `predictions` when given (id, type,
/// answer, prediction, correct, kept_tokens, kept). Any failure is a llava::error naming the
/// question's FILE:LINE; the run stops there.
summary evaluate(const setup& s, std::span<const question> questions, std::ostream* predictions, const progress_fn& progress);

/// FitPrune calibration: the unpruned model on every question (prefill only) feeds a calibrator
/// with the checkpoint's geometry; then fit(reduction). Errors name FILE:LINE.
tokensel::fitprune::fit_result calibrate_fitprune(const setup& s, std::span<const question> questions, double reduction,
                                                  const std::string& model_name, const progress_fn& progress);

}  // namespace llava::eval
