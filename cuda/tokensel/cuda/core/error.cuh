// tokensel CUDA backend: errors.
//
// * Bad arguments (shapes, ratios, counts, output sizes) are checked on the host before anything
//   is launched, by the same checks and with the same messages as the CPU backend.
// * A failing CUDA runtime call throws tokensel::error with errc::cuda_runtime, parameter
//   "cuda.<call>" and the CUDA error name and string.
// * Problems that depend on the data (NaN/Inf attention or scores, out-of-range gather indices)
//   are found on the device, where nothing can be thrown without a host synchronisation. Each
//   call records the first such problem (lowest sample, then pipeline order, then lowest index:
//   the one the sequential CPU backend meets first; deterministic) in a status word at the start of its workspace; the affected samples report
//   count 0. After synchronising, status(policy) reads it and throw_on_error(policy) throws a
//   tokensel::error with the code the CPU backend would have used (errc::non_finite, or
//   errc::invalid_argument for indices), naming the sample, the quantity and the index.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <cuda_runtime_api.h>

#include "tokensel/cuda/core/abi.cuh"
#include "tokensel/core/config.hpp"
#include "tokensel/cuda/core/policy.cuh"
#include "tokensel/core/error.hpp"

TOKENSEL_BEGIN_NAMESPACE

TOKENSEL_CUDA_BEGIN_DETAIL

/// Throws tokensel::error for a failed CUDA runtime call.
inline void check(cudaError_t e, std::string_view what) {
  if (e == cudaSuccess) return;
  std::string msg = "tokensel: cuda.";
  msg.append(what).append(" = ").append(cudaGetErrorName(e)).append(": ").append(cudaGetErrorString(e));
  throw error(errc::cuda_runtime, "cuda." + std::string(what), std::move(msg));
}

/// Checks the launch that was just enqueued (configuration errors surface here).
inline void check_launch(std::string_view kernel) {
  check(cudaGetLastError(), "launch(" + std::string(kernel) + ")");
}

/// Where a data-dependent problem was found. Within every pipeline the numbers grow with the
/// stage order, so the smallest recorded key is the problem the sequential CPU backend meets
/// first (it runs sample by sample).
enum class status_site : unsigned {
  none = 0,
  reduced_map = 1,        ///< a head-reduced attention value; index = (window row << 16) | column
  contribution = 2,       ///< contribution_degree.r[i]; aux = layer
  row_mean = 3,           ///< variance_axis.row_mean[i]
  column_mean = 4,        ///< variance_axis.column_mean[i]
  scores = 5,             ///< scores of a selection (top_k.scores[i], row scores, ...)
  complementary_row = 6,  ///< freepruner: M[p, j] of the complementary layer; index = (p << 16) | j
  index_range = 7,        ///< gather/scatter: indices[r] outside [0, n)
  iqr_value = 8,          ///< iqr.x[i]
  keys_value = 9,         ///< visionzip: keys[h, t, c] of token t; index = (t << 16) | c
  qk_statistic = 10,      ///< a statistic computed from Q/K (qk_statistics.cuh); aux = which, index = position
  feature_value = 11,     ///< divprune/dart/vispruner input value; aux = feature_input, index = (row << 16) | column
  feature_norm = 12,      ///< divprune/dart/vispruner: a row's norm overflows fp32; aux = feature_input, index = row
};

/// The status word at the start of every workspace: the key of the first problem (all ones when
/// there is none). Key, most significant bits first: sample (16), site (6), aux (10: a layer),
/// index (32).
struct device_status {
  unsigned long long first;
  unsigned long long problems;  ///< number of recordings (saturating use only: 0 means none)
};

inline constexpr unsigned long long no_problem = ~0ull;

__host__ __device__ constexpr unsigned long long status_key(status_site site, unsigned aux, unsigned sample,
                                                            unsigned index) {
  return (static_cast<unsigned long long>(sample > 0xFFFFu ? 0xFFFFu : sample) << 48) |
         (static_cast<unsigned long long>(static_cast<unsigned>(site) & 0x3Fu) << 42) |
         (static_cast<unsigned long long>(aux & 0x3FFu) << 32) | static_cast<unsigned long long>(index);
}

#if defined(__CUDACC__)
/// Records a problem (keeps the smallest key).
__device__ __forceinline__ void record(device_status* s, status_site site, unsigned aux, unsigned sample,
                                       unsigned index) {
  if (s == nullptr) return;
  atomicMin(&s->first, status_key(site, aux, sample, index));
  atomicAdd(&s->problems, 1ull);
}
#endif

/// Resets the status word of a call (first thing every call enqueues).
inline void reset_status(device_status* s, cudaStream_t stream) {
  check(cudaMemsetAsync(s, 0xFF, sizeof(unsigned long long), stream), "cudaMemsetAsync(status)");
  check(cudaMemsetAsync(&s->problems, 0, sizeof(unsigned long long), stream), "cudaMemsetAsync(status)");
}

TOKENSEL_CUDA_END_DETAIL  // cuda_detail

/// The first data-dependent problem of the last call that used a workspace.
struct cuda_status {
  bool ok = true;
  errc code = errc::non_finite;
  index_t sample = 0;     ///< batch position of the sample
  index_t index = 0;      ///< element (vector index; for maps the column, with row below)
  index_t row = -1;       ///< map row (reduced_map, complementary_row), else -1
  index_t layer = -1;     ///< freepruner layer, else -1
  std::string parameter;  ///< e.g. "variance_axis.row_mean[17]"
  std::string message;    ///< "tokensel: <parameter> (sample b): <problem>"
};

TOKENSEL_CUDA_BEGIN_DETAIL

/// The sites of the feature-similarity methods (aux: which input, cuda_detail::feature_input, in
/// the order the CPU reads them), or an unknown code: sets st's parameter, row and index; returns
/// the problem.
inline std::string decode_other_site(cuda_status& st, status_site site, index_t aux, std::uint32_t index) {
  if (site != status_site::feature_value && site != status_site::feature_norm) {
    st.parameter = "cuda.status";
    return "unknown problem code";
  }
  const bool norm = site == status_site::feature_norm;
  static constexpr const char* names[] = {"dart.norm_weight", "dart.keys", "dart.hidden", "divprune.features",
                                          "vispruner.attention", "vispruner.features"};
  const std::string name = aux < 6 ? names[aux] : "features";
  if (norm) {
    st.row = static_cast<index_t>(index);
    st.index = 0;
    st.parameter = name + "[" + std::to_string(st.row) + ", :]";
    return "the row's norm overflows fp32";
  }
  if (aux == 0 || aux == 4) {
    st.parameter = name + (aux == 4 ? "[:, 0, " : "[") + std::to_string(st.index) + "]";
    return aux == 4 ? "CLS attention must be finite" : "must be finite";
  }
  st.row = static_cast<index_t>(index >> 16);
  st.index = static_cast<index_t>(index & 0xFFFFu);
  st.parameter = name + "[" + (aux == 1 ? "token " : "") + std::to_string(st.row) + ", " + std::to_string(st.index) + "]";
  return aux == 1 ? "values must be finite (index: element of the head-major key row)" : "values must be finite";
}

inline cuda_status decode_status(unsigned long long key) {
  cuda_status st;
  if (key == no_problem) return st;
  st.ok = false;
  st.sample = static_cast<index_t>(key >> 48);
  const auto site = static_cast<status_site>((key >> 42) & 0x3Fu);
  const auto aux = static_cast<index_t>((key >> 32) & 0x3FFu);
  const auto index = static_cast<std::uint32_t>(key & 0xFFFFFFFFu);
  st.index = static_cast<index_t>(index);
  std::string problem = "not finite";
  auto at = [](std::string_view name, index_t i) { return std::string(name) + "[" + std::to_string(i) + "]"; };
  switch (site) {
    case status_site::reduced_map:
      st.row = static_cast<index_t>(index >> 16);
      st.index = static_cast<index_t>(index & 0xFFFFu);
      st.parameter = "attention[" + std::to_string(st.row) + ", " + std::to_string(st.index) + "]";
      problem = "attention values must be finite (head-reduced value at this row and column of the window read)";
      break;
    case status_site::contribution:
      st.layer = aux == 0x3FF ? -1 : aux;
      st.parameter = (aux == 0x3FF ? std::string() : "freepruner.attention[layer " + std::to_string(aux) + "]: ") +
                     at("contribution_degree.r", st.index);
      problem = "column " + std::to_string(st.index) + " of the map holds NaN/Inf (or its sum overflows)";
      break;
    case status_site::row_mean:
      st.parameter = at("variance_axis.row_mean", st.index);
      problem = "scores must be finite";
      break;
    case status_site::column_mean:
      st.parameter = at("variance_axis.column_mean", st.index);
      problem = "scores must be finite";
      break;
    case status_site::scores:
      st.parameter = at("top_k.scores", st.index);
      problem = "scores must be finite";
      break;
    case status_site::complementary_row:
      st.layer = aux;
      st.row = static_cast<index_t>(index >> 16);
      st.index = static_cast<index_t>(index & 0xFFFFu);
      st.parameter = "freepruner.attention[layer " + std::to_string(aux) + "].row(" + std::to_string(st.row) + ")[" +
                     std::to_string(st.index) + "]";
      problem = "reduced attention must be finite";
      break;
    case status_site::index_range:
      st.code = errc::invalid_argument;
      st.parameter = at("indices", st.index);
      problem = "index outside the rows of the source";
      break;
    case status_site::iqr_value:
      st.parameter = at("iqr.x", st.index);
      problem = "values must be finite";
      break;
    case status_site::keys_value:
      st.row = static_cast<index_t>(index >> 16);
      st.index = static_cast<index_t>(index & 0xFFFFu);
      st.parameter = "visionzip.keys[token " + std::to_string(st.row) + ", " + std::to_string(st.index) + "]";
      problem = "values must be finite (some head)";
      break;
    case status_site::qk_statistic: {
      static constexpr const char* names[] = {"qk.row_sums", "qk.column_sums", "qk.diagonal", "qk.rows"};
      if (aux == 3) {
        st.row = static_cast<index_t>(index >> 16);
        st.index = static_cast<index_t>(index & 0xFFFFu);
        st.parameter = "qk.rows[" + std::to_string(st.row) + ", " + std::to_string(st.index) + "]";
      } else {
        st.parameter = at(aux < 3 ? names[aux] : "qk.statistic", st.index);
      }
      problem = "not finite: the queries, keys or lse hold NaN/Inf (or the logits overflow)";
      break;
    }
    default:  // the feature-similarity methods' sites, or an unknown code
      problem = decode_other_site(st, site, aux, index);
      break;
  }
  st.message = "tokensel: " + st.parameter + " (sample " + std::to_string(st.sample) + "): " + problem;
  return st;
}

TOKENSEL_CUDA_END_DETAIL  // cuda_detail

/// Reads the status word of policy.workspace: synchronises policy.stream (call it after the
/// work, outside any graph capture).
inline cuda_status status(const cuda_policy& policy) {
  if (policy.workspace == nullptr || policy.workspace_bytes < sizeof(cuda_detail::device_status)) {
    detail::fail(errc::invalid_argument, "cuda_policy.workspace", "no workspace to read a status from");
  }
  unsigned long long key = 0;
  cuda_detail::check(cudaMemcpyAsync(&key, policy.workspace, sizeof(key), cudaMemcpyDeviceToHost, policy.stream),
                     "cudaMemcpyAsync(status)");
  cuda_detail::check(cudaStreamSynchronize(policy.stream), "cudaStreamSynchronize");
  return cuda_detail::decode_status(key);
}

/// Throws the recorded problem of the last call on policy.workspace, if any (synchronises).
inline void throw_on_error(const cuda_policy& policy) {
  const cuda_status st = status(policy);
  if (!st.ok) throw error(st.code, st.parameter, st.message);
}

TOKENSEL_END_NAMESPACE
