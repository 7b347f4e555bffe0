// tokensel: token ranges (drop CLS; the visual span inside an LLM sequence) and their
// application to views.
#pragma once

#include <limits>
#include <string>

#include "tokensel/core/config.hpp"
#include "tokensel/core/error.hpp"
#include "tokensel/core/tensor_view.hpp"

TOKENSEL_BEGIN_NAMESPACE

/// The half-open token range [begin, begin + count).
struct token_range {
  index_t begin = 0;
  index_t count = 0;

  index_t end() const noexcept { return begin + count; }
  bool contains(index_t i) const noexcept { return i >= begin && i < end(); }

  /// All n tokens.
  static token_range all(index_t n) noexcept { return {0, n}; }
  /// The patches of a CLIP-style sequence: every token after the CLS token at index 0.
  /// n must be >= 1 (there is a CLS token to skip).
  static token_range skip_cls(index_t n) {
    if (n < 1) detail::fail(errc::invalid_argument, "skip_cls.n", n, "needs at least the CLS token");
    return {1, n - 1};
  }
  /// The visual tokens inside an LLM sequence: [first, first + count).
  static token_range visual_span(index_t first, index_t count) noexcept { return {first, count}; }
};

/// Whether range lies inside [0, n). count > n - begin rather than begin + count > n: no
/// overflow for fuzzed or huge values.
inline bool range_within(const token_range& range, index_t n) noexcept {
  return range.begin >= 0 && range.count >= 0 && range.count <= n - range.begin;
}

/// Throws unless range lies inside [0, n).
inline void check_range(const token_range& range, index_t n, std::string_view name) {
  if (!range_within(range, n)) {
    constexpr index_t hi = std::numeric_limits<index_t>::max(), lo = std::numeric_limits<index_t>::min();
    const bool end_fits = range.count >= 0 ? range.begin <= hi - range.count : range.begin >= lo - range.count;
    // Built with append: GCC 12 warns (-Wrestrict, a false positive) on "[" + std::string chains.
    std::string shown("[");
    shown.append(std::to_string(range.begin)).append(", ");
    if (end_fits) {
      shown.append(std::to_string(range.begin + range.count));
    } else {
      shown.append(std::to_string(range.begin)).append(" + ").append(std::to_string(range.count));
    }
    shown.append(")");
    detail::fail(errc::invalid_argument, name, shown, "token range outside the " + std::to_string(n) + " tokens");
  }
}

/// The square sub-map rows x cols = range x range of one sample's attention [heads, q, k]:
/// e.g. the patch submatrix (CLS row and column removed, not renormalised).
template <class T>
tensor_view<T, 3> restrict_tokens(const tensor_view<T, 3>& attention, const token_range& range) {
  check_range(range, attention.extent(1), "range(queries)");
  check_range(range, attention.extent(2), "range(keys)");
  return attention.slice(1, range.begin, range.count, "attention").slice(2, range.begin, range.count, "attention");
}

/// Same for a head-reduced map [q, k].
template <class T>
tensor_view<T, 2> restrict_tokens(const tensor_view<T, 2>& map, const token_range& range) {
  check_range(range, map.extent(0), "range(queries)");
  check_range(range, map.extent(1), "range(keys)");
  return map.slice(0, range.begin, range.count, "map").slice(1, range.begin, range.count, "map");
}

TOKENSEL_END_NAMESPACE
