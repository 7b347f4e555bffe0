"""Independent NumPy reference for FoPru (spec section 3) used to derive expected numbers in
tests/test_fopru.cpp. Run: python3 tools/reference/fopru_reference.py"""
import numpy as np


def fopru(attn, ratio, strategy, grid=None):
    m = attn.mean(axis=0)[1:, 1:]          # head mean, patch submatrix, not renormalised
    s1, s2 = m.mean(axis=1), m.mean(axis=0)
    v1, v2 = s1.astype(np.float64).var(), s2.astype(np.float64).var()
    sig, axis = (s1, "row_mean") if v1 > v2 else (s2, "column_mean")
    n = sig.size
    if strategy == "rank":
        k = max(1, int(n * ratio))
        order = sorted(range(n), key=lambda i: (-sig[i], i))
        kept = sorted(order[:k])
    else:
        rows, cols = grid
        rs = sig.reshape(rows, cols).sum(axis=1)
        r = max(1, int(rows * ratio))
        top = sorted(sorted(range(rows), key=lambda i: (-rs[i], i))[:r])
        kept = [t * cols + c for t in top for c in range(cols)]
    return axis, v1, v2, sig, kept


def example():
    # 2 heads, CLS + 3x3 patches (N = 10); deterministic, well separated values.
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(2, 10, 10)).astype(np.float32) * 2
    attn = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return attn.astype(np.float32)


if __name__ == "__main__":
    a = example()
    np.set_printoptions(precision=9, floatmode="fixed")
    print("attention (heads, 10, 10) flattened:")
    print(", ".join(f"{v:.9g}f" for v in a.ravel()))
    for strat, ratio in [("rank", 0.5), ("rank", 0.25), ("row", 0.34), ("row", 1.0)]:
        axis, v1, v2, sig, kept = fopru(a, ratio, strat, (3, 3))
        print(strat, ratio, axis, f"{v1:.9g}", f"{v2:.9g}", kept)
    print("sig", ", ".join(f"{v:.9g}" for v in fopru(a, 0.5, "rank")[3]))
