// tokensel CUDA backend: workspace layout. Every call describes its temporaries once, in a
// function that takes a workspace_plan; workspace_size(...) runs that function on a sizing plan
// (pure host arithmetic, no device access) and the call runs it on the caller's memory, so the
// two can never disagree (CUB's two-phase temporary storage, without the null-pointer call).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "tokensel/cuda/core/abi.cuh"
#include "tokensel/core/config.hpp"
#include "tokensel/cuda/core/error.cuh"
#include "tokensel/cuda/core/policy.cuh"
#include "tokensel/core/error.hpp"

TOKENSEL_BEGIN_NAMESPACE
TOKENSEL_CUDA_BEGIN_DETAIL

class workspace_plan {
 public:
  /// Every region starts on this boundary (coalesced access, any element type).
  static constexpr std::size_t alignment = 256;

  /// A sizing plan: take() returns null pointers and only the offsets are computed.
  workspace_plan() { status_ = take<device_status>(1); }

  /// A plan over the caller's workspace.
  explicit workspace_plan(const cuda_policy& policy)
      : base_(static_cast<std::byte*>(policy.workspace)), capacity_(policy.workspace_bytes), sizing_(false) {
    status_ = take<device_status>(1);
  }

  /// n objects of T (n may be 0: an empty region at the current offset).
  template <class T>
  T* take(std::size_t n) {
    offset_ = (offset_ + alignment - 1) / alignment * alignment;
    T* p = (sizing_ || base_ == nullptr) ? nullptr : reinterpret_cast<T*>(base_ + offset_);
    offset_ += n * sizeof(T);
    return p;
  }

  /// Bytes the layout needs so far (a multiple of nothing in particular; the caller rounds).
  std::size_t bytes() const noexcept { return offset_; }
  bool sizing() const noexcept { return sizing_; }
  device_status* status() const noexcept { return status_; }

  /// Throws unless the caller's workspace is non-null, aligned and large enough for the layout.
  void require(std::string_view method) const {
    const std::string name = std::string(method) + ".policy.workspace";
    if (base_ == nullptr) {
      detail::fail(errc::invalid_argument, name, "null: size it with " + std::string(method) + "::workspace_size(...)");
    }
    if (reinterpret_cast<std::uintptr_t>(base_) % alignment != 0) {
      detail::fail(errc::invalid_argument, name, reinterpret_cast<std::uintptr_t>(base_),
                   "must be " + std::to_string(alignment) + "-byte aligned");
    }
    if (capacity_ < offset_) {
      detail::fail(errc::invalid_argument, std::string(method) + ".policy.workspace_bytes", capacity_,
                   "below the " + std::to_string(offset_) + " bytes workspace_size(...) reports for this call");
    }
  }

 private:
  std::byte* base_ = nullptr;
  std::size_t capacity_ = 0;
  std::size_t offset_ = 0;
  bool sizing_ = true;
  device_status* status_ = nullptr;
};

TOKENSEL_CUDA_END_DETAIL  // cuda_detail
TOKENSEL_END_NAMESPACE
