#!/usr/bin/env bash
# Runs every tokensel benchmark executable, writes one JSON file per executable, and prints a
# table of each method's time per call next to its floor (one single-threaded pass over the same
# bytes) and the ratio of the two. CI does not run this; it needs python3 for the summary.
#
# Usage:
#   benchmarks/run_all.sh [options] [-- extra Google Benchmark flags]
#     --build DIR      build directory holding benchmarks/bench_* (default: build-bench)
#     --out DIR        where the JSON files and summary.md go (default: DIR/bench-results)
#     --only NAMES     comma-separated executables to run (e.g. bench_fopru,bench_primitives)
#     --summarise DIR  only print the table for the JSON files already in DIR
# Each executable's console output goes to stderr; its JSON to <out>/<name>.json. The table shows
# medians when repetitions were requested. The measurement in docs/benchmarks.md:
#   benchmarks/run_all.sh -- --benchmark_repetitions=5 --benchmark_report_aggregates_only=true \
#       --benchmark_enable_random_interleaving=true
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build-bench"
out=""
only=""
summarise_only=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    --summarise) summarise_only="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) break ;;
  esac
done

summarise() {
  python3 - "$1" <<'PY'
import glob, json, os, sys

def base(name):
    return name[:-len("/real_time")] if name.endswith("/real_time") else name

runs = {}    # (exe, name) -> dict(time_us, cv, bps, label, kept)
order = []
for path in sorted(glob.glob(os.path.join(sys.argv[1], "bench_*.json"))):
    exe = os.path.basename(path)[:-5]
    with open(path) as f:
        data = json.load(f)
    rows = data.get("benchmarks", [])
    has_median = any(r.get("aggregate_name") == "median" for r in rows)
    cvs = {base(r["run_name"]): r["real_time"] for r in rows if r.get("aggregate_name") == "cv"}
    for r in rows:
        name = base(r.get("run_name", r["name"]))
        if r.get("error_occurred"):
            runs[(exe, name)] = {"error": r.get("error_message", "error")}
            order.append((exe, name))
            continue
        if has_median and r.get("aggregate_name") != "median":
            continue
        if not has_median and r.get("run_type") == "aggregate":
            continue
        unit = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}[r.get("time_unit", "ns")]
        runs[(exe, name)] = {"t": r["real_time"] * unit, "cv": cvs.get(name), "bps": r.get("bytes_per_second"),
                             "label": r.get("label", ""), "kept": r.get("kept")}
        order.append((exe, name))

def floor_of(key):
    label = runs[key].get("label", "")
    return (key[0], label[len("floor="):]) if label.startswith("floor=") else None

# One line per benchmark without its policy suffix: the floor, then seq and par side by side.
lines, seen = [], set()
for exe, name in order:
    if name.startswith("floor/"):
        continue
    stem, policy = name, "seq"
    for p in ("/seq", "/par"):
        if name.endswith(p):
            stem, policy = name[: -len(p)], p[1:]
    key = (exe, stem)
    if key not in seen:
        seen.add(key)
        lines.append(key)
    runs.setdefault(("line",) + key, {})[policy] = (exe, name)

lines.sort()  # random interleaving scrambles the JSON order

def fmt_t(t):
    return f"{t:.0f}" if t >= 100 else f"{t:.1f}"

print("| benchmark | floor (us) | seq (us) | seq x floor | seq GB/s | par (us) | par x floor | cv (seq) | kept |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
over = []
for exe, stem in lines:
    cell = runs[("line", exe, stem)]
    floor_t, cols, cv, kept, gbs = None, [], "", "", ""
    for policy in ("seq", "par"):
        key = cell.get(policy)
        if key is None:
            cols += ["", ""]
            continue
        r = runs[key]
        if "error" in r:
            cols += ["error", ""]
            continue
        fk = floor_of(key)
        ft = runs[fk]["t"] if fk and fk in runs and "t" in runs[fk] else None
        floor_t = floor_t or ft
        ratio = r["t"] / ft if ft else None
        cols += [fmt_t(r["t"]), f"{ratio:.2f}" if ratio else ""]
        if policy == "seq":
            cv = f"{100 * r['cv']:.0f}%" if r.get("cv") is not None else ""
            gbs = f"{r['bps'] / 1e9:.1f}" if r.get("bps") else ""
            if ratio and ratio > 2.0 and not stem.startswith("floor"):
                over.append((ratio, stem))
        if r.get("kept") is not None:
            kept = f"{r['kept']:.0f}"
    cols.insert(2, gbs)
    print(f"| {stem} | {fmt_t(floor_t) if floor_t else ''} | {' | '.join(cols)} | {cv} | {kept} |")
if over:
    print("\nSingle-threaded benchmarks above 2x their floor:")
    for r, n in sorted(over, reverse=True):
        print(f"  {r:7.2f}x  {n}")
PY
}

if [[ -n "$summarise_only" ]]; then
  summarise "$summarise_only"
  exit 0
fi

out="${out:-$build/bench-results}"
mkdir -p "$out"
shopt -s nullglob
exes=("$build"/benchmarks/bench_*)
if [[ ${#exes[@]} -eq 0 ]]; then
  echo "no benchmark executables in $build/benchmarks (configure with -DTOKENSEL_BUILD_BENCHMARKS=ON and build)" >&2
  exit 1
fi
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "cpu: $(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1), $(nproc) cores"
  echo "uptime: $(uptime)"
  echo "flags: $*"
} | tee "$out/machine.txt"
for exe in "${exes[@]}"; do
  name="$(basename "$exe")"
  [[ -x "$exe" && "$name" != *.* ]] || continue
  if [[ -n "$only" && ",$only," != *",$name,"* ]]; then continue; fi
  echo "== $name (load: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  # A crash (a segfault of bench_prumerge or bench_fopru about once per long run, not reproduced in
  # 50 short runs) costs one rerun of that executable with the same flags, not its rows;
  # machine.txt records it and the page prints it. Each attempt runs in its own directory with core
  # dumps on, so that a crash leaves a backtrace of every thread (gdb) in <out>/<name>.crash<N>.txt.
  for attempt in 1 2; do
    status=0
    cores="$out/cores/$name.$attempt"
    rm -rf "$cores" && mkdir -p "$cores"
    exe_path=$(realpath "$exe") json_path="$(realpath "$out")/$name.json"  # before the cd below
    (ulimit -c unlimited 2>/dev/null || true; cd "$cores" &&
      exec "$exe_path" --benchmark_out="$json_path" --benchmark_out_format=json "$@") >&2 || status=$?
    if [[ $status -eq 0 ]]; then rm -rf "$cores"; break; fi
    core=$(find "$cores" -maxdepth 1 -type f -name "core*" | head -1)
    trace=""
    if [[ -n $core ]] && command -v gdb >/dev/null; then
      gdb -batch -ex "info threads" -ex "thread apply all bt 20" "$exe" "$core" >"$out/$name.crash$attempt.txt" 2>&1 || true
      trace="; backtraces in $name.crash$attempt.txt"
    fi
    rm -rf "$cores"  # a core of the large-input benchmarks runs to gigabytes
    if [[ $attempt == 1 ]]; then
      echo "rerun: $name exited with status $status at $(date -u +%H:%M:%SZ) and was run again with the same flags$trace" |
        tee -a "$out/machine.txt" >&2
    else
      echo "failed: $name exited with status $status twice; its table rows are missing or partial$trace" |
        tee -a "$out/machine.txt" >&2
    fi
  done
done
rm -rf "$out/cores"
echo "uptime at end: $(uptime)" | tee -a "$out/machine.txt"
summarise "$out" | tee "$out/summary.md"
