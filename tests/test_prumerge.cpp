// Tests of LLaVA-PruMerge / PruMerge+ (spec section 6). Hand-computed cases use dyadic values so
// every sum is exact in fp32; the 40-patch case is checked against the independent float64
// implementation in tools/reference/prumerge_reference.py (its output is pasted below).
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "tokensel/detail/expf.hpp"
#include "tokensel/methods/prumerge.hpp"

using namespace tokensel;
namespace pm = tokensel::prumerge;

namespace {

template <class F>
void expect_error(F&& f, errc code, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error thrown, expected " << needle;
  } catch (const error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

template <class T>
matrix_view<const T> cmat(const std::vector<T>& v, index_t rows, index_t cols) {
  return matrix_view<const T>(v.data(), {rows, cols});
}
template <class T>
matrix_view<T> mmat(std::vector<T>& v, index_t rows, index_t cols) {
  return matrix_view<T>(v.data(), {rows, cols});
}
vector_view<const float> cvec(const std::vector<float>& v) {
  return vector_view<const float>(v.data(), {static_cast<index_t>(v.size())});
}
std::vector<token_index> first(const std::vector<token_index>& v, index_t k) {
  return {v.begin(), v.begin() + k};
}
std::vector<float> scaled(std::initializer_list<float> units, float denom) {
  std::vector<float> v;
  for (float u : units) v.push_back(u / denom);
  return v;
}

// Pasted from tools/reference/prumerge_reference.py (numpy 2.4.6, float64).
const std::vector<double> kRefAttention{
    0.010867541971655468, 0.003419623803335463, 0.0016665915387490927, 0.039135522015175415,
    0.007469145083929706, 0.11148672728361061, 0.024490383884625218, 0.004060903744456969,
    0.0037557220086462703, 0.0030178074144481, 0.00521430362260517, 0.0033666074502826473,
    0.0016407534318418429, 0.038528781984286914, 0.002501850219638182, 0.001470761870819769,
    0.024110695675308196, 0.003997945267439807, 0.16094988544462538, 0.00873231529473849,
    0.0051334633379191835, 0.006800733989568743, 0.004747677475763454, 0.026480418782675156,
    0.005053876365679327, 0.0014479598215054713, 0.02373689398606263, 0.09993605645374153,
    0.003640170590234217, 0.008596933294477877, 0.005053876365679327, 0.006695298381752003,
    0.006695298381752003, 0.2695403352159059, 0.00497552327507714, 0.0014255112851991236,
    0.02336888755485377, 0.0038749414228200774, 0.0017465729366461034, 0.02487605131321636,
};
const std::vector<std::vector<double>> kRefMergedPlain{
    {0.27470685454135363, 1.1388273532189321, -0.39950232241681277, 0.49006341402635545, -0.9293102300833846, -0.09263990571912954},
    {-0.39755071383911417, 0.6774383995224296, -1.1408533417174638, -0.0904109671643874, 0.9845781461971563, -0.8582603338512044},
    {-0.19322080789132198, 0.8310379952169563, -0.9094103939534767, 0.09942456442532896, 1.1236833675336073, -0.6167650216368257},
    {0.0698451535083417, 1.1764173888693512, -0.7342348477518471, 0.39147715401241723, 0.8578910932356502, -0.41260284724777163},
    {0.04853681414754889, -0.13553829476905052, 0.08079823126442469, -0.031569532042282245, -0.07352950189288474, 0.13313674665673494},
};
const std::vector<std::vector<double>> kRefMergedPlus{
    {0.27470685454135363, 1.1388273532189321, -0.39950232241681277, 0.49006341402635545, -0.9293102300833846, -0.09263990571912954},
    {-0.39755071383911417, 0.6774383995224296, -1.1408533417174638, -0.0904109671643874, 0.9845781461971563, -0.8582603338512044},
    {-0.19322080789132198, 0.8310379952169563, -0.9094103939534767, 0.09942456442532896, 1.1236833675336073, -0.6167650216368257},
    {0.0698451535083417, 1.1764173888693512, -0.7342348477518471, 0.39147715401241723, 0.8578910932356502, -0.41260284724777163},
    {-1.102108622805667, -0.3010005126118279, 0.7052514802404481, -0.9633768128608406, -0.013499943225463334, 0.9927520496268127},
    {-0.9592384231650807, -0.18231278586250838, 0.79888271882438, -0.8276656098389367, 0.09802878690517401, 1.0792242915920625},
    {-0.8182415112500117, -0.07587656392504429, 0.930712887927249, -0.6794132844480376, 0.2117204223184681, 1.2183098741707614},
    {-0.737915891511316, 0.08862667767870391, 1.0105689189686586, -0.4904051562279899, 0.35203874661869095, -1.1010190120913543},
    {-0.6277801880217923, 0.2506219454471644, 1.124958453870743, -0.37922642796091033, 0.5025612948103942, -0.9981021967660272},
    {-0.5030702779812836, 0.37548059810356743, -1.1215410914137627, -0.2544740200301461, 0.6274624453570529, -0.8734560335609017},
    {-0.3196524389114193, 0.7082087651190866, -1.0251441636859218, -0.025977809188417623, 1.0018833948420882, -0.7560162727713874},
    {-0.1263953467096113, 0.7554867924610698, -0.7630933889816475, 0.12828387019920318, 0.9962284224038223, -0.508414172072833},
    {0.2048080093750812, 1.2911195535645013, -0.6013539265499177, 0.5272727837450808, -1.4075158624749164, -0.2788891521799181},
    {0.4368995196132129, -0.869093820560987, -0.2858486050514285, 0.6949375228711986, -1.1597082562280963, 0.06369525541923865},
    {0.11828846483535292, -0.11607316289477243, 0.03812645178779873, 0.007957082429435032, -0.07228644986620496, 0.07130401297396091},
};

// The reference inputs: 40 patches, key width 16, feature width 6 (integer formulas, exact in fp32).
struct ref_inputs {
  static constexpr index_t n = 40, dim = 16, df = 6;
  std::vector<float> q, keys, feats;
  ref_inputs() : q(dim), keys((n + 1) * dim), feats(n * df) {
    for (index_t c = 0; c < dim; ++c) q[c] = static_cast<float>(((c * 5) % 7 - 3) / 2.0);
    for (index_t j = 0; j <= n; ++j) {
      for (index_t c = 0; c < dim; ++c) {
        double v = static_cast<double>((j * 7 + c * 3 + (j * c) % 5) % 23 - 11) / 8.0;
        if ((j * j) % 5 == 0 && c % 4 == 1) v += 1.5;
        keys[j * dim + c] = static_cast<float>(v);
      }
    }
    const std::pair<index_t, double> spikes[] = {{6, 1.0}, {19, 0.875}, {28, 0.75}, {34, 0.625}};
    for (auto [row, w] : spikes) {
      for (index_t c = 0; c < dim; ++c) keys[row * dim + c] += static_cast<float>(w * q[c]);
    }
    for (index_t j = 0; j < n; ++j) {
      for (index_t c = 0; c < df; ++c) feats[j * df + c] = static_cast<float>(((j * 13 + c * 7) % 19 - 9) / 8.0);
    }
  }
};

// Random last-layer projections with a few keys pulled towards the CLS query (attention spikes).
struct random_inputs {
  index_t n, dim, df;
  std::vector<float> q, keys, feats;
  random_inputs(index_t n_, index_t dim_, index_t df_, unsigned seed) : n(n_), dim(dim_), df(df_) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    q.resize((n + 1) * dim);
    keys.resize((n + 1) * dim);
    feats.resize(n * df);
    for (auto& v : q) v = normal(gen);
    for (auto& v : keys) v = normal(gen);
    for (auto& v : feats) v = normal(gen);
    std::uniform_int_distribution<index_t> pick(1, n);
    for (int s = 0; s < 6; ++s) {
      const index_t row = pick(gen);
      const float w = 1.0f + 0.25f * static_cast<float>(s);
      for (index_t c = 0; c < dim; ++c) keys[row * dim + c] += w * q[c];
    }
  }
  matrix_view<const float> Q() const { return cmat(q, n + 1, dim); }
  matrix_view<const float> K() const { return cmat(keys, n + 1, dim); }
  matrix_view<const float> F() const { return cmat(feats, n, df); }
};

struct run_out {
  pm::result res;
  std::vector<token_index> idx;
  std::vector<float> merged;
};

template <class Policy>
run_out run_qk(const Policy& policy, const random_inputs& in, const pm::config& cfg) {
  run_out o;
  o.idx.assign(static_cast<std::size_t>(in.n), -1);
  const index_t rows = pm::max_rows(in.n, cfg);
  o.merged.assign(static_cast<std::size_t>(rows * in.df), -7.0f);
  o.res = pm::select(policy, in.Q(), in.K(), in.F(), cfg, o.idx, mmat(o.merged, rows, in.df));
  return o;
}

}  // namespace

// ---- the CLS attention row ------------------------------------------------------------------

TEST(PruMergeAttention, HandSoftmaxOfTheClsRow) {
  // n = 8, D = 4, q0 = (2, 0, 0, 0), scale 1/sqrt(4): logit_j = key_j[0]; the other key
  // components meet zeros in q.
  const std::vector<double> x{0, 1, 2, 0.5, -1, 3, 0, 0.25, -0.5};  // CLS, then 8 patches
  std::vector<float> keys;
  for (std::size_t j = 0; j < x.size(); ++j) {
    keys.insert(keys.end(), {static_cast<float>(x[j]), static_cast<float>(j), -1.0f, 5.0f});
  }
  std::vector<float> q(9 * 4, 0.0f);
  q[0] = 2.0f;
  for (std::size_t i = 4; i < q.size(); ++i) q[i] = 9.0f;  // rows 1..8 are never read
  double z = 0;
  for (double v : x) z += std::exp(v);
  std::vector<float> a(8);
  pm::cls_attention(seq, cmat(q, 9, 4), cmat(keys, 9, 4), 0.0, vector_view<float>(a.data(), {8}));
  for (int j = 0; j < 8; ++j) EXPECT_NEAR(a[j], std::exp(x[j + 1]) / z, 1e-7) << j;
  // The CLS query alone (one row) gives the same bits.
  std::vector<float> a1(8);
  pm::cls_attention(seq, cmat(q, 1, 4), cmat(keys, 9, 4), 0.0, vector_view<float>(a1.data(), {8}));
  EXPECT_EQ(a, a1);
  // An explicit scale: 1.0 doubles every logit.
  double z2 = 0;
  for (double v : x) z2 += std::exp(2 * v);
  pm::cls_attention(seq, cmat(q, 1, 4), cmat(keys, 9, 4), 1.0, vector_view<float>(a1.data(), {8}));
  for (int j = 0; j < 8; ++j) EXPECT_NEAR(a1[j], std::exp(2 * x[j + 1]) / z2, 1e-7) << j;
}

// The softmax's exp is the library's own (tokensel/detail/expf.hpp), so CPU results do not depend on
// the C library. Expected values: float(math.exp(x)) in Python (correctly rounded here).
TEST(PruMergeAttention, PortableExpHandValues) {
  using tokensel::detail::expf_nonpositive;
  EXPECT_EQ(expf_nonpositive(0.0f), 1.0f);
  EXPECT_EQ(expf_nonpositive(-0.0f), 1.0f);
  EXPECT_EQ(expf_nonpositive(-1.0f), 0x1.78b564p-2f);
  EXPECT_EQ(expf_nonpositive(-0.5f), 0x1.368b3p-1f);
  EXPECT_EQ(expf_nonpositive(-10.0f), 0x1.7cd79cp-15f);
  EXPECT_EQ(expf_nonpositive(-87.0f), 0x1.666d0ep-126f);  // subnormal boundary region
  EXPECT_EQ(expf_nonpositive(-103.5f), 0x1p-149f);        // smallest subnormal
  EXPECT_EQ(expf_nonpositive(-0x1.ad7f2ap-24f), 0x1.fffffcp-1f);
  EXPECT_EQ(expf_nonpositive(-0x1p-30f), 1.0f);
  EXPECT_EQ(expf_nonpositive(-200.0f), 0.0f);
  EXPECT_EQ(expf_nonpositive(-std::numeric_limits<float>::infinity()), 0.0f);
}

// On x86-64 glibc with FMA (the variant glibc selects there) it is std::exp bit for bit. A sample of
// every 997th float in [-104, 0] here; the full sweep of all 1.12e9 floats was run once (docs/prumerge.md).
TEST(PruMergeAttention, PortableExpIsGlibcExpfWithFma) {
#if defined(__GLIBC__) && defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (!__builtin_cpu_supports("fma") || !__builtin_cpu_supports("avx2")) GTEST_SKIP() << "glibc picks its non-FMA expf here";
  const float lo = -104.0f;
  std::uint32_t end;
  std::memcpy(&end, &lo, 4);
  std::size_t checked = 0;
  for (std::uint32_t u = 0x80000000u; u <= end; u += 997u) {
    float x;
    std::memcpy(&x, &u, 4);
    const float a = tokensel::detail::expf_nonpositive(x), b = std::exp(x);
    ASSERT_EQ(std::memcmp(&a, &b, 4), 0) << std::hexfloat << x << ": " << a << " vs " << b;
    ++checked;
  }
  EXPECT_GT(checked, 1'000'000u);
#else
  GTEST_SKIP() << "not x86-64 glibc: std::exp rounds differently; the library does not use it";
#endif
}

TEST(PruMergeAttention, MatchesFloat64Reference) {
  const ref_inputs in;
  std::vector<float> a(in.n);
  pm::cls_attention(seq, cmat(in.q, 1, in.dim), cmat(in.keys, in.n + 1, in.dim), 0.0,
                    vector_view<float>(a.data(), {in.n}));
  ASSERT_EQ(kRefAttention.size(), 40u);
  for (index_t j = 0; j < in.n; ++j) EXPECT_NEAR(a[j], kRefAttention[j], 1e-6 * kRefAttention[j]) << j;
}

// ---- Kc, order, the PruMerge+ grid -----------------------------------------------------------

TEST(PruMergeSelect, HandOutlierCountAndOrder) {
  // Units of 1/64. Sorted: 2 2 2 2 4 4 16 32 -> Q1 = 2 (position 1.75), Q3 = 4 + 12 * 0.25 = 7,
  // fence = 7 + 1.5 * 5 = 14.5: two outliers, 32 (index 6) and 16 (index 1).
  const auto a = scaled({2, 16, 2, 2, 4, 2, 32, 4}, 64);
  std::vector<token_index> out(8, -1);
  pm::result r = pm::select_from_attention(seq, cvec(a), {.mode = pm::mode::parity}, out);
  EXPECT_EQ(r.count, 2);
  EXPECT_EQ(r.outliers, 2);
  EXPECT_EQ(r.iqr.q1, static_cast<double>(2.0f / 64));
  EXPECT_EQ(r.iqr.q3, 7.0 / 64);
  EXPECT_EQ(r.iqr.upper_fence, 14.5 / 64);
  EXPECT_EQ(first(out, 2), (std::vector<token_index>{6, 1}));  // descending attention
  EXPECT_FALSE(r.extra_token);                                   // selection only
  r = pm::select_from_attention(seq, cvec(a), {}, out);          // fixed mode
  EXPECT_EQ(first(out, 2), (std::vector<token_index>{1, 6}));
}

TEST(PruMergeSelect, ValueOnTheFenceIsNotAnOutlier) {
  // Q3 = 4 + (12 - 4) * 0.25 = 6, IQR = 4, fence = 12: the 12 at index 1 stays out.
  const auto a = scaled({2, 12, 2, 2, 4, 2, 32, 4}, 64);
  std::vector<token_index> out(8, -1);
  const pm::result r = pm::select_from_attention(seq, cvec(a), {}, out);
  EXPECT_EQ(r.iqr.upper_fence, 12.0 / 64);
  EXPECT_EQ(r.count, 1);
  EXPECT_EQ(out[0], 6);
}

TEST(PruMergeSelect, EqualAttentionTiesGoToTheLowerIndex) {
  const auto a = scaled({2, 16, 2, 2, 16, 2, 2, 2}, 64);  // fence = 2: both 16s are outliers
  std::vector<token_index> out(8, -1);
  const pm::result r = pm::select_from_attention(seq, cvec(a), {.mode = pm::mode::parity}, out);
  EXPECT_EQ(r.count, 2);
  EXPECT_EQ(first(out, 2), (std::vector<token_index>{1, 4}));
}

TEST(PruMergePlus, HandGrid) {
  // n = 24, spikes at 4 and 13, Kc = 2 -> stride floor(floor(24 / 2) / 3) = 4: grid 0, 4, ..., 20
  // (indices up to n - 2 = 22), 4 already kept.
  std::vector<float> a(24, 2.0f / 256);
  a[4] = 40.0f / 256;
  a[13] = 30.0f / 256;
  std::vector<token_index> out(24, -1);
  pm::result r = pm::select_from_attention(seq, cvec(a), {.mode = pm::mode::parity, .plus = true}, out);
  EXPECT_EQ(r.outliers, 2);
  EXPECT_EQ(r.stride, 4);
  EXPECT_EQ(r.grid, 5);
  EXPECT_EQ(r.count, 7);
  EXPECT_EQ(first(out, 7), (std::vector<token_index>{4, 13, 0, 8, 12, 16, 20}));
  r = pm::select_from_attention(seq, cvec(a), {.mode = pm::mode::fixed, .plus = true}, out);
  EXPECT_EQ(first(out, 7), (std::vector<token_index>{0, 4, 8, 12, 13, 16, 20}));
  EXPECT_EQ(pm::grid_stride(24, 2), 4);
  EXPECT_EQ(pm::grid_stride(576, 40), 4);   // floor(14 / 3)
  EXPECT_EQ(pm::grid_stride(576, 144), 1);  // floor(4 / 3)
  EXPECT_EQ(pm::grid_stride(10, 20), 1);    // floor(0 / 3) clamped to 1
}

TEST(PruMergePlus, StrideClampedToOneAndZeroOutliersFallBack) {
  // n = 8, Kc = 2: floor(floor(8 / 2) / 3) = 1, grid 0..6 minus the kept 1 and 6.
  const auto a = scaled({2, 16, 2, 2, 4, 2, 32, 4}, 64);
  std::vector<token_index> out(8, -1);
  pm::result r = pm::select_from_attention(seq, cvec(a), {.mode = pm::mode::parity, .plus = true}, out);
  EXPECT_EQ(r.stride, 1);
  EXPECT_EQ(r.count, 7);
  EXPECT_EQ(first(out, 7), (std::vector<token_index>{6, 1, 0, 2, 3, 4, 5}));
  // All equal: no outlier, no grid (plain PruMerge).
  const std::vector<float> flat(8, 0.125f);
  r = pm::select_from_attention(seq, cvec(flat), {.plus = true}, out);
  EXPECT_EQ(r.count, 0);
  EXPECT_EQ(r.stride, 0);
  EXPECT_EQ(r.grid, 0);
}

// ---- the merge ------------------------------------------------------------------------------

namespace {
// n = 8 patches; keys in 2-D; x_j = (j + 1, -2 (j + 1)); attention in units of 1/64.
struct hand_merge {
  std::vector<float> a = scaled({2, 2, 32, 2, 4, 2, 16, 4}, 64);
  std::vector<float> keys{1, 0, 4, 1, 1, 1, 0, 1, -1, 2, -1, 0, -1, 3, 3, 2};
  std::vector<float> x;
  hand_merge() {
    for (int j = 0; j < 8; ++j) x.insert(x.end(), {static_cast<float>(j + 1), -2.0f * static_cast<float>(j + 1)});
  }
};
}  // namespace

TEST(PruMergeMerge, HandSums) {
  // Kc = 2: indices 2 (32/64) and 6 (16/64). With 2 neighbours:
  //   nn(2): cos to (1,1) is 0.981 for (3,2) = 7, 0.857 for (4,1) = 1 -> y2 = x2 + a7 x7 + a1 x1
  //          = (3, -6) + 4/64 (8, -16) + 2/64 (2, -4) = (3.5625, -7.125)
  //   nn(6): cos to (-1,3) is 0.990 for (-1,2) = 4, 0.949 for (0,1) = 3 -> y6 = x6 + a4 x4 + a3 x3
  //          = (7, -14) + 4/64 (5, -10) + 2/64 (4, -8) = (7.4375, -14.875)
  //   extra = sum over 0, 1, 3, 4, 5, 7 of a_j x_j = (1.21875, -2.4375)
  const hand_merge h;
  std::vector<token_index> out(8, -1);
  std::vector<float> merged(9 * 2, -99.0f);
  const pm::config cfg{.mode = pm::mode::parity, .neighbours = 2};
  const pm::result r = pm::select_from_attention(seq, cvec(h.a), cmat(h.keys, 8, 2), cmat(h.x, 8, 2), cfg, out,
                                                 mmat(merged, 9, 2));
  EXPECT_EQ(r.count, 2);
  EXPECT_EQ(r.neighbours, 2);
  EXPECT_TRUE(r.extra_token);
  EXPECT_EQ(r.rows(), 3);
  EXPECT_EQ(first(out, 2), (std::vector<token_index>{2, 6}));
  const std::vector<float> want{3.5625f, -7.125f, 7.4375f, -14.875f, 1.21875f, -2.4375f};
  EXPECT_EQ(std::vector<float>(merged.begin(), merged.begin() + 6), want);
  for (std::size_t i = 6; i < merged.size(); ++i) EXPECT_EQ(merged[i], -99.0f);  // untouched
}

TEST(PruMergeMerge, HalfOutputNoMergeAndNoNeighbours) {
  const hand_merge h;
  std::vector<token_index> out(8, -1);
  std::vector<Eigen::half> mh(3 * 2);
  pm::result r = pm::select_from_attention(seq, cvec(h.a), cmat(h.keys, 8, 2), cmat(h.x, 8, 2),
                                           {.mode = pm::mode::parity, .neighbours = 2}, out, mmat(mh, 3, 2));
  EXPECT_EQ(static_cast<float>(mh[2]), 7.4375f);
  EXPECT_EQ(static_cast<float>(mh[5]), -2.4375f);
  // merge off: the kept rows unchanged, no extra row (keys are not read).
  std::vector<float> m(3 * 2, -99.0f);
  r = pm::select_from_attention(seq, cvec(h.a), matrix_view<const float>(), cmat(h.x, 8, 2), {.merge = false}, out,
                                mmat(m, 3, 2));
  EXPECT_FALSE(r.extra_token);
  EXPECT_EQ(r.rows(), 2);
  EXPECT_EQ(m, (std::vector<float>{3, -6, 7, -14, -99, -99}));
  // neighbours = 0: y_i = x_i, and the extra row is still the not-kept sum.
  r = pm::select_from_attention(seq, cvec(h.a), cmat(h.keys, 8, 2), cmat(h.x, 8, 2), {.neighbours = 0}, out,
                                mmat(m, 3, 2));
  EXPECT_EQ(m, (std::vector<float>{3, -6, 7, -14, 1.21875f, -2.4375f}));
  // extra_token off.
  std::fill(m.begin(), m.end(), -99.0f);
  r = pm::select_from_attention(seq, cvec(h.a), cmat(h.keys, 8, 2), cmat(h.x, 8, 2),
                                {.neighbours = 2, .extra_token = false}, out, mmat(m, 3, 2));
  EXPECT_EQ(r.rows(), 2);
  EXPECT_EQ(m, (std::vector<float>{3.5625f, -7.125f, 7.4375f, -14.875f, -99, -99}));
}

TEST(PruMergeMerge, CosineTiesGoToTheLowerIndexAndSelfIsExcluded) {
  // Identical keys: every cosine ties, so the nearest "other" tokens are the lowest indices != i.
  const auto a = scaled({2, 2, 2, 16, 2, 2}, 64);  // Kc = 1: index 3
  const std::vector<float> keys(6 * 3, 0.5f);
  std::vector<float> x;
  for (int j = 0; j < 6; ++j) x.insert(x.end(), {static_cast<float>(1 << j)});
  std::vector<token_index> out(6, -1);
  std::vector<float> m(7, -99.0f);
  pm::result r = pm::select_from_attention(seq, cvec(a), cmat(keys, 6, 3), cmat(x, 6, 1), {.neighbours = 2}, out,
                                           mmat(m, 7, 1));
  ASSERT_EQ(r.count, 1);
  EXPECT_EQ(out[0], 3);
  EXPECT_EQ(m[0], 8.0f + (2.0f / 64) * (1.0f + 2.0f));  // neighbours 0 and 1
  // More neighbours than other tokens: all 5 others (the token itself never).
  r = pm::select_from_attention(seq, cvec(a), cmat(keys, 6, 3), cmat(x, 6, 1), {.neighbours = 10}, out,
                                mmat(m, 7, 1));
  EXPECT_EQ(r.neighbours, 5);
  EXPECT_EQ(m[0], 8.0f + (2.0f / 64) * (1 + 2 + 4 + 16 + 32));
  EXPECT_EQ(m[1], (2.0f / 64) * (1 + 2 + 4 + 16 + 32));  // extra row
}

// The neighbour search keys only the patches at or above a block-maxima threshold: against a full
// sort by the rule (higher cosine, then lower index; self excluded), with coarse values (many
// ties, -0 next to +0), m from 1 to n - 1 (blocks of one patch and more, a short last row of
// blocks), self in the first, a middle and the last row.
TEST(PruMergeMerge, NearestNeighboursEqualFullSortReference) {
  std::mt19937 rng(11);
  for (index_t n : {2, 3, 7, 64, 577}) {
    std::vector<float> cosine(static_cast<std::size_t>(n));
    std::vector<std::uint64_t> keys(static_cast<std::size_t>(n));
    std::vector<float> maxima(static_cast<std::size_t>(n));
    std::vector<token_index> got(static_cast<std::size_t>(n)), want;
    for (int trial = 0; trial < 6; ++trial) {
      std::uniform_int_distribution<int> level(-4, trial % 2 == 0 ? 4 : 400);
      for (auto& c : cosine) c = static_cast<float>(level(rng)) / 4.0f;
      for (index_t j = 0; j < n; j += 5) cosine[static_cast<std::size_t>(j)] = j % 2 == 0 ? -0.0f : 0.0f;
      for (index_t m = 1; m < n; m += (n > 100 ? 37 : 1)) {
        for (index_t i : {index_t{0}, n / 2, n - 1}) {
          want.clear();
          for (index_t j = 0; j < n; ++j) {
            if (j != i) want.push_back(static_cast<token_index>(j));
          }
          std::stable_sort(want.begin(), want.end(), [&](token_index a, token_index b) { return cosine[a] > cosine[b]; });
          want.resize(static_cast<std::size_t>(m));
          std::sort(want.begin(), want.end());
          pm::detail::nearest_ascending(cosine.data(), n, i, m, got, keys, maxima);
          ASSERT_EQ(std::vector<token_index>(got.begin(), got.begin() + m), want) << "n " << n << " m " << m << " i " << i;
        }
      }
    }
  }
}

TEST(PruMergeReference, PlainAndPlusMatchFloat64) {
  const ref_inputs in;
  for (bool plus : {false, true}) {
    SCOPED_TRACE(plus ? "plus" : "plain");
    const pm::config cfg{.mode = pm::mode::parity, .plus = plus, .neighbours = 5};
    const auto& want = plus ? kRefMergedPlus : kRefMergedPlain;
    const index_t rows = pm::max_rows(in.n, cfg);
    std::vector<token_index> out(in.n, -1);
    std::vector<float> merged(rows * in.df);
    const pm::result r = pm::select(seq, cmat(in.q, 1, in.dim), cmat(in.keys, in.n + 1, in.dim),
                                    cmat(in.feats, in.n, in.df), cfg, out, mmat(merged, rows, in.df));
    EXPECT_EQ(r.outliers, 4);
    EXPECT_NEAR(r.iqr.upper_fence, 0.05419831018067076, 1e-8);
    const std::vector<token_index> want_idx =
        plus ? std::vector<token_index>{33, 18, 5, 27, 0, 3, 6, 9, 12, 15, 21, 24, 30, 36}
             : std::vector<token_index>{33, 18, 5, 27};
    ASSERT_EQ(r.count, static_cast<index_t>(want_idx.size()));
    EXPECT_EQ(first(out, r.count), want_idx);
    EXPECT_EQ(r.stride, plus ? 3 : 0);
    ASSERT_EQ(r.rows(), static_cast<index_t>(want.size()));
    for (index_t i = 0; i < r.rows(); ++i) {
      for (index_t c = 0; c < in.df; ++c) EXPECT_NEAR(merged[i * in.df + c], want[i][c], 2e-6) << i << "," << c;
    }
    // Fixed mode: the same rows, by ascending index, extra row last.
    std::vector<token_index> fout(in.n, -1);
    std::vector<float> fm(rows * in.df);
    pm::config fixed = cfg;
    fixed.mode = pm::mode::fixed;
    (void)pm::select(seq, cmat(in.q, 1, in.dim), cmat(in.keys, in.n + 1, in.dim), cmat(in.feats, in.n, in.df), fixed, fout,
               mmat(fm, rows, in.df));
    for (index_t i = 0; i < r.count; ++i) {
      const auto pos = std::find(out.begin(), out.begin() + r.count, fout[i]) - out.begin();
      ASSERT_LT(pos, r.count);
      if (i > 0) {
        EXPECT_LT(fout[i - 1], fout[i]);
      }
      for (index_t c = 0; c < in.df; ++c) EXPECT_EQ(fm[i * in.df + c], merged[pos * in.df + c]);
    }
    for (index_t c = 0; c < in.df; ++c) EXPECT_EQ(fm[r.count * in.df + c], merged[r.count * in.df + c]);
  }
}

// ---- properties on random inputs ------------------------------------------------------------

TEST(PruMergeProperties, CountsOrderAndCapacity) {
  for (unsigned seed = 1; seed <= 6; ++seed) {
    const random_inputs in(150, 24, 5, seed);
    for (bool plus : {false, true}) {
      const pm::config par_cfg{.mode = pm::mode::parity, .plus = plus, .neighbours = 7};
      pm::config fix_cfg = par_cfg;
      fix_cfg.mode = pm::mode::fixed;
      const run_out p = run_qk(seq, in, par_cfg);
      const run_out f = run_qk(seq, in, fix_cfg);
      ASSERT_GT(p.res.outliers, 0) << seed;
      EXPECT_LE(p.res.count, pm::max_count(in.n, par_cfg));
      EXPECT_EQ(p.res.count, f.res.count);
      EXPECT_TRUE(std::is_sorted(f.idx.begin(), f.idx.begin() + f.res.count));
      EXPECT_EQ(std::adjacent_find(f.idx.begin(), f.idx.begin() + f.res.count), f.idx.begin() + f.res.count);
      std::vector<token_index> sorted_p = first(p.idx, p.res.count);
      std::sort(sorted_p.begin(), sorted_p.end());
      EXPECT_EQ(sorted_p, first(f.idx, f.res.count));
      // Parity: the top-Kc by descending attention, then the grid ascending.
      std::vector<float> a(in.n);
      pm::cls_attention(seq, in.Q(), in.K(), 0.0, vector_view<float>(a.data(), {in.n}));
      for (index_t r = 1; r < p.res.outliers; ++r) EXPECT_GE(a[p.idx[r - 1]], a[p.idx[r]]);
      EXPECT_TRUE(std::is_sorted(p.idx.begin() + p.res.outliers, p.idx.begin() + p.res.count));
      for (index_t r = 0; r < p.res.outliers; ++r) EXPECT_GT(a[p.idx[r]], p.res.iqr.upper_fence);
      EXPECT_EQ(p.res.extra_token, true);
    }
  }
}

TEST(PruMergeProperties, SequentialEqualsThreaded) {
  for (bool plus : {false, true}) {
    const random_inputs in(300, 40, 8, 11);
    const pm::config cfg{.mode = pm::mode::parity, .plus = plus};
    const run_out s = run_qk(seq, in, cfg);
    const run_out t = run_qk(par, in, cfg);
    EXPECT_EQ(s.res.count, t.res.count);
    EXPECT_EQ(s.idx, t.idx);
    EXPECT_EQ(s.merged, t.merged);  // bit-identical
  }
}

TEST(PruMergeProperties, StridedEqualsContiguous) {
  const random_inputs in(120, 16, 6, 5);
  const pm::config cfg{.plus = true, .neighbours = 9};
  const run_out base = run_qk(seq, in, cfg);
  // Keys stored transposed (column-major), queries with padded rows, features with both strides
  // reversed through a negative row stride.
  const index_t n = in.n, dim = in.dim, df = in.df;
  std::vector<float> kt((n + 1) * dim), qp((n + 1) * (dim + 3), 0.0f), fr(n * df);
  for (index_t j = 0; j <= n; ++j) {
    for (index_t c = 0; c < dim; ++c) {
      kt[c * (n + 1) + j] = in.keys[j * dim + c];
      qp[j * (dim + 3) + c] = in.q[j * dim + c];
    }
  }
  for (index_t j = 0; j < n; ++j) {
    for (index_t c = 0; c < df; ++c) fr[(n - 1 - j) * df + c] = in.feats[j * df + c];
  }
  const matrix_view<const float> K(kt.data(), {n + 1, dim}, {1, n + 1});
  const matrix_view<const float> Q(qp.data(), {n + 1, dim}, {dim + 3, 1});
  const matrix_view<const float> F(fr.data() + (n - 1) * df, {n, df}, {-df, 1});
  const index_t rows = pm::max_rows(n, cfg);
  std::vector<token_index> idx(n, -1);
  std::vector<float> m(rows * 2 * df, -7.0f);  // merged with a column stride of 2
  const matrix_view<float> M(m.data(), {rows, df}, {2 * df, 2});
  const pm::result r = pm::select(seq, Q, K, F, cfg, idx, M);
  ASSERT_EQ(r.count, base.res.count);
  EXPECT_EQ(idx, base.idx);
  for (index_t i = 0; i < r.rows(); ++i) {
    for (index_t c = 0; c < df; ++c) EXPECT_EQ(M(i, c), base.merged[i * df + c]);
  }
}

TEST(PruMergeProperties, HalfAndBfloat16InputsSelectTheSame) {
  // Inputs rounded to each storage type first, so the fp32 run sees exactly the same values:
  // selection and merged rows must agree bit for bit.
  const random_inputs in(200, 32, 4, 21);
  auto check = [&]<class T>(T) {
    std::vector<T> qt, kt, ft;
    std::vector<float> q32, k32, f32;
    for (float v : in.q) { qt.push_back(T(v)); q32.push_back(static_cast<float>(qt.back())); }
    for (float v : in.keys) { kt.push_back(T(v)); k32.push_back(static_cast<float>(kt.back())); }
    for (float v : in.feats) { ft.push_back(T(v)); f32.push_back(static_cast<float>(ft.back())); }
    const pm::config cfg{.mode = pm::mode::parity, .plus = true};
    const index_t n = in.n, rows = pm::max_rows(n, cfg);
    std::vector<token_index> i16(n), i32(n);
    std::vector<float> m16(rows * in.df), m32(rows * in.df);
    const pm::result r16 = pm::select(seq, cmat(qt, n + 1, in.dim), cmat(kt, n + 1, in.dim), cmat(ft, n, in.df), cfg,
                                      i16, mmat(m16, rows, in.df));
    const pm::result r32 = pm::select(seq, cmat(q32, n + 1, in.dim), cmat(k32, n + 1, in.dim), cmat(f32, n, in.df),
                                      cfg, i32, mmat(m32, rows, in.df));
    ASSERT_GT(r16.outliers, 0);
    EXPECT_EQ(r16.count, r32.count);
    EXPECT_EQ(i16, i32);
    EXPECT_EQ(m16, m32);
  };
  check(Eigen::half{});
  check(Eigen::bfloat16{});
}

TEST(PruMergeProperties, WidenedSelectionPathMatchesFp32Bits) {
  // Selection only reads fp16 / bf16 keys widened in registers, several rows at a time; the CLS
  // attention must equal the fp32 run on the same values bit for bit: D = 77 leaves a tail after
  // two 32-lane steps, 11 rows end in a partial block, D = 1024 is LLaVA's width, and 37 rows of
  // D = 96 take the lane trees of 16 rows at a time (two full sets, then 5 rows).
  for (const auto& [rows, dim] : {std::pair<index_t, index_t>{11, 77}, {9, 1024}, {6, 20}, {37, 96}}) {
    std::mt19937 rng(static_cast<unsigned>(rows * 1000 + dim));
    std::normal_distribution<float> g(0.0f, 1.0f);
    std::vector<float> q(dim), k(rows * dim);
    for (float& v : q) v = g(rng);
    for (float& v : k) v = 3.0f * g(rng);
    auto check = [&]<class T>(T) {
      std::vector<T> qt, kt;
      std::vector<float> q32, k32;
      for (float v : q) { qt.push_back(T(v)); q32.push_back(static_cast<float>(qt.back())); }
      for (float v : k) { kt.push_back(T(v)); k32.push_back(static_cast<float>(kt.back())); }
      const index_t n = rows - 1;
      std::vector<float> a16(n), a32(n);
      pm::cls_attention(seq, cmat(qt, 1, dim), cmat(kt, rows, dim), 0.0, vector_view<float>(a16.data(), {n}));
      pm::cls_attention(seq, cmat(q32, 1, dim), cmat(k32, rows, dim), 0.0, vector_view<float>(a32.data(), {n}));
      for (index_t j = 0; j < n; ++j) {
        EXPECT_EQ(std::bit_cast<std::uint32_t>(a16[j]), std::bit_cast<std::uint32_t>(a32[j])) << "rows " << rows << " D " << dim << " j " << j;
      }
      std::vector<token_index> i16(n), i32(n);
      const pm::config cfg{.mode = pm::mode::parity, .plus = true};
      const pm::result r16 = pm::select(seq, cmat(qt, 1, dim), cmat(kt, rows, dim), cfg, i16);
      const pm::result r32 = pm::select(seq, cmat(q32, 1, dim), cmat(k32, rows, dim), cfg, i32);
      EXPECT_EQ(r16.count, r32.count);
      EXPECT_EQ(i16, i32);
    };
    check(Eigen::half{});
    check(Eigen::bfloat16{});
  }
}

TEST(PruMergeProperties, QkPathEqualsAttentionPath) {
  const random_inputs in(90, 20, 3, 8);
  const pm::config cfg{.plus = true, .neighbours = 4};
  const run_out base = run_qk(seq, in, cfg);
  std::vector<float> a(in.n);
  pm::cls_attention(seq, in.Q(), in.K(), 0.0, vector_view<float>(a.data(), {in.n}));
  const index_t rows = pm::max_rows(in.n, cfg);
  std::vector<token_index> idx(in.n, -1);
  std::vector<float> m(rows * in.df, -7.0f);
  const pm::result r = pm::select_from_attention(seq, cvec(a), in.K().slice(0, 1, in.n), in.F(), cfg, idx,
                                                 mmat(m, rows, in.df));
  EXPECT_EQ(r.count, base.res.count);
  EXPECT_EQ(idx, base.idx);
  EXPECT_EQ(m, base.merged);
  // Selection-only entry points agree too.
  std::vector<token_index> i2(in.n, -1), i3(in.n, -1);
  EXPECT_EQ(pm::select(seq, in.Q(), in.K(), cfg, i2).count, r.count);
  EXPECT_EQ(pm::select_from_attention(seq, cvec(a), cfg, i3).count, r.count);
  EXPECT_EQ(i2, idx);
  EXPECT_EQ(i3, idx);
}

TEST(PruMergeProperties, MaxCountBoundsEveryRow) {
  EXPECT_EQ(pm::max_count(576, {}), 144);
  EXPECT_EQ(pm::max_rows(576, {}), 145);
  EXPECT_EQ(pm::max_rows(576, {.merge = false}), 144);
  EXPECT_EQ(pm::max_count(0, {}), 0);
  EXPECT_EQ(pm::max_rows(0, {}), 0);
  EXPECT_EQ(pm::max_count(1, {}), 0);
  EXPECT_EQ(pm::max_count(8, {}), 2);
  EXPECT_EQ(pm::max_count(8, {.plus = true}), 8);
  // The bound is reached: two large values among eight.
  const std::vector<float> peak{0, 0, 0, 0, 0, 0, 9, 9};
  std::vector<token_index> out(8);
  EXPECT_EQ(pm::select_from_attention(seq, cvec(peak), {}, out).count, 2);
  std::mt19937 gen(3);
  std::exponential_distribution<float> heavy(1.0f);
  for (index_t n = 1; n <= 80; ++n) {
    std::vector<float> a(n);
    for (auto& v : a) v = std::pow(heavy(gen), 3.0f);
    out.assign(n, -1);
    for (bool plus : {false, true}) {
      const pm::result r = pm::select_from_attention(seq, cvec(a), {.plus = plus}, out);
      EXPECT_LE(r.count, pm::max_count(n, {.plus = plus})) << n;
    }
  }
}

TEST(PruMergeBatch, RaggedAndDenseEqualPerSample) {
  const random_inputs s0(100, 16, 4, 31), s1(64, 16, 4, 32), s2(130, 16, 4, 33);
  const pm::config cfg{.mode = pm::mode::parity, .plus = true, .neighbours = 6};
  const std::vector<pm::qk_input<float>> batch{{s0.Q(), s0.K()}, {s1.Q(), s1.K()}, {s2.Q(), s2.K()}};
  const std::vector<matrix_view<const float>> feats{s0.F(), s1.F(), s2.F()};
  const index_t cap = 130, rows = pm::max_rows(130, cfg);
  std::vector<token_index> idx(3 * cap, -1), counts(3);
  std::vector<float> mstore(3 * rows * 4, -7.0f);
  std::vector<matrix_view<float>> merged;
  for (int b = 0; b < 3; ++b) merged.push_back(matrix_view<float>(mstore.data() + b * rows * 4, {rows, 4}));
  std::vector<pm::result> results(3);
  const selection_batch out{tensor_view<token_index, 2>(idx.data(), {3, cap}), counts};
  pm::select(par, std::span<const pm::qk_input<float>>(batch), std::span<const matrix_view<const float>>(feats), cfg,
             out, std::span<const matrix_view<float>>(merged), std::span<pm::result>(results));
  const random_inputs* samples[] = {&s0, &s1, &s2};
  for (int b = 0; b < 3; ++b) {
    const run_out one = run_qk(seq, *samples[b], cfg);
    EXPECT_EQ(counts[b], one.res.count);
    EXPECT_EQ(results[b].count, one.res.count);
    EXPECT_EQ(std::vector<token_index>(idx.begin() + b * cap, idx.begin() + b * cap + counts[b]),
              first(one.idx, one.res.count));
    for (index_t i = 0; i < one.res.rows() * 4; ++i) EXPECT_EQ(mstore[b * rows * 4 + i], one.merged[i]);
  }
  // Selection-only ragged batch.
  std::vector<token_index> idx2(3 * cap, -1), counts2(3);
  pm::select(seq, std::span<const pm::qk_input<float>>(batch), cfg,
             selection_batch{tensor_view<token_index, 2>(idx2.data(), {3, cap}), counts2});
  EXPECT_EQ(counts2, counts);
  // Dense batch of two same-size samples.
  const random_inputs d0(50, 8, 3, 41), d1(50, 8, 3, 42);
  std::vector<float> q, k, f;
  for (const random_inputs* s : {&d0, &d1}) {
    q.insert(q.end(), s->q.begin(), s->q.end());
    k.insert(k.end(), s->keys.begin(), s->keys.end());
    f.insert(f.end(), s->feats.begin(), s->feats.end());
  }
  const index_t drows = pm::max_rows(50, cfg);
  std::vector<float> dm(2 * drows * 3, -7.0f);
  std::vector<token_index> didx(2 * 50, -1), dcounts(2);
  pm::select(par, tensor_view<const float, 3>(q.data(), {2, 51, 8}), tensor_view<const float, 3>(k.data(), {2, 51, 8}),
             tensor_view<const float, 3>(f.data(), {2, 50, 3}), cfg,
             selection_batch{tensor_view<token_index, 2>(didx.data(), {2, 50}), dcounts},
             tensor_view<float, 3>(dm.data(), {2, drows, 3}));
  std::vector<float> attn(2 * 50);
  for (int b = 0; b < 2; ++b) {
    const random_inputs& s = b == 0 ? d0 : d1;
    const run_out one = run_qk(seq, s, cfg);
    EXPECT_EQ(dcounts[b], one.res.count);
    EXPECT_EQ(std::vector<token_index>(didx.begin() + b * 50, didx.begin() + b * 50 + dcounts[b]),
              first(one.idx, one.res.count));
    for (index_t i = 0; i < one.res.rows() * 3; ++i) EXPECT_EQ(dm[b * drows * 3 + i], one.merged[i]);
    pm::cls_attention(seq, s.Q(), s.K(), 0.0, vector_view<float>(attn.data() + b * 50, {50}));
  }
  // Dense batch of attention rows.
  std::vector<token_index> aidx(2 * 50, -1), acounts(2);
  pm::select_from_attention(par, score_view<float>(attn.data(), {2, 50}), cfg,
                            selection_batch{tensor_view<token_index, 2>(aidx.data(), {2, 50}), acounts});
  EXPECT_EQ(acounts, dcounts);
  EXPECT_EQ(aidx, didx);
  // Empty batch.
  pm::select(seq, std::span<const pm::qk_input<float>>(), cfg,
             selection_batch{tensor_view<token_index, 2>(nullptr, {0, 0}), std::span<token_index>()});
}

// ---- edge cases and bad input ---------------------------------------------------------------

TEST(PruMergeEdge, NoPatchesAndOnePatch) {
  // n = 0: keys hold the CLS row only.
  const std::vector<float> q{1, 2}, k{3, 4};
  std::vector<token_index> out;
  std::vector<float> m(2, -7.0f);
  pm::result r = pm::select(seq, cmat(q, 1, 2), cmat(k, 1, 2), matrix_view<const float>(nullptr, {0, 2}), {}, out,
                            mmat(m, 1, 2));
  EXPECT_EQ(r.count, 0);
  EXPECT_EQ(r.rows(), 0);
  EXPECT_EQ(m, (std::vector<float>{-7, -7}));
  // n = 1: no outlier; the extra row is a_0 x_0.
  const std::vector<float> k1{0, 0, 0, 0}, x{2, -4};  // logits 0 and 0: a_0 = 1/2
  r = pm::select(seq, cmat(q, 1, 2), cmat(k1, 2, 2), cmat(x, 1, 2), {}, out, mmat(m, 1, 2));
  EXPECT_EQ(r.count, 0);
  EXPECT_TRUE(r.extra_token);
  EXPECT_EQ(m, (std::vector<float>{1, -2}));
}

TEST(PruMergeErrors, BadConfig) {
  std::vector<token_index> out(8);
  const auto a = scaled({2, 16, 2, 2, 4, 2, 32, 4}, 64);
  expect_error([&] { (void)pm::select_from_attention(seq, cvec(a), {.neighbours = -1}, out); }, errc::invalid_argument,
               "prumerge.neighbours = -1");
  expect_error([&] { (void)pm::select_from_attention(seq, cvec(a), {.iqr_multiplier = -0.5}, out); },
               errc::invalid_argument, "prumerge.iqr_multiplier = -0.5");
  expect_error([&] { pm::validate({.iqr_multiplier = std::nan("")}); }, errc::invalid_argument, "prumerge.iqr_multiplier");
  expect_error([&] { pm::validate({.scale = -1.0}); }, errc::invalid_argument, "prumerge.scale = -1");
  expect_error([&] { pm::validate({.scale = std::numeric_limits<double>::infinity()}); }, errc::invalid_argument,
               "prumerge.scale");
  expect_error([&] { pm::max_count(-1, {}); }, errc::invalid_argument, "prumerge.n = -1");
  expect_error([&] { pm::grid_stride(576, 0); }, errc::invalid_argument, "prumerge.outliers = 0");
  std::vector<token_index> small(1);
  expect_error([&] { (void)pm::select_from_attention(seq, cvec(a), {}, small); }, errc::shape_mismatch, "prumerge.out.size() = 1");
}

TEST(PruMergeErrors, BadShapes) {
  const random_inputs in(20, 4, 3, 2);
  std::vector<token_index> out(20);
  std::vector<float> m(21 * 3);
  const auto M = mmat(m, 21, 3);
  expect_error([&] { (void)pm::select(seq, cmat(in.q, 21, 3), in.K(), in.F(), {}, out, M); }, errc::shape_mismatch,
               "prumerge.queries.extent(1) = 3");
  expect_error([&] { (void)pm::select(seq, cmat(in.q, 5, 4), in.K(), in.F(), {}, out, M); }, errc::shape_mismatch,
               "prumerge.queries.extent(0) = 5");
  expect_error([&] { (void)pm::select(seq, in.Q(), in.K(), cmat(in.feats, 19, 3), {}, out, M); }, errc::shape_mismatch,
               "prumerge.features.extent(0) = 19");
  expect_error([&] { (void)pm::select(seq, in.Q(), in.K(), in.F(), {}, out, mmat(m, 10, 2)); }, errc::shape_mismatch,
               "prumerge.merged.extent(1) = 2");
  expect_error([&] { (void)pm::select(seq, in.Q(), in.K(), in.F(), {}, out, mmat(m, 0, 3)); }, errc::shape_mismatch,
               "prumerge.merged.extent(0) = 0");
  expect_error([&] { (void)pm::select(seq, in.Q(), matrix_view<const float>(nullptr, {0, 4}), {}, out); },
               errc::shape_mismatch, "prumerge.keys.extent(0) = 0");
  std::vector<float> a(20, 0.05f);
  expect_error([&] { (void)pm::select_from_attention(seq, cvec(a), cmat(in.keys, 19, 4), in.F(), {}, out, M); },
               errc::shape_mismatch, "prumerge.patch_keys.extent(0) = 19");
  std::vector<float> ca(19);
  expect_error([&] { pm::cls_attention(seq, in.Q(), in.K(), 0.0, vector_view<float>(ca.data(), {19})); },
               errc::shape_mismatch, "prumerge.cls_attention.out.extent(0) = 19");
}

TEST(PruMergeErrors, NonFinite) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<token_index> out(20);
  std::vector<float> m(21 * 3);
  {
    random_inputs in(20, 4, 3, 2);
    in.keys[3 * 4 + 1] = nan;
    expect_error([&] { (void)pm::select(seq, in.Q(), in.K(), {}, out); }, errc::non_finite, "prumerge.keys[3, 1]");
  }
  {
    random_inputs in(20, 4, 3, 2);
    in.q[2] = inf;
    expect_error([&] { (void)pm::select(seq, in.Q(), in.K(), {}, out); }, errc::non_finite, "prumerge.queries[0, 2]");
    in.q[2] = 0.0f;
    in.q[4 * 5] = nan;  // a query row other than CLS is never read
    EXPECT_NO_THROW((void)pm::select(seq, in.Q(), in.K(), {}, out));
  }
  {
    random_inputs in(20, 4, 3, 2);
    in.feats[7 * 3 + 2] = nan;
    expect_error([&] { (void)pm::select(seq, in.Q(), in.K(), in.F(), {}, out, mmat(m, 21, 3)); }, errc::non_finite,
                 "prumerge.features[7, 2]");
  }
  {
    random_inputs in(20, 4, 3, 2);
    for (auto& v : in.keys) v = 1e30f;  // Q K^T overflows fp32
    for (auto& v : in.q) v = 1e30f;
    expect_error([&] { (void)pm::select(seq, in.Q(), in.K(), {}, out); }, errc::non_finite, "prumerge.logits");
  }
  std::vector<float> a(20, 0.05f);
  a[2] = nan;
  expect_error([&] { (void)pm::select_from_attention(seq, cvec(a), {}, out); }, errc::non_finite, "prumerge.attention[2]");
}
