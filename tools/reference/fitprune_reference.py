#!/usr/bin/env python3
"""Independent numpy reference for tests/test_region_mass.cpp, tests/test_fitprune.cpp and
tests/test_fastv.cpp: region masses of a tiny causal map, FitPrune's runtime drop, FastV's keep
set and rounding, FIT(alpha) and the bisection on a tiny synthetic calibration set, and the FLOPs
model. Written from the spec (docs/fitprune.md, docs/fastv.md); prints the numbers the tests pin.
Run: python3 tools/reference/fitprune_reference.py
"""
from fractions import Fraction
import numpy as np

# ---- the tiny causal map: L = 7, visual span [2, 5), 2 heads (rows sum to 1 over j <= i) ----
H0 = [[1], [.5, .5], [.25, .25, .5], [.125, .125, .25, .5], [.125, .125, .25, .25, .25],
      [.25, .125, .125, .25, .125, .125], [.125, .125, .25, .125, .0625, .0625, .25]]
H1 = [[1], [.25, .75], [.5, .25, .25], [.25, .25, .125, .375], [.25, .125, .125, .125, .375],
      [.125, .125, .0625, .5, .0625, .125], [.25, .125, .125, .0625, .25, .0625, .125]]
L, s0, n = 7, 2, 3
A = np.zeros((2, L, L))
for h, rows in enumerate((H0, H1)):
    for i, r in enumerate(rows):
        A[h, i, :len(r)] = r
assert np.allclose(A.sum(-1), 1)


def region_mass(M, s0, n):
    vis = slice(s0, s0 + n)
    text = M[s0 + n:, vis]
    a_c = text.sum(0)
    a_s = M[vis, vis].sum(0) / n
    wc = text.sum(1).mean() if text.shape[0] else 0.0
    ws = M[vis, vis].sum(1).mean()
    return a_c, a_s, wc, ws


M = A.max(0)
a_c, a_s, wc, ws = region_mass(M, s0, n)
print("max-reduced visual columns, rows 2..6:\n", M[s0:, s0:s0 + n])
print("a_c", a_c, "a_s", a_s, "Wc", wc, "Ws", ws)
score = a_c * a_s
order = sorted(range(n), key=lambda j: (score[j], j))  # ascending, ties: lower index first
print("score a_c*a_s", score, "drop order", order)
for k in range(n + 1):
    print(f"  drop {k}: kept", sorted(set(range(n)) - set(order[:k])))
mean_last = A.mean(0)[-1, s0:s0 + n]
print("FastV mean-head last row", mean_last)


def py_round_keep(n, R):
    return round(n * (1 - R))  # Python's round: half to even on the double product


for n_, R in [(576, .5), (576, .75), (576, .25), (5, .5), (7, .5), (3, .5), (15, .9), (25, .9), (5, .3), (1, .6), (0, .5), (576, 0.0)]:
    print(f"FastV keep n={n_} R={R}: {py_round_keep(n_, R)}  (n*(1-R) = {n_ * (1 - R)!r})")

# ---- FLOPs model --------------------------------------------------------------------------


def flops(d, m):
    before = lambda k: 3 * k * d * d + 2 * k * k * d
    after = lambda k: k * d * d + 3 * k * d * m
    return before, after


b, a = flops(4096, 11008)
print("Vicuna-7B before(576)", b(576), "after(576)", a(576), "layer", b(576) + a(576), "original", 32 * (b(576) + a(576)))
r50 = [3, 7, 49, 24, 29, 17, 59, 41, 26, 8, 10, 6, 2, 5, 7, 2, 30, 3, 13, 27, 5, 23, 2, 1, 0, 0, 1, 1, 2, 0, 0, 0]
k, c = 576, 0
for dl in r50:
    c += b(k); k -= dl; c += a(k)
print("official 50% recipe: cost ratio", c / (32 * (b(576) + a(576))), "keep", k)

# ---- FIT(alpha) + bisection on a tiny synthetic set: d = m = 1, T = 2 layers, n0 = 4 ----------
# FLOPs with d = m = 1: before(k) = 3k + 2k^2, after(k) = 4k; original = 2 * layer(4) = 120.


def fit_once(samples, alpha, reduction, T=2, n0=4, d=1, m=1):
    before, after = flops(d, m)
    layer = lambda k: before(k) + after(k)
    original = T * layer(n0)
    present = [list(range(n0)) for _ in samples]
    removed = [0] * T
    spent = 0
    for l in range(T):
        forecast = 0
        for p in present:
            spent += before(len(p))
            forecast += after(len(p)) + layer(len(p)) * (T - 1 - l)
        cost = Fraction(spent + forecast, len(samples))
        if cost <= original * (1 - Fraction(reduction)):
            return [x // len(samples) for x in removed], True, l, float(cost / original)
        for s, p in enumerate(present):
            c = [samples[s][l]["cross"][j] for j in p]
            v = [samples[s][l]["self"][j] for j in p]

            def largest(vals, W):  # exact rational arithmetic on the decimal inputs
                vals = [Fraction(str(x)) for x in vals]
                W, al = Fraction(str(W)), Fraction(alpha)
                srt = sorted(range(len(vals)), key=lambda j: (vals[j], j))
                total = sum(vals)
                for i in range(len(vals) + 1):  # official loop, extended to i = n
                    if total - sum(vals[j] for j in srt[:i]) < W - W * al:
                        return srt[:max(i - 1, 0)]
                return srt

            gone = set(largest(c, samples[s][l]["Wc"])) & set(largest(v, samples[s][l]["Ws"]))
            removed[l] += len(gone)
            present[s] = [x for i, x in enumerate(p) if i not in gone]
            spent += after(len(present[s]))
    return [x // len(samples) for x in removed], False, T, float(Fraction(spent, len(samples)) / original)


def bisect(samples, reduction, tol=0.01):
    lo, hi, at_hi, last, it = 0.0, 1.0, None, None, 0
    while hi - lo > tol:
        mid = (lo + hi) / 2
        p = fit_once(samples, mid, reduction)
        it += 1
        if p[1]:
            hi, at_hi = mid, p
        else:
            lo = mid
        last = (mid, p)
    upper = at_hi if at_hi else fit_once(samples, hi, reduction)
    return dict(lo=lo, hi=hi, iterations=it, upper=upper, last=last)


flat = {"cross": [.25] * 4, "self": [.25] * 4, "Wc": 1.0, "Ws": 1.0}
A_ = [{"cross": [.1, .2, .3, .4], "self": [.4, .1, .2, .3], "Wc": 1.0, "Ws": 1.0}, flat]
B_ = [{"cross": [.4, .3, .2, .1], "self": [.1, .2, .3, .4], "Wc": 1.0, "Ws": 1.0}, flat]
for alpha in (.25, .5, .75, 1.0):
    print(f"FIT A alpha={alpha} r=0.3:", fit_once([A_], alpha, .3))
print("FIT {A,B} alpha=0.5 r=0.1:", fit_once([A_, B_], .5, .1))
print("FIT {A,B} alpha=0.75 r=0.1:", fit_once([A_, B_], .75, .1))
for red in (.3, .45):
    print(f"bisection A r={red}:", bisect([A_], red))
