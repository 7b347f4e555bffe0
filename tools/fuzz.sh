#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) and runs each for a fixed time, starting from
# its committed seed corpus (fuzz/corpus/<name>; new inputs go to a scratch copy, not the repo).
#   bash tools/fuzz.sh                 # every target, FUZZ_SECONDS (default 25) each
#   FUZZ_SECONDS=600 bash tools/fuzz.sh npy safetensors
# Exits non-zero on the first crash, sanitizer report, timeout (> 10 s for one input) or OOM;
# the reproducer is left in $build/artifacts/. Prints executions and coverage per target.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${TOKENSEL_FUZZ_BUILD_DIR:-build-fuzz}
seconds=${FUZZ_SECONDS:-25}
# A fixed seed makes a run a prefix of the same input sequence on any machine: a longer local run
# with this seed covers what CI's short run will try (FUZZ_SEED=0 lets libFuzzer pick one).
seed=${FUZZ_SEED:-1}
jobs=${TOKENSEL_JOBS:-$(nproc)}
cxx=${FUZZ_CXX:-$(command -v clang++ || command -v clang++-14)}
cmake -S . -B "$build" -G Ninja -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DTOKENSEL_BUILD_FUZZERS=ON -DTOKENSEL_BUILD_TESTS=OFF -DTOKENSEL_BUILD_EXAMPLES=OFF \
  -DTOKENSEL_BUILD_BENCHMARKS=OFF -DTOKENSEL_WITH_CUDA=OFF >/dev/null
cmake --build "$build" -j "$jobs" --target fuzzers
if [ "$#" -gt 0 ]; then names=("$@"); else
  names=(); for f in fuzz/fuzz_*.cpp; do n=$(basename "$f" .cpp); names+=("${n#fuzz_}"); done
fi
mkdir -p "$build/artifacts"
export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export OMP_WAIT_POLICY=PASSIVE
printf '%-16s %10s %8s %8s %7s\n' target executions exec/s cov seconds
for name in "${names[@]}"; do
  work="$build/corpus/$name"
  rm -rf "$work"; mkdir -p "$work"
  [ -d "fuzz/corpus/$name" ] && cp -r "fuzz/corpus/$name/." "$work/"
  log="$build/fuzz-$name.log"
  start=$SECONDS
  if ! "$build/fuzz/fuzz_$name" -seed="$seed" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048 \
       -print_final_stats=1 -artifact_prefix="$build/artifacts/$name-" "$work" >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz_$name FAILED (reproducer in $build/artifacts/)" >&2
    exit 1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
  printf '%-16s %10s %8s %8s %7s\n' "$name" "$execs" "$rate" "${cov:-?}" "$((SECONDS - start))"
done
echo "fuzzing: ${#names[@]} targets, no findings"
