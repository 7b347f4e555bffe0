"""Independent NumPy reference for VisionZip (spec section 7) used to derive the expected numbers
in tests/test_visionzip.cpp. Run: python3 tools/reference/visionzip_reference.py

Semantics (from the spec and the official code's behaviour): CLS attention row summed over heads,
top (dominant - 1) patches (ties: lower index) plus CLS; remaining tokens ascending; targets at
remaining positions 0, step, ... (step = max(1, R // contextual), first `contextual`); every other
remaining token goes to the target with the largest cosine of the head-mean keys (ties: first
target); contextual = x[target] + mean(x[assigned]) (just x[target] when nothing is assigned)."""
import numpy as np


def visionzip(cls_rows, keys, hidden, dominant, contextual):
    n = hidden.shape[0]
    score = cls_rows.sum(axis=0)[1:]
    order = sorted(range(n - 1), key=lambda j: (-score[j], j))
    dom = [0] + sorted(j + 1 for j in order[: dominant - 1])
    rest = [i for i in range(n) if i not in dom]
    rows = [hidden[i] for i in dom]
    idx = list(dom)
    if contextual > 0:
        r = len(rest)
        step = max(1, r // contextual)
        tpos = list(range(0, r, step))[:contextual]
        k = keys.mean(axis=0)[rest]
        norm = np.linalg.norm(k, axis=1, keepdims=True)
        k = np.where(norm > 0, k / np.where(norm > 0, norm, 1), 0)
        groups = {t: [] for t in range(contextual)}
        for p in range(r):
            if p in tpos:
                continue
            sims = [float(k[p] @ k[q]) for q in tpos]
            groups[int(np.argmax(sims))].append(rest[p])  # argmax: first maximum
        for t, q in enumerate(tpos):
            g = groups[t]
            mean = hidden[g].mean(axis=0) if g else np.zeros(hidden.shape[1])
            rows.append(hidden[rest[q]] + mean)
            idx.append(rest[q])
    return idx, np.array(rows)


def tiny_case():
    cls = np.array([[0.5, 0.0625, 0.0625, 0.25, 0.0625, 0.25, 0.0625, 0.125, 0.0625, 0.0625],
                    [0.5, 0.0625, 0.125, 0.25, 0.0625, 0.125, 0.0625, 0.25, 0.0625, 0.0625]])
    k0 = [[0.5, 0.5], [2, 1], [0.25, 1], [1, -1], [1.25, 0.5], [-1, -1], [1, 3], [1.5, 0.5], [-1, 0.5], [2, -2]]
    k1 = [[0.5, 0.5], [2, -1], [1.75, -0.5], [1, -1], [-0.75, 1.5], [-1, -1], [-1, 3], [0.5, 1.5], [-1, 0.5], [4, 0]]
    keys = np.array([k0, k1], dtype=np.float64)
    hidden = np.array([[i, 2 * i + 1, (i % 3) - 1] for i in range(10)], dtype=np.float64)
    return cls, keys, hidden


if __name__ == "__main__":
    cls, keys, hidden = tiny_case()
    for dom, ctx in [(3, 2), (3, 7), (3, 0), (1, 3), (10, 0)]:
        idx, rows = visionzip(cls, keys, hidden, dom, ctx)
        print(f"dominant={dom} contextual={ctx} indices={idx}")
        print("  rows:", rows.tolist())
