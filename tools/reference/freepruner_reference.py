#!/usr/bin/env python3
"""Independent numpy reference for tests/test_freepruner.cpp (spec section 2).

Run: python3 tools/reference/freepruner_reference.py
Builds the hand-constructed example of the test (3 encoder layers, CLS + 9 patches, 2 heads whose
mean is the designed patch map M_l), then runs freePruner with plain numpy: contribution degree
r = column sum - diagonal, top-k with ties to the lower index, IQR outliers of M_c[p, :] with
np.percentile (type 7) and a strict > fence, and the fixed-length ranking of the spec.
"""
import numpy as np

N, n, H = 10, 9, 2
BASE = 0.0625


def patch_maps():
    m0 = np.full((n, n), BASE)
    m0[:, 3] = 0.25   # r0[3] = 8 * 0.25 = 2
    m0[:, 7] = 0.125  # r0[7] = 1
    np.fill_diagonal(m0, BASE)
    m0[1, 1] = 4.0    # a large diagonal must not count: r0[1] = 0.5
    m1 = np.full((n, n), BASE)
    m1[:, 5] = 0.25   # r1[5] = 2, every other token ties at 0.5
    np.fill_diagonal(m1, BASE)
    m2 = np.full((n, n), BASE)
    m2[:, 6] = 0.5    # r2[6] = 4
    m2[6, 6] = BASE
    m2[1, 3] = m2[2, 3] = 0.5  # r2[3] = 1.375 (rows 1, 2 are never tested)
    m2[0, 8] = 0.3125  # outlier of row 0
    m2[5, 2] = 0.25    # outlier of row 5
    m2[7, 4] = 0.125   # outlier of row 7
    return [m0, m1, m2]


def attention(m):
    """[H, N, N] with head mean m on the patches; CLS row and column hold 0.875 (ignored)."""
    a = np.full((H, N, N), 0.875, dtype=np.float32)
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    delta = np.where((i + j) % 2 == 1, 0.03125, -0.03125)
    a[0, 1:, 1:] = m + delta
    a[1, 1:, 1:] = m - delta
    return a


def reduce(a):
    return a[:, 1:, 1:].astype(np.float32).mean(axis=0)


def topk(r, k):
    order = np.lexsort((np.arange(len(r)), -r))  # higher first, ties: lower index
    return sorted(int(i) for i in order[:k])


def freepruner(layers, first, last, k, comp, c=1.5, budget=None):
    maps = [reduce(a) for a in layers]
    rs = {l: maps[l].sum(axis=0) - np.diag(maps[l]) for l in range(first, last + 1)}
    per_layer = {l: topk(rs[l], k) for l in rs}
    P = sorted(set().union(*per_layer.values()))
    C, margin, fences = set(), {}, []
    for p in P:
        row = maps[comp][p].astype(np.float64)
        q1, q3 = np.percentile(row, 25), np.percentile(row, 75)
        fence = q3 + c * (q3 - q1)
        out = [int(j) for j in np.where(row > fence)[0]]
        fences.append((p, len(out), q1, q3, fence))
        for j in out:
            C.add(j)
            margin[j] = max(margin.get(j, -np.inf), row[j] - fence)
    S = sorted(set(P) | C)
    res = dict(per_layer=per_layer, P=P, C_minus_P=sorted(C - set(P)), S=S, fences=fences)
    if budget is not None:
        maxr = np.max(np.stack([rs[l] for l in rs]), axis=0)
        if len(S) >= budget:
            piv = sorted(P, key=lambda t: (-maxr[t], t))
            comp_only = sorted(set(S) - set(P), key=lambda t: (-margin[t], t))
            res["fixed"] = sorted((piv + comp_only)[:budget])
        else:
            rest = sorted((t for t in range(n) if t not in S), key=lambda t: (-rs[last][t], t))
            res["fixed"] = sorted(S + rest[: budget - len(S)])
        res["max_r"] = [float(v) for v in maxr]
    return res


def main():
    layers = [attention(m) for m in patch_maps()]
    for name, kw in [
        ("k=2, layers 0..2, complementary 2", dict(first=0, last=2, k=2, comp=2)),
        ("k=1, layers 0..2, complementary 2", dict(first=0, last=2, k=1, comp=2)),
        ("k=2, layers 0..2, complementary 1", dict(first=0, last=2, k=2, comp=1)),
    ]:
        r = freepruner(layers, **kw)
        print(f"// {name}")
        print(f"//   per layer {r['per_layer']}")
        print(f"//   P = {r['P']}, C \\ P = {r['C_minus_P']}, S = {r['S']}")
        print("//   fences (p, outliers, q1, q3, fence) = " +
              ", ".join(f"({p}, {o}, {float(q1)!r}, {float(q3)!r}, {float(f)!r})" for p, o, q1, q3, f in r["fences"]))
    for k, budgets in [(2, [2, 3, 4, 6, 7, 9]), (1, [4, 5, 6, 7])]:
        for b in budgets:
            r = freepruner(layers, 0, 2, k, 2, budget=b)
            print(f"// fixed k={k} B={b}: {r['fixed']}")
    print("// max_r (k=2) =", freepruner(layers, 0, 2, 2, 2, budget=1)["max_r"])


if __name__ == "__main__":
    main()
