// tokensel internals: a vectorisable fp32 exp for softmax (the libm call does not vectorise and
// would dominate the Q/K statistics). Cephes-style range reduction and degree-6 polynomial:
// about 1 ulp on the range softmax uses (x <= 0); results below FLT_MIN flush to 0, -inf gives 0.
#pragma once

#include <cstdint>
#include <cstring>

#include "tokensel/core/config.hpp"

TOKENSEL_BEGIN_NAMESPACE
namespace detail {

inline float fast_exp(float x) noexcept {
  constexpr float hi = 88.3762626647949f, lo = -87.3365447505531f;
  // The clamps are bit masks, not ?: on a float compare: under GCC's default -ftrapping-math a
  // float compare feeding ?: is not if-converted, and the caller's loop would stay scalar.
  // keep = 0 for x < lo, -inf and NaN (which callers exclude): those give +0.
  const std::uint32_t keep = 0u - static_cast<std::uint32_t>(x >= lo);
  const std::uint32_t over = 0u - static_cast<std::uint32_t>(x > hi);
  std::uint32_t xb, hb;
  std::memcpy(&xb, &x, sizeof xb);
  std::memcpy(&hb, &hi, sizeof hb);
  xb = ((xb & ~over) | (hb & over)) & keep;  // min(x, hi), then 0 when under
  std::memcpy(&x, &xb, sizeof x);
  constexpr float log2e = 1.44269504088896341f;
  float fx = x * log2e + 0.5f;
  // floor(fx) without a libm call (fx is within +-128)
  auto n = static_cast<std::int32_t>(fx);
  n -= static_cast<std::int32_t>(static_cast<float>(n) > fx);
  const float fn = static_cast<float>(n);
  float r = x - fn * 0.693359375f;
  r = r - fn * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const std::uint32_t bits = static_cast<std::uint32_t>(n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  const float result = p * scale;
  std::uint32_t rb;
  std::memcpy(&rb, &result, sizeof rb);
  rb &= keep;
  float out;
  std::memcpy(&out, &rb, sizeof out);
  return out;
}

}  // namespace detail
TOKENSEL_END_NAMESPACE
