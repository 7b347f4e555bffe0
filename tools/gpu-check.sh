#!/usr/bin/env bash
# The whole CUDA half of tokensel in one call on a lent GPU machine, from the folder that
# tools/gpu-bundle.sh packs (this script is copied into it as gpu-check.sh). Nothing to install:
#
#   bash gpu-bundle/gpu-check.sh            (OUT=<dir> for the results; default gpu-bundle/out)
#
# Steps, each under its own `timeout` and all under one deadline (GPU_CHECK_DEADLINE_S, default
# 460 s), in order of importance; a step that finds the deadline passed is reported as skipped:
#   1. nvidia-smi and the device the CUDA runtime sees
#   2. libraries: every binary loads from the bundle (ldd)
#   3. every CUDA test executable, minus the parity tests (those run in 4)
#   4. tokensel_cuda_parity: the parity tests of every suite, >= 10^4 cases in one process; the
#      first failing case is written out as a reproducer
#   5. compute-sanitizer memcheck, racecheck, initcheck over a short subset (2 cases per parity loop)
#   6. the CUDA benchmarks as JSON (the copy-bandwidth floor is measured in the same run)
#   7. benchmarks/compare_pytorch.py: PyTorch eager and SDPA (flash attention) on the same device
#   7b. python/ (when bundled): the Python package's CUDA dispatch (pytest test_cuda_dispatch.py)
#   8. cuda_targets.py: the targets (batch-64 bandwidth, batch-1 latency, Q/K statistics vs SDPA)
# Without a GPU every step says why it skipped and the script still ends with its summary table.
# $OUT receives at most three files: summary.txt, gpu-check-logs.tar.gz (every log and JSON) and,
# when parity fails, parity-repro.tar.gz. Exit status: 0 when nothing failed (skips included).
set -u
B=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$B/out}
mkdir -p "$OUT"
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
logs=$work/logs
mkdir -p "$logs"
deadline=$((SECONDS + ${GPU_CHECK_DEADLINE_S:-460}))
libpath=$B/lib
rows=()
failed=0
gpu=0
skip_reason=""

row() {  # row STEP STATUS SECONDS DETAIL
  rows+=("$(printf '%-28s | %-5s | %5s | %s' "$1" "$2" "$3" "$4")")
  [[ "$2" == FAIL ]] && failed=1
  echo "---- $1: $2 ($3 s) $4"
}
budget() {  # budget NOMINAL: seconds a step may take (its nominal time, at most what is left)
  local left=$((deadline - SECONDS))
  (( left < $1 )) && echo "$left" || echo "$1"
}
run_bin() {  # run_bin SECONDS BINARY ARGS...: a bundled binary with the bundle's libraries
  local t=$1
  shift
  LD_LIBRARY_PATH="$libpath${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" timeout -k 5 "$t" "$@"
}
gtest_counts() {  # gtest_counts LOG: "P passed, S skipped, F failed"
  local p s f
  p=$(grep -oE '^\[  PASSED  \] [0-9]+' "$1" | grep -oE '[0-9]+$' | tail -1)
  s=$(grep -oE '^\[  SKIPPED \] [0-9]+' "$1" | grep -oE '[0-9]+$' | tail -1)
  f=$(grep -oE '^\[  FAILED  \] [0-9]+ test' "$1" | grep -oE '[0-9]+' | tail -1)
  echo "${p:-0} passed, ${s:-0} skipped, ${f:-0} failed"
}

echo "==== tokensel gpu-check ($(date -u +%Y-%m-%dT%H:%M:%SZ), bundle $B)"
head -3 "$B/MANIFEST.txt" 2>/dev/null

# 1. device ------------------------------------------------------------------------------------
t0=$SECONDS
if command -v nvidia-smi >/dev/null 2>&1; then
  timeout -k 5 30 nvidia-smi > "$logs/nvidia-smi.txt" 2>&1
  cat "$logs/nvidia-smi.txt"
  smi=$(timeout 10 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
else
  smi="nvidia-smi not found"
  echo "$smi" > "$logs/nvidia-smi.txt"
fi
# Libraries first where the device lacks libstdc++/libgcc_s (checked with the parity driver).
if LD_LIBRARY_PATH="$libpath" ldd "$B/bin/tokensel_cuda_parity" 2>/dev/null | grep -q "not found"; then
  libpath=$B/lib:$B/lib/fallback
fi
dev=$(run_bin 30 "$B/bin/tokensel_cuda_parity" --device-check 2>&1)
rc=$?
echo "$dev" > "$logs/device.txt"
if [[ $rc == 0 ]]; then
  gpu=1
  row "device" PASS $((SECONDS - t0)) "$dev; nvidia-smi: $smi"
else
  skip_reason=$(echo "$dev" | sed 's/^PARITY: SKIP //' | head -1)
  [[ $rc == 77 ]] || skip_reason="device check failed (status $rc): $skip_reason"
  row "device" SKIP $((SECONDS - t0)) "$skip_reason; nvidia-smi: $smi"
fi

# 2. libraries ---------------------------------------------------------------------------------
t0=$SECONDS
bad=""
for b in "$B"/bin/*; do
  if LD_LIBRARY_PATH="$libpath" ldd "$b" > "$logs/ldd-$(basename "$b").txt" 2>&1; then
    grep -q "not found" "$logs/ldd-$(basename "$b").txt" && bad+="$(basename "$b") "
  else
    bad+="$(basename "$b")(ldd) "
  fi
done
if [[ -z "$bad" ]]; then
  row "libraries" PASS $((SECONDS - t0)) "$(ls "$B/bin" | wc -l) binaries load (lib path: ${libpath//$B/bundle})"
else
  row "libraries" FAIL $((SECONDS - t0)) "unresolved for: $bad(see ldd-*.txt)"
fi

# 3. tests -------------------------------------------------------------------------------------
filter=$(run_bin 10 "$B/bin/tokensel_cuda_parity" --print-filter 2>/dev/null || echo "*Parity*:*EqualBatchOfOne*")
for b in "$B"/bin/test_cuda_*; do
  name=$(basename "$b")
  t=$(budget 60)
  if (( t < 5 )); then row "$name" SKIP 0 "out of time (deadline)"; continue; fi
  t0=$SECONDS
  run_bin "$t" "$b" --gtest_filter="-$filter" --gtest_output="json:$logs/$name.json" > "$logs/$name.log" 2>&1
  rc=$?
  counts=$(gtest_counts "$logs/$name.log")
  if [[ $rc == 124 || $rc == 137 ]]; then
    row "$name" FAIL $((SECONDS - t0)) "timed out after $t s; $counts"
  elif [[ $rc != 0 ]]; then
    row "$name" FAIL $((SECONDS - t0)) "status $rc; $counts; $(grep -m1 -E '^\[  FAILED  \] [A-Za-z]' "$logs/$name.log")"
  elif [[ $gpu == 0 ]]; then
    row "$name" SKIP $((SECONDS - t0)) "$counts (host-side tests ran; the device tests skipped: no device, see the device row)"
  else
    row "$name" PASS $((SECONDS - t0)) "$counts"
  fi
done

# 4. parity ------------------------------------------------------------------------------------
t=$(budget 180)
t0=$SECONDS
if (( t < 5 )); then
  row "parity" SKIP 0 "out of time (deadline)"
else
  run_bin "$t" "$B/bin/tokensel_cuda_parity" --out "$work" --gtest_output="json:$logs/parity.json" > "$logs/parity.log" 2>&1
  rc=$?
  sed -n '/^parity cases per suite/,$p' "$logs/parity.log"
  last=$(grep -E '^PARITY:' "$logs/parity.log" | tail -1)
  case $rc in
    0) row "parity" PASS $((SECONDS - t0)) "${last#PARITY: PASS }" ;;
    77) row "parity" SKIP $((SECONDS - t0)) "status 77: no device (see the device row)" ;;
    124 | 137) row "parity" FAIL $((SECONDS - t0)) "timed out after $t s ($(grep -c '^\[       OK \]' "$logs/parity.log") tests done)" ;;
    *) row "parity" FAIL $((SECONDS - t0)) "status $rc: ${last:-see parity.log}" ;;
  esac
  if [[ -d "$work/parity_repro" ]]; then
    tar -czf "$OUT/parity-repro.tar.gz" -C "$work" parity_repro
    echo "parity reproducer: $OUT/parity-repro.tar.gz"
    cat "$work/parity_repro/case.json"
  fi
fi

# 5. compute-sanitizer ---------------------------------------------------------------------------
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for tool in memcheck racecheck initcheck; do
  t=$(budget 60)
  t0=$SECONDS
  if [[ $gpu == 0 ]]; then row "sanitizer $tool" SKIP 0 "no device (see the device row)"; continue; fi
  if [[ ! -x "$sanitizer" ]]; then row "sanitizer $tool" SKIP 0 "compute-sanitizer not found"; continue; fi
  if (( t < 10 )); then row "sanitizer $tool" SKIP 0 "out of time (deadline)"; continue; fi
  extra=()
  [[ $tool == memcheck ]] && extra=(--leak-check full)
  TOKENSEL_PARITY_LIMIT=2 run_bin "$t" "$sanitizer" --tool "$tool" --error-exitcode 99 "${extra[@]}" \
    "$B/bin/tokensel_cuda_parity" --scale 1 --min-cases 0 --out "$work/sanitizer" > "$logs/sanitizer-$tool.log" 2>&1
  rc=$?
  summary=$(grep -m1 -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$logs/sanitizer-$tool.log" | sed 's/^========= //')
  case $rc in
    0) row "sanitizer $tool" PASS $((SECONDS - t0)) "${summary:-no errors}; 2 cases per parity loop" ;;
    124 | 137) row "sanitizer $tool" FAIL $((SECONDS - t0)) "timed out after $t s" ;;
    *) row "sanitizer $tool" FAIL $((SECONDS - t0)) "status $rc; ${summary:-see sanitizer-$tool.log}" ;;
  esac
done

# 6. benchmarks --------------------------------------------------------------------------------
for name in bench_cuda_methods bench_cuda_qk; do
  t=$(budget 100)
  t0=$SECONDS
  if (( t < 10 )); then row "$name" SKIP 0 "out of time (deadline)"; continue; fi
  run_bin "$t" "$B/bin/$name" --benchmark_out="$logs/$name.json" --benchmark_out_format=json --benchmark_min_time=0.1 \
    > "$logs/$name.log" 2>&1
  rc=$?
  n=$(grep -cE '"run_type": "iteration"' "$logs/$name.json" 2>/dev/null)
  errs=$(grep -cE '"error_occurred": true' "$logs/$name.json" 2>/dev/null)
  if [[ $rc != 0 ]]; then
    row "$name" FAIL $((SECONDS - t0)) "status $rc; see $name.log"
  elif [[ $gpu == 0 ]]; then
    row "$name" SKIP $((SECONDS - t0)) "${n:-0} benchmarks report: $(grep -m1 -oE 'no CUDA device[^"]*' "$logs/$name.json" || echo "$skip_reason")"
  elif [[ "${errs:-0}" != 0 ]]; then
    row "$name" FAIL $((SECONDS - t0)) "$errs of $n benchmarks reported an error"
  else
    row "$name" PASS $((SECONDS - t0)) "$n benchmarks (JSON in the logs)"
  fi
done

# 7. PyTorch -----------------------------------------------------------------------------------
t=$(budget 90)
t0=$SECONDS
if (( t < 10 )); then
  row "compare_pytorch.py" SKIP 0 "out of time (deadline)"
elif ! command -v python3 >/dev/null 2>&1; then
  row "compare_pytorch.py" SKIP 0 "python3 not found"
else
  timeout -k 5 "$t" python3 "$B/compare_pytorch.py" --repeat 30 --cuda-json "$logs/bench_cuda_methods.json" \
    --sdpa-out "$logs/sdpa.json" > "$logs/compare_pytorch.log" 2>&1
  rc=$?
  cat "$logs/compare_pytorch.log"
  if [[ $rc != 0 ]]; then
    row "compare_pytorch.py" FAIL $((SECONDS - t0)) "status $rc; $(tail -1 "$logs/compare_pytorch.log")"
  elif grep -q "nothing to compare" "$logs/compare_pytorch.log"; then
    row "compare_pytorch.py" SKIP $((SECONDS - t0)) "$(grep -m1 'nothing to compare' "$logs/compare_pytorch.log")"
  else
    row "compare_pytorch.py" PASS $((SECONDS - t0)) "$(head -1 "$logs/compare_pytorch.log")"
  fi
fi

# 7b. Python CUDA dispatch (bundled with TOKENSEL_BUNDLE_PYTHON=installed) --------------------
if [[ -d "$B/python" ]]; then
  t=$(budget 60)
  t0=$SECONDS
  if (( t < 10 )); then
    row "python CUDA dispatch" SKIP 0 "out of time (deadline)"
  elif ! PYTHONPATH="$B/python" python3 -c 'import tokensel' > "$logs/python_import.log" 2>&1; then
    row "python CUDA dispatch" SKIP 0 "the bundled extension does not import here: $(tail -1 "$logs/python_import.log")"
  else
    (cd "$B/python/tests" && PYTHONPATH="$B/python:$B/python/tests" TOKENSEL_EXPECT_PYTHON_CUDA=1 \
      timeout -k 5 "$t" python3 -m pytest -q -rs -p no:cacheprovider test_cuda_dispatch.py) > "$logs/python_cuda.log" 2>&1
    rc=$?
    if [[ $rc != 0 ]]; then
      row "python CUDA dispatch" FAIL $((SECONDS - t0)) "status $rc; $(tail -1 "$logs/python_cuda.log")"
    elif grep -q " passed" "$logs/python_cuda.log" && ! grep -q "skipped" "$logs/python_cuda.log"; then
      row "python CUDA dispatch" PASS $((SECONDS - t0)) "$(tail -1 "$logs/python_cuda.log")"
    else
      row "python CUDA dispatch" SKIP $((SECONDS - t0)) "$(tail -1 "$logs/python_cuda.log")"
    fi
  fi
fi

# 8. targets -----------------------------------------------------------------------------------
targets=""
if command -v python3 >/dev/null 2>&1; then
  targets=$(timeout -k 5 30 python3 "$B/cuda_targets.py" --methods-json "$logs/bench_cuda_methods.json" \
    --qk-json "$logs/bench_cuda_qk.json" --sdpa-json "$logs/sdpa.json" 2>&1)
  echo "$targets" > "$logs/targets.txt"
else
  targets="targets: python3 not found"
fi

# summary --------------------------------------------------------------------------------------
cp "$B/MANIFEST.txt" "$logs/" 2>/dev/null
{
  echo
  echo "==== tokensel gpu-check summary ($(date -u +%Y-%m-%dT%H:%M:%SZ), ${SECONDS} s)"
  head -2 "$B/MANIFEST.txt" 2>/dev/null | tail -1
  printf '%-28s | %-5s | %5s | %s\n' step result s detail
  printf '%s\n' "$(printf -- '-%.0s' {1..100})"
  printf '%s\n' "${rows[@]}"
  echo
  echo "$targets"
  echo
  if [[ $failed == 0 ]]; then
    echo "OVERALL: $([[ $gpu == 1 ]] && echo PASS || echo "SKIPPED (no GPU: $skip_reason)")"
  else
    echo "OVERALL: FAIL (see the rows marked FAIL; logs in gpu-check-logs.tar.gz)"
  fi
} > "$work/summary.txt"
cp "$work/summary.txt" "$OUT/summary.txt"
cp "$work/summary.txt" "$logs/summary.txt"
tar -czf "$OUT/gpu-check-logs.tar.gz" -C "$work" logs
rm -rf "$work"
cat "$OUT/summary.txt"
exit $failed
