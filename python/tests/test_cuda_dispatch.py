"""CUDA tensors (extension built with TOKENSEL_PYTHON_WITH_CUDA=ON): the methods of the dispatch table
(ts.cuda_methods(): FoPru, freePruner, FitPrune's prune_layer, FastV, PruMerge(+), VisionZip,
DivPrune, DART, VisPruner, pooling) run on the CUDA backend and return exactly the CPU's indices (and
rows); the CPU-only entry points (gather, ...) refuse CUDA tensors by name.
Without a GPU (or without a CUDA build) the device tests skip with the reason; the build check
runs wherever TOKENSEL_EXPECT_PYTHON_CUDA says what the build should be."""
import os

import numpy as np
import pytest

import tokensel as ts
from conftest import attention


def test_extension_was_built_as_expected():
    expected = os.environ.get("TOKENSEL_EXPECT_PYTHON_CUDA")
    if expected is None:
        pytest.skip("TOKENSEL_EXPECT_PYTHON_CUDA is not set (tools/python-test.sh sets it from how it built the package)")
    assert ts.built_with_cuda() == (expected == "1")


def cuda_torch():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    if not ts.built_with_cuda():
        pytest.skip("this tokensel extension was built without CUDA (TOKENSEL_PYTHON_WITH_CUDA=OFF)")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch")
    return torch


DTYPES = ["float32", "float16", "bfloat16"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("keep", [0.5, 0.25, 7])
def test_fopru_cuda_equals_cpu(dtype, keep):
    torch = cuda_torch()
    rng = np.random.default_rng(11)
    for tokens in (17, 26, 50):
        cpu = torch.from_numpy(attention(rng, 4, tokens, tokens)).to(getattr(torch, dtype))
        gpu = cpu.cuda()
        out = ts.fopru.select(gpu, keep=keep)
        assert out.is_cuda and out.dtype == torch.int32
        assert out.cpu().tolist() == ts.fopru.select(cpu, keep=keep).tolist()
        batch = torch.stack([cpu, cpu.flip(-1)])
        got = ts.fopru.select(batch.cuda(), keep=keep).cpu().numpy()
        want = ts.fopru.select(batch, keep=keep)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fastv_cuda_equals_cpu(dtype):
    torch = cuda_torch()
    rng = np.random.default_rng(12)
    cpu = torch.from_numpy(attention(rng, 2, 3, 60, 60)).to(getattr(torch, dtype))
    cfg = ts.fastv.config(ratio=0.5)
    got, res = ts.fastv.select(cpu.cuda(), (5, 40), cfg, return_result=True)
    want, want_res = ts.fastv.select(cpu, (5, 40), cfg, return_result=True)
    np.testing.assert_array_equal(got.cpu().numpy(), want)
    assert [r.count for r in res] == [r.count for r in want_res]
    one = ts.fastv.select(cpu[0].cuda(), (5, 40), cfg)
    assert one.cpu().tolist() == ts.fastv.select(cpu[0], (5, 40), cfg).tolist()


def test_cuda_errors_are_value_errors():
    torch = cuda_torch()
    a = torch.from_numpy(attention(np.random.default_rng(13), 2, 17, 17))
    a[1, 3, 4] = float("nan")
    with pytest.raises(ts.Error, match="finite"):
        ts.fopru.select(a.cuda())
    with pytest.raises(ValueError, match="fopru.attention.ndim"):
        ts.fopru.select(a[0].cuda())
    with pytest.raises(ValueError, match="gather has no CUDA dispatch"):
        ts.gather(a[0].cuda(), np.arange(4, dtype=np.int32))
    q = torch.zeros(17, 8)
    q[0, 2] = float("inf")
    with pytest.raises(ts.Error, match=r"prumerge.queries\[0, 2\]"):  # PruMerge's own names, as on the CPU
        ts.prumerge.select(q.cuda(), torch.zeros(17, 8).cuda())
    with pytest.raises(ValueError, match=r"vispruner.features.device = cpu: must be on the device of the attention \(cuda:0\)"):
        ts.vispruner.select(a.cuda(), torch.zeros(16, 8))
    with pytest.raises(ValueError, match=r"dart.norm_weight.dtype = f16: must be float32 with CUDA inputs"):
        ts.dart.select(torch.zeros(2, 30, 4).cuda(), torch.zeros(30, 8).cuda(), (1, 20), norm_weight=torch.ones(8).half().cuda())


def same(got, want):
    """A CUDA result (tensor, or tuple / list of them and result structs) equals the CPU's."""
    if isinstance(got, (tuple, list)):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            same(g, w)
    elif hasattr(got, "is_cuda"):
        assert got.is_cuda
        np.testing.assert_array_equal(got.cpu().numpy(), np.asarray(want))
    else:
        assert got.count == want.count


@pytest.mark.parametrize("dtype", DTYPES)
def test_feature_methods_cuda_equal_cpu(dtype):
    """DivPrune, VisPruner, DART and VisionZip: one sample and a [batch, ...] batch, CUDA == CPU."""
    torch = cuda_torch()
    rng = np.random.default_rng(14)
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x)).to(getattr(torch, dtype))  # noqa: E731
    att = t(attention(rng, 2, 3, 37, 37))
    feats = t(rng.standard_normal((2, 36, 8)).astype(np.float32))
    keys = t(rng.standard_normal((2, 3, 37, 4)).astype(np.float32))
    hidden = t(rng.standard_normal((2, 37, 8)).astype(np.float32))
    weight = torch.from_numpy(rng.random(8).astype(np.float32) + 0.5)
    zc = ts.visionzip.config(dominant=6, contextual=3)
    calls = [
        lambda dev: ts.divprune.select(dev(feats), keep=9, return_result=True),
        lambda dev: ts.divprune.select(dev(feats[0]), keep=0.25, return_result=True),
        lambda dev: ts.vispruner.select(dev(att), dev(feats), keep=10, return_result=True),
        lambda dev: ts.vispruner.select(dev(att[1]), dev(feats[1]), keep=0.5),
        lambda dev: ts.dart.select(dev(keys), dev(hidden), (1, 30), keep=8, return_result=True),
        lambda dev: ts.dart.select(dev(keys[0]), dev(hidden[0]), (1, 30), norm_weight=dev(weight).float(), keep=8),
        lambda dev: ts.visionzip.select(dev(att), dev(keys), dev(hidden), zc, return_result=True),
        lambda dev: ts.visionzip.select(dev(att[0]), dev(keys[0]), dev(hidden[0]), zc),
        lambda dev: ts.visionzip.select(dev(att[0]), None, dev(hidden[0]), ts.visionzip.config(dominant=5, contextual=0)),
    ]
    for call in calls:
        same(call(lambda x: x.cuda()), call(lambda x: x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_methods_cuda_equal_cpu(dtype):
    """freePruner (stack array, list, batch), FitPrune's prune_layer and pooling: CUDA == CPU."""
    torch = cuda_torch()
    rng = np.random.default_rng(15)
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x)).to(getattr(torch, dtype))  # noqa: E731
    stack = t(attention(rng, 4, 2, 2, 26, 26))  # [L, batch, heads, N, N]
    cfg = ts.freepruner.config(first_layer=0, last_layer=2, k_pivotal=4, complementary_layer=3)
    layer = t(attention(rng, 2, 2, 40, 40))
    feats = t(rng.standard_normal((2, 36, 8)).astype(np.float32))
    calls = [
        lambda dev: ts.freepruner.select(dev(stack[:, 0]), cfg, return_result=True),
        lambda dev: ts.freepruner.select([dev(x) for x in stack[:, 1]], cfg),
        lambda dev: ts.freepruner.select(dev(stack), cfg, return_result=True),
        lambda dev: ts.freepruner.select([dev(x) for x in stack], cfg, keep=0.25),
        lambda dev: ts.fitprune.prune_layer(dev(layer[0]), (2, 30), 11, return_result=True),
        lambda dev: ts.baselines.pool.apply(dev(feats[0])),
        lambda dev: ts.baselines.pool.apply(dev(feats), keep=9),
    ]
    for call in calls:
        same(call(lambda x: x.cuda()), call(lambda x: x))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", [{}, {"plus": True}, {"mode": "parity", "neighbours": 4}, {"merge": False, "extra_token": False}])
def test_prumerge_cuda_equals_cpu(dtype, options):
    """PruMerge(+): one sample, a [batch, ...] batch (one device call), a ragged list (sample by
    sample) and CLS attention rows; indices, merged rows and counts equal the CPU's."""
    torch = cuda_torch()
    # Built here, not in the parametrisation: a module-level nanobind object outlives the extension's types.
    cfg = ts.prumerge.config(**{k: getattr(ts.prumerge.mode, v) if k == "mode" else v for k, v in options.items()})
    rng = np.random.default_rng(16)
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x)).to(getattr(torch, dtype))  # noqa: E731
    q = t(rng.standard_normal((2, 65, 16)).astype(np.float32))
    k = t((rng.standard_normal((2, 65, 16)) * 1.5).astype(np.float32))
    f = t(rng.standard_normal((2, 64, 8)).astype(np.float32))
    q2, k2, f2 = (t(rng.standard_normal(s).astype(np.float32)) for s in ((37, 16), (37, 16), (36, 8)))
    cls = t(attention(rng, 2, 64))
    calls = [
        lambda dev: ts.prumerge.select(dev(q[0]), dev(k[0]), cfg, return_result=True),
        lambda dev: ts.prumerge.select(dev(q[1][:1]), dev(k[1]), cfg, features=dev(f[1]), return_result=True),
        lambda dev: ts.prumerge.select(dev(q), dev(k), cfg, features=dev(f), return_result=True),
        lambda dev: ts.prumerge.select(dev(q), dev(k), cfg),
        lambda dev: ts.prumerge.select([dev(q[0]), dev(q2)], [dev(k[0]), dev(k2)], cfg, features=[dev(f[0]), dev(f2)]),
        lambda dev: ts.prumerge.select_from_attention(dev(cls[0]), cfg, return_result=True),
    ]
    for call in calls:
        same(call(lambda x: x.cuda()), call(lambda x: x))
    # CLS rows as a [batch, n] batch: CUDA only (the CPU binding takes one row at a time).
    got = ts.prumerge.select_from_attention(cls.cuda(), cfg)
    same(got, [ts.prumerge.select_from_attention(row, cfg) for row in cls])


@pytest.mark.parametrize("dtype", DTYPES)
def test_ragged_lists_cuda_equal_cpu(dtype):
    """A ragged list of CUDA samples (each its own size) runs one device call per sample and returns
    the CPU's list of indices (and results / rows)."""
    torch = cuda_torch()
    rng = np.random.default_rng(17)
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x)).to(getattr(torch, dtype))  # noqa: E731
    att = [t(attention(rng, 2, n, n)) for n in (17, 26)]
    feats = [t(rng.standard_normal((n - 1, 8)).astype(np.float32)) for n in (17, 26)]
    llm = [t(attention(rng, 2, n, n)) for n in (30, 41)]
    keys = [t(rng.standard_normal((2, n, 4)).astype(np.float32)) for n in (30, 41)]
    hidden = [t(rng.standard_normal((n, 8)).astype(np.float32)) for n in (30, 41)]
    vkeys = [t(rng.standard_normal((2, n, 4)).astype(np.float32)) for n in (17, 26)]
    vhidden = [t(rng.standard_normal((n, 8)).astype(np.float32)) for n in (17, 26)]
    weight = torch.from_numpy(rng.random(8).astype(np.float32) + 0.5)
    each = lambda dev, xs: [dev(x) for x in xs]  # noqa: E731
    zc = ts.visionzip.config(dominant=5, contextual=2)
    calls = [
        lambda dev: ts.fopru.select(each(dev, att), keep=0.5, return_result=True),
        lambda dev: ts.fastv.select(each(dev, llm), (2, 24), ts.fastv.config(ratio=0.5), return_result=True),
        lambda dev: ts.divprune.select(each(dev, feats), keep=0.25, return_result=True),
        lambda dev: ts.vispruner.select(each(dev, att), each(dev, feats), keep=6, return_result=True),
        lambda dev: ts.visionzip.select(each(dev, att), each(dev, vkeys), each(dev, vhidden), zc, return_result=True),
        lambda dev: ts.visionzip.select(each(dev, att), None, each(dev, vhidden), ts.visionzip.config(dominant=4, contextual=0)),
        lambda dev: ts.dart.select(each(dev, keys), each(dev, hidden), [(1, 20), (3, 30)], keep=6, return_result=True),
        lambda dev: ts.dart.select(each(dev, keys), each(dev, hidden), (1, 20), norm_weight=dev(weight).float(), keep=0.5),
    ]
    for call in calls:
        same(call(lambda x: x.cuda()), call(lambda x: x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_cuda_equals_cpu(dtype):
    """gather of CUDA rows by a CUDA selection's int32 indices (no host round trip): the CPU's rows,
    as a new float32 tensor (a sample or a [batch, ...] batch) or written into out."""
    torch = cuda_torch()
    rng = np.random.default_rng(19)
    src = torch.from_numpy(rng.standard_normal((2, 36, 8)).astype(np.float32)).to(getattr(torch, dtype))
    att = torch.from_numpy(attention(rng, 2, 3, 37, 37)).to(getattr(torch, dtype))
    idx = ts.fopru.select(att.cuda(), keep=9)  # [2, 9] int32 on the device
    want = [ts.gather(src[b], idx[b].cpu().numpy()) for b in range(2)]
    got = ts.gather(src[0].cuda(), idx[0])
    assert got.is_cuda and got.dtype == torch.float32
    same(got, want[0])
    same(ts.gather(src.cuda(), idx), np.stack(want))
    out = torch.zeros(9, 8, dtype=getattr(torch, dtype), device="cuda")
    assert ts.gather(src[1].cuda(), idx[1], out=out) is out
    cpu_out = torch.zeros(9, 8, dtype=getattr(torch, dtype))
    ts.gather(src[1], idx[1].cpu().numpy(), out=cpu_out)
    np.testing.assert_array_equal(out.cpu().float().numpy(), cpu_out.float().numpy())
    bad = idx[0].clone()
    bad[2] = 36
    with pytest.raises(ts.Error, match="index outside the rows of the source"):
        ts.gather(src[0].cuda(), bad)


def qk_with_margin(rng, heads, nq, nk, d, score, k, rounded):
    """Random Q/K, rounded to the test's dtype (the values the kernels read), whose exact scores
    (score(probabilities), float64) have a relative gap above 1e-3 at the top-k cut, so the device
    Q/K path (sums within ~1e-5 of the CPU's) must select what the CPU selects. Also returns the
    exact top-k (ascending)."""
    for _ in range(200):
        q = rounded(rng.standard_normal((heads, nq, d)).astype(np.float32))
        kk = rounded(rng.standard_normal((heads, nk, d)).astype(np.float32))
        logits = np.einsum("hqd,hkd->hqk", q.astype(np.float64), kk.astype(np.float64)) / np.sqrt(d)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        s = np.sort(score(p / p.sum(-1, keepdims=True)))[::-1]
        if (s[k - 1] - s[k]) > 1e-3 * abs(s[k - 1]):
            return q, kk, np.sort(np.argsort(-score(p / p.sum(-1, keepdims=True)), kind="stable")[:k])
    raise AssertionError("no input with a margin at the cut")


def fopru_score(p):
    m = p.mean(0)[1:, 1:]  # head mean, patch submatrix
    s1, s2 = m.mean(1), m.mean(0)
    if abs(s1.var() - s2.var()) <= 1e-3 * max(s1.var(), s2.var()):
        return np.zeros_like(s1)  # no margin in the axis decision: try another input
    return s1 if s1.var() > s2.var() else s2


@pytest.mark.parametrize("dtype", DTYPES)
def test_qk_source_cuda_equals_cpu(dtype):
    """FoPru, FastV, VisPruner and VisionZip from a qk_source of CUDA queries / keys (the device Q/K path, no
    [heads, N, N] map) select what the CPU Q/K path selects on inputs whose top-k cut has a margin."""
    torch = cuda_torch()
    rng = np.random.default_rng(20)
    t = lambda x: torch.from_numpy(x).to(getattr(torch, dtype))  # noqa: E731
    rounded = lambda x: t(x).float().numpy()  # noqa: E731  (the values the kernels read)
    q, k, top = qk_with_margin(rng, 2, 17, 17, 8, fopru_score, 8, rounded)
    cpu = ts.fopru.select(ts.qk_source(t(q), t(k)), keep=0.5, return_result=True)
    np.testing.assert_array_equal(cpu[0], top)  # the score above is FoPru's
    same(ts.fopru.select(ts.qk_source(t(q).cuda(), t(k).cuda()), keep=0.5, return_result=True), cpu)
    visual = (2, 24)
    score = lambda p: p.mean(0)[-1, visual[0]:visual[0] + visual[1]]  # noqa: E731
    q, k, top = qk_with_margin(rng, 2, 1, 30, 8, score, 12, rounded)
    cfg = ts.fastv.config(ratio=0.5)
    cpu = ts.fastv.select([ts.qk_source(t(q), t(k))], visual, cfg, return_result=True)
    np.testing.assert_array_equal(cpu[0][0], top)  # the score above is FastV's
    same(ts.fastv.select([ts.qk_source(t(q).cuda(), t(k).cuda())], visual, cfg, return_result=True), cpu)
    # VisPruner: the important patches by the CLS row (the margin), the others from the features (exact).
    q, k, top = qk_with_margin(rng, 2, 17, 17, 8, lambda p: p.mean(0)[0, 1:], ts.vispruner.important_count(8), rounded)
    feats = t(rng.standard_normal((16, 4)).astype(np.float32))
    cpu = ts.vispruner.select(ts.qk_source(t(q), t(k)), feats, keep=8, return_result=True)
    assert set(top.tolist()) <= set(cpu[0].tolist())
    same(ts.vispruner.select(ts.qk_source(t(q).cuda(), t(k).cuda()), feats.cuda(), keep=8, return_result=True), cpu)
    # VisionZip: the dominant patches by the CLS row (the margin), the contextual ones from keys (exact).
    zc = ts.visionzip.config(dominant=5, contextual=2)
    q, k, top = qk_with_margin(rng, 2, 17, 17, 8, lambda p: p.sum(0)[0, 1:], 4, rounded)  # CLS is the 5th dominant token
    hidden = t(rng.standard_normal((17, 6)).astype(np.float32))
    cpu = ts.visionzip.select(ts.qk_source(t(q), t(k)), t(k), hidden, zc, return_result=True)
    assert set((top + 1).tolist()) <= set(cpu[0].tolist())  # token indices (CLS = 0)
    same(ts.visionzip.select(ts.qk_source(t(q).cuda(), t(k).cuda()), t(k).cuda(), hidden.cuda(), zc, return_result=True), cpu)
