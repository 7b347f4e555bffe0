// The bulk fp16/bf16 widening equals the element-wise conversion on every bit pattern. This file
// is compiled with -mavx -mf16c where the compiler allows it (see CMakeLists.txt), so the
// vector path is the one tested; it skips on a CPU without F16C.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "tokensel/detail/widen.hpp"

using namespace tokensel;

namespace {
template <class T>
void check_all_patterns() {
  std::vector<T> src(65536 + 5);
  for (std::size_t i = 0; i < src.size(); ++i) {
    const auto bits = static_cast<std::uint16_t>(i * 40503u);  // every pattern, shuffled
    std::memcpy(static_cast<void*>(&src[i]), &bits, sizeof bits);
  }
  std::vector<float> out(src.size(), -1.0f);
  detail::widen(src.data(), static_cast<index_t>(src.size()), out.data());
  for (std::size_t i = 0; i < src.size(); ++i) {
    const float want = to_float(src[i]);
    std::uint32_t a, b;
    std::memcpy(&a, &out[i], sizeof a);
    std::memcpy(&b, &want, sizeof b);
    if (want != want) {
      EXPECT_NE(out[i], out[i]) << i;  // NaN stays NaN
    } else {
      ASSERT_EQ(a, b) << "pattern index " << i;
    }
  }
}
}  // namespace

TEST(Widen, HalfMatchesScalarOnEveryPattern) {
#if defined(__F16C__) && defined(__AVX__) && defined(__GNUC__)
  if (!__builtin_cpu_supports("f16c") || !__builtin_cpu_supports("avx")) GTEST_SKIP() << "CPU without F16C/AVX";
#endif
  check_all_patterns<Eigen::half>();
}

TEST(Widen, BFloat16MatchesScalarOnEveryPattern) { check_all_patterns<Eigen::bfloat16>(); }

// CMake compiles this file with -mavx -mf16c whenever the compiler accepts them and says so through
// TOKENSEL_TEST_F16C_FLAGS (1 or 0): the vector path must then really be compiled in (otherwise the
// two tests above silently test only the scalar loop), and must not be without the flags.
TEST(Widen, VectorPathCompiledExactlyWhenTheFlagsAreGiven) {
#if defined(__F16C__) && defined(__AVX__)
  constexpr bool vector_path = true;
#else
  constexpr bool vector_path = false;
#endif
#ifndef TOKENSEL_TEST_F16C_FLAGS
  GTEST_SKIP() << "built outside tests/CMakeLists.txt: nobody says whether -mavx -mf16c were given";
#else
  EXPECT_EQ(vector_path, TOKENSEL_TEST_F16C_FLAGS != 0)
      << "tests/CMakeLists.txt " << (TOKENSEL_TEST_F16C_FLAGS ? "adds" : "does not add")
      << " -mavx -mf16c, but __F16C__/__AVX__ are " << (vector_path ? "" : "not ") << "defined";
#endif
}

// Every length 0..40 at every start offset 0..7: the 8-wide blocks, the scalar tail and unaligned
// loads, each against the element-wise conversion (values away from NaN: exact equality).
TEST(Widen, HalfAllLengthsAndOffsets) {
  std::vector<Eigen::half> src(48);
  for (std::size_t i = 0; i < src.size(); ++i) src[i] = Eigen::half(static_cast<float>(i) * 0.37f - 7.0f);
  for (index_t off = 0; off < 8; ++off) {
    for (index_t n = 0; n + off <= 40; ++n) {
      std::vector<float> out(static_cast<std::size_t>(n) + 1, -99.0f);
      detail::widen(src.data() + off, n, out.data());
      for (index_t j = 0; j < n; ++j) ASSERT_EQ(out[static_cast<std::size_t>(j)], to_float(src[static_cast<std::size_t>(off + j)])) << off << " " << n << " " << j;
      EXPECT_EQ(out[static_cast<std::size_t>(n)], -99.0f) << "wrote past n = " << n;
    }
  }
}

// narrow (fp32 rows -> fp16 / bf16, used for merged and pooled rows) equals from_float bit for
// bit: 2^20 patterns spread over all 2^32 (multiplicative hash, odd, so distinct), plus the
// rounding boundaries (low half 0x7fff / 0x8000 / 0x8001 with both parities of bit 16), the
// largest finite values, infinities and NaNs of both signs with payloads.
template <class T>
void check_narrow_patterns() {
  std::vector<std::uint32_t> bits;
  for (std::uint32_t i = 0; i < (1u << 20); ++i) bits.push_back(i * 2654435761u);
  for (std::uint32_t hi : {0x3f80u, 0x3f81u, 0x7f7fu, 0x0000u, 0x0001u, 0x8000u, 0xff7fu, 0x477fu, 0x387fu}) {
    for (std::uint32_t lo : {0x0000u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu}) bits.push_back(hi << 16 | lo);
  }
  for (std::uint32_t v : {0x7f800000u, 0xff800000u, 0x7fc00000u, 0xffc00000u, 0x7f800001u, 0xff812345u, 0x7fffffffu}) bits.push_back(v);
  std::vector<float> src(bits.size());
  std::memcpy(src.data(), bits.data(), bits.size() * sizeof(float));
  std::vector<T> out(src.size());
  detail::narrow(src.data(), static_cast<index_t>(src.size()), out.data());
  for (std::size_t i = 0; i < src.size(); ++i) {
    const T want = from_float<T>(src[i]);
    std::uint16_t a, b;
    std::memcpy(&a, static_cast<const void*>(&out[i]), sizeof a);
    std::memcpy(&b, static_cast<const void*>(&want), sizeof b);
    ASSERT_EQ(a, b) << "fp32 bits 0x" << std::hex << bits[i];
  }
}

TEST(Narrow, BFloat16MatchesFromFloatBitForBit) { check_narrow_patterns<Eigen::bfloat16>(); }
TEST(Narrow, HalfMatchesFromFloatBitForBit) { check_narrow_patterns<Eigen::half>(); }
