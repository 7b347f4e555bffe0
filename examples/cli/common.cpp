// tokensel CLI: flag parsing helpers, input loading, output helpers.
#include <charconv>
#include <cstring>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <tokensel/io/npy.hpp>
#include <tokensel/io/safetensors.hpp>

#include "cli.hpp"

namespace tokensel_cli {

namespace {

[[noreturn]] void bad_value(const std::string& name, const std::string& value, const std::string& problem) {
  throw usage_error("--" + name + " = " + value + ": " + problem);
}

template <class N>
bool parse_number(const std::string& s, N& out) {
  const char* end = s.data() + s.size();
  const auto [ptr, ec] = std::from_chars(s.data(), end, out);
  return ec == std::errc() && ptr == end && !s.empty();
}

}  // namespace

std::string options::text(const std::string& name, const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second;
}

std::optional<double> options::number(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  double v = 0;
  if (!parse_number(it->second, v)) bad_value(name, it->second, "not a number");
  return v;
}

double options::number(const std::string& name, double fallback) const { return number(name).value_or(fallback); }

std::optional<index_t> options::integer(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  long long v = 0;
  if (!parse_number(it->second, v)) bad_value(name, it->second, "not an integer");
  return static_cast<index_t>(v);
}

index_t options::integer(const std::string& name, index_t fallback) const { return integer(name).value_or(fallback); }

std::uint64_t options::unsigned_integer(const std::string& name, std::uint64_t fallback) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  unsigned long long v = 0;
  if (!parse_number(it->second, v)) bad_value(name, it->second, "not a non-negative integer");
  return v;
}

std::size_t options::choice(const std::string& name, const std::vector<std::string>& choices, std::size_t fallback) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  for (std::size_t k = 0; k < choices.size(); ++k) {
    if (choices[k] == it->second) return k;
  }
  std::string list;
  for (std::size_t k = 0; k < choices.size(); ++k) list += (k ? ", " : "") + choices[k];
  bad_value(name, it->second, "must be one of " + list);
}

std::optional<tokensel::token_grid> options::grid(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  const std::string& s = it->second;
  const auto x = s.find('x');
  long long r = 0, c = 0;
  if (x == std::string::npos || !parse_number(s.substr(0, x), r) || !parse_number(s.substr(x + 1), c) || r < 0 || c < 0) {
    bad_value(name, s, "expected ROWSxCOLS, e.g. 24x24");
  }
  return tokensel::token_grid{static_cast<index_t>(r), static_cast<index_t>(c)};
}

// ---- formatting ---------------------------------------------------------------------------

std::string fmt(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}
std::string fmt(index_t v) { return std::to_string(v); }
std::string fmt(bool v) { return v ? "true" : "false"; }
std::string fmt(const tokensel::token_grid& g) { return std::to_string(g.rows) + "x" + std::to_string(g.cols); }

json indices(std::span<const tokensel::token_index> kept) {
  json a = json::array();
  for (auto i : kept) a.push_back(i);
  return a;
}

json write_output(const options& opts, const host_tensor& t) {
  if (!opts.has("out")) return nullptr;
  const std::string path = opts.text("out", "");
  try {
    tokensel::npy::write(path, t);  // the checked write: no partial file on failure
  } catch (const tokensel::error& e) {
    std::string msg = e.what();
    if (msg.rfind("tokensel: ", 0) == 0) msg.erase(0, 10);
    throw usage_error("--out: " + msg);
  }
  return path;
}

// ---- inputs -------------------------------------------------------------------------------

namespace {
loaded load_tensor_impl(const std::string& path, const std::string& tensor_name, const std::string& flag);
}

// Library errors about a file are prefixed with the flag that named it.
loaded load_tensor(const std::string& path, const std::string& tensor_name, const std::string& flag) {
  try {
    return load_tensor_impl(path, tensor_name, flag);
  } catch (const tokensel::error& e) {
    std::string msg = e.what();
    if (msg.rfind("tokensel: ", 0) == 0) msg.erase(0, 10);
    throw usage_error("--" + flag + ": " + msg);
  }
}

namespace {
// Counts are taken from an input's extents (tokens, rows) and size the outputs: an input that
// holds no values (an extent of 0) backs none of them, e.g. [0, 2^40, 2^40], and is refused.
loaded checked_input(loaded l, const std::string& flag) {
  if (l.tensor.rank() > 0 && l.tensor.size() == 0) {
    throw usage_error("--" + flag + " = " + l.source + ": shape " + l.tensor.shape_string() +
                      " holds no values (an extent is 0); the input needs at least one value");
  }
  return l;
}

loaded load_tensor_impl(const std::string& path, const std::string& tensor_name, const std::string& flag) {
  // The one file rule first (a regular file; a FIFO or a link loop is an error, not a hang).
  const auto src = tokensel::detail::byte_source::from_file(path);
  std::byte magic[6] = {};
  if (src.size() >= 6) src.read(0, magic, 6);
  const bool is_npy = std::memcmp(magic, "\x93NUMPY", 6) == 0;
  if (is_npy || (path.size() >= 4 && path.compare(path.size() - 4, 4, ".npy") == 0)) {
    if (!tensor_name.empty()) {
      throw usage_error((flag == "attn" ? std::string("--tensor") : "--" + flag + "-tensor") + " = " + tensor_name + ": " + path +
                        " is a .npy file (one array); tensor names apply to .safetensors files");
    }
    return checked_input(loaded{tokensel::npy::read(path), path}, flag);
  }
  const auto file = tokensel::safetensors::file::open(path);
  std::string name = tensor_name;
  if (name.empty()) {
    std::vector<std::string> candidates;
    for (const auto& t : file.tensors()) {
      if (t.loadable()) candidates.push_back(t.name);
    }
    if (candidates.size() != 1) {
      std::string list;
      for (std::size_t k = 0; k < candidates.size() && k < 8; ++k) list += (k ? ", " : "") + candidates[k];
      if (candidates.size() > 8) list += ", ...";
      const std::string which = flag == "attn" ? "--tensor" : "--" + flag + "-tensor";
      throw usage_error("--" + flag + " = " + path + ": the file holds " + std::to_string(candidates.size()) +
                        " float tensors; pick one with " + which + (list.empty() ? "" : " (" + list + ")"));
    }
    name = candidates.front();
  }
  return checked_input(loaded{file.load(name), path + ":" + name}, flag);
}
}  // namespace

attention_input attention_input::load(const options& opts) {
  attention_input in;
  if (opts.has("attn") && opts.has("layers-file")) throw usage_error("--attn and --layers-file are exclusive: give one");
  if (opts.has("attn")) {
    loaded l = load_tensor(opts.text("attn", ""), opts.text("tensor", ""), "attn");
    const auto rank = l.tensor.rank();
    if (rank != 3 && rank != 4) {
      throw usage_error("--attn = " + l.source + ": shape " + l.tensor.shape_string() +
                        " is neither [heads, N, N] nor [layers, heads, N, N]");
    }
    in.shape_ = l.tensor.shape();
    in.stack_ = in.split_ = rank == 4;
    in.count_ = rank == 4 ? l.tensor.extent(0) : 1;
    in.tokens_ = l.tensor.extent(rank - 1);
    in.source_ = l.source;
    in.layers_.push_back(std::move(l));
    return in;
  }
  if (!opts.has("layers-file")) throw usage_error("--attn FILE (or --layers-file LIST) is required by this method");
  if (opts.has("tensor")) throw usage_error("--tensor applies to --attn; name tensors inside --layers-file as 'FILE NAME'");
  const std::filesystem::path list = opts.text("layers-file", "");
  std::string text;
  try {  // a regular file of at most 64 MiB (a FIFO or /dev/zero is refused before it is read)
    text = tokensel::detail::read_file(list, tokensel::detail::max_text_file_bytes, "a layer list");
  } catch (const tokensel::error& e) {
    std::string msg = e.what();
    const std::string head = "tokensel: file = " + list.string() + ": ";
    if (msg.rfind(head, 0) == 0) msg.erase(0, head.size());
    throw usage_error("--layers-file = " + list.string() + ": " + msg);
  }
  std::istringstream f(text);
  std::string line;
  int lineno = 0;
  while (std::getline(f, line)) {
    ++lineno;
    const auto first = line.find_first_not_of(" \t\r");
    if (first == std::string::npos || line[first] == '#') continue;
    std::istringstream ls(line.substr(first));
    std::string path, name, extra;
    ls >> path >> name >> extra;
    if (!extra.empty()) {
      throw usage_error("--layers-file = " + list.string() + ": line " + std::to_string(lineno) +
                        ": expected 'FILE' or 'FILE TENSOR'");
    }
    std::filesystem::path p = path;
    if (p.is_relative()) p = list.parent_path() / p;
    loaded l = load_tensor(p.string(), name, "layers-file");
    if (l.tensor.rank() != 3) {
      throw usage_error("--layers-file line " + std::to_string(lineno) + ": " + l.source + " has shape " +
                        l.tensor.shape_string() + ", expected [heads, N, N]");
    }
    if (!in.layers_.empty()) {
      const auto& first_t = in.layers_.front().tensor;
      if (l.tensor.extent(2) != first_t.extent(2) || l.tensor.extent(1) != first_t.extent(1)) {
        throw usage_error("--layers-file line " + std::to_string(lineno) + ": " + l.source + " has shape " +
                          l.tensor.shape_string() + ", the first layer " + first_t.shape_string() +
                          " (every layer needs the same N)");
      }
      // One dtype for the whole stack (a mixed list is converted to the first layer's type).
      if (l.tensor.type() != first_t.type()) l.tensor = l.tensor.converted(first_t.type());
    }
    in.layers_.push_back(std::move(l));
  }
  if (in.layers_.empty()) throw usage_error("--layers-file = " + list.string() + ": lists no files");
  const auto& t0 = in.layers_.front().tensor;
  in.stack_ = true;
  in.count_ = static_cast<index_t>(in.layers_.size());
  in.tokens_ = t0.extent(2);
  in.shape_ = {in.count_, t0.extent(0), t0.extent(1), t0.extent(2)};
  in.source_ = list.string();
  return in;
}

const attention_input& context::attention() {
  if (!attention_) attention_ = attention_input::load(opts_);
  return *attention_;
}

namespace {
loaded load_f32(const options& opts, const std::string& flag) {
  if (!opts.has(flag)) throw usage_error("--" + flag + " FILE is required by this method");
  loaded l = load_tensor(opts.text(flag, ""), opts.text(flag + "-tensor", ""), flag);
  if (l.tensor.type() != dtype::f32) l.tensor = l.tensor.converted(dtype::f32);
  return l;
}
}  // namespace

const loaded& context::keys() {
  if (!keys_) keys_ = load_f32(opts_, "keys");
  return *keys_;
}

const loaded& context::features() {
  if (!features_) features_ = load_f32(opts_, "features");
  return *features_;
}

int context::threads() const {
  const index_t t = opts_.integer("threads", 0);
  if (t < 0 || t > 4096) bad_value("threads", opts_.text("threads", ""), "must be in [0, 4096] (0: all cores)");
  return static_cast<int>(t);
}

bool context::skip_cls(bool method_default) const {
  if (opts_.has("skip-cls") && opts_.has("no-cls")) throw usage_error("--skip-cls and --no-cls are exclusive");
  if (opts_.has("skip-cls")) return true;
  if (opts_.has("no-cls")) return false;
  return method_default;
}

index_t context::pick_layer(index_t default_layer) {
  const attention_input& a = attention();
  const auto given = opts_.integer("layer");
  if (!a.is_stack()) {
    if (given) {
      throw usage_error("--layer = " + std::to_string(*given) + ": the attention input " + a.source() +
                        " is one layer [heads, N, N]; --layer picks a layer of a [layers, heads, N, N] stack");
    }
    return 0;
  }
  const index_t want = given.value_or(default_layer);
  const index_t l = want < 0 ? a.layer_count() + want : want;
  if (l < 0 || l >= a.layer_count()) {
    throw usage_error("--layer = " + std::to_string(want) + ": the stack " + a.source() + " has " +
                      std::to_string(a.layer_count()) + " layers (0.." + std::to_string(a.layer_count() - 1) +
                      ", or -1 for the last)");
  }
  return l;
}

json context::describe_attention() {
  const attention_input& a = attention();
  return {{"file", a.source()}, {"dtype", tokensel::to_string(a.type())}, {"shape", a.shape()}};
}

}  // namespace tokensel_cli
