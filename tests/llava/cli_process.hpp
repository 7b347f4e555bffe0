// Running the `llava` binary from the tests: one shell-quoting rule and one way to capture its
// stdout, stderr and exit status (the CLI, batch-evaluation and accuracy-slice tests share it).
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace llava_test {

struct process_result {
  int status = -1;  ///< exit status; -1 when the process did not exit normally or could not start
  std::string out, err;
};

/// POSIX shell single quoting ('it'\''s').
inline std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

/// Runs `program args...`; stdout is captured, stderr goes through err_file (read back, removed).
inline process_result run_process(const std::string& program, const std::vector<std::string>& args,
                                  const std::filesystem::path& err_file) {
  std::string cmd = shell_quote(program);
  for (const auto& a : args) cmd += ' ' + shell_quote(a);
  cmd += " 2>" + shell_quote(err_file.string());
  process_result r;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  r.err = slurp(err_file);
  std::filesystem::remove(err_file);
  return r;
}

}  // namespace llava_test
