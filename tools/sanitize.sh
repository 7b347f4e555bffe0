#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer run of the whole test suite (GoogleTest files, the
# CLI end-to-end tests and the LLaVA runtime's tests; the consumer-project tests build separate
# projects and are left out).
#   bash tools/sanitize.sh            # build dir: build-sanitize (TOKENSEL_SANITIZE_BUILD_DIR)
# Any report aborts the test that triggered it (-fno-sanitize-recover=all, halt_on_error=1), so
# ctest's summary is the verdict.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${TOKENSEL_SANITIZE_BUILD_DIR:-build-sanitize}
jobs=${TOKENSEL_JOBS:-$(nproc)}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTOKENSEL_SANITIZE=ON \
  -DTOKENSEL_BUILD_TESTS=ON -DTOKENSEL_BUILD_EXAMPLES=ON -DTOKENSEL_BUILD_BENCHMARKS=OFF \
  -DTOKENSEL_WITH_CUDA=OFF >/dev/null
# Only the test executables and the CLI (the header self-containment check adds nothing here).
targets=(tokensel-cli test_cli test_readme_snippet)
for f in tests/test_*.cpp; do targets+=("$(basename "$f" .cpp)"); done
# The LLaVA runtime (its file parsers, model and CLI) when its packages are present.
if pkg-config --exists sentencepiece stb 2>/dev/null; then
  targets+=(llava)
  for f in tests/llava/test_llava_*.cpp; do [ -e "$f" ] && targets+=("$(basename "$f" .cpp)"); done
fi
cmake --build "$build" -j "$jobs" --target "${targets[@]}"
export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:abort_on_error=1:detect_leaks=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
ctest --test-dir "$build" --output-on-failure -j "$jobs" -LE consumer
