// llava: batch evaluation and FitPrune calibration on a question file (see eval.hpp).
#include "llava/eval.hpp"

#include <algorithm>
#include <chrono>
#include <cctype>
#include <cmath>
#include <sstream>

#include "llava/anyres.hpp"
#include "llava/config.hpp"

namespace llava::eval {

namespace {

using json = nlohmann::ordered_json;
using clock_type = std::chrono::steady_clock;

/// A required string field of a question line.
std::string string_field(const json& j, const char* key, const std::string& where, bool required) {
  const auto it = j.find(key);
  if (it == j.end()) {
    if (required) throw error(where + ": missing field \"" + key + "\"");
    return {};
  }
  if (!it->is_string()) throw error(where + ": field \"" + key + "\" must be a string, got " + it->dump().substr(0, 80));
  std::string v = it->get<std::string>();
  if (v.empty()) throw error(where + ": field \"" + key + "\" is empty");
  return v;
}

question parse_line(const std::string& line, const std::filesystem::path& folder, const std::string& where, std::size_t number) {
  json j;
  try {
    j = json::parse(line);
  } catch (const json::exception& e) {
    throw error(where + ": invalid JSON: " + e.what());
  }
  if (!j.is_object()) throw error(where + ": must be a JSON object, got " + j.dump().substr(0, 80));
  question q;
  q.where = where;
  q.text = string_field(j, "question", where, true);
  q.answer = string_field(j, "answer", where, true);
  const std::string image = string_field(j, "image", where, true);
  const std::string type = string_field(j, "type", where, false);
  if (!type.empty()) q.type = type;
  const auto id = j.find("id");
  q.id = id != j.end() ? *id : json(number);
  const std::filesystem::path p(image);
  q.image = p.is_absolute() ? p : folder / p;
  std::error_code ec;
  if (!std::filesystem::is_regular_file(q.image, ec)) throw error(where + ": image not found: " + q.image.string());
  return q;
}

std::string trimmed(std::string_view s) {
  auto space = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
  while (!s.empty() && space(s.front())) s.remove_prefix(1);
  while (!s.empty() && space(s.back())) s.remove_suffix(1);
  return std::string(s);
}

json tally_json(const tally& t) {
  const interval ci = wilson_interval(t.correct, t.questions);
  return {{"questions", t.questions}, {"correct", t.correct}, {"accuracy", t.accuracy()}, {"ci95_wilson", {ci.lo, ci.hi}}};
}

/// The question's image, preprocessed as the single-image mode does, and the run.
run_result run_question(const setup& s, const question& q, double& preprocess_ms) {
  const auto t0 = clock_type::now();
  const model_image input = prepare_image(load_image(q.image, s.pre.pad), s.model.config(), s.pre);
  preprocess_ms = ms_since(t0);
  const auto ids = s.tok.encode_prompt(format_prompt(s.tmpl, q.text));
  return s.model.run(input, ids, s.options);
}

/// Runs f(question) for each; any exception leaves as llava::error prefixed with FILE:LINE.
template <class F>
void for_each_question(std::span<const question> questions, const progress_fn& progress, F&& f) {
  for (std::size_t i = 0; i < questions.size(); ++i) {
    try {
      f(questions[i]);
    } catch (const std::bad_alloc&) {
      throw;
    } catch (const std::exception& e) {
      std::string msg = e.what();
      if (msg.rfind("llava: ", 0) == 0) msg.erase(0, 7);
      throw error("llava: " + questions[i].where + ": " + msg);
    }
    if (progress) progress(i + 1, questions.size());
  }
}

}  // namespace

std::vector<question> read_questions(const std::filesystem::path& file) {
  const std::string text = read_input_file(file, max_json_file_bytes, "a JSON-lines file");
  const std::filesystem::path folder = file.parent_path();
  std::vector<question> out;
  std::istringstream in(text);
  std::string line;
  for (std::size_t number = 1; std::getline(in, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (trimmed(line).empty()) continue;
    const std::string where = file.string() + ":" + std::to_string(number);
    try {
      out.push_back(parse_line(line, folder, where, number));
    } catch (const error& e) {
      throw error(std::string("llava: ") + e.what());
    }
  }
  if (out.empty()) throw error("llava: " + file.string() + ": no questions (every line is blank)");
  return out;
}

std::string normalise_answer(std::string_view text) {
  std::string s = trimmed(text);
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  while (!s.empty() && s.back() == '.') s.pop_back();
  return trimmed(s);
}

bool answer_correct(std::string_view prediction, std::string_view answer) {
  return normalise_answer(prediction) == normalise_answer(answer);
}

// Wilson (1927): centre (p + z^2 / 2n) / (1 + z^2 / n), half-width
// z sqrt(p (1 - p) / n + z^2 / 4n^2) / (1 + z^2 / n).
interval wilson_interval(std::int64_t correct, std::int64_t n, double z) {
  if (n < 1 || correct < 0 || correct > n) {
    throw error("llava: wilson_interval: need 0 <= correct <= n and n >= 1, got " + std::to_string(correct) + " of " +
                std::to_string(n));
  }
  const double nn = static_cast<double>(n), p = static_cast<double>(correct) / nn, z2 = z * z;
  const double denom = 1.0 + z2 / nn;
  const double centre = (p + z2 / (2.0 * nn)) / denom;
  const double half = z * std::sqrt(p * (1.0 - p) / nn + z2 / (4.0 * nn * nn)) / denom;
  // The bounds at p = 0 and p = 1 are exactly 0 and 1 (centre - half cancels to a rounding residue).
  return {correct == 0 ? 0.0 : std::max(0.0, centre - half), correct == n ? 1.0 : std::min(1.0, centre + half)};
}

void summary::add(const question& q, bool correct, const run_result& r, double preprocess_ms) {
  for (tally* t : {&all, &per_type[q.type]}) {
    ++t->questions;
    t->correct += correct ? 1 : 0;
  }
  kept_tokens += static_cast<double>(r.kept_tokens);
  total_tokens += static_cast<double>(r.total_tokens);
  time.vision += r.time.vision;
  time.selection += r.time.selection;
  time.projector += r.time.projector;
  time.prefill += r.time.prefill;
  time.prefill_cpu += r.time.prefill_cpu;
  time.decode += r.time.decode;
  preprocess += preprocess_ms;
}

json summary::to_json() const {
  const double n = static_cast<double>(std::max<std::int64_t>(1, all.questions));
  json j = tally_json(all);
  json types = json::object();
  for (const auto& [name, t] : per_type) types[name] = tally_json(t);
  j["per_type"] = std::move(types);
  j["mean_kept_tokens"] = kept_tokens / n;
  j["mean_total_tokens"] = total_tokens / n;
  j["mean_timings_ms"] = {{"preprocess", preprocess / n},
                          {"vision", time.vision / n},
                          {"selection", time.selection / n},
                          {"projector", time.projector / n},
                          {"prefill", time.prefill / n},
                          {"prefill_cpu", time.prefill_cpu / n},
                          {"decode", time.decode / n},
                          {"first_token", (time.vision + time.selection + time.projector + time.prefill) / n}};
  j["wall_s"] = wall_s;
  return j;
}

summary evaluate(const setup& s, std::span<const question> questions, std::ostream* predictions, const progress_fn& progress) {
  summary sum;
  const auto t0 = clock_type::now();
  for_each_question(questions, progress, [&](const question& q) {
    double pre_ms = 0;
    const run_result r = run_question(s, q, pre_ms);
    const std::string prediction = s.tok.decode(r.answer_ids);
    const bool correct = answer_correct(prediction, q.answer);
    sum.add(q, correct, r, pre_ms);
    if (predictions) {
      const json line = {{"id", q.id},           {"type", q.type},       {"answer", q.answer},
                         {"prediction", prediction}, {"correct", correct}, {"kept_tokens", r.kept_tokens},
                         {"kept", r.kept}};
      *predictions << line.dump() << '\n';
      if (!*predictions) throw error("llava: cannot write the predictions file");
    }
  });
  sum.wall_s = ms_since(t0) / 1000.0;
  return sum;
}

tokensel::fitprune::fit_result calibrate_fitprune(const setup& s, std::span<const question> questions, double reduction,
                                                  const std::string& model_name, const progress_fn& progress) {
  const auto& cfg = s.model.config();
  if (cfg.anyres()) throw error("llava: --fitprune-calibrate needs a LLaVA-1.5 model (an AnyRes image's token count varies)");
  tokensel::fitprune::calibrator cal({cfg.text.hidden, cfg.text.intermediate, cfg.text.layers, cfg.image_tokens()});
  for_each_question(questions, progress, [&](const question& q) {
    const auto image = load_image(q.image, s.pre.pad);
    const auto pixels = preprocess(image, s.pre);
    const auto ids = s.tok.encode_prompt(format_prompt(s.tmpl, q.text));
    (void)s.model.calibrate_fitprune(pixels.pixels.data(), ids, cal, s.options.selection.from_qk);
  });
  tokensel::fitprune::fit_options opts;
  opts.model = model_name;
  try {
    return cal.fit(reduction, opts);
  } catch (const tokensel::error& e) {
    throw error(std::string("llava: fitprune calibration: ") + e.what());
  }
}

}  // namespace llava::eval
