// Shared helpers of the CUDA backend tests: device detection (tests skip without a GPU), device
// buffers, random attention maps with ties and strided layouts, and the CPU reference types.
#pragma once

#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <span>
#include <utility>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "tokensel/cuda/core/element.cuh"
#include "tokensel/cuda/core/error.cuh"
#include "tokensel/cuda/core/policy.cuh"
#include "tokensel/core/element.hpp"
#include "tokensel/core/batch.hpp"
#include "tokensel/core/tensor_view.hpp"

namespace tokensel_test {

/// Empty when a CUDA device is usable, else why not (the skip message).
inline std::string device_skip_reason() {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string("no usable CUDA device (cudaGetDeviceCount: ") + cudaGetErrorName(e) + ", " +
           cudaGetErrorString(e) + "); the CUDA backend is built but cannot be run here";
  }
  if (count == 0) return "no CUDA device (cudaGetDeviceCount reports 0); the CUDA backend is built but cannot be run here";
  return {};
}

// ---- parity bookkeeping ---------------------------------------------------------------------
// The test executables ignore it. tokensel_cuda_parity (parity_main.cu: the parity tests of every
// suite in one process) reads it: TOKENSEL_PARITY_SCALE multiplies each parity loop's case count,
// every case is counted under its test suite, and while recording is on the host bytes of every
// upload of the current case are kept, so the first failing case can be written out with its inputs.

/// One host-to-device upload of the current case.
struct recorded_upload {
  std::string dtype;  ///< numpy descr: <f4, <f2, <i4, |u1, ...; bf16 as <u2 (raw bits)
  std::size_t element_size = 0;
  std::vector<unsigned char> bytes;
};

struct parity_state {
  bool recording = false;
  std::map<std::string, long> cases;  ///< per test suite
  std::string current;                ///< suite.test#case of the running case
  std::vector<recorded_upload> uploads;
};

inline parity_state& parity() {
  static parity_state s;
  return s;
}

/// The case count of a parity loop: n times TOKENSEL_PARITY_SCALE (default 1), at most
/// TOKENSEL_PARITY_LIMIT when that is set (the short runs under compute-sanitizer).
inline int parity_cases(int n) {
  static const auto env = [](const char* name, int fallback) {
    const char* e = std::getenv(name);
    const int v = e != nullptr ? std::atoi(e) : fallback;
    return v > 0 ? v : fallback;
  };
  static const int scale = env("TOKENSEL_PARITY_SCALE", 1);
  static const int limit = env("TOKENSEL_PARITY_LIMIT", 1 << 30);
  return std::min(n * scale, limit);
}

/// Marks the start of parity case c of the running test: counts it under its test suite and
/// forgets the previous case's recorded uploads.
inline void parity_case(long c) {
  auto& s = parity();
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const std::string suite = info != nullptr ? info->test_suite_name() : "unknown";
  ++s.cases[suite];
  s.current = suite + "." + (info != nullptr ? info->name() : "unknown") + "#" + std::to_string(c);
  s.uploads.clear();
}

template <class T>
std::string numpy_descr() {
  if constexpr (std::is_same_v<T, float>) return "<f4";
  else if constexpr (std::is_same_v<T, double>) return "<f8";
  else if constexpr (sizeof(T) == 2 && (std::is_same_v<T, Eigen::half> || std::is_same_v<T, __half>)) return "<f2";
  else if constexpr (sizeof(T) == 2 && !std::is_integral_v<T>) return "<u2";  // bfloat16 bits
  else if constexpr (std::is_integral_v<T> && std::is_signed_v<T>) return "<i" + std::to_string(sizeof(T));
  else if constexpr (std::is_integral_v<T>) return (sizeof(T) == 1 ? "|u" : "<u") + std::to_string(sizeof(T));
  else return "|V" + std::to_string(sizeof(T));  // a struct: raw bytes
}

#define TOKENSEL_REQUIRE_DEVICE()                                         \
  do {                                                                    \
    const std::string tokensel_skip_ = ::tokensel_test::device_skip_reason(); \
    if (!tokensel_skip_.empty()) GTEST_SKIP() << tokensel_skip_;          \
  } while (0)

/// Expects call() to throw tokensel::error with this code, naming this parameter.
template <class Call>
void expect_error(Call&& call, tokensel::errc code, const std::string& parameter) {
  try {
    call();
    ADD_FAILURE() << "no throw, expected " << parameter;
  } catch (const tokensel::error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    EXPECT_EQ(e.parameter(), parameter) << e.what();
  }
}

inline void cuda_ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorName(e) + " " + cudaGetErrorString(e));
}

/// Owning device array (tests may allocate; the library may not).
template <class T>
class device_buffer {
 public:
  device_buffer() = default;
  /// Allocates n elements and poisons every byte with 0xFF (NaN for floating types, -1 for
  /// indices and counts), so an output the backend fails to write fails the comparison.
  explicit device_buffer(std::size_t n) : n_(n) {
    if (n > 0) {
      cuda_ok(cudaMalloc(reinterpret_cast<void**>(&p_), n * sizeof(T)), "cudaMalloc");
      fill_bytes(0xFF);
    }
  }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  device_buffer(device_buffer&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr; o.n_ = 0; }
  device_buffer& operator=(device_buffer&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
    return *this;
  }
  ~device_buffer() {
    if (p_ != nullptr) (void)cudaFree(p_);
  }
  T* data() const noexcept { return p_; }
  std::size_t size() const noexcept { return n_; }
  void upload(const std::vector<T>& h) {
    if (h.size() != n_) throw std::runtime_error("upload: size mismatch");
    if (parity().recording) {
      recorded_upload r{numpy_descr<T>(), sizeof(T), {}};
      const auto* b = reinterpret_cast<const unsigned char*>(h.data());
      r.bytes.assign(b, b + n_ * sizeof(T));
      parity().uploads.push_back(std::move(r));
    }
    if (n_ > 0) cuda_ok(cudaMemcpy(p_, h.data(), n_ * sizeof(T), cudaMemcpyHostToDevice), "upload");
  }
  std::vector<T> download() const {
    std::vector<T> h(n_);
    if (n_ > 0) cuda_ok(cudaMemcpy(h.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost), "download");
    return h;
  }
  void fill_bytes(int v) {
    if (n_ > 0) cuda_ok(cudaMemset(p_, v, n_ * sizeof(T)), "memset");
  }

 private:
  T* p_ = nullptr;
  std::size_t n_ = 0;
};

/// Storage type E (float, Eigen::half, Eigen::bfloat16) from fp32.
template <class E>
E to_storage(float x) {
  return static_cast<E>(x);
}

/// Uploads host elements of type E and returns the buffer (bytes identical on both sides).
template <class E>
device_buffer<E> to_device(const std::vector<E>& h) {
  device_buffer<E> d(h.size());
  d.upload(h);
  return d;
}

/// Device type a test passes to the CUDA backend for host storage E: the CUDA types for the
/// 16-bit formats when native is set (the usual case), else E itself (also accepted).
template <class E, bool Native = true>
using device_t = std::conditional_t<Native, tokensel::cuda_detail::device_type_t<E>, E>;

/// Memory layouts the tests cover for a [B, H, N, N] array.
enum class layout { contiguous, padded_rows, heads_inner };

struct layout_info {
  std::size_t elements = 0;
  std::array<tokensel::index_t, 4> strides{};
};

/// Strides of a [B, H, Q, K] array: contiguous; rows padded by 3 elements; or heads innermost but
/// one ([B, Q, H, K] in memory).
inline layout_info make_layout(layout l, tokensel::index_t B, tokensel::index_t H, tokensel::index_t Q,
                               tokensel::index_t K) {
  layout_info li;
  switch (l) {
    case layout::contiguous:
      li.strides = {H * Q * K, Q * K, K, 1};
      li.elements = static_cast<std::size_t>(B * H * Q * K);
      break;
    case layout::padded_rows: {
      const tokensel::index_t ld = K + 3;
      li.strides = {H * Q * ld, Q * ld, ld, 1};
      li.elements = static_cast<std::size_t>(B * H * Q * ld);
      break;
    }
    case layout::heads_inner:
      li.strides = {Q * H * K, K, H * K, 1};
      li.elements = static_cast<std::size_t>(B * Q * H * K);
      break;
  }
  if (li.elements == 0) li.elements = 1;
  return li;
}

/// Kinds of values in a random map.
enum class values { softmax, quantised, constant, logits };

/// Fills a [B, H, Q, K] array (strides li) with random values of the kind v (softmax rows;
/// softmax rounded to multiples of 1/32 for many ties; every entry equal; or raw logits).
template <class E>
void fill_attention(std::vector<E>& data, const layout_info& li, tokensel::index_t B, tokensel::index_t H,
                    tokensel::index_t Q, tokensel::index_t K, values v, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> unit(0.5f, 3.0f);
  std::vector<float> row(static_cast<std::size_t>(K));
  const float constant = 1.0f / static_cast<float>(std::max<tokensel::index_t>(K, 1));
  for (tokensel::index_t b = 0; b < B; ++b) {
    for (tokensel::index_t h = 0; h < H; ++h) {
      const float temperature = unit(rng);
      for (tokensel::index_t i = 0; i < Q; ++i) {
        float mx = -INFINITY;
        for (auto& x : row) {
          x = normal(rng) * temperature;
          mx = std::max(mx, x);
        }
        if (v == values::softmax || v == values::quantised) {
          float sum = 0.0f;
          for (auto& x : row) {
            x = std::exp(x - mx);
            sum += x;
          }
          for (auto& x : row) {
            x /= sum;
            if (v == values::quantised) x = std::round(x * 32.0f) / 32.0f;
          }
        } else if (v == values::constant) {
          for (auto& x : row) x = constant;
        }
        for (tokensel::index_t j = 0; j < K; ++j) {
          const auto off = b * li.strides[0] + h * li.strides[1] + i * li.strides[2] + j * li.strides[3];
          data[static_cast<std::size_t>(off)] = to_storage<E>(row[static_cast<std::size_t>(j)]);
        }
      }
    }
  }
}

/// A batch of attention-like arrays [H, Q_b, K_b] on host and device: one [B, H, Q, K] array
/// when uniform, else one array per sample; the same layout on both sides.
template <class E>
struct attention_batch {
  bool uniform = true;
  tokensel::index_t heads = 1;
  std::vector<tokensel::index_t> q, k;
  std::vector<layout_info> lays;
  std::vector<std::vector<E>> host;
  std::vector<device_buffer<E>> dev;

  attention_batch(bool uniform_, tokensel::index_t heads_, std::vector<tokensel::index_t> q_,
                  std::vector<tokensel::index_t> k_, layout lay, values kind, std::mt19937_64& rng)
      : uniform(uniform_), heads(heads_), q(std::move(q_)), k(std::move(k_)) {
    const auto B = static_cast<tokensel::index_t>(q.size());
    const tokensel::index_t stores = uniform ? 1 : B;
    for (tokensel::index_t s = 0; s < stores; ++s) {
      const auto Q = q[static_cast<std::size_t>(s)], K = k[static_cast<std::size_t>(s)];
      const layout_info li = make_layout(lay, uniform ? B : 1, heads, Q, K);
      std::vector<E> h(li.elements, to_storage<E>(0.0f));
      fill_attention(h, li, uniform ? B : 1, heads, Q, K, kind, rng);
      dev.push_back(to_device(h));
      host.push_back(std::move(h));
      lays.push_back(li);
    }
  }
  tokensel::index_t size() const { return static_cast<tokensel::index_t>(q.size()); }
  const layout_info& lay_of(tokensel::index_t b) const { return lays[uniform ? 0 : static_cast<std::size_t>(b)]; }
  std::array<tokensel::index_t, 3> strides3(tokensel::index_t b) const {
    const auto& li = lay_of(b);
    return {li.strides[1], li.strides[2], li.strides[3]};
  }
  tokensel::index_t offset(tokensel::index_t b) const { return uniform ? b * lays[0].strides[0] : 0; }
  /// Host view of sample b (the CPU reference reads it).
  tokensel::head_attention_view<E> host_view(tokensel::index_t b) const {
    const auto i = static_cast<std::size_t>(b);
    return tokensel::head_attention_view<E>(host[uniform ? 0 : i].data() + offset(b), {heads, q[i], k[i]}, strides3(b));
  }
  /// Device views as D (the CUDA types, or E itself).
  template <class D>
  tokensel::attention_view<D> device_batch() const {
    return tokensel::attention_view<D>(reinterpret_cast<const D*>(dev[0].data()), {size(), heads, q[0], k[0]}, lays[0].strides);
  }
  template <class D>
  std::vector<tokensel::head_attention_view<D>> device_samples() const {
    std::vector<tokensel::head_attention_view<D>> v;
    for (tokensel::index_t b = 0; b < size(); ++b) {
      const auto i = static_cast<std::size_t>(b);
      v.emplace_back(reinterpret_cast<const D*>(dev[uniform ? 0 : i].data()) + offset(b),
                     std::array<tokensel::index_t, 3>{heads, q[i], k[i]}, strides3(b));
    }
    return v;
  }
  /// Writes x at element (sample b, head h, row i, col j) on both sides.
  void poke(tokensel::index_t b, tokensel::index_t h, tokensel::index_t i, tokensel::index_t j, float x) {
    const auto& li = lay_of(b);
    const auto at = static_cast<std::size_t>(offset(b) + h * li.strides[1] + i * li.strides[2] + j * li.strides[3]);
    auto& hs = host[uniform ? 0 : static_cast<std::size_t>(b)];
    hs[at] = to_storage<E>(x);
    dev[uniform ? 0 : static_cast<std::size_t>(b)].upload(hs);
  }
};

/// Selection outputs on the device: indices [B, capacity] (pre-filled with -1) and counts [B].
struct device_selection {
  tokensel::index_t batch, capacity;
  device_buffer<tokensel::token_index> idx, cnt;
  device_selection(tokensel::index_t b, tokensel::index_t cap)
      : batch(b), capacity(cap), idx(static_cast<std::size_t>(std::max<tokensel::index_t>(b * cap, 1))),
        cnt(static_cast<std::size_t>(std::max<tokensel::index_t>(b, 1))) {
    idx.fill_bytes(0xFF);
    cnt.fill_bytes(0xFF);
  }
  tokensel::selection_batch view() const {
    return {tokensel::tensor_view<tokensel::token_index, 2>(idx.data(), {batch, capacity}),
            std::span<tokensel::token_index>(cnt.data(), static_cast<std::size_t>(batch))};
  }
  /// Sample b's indices (counts[b] of them).
  std::vector<std::vector<tokensel::token_index>> rows() const {
    const auto i = idx.download();
    const auto c = cnt.download();
    std::vector<std::vector<tokensel::token_index>> r(static_cast<std::size_t>(batch));
    for (tokensel::index_t b = 0; b < batch; ++b) {
      const auto n = c[static_cast<std::size_t>(b)];
      if (n < 0 || n > capacity) {
        r[static_cast<std::size_t>(b)] = {-12345, n};  // an impossible row that fails any comparison
        continue;
      }
      r[static_cast<std::size_t>(b)].assign(i.begin() + b * capacity, i.begin() + b * capacity + n);
    }
    return r;
  }
};

/// A workspace of the requested size (rounded up) and a policy over it on the default stream.
struct workspace {
  device_buffer<std::uint8_t> bytes;
  tokensel::cuda_policy policy;
  explicit workspace(std::size_t n, cudaStream_t stream = nullptr) : bytes(std::max<std::size_t>(n, 1)) {
    policy = tokensel::cuda_policy{stream, bytes.data(), bytes.size()};
  }
};

/// A fake device pointer for tests of host-side validation (never dereferenced: the call must
/// throw before it launches anything).
template <class T>
T* fake_device_pointer() {
  return reinterpret_cast<T*>(static_cast<std::uintptr_t>(0x100000));
}

}  // namespace tokensel_test
