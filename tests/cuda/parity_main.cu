// tokensel_cuda_parity: the CPU-vs-CUDA parity tests of every CUDA suite in one process (both
// backends are linked into it), with their case counts scaled so the run covers >= 10^4 random
// cases: every method (FoPru rank/row, freePruner one-shot and streaming, FitPrune, FastV,
// PruMerge/PruMerge+ with and without merging, VisionZip, random/uniform/pool), the primitives
// (top-k, IQR, gather/scatter, map sums), f32/f16/bf16, dense and ragged batches, inputs with
// exact ties. The suites compare every index, count, statistic and merged feature exactly.
//
//   tokensel_cuda_parity [--scale N] [--out DIR] [--min-cases N] [--print-filter] [gtest flags]
//   tokensel_cuda_parity --device-check   (prints the device, or the skip reason with status 77)
//
// --scale (default 2) multiplies every parity loop (TOKENSEL_PARITY_SCALE); --out (default $OUT,
// else .) is where the first failing case is written: DIR/parity_repro/case.json (test, case,
// failure message with the case's label, how to rerun it) and input_<i>.npy, the host bytes of
// every upload of that case in upload order (bf16 as uint16 bits, structs as void). The run
// stops at the first failing test. Prints the cases per suite and a last line
// "PARITY: PASS|FAIL|SKIP ...". Exit status: 0 pass, 1 a mismatch (or any failure), 2 fewer
// than --min-cases (default 10000) cases ran, 77 no usable CUDA device (the reason is printed).
// TOKENSEL_PARITY_LIMIT=n caps every loop at n cases (tools/gpu-check.sh's sanitizer subset).
#include "cuda_test_util.cuh"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

// The parity tests of the suites (TEST names with Parity, and the single-sample forms that equal
// a batch of one). tools/gpu-check.sh runs the rest of each suite from its own executable.
constexpr const char* kParityFilter = "*Parity*:*EqualBatchOfOne*";

std::string json_escape(const std::string& s) {
  std::string o;
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      o += '\\';
      o += ch;
    } else if (c == '\n') {
      o += "\\n";
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      o += buf;
    } else {
      o += ch;
    }
  }
  return o;
}

void write_npy(const std::filesystem::path& path, const tokensel_test::recorded_upload& u) {
  const std::size_t n = u.element_size > 0 ? u.bytes.size() / u.element_size : 0;
  std::string header = "{'descr': '" + u.dtype + "', 'fortran_order': False, 'shape': (" + std::to_string(n) + ",), }";
  const std::size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::ofstream f(path, std::ios::binary);
  f.write("\x93NUMPY\x01\x00", 8);
  const auto len = static_cast<std::uint16_t>(header.size());
  const char le[2] = {static_cast<char>(len & 0xFF), static_cast<char>(len >> 8)};
  f.write(le, 2);
  f.write(header.data(), static_cast<std::streamsize>(header.size()));
  f.write(reinterpret_cast<const char*>(u.bytes.data()), static_cast<std::streamsize>(u.bytes.size()));
}

/// Writes the first failing case (once) under out/parity_repro.
class reproducer : public ::testing::EmptyTestEventListener {
 public:
  reproducer(std::filesystem::path out, int scale) : dir_(std::move(out) / "parity_repro"), scale_(scale) {}
  bool written() const { return written_; }

  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed() || written_) return;
    written_ = true;
    const auto& st = tokensel_test::parity();
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    const std::string test = info != nullptr ? std::string(info->test_suite_name()) + "." + info->name() : "unknown";
    std::error_code ec;
    std::filesystem::create_directories(dir_, ec);
    std::ostringstream j;
    j << "{\n  \"test\": \"" << json_escape(test) << "\",\n  \"case\": \"" << json_escape(st.current) << "\",\n"
      << "  \"scale\": " << scale_ << ",\n  \"file\": \"" << json_escape(r.file_name() != nullptr ? r.file_name() : "") << "\",\n"
      << "  \"line\": " << r.line_number() << ",\n  \"message\": \"" << json_escape(r.message()) << "\",\n"
      << "  \"rerun\": \"TOKENSEL_PARITY_SCALE=" << scale_ << " tokensel_cuda_parity --scale " << scale_ << " --gtest_filter="
      << json_escape(test) << " (the suites draw every case from a fixed seed: the same case fails again)\",\n"
      << "  \"inputs\": [";
    for (std::size_t i = 0; i < st.uploads.size(); ++i) {
      const auto& u = st.uploads[i];
      const std::string name = "input_" + std::to_string(i) + ".npy";
      write_npy(dir_ / name, u);
      j << (i == 0 ? "\n" : ",\n") << "    {\"file\": \"" << name << "\", \"dtype\": \"" << u.dtype << "\", \"elements\": "
        << (u.element_size > 0 ? u.bytes.size() / u.element_size : 0) << "}";
    }
    j << "\n  ],\n  \"note\": \"inputs are the host bytes of every upload of the failing case, in upload order (strided and "
         "padded buffers as stored; bf16 as uint16 bits); the message names the case's dtype, shape and layout\"\n}\n";
    std::ofstream(dir_ / "case.json") << j.str();
    std::cout << "parity: first failing case " << st.current << " written to " << dir_.string() << "\n";
  }

 private:
  std::filesystem::path dir_;
  int scale_;
  bool written_ = false;
};

}  // namespace

int main(int argc, char** argv) {
  int scale = 2;
  long min_cases = 10000;
  std::filesystem::path out = std::getenv("OUT") != nullptr ? std::getenv("OUT") : ".";
  std::vector<char*> rest{argv[0]};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--print-filter") {
      std::cout << kParityFilter << "\n";
      return 0;
    } else if (a == "--scale" && i + 1 < argc) {
      scale = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--out" && i + 1 < argc) {
      out = argv[++i];
    } else if (a == "--min-cases" && i + 1 < argc) {
      min_cases = std::atol(argv[++i]);
    } else {
      rest.push_back(argv[i]);
    }
  }
  const std::string skip = tokensel_test::device_skip_reason();
  if (!skip.empty()) {
    std::cout << "PARITY: SKIP " << skip << "\n";
    return 77;
  }
  if (rest.size() > 1 && std::string(rest[1]) == "--device-check") {  // 0 and the device, or 77 above
    cudaDeviceProp prop{};
    tokensel_test::cuda_ok(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
    std::cout << "device 0: " << prop.name << ", sm_" << prop.major << prop.minor << ", "
              << (prop.totalGlobalMem >> 20) << " MiB\n";
    return 0;
  }
  // Before the first parity_cases() call reads it.
  ::setenv("TOKENSEL_PARITY_SCALE", std::to_string(scale).c_str(), 1);
  int gargc = static_cast<int>(rest.size());
  ::testing::GTEST_FLAG(filter) = kParityFilter;  // a --gtest_filter argument overrides it
  ::testing::GTEST_FLAG(fail_fast) = true;
  ::testing::InitGoogleTest(&gargc, rest.data());
  tokensel_test::parity().recording = true;
  auto* repro = new reproducer(out, scale);
  ::testing::UnitTest::GetInstance()->listeners().Append(repro);  // owned by gtest
  const int rc = RUN_ALL_TESTS();

  long total = 0;
  std::cout << "\nparity cases per suite (scale " << scale << "):\n";
  for (const auto& [suite, n] : tokensel_test::parity().cases) {
    std::cout << "  " << suite << ": " << n << "\n";
    total += n;
  }
  std::cout << "  total: " << total << "\n";
  if (rc != 0 || repro->written()) {
    std::cout << "PARITY: FAIL (" << total << " cases run; first failure: " << tokensel_test::parity().current << ")\n";
    return 1;
  }
  if (total < min_cases) {
    std::cout << "PARITY: FAIL only " << total << " cases (< " << min_cases << ")\n";
    return 2;
  }
  std::cout << "PARITY: PASS " << total << " cases, every index, count and feature identical\n";
  return 0;
}
