#!/usr/bin/env python3
"""The CUDA backend's performance targets, read from one run's benchmark JSON (reported, not
timed tests: a miss is printed as MISS and does not fail the run).

    python3 benchmarks/cuda_targets.py --methods-json bench_cuda_methods.json \
        --qk-json bench_cuda_qk.json [--sdpa-json sdpa.json]

Targets (docs/cuda.md, "GPU check"):
  bandwidth  batch-64 selection reads its bytes at >= 70 % of the copy bandwidth measured in the
             same run: bytes read / time >= 0.70 * (2 * bytes / copy time) (a device-to-device copy
             reads and writes each byte; cuda_floor_copy/<family>/llava15_b64). Judged where the
             call reads >= 64 MiB; smaller reads (FastV's one row) are latency, reported as n/a.
  latency    batch-1 selection (every cuda_<method>/f16/llava15_b1) < 20 us per call, timed with
             CUDA events on the stream (launches included).
  qk         statistics from Q/K (qk_column_sums/<layer>, qk_one_row/<layer>) no slower than one
             flash-attention forward over the same Q/K (PyTorch SDPA with the flash backend,
             benchmarks/compare_pytorch.py --sdpa-out).
Missing inputs (no GPU, no PyTorch) are reported as "not measured" with the reason.
"""
import argparse
import json
import os
import sys

BANDWIDTH_GOAL = 0.70
LATENCY_GOAL_US = 20.0
JUDGED_BYTES = 64 << 20


def load(path):
    if not path or not os.path.exists(path):
        return None, f"{path or 'no file'} not found"
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        return None, f"{path}: {e}"
    return data, None


def runs(data):
    """name -> benchmark entry (iterations only; errors kept with their message)."""
    out = {}
    for b in (data or {}).get("benchmarks", []):
        if b.get("run_type", "iteration") == "iteration":
            out[b["name"]] = b
    return out


def seconds(b):
    scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[b.get("time_unit", "ns")]
    return b["real_time"] * scale


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods-json")
    ap.add_argument("--qk-json")
    ap.add_argument("--sdpa-json")
    args = ap.parse_args()
    rows = []

    methods, why_m = load(args.methods_json)
    m = runs(methods)
    errors = [b for b in m.values() if b.get("error_occurred")]
    if methods is None or not m or len(errors) == len(m):
        reason = why_m or (errors[0].get("error_message") if errors else "no benchmarks in the file")
        rows.append(("bandwidth b64", "all", "not measured", f">= {BANDWIDTH_GOAL:.0%} of copy", reason))
        rows.append(("latency b1", "all", "not measured", f"< {LATENCY_GOAL_US:.0f} us", reason))
    else:
        for name, b in sorted(m.items()):
            parts = name.split("/")
            if len(parts) != 3 or parts[0] == "cuda_floor_copy" or b.get("error_occurred"):
                continue
            method, shape = parts[0][len("cuda_"):], parts[2]
            family = "llm" if method in ("fastv", "fitprune") else "encoder"
            if shape == "llava15_b64":
                floor = m.get(f"cuda_floor_copy/{family}/llava15_b64")
                if floor is None or floor.get("error_occurred") or "GB/s" not in b:
                    rows.append(("bandwidth b64", method, "not measured", "", "no copy floor in the run"))
                    continue
                read = b["GB/s"] * 1e9 * seconds(b)
                copy_bw = 2.0 * floor["GB/s"]  # GB/s of traffic: the copy reads and writes
                frac = b["GB/s"] / copy_bw
                detail = f"{b['GB/s']:.0f} GB/s read vs copy {copy_bw:.0f} GB/s ({read / 2**20:.0f} MiB per call)"
                if read < JUDGED_BYTES:
                    rows.append(("bandwidth b64", method, f"{frac:.0%}", "n/a", detail + ": latency-bound, not judged"))
                else:
                    rows.append(("bandwidth b64", method, f"{frac:.0%}", f">= {BANDWIDTH_GOAL:.0%}",
                                 ("PASS " if frac >= BANDWIDTH_GOAL else "MISS ") + detail))
            elif shape == "llava15_b1":
                us = b.get("us_per_image", seconds(b) * 1e6)
                rows.append(("latency b1", method, f"{us:.1f} us", f"< {LATENCY_GOAL_US:.0f} us",
                             "PASS" if us < LATENCY_GOAL_US else "MISS"))

    qk, why_q = load(args.qk_json)
    sdpa, why_s = load(args.sdpa_json)
    q = runs(qk)
    if qk is None or not q or all(b.get("error_occurred") for b in q.values()):
        reason = why_q or next((b.get("error_message") for b in q.values()), "no benchmarks in the file")
        rows.append(("qk vs flash fwd", "all", "not measured", "<= 1.00x", reason))
    else:
        for name, b in sorted(q.items()):
            kind, _, layer = name.partition("/")
            if kind not in ("qk_column_sums", "qk_one_row") or b.get("error_occurred"):
                continue
            us = seconds(b) * 1e6
            ref = (sdpa or {}).get(layer)
            if ref is None:
                rows.append(("qk vs flash fwd", name, f"{us:.1f} us", "<= 1.00x",
                             f"not judged: no SDPA time ({why_s or 'layer missing from ' + str(args.sdpa_json)})"))
                continue
            ratio = us / ref
            rows.append(("qk vs flash fwd", name, f"{ratio:.2f}x", "<= 1.00x",
                         ("PASS " if ratio <= 1.0 else "MISS ") + f"{us:.1f} us vs SDPA {ref:.1f} us"))

    print("targets (reported, not tests):")
    print(f"  {'target':<16} | {'case':<32} | {'measured':>12} | {'goal':<15} | verdict")
    for r in sorted(rows, key=lambda r: (r[0], r[1])):
        print(f"  {r[0]:<16} | {r[1]:<32} | {r[2]:>12} | {r[3]:<15} | {r[4]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
