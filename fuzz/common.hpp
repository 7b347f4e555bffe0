// Shared helpers of the libFuzzer targets: fuzzed element values (NaN, Inf, denormals, ties),
// fuzzed parameters (out-of-domain and huge), strided views with fuzzed layouts (permuted,
// padded, negative strides) over owned storage, and the oracles every target applies:
//   * bad input must end in tokensel::error (any other exception escapes and is reported as a
//     crash by libFuzzer; sanitizers report memory and UB errors);
//   * a successful selection is sorted, unique and in range, and identical (bit for bit) under
//     seq, par with 1..3 threads, and for a contiguous copy of the input;
//   * an input that fails fails the same way (same errc) under every policy and layout.
#pragma once

#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <tokensel/core/element.hpp>
#include <tokensel/core/error.hpp>
#include <tokensel/core/policy.hpp>
#include <tokensel/core/tensor_view.hpp>

namespace fuzz {

using tokensel::index_t;
using tokensel::token_index;

/// Aborts with a message: libFuzzer records the input as a crash.
[[noreturn]] inline void finding(const char* what) {
  std::fprintf(stderr, "FUZZ FINDING: %s\n", what);
  std::abort();
}
inline void require(bool ok, const char* what) {
  if (!ok) finding(what);
}

/// How element values are drawn for one input.
enum class value_mode : int { probabilities, ties, specials, raw_bits };

inline float special_value(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange<int>(0, 11)) {
    case 0: return std::numeric_limits<float>::quiet_NaN();
    case 1: return std::numeric_limits<float>::infinity();
    case 2: return -std::numeric_limits<float>::infinity();
    case 3: return std::numeric_limits<float>::denorm_min();
    case 4: return -std::numeric_limits<float>::denorm_min();
    case 5: return std::numeric_limits<float>::min() / 4;  // a denormal
    case 6: return std::numeric_limits<float>::max();
    case 7: return std::numeric_limits<float>::lowest();
    case 8: return -0.0f;
    case 9: return 65504.0f;   // fp16 max
    case 10: return 1e30f;     // overflows fp16 to Inf
    default: return -1.0f;
  }
}

inline float draw_value(FuzzedDataProvider& in, value_mode mode) {
  switch (mode) {
    case value_mode::probabilities: return static_cast<float>(in.ConsumeIntegral<std::uint16_t>()) / 65535.0f;
    case value_mode::ties: return static_cast<float>(in.ConsumeIntegralInRange<int>(0, 3)) * 0.25f;
    case value_mode::specials:
      if (in.ConsumeIntegralInRange<int>(0, 7) == 0) return special_value(in);
      return static_cast<float>(in.ConsumeIntegral<std::uint8_t>()) / 255.0f;
    case value_mode::raw_bits: return std::bit_cast<float>(in.ConsumeIntegral<std::uint32_t>());
  }
  return 0.0f;
}

inline value_mode draw_mode(FuzzedDataProvider& in) {
  return static_cast<value_mode>(in.ConsumeIntegralInRange<int>(0, 3));
}

/// A ratio-like double: mostly inside (0, 1], sometimes on or beyond the edges, NaN, Inf, denormal.
inline double draw_ratio(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange<int>(0, 15)) {
    case 0: return std::numeric_limits<double>::quiet_NaN();
    case 1: return std::numeric_limits<double>::infinity();
    case 2: return -std::numeric_limits<double>::infinity();
    case 3: return 0.0;
    case 4: return 1.0;
    case 5: return std::numeric_limits<double>::denorm_min();
    case 6: return std::nextafter(1.0, 2.0);
    case 7: return -0.25;
    case 8: return 1e300;
    default: return static_cast<double>(in.ConsumeIntegralInRange<int>(1, 1000)) / 1000.0;
  }
}

/// A non-negative double parameter (multipliers, scales): mostly small, sometimes hostile.
inline double draw_scalar(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange<int>(0, 11)) {
    case 0: return std::numeric_limits<double>::quiet_NaN();
    case 1: return std::numeric_limits<double>::infinity();
    case 2: return -1.0;
    case 3: return 0.0;
    case 4: return std::numeric_limits<double>::denorm_min();
    case 5: return 1e300;
    default: return static_cast<double>(in.ConsumeIntegralInRange<int>(0, 400)) / 100.0;
  }
}

/// An integer parameter: mostly small (around `typical`), sometimes negative or huge.
inline index_t draw_count(FuzzedDataProvider& in, index_t typical = 8) {
  switch (in.ConsumeIntegralInRange<int>(0, 15)) {
    case 0: return -1;
    case 1: return std::numeric_limits<index_t>::max();
    case 2: return std::numeric_limits<index_t>::min();
    case 3: return index_t{1} << 40;
    case 4: return static_cast<index_t>(std::numeric_limits<std::int32_t>::max()) + 1;
    case 5: return 0;
    default: return in.ConsumeIntegralInRange<index_t>(0, typical);
  }
}

/// The policies every selection is compared under.
inline constexpr int policy_count = 4;  // seq, par{1}, par{2}, par{3}

template <class F>
decltype(auto) with_policy(int which, F&& f) {
  if (which == 0) return f(tokensel::seq);
  return f(tokensel::threaded_policy{.threads = which});
}

/// Element type chosen by the input.
template <class F>
void with_element(int which, F&& f) {
  switch (which % 3) {
    case 0: f(float{}); break;
    case 1: f(Eigen::half{}); break;
    default: f(Eigen::bfloat16{}); break;
  }
}

/// A rank-R tensor of T in owned storage with a fuzzed layout, plus a contiguous copy.
template <class T, std::size_t R>
struct tensor {
  std::array<index_t, R> extents{};
  std::vector<T> storage;     // strided layout (padding holds NaN: reading it is a bug)
  std::vector<T> contiguous;  // row-major copy of the same logical elements
  tokensel::tensor_view<const T, R> strided_view;
  tokensel::tensor_view<const T, R> contiguous_view;
  tokensel::tensor_view<T, R> mutable_strided;

  const tokensel::tensor_view<const T, R>& view(bool use_contiguous) const {
    return use_contiguous ? contiguous_view : strided_view;
  }
};

inline index_t product(std::span<const index_t> e) {
  index_t n = 1;
  for (index_t x : e) n *= x;
  return n;
}

/// Builds a tensor with the given (small) extents: values from `mode`, layout from the input.
template <class T, std::size_t R>
tensor<T, R> make_tensor(FuzzedDataProvider& in, const std::array<index_t, R>& extents, value_mode mode) {
  tensor<T, R> t;
  t.extents = extents;
  std::array<std::size_t, R> order{};
  std::iota(order.begin(), order.end(), std::size_t{0});
  const int layout = in.ConsumeIntegralInRange<int>(0, 3);  // 0: row-major, 1: permuted, 2: padded, 3: both
  if (layout & 1) {
    for (std::size_t k = R; k > 1; --k) std::swap(order[k - 1], order[in.ConsumeIntegralInRange<std::size_t>(0, k - 1)]);
  }
  std::array<index_t, R> strides{};
  index_t step = 1;
  for (std::size_t k = R; k-- > 0;) {  // order[R-1] varies fastest
    const std::size_t d = order[k];
    strides[d] = step;
    const index_t pad = (layout & 2) ? in.ConsumeIntegralInRange<index_t>(0, 2) : 0;
    step *= std::max<index_t>(extents[d], 1) + pad;
  }
  const float poison = std::numeric_limits<float>::quiet_NaN();
  t.storage.assign(static_cast<std::size_t>(step), tokensel::from_float<T>(poison));
  index_t offset = 0;
  const bool flip = R > 0 && in.ConsumeBool() && in.ConsumeBool();
  const std::size_t flipped = flip ? in.ConsumeIntegralInRange<std::size_t>(0, R - 1) : R;
  if (flipped < R && extents[flipped] > 1) {
    offset = (extents[flipped] - 1) * strides[flipped];
    strides[flipped] = -strides[flipped];
  }
  const index_t count = product(extents);
  t.contiguous.resize(static_cast<std::size_t>(count));
  std::array<index_t, R> idx{};
  for (index_t linear = 0; linear < count; ++linear) {
    index_t rest = linear, at = offset;
    for (std::size_t k = R; k-- > 0;) {
      idx[k] = rest % extents[k];
      rest /= extents[k];
      at += idx[k] * strides[k];
    }
    const T v = tokensel::from_float<T>(draw_value(in, mode));
    t.storage[static_cast<std::size_t>(at)] = v;
    t.contiguous[static_cast<std::size_t>(linear)] = v;
  }
  T* base = t.storage.data() + offset;
  t.strided_view = tokensel::tensor_view<const T, R>(base, extents, strides, "fuzz.strided");
  t.mutable_strided = tokensel::tensor_view<T, R>(base, extents, strides, "fuzz.strided");
  t.contiguous_view = tokensel::tensor_view<const T, R>(t.contiguous.data(), extents, "fuzz.contiguous");
  return t;
}

/// Outcome of one call: the indices written and a digest of the statistics, or the error code.
struct outcome {
  bool ok = false;
  tokensel::errc code = tokensel::errc::invalid_argument;
  std::vector<token_index> indices;
  std::vector<std::uint64_t> stats;  // bit patterns of the result fields that must match

  bool operator==(const outcome&) const = default;
};

template <class F>
outcome run_guarded(F&& f) {
  outcome o;
  try {
    f(o);
    o.ok = true;
  } catch (const tokensel::error& e) {
    o = outcome{};
    o.code = e.code();
    require(std::strncmp(e.what(), "tokensel: ", 10) == 0, "error message without the 'tokensel: ' prefix");
    require(!e.parameter().empty(), "error without a parameter name");
  }
  return o;
}

inline std::uint64_t bits(double v) { return std::bit_cast<std::uint64_t>(v); }
inline std::uint64_t bits(float v) { return std::bit_cast<std::uint32_t>(v); }
inline std::uint64_t bits(index_t v) { return static_cast<std::uint64_t>(v); }

/// Indices ascending, unique and in [0, n).
inline void check_ascending(std::span<const token_index> idx, index_t n, const char* what) {
  for (std::size_t i = 0; i < idx.size(); ++i) {
    if ((idx[i] >= 0 && idx[i] < n) && (i == 0 || idx[i - 1] < idx[i])) continue;
    // Print the selection so the reproducer's failure can be read without a debugger.
    std::fprintf(stderr, "n = %lld, indices:", static_cast<long long>(n));
    for (token_index v : idx) std::fprintf(stderr, " %d", static_cast<int>(v));
    std::fprintf(stderr, "\n");
    finding(what);
  }
}

/// Runs call(policy, use_contiguous, outcome&) under every policy on the strided input and once
/// under seq on the contiguous copy; all outcomes must agree. Returns the seq outcome.
template <class Call>
outcome compare_everywhere(FuzzedDataProvider& in, Call&& call) {
  const outcome ref = run_guarded([&](outcome& o) { call(tokensel::seq, false, o); });
  const outcome copy = run_guarded([&](outcome& o) { call(tokensel::seq, true, o); });
  require(ref == copy, "strided and contiguous inputs disagree");
  const int threads = in.ConsumeIntegralInRange<int>(1, policy_count - 1);
  const outcome threaded =
      run_guarded([&](outcome& o) { call(tokensel::threaded_policy{.threads = threads}, false, o); });
  if (!(ref == threaded)) {
    std::fprintf(stderr, "seq: ok=%d code=%d n=%zu stats=%zu; par(%d): ok=%d code=%d n=%zu stats=%zu\n", ref.ok,
                 static_cast<int>(ref.code), ref.indices.size(), ref.stats.size(), threads, threaded.ok,
                 static_cast<int>(threaded.code), threaded.indices.size(), threaded.stats.size());
    finding("seq and par disagree");
  }
  return ref;
}

}  // namespace fuzz
