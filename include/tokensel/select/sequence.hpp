// tokensel: positions in a pruned sequence. An engine that drops visual tokens keeps every other
// position and the survivors' original position ids; these helpers compute the keep lists and
// track the original positions across several drops (FitPrune per layer, FastV once).
#pragma once

#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "tokensel/core/config.hpp"
#include "tokensel/core/error.hpp"
#include "tokensel/core/token_range.hpp"
#include "tokensel/detail/validate.hpp"

TOKENSEL_BEGIN_NAMESPACE

/// Sequence-level keep list of a pruned LLM sequence: every position outside the visual span,
/// plus s0 + kept[i] for the kept visual tokens (kept: ascending indices into the span).
/// Writes the ascending positions into out and returns their number (L - n + kept.size()).
/// This is what an engine gathers hidden states, residuals and position ids with; positions keep
/// their original values.
inline index_t sequence_keep(index_t sequence_length, const token_range& visual, std::span<const token_index> kept,
                             std::span<token_index> out) {
  check_range(visual, sequence_length, "sequence_keep.visual");
  const index_t k = static_cast<index_t>(kept.size());
  const index_t total = sequence_length - visual.count + k;
  detail::check_capacity(out.size(), total, "sequence_keep.out.size()");
  index_t w = 0;
  for (index_t i = 0; i < visual.begin; ++i) out[w++] = static_cast<token_index>(i);
  for (index_t i = 0; i < k; ++i) {
    const index_t v = kept[i];
    if (v < 0 || v >= visual.count || (i > 0 && v <= kept[i - 1])) {
      detail::fail(errc::invalid_argument, detail::at_index("sequence_keep.kept", i), v,
                   "kept visual indices must be ascending, unique and inside the span");
    }
    out[w++] = static_cast<token_index>(visual.begin + v);
  }
  for (index_t i = visual.end(); i < sequence_length; ++i) out[w++] = static_cast<token_index>(i);
  return w;
}

/// Keeps positions[kept[i]] at positions[i] (kept: ascending, unique indices into the first
/// `count` positions); returns kept.size(). In place, no allocation.
inline index_t compact_positions(std::span<token_index> positions, index_t count, std::span<const token_index> kept) {
  if (count < 0 || count > static_cast<index_t>(positions.size())) {
    detail::fail(errc::invalid_argument, "fitprune.compact_positions.count", count, "must be in [0, positions.size()]");
  }
  for (std::size_t i = 0; i < kept.size(); ++i) {  // validate first: a bad set leaves positions intact
    const index_t v = kept[i];
    if (v < 0 || v >= count || (i > 0 && v <= kept[i - 1])) {
      detail::fail(errc::invalid_argument, detail::at_index("fitprune.kept", static_cast<index_t>(i)), v,
                             "kept indices must be ascending, unique and below " + std::to_string(count));
    }
  }
  for (std::size_t i = 0; i < kept.size(); ++i) positions[i] = positions[static_cast<std::size_t>(kept[i])];
  return static_cast<index_t>(kept.size());
}

/// Original positions of the still-present visual tokens of one sample across layers. Starts as
/// first, first + 1, ..., first + n - 1 (first = 0: visual indices; first = s0: sequence
/// positions); keep() applies a layer's kept set. Positions never change value (the survivors
/// keep their original position ids). Allocates once, in the constructor / reset.
class position_tracker {
 public:
  position_tracker() = default;
  explicit position_tracker(index_t n, index_t first = 0) { reset(n, first); }

  void reset(index_t n, index_t first = 0) {
    if (n < 0) detail::fail(errc::invalid_argument, "fitprune.position_tracker.n", n, "must be >= 0");
    positions_.resize(static_cast<std::size_t>(n));
    std::iota(positions_.begin(), positions_.end(), static_cast<token_index>(first));
    size_ = n;
  }
  /// kept: ascending indices into the current set [0, size()), e.g. prune_layer's output.
  void keep(std::span<const token_index> kept) { size_ = compact_positions(positions_, size_, kept); }

  index_t size() const noexcept { return size_; }
  std::span<const token_index> positions() const noexcept { return {positions_.data(), static_cast<std::size_t>(size_)}; }

 private:
  std::vector<token_index> positions_;
  index_t size_ = 0;
};

TOKENSEL_END_NAMESPACE
