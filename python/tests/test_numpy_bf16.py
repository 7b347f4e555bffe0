"""NumPy arrays of ml_dtypes.bfloat16 are read in place as bf16 (the extension imports them as
their uint16 view and tags the dtype): results equal the same bits passed as a torch bf16 tensor,
and the bf16 rounding is really applied (not a float32 upcast)."""
import sys

import numpy as np
import pytest

import tokensel as ts
from conftest import attention

ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes is not installed (pip install ml_dtypes)")
bf16 = ml_dtypes.bfloat16


def torch_bf16(x):
    """The same bf16 bits as a torch tensor (via uint16, so no rounding happens twice)."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    bits = np.ascontiguousarray(x).view(np.uint16).astype(np.int32)
    return torch.from_numpy(bits).to(torch.int16).view(torch.bfloat16)


def test_bf16_is_rounded_and_read_in_place():
    rng = np.random.default_rng(41)
    a = attention(rng, 2, 26, 26)
    b = a.astype(bf16)
    got = ts.fopru.select(b, keep=0.5, return_result=True)
    # The statistics are computed from the bf16 values: equal to the float32 run on the rounded data.
    want = ts.fopru.select(b.astype(np.float32), keep=0.5, return_result=True)
    assert got[0].tolist() == want[0].tolist()
    assert got[1].row_variance == want[1].row_variance and got[1].column_variance == want[1].column_variance
    # A transposed view is read in place (strides honoured, no copy that would make it contiguous).
    t = b.transpose(0, 2, 1)
    assert not t.flags.c_contiguous
    assert ts.fopru.select(t, keep=0.5).tolist() == ts.fopru.select(t.astype(np.float32), keep=0.5).tolist()


def test_bf16_equals_torch_bf16():
    rng = np.random.default_rng(42)
    a = attention(rng, 3, 41, 41).astype(bf16)
    f = rng.standard_normal((40, 8)).astype(bf16)
    h = rng.standard_normal((41, 8)).astype(bf16)
    k = rng.standard_normal((3, 41, 4)).astype(bf16)
    ta, tf, th, tk = (torch_bf16(x) for x in (a, f, h, k))
    assert ts.fopru.select(a, keep=0.25).tolist() == ts.fopru.select(ta, keep=0.25).tolist()
    assert ts.divprune.select(f, keep=10).tolist() == ts.divprune.select(tf, keep=10).tolist()
    assert ts.vispruner.select(a, f, keep=10).tolist() == ts.vispruner.select(ta, tf, keep=10).tolist()
    cfg = ts.visionzip.config(dominant=6, contextual=3)
    i1, r1 = ts.visionzip.select(a, k, h, cfg)
    i2, r2 = ts.visionzip.select(ta, tk, th, cfg)
    assert i1.tolist() == i2.tolist()
    np.testing.assert_array_equal(r1, r2)
    batch = np.stack([a, a[:, ::-1, ::-1]])
    np.testing.assert_array_equal(ts.fopru.select(batch, keep=7), ts.fopru.select(torch_bf16(batch), keep=7))


def test_bf16_mixed_dtypes_and_refcounts():
    rng = np.random.default_rng(43)
    a = attention(rng, 2, 17, 17).astype(bf16)
    f = rng.standard_normal((16, 8)).astype(np.float32)
    with pytest.raises(ts.Error, match=r"vispruner.features.dtype = f32: must equal the dtype of .* \(bf16\)"):
        ts.vispruner.select(a, f, keep=4)
    before = sys.getrefcount(a)
    for _ in range(3):
        ts.fopru.select(a, keep=0.5)
    assert sys.getrefcount(a) == before
    # Other ml_dtypes (8-bit floats) are not bf16: refused, nothing reinterpreted.
    with pytest.raises(ts.Error, match=r"fopru.attention.dtype = float8_e4m3fn: must be float32, float16 or bfloat16"):
        ts.fopru.select(attention(rng, 2, 17, 17).astype(ml_dtypes.float8_e4m3fn))
