// tokensel Python extension: shared helpers. Arrays arrive as nanobind ndarrays (NumPy through the
// buffer protocol / DLPack, PyTorch through DLPack) and become tokensel views over the caller's
// memory: no copy, any strides. Errors are tokensel::error (mapped to tokensel.Error, a ValueError).
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <tokensel/core/budget.hpp>
#include <tokensel/core/element.hpp>
#include <tokensel/core/error.hpp>
#include <tokensel/core/policy.hpp>
#include <tokensel/core/qk_source.hpp>
#include <tokensel/stats/qk_statistics.hpp>  // the Q/K overloads of the statistics (qk_source inputs)
#include <tokensel/core/tensor_view.hpp>
#include <tokensel/core/token_grid.hpp>
#include <tokensel/core/token_range.hpp>

namespace nb = nanobind;

namespace nanobind::detail {
/// The caster of tsp::array (nb::ndarray<nb::ro>): nanobind's, plus NumPy arrays of
/// ml_dtypes.bfloat16. NumPy exports that dtype neither through DLPack nor with a buffer format
/// nanobind reads (it refuses 'E' in a buffer), so such an array is imported as its uint16 view
/// (same memory, shape and strides: no copy) and the imported dtype is set to bfloat16.
template <> struct type_caster<ndarray<ro>> {
  using plain = type_caster<ndarray<ro, unused>>;  // the stock caster of the same configuration
  NB_TYPE_CASTER(ndarray<ro>, plain::Name)

  static bool is_ml_bfloat16(handle src) noexcept {
    if (!hasattr(src, "dtype") || !hasattr(src, "view")) return false;
    try {
      object d = src.attr("dtype");
      return hasattr(d, "type") && str(d.attr("type").attr("__module__")).c_str() == std::string("ml_dtypes") &&
             str(d.attr("name")).c_str() == std::string("bfloat16") && cast<int>(d.attr("itemsize")) == 2;
    } catch (const python_error&) {
      return false;  // the error is cleared by the python_error's destructor
    }
  }

  bool from_python(handle src, uint32_t flags, cleanup_list* cleanup) noexcept {
    plain p;
    if (p.from_python(src, flags, cleanup)) {
      value = ndarray<ro>(p.value);
      return true;
    }
    if (!is_ml_bfloat16(src)) return false;
    object as_u16;
    try {
      as_u16 = src.attr("view")("uint16");
    } catch (const python_error&) {
      return false;
    }
    if (!p.from_python(as_u16, flags, cleanup)) return false;
    value = ndarray<ro>(p.value);  // holds the view, which holds the caller's array
    value.m_dltensor.dtype = dlpack::dtype{static_cast<uint8_t>(dlpack::dtype_code::Bfloat), 16, 1};
    return true;
  }

  static handle from_cpp(const ndarray<ro>& tensor, rv_policy policy, cleanup_list* cleanup) noexcept {
    return plain::from_cpp(ndarray<ro, unused>(tensor), policy, cleanup);
  }
};
}  // namespace nanobind::detail

namespace tsp {

using tokensel::errc;
using tokensel::index_t;
using tokensel::token_index;

/// Any ndarray: dtype, rank and device are checked here, with the library's messages.
using array = nb::ndarray<nb::ro>;
/// A writable ndarray (outputs the caller provides).
using out_array = nb::ndarray<>;
/// Index arrays handed back (NumPy int32, owned by a capsule).
using index_array = nb::ndarray<nb::numpy, token_index>;
/// Float rows handed back (NumPy float32).
using float_array = nb::ndarray<nb::numpy, float>;

enum class dt { f32, f16, bf16 };

inline const char* dt_name(dt d) { return d == dt::f32 ? "f32" : d == dt::f16 ? "f16" : "bf16"; }

[[noreturn]] inline void fail(errc code, const std::string& parameter, const std::string& value, const std::string& problem) {
  tokensel::detail::fail(code, parameter, value, problem);
}

/// Whether this extension was built with the CUDA backend.
bool built_with_cuda();

/// The dispatch table: the methods whose select (prune_layer, pool.apply) runs CUDA tensors on the
/// CUDA backend when the extension is built with it (cuda_dispatch.hpp declares one
/// <method>_select_cuda each): one array per input (a sample, or a [batch, ...] batch), or a ragged
/// list whose samples run one device call each; every input of a sample on one device. A qk_source
/// runs on the device for FoPru, FastV, VisPruner and VisionZip; freePruner's and FitPrune's
/// qk_source and FitPrune's calibrator stay on the CPU. gather moves CUDA rows by a CUDA selection.
inline constexpr std::array<const char*, 11> cuda_methods{"fopru",    "freepruner", "fitprune", "fastv",     "prumerge", "visionzip",
                                                          "divprune", "dart",       "vispruner", "pool",     "gather"};

/// Why a CUDA tensor cannot be used where `name` (method.parameter...) reads it.
inline std::string cuda_refusal(const std::string& name) {
  const std::string method = name.substr(0, name.find('.'));
  if (method == "qk_source") {
    return "a qk_source runs on the device only as fopru, fastv, vispruner or visionzip select's sample with CUDA queries "
           "(keys and lse on their device); elsewhere its queries, keys and lse must be CPU tensors (.cpu())";
  }
  std::string list;
  bool listed = false;
  for (const char* m : cuda_methods) {
    list += (list.empty() ? "" : ", ") + std::string(m);
    listed = listed || method == m;
  }
  if (listed) {
    return method + " reads CUDA tensors only when the sample's main input is one too (every input of a sample on one device); "
                    "qk_source and FitPrune's calibrator run on the CPU: pass CPU tensors (.cpu())";
  }
  return method + " has no CUDA dispatch in the Python package (CUDA tensors run for " + list + "); pass CPU tensors (.cpu())";
}

/// True for CUDA (or CUDA managed) memory.
inline bool is_cuda_device(int device_type) {
  return device_type == nb::device::cuda::value || device_type == nb::device::cuda_managed::value;
}

/// The element type of a, after checking where it lives: host memory, or (allow_cuda: the callers
/// that dispatch to the CUDA backend, cuda_dispatch.hpp) CUDA memory.
inline dt dtype_of(const array& a, const std::string& name, bool allow_cuda = false) {
  const int dev = a.device_type();
  const bool cuda = is_cuda_device(dev);
  if (cuda && !built_with_cuda()) {
    fail(errc::unsupported, name, "a CUDA tensor",
         "this tokensel extension was built without CUDA (rebuild with -C cmake.define.TOKENSEL_PYTHON_WITH_CUDA=ON, "
         "or pass a CPU tensor: .cpu())");
  }
  if (cuda && !allow_cuda) {
    fail(errc::unsupported, name, "a CUDA tensor", cuda_refusal(name));
  }
  if (!cuda && dev != nb::device::cpu::value) fail(errc::unsupported, name, "device " + std::to_string(dev), "must be a CPU or CUDA array");
  const auto t = a.dtype();
  if (t == nb::dtype<float>()) return dt::f32;
  if (t.code == static_cast<std::uint8_t>(nb::dlpack::dtype_code::Float) && t.bits == 16 && t.lanes == 1) return dt::f16;
  if (t.code == static_cast<std::uint8_t>(nb::dlpack::dtype_code::Bfloat) && t.bits == 16 && t.lanes == 1) return dt::bf16;
  std::string got;
  switch (static_cast<nb::dlpack::dtype_code>(t.code)) {
    case nb::dlpack::dtype_code::Int: got = "int"; break;
    case nb::dlpack::dtype_code::UInt: got = "uint"; break;
    case nb::dlpack::dtype_code::Float: got = "float"; break;
    case nb::dlpack::dtype_code::Bfloat: got = "bfloat"; break;
    case nb::dlpack::dtype_code::Complex: got = "complex"; break;
    case nb::dlpack::dtype_code::Bool: got = "bool"; break;
    default: got = "dlpack code " + std::to_string(t.code) + " bits "; break;  // float8 / float6 ... kinds
  }
  got += std::to_string(t.bits);
  fail(errc::unsupported, name + ".dtype", got, "must be float32, float16 or bfloat16");
}

inline void check_rank(const array& a, std::size_t rank, const std::string& name, const char* shape) {
  if (a.ndim() != rank) {
    fail(errc::shape_mismatch, name + ".ndim", std::to_string(a.ndim()), "must be " + std::to_string(rank) + " (" + shape + ")");
  }
}

/// A rank-R view of a (already checked to hold T): the caller's memory and strides, no copy.
template <class T, std::size_t R>
tokensel::tensor_view<const T, R> view(const array& a, const std::string& name) {
  std::array<index_t, R> ext{}, str{};
  for (std::size_t k = 0; k < R; ++k) {
    ext[k] = static_cast<index_t>(a.shape(k));
    str[k] = static_cast<index_t>(a.stride(k));
  }
  return tokensel::tensor_view<const T, R>(static_cast<const T*>(a.data()), ext, str, name);
}

/// Calls f(T{}) with the element type d stands for.
template <class F>
decltype(auto) dispatch(dt d, F&& f) {
  switch (d) {
    case dt::f16: return f(Eigen::half{});
    case dt::bf16: return f(Eigen::bfloat16{});
    default: return f(float{});
  }
}

/// The element type every array of one call shares (mixed types are refused by name).
inline void check_same(dt want, dt got, const std::string& name, const std::string& ref) {
  if (want != got) fail(errc::unsupported, name + ".dtype", dt_name(got), std::string("must equal the dtype of ") + ref + " (" + dt_name(want) + ")");
}

// ---- outputs -------------------------------------------------------------------------------

template <class V>
nb::capsule owner_of(V* v) {
  return nb::capsule(v, [](void* p) noexcept { delete static_cast<V*>(p); });
}

/// A NumPy int32 array that takes ownership of v (shape {v.size()} or {rows, cols}).
inline index_array to_indices(std::vector<token_index>&& v) {
  auto* h = new std::vector<token_index>(std::move(v));
  const std::size_t shape[1] = {h->size()};
  return index_array(h->data(), 1, shape, owner_of(h));
}
inline index_array to_indices(std::vector<token_index>&& v, std::size_t rows, std::size_t cols) {
  auto* h = new std::vector<token_index>(std::move(v));
  const std::size_t shape[2] = {rows, cols};
  return index_array(h->data(), 2, shape, owner_of(h));
}
inline float_array to_floats(std::vector<float>&& v, std::size_t rows, std::size_t cols) {
  auto* h = new std::vector<float>(std::move(v));
  const std::size_t shape[2] = {rows, cols};
  return float_array(h->data(), 2, shape, owner_of(h));
}
inline float_array to_floats3(std::vector<float>&& v, std::size_t a, std::size_t b, std::size_t c) {
  auto* h = new std::vector<float>(std::move(v));
  const std::size_t shape[3] = {a, b, c};
  return float_array(h->data(), 3, shape, owner_of(h));
}

// ---- arguments -----------------------------------------------------------------------------

/// The execution policy of threads (0: all cores, 1: sequential; results are identical).
inline tokensel::threaded_policy policy(int threads) {
  if (threads < 0) fail(errc::invalid_argument, "threads", std::to_string(threads), "must be >= 0 (0: all cores)");
  return tokensel::threaded_policy{threads};
}

/// keep=None | float fraction in (0, 1] | int count >= 1 -> a budget.
inline std::optional<tokensel::budget> budget_of(nb::handle keep) {
  if (keep.is_none()) return std::nullopt;
  if (nb::isinstance<tokensel::budget>(keep)) return nb::cast<tokensel::budget>(keep);
  if (PyBool_Check(keep.ptr())) fail(errc::invalid_argument, "keep", "a bool", "must be a fraction (float) or a count (int)");
  if (PyLong_Check(keep.ptr())) return tokensel::budget::count(nb::cast<index_t>(keep));
  if (PyFloat_Check(keep.ptr())) return tokensel::budget::fraction(nb::cast<double>(keep));
  fail(errc::invalid_argument, "keep", nb::cast<std::string>(nb::str(keep.type())),
       "must be a fraction (float), a count (int) or a tokensel.budget");
}

/// a is on `like`'s CUDA device (like: a CUDA array), else tokensel.Error naming both.
inline void check_device(const array& a, const array& like, const std::string& name, const std::string& ref) {
  if (!is_cuda_device(a.device_type()) || a.device_id() != like.device_id()) {
    fail(errc::unsupported, name + ".device", is_cuda_device(a.device_type()) ? "cuda:" + std::to_string(a.device_id()) : "cpu",
         "must be on the device of " + ref + " (cuda:" + std::to_string(like.device_id()) + ")");
  }
}

/// Python-side Q/K source: keeps the arrays alive while the views point into them. Its arrays are
/// host memory, or (a CUDA build) CUDA queries with the keys and lse on their device: FoPru, FastV
/// and VisPruner read those on the device (cuda_qk.cu, cuda = true); every CPU path (cuda = false)
/// refuses them.
struct py_qk {
  array queries, keys;
  std::optional<array> lse;
  float scale = 0.0f;
  bool causal = false;
  index_t causal_offset = -1;

  bool on_cuda() const { return built_with_cuda() && is_cuda_device(queries.device_type()); }
  dt dtype(bool cuda = false) const {
    const dt q = dtype_of(queries, "qk_source.queries", cuda);
    if (cuda) check_device(keys, queries, "qk_source.keys", "qk_source.queries");
    check_same(q, dtype_of(keys, "qk_source.keys", cuda), "qk_source.keys", "qk_source.queries");
    return q;
  }
  template <class T>
  tokensel::qk_source<T> source(bool cuda = false) const {
    check_rank(queries, 3, "qk_source.queries", "[heads, queries, head_dim]");
    check_rank(keys, 3, "qk_source.keys", "[kv_heads, keys, head_dim]");
    tokensel::qk_source<T> s;
    s.queries = view<T, 3>(queries, "qk_source.queries");
    s.keys = view<T, 3>(keys, "qk_source.keys");
    s.scale = scale;
    s.causal = causal;
    s.causal_offset = causal_offset;
    if (lse) {
      if (cuda) check_device(*lse, queries, "qk_source.lse", "qk_source.queries");
      const dt l = dtype_of(*lse, "qk_source.lse", cuda);
      if (l != dt::f32) fail(errc::unsupported, "qk_source.lse.dtype", dt_name(l), "must be float32");
      check_rank(*lse, 2, "qk_source.lse", "[heads, queries]");
      s.lse = view<float, 2>(*lse, "qk_source.lse");
    }
    tokensel::validate_shape(s, "qk_source");
    return s;
  }
};

/// One sample's attention argument: an ndarray or a tokensel.qk_source.
struct attention_arg {
  std::optional<array> map;
  const py_qk* qk = nullptr;
  dt type = dt::f32;
};

/// An array object nanobind could not import because of its dtype (NumPy float8, object, ...):
/// refused by name and dtype rather than as "not an array".
inline void refuse_dtype(nb::handle h, const std::string& name) {
  if (!nb::hasattr(h, "dtype") || !nb::hasattr(h, "shape")) return;
  const nb::object d = nb::getattr(h, "dtype");
  fail(errc::unsupported, name + ".dtype", nb::str(d).c_str(), "must be float32, float16 or bfloat16");
}

inline attention_arg attention_of(nb::handle h, const std::string& name) {
  attention_arg a;
  if (nb::isinstance<py_qk>(h)) {
    a.qk = nb::inst_ptr<py_qk>(h);
    a.type = a.qk->dtype();
    return a;
  }
  array arr;
  if (!nb::try_cast(h, arr)) {
    refuse_dtype(h, name);
    fail(errc::invalid_argument, name, nb::cast<std::string>(nb::str(h.type())),
         "must be a NumPy array, a PyTorch tensor (any DLPack array) or a tokensel.qk_source");
  }
  a.type = dtype_of(arr, name);
  a.map = std::move(arr);
  return a;
}

/// h as an ndarray, or tokensel.Error naming the argument (None, lists and other objects).
inline array array_arg(nb::handle h, const std::string& name) {
  array a;
  if (!nb::try_cast(h, a)) {
    refuse_dtype(h, name);
    fail(errc::invalid_argument, name, nb::cast<std::string>(nb::str(h.type())), "must be a NumPy array or a PyTorch tensor (any DLPack array)");
  }
  return a;
}

/// True for a list or tuple (a ragged batch).
inline bool is_sequence(nb::handle h) { return nb::isinstance<nb::list>(h) || nb::isinstance<nb::tuple>(h); }

/// Calls f(source) with the sample's attention source: a [heads, q, k] view or a qk_source<T>.
template <class F>
decltype(auto) with_source(const attention_arg& a, const std::string& name, F&& f) {
  return dispatch(a.type, [&](auto tag) {
    using T = decltype(tag);
    if (a.qk != nullptr) return f(a.qk->template source<T>());
    check_rank(*a.map, 3, name, "[heads, queries, keys]");
    return f(view<T, 3>(*a.map, name));
  });
}

void bind_core(nb::module_& m);
void bind_fopru(nb::module_& m);
void bind_freepruner(nb::module_& m);
void bind_fitprune(nb::module_& m);
void bind_fastv(nb::module_& m);
void bind_prumerge(nb::module_& m);
void bind_visionzip(nb::module_& m);
void bind_baselines(nb::module_& m);
void bind_divprune(nb::module_& m);
void bind_dart(nb::module_& m);
void bind_vispruner(nb::module_& m);

}  // namespace tsp
