// tokensel: batched calls. A batch is either one 4-D view [batch, heads, q, k] (every sample the
// same size) or a span of per-sample 3-D views (ragged: AnyRes views, video frames, mixed
// images). Outputs go to a caller-owned selection_batch; statistics stay per sample.
#pragma once

#include <span>
#include <string>
#include <type_traits>

#include "tokensel/core/config.hpp"
#include "tokensel/detail/parallel.hpp"
#include "tokensel/detail/validate.hpp"
#include "tokensel/core/policy.hpp"
#include "tokensel/core/tensor_view.hpp"

TOKENSEL_BEGIN_NAMESPACE

/// Caller-owned output of a batched selection: sample b writes counts[b] indices at
/// indices(b, 0 .. counts[b]). Each row must be unit-stride and have room for the sample's count
/// (the method's keep_count, or n for adaptive methods).
struct [[nodiscard]] selection_batch {
  tensor_view<token_index, 2> indices;  ///< [batch, capacity]
  std::span<token_index> counts;        ///< [batch]
};

namespace detail {

template <class T>
index_t batch_size(const tensor_view<const T, 4>& batch) noexcept { return batch.extent(0); }
template <class T>
tensor_view<const T, 3> batch_sample(const tensor_view<const T, 4>& batch, index_t b) noexcept { return batch[b]; }

template <class T>
index_t batch_size(std::span<const tensor_view<const T, 3>> batch) noexcept { return static_cast<index_t>(batch.size()); }
template <class T>
tensor_view<const T, 3> batch_sample(std::span<const tensor_view<const T, 3>> batch, index_t b) noexcept { return batch[b]; }

/// Checks the output against the batch size.
inline void check_selection_batch(const selection_batch& out, index_t batch, std::string_view method) {
  if (out.indices.extent(0) != batch) fail(errc::shape_mismatch, std::string(method) + ".out.indices.extent(0)", out.indices.extent(0), "must equal the batch size " + std::to_string(batch));
  if (static_cast<index_t>(out.counts.size()) != batch) fail(errc::shape_mismatch, std::string(method) + ".out.counts.size()", out.counts.size(), "must equal the batch size " + std::to_string(batch));
  if (!out.indices.inner_contiguous()) fail(errc::invalid_argument, std::string(method) + ".out.indices.stride(1)", out.indices.stride(1), "rows must be unit-stride");
}

/// Runs one_sample(b, std::span<token_index> row[, inner_policy]) -> Result for every sample;
/// writes counts[b] = result.count and, when results is non-empty, results[b] = result.
/// Samples run in parallel under threaded_policy; a batch of one hands the policy to the sample
/// instead (when one_sample takes a third, policy argument), so one image still uses every thread.
template <class Policy, class Result, class OneSample>
void run_batch(const Policy& policy, index_t batch, const selection_batch& out, std::span<Result> results,
               std::string_view method, OneSample&& one_sample) {
  check_selection_batch(out, batch, method);
  if (!results.empty() && static_cast<index_t>(results.size()) != batch) {
    fail(errc::shape_mismatch, std::string(method) + ".results.size()", results.size(), "must be 0 or the batch size " + std::to_string(batch));
  }
  const index_t capacity = out.indices.extent(1);
  auto row_of = [&](index_t b) {
    return std::span<token_index>(capacity == 0 ? nullptr : &out.indices(b, 0), static_cast<std::size_t>(capacity));
  };
  constexpr bool takes_policy =
      std::is_invocable_v<OneSample&, index_t, std::span<token_index>, const sequential_policy&>;
  if constexpr (takes_policy) {
    if (batch == 1) {
      Result r = one_sample(index_t{0}, row_of(0), policy);
      out.counts[0] = static_cast<token_index>(r.count);
      if (!results.empty()) results[0] = r;
      return;
    }
  }
  parallel_for(policy, batch, [&](index_t b) {
    Result r = [&] {
      if constexpr (takes_policy) {
        return one_sample(b, row_of(b), sequential_policy{});
      } else {
        return one_sample(b, row_of(b));
      }
    }();
    out.counts[b] = static_cast<token_index>(r.count);
    if (!results.empty()) results[b] = r;
  });
}

}  // namespace detail
TOKENSEL_END_NAMESPACE
