#!/usr/bin/env python3
"""Expected numbers for tests/test_iqr_outliers.cpp, from numpy's own percentile.

Run: python3 tools/reference/iqr_reference.py
Every vector is float32 data widened to float64 before np.percentile (the library computes
quartiles in double). Values print with repr() so they round-trip exactly.
"""
import numpy as np


def case(name, x, c=1.5, lower=False):
    x32 = np.asarray(x, dtype=np.float32)
    x64 = x32.astype(np.float64)
    q1 = np.percentile(x64, 25)
    q3 = np.percentile(x64, 75)
    up = q3 + c * (q3 - q1)
    lo = q1 - c * (q3 - q1)
    idx = np.where(x64 > up)[0] if not lower else np.where((x64 > up) | (x64 < lo))[0]
    print(f"// {name}: n={len(x32)} c={c} lower={lower}")
    print("//   x = {" + ", ".join(repr(float(v)) + "f" for v in x32) + "}")
    print(f"//   q1 = {q1!r}, q3 = {q3!r}, upper = {up!r}, lower = {lo!r}")
    print(f"//   outliers = {list(map(int, idx))}")


def naive_differs(x, q):
    """True when a + (b-a)*t (without numpy's t >= 0.5 branch) gives other bits than numpy."""
    s = np.sort(np.asarray(x, dtype=np.float32).astype(np.float64))
    v = (len(s) - 1) * q
    i = int(np.floor(v))
    t = v - i
    naive = s[i] + (s[i + 1] - s[i]) * t
    return naive != np.percentile(s, q * 100), naive


print(f"// numpy {np.__version__}")
case("odd", [3, 1, 4, 1, 5, 9, 2])
case("even8 (positions 1.75 and 5.25: t >= 0.5 and t < 0.5)", [0.5, 7.25, 1.5, 3.0, 2.0, 10.0, 4.5, 100.0])
case("ties", [1, 1, 1, 1, 2, 2, 2, 2, 2, 50])
case("fence exactly hit (6 is on the fence, not an outlier)", [0, 1, 2, 3, 6])
case("just above the fence", [0, 1, 2, 3, np.nextafter(np.float32(6), np.float32(7))])
case("lower fence on", [-40, 10, 11, 12, 13, 14, 15, 60], lower=True)
case("lower fence off (same data)", [-40, 10, 11, 12, 13, 14, 15, 60])
case("multiplier 0", [1, 2, 3, 4, 5, 6], c=0.0)
case("single value", [2.5])

# percentile_linear at q = 0.3 on n = 10 (position 2.7, t >= 0.5): random float32 data where
# numpy's second lerp form gives other bits than the naive a + (b-a)*t. (For q = 0.25 / 0.75 on
# float32 data both forms are exact, so the quartiles alone cannot tell them apart.)
rng = np.random.default_rng(7)
for trial in range(100000):
    x = rng.normal(size=10).astype(np.float32)
    differs, naive = naive_differs(x, 0.3)
    if differs:
        print(f"// lerp branch matters (seed 7, trial {trial}): q = 0.3")
        print("//   x = {" + ", ".join(repr(float(v)) + "f" for v in x) + "}")
        print(f"//   numpy = {np.percentile(x.astype(np.float64), 30)!r}, naive = {naive!r}")
        break

# A softmax-like attention row of 50 values with a few spikes (PruMerge's use).
rng = np.random.default_rng(3)
z = rng.normal(size=50).astype(np.float32)
z[[4, 17, 33]] += 4.0
p = np.exp(z - z.max())
p = (p / p.sum()).astype(np.float32)
case("attention-like n=50", p)
