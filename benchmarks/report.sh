#!/usr/bin/env bash
# One command for the measured part of docs/benchmarks.md, from a clean clone:
#   1. configure and build the CPU benchmarks (Release, -march=native, no tests/examples/CUDA);
#   2. run them all through run_all.sh with TOKENSEL_BENCH_MEMORY=1 (peak heap per benchmark);
#   3. build the Python package with -march=native into the build directory (not installed);
#   4. run compare_pytorch_cpu.py (PyTorch eager on the same tensors, selections checked);
#   5. rewrite the GENERATED block of docs/benchmarks.md and docs/img/pytorch_cpu.png.
#
# Usage: bash benchmarks/report.sh [--build DIR] [--quick] [--no-pytorch] [--threads LIST] [--only EXES]
#                                  [--methods LIST]
#   --build DIR    build directory (default: build-report)
#   --quick        1 repetition and short timing (proves the pipeline; not for publication)
#   --no-pytorch   skip steps 3-4 (the page then has no PyTorch section)
#   --threads L    thread counts for the PyTorch comparison (default: 1,<cores>)
#   --only EXES    build and run only these benchmark executables (e.g. bench_fastv,bench_fopru;
#                  the page then holds only their rows: for trying the pipeline)
#   --methods L    compare only these methods with PyTorch (prefixes, e.g. fastv,fopru)
# Needs: cmake, a C++20 compiler, Eigen 3.4, Google Benchmark, python3 with numpy; steps 3-4 also
# nanobind, scikit-build-core, torch, matplotlib (installed from PyPI here when missing, as
# tools/python-test.sh does). JOBS (default 2) sets the build parallelism.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
build=build-report
quick=0
pytorch=1
threads="1,$(nproc)"
only=""
methods=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    --no-pytorch) pytorch=0; shift ;;
    --threads) threads="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    --methods) methods="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "report.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
start=$SECONDS
out="$build/bench-results"
py=${PYTHON:-python3}
rm -rf "$out"
mkdir -p "$out"
# The source state measured (the page is written later, when HEAD may have moved on).
git describe --always --dirty >"$out/commit.txt" 2>/dev/null || echo "not a git checkout" >"$out/commit.txt"

cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DTOKENSEL_BUILD_BENCHMARKS=ON -DTOKENSEL_BUILD_TESTS=OFF \
  -DTOKENSEL_BUILD_EXAMPLES=OFF -DTOKENSEL_BUILD_LLAVA=OFF -DTOKENSEL_WITH_CUDA=OFF -DTOKENSEL_BENCH_NATIVE=ON >/dev/null
targets=()
[[ -z $only ]] || for t in ${only//,/ }; do targets+=(--target "$t"); done
cmake --build "$build" -j "${JOBS:-2}" "${targets[@]}"
echo "report: benchmarks built at $((SECONDS - start)) s"

if [[ $quick == 1 ]]; then
  gb=(--benchmark_min_time=0.05 --benchmark_repetitions=1)
  repeat=(--repeat 3 --min-time 0.01)
else
  gb=(--benchmark_repetitions=5 --benchmark_display_aggregates_only=true --benchmark_enable_random_interleaving=true)
  repeat=(--repeat 7)
fi
TOKENSEL_BENCH_MEMORY=1 benchmarks/run_all.sh --build "$build" --out "$out" ${only:+--only "$only"} -- "${gb[@]}" >/dev/null
echo "report: benchmarks ran at $((SECONDS - start)) s"

pt_args=()
if [[ $pytorch == 1 ]]; then
  pip_q=(-m pip install --quiet --disable-pip-version-check --root-user-action=ignore)
  "$py" -c "import nanobind, scikit_build_core, numpy" 2>/dev/null || "$py" "${pip_q[@]}" "nanobind>=2.2" "scikit-build-core>=0.10" numpy
  "$py" -c "import torch" 2>/dev/null || "$py" "${pip_q[@]}" torch==2.15.0
  "$py" -c "import matplotlib" 2>/dev/null || "$py" "${pip_q[@]}" matplotlib
  # -march=native like the benchmark executables; built into the build directory, not installed.
  CMAKE_BUILD_PARALLEL_LEVEL=${JOBS:-2} "$py" "${pip_q[@]}" --no-build-isolation --no-deps --upgrade --target "$build/pyext" \
    -C build-dir="$root/$build/py-build" -C cmake.define.CMAKE_CXX_FLAGS=-march=native ./python
  echo "report: Python package built at $((SECONDS - start)) s"
  mkdir -p docs/img
  status=0
  PYTHONPATH="$root/$build/pyext" "$py" benchmarks/compare_pytorch_cpu.py --threads "$threads" "${repeat[@]}" ${methods:+--only "$methods"} \
    --bench-dir "$out" --json "$out/pytorch.json" --markdown "$out/pytorch.md" --plot docs/img/pytorch_cpu.png >/dev/null || status=$?
  # Status 1 = a selection differed without a near-tie: the page still gets written (marked MISMATCH).
  [[ $status -le 1 ]] || exit "$status"
  pt_args=(--pytorch "$out/pytorch.json")
  echo "report: PyTorch comparison at $((SECONDS - start)) s"
fi
"$py" benchmarks/report_page.py --bench-dir "$out" --build "$build" "${pt_args[@]}" \
  --command "bash benchmarks/report.sh$([[ $quick == 1 ]] && echo ' --quick')"
echo "report: done in $((SECONDS - start)) s (docs/benchmarks.md, docs/img/pytorch_cpu.png; raw results in $out)"
