"""Independent Python reference for the baselines (spec section 8) used to derive the expected
numbers in tests/test_baselines.cpp. Run: python3 tools/reference/baselines_reference.py

random:  splitmix64 started at seed + stream * 0xD1B54A32D192ED03; bounded draw by rejecting
         x < 2^64 mod b, then x mod b; partial Fisher-Yates; first k sorted.
uniform: kr = clamp(round(sqrt(k rows / cols)), ceil(k / cols), min(rows, k)); row r at
         floor((2r+1) rows / (2 kr)) with floor((r+1) k / kr) - floor(r k / kr) tokens at columns
         floor((2i+1) cols / (2 k_r)).
pool:    w x w windows, partial edge windows averaged over the tokens they hold."""
import math

import numpy as np

M64 = (1 << 64) - 1


def splitmix64(state):
    while True:
        state = (state + 0x9E3779B97F4A7C15) & M64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        yield z ^ (z >> 31)


def random_select(n, k, seed, stream=0):
    gen = splitmix64((seed + stream * 0xD1B54A32D192ED03) & M64)
    perm = list(range(n))
    for i in range(k):
        b = n - i
        thr = (1 << 64) % b
        while True:
            x = next(gen)
            if x >= thr:
                break
        j = i + x % b
        perm[i], perm[j] = perm[j], perm[i]
    return sorted(perm[:k])


def uniform_select(rows, cols, k):
    if k == 0:
        return []
    lo, hi = -(-k // cols), min(rows, k)
    x = math.sqrt(k * rows / cols)
    kr = int(math.floor(x + 0.5))  # llround: half away from zero (x >= 0)
    kr = max(lo, min(hi, kr))
    out = []
    for r in range(kr):
        row = (2 * r + 1) * rows // (2 * kr)
        kk = (r + 1) * k // kr - r * k // kr
        out += [row * cols + (2 * i + 1) * cols // (2 * kk) for i in range(kk)]
    return out


def pool(features, rows, cols, w=2):
    f = features.reshape(rows, cols, -1)
    out = []
    for r0 in range(0, rows, w):
        for c0 in range(0, cols, w):
            out.append(f[r0:r0 + w, c0:c0 + w].reshape(-1, f.shape[2]).mean(axis=0))
    return np.array(out)


if __name__ == "__main__":
    print("random n=20 k=5 seed=42:", random_select(20, 5, 42))
    print("random n=20 k=5 seed=42 stream=1:", random_select(20, 5, 42, 1))
    print("random n=20 k=5 seed=43:", random_select(20, 5, 43))
    print("random n=576 k=8 seed=2024:", random_select(576, 8, 2024))
    print("uniform 1x10 k=3:", uniform_select(1, 10, 3))
    print("uniform 1x10 k=10:", uniform_select(1, 10, 10))
    print("uniform 4x4 k=4:", uniform_select(4, 4, 4))
    print("uniform 4x4 k=5:", uniform_select(4, 4, 5))
    print("uniform 3x5 k=7:", uniform_select(3, 5, 7))
    print("uniform 24x24 k=64:", uniform_select(24, 24, 64))
    f = np.arange(1, 10, dtype=np.float64).reshape(9, 1)
    print("pool 3x3 d=1 values 1..9:", pool(f, 3, 3).ravel().tolist())
    f = np.array([[i, -2 * i] for i in range(16)], dtype=np.float64)
    print("pool 4x4 d=2 (i, -2i):", pool(f, 4, 4).tolist())
    f = np.array([[i * i] for i in range(10)], dtype=np.float64)
    print("pool 2x5 d=1 (i^2):", pool(f, 2, 5).ravel().tolist())
    print("pool 2x5 d=1 (i^2) w=3:", pool(f, 2, 5, 3).ravel().tolist())
