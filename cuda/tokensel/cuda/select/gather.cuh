// tokensel CUDA backend: order-preserving gather of kept feature rows and the inverse scatter,
// batched (tokensel/gather.hpp per sample). Sample b moves counts[b] rows named by
// indices(b, 0 .. counts[b]) (a selection_batch, e.g. the output of a selection call, read on
// the device: no host round trip between selecting and gathering). Element types may differ
// (converted through fp32, round to nearest even). An index outside [0, n) is skipped and
// reported through status(policy) (errc::invalid_argument), as the CPU would throw.
#pragma once

#include <cstddef>
#include <string>
#include <type_traits>

#include "tokensel/cuda/core/abi.cuh"
#include "tokensel/core/batch.hpp"
#include "tokensel/core/config.hpp"
#include "tokensel/cuda/detail/batch.cuh"
#include "tokensel/cuda/detail/launch.cuh"
#include "tokensel/cuda/core/element.cuh"
#include "tokensel/cuda/core/error.cuh"
#include "tokensel/cuda/core/policy.cuh"
#include "tokensel/cuda/core/workspace.cuh"
#include "tokensel/select/gather.hpp"

TOKENSEL_BEGIN_NAMESPACE
TOKENSEL_CUDA_BEGIN_DETAIL

struct rows3 {
  const void* data;
  long long s0, s1, s2;
  int extent1;
};

inline constexpr int gather_block = 128;

/// gather (Scatter = false): dst(b, r, :) = src(b, idx[b, r], :); scatter: dst(b, idx[b, r], :) =
/// src(b, r, :); r < counts[b], one block per (r, b).
template <class S, class D, bool Scatter>
__global__ void __launch_bounds__(gather_block) move_rows_kernel(const rows3 src, const rows3 dst, int d,
                                                                 const token_index* idx, long long idx_stride,
                                                                 const token_index* counts, device_status* status) {
  const int r = static_cast<int>(blockIdx.x), b = static_cast<int>(blockIdx.y);
  if (r >= counts[b]) return;
  const int i = idx[b * idx_stride + r];
  const int limit = Scatter ? dst.extent1 : src.extent1;
  if (i < 0 || i >= limit) {
    if (threadIdx.x == 0) record(status, status_site::index_range, 0, static_cast<unsigned>(b), static_cast<unsigned>(r));
    return;
  }
  const int from = Scatter ? r : i, to = Scatter ? i : r;
  const S* s = static_cast<const S*>(src.data) + b * src.s0 + from * src.s1;
  D* o = static_cast<D*>(const_cast<void*>(dst.data)) + b * dst.s0 + to * dst.s1;
  for (int c = static_cast<int>(threadIdx.x); c < d; c += gather_block) {
    if constexpr (std::is_same_v<S, D>) {
      o[c * dst.s2] = s[c * src.s2];
    } else {
      o[c * dst.s2] = from_f32<D>(to_f32(s[c * src.s2]));
    }
  }
}

template <class S, class D, bool Scatter>
void move_rows(const cuda_policy& policy, const tensor_view<const S, 3>& src, const selection_batch& indices,
               const tensor_view<D, 3>& dst, std::string_view name) {
  const index_t B = src.extent(0), cap = indices.indices.extent(1), d = src.extent(2);
  detail::check_selection_batch(indices, B, name);
  const std::string n(name);
  if (dst.extent(0) != B) detail::fail(errc::shape_mismatch, n + ".dst.extent(0)", dst.extent(0), "must equal the batch size " + std::to_string(B));
  if (dst.extent(2) != d) detail::fail(errc::shape_mismatch, n + ".dst.extent(2)", dst.extent(2), "must equal src.extent(2) = " + std::to_string(d));
  const index_t moved = Scatter ? src.extent(1) : dst.extent(1);  // rows r the selection may name
  if (moved < cap) {
    detail::fail(errc::shape_mismatch, n + (Scatter ? ".src.extent(1)" : ".dst.extent(1)"), moved,
                 "below the selection capacity " + std::to_string(cap));
  }
  workspace_plan plan(policy);
  plan.require(name);
  if (B == 0 || cap == 0) return;
  reset_status(plan.status(), policy.stream);
  using SD = device_type_t<S>;
  using DD = device_type_t<std::remove_cv_t<D>>;
  const rows3 s{src.data(), src.stride(0), src.stride(1), src.stride(2), to_int(src.extent(1), n + ".src.extent(1)")};
  const rows3 o{dst.data(), dst.stride(0), dst.stride(1), dst.stride(2), to_int(dst.extent(1), n + ".dst.extent(1)")};
  for (index_t first = 0; first < B; first += max_uniform_chunk) {
    const auto count = static_cast<unsigned>(std::min<index_t>(max_uniform_chunk, B - first));
    rows3 s_chunk = s, o_chunk = o;
    s_chunk.data = static_cast<const SD*>(s.data) + first * s.s0;
    o_chunk.data = static_cast<const DD*>(o.data) + first * o.s0;
    move_rows_kernel<SD, DD, Scatter><<<dim3(static_cast<unsigned>(cap), count), gather_block, 0, policy.stream>>>(
        s_chunk, o_chunk, to_int(d, n + ".src.extent(2)"), indices.indices.data() + first * indices.indices.stride(0),
        indices.indices.stride(0), indices.counts.data() + first, plan.status());
    check_launch(name);
  }
}

TOKENSEL_CUDA_END_DETAIL  // cuda_detail

/// Workspace bytes of gather_rows / scatter_rows (cuda_policy): the status word.
[[nodiscard]] inline std::size_t gather_workspace_size() {
  cuda_detail::workspace_plan plan;
  return plan.bytes();
}

/// dst(b, r, :) = src(b, indices(b, r), :) for r < counts[b]: src [batch, n, d], dst
/// [batch, >= capacity, d] (device, any strides).
template <cuda_element S, cuda_element D>
void gather_rows(const cuda_policy& policy, const tensor_view<const S, 3>& src, const selection_batch& indices,
                 const tensor_view<D, 3>& dst) {
  cuda_detail::move_rows<S, D, false>(policy, src, indices, dst, "gather_rows");
}

/// dst(b, indices(b, r), :) = src(b, r, :) for r < counts[b] (indices unique per sample; rows of
/// dst not named are left untouched).
template <cuda_element S, cuda_element D>
void scatter_rows(const cuda_policy& policy, const tensor_view<const S, 3>& src, const selection_batch& indices,
                  const tensor_view<D, 3>& dst) {
  cuda_detail::move_rows<S, D, true>(policy, src, indices, dst, "scatter_rows");
}

TOKENSEL_END_NAMESPACE
