#!/usr/bin/env python3
"""Independent float64 reference for tests/test_dart.cpp (DART, arXiv 2502.11494).

Written from the paper's description: after layer K-1 of the LLM, pivot tokens are the visual
tokens and the text tokens (those after the visual span) with the largest L1 norm of their keys
(all heads concatenated); each pivot in turn (ascending sequence position, tokensel's rule) takes
from the pool of non-pivot visual tokens those with the lowest cosine similarity to it (hidden
states scaled by the final RMSNorm weight; the per-row RMS scale cancels in a cosine), and they
leave the pool. The k - image_pivots tokens are split evenly over the pivots, the first ones
taking one more. Ties: lowest index. Kept: image pivots + taken tokens, ascending.

Inputs: integer formulas the C++ test reproduces (multiples of 1/8). The script prints the
smallest gap between the last taken and the first left similarity of every pivot, and between
the last pivot norm and the next one, to show fp32 will agree.

Run: python3 tools/reference/dart_reference.py
"""
import numpy as np

L, BEGIN, N, HEADS, DH, D = 30, 3, 20, 2, 4, 6


def inputs():
    t = np.arange(L)[:, None]
    c = np.arange(HEADS * DH)[None, :]
    keys = ((((t * 5 + c * 3 + 1) * (t + c + 2)) % 29) - 14) / 8.0  # [L, heads * d_head], head-major
    h = np.arange(D)[None, :]
    hidden = ((((t * 11 + h * 7 + 3) * (2 * t + h + 1)) % 31) - 15) / 8.0
    weight = (np.arange(D) % 3 + 1) / 2.0
    return keys, hidden, weight


def dart(keys, hidden, weight, begin, n, k, image_pivots, text_pivots):
    l1 = np.abs(keys).sum(axis=1)
    gaps = []

    def top(idx, count):
        ranked = sorted(idx, key=lambda t: (-l1[t], t))
        if count < len(ranked):
            gaps.append(l1[ranked[count - 1]] - l1[ranked[count]] if count > 0 else None)
        return sorted(ranked[:count])

    visual = list(range(begin, begin + n))
    text = list(range(begin + n, keys.shape[0]))
    pi = min(image_pivots, k)
    pt = min(text_pivots, len(text))
    img = top(visual, pi)
    txt = top(text, pt)
    pivots = img + txt
    y = hidden * weight
    u = y / np.linalg.norm(y, axis=1, keepdims=True)
    pool = [t for t in visual if t not in img]
    kept = list(img)
    extra = k - pi
    for q, p in enumerate(pivots):
        quota = extra // len(pivots) + (1 if q < extra % len(pivots) else 0)
        if quota == 0:
            continue
        sim = {t: float(u[p] @ u[t]) for t in pool}
        order = sorted(pool, key=lambda t: (sim[t], t))
        if quota < len(order):
            gaps.append(sim[order[quota]] - sim[order[quota - 1]])
        take = order[:quota]
        kept += take
        pool = [t for t in pool if t not in take]
    return sorted(t - begin for t in kept), pivots, [g for g in gaps if g is not None]


CASES = [(8, 4, 4), (8, 2, 2), (13, 3, 2), (4, 4, 4), (20, 4, 4), (6, 0, 3)]

if __name__ == "__main__":
    keys, hidden, weight = inputs()
    for k, pi, pt in CASES:
        kept, pivots, gaps = dart(keys, hidden, weight, BEGIN, N, k, pi, pt)
        print(f"k={k} image_pivots={pi} text_pivots={pt}")
        print("  pivots (sequence):", pivots)
        print("  kept (relative):", kept)
        print(f"  smallest gap: {min(gaps) if gaps else None!r}")
