#!/usr/bin/env bash
# Installs the Debian packages tokensel's build, tests, examples and benchmarks need
# (only those missing; uses sudo when not root).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
need=(cmake ninja-build g++ libeigen3-dev nlohmann-json3-dev libgtest-dev libgmock-dev libbenchmark-dev libomp-dev ccache)
missing=()
for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${missing[@]}"
fi
