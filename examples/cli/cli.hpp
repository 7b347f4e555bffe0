// tokensel CLI: shared declarations. Each method is a small adapter (method_*.cpp) that declares
// its flags (defaults taken from the library's config structs) and turns a loaded input into JSON.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <tokensel/io/host_tensor.hpp>
#include <tokensel/core/policy.hpp>
#include <tokensel/core/tensor_view.hpp>
#include <tokensel/core/token_grid.hpp>

namespace tokensel_cli {

using tokensel::dtype;
using tokensel::host_tensor;
using tokensel::index_t;
using json = nlohmann::ordered_json;  // keys in insertion order: readable output

/// A bad command line or input that is not a tokensel::error; the message is shown after
/// "tokensel: error: ".
struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// One command-line flag of a method (or a global one).
struct param {
  std::string name;         ///< without the leading "--"
  std::string value_name;   ///< "R", "N", "rank|row"; empty for a switch
  std::string default_text; ///< shown as "(default ...)"; empty: no default
  std::string help;
};

/// The parsed flags of one `select` call: --name value / --name=value / --switch.
class options {
 public:
  void set(const std::string& name, std::string value) { values_[name] = std::move(value); }
  bool has(const std::string& name) const { return values_.count(name) != 0; }
  const std::map<std::string, std::string>& all() const { return values_; }

  std::string text(const std::string& name, const std::string& fallback) const;
  double number(const std::string& name, double fallback) const;
  std::optional<double> number(const std::string& name) const;
  index_t integer(const std::string& name, index_t fallback) const;
  std::optional<index_t> integer(const std::string& name) const;
  std::uint64_t unsigned_integer(const std::string& name, std::uint64_t fallback) const;
  /// One of `choices`; returns its position.
  std::size_t choice(const std::string& name, const std::vector<std::string>& choices, std::size_t fallback) const;
  /// "RxC" (e.g. 24x24).
  std::optional<tokensel::token_grid> grid(const std::string& name) const;
  bool flag(const std::string& name) const { return has(name); }

 private:
  std::map<std::string, std::string> values_;
};

/// Element-type tag for dtype dispatch.
template <class T>
struct type_tag {
  using type = T;
};

template <class F>
json with_dtype(dtype t, F&& f) {
  switch (t) {
    case dtype::f32: return f(type_tag<float>{});
    case dtype::f16: return f(type_tag<Eigen::half>{});
    case dtype::bf16: break;
  }
  return f(type_tag<Eigen::bfloat16>{});
}

template <class F>
json with_policy(int threads, F&& f) {
  if (threads == 1) return f(tokensel::seq);
  return f(tokensel::threaded_policy{threads});
}

/// A tensor read from --attn / --keys / --features, with where it came from.
struct loaded {
  host_tensor tensor;
  std::string source;  ///< "file.npy" or "file.safetensors:name"
};

/// Reads FILE (.npy or .safetensors, sniffed by content); tensor_name picks a safetensors tensor
/// (optional when the file holds exactly one loadable tensor).
loaded load_tensor(const std::string& path, const std::string& tensor_name, const std::string& flag);

/// The attention input: one layer [heads, N, N] or a stack of layers (a 4-D tensor
/// [layers, heads, N, N] or one file per layer from --layers-file). All layers share a dtype.
class attention_input {
 public:
  dtype type() const noexcept { return layers_.empty() ? dtype::f32 : layers_.front().tensor.type(); }
  bool is_stack() const noexcept { return stack_; }
  index_t layer_count() const noexcept { return count_; }
  index_t tokens() const noexcept { return tokens_; }
  const std::string& source() const noexcept { return source_; }
  const std::vector<index_t>& shape() const noexcept { return shape_; }

  /// Layer l of the stack (or the single layer when l == 0 and !is_stack()).
  template <class T>
  tokensel::head_attention_view<T> layer(index_t l) const {
    if (!split_) return layers_[static_cast<std::size_t>(l)].tensor.template view<T, 3>();
    return layers_.front().tensor.template view<T, 4>()[l];
  }

  static attention_input load(const options& opts);

 private:
  std::vector<loaded> layers_;  ///< one 3-D tensor per layer, or one 4-D tensor (split_)
  bool stack_ = false, split_ = false;
  index_t count_ = 0, tokens_ = 0;
  std::vector<index_t> shape_;
  std::string source_;
};

/// What an adapter gets: the flags and lazily loaded inputs.
class context {
 public:
  explicit context(const options& opts) : opts_(opts) {}
  const options& opts() const { return opts_; }

  const attention_input& attention();
  bool has_attention() const { return opts_.has("attn") || opts_.has("layers-file"); }
  /// --keys / --features converted to f32 (the methods read them once; fp32 keeps the number of
  /// template instantiations small).
  const loaded& keys();
  const loaded& features();
  int threads() const;
  /// --skip-cls / --no-cls, else the method's default.
  bool skip_cls(bool method_default) const;
  /// The single layer a one-layer method reads: the only layer of a 3-D input, or --layer of a
  /// stack (negative counts from the end), default `default_layer` (negative: from the end).
  index_t pick_layer(index_t default_layer);
  /// JSON description of the attention input (file, dtype, shape).
  json describe_attention();

 private:
  const options& opts_;
  std::optional<attention_input> attention_;
  std::optional<loaded> keys_, features_;
};

/// A method of `tokensel select`.
struct method {
  std::string name;
  std::string summary;
  std::vector<param> params;
  std::function<json(context&)> run;
};

// Adapters, one per file.
method make_fopru();
std::vector<method> make_baselines();
method make_freepruner();
method make_visionzip();
method make_divprune();
method make_dart();
method make_vispruner();
method make_prumerge();
method make_fitprune();
method make_fastv();

/// Every method, in help order.
const std::vector<method>& all_methods();

/// Global flags of `select`.
const std::vector<param>& global_params();

/// Formats a default value for help text the way the parser reads it.
std::string fmt(double v);
std::string fmt(index_t v);
std::string fmt(bool v);
std::string fmt(const tokensel::token_grid& g);

/// Writes a [rows, cols] fp32 matrix to --out as .npy (no-op when --out is absent); returns the
/// path written or null.
json write_output(const options& opts, const host_tensor& t);

/// Kept indices as a JSON array.
json indices(std::span<const tokensel::token_index> kept);

}  // namespace tokensel_cli
