// LLaVA runtime: non-finite weights (issue 18). The runtime cannot tell at load time which NaN/Inf
// in the weights matters, so the forward passes check the rows each layer hands on (CLIP layers,
// projector, LLM layers of the prefill, the queries/keys a selection hook reads, the token
// embeddings, the logits of the prefill and of every decode step): a NaN/Inf weight fails the run
// with llava::error naming the layer, never an answer. Each case overwrites one float of a weight
// in a scratch copy of the tiny fp32 checkpoint.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <string>

#include <unistd.h>

#include "llava/pipeline.hpp"
#include "tiny_checkpoint.hpp"

namespace fs = std::filesystem;

namespace {

using llava_test::data_dir;
using llava_test::load;

/// A scratch copy of the tiny fp32 checkpoint (removed by the destructor).
struct scratch_copy {
  fs::path dir;
  explicit scratch_copy(const std::string& tag) {
    dir = fs::temp_directory_path() / ("llava_nonfinite_" + std::to_string(::getpid()) + "_" + tag);
    fs::remove_all(dir);
    fs::copy(data_dir / "llava-tiny-fp32", dir);
  }
  scratch_copy(const scratch_copy&) = delete;
  scratch_copy& operator=(const scratch_copy&) = delete;
  ~scratch_copy() { fs::remove_all(dir); }
};

// A NaN/Inf weight (issue 18) fails the run naming the layer whose output (or Q/K) first turned
// non-finite; it never answers. A weight only the skipped layers read changes nothing.
TEST(NonFiniteWeights, FailTheRunNamingTheLayer) {
  auto& v = load("fp32");
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const std::string clip = "model.vision_tower.vision_model.encoder.layers.", llm = "model.language_model.layers.";
  // The error of a run of `method` on a scratch copy with tensor[index] = value ("" when it answers).
  auto error_with = [&](const std::string& tensor, std::int64_t index, float value, const std::string& method = "none") {
    scratch_copy c("weights");
    llava_test::overwrite_f32(c.dir / "model.safetensors", tensor, index, value);
    llava::llava_model m(c.dir);  // loading accepts it: the values are checked while they flow
    llava::run_options o;
    o.selection.name = llava::parse_method(method);
    o.max_new_tokens = 3;
    try {
      const auto r = m.run(v.pixels, v.ids, o);
      EXPECT_FALSE(r.answer_ids.empty());
    } catch (const llava::error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  auto expect = [](const std::string& e, const std::string& part) {
    EXPECT_NE(e.find(part), std::string::npos) << "expected '" << part << "' in: " << e;
    EXPECT_NE(e.find("is NaN/Inf"), std::string::npos) << e;
  };
  expect(error_with(clip + "1.mlp.fc1.weight", 5, nan),
         "llava: non-finite activations after CLIP layer 1 (vision_model.encoder.layers.1)");
  expect(error_with("model.vision_tower.vision_model.embeddings.position_embedding.weight", 70, inf),
         "non-finite activations after the CLIP embeddings");
  // Layer 3 is past the feature layer (-2): unused without PruMerge, whose last-layer Q/K read it.
  EXPECT_EQ(error_with(clip + "3.self_attn.k_proj.weight", 0, nan), "");
  expect(error_with(clip + "3.self_attn.k_proj.weight", 0, nan, "prumerge"),
         "non-finite queries/keys in CLIP layer 3 (vision_model.encoder.layers.3.self_attn)");
  // FoPru reads layer 2's attention map (the feature layer's): Q/K are checked before the map is handed on.
  expect(error_with(clip + "2.self_attn.q_proj.weight", 1, nan, "fopru"),
         "non-finite queries/keys in CLIP layer 2 (vision_model.encoder.layers.2.self_attn)");
  expect(error_with("model.multi_modal_projector.linear_1.weight", 3, nan),
         "non-finite activations after the projector (multi_modal_projector)");
  expect(error_with(llm + "1.mlp.down_proj.weight", 2, nan),
         "non-finite activations after LLM layer 1 (language_model.layers.1)");
  // FastV (K = 2) reads layer K - 1's attention in its hook, before that layer's output exists.
  expect(error_with(llm + "1.self_attn.k_proj.weight", 2, nan, "fastv"),
         "non-finite queries/keys in LLM layer 1 (language_model.layers.1.self_attn)");
  expect(error_with("lm_head.weight", 7, nan), "non-finite values in the LLM's final logits (lm_head)");
  // Inf in the embedding row of a token the prompt reads (the last one); a row no token reads is harmless.
  const std::int32_t tok = v.ids.back();
  const std::int64_t d = v.model->config().text.hidden;
  const auto emb = error_with("model.language_model.embed_tokens.weight", tok * d + 1, inf);
  EXPECT_NE(emb.find("non-finite embedding of token id " + std::to_string(tok) +
                     " (language_model.embed_tokens.weight row " + std::to_string(tok) + ")"),
            std::string::npos)
      << emb;
  const std::int32_t unused = v.model->config().text.vocab - 1;
  ASSERT_EQ(std::find(v.ids.begin(), v.ids.end(), unused), v.ids.end());
  const auto r = v.model->run(v.pixels, v.ids, llava::run_options{.max_new_tokens = 3});
  ASSERT_EQ(std::find(r.answer_ids.begin(), r.answer_ids.end(), unused), r.answer_ids.end());
  EXPECT_EQ(error_with("model.language_model.embed_tokens.weight", unused * d, inf), "");
  // The row of a generated token the prompt does not hold: read by a decode step only (the last
  // generated token is never fed back).
  ASSERT_EQ(r.answer_ids.size(), 3u);
  const auto fed = std::find_if(r.answer_ids.begin(), r.answer_ids.end() - 1, [&](std::int32_t t) {
    return std::find(v.ids.begin(), v.ids.end(), t) == v.ids.end();
  });
  ASSERT_NE(fed, r.answer_ids.end() - 1) << "every fed-back token is also in the prompt";
  const auto dec = error_with("model.language_model.embed_tokens.weight", *fed * d, inf);
  EXPECT_NE(dec.find("non-finite embedding of token id " + std::to_string(*fed)), std::string::npos) << dec;
}

}  // namespace
