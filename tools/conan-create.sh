#!/usr/bin/env bash
# Creates the tokensel Conan 2 package offline and runs its test_package.
#   bash tools/conan-create.sh [extra conan create args, e.g. -o "&:with_cuda=True"]
# Installs Conan from PyPI when missing. Uses a private CONAN_HOME (build-conan/home) with no
# remote, and the profile conan/profiles/offline (Eigen as a platform requirement, from Debian).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! conan --version 2>/dev/null | grep -q "version 2\."; then
  python3 -m pip install --quiet --disable-pip-version-check "conan>=2.0,<3" 2>&1 | grep -v "Running pip as the 'root' user" || true
  hash -r
fi
export CONAN_HOME=${CONAN_HOME:-$PWD/build-conan/home}
mkdir -p "$CONAN_HOME"
conan profile detect --exist-ok >/dev/null 2>&1
# Offline: no remote at all, so nothing can be looked up or downloaded.
conan remote list 2>/dev/null | grep -q "^conancenter" && conan remote remove conancenter >/dev/null
# The test_package builds outside the source tree (no build/ or CMakeUserPresets.json left there).
conan create . -pr:a conan/profiles/offline --build=missing \
  -c tools.cmake.cmake_layout:test_folder="$PWD/build-conan/test_package" \
  -c tools.cmake.cmaketoolchain:user_presets= "$@"
