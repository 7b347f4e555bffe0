// tokensel CUDA backend internals: how a batch reaches the kernels without a host-to-device copy.
//
// A kernel gets the batch as a by-value parameter: a table of per-sample windows (device pointer
// of the sample's data, extents, strides, and a few per-sample integers of the method). A 4-D
// batch [batch, heads, q, k] is one "uniform" table (sample b = entry 0 shifted by b batch
// strides), so every stage is one launch for the whole batch. A ragged batch (a span of 3-D
// views) fills up to table_capacity entries per table (2 KiB, within the classic 4 KiB parameter
// limit): one launch per stage for up to 32 samples, ceil(batch / 32) beyond (fewer per table
// for larger descriptors, see table_capacity_for).
#pragma once

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <type_traits>

#include <cuda_runtime_api.h>

#include "tokensel/cuda/core/abi.cuh"
#include "tokensel/core/config.hpp"
#include "tokensel/core/error.hpp"
#include "tokensel/core/tensor_view.hpp"

TOKENSEL_BEGIN_NAMESPACE
TOKENSEL_CUDA_BEGIN_DETAIL

/// An extent or count as the kernels' int; throws errc::unsupported beyond INT_MAX (the CPU
/// backend has no such limit, but no real attention map comes near it).
inline int to_int(index_t v, std::string_view name) {
  if (v < 0 || v > INT_MAX) {
    detail::fail(errc::unsupported, name, v, "outside the CUDA backend's int range [0, 2147483647]");
  }
  return static_cast<int>(v);
}

/// Elements of a workspace region: the product of the factors (each >= 0); throws instead of
/// wrapping around.
inline std::size_t count_of(std::initializer_list<index_t> factors) {
  std::size_t n = 1;
  for (const index_t f : factors) {
    const auto u = static_cast<std::size_t>(f < 0 ? 0 : f);
    if (u != 0 && n > (SIZE_MAX / 64) / u) {
      detail::fail(errc::unsupported, "cuda.workspace", "the workspace size overflows size_t");
    }
    n *= u;
  }
  return n;
}

/// One sample's window of an attention-like array [heads, rows, cols], plus method integers.
struct window_desc {
  const void* data = nullptr;  ///< element (0, 0, 0) of the window
  long long sh = 0, si = 0, sj = 0;  ///< element strides of heads, rows, columns
  int heads = 0, rows = 0, cols = 0;
  int p0 = 0, p1 = 0, p2 = 0, p3 = 0;  ///< per-sample integers (keep count, grid, ...)
  int row0 = 0, col0 = 0;              ///< where the window starts in the sample (for messages)

  /// Sample s of a uniform batch: this window shifted by s batch strides.
  __host__ __device__ window_desc shifted(int s, long long batch_stride_bytes) const {
    window_desc w = *this;
    if (w.data != nullptr) w.data = static_cast<const char*>(w.data) + static_cast<long long>(s) * batch_stride_bytes;
    return w;
  }
};

inline constexpr int table_capacity = 32;
inline constexpr int max_uniform_chunk = 65535;  // grid.y limit

/// Entries per table for a descriptor type: up to table_capacity, within the 4 KiB limit.
template <class Desc>
inline constexpr int table_capacity_for =
    static_cast<int>(std::min<std::size_t>(table_capacity, (4000 - 64) / sizeof(Desc)));

/// The samples of one launch. Desc is window_desc for the map kernels; a method with several
/// arrays per sample (VisionZip) brings its own descriptor with the same shifted(s, bytes).
template <class Desc>
struct basic_sample_table {
  Desc d[table_capacity_for<Desc>];
  long long batch_stride_bytes = 0;  ///< uniform tables: distance between consecutive samples' data
  int count = 0;                     ///< samples in this launch
  int first = 0;                     ///< batch position of entry 0
  int uniform = 0;                   ///< 1: sample s is d[0] shifted by s * batch_stride_bytes

  __host__ __device__ Desc get(int s) const { return uniform != 0 ? d[0].shifted(s, batch_stride_bytes) : d[s]; }
  /// Largest f(entry) over the table (grid sizes).
  template <class F>
  int max_of(F f) const {
    int m = 0;
    for (int s = 0; s < (uniform != 0 ? 1 : count); ++s) m = std::max(m, static_cast<int>(f(d[s])));
    return m;
  }
  int max_rows() const {
    return max_of([](const Desc& w) { return w.rows; });
  }
  int max_cols() const {
    return max_of([](const Desc& w) { return w.cols; });
  }
};
using sample_table = basic_sample_table<window_desc>;
static_assert(sizeof(sample_table) <= 4000, "kernel parameter tables must stay within 4 KiB");

/// A batch as tables: uniform (desc_of(0) shifted by stride_bytes) or ragged (desc_of(b) each).
/// each(f) calls f(const sample_table&) once per launch-sized chunk; tables are rebuilt per
/// stage (a few hundred bytes of host work), so nothing is allocated.
template <class DescOf>
class batch_tables {
 public:
  batch_tables(index_t batch, bool uniform, long long stride_bytes, DescOf desc_of)
      : batch_(batch), uniform_(uniform), stride_bytes_(stride_bytes), desc_of_(desc_of) {
    (void)to_int(batch, "batch");
  }

  index_t size() const noexcept { return batch_; }

  template <class F>
  void each(F&& f) const {
    using table_t = basic_sample_table<std::decay_t<decltype(desc_of_(index_t{}))>>;
    constexpr int capacity = table_capacity_for<std::decay_t<decltype(desc_of_(index_t{}))>>;
    if (uniform_) {
      for (index_t first = 0; first < batch_; first += max_uniform_chunk) {
        table_t t;
        t.uniform = 1;
        t.first = static_cast<int>(first);
        t.count = static_cast<int>(std::min<index_t>(max_uniform_chunk, batch_ - first));
        t.batch_stride_bytes = stride_bytes_;
        t.d[0] = desc_of_(first);
        f(static_cast<const table_t&>(t));
      }
      return;
    }
    for (index_t first = 0; first < batch_; first += capacity) {
      table_t t;
      t.first = static_cast<int>(first);
      t.count = static_cast<int>(std::min<index_t>(capacity, batch_ - first));
      for (int s = 0; s < t.count; ++s) t.d[s] = desc_of_(first + s);
      f(static_cast<const table_t&>(t));
    }
  }

 private:
  index_t batch_;
  bool uniform_;
  long long stride_bytes_;
  DescOf desc_of_;
};

template <class DescOf>
batch_tables<DescOf> make_tables(index_t batch, bool uniform, long long stride_bytes, DescOf desc_of) {
  return batch_tables<DescOf>(batch, uniform, stride_bytes, desc_of);
}

/// The window [heads, rows, cols] of a 3-D view starting at (0, row0, col0).
template <class T>
window_desc window_of(const tensor_view<const T, 3>& v, index_t row0, index_t rows, index_t col0, index_t cols) {
  window_desc w;
  w.heads = to_int(v.extent(0), "attention.extent(0)");
  w.rows = to_int(rows, "attention.rows");
  w.cols = to_int(cols, "attention.cols");
  w.sh = v.stride(0);
  w.si = v.stride(1);
  w.sj = v.stride(2);
  w.row0 = to_int(row0, "attention.row0");
  w.col0 = to_int(col0, "attention.col0");
  w.data = (v.data() == nullptr || rows == 0 || cols == 0) ? v.data() : static_cast<const void*>(&v(0, row0, col0));
  return w;
}

inline unsigned blocks_for(index_t items, int per_block) {
  return static_cast<unsigned>((items + per_block - 1) / per_block);
}

TOKENSEL_CUDA_END_DETAIL  // cuda_detail
TOKENSEL_END_NAMESPACE
