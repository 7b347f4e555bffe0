// tokensel CUDA backend internals: single-sample calls. A single-sample call runs the method's
// batched path on a batch of one (the same kernels, so the same results as the batch-of-1 call).
// The CPU returns the sample's result by value; on the device that would need a host
// synchronisation, so the result goes, like the batched calls' results, to device memory the
// caller names (optional). The batched path needs a device count slot for its sample: it lives in
// the workspace, right after the batch-of-1 layout, and workspace_size(...) of the single call
// includes it.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <string_view>

#include "tokensel/cuda/core/abi.cuh"
#include "tokensel/core/batch.hpp"
#include "tokensel/core/config.hpp"
#include "tokensel/cuda/core/policy.cuh"
#include "tokensel/cuda/core/workspace.cuh"
#include "tokensel/core/error.hpp"
#include "tokensel/core/tensor_view.hpp"

TOKENSEL_BEGIN_NAMESPACE
TOKENSEL_CUDA_BEGIN_DETAIL

/// Where the count slot of a single-sample call starts, after `batch_bytes` of batch-of-1 layout.
inline std::size_t single_count_offset(std::size_t batch_bytes) noexcept {
  constexpr std::size_t a = workspace_plan::alignment;
  return (batch_bytes + a - 1) / a * a;
}

/// Workspace bytes of a single-sample call whose batch-of-1 call needs batch_bytes.
inline std::size_t single_bytes(std::size_t batch_bytes) noexcept {
  return single_count_offset(batch_bytes) + sizeof(token_index);
}

/// The one-row selection_batch of a single-sample call: row 0 is `out` (device memory), its count
/// the workspace slot. Throws unless the caller's workspace holds the slot (checked before the
/// batched call's argument checks: the slot's address is needed to describe the output).
inline selection_batch single_output(const cuda_policy& policy, std::size_t batch_bytes, std::span<token_index> out,
                                     std::string_view method) {
  const std::size_t need = single_bytes(batch_bytes);
  if (policy.workspace == nullptr) {
    detail::fail(errc::invalid_argument, std::string(method) + ".policy.workspace",
                 "null: size it with " + std::string(method) + "::workspace_size(...)");
  }
  if (policy.workspace_bytes < need) {
    detail::fail(errc::invalid_argument, std::string(method) + ".policy.workspace_bytes", policy.workspace_bytes,
                 "below the " + std::to_string(need) + " bytes workspace_size(...) reports for this call");
  }
  auto* count = reinterpret_cast<token_index*>(static_cast<std::byte*>(policy.workspace) + single_count_offset(batch_bytes));
  return selection_batch{tensor_view<token_index, 2>(out.data(), {1, static_cast<index_t>(out.size())}, std::string(method) + ".out"),
                         std::span<token_index>(count, 1)};
}

/// The batched call's results span over an optional device result.
template <class Result>
std::span<Result> single_result(Result* device_result) noexcept {
  return device_result == nullptr ? std::span<Result>() : std::span<Result>(device_result, 1);
}

/// A batch of one from a single object (the ragged overloads take spans).
template <class T>
std::span<const T> one(const T& v) noexcept {
  return std::span<const T>(&v, 1);
}

TOKENSEL_CUDA_END_DETAIL  // cuda_detail
TOKENSEL_END_NAMESPACE
