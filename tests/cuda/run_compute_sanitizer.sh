#!/usr/bin/env bash
# Runs every CUDA test executable under compute-sanitizer (memcheck, racecheck, synccheck,
# initcheck). Needs a GPU and compute-sanitizer (CUDA toolkit); says so and exits 0 without them.
#   tests/cuda/run_compute_sanitizer.sh [build-dir] [extra gtest flags]
# The parity suites are long under the sanitizer; by default each tool runs the device tests with
# a filter that keeps one parity test per file (override with --gtest_filter=...).
set -u
build=${1:-build}
shift || true
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if [[ ! -x "$sanitizer" ]]; then
  echo "compute-sanitizer not found: nothing run"
  exit 0
fi
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "no GPU: nothing run"
  exit 0
fi
filter=${TOKENSEL_SANITIZE_FILTER:-"*Float*:*NonFinite*:*Graph*:*Gather*:*Random*:*Uniform*:*Pool*"}
status=0
for exe in "$build"/cuda/tests/test_cuda_*; do
  [[ -x "$exe" && ! "$exe" == *.cmake ]] || continue
  for tool in memcheck racecheck synccheck initcheck; do
    echo "== $tool $(basename "$exe")"
    if ! "$sanitizer" --tool "$tool" --error-exitcode 99 --leak-check full "$exe" --gtest_filter="$filter" "$@" >/tmp/tokensel_sanitizer.log 2>&1; then
      tail -40 /tmp/tokensel_sanitizer.log
      status=1
    else
      grep -E "ERROR SUMMARY|PASSED|SKIPPED" /tmp/tokensel_sanitizer.log | tail -3
    fi
  done
done
exit $status
