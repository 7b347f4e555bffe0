// tokensel CUDA backend internals: a batch seen from the host (4-D view or ragged span of 3-D
// views, all holding device pointers) and the per-sample checks of selection outputs.
#pragma once

#include <span>
#include <string>

#include "tokensel/cuda/core/abi.cuh"
#include "tokensel/core/batch.hpp"
#include "tokensel/core/config.hpp"
#include "tokensel/cuda/detail/launch.cuh"
#include "tokensel/core/tensor_view.hpp"

TOKENSEL_BEGIN_NAMESPACE
TOKENSEL_CUDA_BEGIN_DETAIL

/// Either a [batch, heads, q, k] view (uniform: one table per launch) or a span of [heads, q, k]
/// views (ragged). Host object; the views' pointers are device pointers.
template <class T>
class batch_ref {
 public:
  explicit batch_ref(const tensor_view<const T, 4>& four) : four_(four), uniform_(true) {}
  explicit batch_ref(std::span<const tensor_view<const T, 3>> ragged) : ragged_(ragged), uniform_(false) {}

  index_t size() const noexcept { return uniform_ ? four_.extent(0) : static_cast<index_t>(ragged_.size()); }
  bool uniform() const noexcept { return uniform_; }
  tensor_view<const T, 3> operator[](index_t b) const { return uniform_ ? four_[b] : ragged_[static_cast<std::size_t>(b)]; }
  long long stride_bytes() const noexcept {
    return uniform_ ? static_cast<long long>(four_.stride(0)) * static_cast<long long>(sizeof(T)) : 0;
  }
  /// Samples whose checks must run on the host: one for a uniform batch (all alike), else all.
  index_t distinct() const noexcept { return uniform_ ? (size() > 0 ? 1 : 0) : size(); }

  /// Tables over the batch, sample b described by desc_of(b, view of b).
  template <class DescOf>
  auto tables(DescOf desc_of) const {
    auto f = [this, desc_of](index_t b) { return desc_of(b, (*this)[b]); };
    return make_tables(size(), uniform_, stride_bytes(), f);
  }

 private:
  tensor_view<const T, 4> four_{};
  std::span<const tensor_view<const T, 3>> ragged_{};
  bool uniform_;
};

/// run_batch's checks of the outputs (same messages as the CPU backend).
template <class Result>
void check_outputs(const selection_batch& out, std::span<Result> results, index_t batch, std::string_view method) {
  detail::check_selection_batch(out, batch, method);
  if (!results.empty() && static_cast<index_t>(results.size()) != batch) {
    detail::fail(errc::shape_mismatch, std::string(method) + ".results.size()", results.size(),
                 "must be 0 or the batch size " + std::to_string(batch));
  }
}

/// Device pointer of row 0 of the selection output and its row stride.
inline token_index* out_rows(const selection_batch& out) { return out.indices.data(); }
inline long long out_stride(const selection_batch& out) { return static_cast<long long>(out.indices.stride(0)); }

/// Tables over the rows of a [batch, n] score view (one uniform table per launch).
template <class T>
auto score_tables(const tensor_view<const T, 2>& scores) {
  window_desc w;
  w.heads = 1;
  w.rows = 1;
  w.cols = to_int(scores.extent(1), "scores.extent(1)");
  w.sj = scores.stride(1);
  w.data = scores.data();
  const long long stride = static_cast<long long>(scores.stride(0)) * static_cast<long long>(sizeof(T));
  return make_tables(scores.extent(0), true, stride, [w](index_t b) {
    (void)b;
    return w;
  });
}

TOKENSEL_CUDA_END_DETAIL  // cuda_detail
TOKENSEL_END_NAMESPACE
