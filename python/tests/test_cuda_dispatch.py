"""CUDA tensors (extension built with TOKENSEL_PYTHON_WITH_CUDA=ON): FoPru and FastV run on the CUDA
backend and return exactly the CPU's indices; the other methods refuse CUDA tensors by name.
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
    with pytest.raises(ValueError, match="CPU only"):
        ts.visionzip.select(a.cuda(), None, torch.zeros(17, 8).cuda(), ts.visionzip.config(dominant=4, contextual=0))
