#!/usr/bin/env python3
"""Independent float64 reference for tests/test_divprune.cpp (DivPrune, CVPR 2025, arXiv 2503.02175).

Written from the paper's formulation: the kept set S maximises, greedily, the minimum cosine
distance d(i, j) = 1 - cos(x_i, x_j) between kept tokens (max-min diversity problem). The first
token is the one whose nearest other token is farthest; every next one is the token farthest
from S. Ties: the lowest index (numpy argmax). A zero feature row has cosine 0 with every row.
The kept indices are printed ascending, with the greedy order and the smallest distance inside S.

Inputs come from integer formulas that the C++ test reproduces exactly (features are multiples of
1/8 in [-2, 2]). The script also prints the smallest gap between the winning score and the
runner-up at every greedy step: fp32 agrees with float64 when it is well above fp32 rounding
(rows i and i + 33 are equal, so some steps tie exactly, in every precision: the lower index wins).

Run: python3 tools/reference/divprune_reference.py
"""
import numpy as np


def inputs(n, d, salt):
    i = np.arange(n)[:, None]
    c = np.arange(d)[None, :]
    return ((((i * 7 + c * 5 + salt) * (i + 3 * c + 1)) % 33) - 16) / 8.0


def divprune(x, k):
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    u = np.where(norm > 0, x / np.where(norm > 0, norm, 1.0), 0.0)
    dist = 1.0 - u @ u.T
    n = x.shape[0]
    gaps = []
    if n == 1:
        return [0], [0], 0.0, gaps
    nn = np.array([min(dist[i, j] for i in range(n) if i != j) for j in range(n)])
    order = [int(np.argmax(nn))]
    srt = np.sort(nn)[::-1]
    gaps.append(srt[0] - srt[1])
    mind = dist[order[0]].copy()
    last = 0.0
    for _ in range(1, k):
        score = mind.copy()
        score[order] = -np.inf
        j = int(np.argmax(score))
        s = np.sort(score)[::-1]
        if len(s) > 1 and np.isfinite(s[1]):
            gaps.append(s[0] - s[1])
        last = score[j]
        order.append(j)
        mind = np.minimum(mind, dist[j])
    return sorted(order), order, last, gaps


CASES = [(24, 6, 0, 5), (24, 6, 0, 12), (40, 16, 3, 10), (17, 5, 11, 17)]

if __name__ == "__main__":
    np.set_printoptions(precision=17, linewidth=200)
    for n, d, salt, k in CASES:
        x = inputs(n, d, salt)
        kept, order, last, gaps = divprune(x, k)
        print(f"n={n} d={d} salt={salt} k={k}")
        print("  kept:", kept)
        print("  order:", order)
        pos = [g for g in gaps if g > 0]
        print(f"  min_distance: {float(last)!r}   smallest non-zero score gap: {float(min(pos)) if pos else None!r}")
