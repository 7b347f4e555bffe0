// tokensel: FoPru's variance-axis significance (spec 1.3, FoPru eq. 3-4).
//   s1[i] = mean_j M[i, j]  (attention a token gives: row mean)
//   s2[j] = mean_i M[i, j]  (attention a token receives: column mean)
//   Sig = s1 if Var(s1) > Var(s2) (strict, population variance, in double) else s2.
#pragma once

#include <span>
#include <string>

#include "tokensel/core/config.hpp"
#include "tokensel/detail/arith.hpp"
#include "tokensel/detail/scratch.hpp"
#include "tokensel/detail/validate.hpp"
#include "tokensel/core/element.hpp"
#include "tokensel/stats/head_reduction.hpp"
#include "tokensel/core/attention_source.hpp"
#include "tokensel/stats/map_sums.hpp"
#include "tokensel/core/policy.hpp"
#include "tokensel/core/tensor_view.hpp"

TOKENSEL_BEGIN_NAMESPACE

/// Which vector became the significance.
enum class significance_axis {
  row_mean,     ///< s1: attention given (rows)
  column_mean,  ///< s2: attention received (columns)
};

inline const char* to_string(significance_axis axis) noexcept {
  return axis == significance_axis::row_mean ? "row_mean" : "column_mean";
}

struct [[nodiscard]] variance_axis_result {
  significance_axis axis = significance_axis::column_mean;
  double row_variance = 0.0;     ///< Var(s1)
  double column_variance = 0.0;  ///< Var(s2)
};

/// Population variance of x, in double (mean first, then mean squared deviation).
inline double population_variance(std::span<const float> x) noexcept {
  return detail::sequential_variance(x.data(), static_cast<long long>(x.size()));
}

/// Significance of every token of a square map (attention [heads, n, n] already restricted to the
/// tokens of interest, or a Q/K source with that window), head-reduced by op; writes Sig into
/// significance [n]. Means are fp32 sums divided by n (fp32); variances in double.
template <cpu_policy Policy, attention_source Source>
variance_axis_result variance_axis_significance(const Policy& policy, const Source& attention, head_reduction op,
                                                std::span<float> significance) {
  const index_t n = query_tokens(attention);
  if (key_tokens(attention) != n) {
    detail::fail(errc::shape_mismatch, "variance_axis.attention", std::to_string(n) + "x" + std::to_string(key_tokens(attention)),
                 "map must be square");
  }
  if (static_cast<index_t>(significance.size()) != n) {
    detail::fail(errc::shape_mismatch, "variance_axis.significance.size()", significance.size(), "must be " + std::to_string(n));
  }
  variance_axis_result result;
  if (n == 0) return result;
  detail::scratch_scope scratch;
  auto s1 = scratch.take<float>(static_cast<std::size_t>(n));
  auto s2 = scratch.take<float>(static_cast<std::size_t>(n));
  map_sums(policy, attention, op, {.row_sums = s1, .column_sums = s2, .diagonal = {}});
  const auto nf = static_cast<float>(n);
  for (index_t i = 0; i < n; ++i) {
    s1[i] = s1[i] / nf;
    s2[i] = s2[i] / nf;
  }
  detail::check_finite(as_view(std::span<const float>(s1)), "variance_axis.row_mean");
  detail::check_finite(as_view(std::span<const float>(s2)), "variance_axis.column_mean");
  result.row_variance = population_variance(s1);
  result.column_variance = population_variance(s2);
  result.axis = result.row_variance > result.column_variance ? significance_axis::row_mean : significance_axis::column_mean;
  const auto& chosen = result.axis == significance_axis::row_mean ? s1 : s2;
  std::copy(chosen.begin(), chosen.end(), significance.begin());
  return result;
}

TOKENSEL_END_NAMESPACE
