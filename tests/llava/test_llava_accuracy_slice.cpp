// The accuracy slice of issue 11 in CI: the trained shapes checkpoint (tests/data/llava-shapes-fp32)
// answers the committed 50 test-split questions (tests/data/accuracy-slice) through `llava --eval`,
// unpruned and with one pruning method, and must reproduce the accuracy recorded for that
// checkpoint (docs/accuracy.md). A runtime change that breaks answers (tokenizer, preprocessing,
// CLIP, projector, Llama, the selection path) drops the count far below the record.
//
// The record allows one question of difference: a different compiler or flags (the sanitizer
// build) may reorder float sums, and a near-tie answer may flip; a broken runtime loses many.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli_process.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const fs::path data_dir = LLAVA_TEST_DATA;
const fs::path model_dir = data_dir / "llava-shapes-fp32";
const fs::path slice_dir = data_dir / "accuracy-slice";
const std::string cli = LLAVA_CLI_PATH;

/// `llava --eval` on the slice with extra flags; the parsed JSON report (fails the test otherwise).
json eval_slice(const std::vector<std::string>& extra) {
  std::vector<std::string> args = {"--model", model_dir.string(), "--eval", (slice_dir / "slice.jsonl").string(),
                                   "--max-new-tokens", "4", "--threads", "1", "--json"};
  args.insert(args.end(), extra.begin(), extra.end());
  const auto err = fs::temp_directory_path() / ("llava_slice_" + std::to_string(::getpid()) + ".txt");
  const auto r = llava_test::run_process(cli, args, err);
  EXPECT_EQ(r.status, 0) << r.err;
  return json::parse(r.out, nullptr, false);
}

json record() {
  return json::parse(llava_test::slurp(slice_dir / "expected.json"), nullptr, false);
}

/// Run i of the record, evaluated now, against its recorded figures.
void check_run(const json& rec, std::size_t i) {
  const json& expected = rec.at("runs").at(i);
  SCOPED_TRACE(expected.dump());
  const auto flags = expected.at("flags").get<std::vector<std::string>>();
  const json r = eval_slice(flags);
  ASSERT_TRUE(r.is_object()) << "no JSON report";
  ASSERT_EQ(r.at("questions").get<int>(), rec.at("questions").get<int>());
  const int want = expected.at("correct").get<int>();
  const int got = r.at("correct").get<int>();
  EXPECT_NEAR(got, want, 1) << "the slice's accuracy moved: " << got << " correct, recorded " << want;
  EXPECT_DOUBLE_EQ(r.at("mean_kept_tokens").get<double>(), expected.at("mean_kept_tokens").get<double>());
  for (const auto& [type, t] : expected.at("per_type").items()) {
    EXPECT_NEAR(r.at("per_type").at(type).at("correct").get<int>(), t.get<int>(), 1) << type;
  }
}

}  // namespace

TEST(AccuracySlice, RecordIsReadable) {
  const json e = record();
  ASSERT_TRUE(e.is_object()) << (slice_dir / "expected.json") << " missing or not JSON";
  ASSERT_TRUE(fs::exists(model_dir / "model.safetensors"));
  // The full-token record is far above chance (about 30 % over the four balanced types), so the
  // check below cannot pass with a runtime that answers at random.
  EXPECT_GE(e.at("runs").at(0).at("correct").get<int>(), 2 * e.at("chance_correct").get<int>());
  EXPECT_TRUE(e.at("runs").at(0).at("flags").empty()) << "run 0 is the full-token run";
}

TEST(AccuracySlice, FullTokensReproduceTheRecord) { check_run(record(), 0); }

TEST(AccuracySlice, PrunedRunReproducesTheRecord) { check_run(record(), 1); }
