"""Inputs (dtypes, strides, batches, Q/K, torch), the budget API and the errors."""
import gc
import sys

import numpy as np
import pytest

import tokensel as ts
from conftest import attention, causal_attention



def test_budget_api():
    cfg = ts.fopru.with_budget(ts.budget.fraction(0.25), 64)
    assert cfg.ratio == 0.25 and ts.fopru.keep_count(64, cfg) == 16
    assert ts.visionzip.with_budget(ts.budget.count(32), 64).dominant == 27
    assert ts.freepruner.with_budget(ts.budget.count(20), 64).mode == ts.freepruner.mode.fixed
    req = ts.fopru.requirements(cfg, ts.model_shape(visual_tokens=64, feature_layer=2, encoder_layers=4))
    assert req.full_maps and req.keep == 16 and req.layers.first == 2 and req.stage == ts.stage.encoder
    with pytest.raises(ValueError, match="prumerge.budget"):
        ts.prumerge.with_budget(ts.budget.fraction(0.5), 64)


def test_keep_argument_equals_with_budget():
    a = attention(np.random.default_rng(0), 2, 65, 65)
    by_cfg = ts.fopru.select(a, ts.fopru.with_budget(ts.budget.count(16), 64))
    assert ts.fopru.select(a, keep=16).tolist() == by_cfg.tolist()
    assert len(ts.fopru.select(a, keep=0.25)) == 16


def test_dtypes_and_strides():
    a = attention(np.random.default_rng(1), 3, 37, 37)
    ref = ts.fopru.select(a, keep=0.5)
    # Non-contiguous views are read in place (transposed copy back to the same values).
    t = np.ascontiguousarray(a.transpose(0, 2, 1)).transpose(0, 2, 1)
    assert not t.flags.c_contiguous
    assert ts.fopru.select(t, keep=0.5).tolist() == ref.tolist()
    h = a.astype(np.float16)
    assert len(ts.fopru.select(h, keep=0.5)) == 18


def test_batch_ragged_and_qk():
    rng = np.random.default_rng(2)
    batch = attention(rng, 3, 2, 17, 17)
    out = ts.fopru.select(batch, keep=0.5)
    assert out.shape == (3, 8)
    for b in range(3):
        assert out[b].tolist() == ts.fopru.select(batch[b], keep=0.5).tolist()
    ragged = ts.fopru.select([batch[0], attention(rng, 2, 26, 26)], keep=0.5)
    assert [len(r) for r in ragged] == [8, 12]
    # Q/K: the same selection as the materialised softmax map.
    q = rng.standard_normal((2, 17, 8)).astype(np.float32)
    k = rng.standard_normal((2, 17, 8)).astype(np.float32)
    logits = q @ k.transpose(0, 2, 1) / np.sqrt(8)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p = (p / p.sum(-1, keepdims=True)).astype(np.float32)
    src = ts.qk_source(q, k)
    assert src.heads == 2 and src.head_dim == 8
    assert ts.fopru.select(src, keep=0.5).tolist() == ts.fopru.select(p, keep=0.5).tolist()


def test_gather():
    src = np.arange(20, dtype=np.float32).reshape(5, 4)
    np.testing.assert_array_equal(ts.gather(src, np.array([4, 0])), src[[4, 0]])
    out = np.zeros((2, 4), dtype=np.float16)
    assert ts.gather(src, [1, 2], out) is out
    np.testing.assert_array_equal(out, src[[1, 2]].astype(np.float16))
    with pytest.raises(ValueError, match="gather_rows.indices"):
        ts.gather(src, [7])


@pytest.mark.parametrize("bad,match", [
    (np.zeros((5, 5), np.float32), r"fopru.attention.ndim = 2: must be 3"),
    (np.zeros((2, 5, 5), np.float64), r"fopru.attention.dtype = float64: must be float32, float16 or bfloat16"),
    (np.zeros((2, 5, 5), np.int32), r"fopru.attention.dtype = int32"),
])
def test_bad_inputs(bad, match):
    with pytest.raises(ValueError, match=match):
        ts.fopru.select(bad)


def test_nan_and_ratio():
    a = attention(np.random.default_rng(3), 2, 17, 17)
    a[1, 3, 4] = np.nan
    with pytest.raises(ts.Error, match="finite"):
        ts.fopru.select(a)
    with pytest.raises(ValueError, match=r"fopru.ratio = 1.5: must be in \(0, 1\]"):
        ts.fopru.select(attention(np.random.default_rng(3), 2, 17, 17), ts.fopru.config(ratio=1.5))
    with pytest.raises(ValueError, match="budget.fraction"):
        ts.fopru.select(a, keep=0.0)
    with pytest.raises(ValueError, match="threads"):
        ts.fopru.select(a, threads=-1)


def test_non_square_and_shape_errors():
    with pytest.raises(ValueError, match="fopru"):
        ts.fopru.select(np.zeros((2, 5, 6), np.float32))
    with pytest.raises(ValueError, match="visionzip.hidden.ndim"):
        a = attention(np.random.default_rng(4), 2, 17, 17)
        ts.visionzip.select(a, None, np.zeros(17, np.float32), ts.visionzip.config(dominant=4, contextual=0))
    with pytest.raises(ValueError, match="fastv.visual"):
        ts.fastv.select(causal_attention(np.random.default_rng(5), 2, 10), (5, 20))


def test_no_reference_leaks():
    a = attention(np.random.default_rng(6), 2, 17, 17)
    k = np.random.default_rng(7).standard_normal((2, 17, 4)).astype(np.float32)
    h = np.random.default_rng(8).standard_normal((17, 6)).astype(np.float32)
    for _ in range(3):  # warm up caches
        ts.fopru.select(a, keep=0.5)
        ts.visionzip.select(a, k, h, ts.visionzip.config(dominant=4, contextual=2))
    before = [sys.getrefcount(x) for x in (a, k, h)]
    for _ in range(50):
        idx = ts.fopru.select(a, keep=0.5)
        _ = ts.visionzip.select(a, k, h, ts.visionzip.config(dominant=4, contextual=2))
        src = ts.qk_source(k, k)
        ts.fopru.select(src)
        del src
        try:
            ts.fopru.select(a, keep=2.0)
        except ValueError:
            pass
    gc.collect()
    assert [sys.getrefcount(x) for x in (a, k, h)] == before
    # Returned arrays own their memory: one reference each, freed with them.
    assert sys.getrefcount(idx) == 2


def test_torch_zero_copy_and_bf16():
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch) - the DLPack path is untested")
    a = attention(np.random.default_rng(9), 2, 26, 26)
    t = torch.from_numpy(a)
    ref = ts.fopru.select(a, keep=0.5).tolist()
    assert ts.fopru.select(t, keep=0.5).tolist() == ref
    assert ts.fopru.select(t.transpose(1, 2).contiguous().transpose(1, 2), keep=0.5).tolist() == ref
    bf = t.to(torch.bfloat16)
    assert len(ts.fopru.select(bf, keep=0.5)) == 12
    assert ts.fopru.select(bf, keep=0.5).tolist() == ts.fopru.select(bf.float().numpy(), keep=0.5).tolist()
    with pytest.raises(ValueError, match="float64"):
        ts.fopru.select(t.double())
    if torch.cuda.is_available() and not ts.built_with_cuda():
        with pytest.raises(ValueError, match="built without CUDA"):
            ts.fopru.select(t.cuda())


def test_prumerge_dense_torch_batch():
    """A [batch, ...] torch batch of PruMerge (indexed per sample: a torch tensor is no Python
    sequence) gives the per-sample calls' indices and merged rows."""
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch) - the DLPack path is untested")
    rng = np.random.default_rng(18)
    q, k = (torch.from_numpy(rng.standard_normal((2, 37, 8)).astype(np.float32)) for _ in range(2))
    f = torch.from_numpy(rng.standard_normal((2, 36, 4)).astype(np.float32))
    got = ts.prumerge.select(q, k, features=f)
    assert len(got) == 2
    for b in range(2):
        idx, rows = ts.prumerge.select(q[b].numpy(), k[b].numpy(), features=f[b].numpy())
        np.testing.assert_array_equal(got[b][0], idx)
        np.testing.assert_array_equal(got[b][1], rows)
