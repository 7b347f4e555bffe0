"""DivPrune, DART and VisPruner: results equal the C++ CLI's on the same input; batched, ragged,
Q/K and f16 forms agree with the single-sample f32 call; bad inputs raise tokensel.Error."""
import numpy as np
import pytest

import tokensel as ts
from conftest import attention
from test_cli_parity import run_cli


def dart_inputs(rng, start=3, count=24, text=8, kv_heads=2, d_head=8, width=16):
    length = start + count + text
    keys = rng.standard_normal((kv_heads, length, d_head)).astype(np.float32)
    hidden = rng.standard_normal((length, width)).astype(np.float32)
    weight = (1.0 + 0.5 * rng.standard_normal(width)).astype(np.float32)
    return keys, hidden, weight


# ---- parity with the CLI -----------------------------------------------------------------------

@pytest.mark.parametrize("flags,cfg", [
    (["--ratio", 0.25], dict(ratio=0.25)),
    (["--count", 7], dict(count=7)),
    ([], dict()),
])
def test_divprune_cli(cli, tmp_path, flags, cfg):
    f = np.random.default_rng(11).standard_normal((60, 12)).astype(np.float32)
    got = run_cli(cli, tmp_path, ["--method", "divprune"] + flags, features=f)
    idx, res = ts.divprune.select(f, ts.divprune.config(**cfg), return_result=True)
    assert idx.dtype == np.int32
    assert idx.tolist() == got["kept"]
    assert res.count == got["count"]
    assert res.min_distance == pytest.approx(got["stats"]["min_distance"], rel=1e-6)


@pytest.mark.parametrize("flags,cfg,weighted", [
    (["--ratio", 0.5], dict(ratio=0.5), True),
    (["--count", 13, "--image-pivots", 2, "--text-pivots", 3], dict(count=13, image_pivots=2, text_pivots=3), False),
    ([], dict(), True),
])
def test_dart_cli(cli, tmp_path, flags, cfg, weighted):
    keys, hidden, weight = dart_inputs(np.random.default_rng(12))
    arrays = dict(keys=keys, features=hidden)
    if weighted:
        arrays["norm_weight"] = weight
    got = run_cli(cli, tmp_path, ["--method", "dart", "--visual-start", 3, "--visual-count", 24] + flags, **arrays)
    idx, res = ts.dart.select(keys, hidden, (3, 24), ts.dart.config(**cfg), norm_weight=weight if weighted else None,
                              return_result=True)
    assert idx.tolist() == got["kept"]
    assert res.count == got["count"]
    assert res.image_pivots == got["stats"]["image_pivots"]
    assert res.text_pivots == got["stats"]["text_pivots"]


@pytest.mark.parametrize("flags,cfg", [
    (["--count", 20], dict(count=20)),
    (["--ratio", 0.4, "--important-ratio", 0.25, "--rounds-drop", 3], dict(ratio=0.4, important_ratio=0.25, rounds_drop=3)),
    (["--count", 10, "--important-ratio", 1.0], dict(count=10, important_ratio=1.0)),
])
def test_vispruner_cli(cli, tmp_path, flags, cfg):
    rng = np.random.default_rng(13)
    a = attention(rng, 4, 65, 65)
    f = rng.standard_normal((64, 16)).astype(np.float32)
    got = run_cli(cli, tmp_path, ["--method", "vispruner"] + flags, attn=a, features=f)
    idx, res = ts.vispruner.select(a, f, ts.vispruner.config(**cfg), return_result=True)
    assert idx.tolist() == got["kept"]
    assert res.count == got["count"]
    assert (res.important, res.diverse, res.rounds) == (got["stats"]["important"], got["stats"]["diverse"], got["stats"]["rounds"])


# ---- forms: batch, ragged, keep=, strides, Q/K, f16 ----------------------------------------------

def test_divprune_forms():
    rng = np.random.default_rng(21)
    batch = rng.standard_normal((3, 40, 8)).astype(np.float32)
    single = [ts.divprune.select(batch[b], keep=0.25).tolist() for b in range(3)]
    out = ts.divprune.select(batch, keep=0.25)
    assert out.shape == (3, 10) and out.tolist() == single
    other = rng.standard_normal((17, 5)).astype(np.float32)
    ragged, res = ts.divprune.select([batch[0], other], keep=4, return_result=True)
    assert ragged[0].tolist() == ts.divprune.select(batch[0], ts.divprune.config(count=4)).tolist()
    assert [len(r) for r in ragged] == [4, 4] and [r.count for r in res] == [4, 4]
    # Non-contiguous rows read in place; keep= equals with_budget; the config fields round-trip.
    t = np.asfortranarray(batch[1])
    assert ts.divprune.select(t, keep=0.25).tolist() == single[1]
    cfg = ts.divprune.with_budget(ts.budget.fraction(0.25), 40)
    assert cfg.ratio == 0.25 and cfg.count is None
    assert ts.divprune.keep_count(576, ts.divprune.config()) == 56
    assert ts.divprune.requirements(ts.divprune.config(count=8), ts.model_shape(visual_tokens=64)).keep == 8


def test_dart_forms():
    rng = np.random.default_rng(22)
    k0, h0, w = dart_inputs(rng)
    k1, h1, _ = dart_inputs(rng)
    cfg = ts.dart.config(count=10)
    single = [ts.dart.select(k, h, (3, 24), cfg, norm_weight=w).tolist() for k, h in ((k0, h0), (k1, h1))]
    out = ts.dart.select(np.stack([k0, k1]), np.stack([h0, h1]), (3, 24), cfg, norm_weight=w)
    assert out.shape == (2, 10) and out.tolist() == single
    # Ragged: one span for all, or one per sample.
    k2, h2, _ = dart_inputs(rng, start=1, count=30, text=5)
    ragged = ts.dart.select([k0, k2], [h0, h2], [(3, 24), (1, 30)], keep=10, norm_weight=w)
    assert ragged[0].tolist() == single[0]
    assert ragged[1].tolist() == ts.dart.select(k2, h2, (1, 30), cfg, norm_weight=w).tolist()
    assert ts.dart.select([k0, k1], [h0, h1], (3, 24), cfg, norm_weight=w)[1].tolist() == single[1]
    # An f16 weight is widened exactly: same result as its f32 copy.
    w16 = w.astype(np.float16)
    assert ts.dart.select(k0, h0, (3, 24), cfg, norm_weight=w16).tolist() == \
        ts.dart.select(k0, h0, (3, 24), cfg, norm_weight=w16.astype(np.float32)).tolist()
    req = ts.dart.requirements(ts.dart.config(layer=3), ts.model_shape(visual_tokens=576))
    assert (req.layers.first, req.layers.last, req.keys, req.hidden_states) == (2, 2, True, True)
    assert ts.dart.keep_count(576, ts.dart.config()) == 127


def test_vispruner_forms_and_qk():
    rng = np.random.default_rng(23)
    a = attention(rng, 2, 2, 37, 37)
    f = rng.standard_normal((2, 36, 8)).astype(np.float32)
    cfg = ts.vispruner.config(count=12, rounds_drop=2)
    single = [ts.vispruner.select(a[b], f[b], cfg).tolist() for b in range(2)]
    out = ts.vispruner.select(a, f, cfg)
    assert out.shape == (2, 12) and out.tolist() == single
    # Only the CLS query row is read: [heads, 1, N] gives the same.
    assert ts.vispruner.select(a[0][:, :1, :], f[0], cfg).tolist() == single[0]
    ragged = ts.vispruner.select([a[0], attention(rng, 2, 26, 26)], [f[0], rng.standard_normal((25, 8)).astype(np.float32)], keep=0.5)
    assert [len(r) for r in ragged] == [18, 12]
    # Q/K input: the same selection as the materialised softmax map of the same logits.
    q = rng.standard_normal((2, 37, 8)).astype(np.float32)
    k = rng.standard_normal((2, 37, 8)).astype(np.float32)
    logits = q @ k.transpose(0, 2, 1) / np.sqrt(8)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p = (p / p.sum(-1, keepdims=True)).astype(np.float32)
    got = ts.vispruner.select(ts.qk_source(q, k), f[1], cfg)
    assert got.tolist() == ts.vispruner.select(p, f[1], cfg).tolist()
    assert ts.vispruner.select([ts.qk_source(q, k)], [f[1]], cfg)[0].tolist() == got.tolist()
    assert ts.vispruner.important_count(64, ts.vispruner.config()) == 32
    assert ts.vispruner.keep_count(576, ts.vispruner.config()) == 64


def test_f16_equals_widened_f32():
    """f16 input and the same values widened to f32 select the same tokens (as test_element_types)."""
    rng = np.random.default_rng(24)
    f16 = rng.standard_normal((50, 12)).astype(np.float16)
    assert ts.divprune.select(f16, keep=0.3).tolist() == ts.divprune.select(f16.astype(np.float32), keep=0.3).tolist()
    keys, hidden, w = (x.astype(np.float16) for x in dart_inputs(rng))
    cfg = ts.dart.config(ratio=0.5)
    assert ts.dart.select(keys, hidden, (3, 24), cfg, norm_weight=w).tolist() == \
        ts.dart.select(keys.astype(np.float32), hidden.astype(np.float32), (3, 24), cfg, norm_weight=w.astype(np.float32)).tolist()
    a = attention(rng, 3, 50, 50).astype(np.float16)
    f = rng.standard_normal((49, 8)).astype(np.float16)
    cfg = ts.vispruner.config(count=15)
    assert ts.vispruner.select(a, f, cfg).tolist() == ts.vispruner.select(a.astype(np.float32), f.astype(np.float32), cfg).tolist()


def test_torch_bf16():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(25)
    f = torch.from_numpy(rng.standard_normal((40, 8)).astype(np.float32)).to(torch.bfloat16)
    assert ts.divprune.select(f, keep=10).tolist() == ts.divprune.select(f.float().numpy(), keep=10).tolist()
    a = torch.from_numpy(attention(rng, 2, 41, 41)).to(torch.bfloat16)
    feats = torch.from_numpy(rng.standard_normal((40, 8)).astype(np.float32)).to(torch.bfloat16)
    assert ts.vispruner.select(a, feats, keep=10).tolist() == ts.vispruner.select(a.float().numpy(), feats.float().numpy(), keep=10).tolist()
    # Transposed (non-contiguous) tensor read in place.
    ft = feats.t().contiguous().t()
    assert not ft.is_contiguous()
    assert ts.vispruner.select(a, ft, keep=10).tolist() == ts.vispruner.select(a, feats, keep=10).tolist()


# ---- errors ------------------------------------------------------------------------------------

def test_divprune_errors():
    f = np.random.default_rng(31).standard_normal((20, 4)).astype(np.float32)
    with pytest.raises(ts.Error, match=r"divprune.features.ndim = 1: must be 2"):
        ts.divprune.select(f[0])
    with pytest.raises(ts.Error, match=r"divprune.features.dtype = float64: must be float32, float16 or bfloat16"):
        ts.divprune.select(f.astype(np.float64))
    with pytest.raises(ts.Error, match=r"divprune.ratio = 1.5: must be in \(0, 1\]"):
        ts.divprune.select(f, ts.divprune.config(ratio=1.5))
    with pytest.raises(ts.Error, match=r"divprune.ratio/divprune.count"):
        ts.divprune.select(f, ts.divprune.config(ratio=0.5, count=3))
    with pytest.raises(ts.Error, match=r"budget.count = 30: exceeds the 20 visual tokens of divprune"):
        ts.divprune.select(f, keep=30)
    bad = f.copy()
    bad[4, 2] = np.nan
    with pytest.raises(ts.Error, match="finite"):
        ts.divprune.select(bad)
    with pytest.raises(ts.Error, match=r"divprune.features\[1\].ndim"):
        ts.divprune.select([f, f[0]])
    with pytest.raises(ts.Error, match=r"divprune.features = <class 'NoneType'>: must be a NumPy array"):
        ts.divprune.select(None)


def test_dart_errors():
    keys, hidden, w = dart_inputs(np.random.default_rng(32))
    with pytest.raises(ts.Error, match=r"dart.keys.ndim = 2: must be 3"):
        ts.dart.select(keys[0], hidden, (3, 24))
    with pytest.raises(ts.Error, match=r"dart.keys.dtype = f16: must equal the dtype of dart.hidden"):
        ts.dart.select(keys.astype(np.float16), hidden, (3, 24))
    with pytest.raises(ts.Error, match=r"dart.hidden.dtype = int64"):
        ts.dart.select(keys, hidden.astype(np.int64), (3, 24))
    with pytest.raises(ts.Error, match=r"dart.ratio = 0: must be in \(0, 1\]"):
        ts.dart.select(keys, hidden, (3, 24), ts.dart.config(ratio=0.0))
    with pytest.raises(ts.Error, match=r"dart.visual"):
        ts.dart.select(keys, hidden, (30, 24))
    with pytest.raises(ts.Error, match=r"dart.norm_weight"):
        ts.dart.select(keys, hidden, (3, 24), norm_weight=w[:5])
    with pytest.raises(ts.Error, match=r"dart.visual = 3: must be a \(start, count\) pair"):
        ts.dart.select(keys, hidden, 3)
    bad = keys.copy()
    bad[1, 7, 2] = np.inf
    with pytest.raises(ts.Error, match=r"dart.keys\[1, 7, 2\] = inf: values must be finite"):
        ts.dart.select(bad, hidden, (3, 24))
    with pytest.raises(ts.Error, match=r"dart.keys = <class 'NoneType'>: must be a NumPy array"):
        ts.dart.select(None, hidden, (3, 24))
    with pytest.raises(ts.Error, match=r"dart.norm_weight = <class 'str'>"):
        ts.dart.select(keys, hidden, (3, 24), norm_weight="w")
    with pytest.raises(ts.Error, match=r"dart.layer"):
        ts.dart.validate(ts.dart.config(layer=0))


def test_vispruner_errors():
    rng = np.random.default_rng(33)
    a = attention(rng, 2, 33, 33)
    f = rng.standard_normal((32, 8)).astype(np.float32)
    with pytest.raises(ts.Error, match=r"vispruner.attention.ndim = 2: must be 3"):
        ts.vispruner.select(a[0], f)
    with pytest.raises(ts.Error, match=r"vispruner.features.extent\(0\) = 33: must equal the 32 patches"):
        ts.vispruner.select(a, np.zeros((33, 8), np.float32), keep=4)
    with pytest.raises(ts.Error, match=r"vispruner.features.dtype = f16: must equal the dtype of the attention"):
        ts.vispruner.select(a, f.astype(np.float16), keep=4)
    with pytest.raises(ts.Error, match=r"vispruner.attention.dtype = float64"):
        ts.vispruner.select(a.astype(np.float64), f, keep=4)
    with pytest.raises(ts.Error, match=r"vispruner.important_ratio = 1.5: must be in \[0, 1\]"):
        ts.vispruner.select(a, f, ts.vispruner.config(count=4, important_ratio=1.5))
    with pytest.raises(ts.Error, match=r"vispruner.ratio = 2: must be in \(0, 1\]"):
        ts.vispruner.select(a, f, ts.vispruner.config(ratio=2.0))
    with pytest.raises(ts.Error, match=r"vispruner.count = 64: exceeds the 32 patches"):
        ts.vispruner.select(a, f)  # default count 64 > 32 patches
    bad = a.copy()
    bad[1, 0, 5] = np.nan
    with pytest.raises(ts.Error, match="finite"):
        ts.vispruner.select(bad, f, keep=4)
    with pytest.raises(ts.Error, match=r"vispruner.features"):
        ts.vispruner.select([a, a], [f], keep=4)
    with pytest.raises(ts.Error, match=r"vispruner.features = <class 'NoneType'>: must be a NumPy array"):
        ts.vispruner.select(a, None, keep=4)
    with pytest.raises(ts.Error, match=r"vispruner.attention = <class 'NoneType'>"):
        ts.vispruner.select(None, f, keep=4)
