// tokensel: command-line front end of the library.
//   tokensel select --method NAME --attn FILE [flags]   prints the selection as JSON
//   tokensel info FILE                                  lists the tensors of a .npy / .safetensors
// Every failure prints exactly one line "tokensel: error: ..." on stderr and exits with 2.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <exception>
#include <iostream>
#include <new>
#include <set>
#include <string>
#include <vector>

#include <tokensel/core/config.hpp>
#include <tokensel/core/error.hpp>
#include <tokensel/io/npy.hpp>
#include <tokensel/io/safetensors.hpp>

#include "cli.hpp"
#include "common/cli_flags.hpp"

namespace tokensel_cli {

const std::vector<param>& global_params() {
  static const std::vector<param> params = {
      {"method", "NAME", "", "selection method (see the list below)"},
      {"attn", "FILE", "", "attention probabilities: .npy or .safetensors, [heads, N, N] or [layers, heads, N, N]"},
      {"tensor", "NAME", "the only float tensor", "tensor of --attn inside a .safetensors file"},
      {"layers-file", "LIST", "", "text file naming one [heads, N, N] file per layer ('FILE' or 'FILE TENSOR' per line, "
                                  "paths relative to LIST; line i = layer i); instead of --attn"},
      {"keys", "FILE", "", "keys (.npy or .safetensors; converted to f32)"},
      {"keys-tensor", "NAME", "the only float tensor", "tensor of --keys inside a .safetensors file"},
      {"features", "FILE", "", "token features / hidden states (.npy or .safetensors; converted to f32)"},
      {"features-tensor", "NAME", "the only float tensor", "tensor of --features inside a .safetensors file"},
      {"skip-cls", "", "the method's default", "token 0 is a CLS token: select among tokens 1..N-1"},
      {"no-cls", "", "", "there is no CLS token: select among all N tokens (SigLIP-style encoders)"},
      {"threads", "T", "0", "CPU threads (0: all cores, 1: sequential); results are identical for every T"},
      {"out", "FILE", "", "write the method's output features (merged / pooled rows, f32) to FILE as .npy"},
      {"pretty", "", "", "indent the JSON output"},
      {"help", "", "", "show help (with --method: only that method's flags)"},
  };
  return params;
}

const std::vector<method>& all_methods() {
  static const std::vector<method> methods = [] {
    std::vector<method> m;
    m.push_back(make_fopru());
    m.push_back(make_freepruner());
    m.push_back(make_fitprune());
    m.push_back(make_fastv());
    m.push_back(make_prumerge());
    m.push_back(make_visionzip());
    m.push_back(make_divprune());
    m.push_back(make_dart());
    m.push_back(make_vispruner());
    for (auto& b : make_baselines()) m.push_back(std::move(b));
    return m;
  }();
  return methods;
}

namespace {

void print_params(std::ostream& os, const std::vector<param>& params, const std::string& indent) {
  for (const auto& p : params) {
    std::string left = "--" + p.name + (p.value_name.empty() ? "" : " " + p.value_name);
    os << indent << left;
    const std::size_t width = 28;
    if (left.size() + 2 > width) os << "\n" << indent << std::string(width, ' ');
    else os << std::string(width - left.size(), ' ');
    os << p.help;
    if (!p.default_text.empty()) os << " (default " << p.default_text << ")";
    os << "\n";
  }
}

void print_method(std::ostream& os, const method& m) {
  os << "  " << m.name << ": " << m.summary << "\n";
  print_params(os, m.params, "    ");
}

void print_help(std::ostream& os, const method* only) {
  os << "tokensel " << TOKENSEL_VERSION_MAJOR << "." << TOKENSEL_VERSION_MINOR << "." << TOKENSEL_VERSION_PATCH
     << ": training-free visual-token selection from attention maps\n\n"
        "usage:\n"
        "  tokensel select --method NAME --attn FILE [flags]   select tokens, print JSON on stdout\n"
        "  tokensel info FILE                                  list the tensors of a .npy / .safetensors file\n"
        "  tokensel --help | --version\n\n"
        "flags of select:\n";
  print_params(os, global_params(), "  ");
  if (only != nullptr) {
    os << "\nmethod:\n";
    print_method(os, *only);
  } else {
    os << "\nmethods and their flags:\n";
    for (const auto& m : all_methods()) print_method(os, m);
  }
  os << "\nOutput: one JSON object {\"method\", \"input\", \"n\", \"config\", \"count\", \"kept\", \"stats\", ...};\n"
        "\"kept\" are token indices (patch indices, CLS excluded, when the CLS token is skipped).\n"
        "Errors: one line \"tokensel: error: ...\" on stderr, exit status 2. See docs/cli.md.\n";
}

const method* find_method(const std::string& name) {
  for (const auto& m : all_methods()) {
    if (m.name == name) return &m;
  }
  return nullptr;
}

std::string method_list() {
  std::string s;
  for (const auto& m : all_methods()) s += (s.empty() ? "" : ", ") + m.name;
  return s;
}

/// The value of --method in args (either form), or empty.
std::string scan_method(const std::vector<std::string>& args) {
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--method" && i + 1 < args.size()) return args[i + 1];
    if (args[i].rfind("--method=", 0) == 0) return args[i].substr(9);
  }
  return {};
}

int run_select(const std::vector<std::string>& args) {
  const std::string name = scan_method(args);
  const bool help = std::find(args.begin(), args.end(), "--help") != args.end() ||
                    std::find(args.begin(), args.end(), "-h") != args.end();
  const method* m = name.empty() ? nullptr : find_method(name);
  if (help && (name.empty() || m != nullptr)) {
    print_help(std::cout, m);
    return 0;
  }
  if (name.empty()) throw usage_error("select: --method NAME is required (one of " + method_list() + ")");
  if (m == nullptr) throw usage_error("--method = " + name + ": unknown method (one of " + method_list() + ")");

  // The flags this call may use: the global ones and the method's.
  std::vector<const param*> known;
  for (const auto& p : global_params()) known.push_back(&p);
  for (const auto& p : m->params) known.push_back(&p);
  auto lookup = [&](const std::string& flag) -> const param* {
    for (const param* p : known) {
      if (p->name == flag) return p;
    }
    return nullptr;
  };

  options opts;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a.rfind("--", 0) != 0 || a.size() == 2) {
      throw usage_error("unexpected argument '" + a + "' (flags start with --; see tokensel select --help)");
    }
    auto [flag, value, inline_value] = example_cli::split_flag(a);
    const param* p = lookup(flag);
    if (p == nullptr) {
      throw usage_error("unknown flag --" + flag + " for method " + m->name + " (see tokensel select --method " +
                        m->name + " --help)");
    }
    if (opts.has(flag)) throw usage_error("--" + flag + " given twice");
    if (p->value_name.empty()) {
      if (inline_value) throw usage_error("--" + flag + " takes no value");
      value = "true";
    } else if (!inline_value) {
      if (i + 1 >= args.size()) throw usage_error("--" + flag + " needs a value " + p->value_name);
      value = args[++i];
    }
    opts.set(flag, value);
  }

  context ctx(opts);
  json body = m->run(ctx);
  json out;
  out["method"] = m->name;
  for (auto it = body.begin(); it != body.end(); ++it) out[it.key()] = it.value();
  std::cout << (opts.has("pretty") ? out.dump(2) : out.dump()) << "\n";
  std::cout.flush();
  if (!std::cout) throw usage_error("cannot write the output");
  return 0;
}

int run_info(const std::vector<std::string>& args) {
  if (args.size() != 1 || args[0].rfind("--", 0) == 0) throw usage_error("usage: tokensel info FILE");
  const std::string& path = args[0];
  json out;
  out["file"] = path;
  // The one file rule first (a regular file; a FIFO or a link loop is an error, not a hang).
  const auto src = tokensel::detail::byte_source::from_file(path);
  std::byte magic[6] = {};
  if (src.size() >= 6) src.read(0, magic, 6);
  if (std::memcmp(magic, "\x93NUMPY", 6) == 0) {
    const auto h = tokensel::npy::read_header(path);
    out["format"] = "npy " + std::to_string(h.major_version) + "." + std::to_string(h.minor_version);
    out["tensors"] = json::array({{{"name", ""}, {"dtype", h.descr}, {"shape", h.shape}}});
  } else {
    const auto f = tokensel::safetensors::file::open(path);
    out["format"] = "safetensors";
    json list = json::array();
    for (const auto& t : f.tensors()) list.push_back({{"name", t.name}, {"dtype", t.dtype}, {"shape", t.shape}});
    out["tensors"] = list;
    json meta = json::object();
    for (const auto& [k, v] : f.metadata()) meta[k] = v;
    out["metadata"] = meta;
  }
  std::cout << out.dump(2) << "\n";
  std::cout.flush();
  if (!std::cout) throw usage_error("cannot write the output");
  return 0;
}

/// One line: newlines and tabs become spaces.
std::string one_line(std::string s) {
  for (char& c : s) {
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  }
  return s;
}

}  // namespace
}  // namespace tokensel_cli

int main(int argc, char** argv) {
  using namespace tokensel_cli;
  std::vector<std::string> args(argv + 1, argv + argc);
  std::string message;
  try {
    if (args.empty()) throw usage_error("no command given (try tokensel --help)");
    const std::string cmd = args.front();
    const std::vector<std::string> rest(args.begin() + 1, args.end());
    if (cmd == "--help" || cmd == "-h" || cmd == "help") {
      print_help(std::cout, nullptr);
      return 0;
    }
    if (cmd == "--version") {
      std::cout << "tokensel " << TOKENSEL_VERSION_MAJOR << "." << TOKENSEL_VERSION_MINOR << "."
                << TOKENSEL_VERSION_PATCH << "\n";
      return 0;
    }
    if (cmd == "select") return run_select(rest);
    if (cmd == "info") return run_info(rest);
    throw usage_error("unknown command '" + cmd + "' (select, info; try tokensel --help)");
  } catch (const tokensel::error& e) {
    message = e.what();
    if (message.rfind("tokensel: ", 0) == 0) message.erase(0, 10);
  } catch (const usage_error& e) {
    message = e.what();
  } catch (const std::bad_alloc&) {
    // Every count is checked against its input before it sizes memory; what is left is an input
    // too large for this machine's memory.
    message = "out of memory: the input (or the output it asks for) does not fit in this machine's memory";
  } catch (const std::length_error&) {
    message = "out of memory: the output the flags ask for is larger than any allocation";
  } catch (const std::exception& e) {
    message = std::string("internal error: ") + e.what();
  }
  std::cerr << "tokensel: error: " << one_line(message) << "\n";
  return 2;  // every failure: bad flags, bad files, inputs a method rejects
}
