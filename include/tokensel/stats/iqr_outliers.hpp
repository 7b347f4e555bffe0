// tokensel: adaptive IQR outliers (spec section 1.4). Q1 and Q3 are numpy's default ("linear",
// Hyndman-Fan type 7) percentiles computed in double; the upper fence is Q3 + c * (Q3 - Q1) and a
// value is an outlier when it lies strictly above it. PruMerge uses the count as its adaptive
// budget and freePruner uses the indices as complementary tokens.
#pragma once

#include <algorithm>
#include <cmath>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

#include "tokensel/core/config.hpp"
#include "tokensel/detail/arith.hpp"
#include "tokensel/detail/scratch.hpp"
#include "tokensel/detail/validate.hpp"
#include "tokensel/core/element.hpp"
#include "tokensel/core/error.hpp"
#include "tokensel/core/tensor_view.hpp"

TOKENSEL_BEGIN_NAMESPACE

/// Parameters of the IQR rule.
struct iqr_config {
  double multiplier = 1.5;   ///< c in Q3 + c * IQR (and Q1 - c * IQR); finite, >= 0
  bool lower_fence = false;  ///< also count values strictly below Q1 - c * IQR
};

/// Quartiles, fences and the number of outliers of one vector. Both fences are always reported;
/// the lower one contributes to count only when iqr_config::lower_fence is set.
/// An empty vector gives an all-zero result (count 0).
struct [[nodiscard]] iqr_result {
  index_t count = 0;
  double q1 = 0, q3 = 0, upper_fence = 0, lower_fence = 0;
};

inline void validate(const iqr_config& cfg) {
  if (!std::isfinite(cfg.multiplier) || cfg.multiplier < 0.0) {
    detail::fail(errc::invalid_argument, "iqr.multiplier", cfg.multiplier, "must be finite and >= 0");
  }
}

/// Most outliers any vector of n finite values can have under cfg (multiplier >= 0): values above
/// the upper fence sit above Q3, so at sorted positions beyond floor(3(n-1)/4); values below the
/// lower fence sit at positions up to floor((n-1)/4). Capacity for iqr_outliers' output.
inline index_t iqr_max_count(index_t n, const iqr_config& cfg = {}) {
  validate(cfg);
  if (n <= 0) return 0;
  const index_t m = n - 1;
  index_t k = m - (m / 4 * 3 + m % 4 * 3 / 4);  // m - floor(3m/4), without overflowing 3m
  if (cfg.lower_fence) k += (n - 1) / 4 + 1;
  return k < n ? k : n;
}

namespace detail {

inline void check_quantile(double q) {
  if (!(q >= 0.0 && q <= 1.0)) fail(errc::invalid_argument, "percentile.q", q, "must be in [0, 1]");
}

// Copies x to doubles, rejecting NaN/Inf by index (unordered: see quantile_in). -0 becomes +0
// (v + 0.0): the two compare equal, so which one a sort or a selection puts at a position is
// arbitrary; folded, every quantile has one sign of zero on every algorithm and backend.
template <class T>
std::span<double> finite_copy(scratch_scope& scratch, const tensor_view<const T, 1>& x, std::string_view name) {
  const index_t n = x.extent(0);
  auto s = scratch.take<double>(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) {
    const float v = to_float(x(i));
    if (!std::isfinite(v)) fail(errc::non_finite, at_index(name, i), v, "values must be finite");
    s[static_cast<std::size_t>(i)] = static_cast<double>(v) + 0.0;
  }
  return s;
}

// The q-quantile (numpy's linear method, detail/arith.hpp) of the values s[0, end) and, when its
// position p.lo + 1 reaches end, `beyond` (the value at ascending position end). Only the order
// statistics it interpolates are found (nth_element, then the least value above them), not a full
// sort: the same two values, so the same bits, in O(end). Leaves s permuted with
// s[0, p.lo) <= s[p.lo] <= s[p.lo + 1, end), so a lower quantile can then search s[0, p.lo) alone.
inline double quantile_in(std::span<double> s, index_t end, const quantile_position& p, double beyond) noexcept {
  const auto lo = static_cast<index_t>(p.lo);
  std::nth_element(s.begin(), s.begin() + lo, s.begin() + end);
  const double a = s[static_cast<std::size_t>(lo)];
  if (!p.lerp) return quantile_value(p, a, a);
  const double b = lo + 1 < end ? *std::min_element(s.begin() + lo + 1, s.begin() + end) : beyond;
  return quantile_value(p, a, b);
}

inline bool is_iqr_outlier(double v, const iqr_result& r, const iqr_config& cfg) noexcept {
  return v > r.upper_fence || (cfg.lower_fence && v < r.lower_fence);
}

template <class T>
iqr_result iqr_fences_impl(const tensor_view<const T, 1>& x, const iqr_config& cfg, std::string_view name) {
  validate(cfg);
  iqr_result r;
  const index_t n = x.extent(0);
  if (n == 0) return r;
  scratch_scope scratch;
  const auto s = finite_copy(scratch, x, name);
  // Q3 first: it leaves the values below its position in s[0, p3.lo), where Q1's order statistics
  // lie when p1.lo < p3.lo (at p1.lo + 1 == p3.lo, Q1 interpolates towards Q3's own value); the
  // positions coincide only for n <= 2, and Q1 then searches all of s again.
  const quantile_position p1 = quantile_at(n, 0.25), p3 = quantile_at(n, 0.75);
  r.q3 = quantile_in(s, n, p3, 0.0);  // p3.lo + 1 < n whenever p3 interpolates
  const auto end1 = static_cast<index_t>(p1.lo < p3.lo ? p3.lo : n);
  r.q1 = quantile_in(s, end1, p1, end1 < n ? s[static_cast<std::size_t>(end1)] : 0.0);
  r.upper_fence = upper_fence(r.q1, r.q3, cfg.multiplier);
  r.lower_fence = lower_fence(r.q1, r.q3, cfg.multiplier);
  for (const double v : s) r.count += is_iqr_outlier(v, r, cfg) ? 1 : 0;
  return r;
}

}  // namespace detail

/// numpy.percentile(x, 100*q) with the default method ("linear"), computed in double.
/// q in [0, 1]; x needs at least one element; NaN/Inf elements throw errc::non_finite naming the index.
template <element T>
double percentile_linear(const tensor_view<const T, 1>& x, double q) {
  detail::check_quantile(q);
  const index_t n = x.extent(0);
  if (n < 1) detail::fail(errc::invalid_argument, "percentile.x.extent(0)", n, "needs at least one value");
  detail::scratch_scope scratch;
  const auto s = detail::finite_copy(scratch, x, "percentile.x");
  return detail::quantile_in(s, n, detail::quantile_at(n, q), 0.0);  // p.lo + 1 < n whenever p interpolates
}

/// Quartiles, fences and the outlier count of x (no indices written). n = 0 gives count 0.
template <element T>
iqr_result iqr_fences(const tensor_view<const T, 1>& x, const iqr_config& cfg = {}) {
  return detail::iqr_fences_impl(x, cfg, "iqr.x");
}

/// Same as iqr_fences, and writes the outlier indices ascending into out[0, count).
/// Throws errc::shape_mismatch when out has fewer than count elements (nothing written then).
template <element T>
iqr_result iqr_outliers(const tensor_view<const T, 1>& x, const iqr_config& cfg, std::span<token_index> out) {
  const iqr_result r = detail::iqr_fences_impl(x, cfg, "iqr.x");
  detail::check_capacity(out.size(), r.count, "iqr.out.size()");
  index_t written = 0;
  for (index_t i = 0; i < x.extent(0); ++i) {
    if (detail::is_iqr_outlier(static_cast<double>(to_float(x(i))), r, cfg)) {
      out[static_cast<std::size_t>(written++)] = static_cast<token_index>(i);
    }
  }
  return r;
}

// ---- conveniences: mutable views and spans (template deduction does not convert them) -------

template <element T>
  requires(!std::is_const_v<T>)
double percentile_linear(const tensor_view<T, 1>& x, double q) {
  return percentile_linear<T>(tensor_view<const T, 1>(x), q);
}
template <element T>
  requires(!std::is_const_v<T>)
iqr_result iqr_fences(const tensor_view<T, 1>& x, const iqr_config& cfg = {}) {
  return iqr_fences<T>(tensor_view<const T, 1>(x), cfg);
}
template <element T>
  requires(!std::is_const_v<T>)
iqr_result iqr_outliers(const tensor_view<T, 1>& x, const iqr_config& cfg, std::span<token_index> out) {
  return iqr_outliers<T>(tensor_view<const T, 1>(x), cfg, out);
}

template <element T>
double percentile_linear(std::span<const T> x, double q) {
  return percentile_linear<T>(as_view(x, "percentile.x"), q);
}
template <element T>
iqr_result iqr_fences(std::span<const T> x, const iqr_config& cfg = {}) {
  return iqr_fences<T>(as_view(x, "iqr.x"), cfg);
}
template <element T>
iqr_result iqr_outliers(std::span<const T> x, const iqr_config& cfg, std::span<token_index> out) {
  return iqr_outliers<T>(as_view(x, "iqr.x"), cfg, out);
}

/// fp32 spans (a std::vector<float> converts here without naming the element type).
inline double percentile_linear(std::span<const float> x, double q) { return percentile_linear<float>(x, q); }
inline iqr_result iqr_fences(std::span<const float> x, const iqr_config& cfg = {}) { return iqr_fences<float>(x, cfg); }
inline iqr_result iqr_outliers(std::span<const float> x, const iqr_config& cfg, std::span<token_index> out) {
  return iqr_outliers<float>(x, cfg, out);
}

TOKENSEL_END_NAMESPACE
