#!/usr/bin/env bash
# The test command: installs missing Debian packages, builds the tests, examples and benchmarks
# (Release) and runs the whole suite with ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
build=${TOKENSEL_BUILD_DIR:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j "$(nproc)"
ctest --test-dir "$build" --output-on-failure -j "$(nproc)"
