// LLaVA runtime, selection without attention maps (selection_options::from_qk, llava --from-qk):
// on both tiny checkpoints, every method that reads attention gives the same kept indices, the
// same LLM sequence (per-layer rows, logits bit for bit) and the same greedy answer from the
// layers' queries and keys as from the materialised maps, and no probability map is formed for
// selection (CLIP and the LLM prefill count the maps they build).
//
// The library's guarantee is "identical barring near-ties" (docs/flashattention.md): the Q/K
// statistics are recomputed in fp32 by a different pipeline than the runtime's softmax. Every case
// below selects identically on these checkpoints; a new failure here is either a near-tie (check
// the decision margins) or a wiring bug.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <tokensel/stats/qk_statistics.hpp>
#include <tokensel/io/safetensors.hpp>

#include "llava/pipeline.hpp"
#include "tiny_checkpoint.hpp"

namespace ts = tokensel;
namespace fs = std::filesystem;

namespace {

using llava_test::data_dir;
using llava_test::load;
using llava_test::variant;

llava::run_result run(variant& v, llava::selection_options s, bool from_qk, int max_new = 8) {
  s.from_qk = from_qk;
  llava::run_options o;
  o.selection = s;
  o.max_new_tokens = max_new;
  return v.model->run(v.pixels, v.ids, o);
}

struct qk_case {
  std::string method, keep;
  int fastv_layer = 2;
};

llava::selection_options options(const qk_case& c) {
  llava::selection_options s;
  s.name = llava::parse_method(c.method);
  if (!c.keep.empty()) s.keep = llava::keep_spec::parse(c.keep);
  s.fastv_layer = c.fastv_layer;
  return s;
}

std::string label(const std::string& variant, const qk_case& c) {
  return variant + " " + c.method + " keep=" + (c.keep.empty() ? "default" : c.keep) +
         (c.method == "fastv" ? " K=" + std::to_string(c.fastv_layer) : "");
}

/// Both paths of one case: the same run, bit for bit, except the count of maps formed.
void expect_same_run(variant& v, const llava::selection_options& s, const std::string& what) {
  const auto maps = run(v, s, false);
  const auto qk = run(v, s, true);
  EXPECT_GT(maps.attention_maps, 0) << what;  // the default path reads materialised maps
  EXPECT_EQ(qk.attention_maps, 0) << what;    // --from-qk forms none
  EXPECT_EQ(qk.kept, maps.kept) << what;
  EXPECT_EQ(qk.kept_tokens, maps.kept_tokens) << what;
  EXPECT_EQ(qk.sequence_length, maps.sequence_length) << what;
  EXPECT_EQ(qk.final_length, maps.final_length) << what;
  EXPECT_EQ(qk.layer_rows, maps.layer_rows) << what;
  EXPECT_TRUE(qk.logits == maps.logits) << what << ": last-position logits differ";
  EXPECT_EQ(qk.answer_ids, maps.answer_ids) << what;
  EXPECT_EQ(qk.answer_ids.size(), 8u) << what;
}

}  // namespace

TEST(FromQk, EveryAttentionMethodSelectsLikeTheMaps) {
  const std::vector<qk_case> cases = {
      {"fopru", "0.5"},       {"fopru", "0.25"},      {"fopru", "16"},
      {"freepruner", ""},     {"freepruner", "20"},   {"freepruner", "0.25"},
      {"visionzip", ""},      {"visionzip", "32"},    {"visionzip", "0.25"},
      {"fastv", "0.5"},       {"fastv", "0.25"},      {"fastv", "0.25", 1},
      {"fastv", "0.5", 3},    {"fitprune", "0.5"},    {"fitprune", "0.25"},
      {"fitprune", "10"},     {"vispruner", "0.5"},   {"vispruner", "0.25"},
  };
  for (const std::string name : {"fp32", "bf16"}) {
    auto& v = load(name);
    for (const auto& c : cases) expect_same_run(v, options(c), label(name, c));
  }
}

TEST(FromQk, FitPruneRecipeFile) {
  const fs::path recipe = fs::temp_directory_path() / ("llava_test_qk_recipe_" + std::to_string(::getpid()) + ".json");
  {
    std::ofstream out(recipe);
    out << R"({"format": "tokensel.fitprune.recipe", "version": 1, "model": "tiny", "source": "test",
               "geometry": {"hidden": 64, "ffn": 128, "layers": 4, "visual_tokens": 64},
               "reduction": 0.5, "alpha": null, "drops": [12, 9, 7, 4]})";
  }
  for (const std::string name : {"fp32", "bf16"}) {
    llava::selection_options s;
    s.name = llava::method::fitprune;
    s.fitprune_recipe = recipe.string();
    expect_same_run(load(name), s, name + " fitprune recipe");
  }
  fs::remove(recipe);
}

// Methods that read no attention are unaffected by the flag (and form no maps either way).
TEST(FromQk, MethodsWithoutAttentionAreUnaffected) {
  auto& v = load("bf16");
  for (const qk_case& c : {qk_case{"none", ""}, qk_case{"prumerge", ""}, qk_case{"uniform", "16"}, qk_case{"pool", "0.25"},
                           qk_case{"divprune", "0.25"}, qk_case{"dart", "0.5"}}) {
    const auto s = options(c);
    const auto a = run(v, s, false), b = run(v, s, true);
    EXPECT_EQ(a.attention_maps, 0) << c.method;
    EXPECT_EQ(b.attention_maps, 0) << c.method;
    EXPECT_EQ(a.kept, b.kept) << c.method;
    EXPECT_TRUE(a.logits == b.logits) << c.method;
    EXPECT_EQ(a.answer_ids, b.answer_ids) << c.method;
  }
}

// The LLM hook: with after_qk the layer forms no [heads, L, L] map; the source is the layer's
// post-RoPE Q and K (GQA on bf16), and its softmax is the map after_attention would receive.
TEST(FromQk, PrefillHookHandsOverQueriesAndKeysWithoutAMap) {
  for (const std::string name : {"fp32", "bf16"}) {
    auto& v = load(name);
    const auto& tc = v.model->config().text;
    const std::int64_t L = 24, D = tc.hidden, H = tc.heads;
    std::vector<std::int32_t> ids(static_cast<std::size_t>(L));
    for (std::int64_t i = 0; i < L; ++i) ids[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(5 + 11 * i);
    std::vector<float> emb(static_cast<std::size_t>(L * D));
    v.model->language().embed(ids, emb.data());
    std::vector<std::int32_t> pos(static_cast<std::size_t>(L));
    std::iota(pos.begin(), pos.end(), 0);

    // Reference: the probabilities of layer 1 as after_attention sees them.
    std::vector<float> probs;
    llava::prefill_hook maps;
    maps.wants_attention = [](int l) { return l == 1; };
    maps.after_attention = [&](int, const float* p, std::int64_t len) -> llava::prefill_hook::keep_rows {
      probs.assign(p, p + H * len * len);
      return std::nullopt;
    };
    auto c1 = v.model->language().make_cache(L);
    const auto logits_maps = v.model->language().prefill(emb.data(), pos, c1, &maps);
    EXPECT_EQ(maps.maps_materialised, 1);

    std::vector<float> from_qk;
    int calls = 0;
    llava::prefill_hook hook;
    hook.wants_attention = [](int l) { return l == 1; };
    hook.after_attention = [&](int, const float*, std::int64_t) -> llava::prefill_hook::keep_rows {
      ADD_FAILURE() << "after_attention called although after_qk is set";
      return std::nullopt;
    };
    hook.after_qk = [&](int l, const ts::qk_source<float>& src) -> llava::prefill_hook::keep_rows {
      ++calls;
      EXPECT_EQ(l, 1);
      EXPECT_EQ(src.heads(), H);
      EXPECT_EQ(src.kv_heads(), tc.kv_heads);
      EXPECT_EQ(src.query_count(), L);
      EXPECT_EQ(src.key_count(), L);
      EXPECT_EQ(src.head_dim(), tc.head_dim);
      EXPECT_TRUE(src.causal);
      from_qk.resize(static_cast<std::size_t>(H * L * L));
      ts::materialize_attention(ts::seq, src, ts::tensor_view<float, 3>(from_qk.data(), {H, L, L}));
      return std::vector<std::int32_t>{0, 2, 3, 7, 23};
    };
    auto c2 = v.model->language().make_cache(L);
    std::vector<std::int32_t> rows;
    v.model->language().prefill(emb.data(), pos, c2, &hook, &rows);
    EXPECT_EQ(calls, 1) << name;
    EXPECT_EQ(hook.maps_materialised, 0) << name;
    EXPECT_EQ(rows, (std::vector<std::int32_t>{0, 2, 3, 7, 23})) << name;
    ASSERT_EQ(from_qk.size(), probs.size());
    double err = 0;
    for (std::size_t i = 0; i < probs.size(); ++i) err = std::max(err, std::abs(static_cast<double>(from_qk[i]) - probs[i]));
    EXPECT_LE(err, 1e-5) << name << ": softmax of the handed-over Q/K vs the layer's probabilities";
    EXPECT_EQ(c2.length, (std::vector<std::int64_t>{L, L, 5, 5})) << name;

    // A Q/K hook that keeps everything leaves the prefill bit for bit unchanged.
    hook.after_qk = [](int, const ts::qk_source<float>&) -> llava::prefill_hook::keep_rows { return std::nullopt; };
    auto c3 = v.model->language().make_cache(L);
    EXPECT_TRUE(v.model->language().prefill(emb.data(), pos, c3, &hook) == logits_maps) << name;
  }
}

// CLIP: qk_layers form no map; the stored / streamed sources are the layers' Q/K (after bias,
// scale 1/sqrt(head_dim)), whose softmax is the encoder's own [heads, N, N] map.
TEST(FromQk, ClipHandsOverQueriesAndKeysWithoutAMap) {
  for (const std::string name : {"fp32", "bf16"}) {
    auto& v = load(name);
    const auto& vc = v.model->config().vision;
    const std::int64_t H = vc.heads, N = vc.tokens();
    llava::clip_options with_maps;
    with_maps.attention_layers = {0, 1, 2};
    const auto ref = v.model->vision().encode(v.pixels, with_maps);
    EXPECT_EQ(ref.maps_materialised, 3);

    llava::clip_options o;
    o.qk_layers = {0, 2};
    const auto co = v.model->vision().encode(v.pixels, o);
    EXPECT_EQ(co.maps_materialised, 0) << name;
    EXPECT_TRUE(co.attention.empty() && co.head_mean.empty()) << name;
    EXPECT_TRUE(co.features == ref.features) << name;  // the tower's output is untouched
    int streamed = 0;
    o.on_qk = [&](int l, const ts::qk_source<float>& src) {
      ++streamed;
      EXPECT_TRUE(l == 0 || l == 2);
      EXPECT_FALSE(src.causal);
      EXPECT_EQ(src.effective_scale(), 1.0f / std::sqrt(static_cast<float>(vc.head_dim())));
    };
    const auto streamed_out = v.model->vision().encode(v.pixels, o);
    EXPECT_EQ(streamed, 2) << name;
    EXPECT_TRUE(streamed_out.q.empty() && streamed_out.k.empty()) << name;
    for (int l : {0, 2}) {
      std::vector<float> m(static_cast<std::size_t>(H * N * N));
      ts::materialize_attention(ts::seq, co.qk_source(l), ts::tensor_view<float, 3>(m.data(), {H, N, N}));
      const auto& want = ref.attention.at(l);
      double err = 0;
      for (std::size_t i = 0; i < m.size(); ++i) err = std::max(err, std::abs(static_cast<double>(m[i]) - want[i]));
      EXPECT_LE(err, 1e-5) << name << " layer " << l;
    }
  }
}

// The CLI flag: same answer and kept tokens with --from-qk.
TEST(FromQk, CliFlag) {
  const std::string cli = LLAVA_CLI_PATH;
  ASSERT_TRUE(fs::exists(cli)) << cli;
  const fs::path dir = data_dir / "llava-tiny-fp32";
  std::ifstream in(dir / "golden.json");
  const auto g = nlohmann::json::parse(in);
  auto json_of = [&](bool from_qk) {
    std::string cmd = "'" + cli + "' --model '" + dir.string() + "' --image '" +
                      (data_dir / "llava-images" / g["image"].get<std::string>()).string() + "' --prompt '" +
                      g["question"].get<std::string>() + "' --max-new-tokens 8 --method fitprune --keep 0.25 --json" +
                      (from_qk ? " --from-qk" : "") + " 2>/dev/null";
    FILE* p = ::popen(cmd.c_str(), "r");
    std::string out;
    char buf[4096];
    std::size_t n;
    while (p && (n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    const int st = p ? ::pclose(p) : -1;
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << cmd;
    return nlohmann::json::parse(out);
  };
  const auto a = json_of(false), b = json_of(true);
  EXPECT_EQ(a["kept"], b["kept"]);
  EXPECT_EQ(a["kept_tokens"], 16);
  EXPECT_EQ(a["answer_ids"], b["answer_ids"]);
  EXPECT_EQ(a["answer"], b["answer"]);
}
