// Command-line reading shared by the example programs (examples/llava's llava and
// examples/llamacpp's tokensel-llamacpp): `--name VALUE` or `--name=VALUE`, flags without a value,
// each flag at most once, `-h` as `--help`. Every mistake is a usage_error naming the flag.
// examples/cli (per-method flag tables, its own messages) shares only split_flag.
#pragma once

#include <cstddef>
#include <map>
#include <stdexcept>
#include <string>

namespace example_cli {

/// A command-line mistake: the programs print it with their usage hint and exit with status 2.
struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// The integer value v of --flag, in [lo, hi].
inline long long parse_int(const std::string& flag, const std::string& v, long long lo, long long hi) {
  std::size_t used = 0;
  long long x = 0;
  try {
    x = std::stoll(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != v.size() || v.empty()) throw usage_error("--" + flag + " " + v + ": not an integer");
  if (x < lo || x > hi) {
    throw usage_error("--" + flag + " " + v + ": must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  }
  return x;
}

/// One command-line word "--name" or "--name=value" (arg starts with "--"), split into its parts.
struct flag_word {
  std::string name, value;
  bool inline_value = false;  ///< the value came after '=' in the same word
};

inline flag_word split_flag(const std::string& arg) {
  flag_word w{arg.substr(2), {}, false};
  if (const auto eq = w.name.find('='); eq != std::string::npos) {
    w.value = w.name.substr(eq + 1);
    w.name.resize(eq);
    w.inline_value = true;
  }
  return w;
}

/// Name -> value ("" for flags without one) of every flag given; flags maps each known name to
/// whether it takes a value.
inline std::map<std::string, std::string> parse_flags(int argc, char** argv, const std::map<std::string, bool>& flags) {
  std::map<std::string, std::string> seen;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h") a = "--help";
    if (a.rfind("--", 0) != 0) throw usage_error("unexpected argument '" + a + "' (see --help)");
    auto [name, value, inline_value] = split_flag(a);
    const auto it = flags.find(name);
    if (it == flags.end()) throw usage_error("unknown option --" + name + " (see --help)");
    if (it->second && !inline_value) {
      if (i + 1 >= argc) throw usage_error("--" + name + " needs a value");
      value = argv[++i];
    } else if (!it->second && inline_value) {
      throw usage_error("--" + name + " takes no value");
    }
    if (seen.count(name)) throw usage_error("--" + name + " given twice");
    seen[name] = value;
  }
  return seen;
}

}  // namespace example_cli
