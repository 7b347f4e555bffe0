#!/usr/bin/env python3
"""Independent float64 reference for tests/test_prumerge.cpp (PruMerge / PruMerge+, spec section 6).

Inputs come from integer formulas that the C++ test reproduces exactly. The script prints the
CLS attention, Kc, the kept indices in parity order (plain and plus), and the merged features,
plus the margins that make the fp32 library agree with this float64 computation (distance of the
attention values from the IQR fence, and the cosine gap at each neighbour cut that is not an exact tie).

Run: python3 tools/reference/prumerge_reference.py
"""
import numpy as np

N, D, DF, M = 40, 16, 6, 5  # patches, key width, feature width, neighbours


def inputs():
    j = np.arange(N + 1)[:, None]
    c = np.arange(D)[None, :]
    keys = (((j * 7 + c * 3 + (j * c) % 5) % 23) - 11) / 8.0 + ((j * j) % 5 == 0) * (c % 4 == 1) * 1.5
    q = ((((np.arange(D) * 5) % 7) - 3) / 2.0)[None, :]
    for row, w in ((6, 1.0), (19, 0.875), (28, 0.75), (34, 0.625)):  # CLS-attention spikes (key row r = patch r - 1)
        keys[row] += w * q[0]
    jf = np.arange(N)[:, None]
    cf = np.arange(DF)[None, :]
    feats = (((jf * 13 + cf * 7) % 19) - 9) / 8.0
    return q, keys, feats


def run(plus):
    q, keys, x = inputs()
    logits = (q[0] @ keys.T) / np.sqrt(D)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    a = p[1:]
    q1, q3 = np.percentile(a, 25), np.percentile(a, 75)
    fence = q3 + 1.5 * (q3 - q1)
    kc = int((a > fence).sum())
    ranked = sorted(range(N), key=lambda j: (-a[j], j))[:kc]
    order = list(ranked)
    if plus and kc > 0:
        stride = max(1, (N // kc) // 3)
        order += [g for g in range(0, N - 1, stride) if g not in ranked]
    kept = set(order)
    u = keys[1:] / np.maximum(np.linalg.norm(keys[1:], axis=1, keepdims=True), 1e-12)
    rows, gaps = [], []
    for i in order:
        others = [j for j in range(N) if j != i]
        cos = {j: float(u[i] @ u[j]) for j in others}
        nn = sorted(others, key=lambda j: (-cos[j], j))
        m = min(M, N - 1)
        if m < len(nn) and cos[nn[m - 1]] != cos[nn[m]]:
            gaps.append(cos[nn[m - 1]] - cos[nn[m]])
        rows.append(x[i] + sum(a[j] * x[j] for j in nn[:m]))
    extra = sum(a[j] * x[j] for j in range(N) if j not in kept)
    rows.append(extra)
    return a, (q1, q3, fence, kc), order, np.array(rows), gaps


np.set_printoptions(precision=17, linewidth=200)
a, stats, order, rows, gaps = run(False)
print("attention =", ", ".join(repr(float(v)) for v in a))
print("q1, q3, fence, kc =", stats)
print("min |a - fence| =", float(np.min(np.abs(a - stats[2]))))
print("parity order (plain) =", order)
print("merged (plain) rows:")
for r in rows:
    print("  {" + ", ".join(f"{v!r}" for v in r.tolist()) + "},")
print("min neighbour cosine gap (plain) =", min(gaps) if gaps else None)
a, stats, order, rows, gaps = run(True)
print("parity order (plus) =", order)
print("merged (plus) rows:")
for r in rows:
    print("  {" + ", ".join(f"{v!r}" for v in r.tolist()) + "},")
print("min neighbour cosine gap (plus) =", min(gaps) if gaps else None)
