// Pruned runs against independent transformers goldens (issue 19).
//
// tools/llava/make_pruned_goldens.py applies every method the runtime offers inside the Hugging Face
// model, written independently of the runtime (merge / pooling / gather before the projector, the
// shortened sequence, FastV's and FitPrune's in-LLM drops with the survivors' original position ids,
// per-layer KV caches, greedy decoding) and stores, per checkpoint and case (method, keep):
// the projector input rows, the last-position logits, the logits of the first two decode steps,
// the kept indices, the prompt length, the rows going on after each LLM layer and 8 greedy tokens
// (tests/data/llava-tiny-{fp32,bf16}/pruned.{json,safetensors}). DivPrune, VisPruner and DART's kept
// sets there come from the script's own float64 reimplementations of docs/{divprune,vispruner,dart}.md.
//
// Relative error = max |a - b| / max |b|, bound 1e-4 (as test_llava_model.cpp: the bf16 goldens
// are transformers' fp32 compute on the upcast bf16 weights, which is what the runtime does).
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include "llava/pipeline.hpp"
#include "tiny_checkpoint.hpp"

namespace {

using llava_test::load;
using llava_test::pruned;

constexpr double tol = 1e-4;

double rel_err(const float* a, const float* b, std::size_t n) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < n; ++i) {
    num = std::max(num, std::abs(static_cast<double>(a[i]) - b[i]));
    den = std::max(den, std::abs(static_cast<double>(b[i])));
  }
  return num / den;
}

/// Same size and relative error <= tol; prints the value (quoted in the report).
void expect_close(const std::string& what, const std::vector<float>& got, const float* want, std::size_t n) {
  ASSERT_EQ(got.size(), n) << what << ": size";
  const double e = rel_err(got.data(), want, n);
  std::printf("  rel_err %-44s = %.3g\n", what.c_str(), e);
  EXPECT_LE(e, tol) << what;
}

struct pruned_case {
  const char* variant;
  const char* method;
  const char* keep;  ///< "" = adaptive (prumerge, prumerge+, freepruner) or the default (visionzip)
};

std::string case_name(const pruned_case& c) {
  const std::string m = c.method;
  return m + "." + (*c.keep ? c.keep : m == "visionzip" ? "default" : "adaptive");
}

/// Every case make_pruned_goldens.py writes (the test below checks that the files hold exactly these).
std::vector<pruned_case> all_cases() {
  std::vector<pruned_case> out;
  for (const char* v : {"fp32", "bf16"}) {
    for (const char* m : {"fopru", "random", "uniform", "pool", "visionzip", "fastv", "fitprune", "divprune", "vispruner",
                          "dart", "freepruner"}) {
      // pool keeps whole windows (8x8: 64, 16, 9, ... tokens); 0.5 is refused (test_llava_cli)
      if (std::string(m) != "pool") out.push_back({v, m, "0.5"});
      out.push_back({v, m, "0.25"});
    }
    out.push_back({v, "freepruner", ""});
    out.push_back({v, "prumerge", ""});
    out.push_back({v, "prumerge+", ""});
    out.push_back({v, "visionzip", ""});
  }
  return out;
}

void PrintTo(const pruned_case& c, std::ostream* os) { *os << c.variant << " " << case_name(c); }

class Pruned : public ::testing::TestWithParam<pruned_case> {};

TEST_P(Pruned, MatchesTransformers) {
  const auto& pc = GetParam();
  auto& v = load(pc.variant);
  const auto& g = pruned(pc.variant);
  const std::string name = case_name(pc);
  ASSERT_TRUE(g.meta["cases"].contains(name)) << name << " missing from pruned.json";
  const auto& c = g.meta["cases"][name];
  ASSERT_EQ(g.meta["input_ids"].get<std::vector<std::int32_t>>(), v.ids);

  llava::run_options o;
  o.selection.name = llava::parse_method(pc.method);
  if (*pc.keep) o.selection.keep = llava::keep_spec::parse(pc.keep);
  o.max_new_tokens = static_cast<int>(c["greedy_tokens"].size());
  o.record_intermediates = true;
  const auto r = v.model->run(v.pixels, v.ids, o);

  EXPECT_EQ(r.kept, c["kept"].get<std::vector<std::int32_t>>()) << name << ": kept indices";
  EXPECT_EQ(r.sequence_length, c["sequence_length"].get<std::int64_t>()) << name << ": prompt length";
  EXPECT_EQ(r.final_length, c["final_length"].get<std::int64_t>()) << name << ": rows reaching the last layer";
  EXPECT_EQ(r.layer_rows, c["layer_rows"].get<std::vector<std::int64_t>>()) << name << ": rows after each layer";

  const std::string pi = name + ".projector_input";
  expect_close(pi, r.projector_input, g[pi].data(), g[pi].size());
  const std::string ll = name + ".logits_last";
  expect_close(ll, r.logits, g[ll].data(), g[ll].size());
  const std::string dl = name + ".decode_logits";
  const auto& shape = g.shape.at(dl);  // [steps, vocab]
  ASSERT_GE(r.decode_logits.size(), static_cast<std::size_t>(shape[0])) << name;
  for (std::int64_t s = 0; s < shape[0]; ++s) {
    expect_close(dl + "[" + std::to_string(s) + "]", r.decode_logits[static_cast<std::size_t>(s)],
                 g[dl].data() + s * shape[1], static_cast<std::size_t>(shape[1]));
  }
  EXPECT_EQ(r.answer_ids, c["greedy_tokens"].get<std::vector<std::int32_t>>()) << name << ": greedy tokens";
}

INSTANTIATE_TEST_SUITE_P(Tiny, Pruned, ::testing::ValuesIn(all_cases()), [](const auto& info) {
  std::string s = std::string(info.param.variant) + "_" + case_name(info.param);
  for (auto& ch : s) {
    if (ch == '+') ch = 'P';
    else if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  }
  return s;
});

// The goldens hold exactly the cases above, and they cover every method the runtime offers.
TEST(PrunedGoldens, CoverEveryMethodAndKeepSetting) {
  std::set<std::string> methods;
  for (const char* variant : {"fp32", "bf16"}) {
    std::set<std::string> want, have;
    for (const auto& c : all_cases()) {
      if (std::string(c.variant) == variant) want.insert(case_name(c));
      methods.insert(c.method);
    }
    for (const auto& [k, _] : pruned(variant).meta["cases"].items()) have.insert(k);
    EXPECT_EQ(have, want) << variant;
  }
  // Every enumerator after none (to_string gives "?" past the last one) has goldens.
  int offered = 0;
  for (int i = static_cast<int>(llava::method::none) + 1;; ++i) {
    const std::string m = llava::to_string(static_cast<llava::method>(i));
    if (m == "?") break;
    ++offered;
    EXPECT_TRUE(methods.count(m)) << "no pruned goldens for method " << m;
  }
  EXPECT_EQ(offered, static_cast<int>(methods.size()));
}

}  // namespace
