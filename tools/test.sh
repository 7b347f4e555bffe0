#!/usr/bin/env bash
# The test command (CI runs it through .ci/run). Stages, each timed:
#   1. main build (Release: tests, examples, benchmarks) + ctest, consumer projects included;
#      TOKENSEL_REQUIRE_CUDA=ON: a missing nvcc, GoogleTest or Google Benchmark fails the configure
#   llamacpp: examples/llamacpp inside llama.cpp (issue 17): configure with TOKENSEL_BUILD_LLAMACPP
#      (tools/llamacpp/fetch.sh downloads the pinned llama-cpp-python sdist with pip into
#      ~/.cache/tokensel, checksum checked), build only tokensel-llamacpp (ggml CPU, llama, mtmd)
#      and the runtime it is compared with, llama.cpp's own llama-mtmd-cli (+ its common library) and
#      the example on the unpatched CLS-last graph, run the ctest label llamacpp (ccache keeps
#      rebuilds short)
#   native: the CPU test suite again, compiled with -march=native (no CUDA, examples, benchmarks):
#      the F16C / AVX2 / AVX-512 paths that the benchmarks and docs/benchmarks.md measure are
#      compiled only there (the main build targets baseline x86-64), and must keep the same bits;
#      then three test executables of the vector helpers built with Clang -march=native
#   bundle: tools/gpu-bundle.sh packs the main build's CUDA binaries (no recompiling) and checks
#      the size limit, then runs the bundle's gpu-check.sh here (no GPU: every step must skip
#      with its reason and the summary table must still come out)
#   python: tools/python-test.sh: pip install ./python (nanobind extension) + pytest python/tests
#      (CLI / llava-runtime parity against the main build's binaries, transformers example)
#   2. conan create (offline profile) with its test_package
#   3. libFuzzer targets, FUZZ_SECONDS (default 20) each from the committed seed corpora
#   4. AddressSanitizer + UndefinedBehaviorSanitizer build + ctest (last: its summary closes the log)
# TOKENSEL_STAGES (default "main native llamacpp bundle python conan fuzz sanitize") picks stages; missing packages are
# installed first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
# ccache (used by every build when installed) keys on paths relative to the checkout, so a fresh
# clone anywhere, and the llamacpp stage's second build directory, reuse earlier compilations.
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD} CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1}
stages=" ${TOKENSEL_STAGES:-main native llamacpp bundle python conan fuzz sanitize} "
jobs=${TOKENSEL_JOBS:-$(nproc)}
export TOKENSEL_JOBS=$jobs
timing=""
stage() {  # stage NAME COMMAND...: runs it and records its wall time
  local name=$1 start=$SECONDS
  shift
  echo "==== stage $name"
  "$@"
  timing+="$name $((SECONDS - start))s; "
  echo "==== stage $name took $((SECONDS - start)) s"
}
main_stage() {
  local build=${TOKENSEL_BUILD_DIR:-build}
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTOKENSEL_REQUIRE_CUDA=ON
  cmake --build "$build" -j "$jobs"
  ctest --test-dir "$build" --output-on-failure -j "$jobs"
  # No function over 80 lines anywhere in the library, the CUDA backend, the runtime or the CLI
  # (issue 10; a few seconds; lizard from PyPI)
  python3 -c 'import lizard' 2>/dev/null || python3 -m pip install --quiet lizard ||
    python3 -m pip install --quiet --break-system-packages lizard
  python3 tools/function_lengths.py --check include cuda examples/llava/src examples/cli
}
native_stage() {
  local build=${TOKENSEL_NATIVE_BUILD_DIR:-build-native}
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS=-march=native -DTOKENSEL_WITH_CUDA=OFF \
    -DTOKENSEL_BUILD_EXAMPLES=OFF -DTOKENSEL_BUILD_BENCHMARKS=OFF -DTOKENSEL_BUILD_LLAVA=OFF
  cmake --build "$build" -j "$jobs"
  ctest --test-dir "$build" --output-on-failure -j "$jobs"
  # The vector helpers' tests again with Clang (-march=native): Clang ignores an alignment-lowering
  # attribute on a `using` alias, which once made rows off a vector boundary crash there only.
  local clang build_clang="$build-clang"
  clang=$(command -v clang++ || command -v clang++-14 || true)
  if [[ -n $clang ]]; then
    cmake -S . -B "$build_clang" -G Ninja -DCMAKE_CXX_COMPILER="$clang" -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_CXX_FLAGS=-march=native -DTOKENSEL_WITH_CUDA=OFF -DTOKENSEL_BUILD_EXAMPLES=OFF \
      -DTOKENSEL_BUILD_BENCHMARKS=OFF -DTOKENSEL_BUILD_LLAVA=OFF >/dev/null
    cmake --build "$build_clang" -j "$jobs" --target test_foundation test_visionzip test_divprune
    for t in test_foundation test_visionzip test_divprune; do "$build_clang/tests/$t" --gtest_brief=1; done
  fi
}
llamacpp_stage() {
  local build=${TOKENSEL_LLAMACPP_BUILD_DIR:-build-llamacpp}
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTOKENSEL_BUILD_LLAMACPP=ON \
    -DTOKENSEL_BUILD_BENCHMARKS=OFF
  cmake --build "$build" -j "$jobs" --target tokensel-llamacpp tokensel-llamacpp-clslast llama-mtmd-cli llava
  ctest --test-dir "$build" -L llamacpp --output-on-failure
  if python3 -c 'import lizard' 2>/dev/null; then python3 tools/function_lengths.py --check examples/llamacpp; fi
}
bundle_stage() {
  local build=${TOKENSEL_BUILD_DIR:-build} out
  bash tools/gpu-bundle.sh "$build" gpu-bundle
  out=$(mktemp -d)
  # Without a GPU nothing may fail: every step skips with its reason (status 0).
  OUT=$out GPU_CHECK_DEADLINE_S=120 bash gpu-bundle/gpu-check.sh
  grep -q '^OVERALL: ' "$out/summary.txt"
  rm -rf "$out"
}
case $stages in *" main "*) stage main main_stage ;; esac
case $stages in *" native "*) stage native native_stage ;; esac
case $stages in *" llamacpp "*) stage llamacpp llamacpp_stage ;; esac
case $stages in *" bundle "*) stage bundle bundle_stage ;; esac
case $stages in *" python "*) stage python bash tools/python-test.sh ;; esac
case $stages in *" conan "*) stage conan bash tools/conan-create.sh ;; esac
case $stages in *" fuzz "*) FUZZ_SECONDS=${FUZZ_SECONDS:-20} stage fuzz bash tools/fuzz.sh ;; esac
echo "stage times so far: ${timing:-none}"
case $stages in *" sanitize "*) echo "==== stage sanitize"; bash tools/sanitize.sh ;; esac
