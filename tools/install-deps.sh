#!/usr/bin/env bash
# Installs the Debian packages tokensel's build, tests, examples (the LLaVA runtime needs
# libsentencepiece-dev, libstb-dev and libjpeg62-turbo-dev, found with pkg-config) and benchmarks
# need, and what
# the CI stages add: clang + libclang-rt-14-dev (libFuzzer and the sanitizer runtimes for the fuzz
# targets), python3-pip (Conan comes from PyPI: tools/conan-create.sh installs it).
# Only missing packages are installed; uses sudo when not root.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
need=(cmake ninja-build g++ libeigen3-dev nlohmann-json3-dev libgtest-dev libgmock-dev libbenchmark-dev libomp-dev ccache
      pkg-config libsentencepiece-dev libstb-dev libjpeg62-turbo-dev
      clang libclang-rt-14-dev python3-pip)
missing=()
for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${missing[@]}"
fi
