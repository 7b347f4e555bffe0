// tokensel: the library's error type. Every bad input ends here, with a message that names
// the parameter and its value; library code never aborts or prints.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#include "tokensel/core/config.hpp"

TOKENSEL_BEGIN_NAMESPACE

/// What kind of problem an error reports (stable, for programs that branch on it).
enum class errc {
  invalid_argument,  ///< a parameter outside its documented domain (ratio, k, multiplier, ...)
  shape_mismatch,    ///< extents that disagree (attention not square, features vs scores, ...)
  non_finite,        ///< NaN or Inf where a finite value is required
  null_data,         ///< a null pointer with a non-zero extent
  io_error,          ///< a file that cannot be opened, read or written
  parse_error,       ///< a file or string whose content is malformed or truncated
  unsupported,       ///< a valid request that this build cannot serve (dtype, backend)
  cuda_runtime,      ///< a CUDA runtime call failed (the message carries its error name and string)
};

inline const char* to_string(errc code) noexcept {
  switch (code) {
    case errc::invalid_argument: return "invalid_argument";
    case errc::shape_mismatch: return "shape_mismatch";
    case errc::non_finite: return "non_finite";
    case errc::null_data: return "null_data";
    case errc::io_error: return "io_error";
    case errc::parse_error: return "parse_error";
    case errc::unsupported: return "unsupported";
    case errc::cuda_runtime: return "cuda_runtime";
  }
  return "unknown";
}

/// The exception every tokensel function throws on bad input.
/// what() reads "tokensel: <parameter> = <value>: <problem>".
class error : public std::runtime_error {
 public:
  error(errc code, std::string parameter, std::string message)
      : std::runtime_error(std::move(message)), code_(code), parameter_(std::move(parameter)) {}

  errc code() const noexcept { return code_; }
  /// The parameter the error is about, e.g. "fopru.ratio" or "attention.extent(2)".
  const std::string& parameter() const noexcept { return parameter_; }

 private:
  errc code_;
  std::string parameter_;
};

namespace detail {

/// Throws tokensel::error with the canonical message "tokensel: <param> = <value>: <problem>".
template <class Value>
[[noreturn]] void fail(errc code, std::string_view parameter, const Value& value, std::string_view problem) {
  std::ostringstream os;
  os.precision(9);
  os << "tokensel: " << parameter << " = " << value << ": " << problem;
  throw error(code, std::string(parameter), os.str());
}

/// Same, for problems with no single value to show.
[[noreturn]] inline void fail(errc code, std::string_view parameter, std::string_view problem) {
  std::string msg = "tokensel: ";
  msg.append(parameter).append(": ").append(problem);
  throw error(code, std::string(parameter), std::move(msg));
}

}  // namespace detail

TOKENSEL_END_NAMESPACE
