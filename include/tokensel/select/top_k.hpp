// tokensel: deterministic top-k / bottom-k. Ties break by the lower index (higher score first;
// equal scores -> lower index first), so every backend returns the same set in the same order.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>
#include <cmath>
#include <span>
#include <string>

#include "tokensel/core/config.hpp"
#include "tokensel/detail/arith.hpp"
#include "tokensel/detail/scratch.hpp"
#include "tokensel/detail/validate.hpp"
#include "tokensel/core/element.hpp"
#include "tokensel/core/tensor_view.hpp"

TOKENSEL_BEGIN_NAMESPACE

/// Order of the indices a selection writes.
enum class index_order {
  ascending,  ///< original spatial order (the default everywhere; FoPru's "reordering")
  ranked,     ///< best first (by the selection's own ranking rule)
};

namespace detail {

/// "a ranks before b": higher score first, then lower index (top-k rule).
struct rank_high_first {
  const float* key;
  bool operator()(token_index a, token_index b) const noexcept {
    return beats_high(key[a], a, key[b], b);
  }
};
/// "a ranks before b": lower score first, then lower index (bottom-k rule).
struct rank_low_first {
  const float* key;
  bool operator()(token_index a, token_index b) const noexcept {
    return beats_low(key[a], a, key[b], b);
  }
};

/// One 64-bit key per (score, index) whose unsigned order is the Rank rule's (larger = ranks
/// first): the score (negated for the bottom-k rule) mapped to an order-preserving unsigned,
/// -0 folded onto +0 (they compare equal), above the complemented index (equal scores: the
/// lower index ranks first). Scores are finite here. Branch-free, since a branch on the sign
/// mispredicts on half of the scores: s + 0 folds -0 onto +0 and keeps every other value; a
/// negative score's bits are all flipped, a non-negative one gets its sign bit set.
template <class Rank>
inline std::uint64_t rank_key(float score, index_t i) noexcept {
  constexpr bool high = std::is_same_v<Rank, rank_high_first>;
  const float s = (high ? score : -score) + 0.0f;
  std::uint32_t b;
  std::memcpy(&b, &s, sizeof b);
  b ^= static_cast<std::uint32_t>(static_cast<std::int32_t>(b) >> 31) | 0x80000000u;
  return (static_cast<std::uint64_t>(b) << 32) | static_cast<std::uint32_t>(0xFFFFFFFFu - static_cast<std::uint32_t>(i));
}

template <class Rank>
inline token_index key_index(std::uint64_t key) noexcept {
  return static_cast<token_index>(0xFFFFFFFFu - static_cast<std::uint32_t>(key));
}

template <class T, class Rank>
index_t select_k(const tensor_view<const T, 1>& scores, index_t k, std::span<token_index> out, index_order order,
                 std::string_view name) {
  const index_t n = scores.extent(0);
  // Parameter names are built only on failure: the hot path must not allocate.
  if (k < 0 || k > n) check_count(k, n, std::string(name) + ".k");
  if (static_cast<index_t>(out.size()) < k) check_capacity(out.size(), k, std::string(name) + ".out.size()");
  if (!all_finite(scores)) check_finite(scores, std::string(name) + ".scores");
  if (k == 0) return 0;
  scratch_scope scratch;
  auto key = scratch.take<std::uint64_t>(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) key[i] = rank_key<Rank>(to_float(scores(i)), i);
  // The k best are the k largest keys; keys are distinct (they hold the index), so the set and
  // the ranked order are those of the Rank rule.
  if (k < n) std::nth_element(key.begin(), key.begin() + (k - 1), key.end(), std::greater<>());
  if (order == index_order::ranked) {
    std::sort(key.begin(), key.begin() + k, std::greater<>());
    for (index_t r = 0; r < k; ++r) out[r] = key_index<Rank>(key[r]);
    return k;
  }
  // Ascending indices: mark the kept ones, then one pass over the positions (no sort).
  auto kept = scratch.take_zeroed<unsigned char>(static_cast<std::size_t>(n));
  for (index_t r = 0; r < k; ++r) kept[key_index<Rank>(key[r])] = 1;
  index_t w = 0;
  for (index_t i = 0; i < n; ++i) {
    if (kept[i]) out[w++] = static_cast<token_index>(i);
  }
  return k;
}

}  // namespace detail

/// Writes the indices of the k highest scores into out[0, k) and returns k.
/// Throws on k outside [0, n], out smaller than k, or a non-finite score.
template <element T>
index_t top_k(const tensor_view<const T, 1>& scores, index_t k, std::span<token_index> out,
              index_order order = index_order::ascending) {
  return detail::select_k<T, detail::rank_high_first>(scores, k, out, order, "top_k");
}

/// Writes the indices of the k lowest scores (ties: lower index first) into out[0, k).
template <element T>
index_t bottom_k(const tensor_view<const T, 1>& scores, index_t k, std::span<token_index> out,
                 index_order order = index_order::ascending) {
  return detail::select_k<T, detail::rank_low_first>(scores, k, out, order, "bottom_k");
}

template <element T>
index_t top_k(std::span<const T> scores, index_t k, std::span<token_index> out,
              index_order order = index_order::ascending) {
  return top_k<T>(as_view(scores, "scores"), k, out, order);
}
template <element T>
index_t bottom_k(std::span<const T> scores, index_t k, std::span<token_index> out,
                 index_order order = index_order::ascending) {
  return bottom_k<T>(as_view(scores, "scores"), k, out, order);
}

/// Writes all n indices ranked by the top-k rule (a full descending ranking).
template <element T>
void rank_descending(const tensor_view<const T, 1>& scores, std::span<token_index> out) {
  top_k<T>(scores, scores.extent(0), out, index_order::ranked);
}

/// Complement of a sorted index set within [0, n): writes the indices not in `kept`, ascending.
/// Returns the number written. kept must be ascending and unique.
inline index_t complement(std::span<const token_index> kept, index_t n, std::span<token_index> out) {
  detail::check_capacity(out.size(), n - static_cast<index_t>(kept.size()), "complement.out.size()");
  index_t written = 0;
  std::size_t next = 0;
  for (index_t i = 0; i < n; ++i) {
    if (next < kept.size() && kept[next] == i) {
      ++next;
    } else {
      out[written++] = static_cast<token_index>(i);
    }
  }
  return written;
}

TOKENSEL_END_NAMESPACE
