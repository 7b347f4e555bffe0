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

TEST(Widen, VectorPathCompiledWhereSupported) {
#if defined(__F16C__) && defined(__AVX__)
  SUCCEED() << "F16C path compiled";
#else
  GTEST_SKIP() << "compiler does not accept -mavx -mf16c: only the scalar path is built";
#endif
}
