"""Every method's result equals the C++ CLI's on the same input (kept indices, and output rows)."""
import json
import subprocess

import numpy as np
import pytest

import tokensel as ts
from conftest import attention, causal_attention


def run_cli(cli, tmp_path, args, **arrays):
    cmd = [cli, "select"] + [str(a) for a in args]
    for flag, arr in arrays.items():
        path = tmp_path / f"{flag}.npy"
        np.save(path, arr)
        cmd += [f"--{flag.replace('_', '-')}", str(path)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("ratio,strategy", [(0.25, "rank"), (0.5, "rank"), (0.5, "row"), (1.0, "rank")])
def test_fopru(cli, tmp_path, ratio, strategy):
    a = attention(np.random.default_rng(1), 4, 65, 65)
    got = run_cli(cli, tmp_path, ["--method", "fopru", "--ratio", ratio, "--strategy", strategy], attn=a)
    cfg = ts.fopru.config(ratio=ratio, strategy=getattr(ts.fopru.strategy, strategy))
    idx, res = ts.fopru.select(a, cfg, return_result=True)
    assert idx.tolist() == got["kept"]
    assert res.count == got["count"]
    assert res.axis.name == got["stats"]["axis"]


def test_freepruner(cli, tmp_path):
    stack = attention(np.random.default_rng(2), 5, 4, 50, 50)
    flags = ["--first-layer", 1, "--last-layer", 3, "--complementary-layer", 3, "--k-pivotal", 4]
    got = run_cli(cli, tmp_path, ["--method", "freepruner"] + flags, attn=stack)
    cfg = ts.freepruner.config(first_layer=1, last_layer=3, complementary_layer=3, k_pivotal=4)
    idx, res = ts.freepruner.select(stack, cfg, return_result=True)
    assert idx.tolist() == got["kept"]
    assert res.pivotal == got["stats"]["pivotal"]
    # The same from a list of per-layer arrays and in fixed mode.
    assert ts.freepruner.select(list(stack), cfg).tolist() == got["kept"]
    fixed = run_cli(cli, tmp_path, ["--method", "freepruner", "--mode", "fixed", "--budget", 12] + flags, attn=stack)
    assert ts.freepruner.select(stack, cfg, keep=12).tolist() == fixed["kept"]


def test_fitprune(cli, tmp_path):
    a = causal_attention(np.random.default_rng(3), 4, 40)
    got = run_cli(cli, tmp_path, ["--method", "fitprune", "--drop", 7, "--visual-start", 3, "--visual-count", 24], attn=a)
    idx, res = ts.fitprune.prune_layer(a, (3, 24), 7, return_result=True)
    assert idx.tolist() == got["kept"]
    assert res.dropped == 7


@pytest.mark.parametrize("ratio", [0.5, 0.75])
def test_fastv(cli, tmp_path, ratio):
    a = causal_attention(np.random.default_rng(4), 4, 40)
    got = run_cli(cli, tmp_path, ["--method", "fastv", "--ratio", ratio, "--visual-start", 3, "--visual-count", 24], attn=a)
    idx = ts.fastv.select(a, (3, 24), ts.fastv.config(ratio=ratio))
    assert idx.tolist() == got["kept"]


@pytest.mark.parametrize("plus", [False, True])
def test_prumerge(cli, tmp_path, plus):
    rng = np.random.default_rng(5)
    q = rng.standard_normal((65, 32)).astype(np.float32)
    k = (rng.standard_normal((65, 32)) * 1.5).astype(np.float32)
    f = rng.standard_normal((64, 16)).astype(np.float32)
    args = ["--method", "prumerge", "--out", tmp_path / "rows.npy"] + (["--plus"] if plus else [])
    got = run_cli(cli, tmp_path, args, queries=q, keys=k, features=f)
    idx, rows = ts.prumerge.select(q, k, ts.prumerge.config(plus=plus), features=f)
    assert idx.tolist() == got["kept"]
    np.testing.assert_array_equal(rows, np.load(tmp_path / "rows.npy"))


def test_visionzip(cli, tmp_path):
    rng = np.random.default_rng(6)
    a = attention(rng, 4, 65, 65)
    keys = rng.standard_normal((4, 65, 16)).astype(np.float32)
    hidden = rng.standard_normal((65, 24)).astype(np.float32)
    got = run_cli(cli, tmp_path, ["--method", "visionzip", "--dominant", 12, "--contextual", 4, "--out", tmp_path / "rows.npy"],
                  attn=a, keys=keys, features=hidden)
    idx, rows = ts.visionzip.select(a, keys, hidden, ts.visionzip.config(dominant=12, contextual=4))
    assert idx.tolist() == got["kept"]
    np.testing.assert_array_equal(rows, np.load(tmp_path / "rows.npy"))


def test_baselines(cli, tmp_path):
    got = run_cli(cli, tmp_path, ["--method", "random", "--n", 50, "--ratio", 0.3, "--seed", 7])
    assert ts.baselines.random.select(50, ts.baselines.random.config(ratio=0.3, seed=7)).tolist() == got["kept"]
    got = run_cli(cli, tmp_path, ["--method", "uniform", "--n", 64, "--count", 10])
    assert ts.baselines.uniform.select(ts.token_grid(8, 8), keep=10).tolist() == got["kept"]
    f = np.random.default_rng(7).standard_normal((36, 8)).astype(np.float32)
    got = run_cli(cli, tmp_path, ["--method", "pool", "--window", 4, "--out", tmp_path / "pool.npy"], features=f)
    rows = ts.baselines.pool.apply(f, config=ts.baselines.pool.config(window=4))
    assert rows.shape[0] == got["count"]
    np.testing.assert_array_equal(rows, np.load(tmp_path / "pool.npy"))
