#!/usr/bin/env python3
"""Independent float64 reference for tests/test_vispruner.cpp (VisPruner, ICCV 2025, arXiv 2412.01818).

Written from the paper: T_imp = int(T * important_ratio) patches with the highest CLS attention
(mean over heads) are the important tokens; the rest, in descending attention order, lose
duplicates round by round: the list splits into even positions (a) and odd positions (b), each a
token is scored by its highest cosine similarity to a b token, the min(8, R - T_div) highest-scored
a tokens go, and the list becomes [remaining a tokens by descending score, b], until T_div = T -
T_imp remain. Ties: lower index / list position. Kept patch indices ascending.

Inputs: integer formulas the C++ test reproduces (CLS attention rows as multiples of 1/64,
features as multiples of 1/8). Prints the smallest gap between two duplicate scores of a round
(their whole order decides the next round's split), to show fp32 orders them the same.

Run: python3 tools/reference/vispruner_reference.py
"""
import numpy as np

N, HEADS, D = 49, 2, 8  # 48 patches + CLS


def inputs():
    j = np.arange(N)
    cls = np.stack([((j * 13 + 5) % 37 + 1) / 64.0, ((j * 7 + 3) % 41 + 1) / 64.0])  # [heads, N]: CLS rows
    p = np.arange(N - 1)[:, None]
    c = np.arange(D)[None, :]
    feats = ((((p * 9 + c * 5 + 2) * (p + 2 * c + 1)) % 59) - 29) / 8.0  # no two rows equal
    return cls, feats


def vispruner(cls, feats, T, important_ratio, drop=8):
    n = feats.shape[0]
    s = cls.mean(axis=0)[1:]
    ranked = sorted(range(n), key=lambda j: (-s[j], j))
    t_imp = int(T * important_ratio)
    t_div = T - t_imp
    gaps = []
    important = ranked[:t_imp]
    rest = ranked[t_imp:] if t_div > 0 else []
    norm = np.linalg.norm(feats, axis=1, keepdims=True)
    u = np.where(norm > 0, feats / np.where(norm > 0, norm, 1.0), 0.0)
    rounds = 0
    while len(rest) > t_div:
        r = min(drop, len(rest) - t_div)
        a, b = rest[0::2], rest[1::2]
        score = [max(float(u[x] @ u[y]) for y in b) for x in a]
        order = sorted(range(len(a)), key=lambda i: (-score[i], i))
        # the whole order matters (it decides the next split), not only the cut
        gaps += [score[order[i]] - score[order[i + 1]] for i in range(len(order) - 1)]
        rest = [a[i] for i in order[r:]] + b
        rounds += 1
    return sorted(important + rest), rounds, gaps


CASES = [(16, 0.5), (10, 0.3), (5, 0.0), (24, 1.0), (40, 0.5), (9, 0.5)]

if __name__ == "__main__":
    cls, feats = inputs()
    for T, r in CASES:
        kept, rounds, gaps = vispruner(cls, feats, T, r)
        print(f"T={T} important_ratio={r}")
        print("  kept:", kept)
        print(f"  rounds: {rounds}  smallest score gap: {float(min(gaps)) if gaps else None!r}")
