// tokensel: streaming per-token statistics over layers (spec 1.8). A caller feeds one layer's
// score vector at a time (e.g. the contribution degree of that layer) and may free the layer's
// attention map right after: the accumulator keeps O(n) state, the elementwise running sum and
// max and the last vector fed.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "tokensel/core/config.hpp"
#include "tokensel/detail/validate.hpp"
#include "tokensel/core/element.hpp"
#include "tokensel/core/error.hpp"
#include "tokensel/core/tensor_view.hpp"

TOKENSEL_BEGIN_NAMESPACE

/// Running elementwise sum, max and last value of per-token score vectors of a fixed length n.
/// Owns its storage (allocated once, at construction). Sums are fp32 in the order the layers
/// were added. A rejected add() leaves the state unchanged.
class layer_accumulator {
 public:
  /// n tokens per vector, n >= 0.
  explicit layer_accumulator(index_t n) : n_(check_size(n)) {
    sum_.assign(static_cast<std::size_t>(n_), 0.0f);
    max_.assign(static_cast<std::size_t>(n_), -std::numeric_limits<float>::infinity());
    last_.assign(static_cast<std::size_t>(n_), 0.0f);
  }

  /// Adds one layer's scores [n]. Throws errc::shape_mismatch for a different length and
  /// errc::non_finite (naming the index) for NaN/Inf, before changing anything.
  template <element T>
  void add(const tensor_view<const T, 1>& scores) {
    if (scores.extent(0) != n_) {
      detail::fail(errc::shape_mismatch, "layer_accumulator.scores.extent(0)", scores.extent(0),
                   "must be " + std::to_string(n_) + " (fixed at construction)");
    }
    detail::check_finite(scores, "layer_accumulator.scores");
    for (index_t i = 0; i < n_; ++i) {
      const float v = to_float(scores(i));
      sum_[i] += v;
      max_[i] = std::max(max_[i], v);
      last_[i] = v;
    }
    ++layers_;
  }
  template <element T>
    requires(!std::is_const_v<T>)
  void add(const tensor_view<T, 1>& scores) {
    add<T>(tensor_view<const T, 1>(scores));
  }
  void add(std::span<const float> scores) { add<float>(as_view(scores, "layer_accumulator.scores")); }

  /// Tokens per vector (fixed at construction).
  index_t size() const noexcept { return n_; }
  /// Number of vectors added since construction or the last reset().
  index_t layers() const noexcept { return layers_; }

  /// Elementwise sum over the layers added (zeros before the first add()).
  std::span<const float> sum() const noexcept { return sum_; }
  /// Elementwise max over the layers added. Throws before the first add() (no layer to take a max of).
  std::span<const float> max() const {
    require_layers("max");
    return max_;
  }
  /// The vector added last. Throws before the first add().
  std::span<const float> last() const {
    require_layers("last");
    return last_;
  }
  /// Elementwise mean (fp32 sum / layers) into out [n]. Throws before the first add().
  void mean(std::span<float> out) const {
    require_layers("mean");
    if (static_cast<index_t>(out.size()) != n_) {
      detail::fail(errc::shape_mismatch, "layer_accumulator.mean.out.size()", out.size(), "must be " + std::to_string(n_));
    }
    const auto l = static_cast<float>(layers_);
    for (index_t i = 0; i < n_; ++i) out[i] = sum_[i] / l;
  }

  /// Forgets every layer (keeps n and the storage).
  void reset() noexcept {
    std::fill(sum_.begin(), sum_.end(), 0.0f);
    std::fill(max_.begin(), max_.end(), -std::numeric_limits<float>::infinity());
    std::fill(last_.begin(), last_.end(), 0.0f);
    layers_ = 0;
  }

 private:
  static index_t check_size(index_t n) {
    if (n < 0) detail::fail(errc::invalid_argument, "layer_accumulator.n", n, "must be >= 0");
    return n;
  }
  void require_layers(const char* what) const {
    if (layers_ == 0) {
      detail::fail(errc::invalid_argument, std::string("layer_accumulator.") + what, "no layer added yet");
    }
  }

  index_t n_;
  index_t layers_ = 0;
  std::vector<float> sum_, max_, last_;
};

TOKENSEL_END_NAMESPACE
