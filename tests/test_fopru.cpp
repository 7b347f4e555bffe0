// FoPru, variance-axis significance, row aggregation and map sums.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "tokensel/methods/fopru.hpp"
#include "tokensel/stats/map_sums.hpp"
#include "tokensel/select/row_aggregation.hpp"
#include "tokensel/stats/variance_axis.hpp"

using namespace tokensel;

namespace {

// Softmax attention of 2 heads over CLS + 3x3 patches, printed by
// tools/reference/fopru_reference.py (seed 7); that script's FoPru results are pinned below.
const std::vector<float> kReferenceAttention = {
0.0489274524f, 0.0887097269f, 0.0282079205f, 0.00822102372f, 0.0196590312f, 0.00671662204f, 0.0550458059f, 0.712164402f, 0.018237235f, 0.014110635f, 0.229176342f, 0.175665498f, 0.10623315f, 0.0133814784f, 0.0811503753f, 0.345645607f, 0.00584963057f, 0.034452308f, 0.00192007096f, 0.00652559474f, 0.00358320819f, 0.0890810266f, 0.011300372f, 0.245244905f, 0.195045099f, 0.0980881676f, 0.000928866153f, 0.048537802f, 0.129376501f, 0.178814083f, 0.00272087846f, 0.0223252811f, 0.00820044242f, 0.0115138646f, 0.484454632f, 0.011543897f, 0.0543901399f, 0.340360761f, 0.0180658866f, 0.0464242734f, 0.0154758776f, 0.0140963765f, 0.00107062515f, 0.0144491382f, 0.187917143f, 0.000562178961f, 0.0692082196f, 0.0157534946f, 0.00343980081f, 0.678027153f, 0.126485452f, 0.00250184955f, 0.0319649652f, 0.0872682855f, 0.0188788772f, 0.107924126f, 0.0241087135f, 0.104595765f, 0.48914215f, 0.0071298019f, 0.0733791888f, 0.0193510726f, 0.0630482286f, 0.00454930216f, 0.0153445434f, 0.0330152996f, 0.294975072f, 0.482898742f, 0.00346359634f, 0.00997496396f, 0.0831294283f, 0.000423904246f, 0.00902729016f, 0.0187654626f, 0.281637818f, 0.0905045122f, 0.0118480716f, 0.0109073855f, 0.013821166f, 0.47993505f, 0.0213023741f, 0.0273169577f, 0.10149876f, 0.0393827297f, 0.0337945633f, 0.0054018097f, 0.049000252f, 0.0206498057f, 0.516525149f, 0.185127616f, 0.0481353663f, 0.192301884f, 0.0255993064f, 0.414286256f, 0.0499741137f, 0.162238747f, 0.00382102211f, 0.101054944f, 0.00172615424f, 0.000862126413f, 0.00559553737f, 0.00170074741f, 0.0142824091f, 0.916384876f, 0.0019493124f, 0.0029536332f, 0.0155138131f, 0.0275761057f, 0.0072290739f, 0.00681456644f, 0.210088447f, 0.145826533f, 0.00652245618f, 0.04400222f, 0.0553223193f, 0.00625657802f, 0.0866849944f, 0.00926913135f, 0.360227585f, 0.075799711f, 0.0824315175f, 0.0211427752f, 0.0543875471f, 0.00126853446f, 0.00717454869f, 0.142456189f, 0.00097650144f, 0.374867231f, 0.00209837221f, 0.313196808f, 0.00477064913f, 0.122910783f, 0.0336286686f, 0.00119698583f, 0.314748496f, 0.462612957f, 0.0226886924f, 0.0149639482f, 0.0187978502f, 0.00368095352f, 0.282755375f, 0.010608173f, 0.0283613615f, 0.00642897887f, 0.00898235664f, 0.0024399031f, 0.388210297f, 0.0230861604f, 0.216859967f, 0.0322674103f, 0.0080468161f, 0.0167888142f, 0.0105236117f, 0.0327860042f, 0.0152343046f, 0.0177119598f, 0.00204814412f, 0.00642625336f, 0.882005632f, 0.00842848513f, 0.00462654885f, 0.0747875571f, 0.635583401f, 0.00207913155f, 0.0251021925f, 0.0107606268f, 0.00112519902f, 0.165645882f, 0.0363469794f, 0.0439425297f, 0.0103118662f, 0.115294136f, 0.0157891586f, 0.0348869115f, 0.00506015308f, 0.00407843245f, 0.671142757f, 0.0168391876f, 0.0832026303f, 0.0433947034f, 0.017592283f, 0.0153917074f, 0.149892136f, 0.0232432671f, 0.0314017497f, 0.0444424003f, 0.447093368f, 0.165798441f, 0.0913731232f, 0.0137715936f, 0.00115001912f, 0.121848196f, 0.126041383f, 0.0137673421f, 0.0539190434f, 0.0870603994f, 0.0961668789f, 0.115178496f, 0.00733370474f, 0.377534509f};

std::vector<token_index> run(const std::vector<float>& attn, index_t heads, index_t n, const fopru::config& cfg,
                             fopru::result* res = nullptr) {
  head_attention_view<float> view(attn.data(), {heads, n, n});
  std::vector<token_index> out(static_cast<std::size_t>(fopru::keep_count(n - 1, cfg)));
  auto r = fopru::select(seq, view, cfg, out);
  if (res != nullptr) *res = r;
  out.resize(static_cast<std::size_t>(r.count));
  return out;
}

// Hand-built map: CLS + 2x2 patches, both heads equal. Patch rows are constant per row
// (0.1, 0.2, 0.05, 0.25) so every column mean is 0.15 (variance 0) and the row means win:
// Var(s1) = ((.05)^2 + (.05)^2 + (.1)^2 + (.1)^2) / 4 = 0.00625.
std::vector<float> hand_map() {
  const float rows[4] = {0.1f, 0.2f, 0.05f, 0.25f};
  std::vector<float> a(2 * 5 * 5, 0.0f);
  for (int h = 0; h < 2; ++h) {
    float* m = a.data() + h * 25;
    for (int j = 0; j < 5; ++j) m[j] = 0.2f;  // CLS row
    for (int i = 1; i < 5; ++i) {
      m[i * 5] = 1.0f - 4 * rows[i - 1];  // CLS column takes the rest
      for (int j = 1; j < 5; ++j) m[i * 5 + j] = rows[i - 1];
    }
  }
  return a;
}

}  // namespace

TEST(VarianceAxis, HandComputedRowMeanWins) {
  const auto a = hand_map();
  head_attention_view<float> view(a.data(), {2, 5, 5});
  std::vector<float> sig(4);
  auto r = variance_axis_significance(seq, restrict_tokens(view, token_range::skip_cls(5)), head_reduction::mean, sig);
  EXPECT_EQ(r.axis, significance_axis::row_mean);
  EXPECT_NEAR(r.row_variance, 0.00625, 1e-9);
  EXPECT_EQ(r.column_variance, 0.0);
  EXPECT_FLOAT_EQ(sig[0], 0.1f);
  EXPECT_FLOAT_EQ(sig[3], 0.25f);
}

TEST(VarianceAxis, FullSoftmaxRowsAlwaysPickColumns) {
  // With CLS kept every row of a softmax sums to 1, so s1 is constant (spec section 3 note).
  head_attention_view<float> view(kReferenceAttention.data(), {2, 10, 10});
  std::vector<float> sig(10);
  auto r = variance_axis_significance(seq, view, head_reduction::mean, sig);
  EXPECT_EQ(r.axis, significance_axis::column_mean);
  EXPECT_LT(r.row_variance, 1e-12);
}

TEST(FoPru, HandComputedRankAndRow) {
  const auto a = hand_map();
  fopru::result res;
  EXPECT_EQ(run(a, 2, 5, {.ratio = 0.5}, &res), (std::vector<token_index>{1, 3}));
  EXPECT_EQ(res.axis, significance_axis::row_mean);
  // Rows {0,1} and {2,3} both sum to 0.3: the tie goes to the lower row.
  EXPECT_EQ(run(a, 2, 5, {.ratio = 0.5, .strategy = fopru::strategy::row}), (std::vector<token_index>{0, 1}));
  // ratio 0.25 of 4 tokens keeps 1; of 2 rows keeps max(1, 0) = 1 row.
  EXPECT_EQ(run(a, 2, 5, {.ratio = 0.25}), (std::vector<token_index>{3}));
}

TEST(FoPru, MatchesNumpyReference) {
  // Expected values printed by tools/reference/fopru_reference.py:
  //   rank 0.5  column_mean 5.46731237e-05 0.00104410082 [5, 6, 7, 8]
  //   rank 0.25 column_mean ... [7, 8]
  //   row 0.34  column_mean ... [6, 7, 8]
  //   row 1.0   column_mean ... [0..8]
  fopru::result res;
  EXPECT_EQ(run(kReferenceAttention, 2, 10, {.ratio = 0.5}, &res), (std::vector<token_index>{5, 6, 7, 8}));
  EXPECT_EQ(res.axis, significance_axis::column_mean);
  EXPECT_NEAR(res.row_variance, 5.46731237e-05, 5.46731237e-05 * 1e-5);
  EXPECT_NEAR(res.column_variance, 0.00104410082, 0.00104410082 * 1e-5);
  EXPECT_EQ(run(kReferenceAttention, 2, 10, {.ratio = 0.25}), (std::vector<token_index>{7, 8}));
  EXPECT_EQ(run(kReferenceAttention, 2, 10, {.ratio = 0.34, .strategy = fopru::strategy::row}),
            (std::vector<token_index>{6, 7, 8}));
  EXPECT_EQ(run(kReferenceAttention, 2, 10, {.ratio = 1.0, .strategy = fopru::strategy::row}),
            (std::vector<token_index>{0, 1, 2, 3, 4, 5, 6, 7, 8}));
}

TEST(FoPru, KeepCountIsPureAndExact) {
  EXPECT_EQ(fopru::keep_count(576, {.ratio = 0.5}), 288);
  EXPECT_EQ(fopru::keep_count(576, {.ratio = 0.3}), 172);  // floor(172.8)
  EXPECT_EQ(fopru::keep_count(576, {.ratio = 0.001}), 1);  // max(1, 0)
  EXPECT_EQ(fopru::keep_count(576, {.ratio = 1.0}), 576);
  EXPECT_EQ(fopru::keep_count(0, {.ratio = 0.5}), 0);
  EXPECT_EQ(fopru::keep_count(576, {.ratio = 0.25, .strategy = fopru::strategy::row}), 6 * 24);
  EXPECT_EQ(fopru::keep_count(12, {.ratio = 0.5, .strategy = fopru::strategy::row, .grid = token_grid{3, 4}}), 4);
}

TEST(FoPru, RejectsBadInput) {
  auto expect_error = [](auto&& fn, errc code, const std::string& needle) {
    try {
      fn();
      FAIL() << "no error for " << needle;
    } catch (const error& e) {
      EXPECT_EQ(e.code(), code) << e.what();
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error([] { (void)fopru::keep_count(10, {.ratio = 1.5}); }, errc::invalid_argument, "fopru.ratio = 1.5");
  expect_error([] { (void)fopru::keep_count(10, {.ratio = 0.0}); }, errc::invalid_argument, "fopru.ratio = 0");
  expect_error([] { (void)fopru::keep_count(10, {.ratio = std::nan("")}); }, errc::invalid_argument, "fopru.ratio");
  expect_error([] { (void)fopru::keep_count(10, {.ratio = 0.5, .strategy = fopru::strategy::row}); }, errc::shape_mismatch,
               "fopru.grid.n = 10");
  expect_error([] { (void)fopru::keep_count(10, {.ratio = 0.5, .strategy = fopru::strategy::row, .grid = token_grid{3, 3}}); },
               errc::shape_mismatch, "fopru.grid = 3x3");

  auto a = hand_map();
  a[2 * 5 + 3] = std::numeric_limits<float>::quiet_NaN();
  expect_error([&] { run(a, 2, 5, {.ratio = 0.5}); }, errc::non_finite, "variance_axis.row_mean[1]");
  a = hand_map();
  a[25 + 7] = std::numeric_limits<float>::infinity();
  expect_error([&] { run(a, 2, 5, {.ratio = 0.5}); }, errc::non_finite, "variance_axis.row_mean[0]");

  std::vector<float> rect(2 * 5 * 4, 0.1f);
  head_attention_view<float> bad(rect.data(), {2, 5, 4});
  std::vector<token_index> out(4);
  expect_error([&] { (void)fopru::select(seq, bad, {}, out); }, errc::shape_mismatch, "fopru.attention = 5x4");
  const auto ok = hand_map();
  head_attention_view<float> good(ok.data(), {2, 5, 5});
  std::vector<token_index> small(1);
  expect_error([&] { (void)fopru::select(seq, good, {.ratio = 0.5}, small); }, errc::shape_mismatch, "fopru.out.size() = 1");
}

TEST(FoPru, EmptyInputs) {
  head_attention_view<float> only_cls(nullptr, {0, 1, 1});
  std::vector<token_index> out;
  // One token (CLS) and no heads: no patches, nothing kept.
  EXPECT_EQ(fopru::select(seq, only_cls, {}, out).count, 0);
  attention_view<float> empty_batch(nullptr, {0, 16, 577, 577});
  std::vector<token_index> counts;
  fopru::select(par, empty_batch, {}, {tensor_view<token_index, 2>(nullptr, {0, 288}), counts});
}

TEST(FoPru, AllEqualScoresKeepLowestIndices) {
  std::vector<float> a(2 * 17 * 17, 1.0f / 17);
  EXPECT_EQ(run(a, 2, 17, {.ratio = 0.25}), (std::vector<token_index>{0, 1, 2, 3}));
  EXPECT_EQ(run(a, 2, 17, {.ratio = 0.5, .strategy = fopru::strategy::row}), (std::vector<token_index>{0, 1, 2, 3, 4, 5, 6, 7}));
}

namespace {
std::vector<float> random_softmax(std::mt19937& gen, index_t batch, index_t heads, index_t n) {
  std::normal_distribution<float> dist(0.0f, 2.0f);
  std::vector<float> a(static_cast<std::size_t>(batch * heads * n * n));
  for (index_t r = 0; r < batch * heads * n; ++r) {
    float* row = a.data() + r * n;
    float total = 0;
    for (index_t j = 0; j < n; ++j) total += row[j] = std::exp(dist(gen));
    for (index_t j = 0; j < n; ++j) row[j] /= total;
  }
  return a;
}
}  // namespace

TEST(FoPru, PropertiesOnRandomInputs) {
  std::mt19937 gen(42);
  for (int trial = 0; trial < 20; ++trial) {
    const index_t side = 2 + trial % 6, n = side * side + 1, heads = 1 + trial % 4, batch = 3;
    const auto a = random_softmax(gen, batch, heads, n);
    attention_view<float> view(a.data(), {batch, heads, n, n});
    for (auto strat : {fopru::strategy::rank, fopru::strategy::row}) {
      for (double ratio : {0.1, 0.25, 0.5, 0.77, 1.0}) {
        const fopru::config cfg{.ratio = ratio, .strategy = strat};
        const index_t k = fopru::keep_count(n - 1, cfg);
        std::vector<token_index> seq_idx(batch * k), par_idx(batch * k, -1), seq_cnt(batch), par_cnt(batch);
        std::vector<fopru::result> res(batch);
        fopru::select(seq, view, cfg, {tensor_view<token_index, 2>(seq_idx.data(), {batch, k}), seq_cnt}, res);
        fopru::select(par, view, cfg, {tensor_view<token_index, 2>(par_idx.data(), {batch, k}), par_cnt});
        EXPECT_EQ(seq_idx, par_idx);
        for (index_t b = 0; b < batch; ++b) {
          ASSERT_EQ(seq_cnt[b], k);
          EXPECT_EQ(res[b].count, k);
          for (index_t i = 1; i < k; ++i) EXPECT_LT(seq_idx[b * k + i - 1], seq_idx[b * k + i]);
          // Same sample alone, threaded (the batch-of-one path hands the policy to the sample).
          std::vector<token_index> one(k);
          (void)fopru::select(par, view[b], cfg, one);
          EXPECT_TRUE(std::equal(one.begin(), one.end(), seq_idx.begin() + b * k));
        }
      }
    }
  }
}

TEST(FoPru, StridesAndElementTypes) {
  std::mt19937 gen(3);
  const index_t heads = 4, n = 26, side = 5;
  (void)side;
  const auto a = random_softmax(gen, 1, heads, n);
  // Transposed storage: element (h, i, j) at h*n*n + j*n + i, viewed with swapped strides.
  std::vector<float> t(a.size());
  for (index_t h = 0; h < heads; ++h)
    for (index_t i = 0; i < n; ++i)
      for (index_t j = 0; j < n; ++j) t[h * n * n + j * n + i] = a[h * n * n + i * n + j];
  head_attention_view<float> contiguous(a.data(), {heads, n, n});
  head_attention_view<float> strided(t.data(), {heads, n, n}, {n * n, 1, n});
  std::vector<Eigen::half> ah(a.size());
  std::vector<Eigen::bfloat16> ab(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    ah[i] = Eigen::half(a[i]);
    ab[i] = Eigen::bfloat16(a[i]);
  }
  for (auto strat : {fopru::strategy::rank, fopru::strategy::row}) {
    const fopru::config cfg{.ratio = 0.4, .strategy = strat};
    const index_t k = fopru::keep_count(n - 1, cfg);
    std::vector<token_index> x(k), y(k), zh(k), zb(k);
    (void)fopru::select(seq, contiguous, cfg, x);
    (void)fopru::select(par, strided, cfg, y);
    EXPECT_EQ(x, y);  // strides change the access pattern, not the arithmetic
    (void)fopru::select(seq, head_attention_view<Eigen::half>(ah.data(), {heads, n, n}), cfg, zh);
    (void)fopru::select(seq, head_attention_view<Eigen::bfloat16>(ab.data(), {heads, n, n}), cfg, zb);
    // Rounding can swap near-equal neighbours; the sets must still mostly agree.
    auto overlap = [&](const std::vector<token_index>& u) {
      index_t common = 0;
      for (auto v : u) common += std::count(x.begin(), x.end(), v);
      return common;
    };
    EXPECT_GE(overlap(zh), k - 2);
    EXPECT_GE(overlap(zb), k - 4);
  }
}

TEST(FoPru, RaggedBatchMatchesSingleCalls) {
  std::mt19937 gen(11);
  std::vector<std::vector<float>> storage;
  std::vector<head_attention_view<float>> views;
  for (index_t side : {3, 5, 4}) {
    const index_t n = side * side + 1;
    storage.push_back(random_softmax(gen, 1, 2, n));
  }
  for (auto& s : storage) {
    const auto n = static_cast<index_t>(std::lround(std::sqrt(static_cast<double>(s.size() / 2))));
    views.emplace_back(s.data(), std::array<index_t, 3>{2, n, n});
  }
  const fopru::config cfg{.ratio = 0.5, .strategy = fopru::strategy::row};
  const index_t capacity = 16;
  std::vector<token_index> idx(3 * capacity), counts(3);
  fopru::select(par, std::span<const head_attention_view<float>>(views), cfg,
                {tensor_view<token_index, 2>(idx.data(), {3, capacity}), counts});
  for (index_t b = 0; b < 3; ++b) {
    EXPECT_EQ(counts[b], fopru::keep_count(views[b].extent(1) - 1, cfg));
    std::vector<token_index> one(counts[b]);
    (void)fopru::select(seq, views[b], cfg, one);
    EXPECT_TRUE(std::equal(one.begin(), one.end(), idx.begin() + b * capacity));
  }
}

TEST(MapSums, SequentialEqualsThreadedBitwise) {
  std::mt19937 gen(5);
  const index_t heads = 3, n = 150;
  const auto a = random_softmax(gen, 1, heads, n);
  head_attention_view<float> view(a.data(), {heads, n, n});
  for (auto op : {head_reduction::mean, head_reduction::sum, head_reduction::max}) {
    std::vector<float> r1(n), c1(n), d1(n), r2(n), c2(n), d2(n);
    map_sums(seq, view, op, {r1, c1, d1});
    map_sums(par, view, op, {r2, c2, d2});
    EXPECT_EQ(r1, r2);
    EXPECT_EQ(c1, c2);
    EXPECT_EQ(d1, d2);
    // Against the materialised map.
    std::vector<float> m(n * n);
    reduce_heads(seq, view, op, matrix_view<float>(m.data(), {n, n}));
    for (index_t i = 0; i < n; ++i) {
      float col = 0;
      for (index_t j = 0; j < n; ++j) col += m[j * n + i];
      EXPECT_EQ(c1[i], col);
      EXPECT_EQ(d1[i], m[i * n + i]);
      EXPECT_NEAR(r1[i], std::accumulate(m.begin() + i * n, m.begin() + (i + 1) * n, 0.0), 1e-5);
    }
  }
}

TEST(RowAggregation, HandComputed) {
  const std::vector<float> s{1, 2, 3, 9, 0, 0, 4, 4, 4};  // rows: 6, 9, 12
  std::vector<float> rows(3);
  row_scores<float>(as_view(std::span<const float>(s)), {3, 3}, row_reduction::mean, rows);
  EXPECT_EQ(rows, (std::vector<float>{2, 3, 4}));
  std::vector<token_index> out(6);
  EXPECT_EQ(select_rows<float>(as_view(std::span<const float>(s)), {3, 3}, 2, row_reduction::sum, out), 6);
  EXPECT_EQ(out, (std::vector<token_index>{3, 4, 5, 6, 7, 8}));
  EXPECT_THROW(select_rows<float>(as_view(std::span<const float>(s)), {2, 4}, 1, row_reduction::sum, out), error);
  EXPECT_THROW(select_rows<float>(as_view(std::span<const float>(s)), {3, 3}, 4, row_reduction::sum, out), error);
}
