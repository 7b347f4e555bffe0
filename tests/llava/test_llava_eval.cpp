// Batch evaluation (`llava --eval`) and FitPrune calibration (`--fitprune-calibrate`) on the
// committed tiny checkpoint (random weights: the answers are nonsense, so the expected answers
// are taken from single-image runs). Batch mode must give exactly the single mode's answer and
// kept indices; the counts must add up; errors name FILE:LINE; a calibrated recipe must load, meet
// its FLOPs target and run.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <tokensel/io/fitprune_json.hpp>

#include "cli_process.hpp"
#include "llava/eval.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const fs::path data_dir = LLAVA_TEST_DATA;
const fs::path model_dir = data_dir / "llava-tiny-fp32";
const fs::path images = data_dir / "llava-images";
const std::string cli = LLAVA_CLI_PATH;

using cli_result = llava_test::process_result;
using llava_test::slurp;

/// A fresh folder per test (removed at the end).
class Eval : public ::testing::Test {
 public:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / ("llava_eval_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  cli_result run(const std::vector<std::string>& args) const {
    return llava_test::run_process(cli, args, dir_ / "stderr.txt");
  }
  fs::path write(const std::string& name, const std::string& text) const {
    std::ofstream(dir_ / name, std::ios::binary) << text;
    return dir_ / name;
  }
  fs::path dir_;
};

struct case_t {
  std::string image, question, type;
};

// One image by a path relative to the question file (copied next to it), the others absolute.
const std::vector<case_t> cases = {{"shapes112.png", "What colour is the triangle?", "color"},
                                   {"scene112.png", "How many circles?", "count"},
                                   {"shapes.png", "What shape is in the top-left?", "shape"},
                                   {"scene.jpg", "What colour is the square?", "color"}};

std::vector<std::string> selection_args(const std::string& method) {
  if (method == "none") return {};
  return {"--method", method, "--keep", "0.5"};
}

/// Single-mode answer and kept indices of every case.
std::vector<json> single_runs(const Eval& t, const std::string& method) {
  std::vector<json> out;
  for (const auto& c : cases) {
    std::vector<std::string> args = {"--model", model_dir.string(), "--image", (images / c.image).string(), "--prompt",
                                     c.question, "--max-new-tokens", "4", "--json"};
    for (const auto& a : selection_args(method)) args.push_back(a);
    const auto r = t.run(args);
    EXPECT_EQ(r.status, 0) << r.err;
    out.push_back(json::parse(r.out));
  }
  return out;
}

/// The question file: answers 0 and 2 are the single mode's (correct), 1 and 3 are not.
std::string question_file(const fs::path& dir, const std::vector<json>& single) {
  fs::copy_file(images / cases[0].image, dir / cases[0].image, fs::copy_options::overwrite_existing);
  std::string text;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const std::string image = i == 0 ? cases[i].image : (images / cases[i].image).string();
    const std::string answer = i % 2 == 0 ? single[i]["answer"].get<std::string>() : "no-such-answer";
    json line = {{"id", std::string("q").append(std::to_string(i))}, {"image", image}, {"question", cases[i].question}, {"answer", answer}};
    line["type"] = cases[i].type;
    text += line.dump() + "\n";
    if (i == 1) text += "\n";  // blank lines are skipped
  }
  return text;
}

void expect_batch_equals_single(const std::string& method, const std::vector<json>& single, const cli_result& r,
                                const fs::path& predictions) {
  ASSERT_EQ(r.status, 0) << r.err;
  const json j = json::parse(r.out);
  EXPECT_EQ(j["method"], method);
  EXPECT_EQ(j["questions"], 4);
  EXPECT_EQ(j["correct"], 2);
  EXPECT_DOUBLE_EQ(j["accuracy"].get<double>(), 0.5);
  // Hand-computed Wilson interval of 2 of 4 at z = 1.959963984540054: 0.150039, 0.849961.
  EXPECT_NEAR(j["ci95_wilson"][0].get<double>(), 0.150038989, 1e-8);
  EXPECT_NEAR(j["ci95_wilson"][1].get<double>(), 0.849961011, 1e-8);
  long long type_q = 0, type_c = 0;
  for (const auto& [name, tt] : j["per_type"].items()) {
    type_q += tt["questions"].get<long long>();
    type_c += tt["correct"].get<long long>();
  }
  EXPECT_EQ(type_q, 4);
  EXPECT_EQ(type_c, 2);
  EXPECT_EQ(j["per_type"]["color"]["questions"], 2);  // cases 0 (correct) and 3 (wrong)
  EXPECT_EQ(j["per_type"]["color"]["correct"], 1);
  EXPECT_EQ(j["per_type"]["count"]["correct"], 0);
  EXPECT_EQ(j["per_type"]["shape"]["correct"], 1);
  const auto& m = j["mean_timings_ms"];
  for (const char* key : {"preprocess", "vision", "selection", "projector", "prefill", "prefill_cpu", "decode"}) {
    EXPECT_GE(m[key].get<double>(), 0.0) << key;
  }
  EXPECT_NEAR(m["first_token"].get<double>(),
              m["vision"].get<double>() + m["selection"].get<double>() + m["projector"].get<double>() + m["prefill"].get<double>(), 1e-6);

  std::istringstream lines(slurp(predictions));
  std::string line;
  double kept_sum = 0;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    ASSERT_TRUE(std::getline(lines, line)) << "prediction line " << i;
    const json p = json::parse(line);
    SCOPED_TRACE(method + " question " + std::to_string(i));
    EXPECT_EQ(p["id"], std::string("q").append(std::to_string(i)));
    EXPECT_EQ(p["type"], cases[i].type);
    EXPECT_EQ(p["prediction"], single[i]["answer"]);
    EXPECT_EQ(p["kept"], single[i]["kept"]);
    EXPECT_EQ(p["kept_tokens"], single[i]["kept_tokens"]);
    EXPECT_EQ(p["correct"], i % 2 == 0);
    kept_sum += p["kept_tokens"].get<double>();
  }
  EXPECT_FALSE(std::getline(lines, line));
  EXPECT_DOUBLE_EQ(j["mean_kept_tokens"].get<double>(), kept_sum / 4);
}

}  // namespace

TEST(EvalRules, NormalisedExactMatch) {
  EXPECT_EQ(llava::eval::normalise_answer("  Red.\n"), "red");
  EXPECT_EQ(llava::eval::normalise_answer("YES . "), "yes");
  EXPECT_TRUE(llava::eval::answer_correct(" Triangle.", "triangle"));
  EXPECT_TRUE(llava::eval::answer_correct("3", "3."));
  EXPECT_FALSE(llava::eval::answer_correct("red square", "red"));
  EXPECT_FALSE(llava::eval::answer_correct("", "red"));
}

// Reference values: the worked examples of Newcombe (1998), "Two-sided confidence intervals for the
// single proportion", Statistics in Medicine 17:857-872, score method without continuity
// correction (Wilson), 4 decimals.
TEST(EvalRules, WilsonIntervalMatchesPublishedValues) {
  struct ref {
    std::int64_t c, n;
    double lo, hi;
  };
  for (const ref& r : {ref{81, 263, 0.2553, 0.3662}, ref{15, 148, 0.0624, 0.1605}, ref{0, 20, 0.0, 0.1611},
                       ref{1, 29, 0.0061, 0.1718}}) {
    const auto ci = llava::eval::wilson_interval(r.c, r.n);
    EXPECT_NEAR(ci.lo, r.lo, 6e-5) << r.c << "/" << r.n;
    EXPECT_NEAR(ci.hi, r.hi, 6e-5) << r.c << "/" << r.n;
  }
  EXPECT_EQ(llava::eval::wilson_interval(0, 3).lo, 0.0);
  EXPECT_EQ(llava::eval::wilson_interval(3, 3).hi, 1.0);
  EXPECT_THROW((void)llava::eval::wilson_interval(1, 0), llava::error);
  EXPECT_THROW((void)llava::eval::wilson_interval(4, 3), llava::error);
}

TEST_F(Eval, ReadQuestionsDefaultsAndPaths) {
  fs::copy_file(images / "shapes112.png", dir_ / "shapes112.png");
  const auto file = write("q.jsonl", "\n{\"image\": \"shapes112.png\", \"question\": \"Q?\", \"answer\": \"red\"}\r\n"
                                     "{\"id\": 5, \"image\": \"" + (images / "scene.jpg").string() +
                                     "\", \"question\": \"Q2\", \"answer\": \"3\", \"type\": \"count\", \"extra\": 1}\n");
  const auto qs = llava::eval::read_questions(file);
  ASSERT_EQ(qs.size(), 2u);
  EXPECT_EQ(qs[0].id, 2);  // the line number when absent
  EXPECT_EQ(qs[0].type, "all");
  EXPECT_EQ(qs[0].image, dir_ / "shapes112.png");
  EXPECT_EQ(qs[0].where, file.string() + ":2");
  EXPECT_EQ(qs[1].id, 5);
  EXPECT_EQ(qs[1].type, "count");
  EXPECT_EQ(qs[1].image, images / "scene.jpg");
}

TEST_F(Eval, BatchEqualsSingleMode) {
  for (const std::string method : {"none", "fastv", "fopru"}) {
    SCOPED_TRACE(method);
    const auto single = single_runs(*this, method);
    ASSERT_EQ(single.size(), cases.size());
    const auto qfile = write("q.jsonl", question_file(dir_, single));
    const auto preds = dir_ / ("pred_" + method + ".jsonl");
    std::vector<std::string> args = {"--model", model_dir.string(), "--eval", qfile.string(), "--max-new-tokens", "4",
                                     "--json", "--predictions", preds.string()};
    for (const auto& a : selection_args(method)) args.push_back(a);
    expect_batch_equals_single(method, single, run(args), preds);
  }
}

// LLaVA-NeXT: every question takes the AnyRes path of the single mode (tiles, packed image tokens).
TEST_F(Eval, AnyResBatchEqualsSingleMode) {
  const fs::path next = data_dir / "llava-next-tiny-bf16";
  const std::vector<std::string> sel = {"--method", "fastv", "--keep", "0.5", "--max-new-tokens", "3"};
  std::string text;
  std::vector<json> single;
  for (const std::string image : {"tall.png", "square.png"}) {
    std::vector<std::string> args = {"--model", next.string(), "--image", (next / image).string(), "--prompt", "What colour?", "--json"};
    args.insert(args.end(), sel.begin(), sel.end());
    const auto r = run(args);
    ASSERT_EQ(r.status, 0) << r.err;
    single.push_back(json::parse(r.out));
    text += json{{"image", (next / image).string()}, {"question", "What colour?"}, {"answer", single.back()["answer"]}}.dump() + "\n";
  }
  const auto preds = dir_ / "pred.jsonl";
  std::vector<std::string> args = {"--model", next.string(), "--eval", write("q.jsonl", text).string(), "--json",
                                   "--predictions", preds.string()};
  args.insert(args.end(), sel.begin(), sel.end());
  const auto r = run(args);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["correct"], 2);
  std::istringstream lines(slurp(preds));
  std::string line;
  for (const auto& s : single) {
    ASSERT_TRUE(std::getline(lines, line));
    const json p = json::parse(line);
    EXPECT_EQ(p["prediction"], s["answer"]);
    EXPECT_EQ(p["kept"], s["kept"]);
    EXPECT_EQ(p["kept_tokens"], s["kept_tokens"]);
  }
  const auto cal = run({"--model", next.string(), "--eval", (dir_ / "q.jsonl").string(), "--fitprune-calibrate",
                        (dir_ / "r.json").string(), "--fitprune-reduction", "0.5"});
  EXPECT_EQ(cal.status, 1);
  EXPECT_NE(cal.err.find("needs a LLaVA-1.5 model"), std::string::npos) << cal.err;
}

TEST_F(Eval, LimitAndTextOutput) {
  const auto qfile = write("q.jsonl", question_file(dir_, std::vector<json>(4, json{{"answer", "x"}})));
  const auto r = run({"--model", model_dir.string(), "--eval", qfile.string(), "--max-new-tokens", "2", "--limit", "2"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("overall"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("/ 2 "), std::string::npos) << r.out;  // 2 questions evaluated
  EXPECT_NE(r.out.find("Wilson"), std::string::npos) << r.out;
}

TEST_F(Eval, ErrorsNameFileAndLine) {
  const auto good = std::string("{\"image\": \"") + (images / "shapes112.png").string() + "\", \"question\": \"q\", \"answer\": \"a\"}\n";
  struct bad {
    std::string text, message;
  };
  const std::vector<bad> bads = {
      {good + "{\"image\": \"x.png\", \"question\": \"q\"\n", ":2: invalid JSON"},
      {good + "\n" + "{\"image\": \"missing.png\", \"question\": \"q\", \"answer\": \"a\"}\n", ":3: image not found"},
      {good + "{\"image\": \"a.png\", \"answer\": \"a\"}\n", ":2: missing field \"question\""},
      {"{\"image\": \"a.png\", \"question\": 3, \"answer\": \"a\"}\n", ":1: field \"question\" must be a string"},
      {"[1, 2]\n", ":1: must be a JSON object"},
      {good + "{\"image\": \"undecodable.png\", \"question\": \"q\", \"answer\": \"a\"}\n", ":2: image"}};
  write("undecodable.png", "not an image");
  for (const auto& b : bads) {
    const auto file = write("bad.jsonl", b.text);
    const auto r = run({"--model", model_dir.string(), "--eval", file.string(), "--max-new-tokens", "1"});
    EXPECT_EQ(r.status, 1) << b.text;
    EXPECT_NE(r.err.find(file.string() + b.message), std::string::npos) << r.err;
    EXPECT_EQ(r.out, "") << "nothing printed for a failed run";
  }
  const auto file = write("q.jsonl", good);
  const auto conflict = run({"--model", model_dir.string(), "--eval", file.string(), "--image", (images / "scene.jpg").string()});
  EXPECT_EQ(conflict.status, 2);
  EXPECT_NE(conflict.err.find("--eval and --image conflict"), std::string::npos) << conflict.err;
  const auto no_eval = run({"--model", model_dir.string(), "--image", (images / "scene.jpg").string(), "--prompt", "q",
                            "--predictions", (dir_ / "p.jsonl").string()});
  EXPECT_EQ(no_eval.status, 2);
  EXPECT_NE(no_eval.err.find("--predictions needs --eval"), std::string::npos) << no_eval.err;
  for (const std::string r : {"0", "1", "-0.1", "abc", "0.5x"}) {
    const auto bad_r = run({"--model", model_dir.string(), "--eval", file.string(), "--fitprune-calibrate",
                            (dir_ / "r.json").string(), "--fitprune-reduction", r});
    EXPECT_EQ(bad_r.status, 2) << r;
    EXPECT_NE(bad_r.err.find("--fitprune-reduction " + r), std::string::npos) << bad_r.err;
  }
}

TEST_F(Eval, FitPruneCalibrationWritesAUsableRecipe) {
  std::vector<json> any(4, json{{"answer", "x"}});
  const auto qfile = write("train.jsonl", question_file(dir_, any));
  for (const double reduction : {0.3, 0.6}) {
    SCOPED_TRACE(reduction);
    const auto recipe_file = dir_ / "recipe.json";
    const auto r = run({"--model", model_dir.string(), "--eval", qfile.string(), "--fitprune-calibrate",
                        recipe_file.string(), "--fitprune-reduction", std::to_string(reduction), "--json"});
    ASSERT_EQ(r.status, 0) << r.err;
    const json j = json::parse(r.out);
    const auto recipe = tokensel::fitprune::load_recipe(recipe_file.string());
    EXPECT_EQ(recipe.geometry.hidden, 64);
    EXPECT_EQ(recipe.geometry.ffn, 128);
    EXPECT_EQ(recipe.geometry.layers, 4);
    EXPECT_EQ(recipe.geometry.visual_tokens, 64);
    EXPECT_DOUBLE_EQ(recipe.reduction, reduction);
    EXPECT_EQ(j["samples"], 4);
    EXPECT_EQ(j["drops"], json(recipe.drops));
    const auto dropped = std::accumulate(recipe.drops.begin(), recipe.drops.end(), tokensel::index_t{0});
    EXPECT_GT(dropped, 0);
    EXPECT_EQ(j["keep_count"], 64 - dropped);
    const double ratio = tokensel::fitprune::flops_ratio(recipe, 64);
    EXPECT_DOUBLE_EQ(j["flops_ratio"].get<double>(), ratio);
    EXPECT_TRUE(j["reached"].get<bool>());
    EXPECT_LE(j["fit_flops_ratio"].get<double>(), 1.0 - reduction + 1e-12);  // FIT's per-sample estimate meets it
    // floor(mean drops) may keep a token or two more than the samples' mean: within 2 % of the target.
    EXPECT_NEAR(ratio, 1.0 - reduction, 0.02);

    const auto preds = dir_ / "pred.jsonl";
    const auto e = run({"--model", model_dir.string(), "--eval", qfile.string(), "--method", "fitprune", "--fitprune-recipe",
                        recipe_file.string(), "--max-new-tokens", "1", "--json", "--predictions", preds.string()});
    ASSERT_EQ(e.status, 0) << e.err;
    EXPECT_DOUBLE_EQ(json::parse(e.out)["mean_kept_tokens"].get<double>(), static_cast<double>(64 - dropped));
  }
}

TEST(EvalCalibration, CalibratorGeometryMustMatchTheModel) {
  llava::llava_model model(model_dir);
  tokensel::fitprune::calibrator wrong({64, 128, 4, 32});
  std::vector<float> pixels(3 * 112 * 112, 0.0f);
  const std::vector<std::int32_t> ids = {1, 1000, 13};
  EXPECT_THROW((void)model.calibrate_fitprune(pixels.data(), ids, wrong), llava::error);
  tokensel::fitprune::calibrator right({64, 128, 4, 64});
  (void)model.calibrate_fitprune(pixels.data(), ids, right);
  (void)model.calibrate_fitprune(pixels.data(), ids, right, /*from_qk=*/true);
  EXPECT_EQ(right.samples(), 2);
  EXPECT_TRUE(right.complete());
}
