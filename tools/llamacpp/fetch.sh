#!/usr/bin/env bash
# Fetches the pinned llama.cpp source for examples/llamacpp and prints its directory.
#   tools/llamacpp/fetch.sh            -> llama.cpp with the CLS-order fix (cls-first.patch)
#   TOKENSEL_LLAMACPP_CLS_FIX=0 ...    -> llama.cpp as shipped (CLS after the patches)
# Source: the llama-cpp-python 0.3.36 source distribution on PyPI (it vendors llama.cpp at
# commit 0c1e570 with tools/mtmd and the GGUF converters; Debian has no llama.cpp package).
# Cache: ${TOKENSEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokensel}, outside the repository.
# Everything but the final directory goes to stderr, so `src=$(fetch.sh)` works.
# With the fix, the files the patch touches are kept as shipped under DIR/.tokensel-upstream/ (the
# CMake build compiles the unpatched llava graph from there for the CLS-last test).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=0.3.36
sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
cache=${TOKENSEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokensel}
fix=${TOKENSEL_LLAMACPP_CLS_FIX:-1}
case $fix in 0) flavour=upstream ;; 1) flavour=clsfix ;;
  *) echo "fetch.sh: TOKENSEL_LLAMACPP_CLS_FIX must be 0 or 1, got '$fix'" >&2; exit 2 ;; esac
tarball=$cache/llama_cpp_python-$version.tar.gz
dest=$cache/llama.cpp-$version-$flavour
mkdir -p "$cache"
patched=$(sed -n 's|^--- a/||p' "$here/cls-first.patch")
ready() {
  [ -f "$dest/.tokensel-ready" ] || return 1
  [ "$fix" = 0 ] && return 0
  for f in $patched; do [ -f "$dest/.tokensel-upstream/$f" ] || return 1; done
}
if ready; then echo "$dest"; exit 0; fi

verify() { [ -f "$tarball" ] && echo "$sha256  $tarball" | sha256sum --check --status; }
if ! verify; then
  rm -f "$tarball"
  echo "fetch.sh: downloading llama-cpp-python==$version (sdist) into $cache" >&2
  python3 -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$cache" >&2 ||
    { echo "fetch.sh: pip download of llama-cpp-python==$version failed (see above)" >&2; exit 1; }
  if ! verify; then
    echo "fetch.sh: checksum mismatch for $tarball: expected sha256 $sha256, got $(sha256sum "$tarball" | cut -d' ' -f1)" >&2
    exit 1
  fi
fi

tmp=$(mktemp -d "$cache/unpack.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
tar -xzf "$tarball" -C "$tmp" "llama_cpp_python-$version/vendor/llama.cpp"
src=$tmp/llama_cpp_python-$version/vendor/llama.cpp
if [ "$fix" = 1 ]; then
  for f in $patched; do
    mkdir -p "$(dirname "$src/.tokensel-upstream/$f")"
    cp -p "$src/$f" "$src/.tokensel-upstream/$f"
  done
  if command -v patch > /dev/null; then
    patch --quiet --forward -p1 -d "$src" < "$here/cls-first.patch" >&2
  else  # no patch(1): git apply, run from the (non-repository) source tree
    (cd "$src" && git apply -p1 "$here/cls-first.patch") >&2
  fi
fi
# The sdist keeps the submodule's .git pointer file, which makes llama.cpp's CMake call git on a
# repository that is not there (noise, and a build number of 0 either way).
rm -f "$src/.git"
touch "$src/.tokensel-ready"
rm -rf "$dest"
mv "$src" "$dest"
echo "$dest"
