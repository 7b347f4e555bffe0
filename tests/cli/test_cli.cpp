// End-to-end tests of the `tokensel` command-line tool. Each test writes its inputs with the
// library's own writers (npy.hpp, safetensors.hpp), runs the binary through the shell and checks
// the JSON on stdout, or the exit status 2 and the single error line on stderr. Selections are
// compared with direct library calls on the same data and, for small cases, with hand-derived
// indices.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <tokensel/methods/baselines.hpp>
#include <tokensel/methods/dart.hpp>
#include <tokensel/methods/divprune.hpp>
#include <tokensel/methods/fastv.hpp>
#include <tokensel/methods/fitprune.hpp>
#include <tokensel/io/fitprune_json.hpp>
#include <tokensel/methods/fopru.hpp>
#include <tokensel/methods/freepruner.hpp>
#include <tokensel/io/npy.hpp>
#include <tokensel/methods/prumerge.hpp>
#include <tokensel/io/safetensors.hpp>
#include <tokensel/methods/visionzip.hpp>
#include <tokensel/methods/vispruner.hpp>

#if defined(_WIN32)
#error "the CLI end-to-end tests use a POSIX shell"
#endif
#include <sys/wait.h>

using namespace tokensel;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

struct run_result {
  int status = -1;
  std::string out, err;
  json parsed() const { return json::parse(out); }
};

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

/// Lines of s (without the newline characters).
std::vector<std::string> lines(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

std::vector<token_index> as_indices(const json& a) { return a.get<std::vector<token_index>>(); }

class Cli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("tokensel_cli_test_" + std::to_string(std::random_device{}()));
    fs::create_directories(dir_);
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  static std::string path(const std::string& name) { return (dir_ / name).string(); }

  /// Runs `tokensel ARGS` (ARGS is pasted into a shell command line).
  static run_result run(const std::string& args) {
    static int counter = 0;
    const fs::path out = dir_ / ("stdout_" + std::to_string(counter));
    const fs::path err = dir_ / ("stderr_" + std::to_string(counter++));
    const std::string cmd = std::string("'") + TOKENSEL_CLI_PATH + "' " + args + " >'" + out.string() + "' 2>'" + err.string() + "'";
    const int raw = std::system(cmd.c_str());
    run_result r;
    r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
    r.out = slurp(out);
    r.err = slurp(err);
    return r;
  }

  /// Asserts a failure: exit status 2, nothing on stdout, exactly one stderr line
  /// "tokensel: error: ..." containing needle.
  static void expect_failure(const std::string& args, const std::string& needle) {
    SCOPED_TRACE("tokensel " + args);
    const run_result r = run(args);
    EXPECT_EQ(r.status, 2);
    EXPECT_EQ(r.out, "");
    const auto l = lines(r.err);
    ASSERT_EQ(l.size(), 1u) << r.err;
    EXPECT_EQ(l[0].rfind("tokensel: error: ", 0), 0u) << l[0];
    EXPECT_NE(l[0].find(needle), std::string::npos) << "stderr: " << l[0] << "\nexpected: " << needle;
  }

  static json expect_success(const std::string& args) {
    SCOPED_TRACE("tokensel " + args);
    const run_result r = run(args);
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.err, "");
    try {
      return r.parsed();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "not JSON: " << r.out;
      return json();
    }
  }

  static fs::path dir_;
};

fs::path Cli::dir_;

/// The hand-checked FoPru case: one head, N = 5 (CLS + 4 patches), every row equal to
/// [0.1, 0.1, 0.2, 0.4, 0.2]. On the patch submatrix the row means are all equal (Var s1 = 0), the
/// column means are s2 = [0.1, 0.2, 0.4, 0.2] (Var = 0.011875), so Sig = s2; ratio 0.5 keeps 2:
/// patch 2 (0.4), then patches 1 and 3 tie at 0.2 and the lower index wins: kept = [1, 2].
host_tensor hand_attention() {
  host_tensor t(dtype::f32, {1, 5, 5});
  const float row[5] = {0.1f, 0.1f, 0.2f, 0.4f, 0.2f};
  auto v = t.view<float, 3>();
  for (index_t i = 0; i < 5; ++i) {
    for (index_t j = 0; j < 5; ++j) v(0, i, j) = row[j];
  }
  return t;
}

/// Random softmax attention [layers, heads, N, N] with a few strong columns (attention sinks),
/// so that selections are well separated and survive fp16/bf16 rounding.
host_tensor random_stack(std::uint32_t seed, index_t layers, index_t heads, index_t n, bool causal = false) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  host_tensor t(dtype::f32, {layers, heads, n, n});
  auto v = t.view<float, 4>();
  std::vector<float> bias(static_cast<std::size_t>(n));
  for (auto& b : bias) b = 2.0f * g(rng);
  for (index_t l = 0; l < layers; ++l) {
    for (index_t h = 0; h < heads; ++h) {
      for (index_t i = 0; i < n; ++i) {
        std::vector<double> e(static_cast<std::size_t>(n));
        double z = 0;
        for (index_t j = 0; j < n; ++j) {
          const bool masked = causal && j > i;
          e[j] = masked ? 0.0 : std::exp(static_cast<double>(bias[j] + g(rng)));
          z += e[j];
        }
        for (index_t j = 0; j < n; ++j) v(l, h, i, j) = static_cast<float>(e[j] / z);
      }
    }
  }
  return t;
}

host_tensor random_matrix(std::uint32_t seed, std::vector<index_t> shape) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  host_tensor t(dtype::f32, std::move(shape));
  for (auto& x : t.data<float>()) x = g(rng);
  return t;
}

/// Layer l of a [layers, heads, N, N] tensor as its own [heads, N, N] tensor.
host_tensor layer_of(const host_tensor& stack, index_t l) {
  const index_t h = stack.extent(1), n = stack.extent(2);
  host_tensor t(dtype::f32, {h, n, n});
  const auto src = stack.data<float>().subspan(static_cast<std::size_t>(l * h * n * n), static_cast<std::size_t>(h * n * n));
  std::copy(src.begin(), src.end(), t.data<float>().begin());
  return t;
}

}  // namespace

// ---- help and version -------------------------------------------------------------------------

TEST_F(Cli, HelpListsEveryMethodAndParameterWithDefaults) {
  for (const std::string args : {"--help", "select --help", "help"}) {
    const run_result r = run(args);
    EXPECT_EQ(r.status, 0);
    for (const char* m : {"fopru:", "freepruner:", "fitprune:", "fastv:", "prumerge:", "visionzip:", "divprune:", "dart:", "vispruner:",
                          "random:", "uniform:", "pool:"}) {
      EXPECT_NE(r.out.find(std::string("  ") + m), std::string::npos) << args << " lacks " << m;
    }
    for (const char* p : {"--ratio R", "--strategy rank|row", "--k-pivotal K", "--first-layer L", "--complementary-layer L",
                          "--iqr-multiplier C", "--budget B", "--drop K", "--recipe FILE", "--prune-layer K",
                          "--visual-start S", "--neighbours K", "--plus", "--dominant K", "--contextual K", "--seed S",
                          "--window W", "--attn FILE", "--tensor NAME", "--layers-file LIST", "--keys FILE",
                          "--features FILE", "--skip-cls", "--no-cls", "--threads T", "--pretty", "--out FILE", "--image-pivots P",
                          "--text-pivots P", "--norm-weight FILE", "--important-ratio R", "--rounds-drop D"}) {
      EXPECT_NE(r.out.find(p), std::string::npos) << args << " lacks " << p;
    }
    // Defaults come from the library's config structs.
    EXPECT_NE(r.out.find("retention ratio in (0, 1] (default 0.5)"), std::string::npos);
    EXPECT_NE(r.out.find("pivotal tokens per layer (default 8)"), std::string::npos);
    EXPECT_NE(r.out.find("dominant tokens, CLS included (default 54)"), std::string::npos);
    EXPECT_NE(r.out.find("nearest tokens merged into each kept token (default 32)"), std::string::npos);
  }
  const run_result one = run("select --method fopru --help");
  EXPECT_EQ(one.status, 0);
  EXPECT_NE(one.out.find("--strategy rank|row"), std::string::npos);
  EXPECT_EQ(one.out.find("--k-pivotal"), std::string::npos);
}

TEST_F(Cli, Version) {
  const run_result r = run("--version");
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.out, "tokensel " + std::to_string(TOKENSEL_VERSION_MAJOR) + "." + std::to_string(TOKENSEL_VERSION_MINOR) + "." +
                       std::to_string(TOKENSEL_VERSION_PATCH) + "\n");
}

// ---- FoPru ------------------------------------------------------------------------------------

TEST_F(Cli, FoPruHandCheckedCaseInEveryDtype) {
  const host_tensor a = hand_attention();
  npy::write(path("hand_f32.npy"), a);
  npy::write(path("hand_f16.npy"), a.converted(dtype::f16));
  safetensors::write(path("hand.safetensors"), {{"attn_bf16", a.converted(dtype::bf16)}});
  for (const std::string& input : {"--attn " + path("hand_f32.npy"), "--attn " + path("hand_f16.npy"),
                                   "--attn " + path("hand.safetensors")}) {
    const json j = expect_success("select --method fopru --ratio 0.5 " + input);
    EXPECT_EQ(j["method"], "fopru");
    EXPECT_EQ(j["n"], 4);
    EXPECT_EQ(j["count"], 2);
    EXPECT_EQ(as_indices(j["kept"]), (std::vector<token_index>{1, 2})) << input;
    EXPECT_EQ(j["stats"]["axis"], "column_mean");
    EXPECT_EQ(j["stats"]["row_variance"].get<double>(), 0.0);
    EXPECT_NEAR(j["stats"]["column_variance"].get<double>(), 0.011875, 2e-4);
    EXPECT_EQ(j["config"]["strategy"], "rank");
  }
  EXPECT_EQ(expect_success("select --method fopru --ratio 0.5 --attn " + path("hand_f16.npy"))["input"]["dtype"], "f16");
  EXPECT_EQ(expect_success("select --method fopru --ratio 0.5 --attn " + path("hand.safetensors"))["input"]["dtype"], "bf16");
  // Row strategy on the 2x2 grid: row sums [0.3, 0.6] -> row 1 = patches 2, 3.
  const json row = expect_success("select --method fopru --strategy row --ratio 0.5 --attn " + path("hand_f32.npy"));
  EXPECT_EQ(as_indices(row["kept"]), (std::vector<token_index>{2, 3}));
  EXPECT_EQ(row["stats"]["rows_kept"], 1);
  // Without a CLS token all 5 tokens compete: column means [0.1, 0.1, 0.2, 0.4, 0.2], keep 2.
  const json nocls = expect_success("select --method fopru --ratio 0.5 --no-cls --attn " + path("hand_f32.npy"));
  EXPECT_EQ(nocls["n"], 5);
  EXPECT_EQ(as_indices(nocls["kept"]), (std::vector<token_index>{2, 3}));
}

TEST_F(Cli, FoPruMatchesTheLibraryAndPicksStackLayers) {
  const host_tensor stack = random_stack(1, 3, 4, 26);  // CLS + 5x5 patches, 3 layers
  npy::write(path("stack.npy"), stack);
  npy::write(path("layer1.npy"), layer_of(stack, 1));
  auto expected = [&](index_t l, const fopru::config& cfg) {
    std::vector<token_index> out(static_cast<std::size_t>(fopru::keep_count(25, cfg)));
    const host_tensor one = layer_of(stack, l);
    const auto r = fopru::select(seq, one.view<float, 3>(), cfg, std::span(out));
    out.resize(static_cast<std::size_t>(r.count));
    return std::make_pair(out, r);
  };
  const fopru::config cfg{.ratio = 0.3};
  const auto [kept1, r1] = expected(1, cfg);
  // A 3-layer stack defaults to the penultimate layer (1); a single layer file gives the same.
  for (const std::string& input : {"--attn " + path("stack.npy"), "--attn " + path("stack.npy") + " --layer 1",
                                   "--attn " + path("stack.npy") + " --layer -2", "--attn " + path("layer1.npy")}) {
    const json j = expect_success("select --method fopru --ratio 0.3 " + input);
    EXPECT_EQ(as_indices(j["kept"]), kept1) << input;
    EXPECT_EQ(j["stats"]["column_variance"].get<double>(), r1.column_variance);
    EXPECT_EQ(j["stats"]["row_variance"].get<double>(), r1.row_variance);
  }
  const auto [kept0, r0] = expected(0, cfg);
  const json j0 = expect_success("select --method fopru --ratio 0.3 --layer 0 --threads 1 --attn " + path("stack.npy"));
  EXPECT_EQ(as_indices(j0["kept"]), kept0);
  EXPECT_EQ(j0["layer"], 0);
  const fopru::config rowcfg{.ratio = 0.4, .strategy = fopru::strategy::row, .heads = head_reduction::max};
  const auto [kept_row, rr] = expected(1, rowcfg);
  const json jr = expect_success("select --method fopru --strategy row --heads max --ratio 0.4 --threads 2 --attn " + path("stack.npy"));
  EXPECT_EQ(as_indices(jr["kept"]), kept_row);
  EXPECT_EQ(jr["stats"]["rows_kept"], rr.rows_kept);
  // --pretty changes only the layout.
  const json pretty = expect_success("select --method fopru --strategy row --heads max --ratio 0.4 --pretty --attn " + path("stack.npy"));
  EXPECT_EQ(pretty, jr);
  EXPECT_NE(run("select --method fopru --pretty --attn " + path("stack.npy")).out.find("\n  \"method\""), std::string::npos);
}

TEST_F(Cli, LayersFileBuildsAStack) {
  const host_tensor stack = random_stack(2, 3, 2, 10);
  std::ofstream list(path("layers.txt"));
  list << "# one file per layer\n";
  for (index_t l = 0; l < 3; ++l) {
    npy::write(path("lf" + std::to_string(l) + ".npy"), layer_of(stack, l));
    list << "lf" << l << ".npy\n";
  }
  list.close();
  npy::write(path("lf_stack.npy"), stack);
  const json a = expect_success("select --method fopru --ratio 0.5 --no-cls --layer 2 --layers-file " + path("layers.txt"));
  const json b = expect_success("select --method fopru --ratio 0.5 --no-cls --layer 2 --attn " + path("lf_stack.npy"));
  EXPECT_EQ(a["kept"], b["kept"]);
  EXPECT_EQ(a["input"]["shape"], (json{3, 2, 10, 10}));
}

// ---- freePruner ---------------------------------------------------------------------------------

TEST_F(Cli, FreePrunerMatchesTheLibrary) {
  const host_tensor stack = random_stack(3, 24, 2, 17);  // CLS + 4x4 patches, 24 layers
  npy::write(path("fp_stack.npy"), stack.converted(dtype::f16));
  const host_tensor half = stack.converted(dtype::f16);
  auto views = [&] {
    std::vector<head_attention_view<Eigen::half>> v;
    for (index_t l = 0; l < 24; ++l) v.push_back(half.view<Eigen::half, 4>()[l]);
    return v;
  }();
  for (const bool fixed : {false, true}) {
    freepruner::config cfg{.k_pivotal = 2};
    std::string flags = "--k-pivotal 2";
    if (fixed) {
      cfg.mode = freepruner::mode::fixed;
      cfg.budget = 5;
      flags += " --mode fixed --budget 5";
    }
    std::vector<token_index> out(16);
    freepruner::inspection info;
    const auto r = freepruner::select(seq, freepruner::layer_stack<Eigen::half>{std::span(views), 0}, cfg, std::span(out), info);
    out.resize(static_cast<std::size_t>(r.count));
    const json j = expect_success("select --method freepruner " + flags + " --attn " + path("fp_stack.npy"));
    EXPECT_EQ(as_indices(j["kept"]), out);
    EXPECT_EQ(j["count"], r.count);
    EXPECT_EQ(j["stats"]["pivotal"], r.pivotal);
    EXPECT_EQ(j["stats"]["complementary"], r.complementary);
    EXPECT_EQ(as_indices(j["stats"]["pivotal_set"]), info.pivotal);
    EXPECT_EQ(as_indices(j["stats"]["pivotal_per_layer"]["6"]), info.pivotal_per_layer.front());
    EXPECT_EQ(j["stats"]["pivotal_per_layer"].size(), 17u);
    EXPECT_EQ(j["stats"]["fences"].size(), info.fences.size());
    if (fixed) {
      EXPECT_EQ(j["count"], 5);
    }
  }
  // A stack whose first entry is model layer 6: layers 6..22 only.
  host_tensor part(dtype::f32, {17, 2, 17, 17});
  const auto src = stack.data<float>();
  std::copy(src.begin() + 6 * 2 * 17 * 17, src.begin() + 23 * 2 * 17 * 17, part.data<float>().begin());
  npy::write(path("fp_part.npy"), part.converted(dtype::f16));
  EXPECT_EQ(expect_success("select --method freepruner --k-pivotal 2 --layer-offset 6 --attn " + path("fp_part.npy"))["kept"],
            expect_success("select --method freepruner --k-pivotal 2 --attn " + path("fp_stack.npy"))["kept"]);
  expect_failure("select --method freepruner --attn " + path("fp_part.npy"), "freepruner");
  expect_failure("select --method freepruner --attn " + path("hand_missing.npy"), "--attn: file = ");
}

// ---- VisionZip, PruMerge ----------------------------------------------------------------------

TEST_F(Cli, VisionZipMatchesTheLibraryAndWritesRows) {
  const host_tensor attn = layer_of(random_stack(4, 1, 3, 37), 0);  // CLS + 6x6
  const host_tensor keys = random_matrix(5, {3, 37, 8});
  const host_tensor hidden = random_matrix(6, {37, 12});
  safetensors::write(path("vz.safetensors"), {{"attn", attn}, {"keys", keys}, {"hidden", hidden}});
  const visionzip::config cfg{.dominant = 6, .contextual = 3};
  std::vector<token_index> out(9);
  host_tensor rows(dtype::f32, {9, 12});
  (void)visionzip::select(seq, attn.view<float, 3>(), keys.view<float, 3>(), hidden.view<float, 2>(), cfg, std::span(out),
                    rows.view<float, 2>());
  const std::string f = path("vz.safetensors");
  const json j = expect_success("select --method visionzip --dominant 6 --contextual 3 --attn " + f + " --tensor attn --keys " + f +
                                " --keys-tensor keys --features " + f + " --features-tensor hidden --out " + path("vz_rows.npy"));
  EXPECT_EQ(as_indices(j["kept"]), out);
  EXPECT_EQ(j["kept"][0], 0);  // CLS
  EXPECT_EQ(j["stats"]["dominant"], 6);
  EXPECT_EQ(j["stats"]["contextual"], 3);
  EXPECT_EQ(j["output"], path("vz_rows.npy"));
  const host_tensor written = npy::read(path("vz_rows.npy"));
  ASSERT_EQ(written.shape(), rows.shape());
  EXPECT_TRUE(std::equal(written.data<float>().begin(), written.data<float>().end(), rows.data<float>().begin()));
  // Indices only (no features); dominant-only needs no keys.
  EXPECT_EQ(expect_success("select --method visionzip --dominant 6 --contextual 3 --attn " + f + " --tensor attn --keys " + f +
                           " --keys-tensor keys")["kept"], j["kept"]);
  EXPECT_EQ(expect_success("select --method visionzip --dominant 6 --contextual 0 --attn " + f + " --tensor attn")["count"], 6);
  expect_failure("select --method visionzip --attn " + f + " --tensor attn", "--keys FILE is required");
  expect_failure("select --method visionzip --dominant 6 --attn " + f + " --tensor attn --no-cls", "needs the CLS token");
}

TEST_F(Cli, PruMergeQueriesKeysAndAttentionPaths) {
  const host_tensor q = random_matrix(7, {50, 16});  // CLS + 49 patches
  host_tensor k = random_matrix(8, {50, 16});
  // Make a few keys stand out for the CLS query (well-separated outliers).
  for (index_t j : {3, 17, 40}) {
    for (index_t c = 0; c < 16; ++c) k.view<float, 2>()(j, c) = 3.0f * q.view<float, 2>()(0, c);
  }
  const host_tensor feats = random_matrix(9, {49, 6});
  safetensors::write(path("pm.safetensors"), {{"q", q}, {"k", k}, {"x", feats}});
  const std::string f = path("pm.safetensors");
  for (const bool plus : {false, true}) {
    const prumerge::config cfg{.plus = plus};
    const auto qv = matrix_view<const float>(q.view<float, 2>());
    const auto kv = matrix_view<const float>(k.view<float, 2>());
    std::vector<token_index> out(static_cast<std::size_t>(prumerge::max_count(49, cfg)));
    host_tensor merged(dtype::f32, {prumerge::max_rows(49, cfg), 6});
    const auto r = prumerge::select(seq, qv, kv, matrix_view<const float>(feats.view<float, 2>()), cfg, std::span(out), merged.view<float, 2>());
    out.resize(static_cast<std::size_t>(r.count));
    const json j = expect_success("select --method prumerge " + std::string(plus ? "--plus " : "") + "--queries " + f +
                                  " --queries-tensor q --keys " + f + " --keys-tensor k --features " + f +
                                  " --features-tensor x --out " + path("pm_rows.npy"));
    EXPECT_EQ(as_indices(j["kept"]), out);
    EXPECT_EQ(j["stats"]["outliers"], r.outliers);
    EXPECT_EQ(j["stats"]["rows"], r.rows());
    const host_tensor rows = npy::read(path("pm_rows.npy"));
    ASSERT_EQ(rows.extent(0), r.rows());
    EXPECT_TRUE(std::equal(rows.data<float>().begin(), rows.data<float>().end(), merged.data<float>().begin()));
    if (!plus) {
      for (token_index t : {2, 16, 39}) EXPECT_NE(std::find(out.begin(), out.end(), t), out.end()) << t;
    }
  }
  // Attention path: a one-head map whose CLS row is the exact softmax gives the Q/K selection.
  host_tensor cls_row(dtype::f32, {49});
  prumerge::cls_attention(seq, matrix_view<const float>(q.view<float, 2>()), matrix_view<const float>(k.view<float, 2>()), 0.0,
                          cls_row.view<float, 1>());
  host_tensor attn(dtype::f32, {1, 50, 50});
  for (index_t j = 0; j < 49; ++j) attn.view<float, 3>()(0, 0, j + 1) = cls_row.data<float>()[static_cast<std::size_t>(j)];
  npy::write(path("pm_attn.npy"), attn);
  EXPECT_EQ(expect_success("select --method prumerge --attn " + path("pm_attn.npy"))["kept"],
            expect_success("select --method prumerge --queries " + f + " --queries-tensor q --keys " + f + " --keys-tensor k")["kept"]);
  expect_failure("select --method prumerge --attn " + path("pm_attn.npy") + " --queries " + f, "give exactly one");
}

// ---- FastV, FitPrune ----------------------------------------------------------------------------

TEST_F(Cli, FastVAndFitPruneMatchTheLibrary) {
  const host_tensor stack = random_stack(10, 3, 2, 30, /*causal=*/true);  // 3 LLM layers, L = 30
  npy::write(path("llm.npy"), stack);
  const token_range visual{4, 20};
  const host_tensor l1 = layer_of(stack, 1);
  {
    const fastv::config cfg{.ratio = 0.5};
    std::vector<token_index> out(static_cast<std::size_t>(fastv::keep_count(20, cfg)));
    const auto r = fastv::select(seq, l1.view<float, 3>(), visual, cfg, std::span(out));
    // Default layer of a stack: K - 1 = 1.
    const json j = expect_success("select --method fastv --visual-start 4 --visual-count 20 --attn " + path("llm.npy"));
    EXPECT_EQ(as_indices(j["kept"]), out);
    EXPECT_EQ(j["count"], 10);
    EXPECT_EQ(j["layer"], 1);
    EXPECT_FLOAT_EQ(j["stats"]["visual_mass"].get<float>(), r.visual_mass);
    EXPECT_FLOAT_EQ(j["stats"]["kept_mass"].get<float>(), r.kept_mass);
  }
  {
    std::vector<token_index> out(14);
    const auto r = fitprune::prune_layer(seq, l1.view<float, 3>(), visual, 6, fitprune::config{}, std::span(out));
    const json j = expect_success("select --method fitprune --drop 6 --layer 1 --visual-start 4 --visual-count 20 --attn " + path("llm.npy"));
    EXPECT_EQ(as_indices(j["kept"]), out);
    EXPECT_EQ(j["stats"]["dropped"], 6);
    EXPECT_FLOAT_EQ(j["stats"]["cross_mass"].get<float>(), r.cross_mass);
    // A recipe fitted for 40 visual tokens drops floor(12 * 20 / 40) = 6 at layer 1.
    fitprune::recipe rec;
    rec.geometry = fitprune::flops_model{.hidden = 64, .ffn = 128, .layers = 3, .visual_tokens = 40};
    rec.drops = {0, 12, 4};
    rec.reduction = 0.3;
    fitprune::save_recipe(rec, path("recipe.json"));
    const json jr = expect_success("select --method fitprune --recipe " + path("recipe.json") +
                                   " --layer 1 --visual-start 4 --visual-count 20 --attn " + path("llm.npy"));
    EXPECT_EQ(jr["kept"], j["kept"]);
    EXPECT_EQ(jr["config"]["drop"], 6);
    EXPECT_EQ(jr["stats"]["recipe"]["keep_count_end"], 20 - 6 - 2);
  }
  expect_failure("select --method fastv --attn " + path("llm.npy"), "--visual-start S --visual-count N");
  expect_failure("select --method fastv --visual-start 4 --visual-count 40 --attn " + path("llm.npy"), "fastv.visual");
  expect_failure("select --method fastv --ratio 1 --visual-start 4 --visual-count 20 --attn " + path("llm.npy"), "fastv.ratio = 1");
  expect_failure("select --method fitprune --drop 2 --recipe x --layer 1 --visual-start 4 --visual-count 20 --attn " + path("llm.npy"),
                 "exactly one of --drop K and --recipe FILE");
  expect_failure("select --method fitprune --drop 21 --layer 1 --visual-start 4 --visual-count 20 --attn " + path("llm.npy"),
                 "--drop = 21");
  expect_failure("select --method fitprune --drop 2 --visual-start 4 --visual-count 20 --attn " + path("llm.npy"),
                 "--layer L is required");
  expect_failure("select --method fitprune --recipe " + path("nope.json") + " --layer 1 --visual-start 4 --visual-count 20 --attn " +
                     path("llm.npy"), "fitprune.recipe.path");
}

// ---- baselines --------------------------------------------------------------------------------

// ---- DivPrune, DART, VisPruner (feature similarity; DivPrune and DART read no attention) ---------

TEST_F(Cli, FeatureMethodsMatchTheLibrary) {
  const host_tensor feats = random_matrix(21, {40, 16});
  npy::write(path("dp_feats.npy"), feats);
  std::vector<token_index> dp(7);
  const auto dr = divprune::select(seq, matrix_view<const float>(feats.view<float, 2>()), divprune::config{.count = 7}, std::span(dp));
  const json dj = expect_success("select --method divprune --count 7 --features " + path("dp_feats.npy"));
  EXPECT_EQ(as_indices(dj["kept"]), dp);
  EXPECT_EQ(dj["stats"]["min_distance"].get<float>(), dr.min_distance);
  expect_failure("select --method divprune --count 41 --features " + path("dp_feats.npy"), "divprune.count");

  // DART: keys [2, 30, 8] of layer K-1, hidden [30, 12]; visual span 3 + 20, 7 text tokens.
  const host_tensor keys = random_matrix(22, {2, 30, 8});
  const host_tensor hidden = random_matrix(23, {30, 12});
  const host_tensor weight = random_matrix(24, {12});
  const std::string f = path("dart.safetensors");
  safetensors::write(f, {{"keys", keys}, {"hidden", hidden}, {"w", weight}});
  const dart::config cfg{.count = 9, .image_pivots = 2, .text_pivots = 3};
  const token_range span{3, 20};
  std::vector<token_index> weighted(9), plain(9);
  const auto wr = dart::select(seq, keys.view<float, 3>(), matrix_view<const float>(hidden.view<float, 2>()),
                               vector_view<const float>(weight.view<float, 1>()), span, cfg, std::span(weighted));
  (void)dart::select(seq, keys.view<float, 3>(), matrix_view<const float>(hidden.view<float, 2>()), vector_view<const float>{}, span, cfg,
                     std::span(plain));
  const std::string inputs = " --keys " + f + " --keys-tensor keys --features " + f + " --features-tensor hidden";
  const std::string dart_cmd = "select --method dart --count 9 --image-pivots 2 --text-pivots 3" + inputs;
  const json wj = expect_success(dart_cmd + " --visual-start 3 --visual-count 20 --norm-weight " + f + " --norm-weight-tensor w");
  EXPECT_EQ(as_indices(wj["kept"]), weighted);
  EXPECT_EQ(wj["stats"]["image_pivots"], wr.image_pivots);
  EXPECT_EQ(wj["stats"]["text_pivots"], wr.text_pivots);
  EXPECT_EQ(as_indices(expect_success(dart_cmd + " --visual-start 3 --visual-count 20")["kept"]), plain);
  expect_failure(dart_cmd, "--visual-start S --visual-count N");
  expect_failure(dart_cmd + " --visual-start 20 --visual-count 20", "dart.visual");
  expect_failure(dart_cmd + " --visual-start 3 --visual-count 20 --norm-weight " + f + " --norm-weight-tensor keys", "--norm-weight = ");
  expect_failure(dart_cmd + " --visual-start 3 --visual-count 20 --no-cls", "do not apply to dart");

  // VisPruner: CLS + 36 patches, patch features [36, 10].
  const host_tensor attn = layer_of(random_stack(25, 1, 3, 37), 0);
  const host_tensor pf = random_matrix(26, {36, 10});
  const std::string g = path("vp.safetensors");
  safetensors::write(g, {{"attn", attn}, {"feats", pf}});
  const vispruner::config vcfg{.count = 12, .important_ratio = 0.25, .rounds_drop = 3};
  std::vector<token_index> vp(12);
  const auto vr = vispruner::select(seq, head_attention_view<float>(attn.view<float, 3>()), matrix_view<const float>(pf.view<float, 2>()),
                                    vcfg, std::span(vp));
  const std::string vp_inputs = " --attn " + g + " --tensor attn --features " + g + " --features-tensor feats";
  const json vj = expect_success("select --method vispruner --count 12 --important-ratio 0.25 --rounds-drop 3" + vp_inputs);
  EXPECT_EQ(as_indices(vj["kept"]), vp);
  EXPECT_EQ(vj["stats"]["important"], vr.important);
  EXPECT_EQ(vj["stats"]["diverse"], vr.diverse);
  EXPECT_EQ(vj["stats"]["rounds"], vr.rounds);
  EXPECT_GT(vr.rounds, 0);
  expect_failure("select --method vispruner" + vp_inputs, "vispruner.count = 64");  // the default 64 of 36 patches
  expect_failure("select --method vispruner --count 12 --no-cls" + vp_inputs, "needs the CLS token");
}

TEST_F(Cli, Baselines) {
  std::vector<token_index> expected(5);
  (void)baselines::random::select(seq, 576, baselines::random::config{.count = 5, .seed = 7}, std::span(expected));
  const json r = expect_success("select --method random --n 576 --count 5 --seed 7");
  EXPECT_EQ(as_indices(r["kept"]), expected);
  // uniform on the 2x2 patch grid of the hand case, 2 tokens: spread rows 1 of 2 -> ... compare to the library.
  npy::write(path("hand_f32.npy"), hand_attention());
  std::vector<token_index> u(2);
  (void)baselines::uniform::select(seq, token_grid{2, 2}, baselines::uniform::config{.ratio = 0.5}, std::span(u));
  const json uj = expect_success("select --method uniform --ratio 0.5 --attn " + path("hand_f32.npy"));
  EXPECT_EQ(as_indices(uj["kept"]), u);
  EXPECT_EQ(uj["config"]["grid"], "2x2");
  EXPECT_EQ(expect_success("select --method uniform --n 10 --count 3")["kept"], (json{1, 5, 8}));  // floor((2i+1)10/6)
  // pool: 4x4 features of 1 column holding 0..15, 2x2 windows -> means 2.5, 4.5, 10.5, 12.5.
  host_tensor f(dtype::f32, {16, 1});
  for (index_t i = 0; i < 16; ++i) f.data<float>()[static_cast<std::size_t>(i)] = static_cast<float>(i);
  npy::write(path("pool_in.npy"), f);
  const json p = expect_success("select --method pool --features " + path("pool_in.npy") + " --out " + path("pool_out.npy"));
  EXPECT_EQ(p["count"], 4);
  EXPECT_EQ(p["stats"]["output_grid"], "2x2");
  const host_tensor pooled = npy::read(path("pool_out.npy"));
  EXPECT_EQ(std::vector<float>(pooled.data<float>().begin(), pooled.data<float>().end()), (std::vector<float>{2.5f, 4.5f, 10.5f, 12.5f}));
  expect_failure("select --method random --n 10", "set exactly one of ratio and count");
  expect_failure("select --method random --count 3", "--n N");
  expect_failure("select --method random --n 10 --count 11", "random.count = 11");
  expect_failure("select --method pool --features " + path("pool_in.npy") + " --window 0", "pool.window = 0");
}

// ---- info -------------------------------------------------------------------------------------

TEST_F(Cli, Info) {
  safetensors::write(path("info.safetensors"), {{"a", host_tensor(dtype::bf16, {2, 3})}, {"b", host_tensor(dtype::f32, {4})}},
                     {{"k", "v"}});
  const json j = expect_success("info " + path("info.safetensors"));
  EXPECT_EQ(j["format"], "safetensors");
  ASSERT_EQ(j["tensors"].size(), 2u);
  EXPECT_EQ(j["tensors"][0]["name"], "a");
  EXPECT_EQ(j["tensors"][0]["dtype"], "BF16");
  EXPECT_EQ(j["tensors"][0]["shape"], (json{2, 3}));
  EXPECT_EQ(j["metadata"]["k"], "v");
  npy::write(path("info.npy"), host_tensor(dtype::f16, {3, 1}));
  const json n = expect_success("info " + path("info.npy"));
  EXPECT_EQ(n["format"], "npy 1.0");
  EXPECT_EQ(n["tensors"][0]["dtype"], "<f2");
  expect_failure("info", "usage: tokensel info FILE");
  expect_failure("info " + path("none.npy"), "no such file");
}

// ---- bad flags and bad files: one error line, exit status 2 -------------------------------------

TEST_F(Cli, BadCommandLines) {
  npy::write(path("hand_f32.npy"), hand_attention());
  const std::string ok = " --attn " + path("hand_f32.npy");
  expect_failure("", "no command given");
  expect_failure("frobnicate", "unknown command 'frobnicate'");
  expect_failure("select" + ok, "--method NAME is required");
  expect_failure("select --method nope" + ok, "--method = nope: unknown method (one of fopru, freepruner");
  expect_failure("select --method fopru --foo 1" + ok, "unknown flag --foo for method fopru");
  expect_failure("select --method fopru --k-pivotal 3" + ok, "unknown flag --k-pivotal for method fopru");
  expect_failure("select --method fopru --ratio 0.5 --ratio 0.6" + ok, "--ratio given twice");
  expect_failure("select --method fopru" + ok + " --ratio", "--ratio needs a value R");
  expect_failure("select --method fopru --ratio abc" + ok, "--ratio = abc: not a number");
  expect_failure("select --method fopru --ratio 0.5x" + ok, "--ratio = 0.5x: not a number");
  expect_failure("select --method fopru --ratio 1.5" + ok, "fopru.ratio = 1.5: must be in (0, 1]");
  expect_failure("select --method fopru --ratio 0" + ok, "fopru.ratio = 0: must be in (0, 1]");
  expect_failure("select --method fopru --strategy diagonal" + ok, "--strategy = diagonal: must be one of rank, row");
  expect_failure("select --method fopru --strategy row --grid 3x3" + ok, "fopru.grid = 3x3");
  expect_failure("select --method fopru --strategy row --grid 3by3" + ok, "--grid = 3by3: expected ROWSxCOLS");
  expect_failure("select --method fopru --threads -1" + ok, "--threads = -1");
  expect_failure("select --method fopru --pretty=1" + ok, "--pretty takes no value");
  expect_failure("select --method fopru stray" + ok, "unexpected argument 'stray'");
  expect_failure("select --method fopru --skip-cls --no-cls" + ok, "exclusive");
  expect_failure("select --method fopru --layer 1" + ok, "--layer = 1: the attention input");
  expect_failure("select --method fopru", "--attn FILE (or --layers-file LIST) is required");
  expect_failure("select --method fopru --layers-file " + path("missing.txt"), "--layers-file = ");
}

TEST_F(Cli, BadFiles) {
  const std::string m = "select --method fopru --attn ";
  expect_failure(m + path("does_not_exist.npy"), "--attn: file = " + path("does_not_exist.npy") + ": cannot open: no such file");
  expect_failure(m + dir_.string(), "not a regular file");
  // Truncated .npy: the data is shorter than the shape.
  auto image = npy::write_buffer(hand_attention());
  {
    std::ofstream f(path("short.npy"), std::ios::binary);
    f.write(reinterpret_cast<const char*>(image.data()), static_cast<std::streamsize>(image.size() - 3));
  }
  expect_failure(m + path("short.npy"), "--attn: npy.data: data too short");
  {
    std::ofstream f(path("garbage.bin"), std::ios::binary);
    f << "this is not a tensor file at all";
  }
  expect_failure(m + path("garbage.bin"), "--attn: safetensors.header_len");
  {
    std::ofstream f(path("badmagic.npy"), std::ios::binary);
    f << std::string("\x93NUMPZ\x01\x00\x10\x00{}", 12);
  }
  expect_failure(m + path("badmagic.npy"), "bad magic");
  // Several tensors and no --tensor; an unknown --tensor; an unsupported dtype; wrong ranks.
  safetensors::write(path("two.safetensors"), {{"x", hand_attention()}, {"y", hand_attention()}});
  expect_failure(m + path("two.safetensors"), "holds 2 float tensors; pick one with --tensor (x, y)");
  expect_failure(m + path("two.safetensors") + " --tensor z", "safetensors.tensor = 'z': no such tensor");
  std::string st = R"({"i":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})";
  {
    std::ofstream f(path("i64.safetensors"), std::ios::binary);
    const std::uint64_t n = st.size();
    f.write(reinterpret_cast<const char*>(&n), 8);
    f << st << std::string(8, '\0');
  }
  expect_failure(m + path("i64.safetensors") + " --tensor i", "safetensors.dtype = I64");
  npy::write(path("hand_f32.npy"), hand_attention());  // a real .npy: the tensor-name rule, not a missing file
  expect_failure(m + path("hand_f32.npy") + " --tensor x", "tensor names apply to .safetensors files");
  npy::write(path("flat.npy"), host_tensor(dtype::f32, {5, 5}));
  expect_failure(m + path("flat.npy"), "is neither [heads, N, N] nor [layers, heads, N, N]");
  npy::write(path("rect.npy"), host_tensor(dtype::f32, {1, 5, 4}));
  expect_failure(m + path("rect.npy"), "fopru.attention = 5x4");
  // Non-finite attention is rejected by the library, named.
  host_tensor nan = hand_attention();
  nan.data<float>()[7] = std::nanf("");
  npy::write(path("nan.npy"), nan);
  const run_result r = run(m + path("nan.npy"));
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(lines(r.err).size(), 1u) << r.err;
  EXPECT_NE(r.err.find("nan"), std::string::npos) << r.err;
  // A stack with --layer out of range.
  npy::write(path("stack2.npy"), random_stack(11, 2, 1, 5));
  expect_failure(m + path("stack2.npy") + " --layer 2", "--layer = 2: the stack");
  expect_failure(m + path("stack2.npy") + " --layer -3", "--layer = -3: the stack");
}

// ---- the shipped example data -------------------------------------------------------------------

TEST_F(Cli, ExampleDataRuns) {
  const std::string d = TOKENSEL_EXAMPLE_DATA;
  const json f = expect_success("select --method fopru --strategy row --ratio 0.25 --skip-cls --attn " + d + "/attention_layer22.npy");
  EXPECT_EQ(f["n"], 144);
  EXPECT_EQ(f["count"], 36);  // 3 of 12 rows
  EXPECT_EQ(f["input"]["dtype"], "f16");
  const json fp = expect_success("select --method freepruner --attn " + d + "/clip_synthetic.safetensors --tensor attentions");
  EXPECT_EQ(fp["n"], 64);
  EXPECT_GT(fp["count"].get<int>(), 0);
  const json vz = expect_success("select --method visionzip --attn " + d + "/attention_layer22.npy --keys " + d +
                                 "/clip_synthetic.safetensors --keys-tensor keys_layer22");
  EXPECT_EQ(vz["count"], 64);
  const json fv = expect_success("select --method fastv --visual-start 5 --visual-count 64 --attn " + d + "/llm_attention_layer1.npy");
  EXPECT_EQ(fv["count"], 32);
}
