#!/usr/bin/env bash
# Packs the prebuilt CUDA half of tokensel into one folder that runs on a bare GPU machine
# (nvcc, compute-sanitizer and PyTorch there, but no Eigen, GoogleTest or Google Benchmark):
#
#   tools/gpu-bundle.sh [build-dir] [bundle-dir]      (defaults: $TOKENSEL_BUILD_DIR or build; gpu-bundle)
#
# bin/   every CUDA test (test_cuda_*), the CPU-vs-CUDA parity driver (tokensel_cuda_parity) and the
#        CUDA benchmarks (bench_cuda_*), stripped; GoogleTest and the CUDA runtime are static.
# lib/   the shared libraries a bare CUDA image lacks (libbenchmark, libgomp, ...), found with ldd;
#        lib/fallback/ holds libstdc++ and libgcc_s, used by gpu-check.sh only if the device lacks them.
# gpu-check.sh, compare_pytorch.py, cuda_targets.py, MANIFEST.txt.
# python/ (only with TOKENSEL_BUNDLE_PYTHON=installed: the tokensel package python3 imports here,
#        which must be built with TOKENSEL_PYTHON_WITH_CUDA=ON, e.g. by tools/python-test.sh, plus
#        pytest and its pure-Python dependencies and python/tests/test_cuda_dispatch.py): the
#        Python CUDA dispatch, run by gpu-check.sh when the device's Python matches.
#
# Reuses the build directory: the targets are only built when missing or stale (after CI's main
# stage this is a no-op). Fails when a binary needs a library that is neither bundled nor part of
# glibc / the driver, or when the folder exceeds TOKENSEL_BUNDLE_LIMIT_MIB (default 60). Prints the
# size and the time it took. Run it on the device with tools/gpu-check.sh (see docs/cuda.md).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
build=${1:-${TOKENSEL_BUILD_DIR:-build}}
bundle=${2:-gpu-bundle}
limit_mib=${TOKENSEL_BUNDLE_LIMIT_MIB:-60}
jobs=${TOKENSEL_JOBS:-2}
start=$SECONDS

if [[ ! -f "$build/CMakeCache.txt" ]]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTOKENSEL_REQUIRE_CUDA=ON
fi
tests=$(cd tests/cuda && ls test_cuda_*.cu | sed 's/\.cu$//')
benches=$(cd benchmarks && ls bench_cuda_*.cu | sed 's/\.cu$//')
# shellcheck disable=SC2086
cmake --build "$build" -j "$jobs" --target tokensel_cuda_parity $tests $benches

rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/lib/fallback"
for t in tokensel_cuda_parity $tests $benches; do
  src=$(find "$build/cuda" -maxdepth 2 -type f -name "$t" -perm -u+x | head -1)
  [[ -n "$src" ]] || { echo "gpu-bundle: $t was not built in $build" >&2; exit 1; }
  cp "$src" "$bundle/bin/$t"
  strip --strip-unneeded "$bundle/bin/$t"
done
cp tools/gpu-check.sh "$bundle/gpu-check.sh"
cp benchmarks/compare_pytorch.py benchmarks/cuda_targets.py "$bundle/"
if [[ "${TOKENSEL_BUNDLE_PYTHON:-}" == installed ]]; then
  mkdir -p "$bundle/python/tests"
  python3 - "$bundle/python" <<'EOF'
import importlib, os, shutil, sys
import tokensel
if not tokensel.built_with_cuda():
    sys.exit("gpu-bundle: the installed tokensel package was built without CUDA (TOKENSEL_PYTHON_WITH_CUDA=OFF)")
for name in ("tokensel", "pytest", "_pytest", "pluggy", "iniconfig", "packaging", "py"):
    try:
        mod = importlib.import_module(name)
    except ImportError:
        continue
    src = os.path.dirname(mod.__file__) if mod.__file__.endswith("__init__.py") else mod.__file__
    dst = os.path.join(sys.argv[1], os.path.basename(src))
    (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, dst)
EOF
  cp python/tests/test_cuda_dispatch.py python/tests/conftest.py "$bundle/python/tests/"
fi

# Shared libraries: glibc, the dynamic loader and the driver come with the machine; libstdc++ and
# libgcc_s are on every Ubuntu/Debian image (apt needs them) but travel in lib/fallback anyway.
system='^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libutil|libresolv|libcuda|libnvidia)[.-]'
fallback='^(libstdc\+\+|libgcc_s)\.'
missing=0
for b in "$bundle"/bin/*; do
  while read -r name arrow path _; do
    [[ "$arrow" == "=>" ]] || continue
    if [[ "$path" == "not" ]]; then
      echo "gpu-bundle: $(basename "$b") needs $name, which is not found here" >&2
      missing=1
      continue
    fi
    if [[ "$name" =~ $system ]]; then continue; fi
    dest="$bundle/lib"
    [[ "$name" =~ $fallback ]] && dest="$bundle/lib/fallback"
    [[ -e "$dest/$name" ]] || cp -L "$path" "$dest/$name"
  done < <(ldd "$b")
done
[[ $missing == 0 ]] || exit 1
# Check: with only lib/ added, everything outside glibc and the driver resolves inside the bundle.
for b in "$bundle"/bin/*; do
  if LD_LIBRARY_PATH="$root/$bundle/lib:$root/$bundle/lib/fallback" ldd "$b" | awk -v sys="$system" -v dir="$root/$bundle/lib" '
      $2 == "=>" && $3 == "not" { print "  missing: " $1; bad = 1 }
      $2 == "=>" && $3 != "not" && $1 !~ sys && index($3, dir) != 1 { print "  outside the bundle: " $1 " => " $3; bad = 1 }
      END { exit bad }'; then :; else
    echo "gpu-bundle: $(basename "$b") would not load from the bundle alone" >&2
    exit 1
  fi
done
strip --strip-unneeded "$bundle"/lib/*.so* "$bundle"/lib/fallback/*.so* 2>/dev/null || true

{
  echo "tokensel GPU bundle"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- 2>/dev/null || echo ' (+ uncommitted changes)')"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -srm), $(ldd --version | head -1)"
  echo "nvcc: $("$(grep -E '^CMAKE_CUDA_COMPILER:' "$build/CMakeCache.txt" | cut -d= -f2)" --version | tail -1)"
  echo "architectures: $(grep -E '^CMAKE_CUDA_ARCHITECTURES:' "$build/CMakeCache.txt" | cut -d= -f2)"
  echo "parity filter: $("$bundle/bin/tokensel_cuda_parity" --print-filter)"
  echo "files:"
  (cd "$bundle" && find . -type f ! -name MANIFEST.txt | sort | xargs sha256sum | sed 's/^/  /')
} > "$bundle/MANIFEST.txt"

bytes=$(du -sb "$bundle" | cut -f1)
mib=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
echo "gpu-bundle: $bundle is $mib MiB ($bytes bytes, limit $limit_mib MiB), $(ls "$bundle/bin" | wc -l) binaries, built in $((SECONDS - start)) s"
if (( bytes > limit_mib * 1048576 )); then
  echo "gpu-bundle: $bundle exceeds $limit_mib MiB" >&2
  exit 1
fi
