"""The host side of the CUDA dispatch, testable without a GPU: which methods dispatch CUDA tensors
(the table, and docs/python.md listing the same), and the refusals that happen before any device
memory is read, checked with a stand-in DLPack tensor that claims to live in CUDA memory."""
import ctypes
import re

import numpy as np
import pytest

import tokensel as ts
from conftest import ROOT

DISPATCHING = ["fopru", "freepruner", "fitprune", "fastv", "prumerge", "visionzip", "divprune", "dart", "vispruner", "pool", "gather"]


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", DLDevice), ("ndim", ctypes.c_int32), ("dtype", DLDataType),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64)]


class DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
KDL_CUDA = 2


class FakeCuda:
    """A float32 (or int32) DLPack tensor that says it is in CUDA memory (device cuda:0) but points
    at host memory: only for refusals that happen before anything is read (never handed to a kernel).
    code / device: another DLPack type code or device type (the dtype test)."""

    def __init__(self, *shape, dtype=np.float32, code=None, device=KDL_CUDA):
        self.host = np.zeros(shape, dtype)
        self.code = code if code is not None else 0 if dtype == np.int32 else 2  # kDLInt, kDLFloat
        self.device = device
        self.dims = (ctypes.c_int64 * len(shape))(*shape)
        self.name = b"dltensor"
        self.managed = []

    def __dlpack__(self, **kwargs):
        mt = DLManagedTensor()
        mt.dl_tensor = DLTensor(self.host.ctypes.data, DLDevice(self.device, 0), len(self.dims), DLDataType(self.code, 8 * self.host.itemsize, 1),
                                self.dims, None, 0)
        self.managed.append(mt)  # alive as long as this object (no deleter)
        return _capsule_new(ctypes.addressof(mt), self.name, None)

    def __dlpack_device__(self):
        return (self.device, 0)


def test_dispatch_table_matches_the_docs():
    assert ts.cuda_methods() == DISPATCHING
    text = (ROOT / "docs" / "python.md").read_text()
    row = re.search(r"^\s*\| CUDA tensors dispatch \|(.*)\|\s*$", text, re.M)
    assert row, "docs/python.md lacks the '| CUDA tensors dispatch | ... |' row of the dispatch table"
    assert re.findall(r"`(\w+)`", row.group(1)) == DISPATCHING


def refuse_cases():
    """(call, parameter its message names, method) for each binding reading a CUDA tensor where it
    is not dispatched: qk_sources, FitPrune's calibrator, and a CUDA companion of a sample whose main
    input is on the CPU. None of them reaches device memory in any build."""
    c = FakeCuda
    h = lambda *shape: np.zeros(shape, np.float32)  # noqa: E731
    calib = ts.fitprune.calibrator()
    calib.add_sample()
    fp_cfg = ts.freepruner.config(first_layer=0, last_layer=1, complementary_layer=2)
    return [
        (lambda: ts.gather(h(16, 8), [0, 3], out=c(2, 8)), "gather.out", "gather"),
        (lambda: calib.add_layer(0, 0, c(2, 30, 30), (1, 20)), "fitprune.attention", "fitprune"),
        (lambda: ts.freepruner.select([ts.qk_source(c(2, 17, 8), c(2, 17, 8))] * 3, fp_cfg), "qk_source.queries", "qk_source"),
        (lambda: ts.fopru.select([h(2, 17, 17), ts.qk_source(h(2, 17, 8), c(2, 17, 8))]), "qk_source.keys", "qk_source"),
        (lambda: ts.freepruner.select([h(2, 17, 17), c(2, 17, 17), c(2, 17, 17)], fp_cfg), "freepruner.layers[1]", "freepruner"),
        (lambda: ts.vispruner.select(h(2, 17, 17), c(16, 8)), "vispruner.features", "vispruner"),
        (lambda: ts.vispruner.select([h(2, 17, 17)], [c(16, 8)]), "vispruner.features[0]", "vispruner"),
        (lambda: ts.dart.select(c(2, 30, 4), h(30, 8), (1, 20)), "dart.keys", "dart"),
        (lambda: ts.dart.select(h(2, 30, 4), h(30, 8), (1, 20), norm_weight=c(8)), "dart.norm_weight", "dart"),
        (lambda: ts.visionzip.select([h(2, 17, 17)], None, [c(17, 8)], ts.visionzip.config(dominant=4, contextual=0)),
         "visionzip.hidden[0]", "visionzip"),
        (lambda: ts.prumerge.select(h(17, 8), c(17, 8)), "prumerge.keys", "prumerge"),
    ]


@pytest.mark.parametrize("case", range(len(refuse_cases())))
def test_cuda_tensor_refused_by_name(case):
    call, parameter, method = refuse_cases()[case]
    with pytest.raises(ts.Error) as err:
        call()
    msg = str(err.value)
    assert msg.startswith(f"tokensel: {parameter} = a CUDA tensor: "), msg
    if not ts.built_with_cuda():
        assert "built without CUDA" in msg and "TOKENSEL_PYTHON_WITH_CUDA=ON" in msg
    elif method == "qk_source":
        assert "a qk_source runs on the device only as fopru, fastv, vispruner or visionzip select's sample" in msg
    elif method in DISPATCHING:
        assert f"{method} reads CUDA tensors only when the sample's main input is one too" in msg
    else:
        assert f"{method} has no CUDA dispatch in the Python package" in msg
        assert "CUDA tensors run for " + ", ".join(DISPATCHING) in msg


@pytest.mark.parametrize("call", [
    lambda c: ts.fopru.select(c(2, 17, 17)),
    lambda c: ts.fastv.select(c(2, 30, 30), (1, 20)),
    lambda c: ts.divprune.select(c(16, 8)),
    lambda c: ts.vispruner.select(c(2, 17, 17), c(16, 8)),
    lambda c: ts.dart.select(c(2, 30, 4), c(30, 8), (1, 20)),
    lambda c: ts.visionzip.select(c(2, 17, 17), None, c(17, 8), ts.visionzip.config(dominant=4, contextual=0)),
    lambda c: ts.freepruner.select(c(3, 2, 17, 17), ts.freepruner.config(first_layer=0, last_layer=1, complementary_layer=2)),
    lambda c: ts.freepruner.select([c(2, 17, 17)] * 3, ts.freepruner.config(first_layer=0, last_layer=1, complementary_layer=2)),
    lambda c: ts.fitprune.prune_layer(c(2, 30, 30), (1, 20), 4),
    lambda c: ts.baselines.pool.apply(c(16, 8)),
    lambda c: ts.prumerge.select(c(17, 8), c(17, 8)),
    lambda c: ts.prumerge.select(c(2, 17, 8), c(2, 17, 8), features=c(2, 16, 4)),
    lambda c: ts.prumerge.select([c(17, 8), c(10, 8)], [c(17, 8), c(10, 8)]),
    lambda c: ts.prumerge.select_from_attention(c(16)),
    # ragged lists: sample by sample on the device
    lambda c: ts.fopru.select([c(2, 17, 17), c(2, 26, 26)]),
    lambda c: ts.fastv.select([c(2, 30, 30)], (1, 20)),
    lambda c: ts.divprune.select([c(16, 8)]),
    lambda c: ts.vispruner.select([c(2, 17, 17)], [c(16, 8)]),
    lambda c: ts.visionzip.select([c(2, 17, 17)], None, [c(17, 8)], ts.visionzip.config(dominant=4, contextual=0)),
    lambda c: ts.dart.select([c(2, 30, 4)], [c(30, 8)], (1, 20)),
    # a qk_source of CUDA tensors: FoPru, FastV, VisPruner and VisionZip on the device
    lambda c: ts.fopru.select(ts.qk_source(c(2, 17, 8), c(2, 17, 8))),
    lambda c: ts.fastv.select([ts.qk_source(c(2, 1, 8), c(2, 30, 8))], (1, 20)),
    lambda c: ts.vispruner.select(ts.qk_source(c(2, 17, 8), c(2, 17, 8)), c(16, 4), keep=8),
    lambda c: ts.visionzip.select(ts.qk_source(c(2, 17, 8), c(2, 17, 8)), None, c(17, 4), ts.visionzip.config(dominant=4, contextual=0)),
])
def test_dispatching_methods_without_cuda_build(call):
    """A CUDA build would hand these to the device (the GPU tests cover that); a CPU build refuses."""
    if ts.built_with_cuda():
        pytest.skip("built with CUDA: the stand-in tensor must not reach a kernel (test_cuda_dispatch.py runs real ones)")
    with pytest.raises(ts.Error, match="a CUDA tensor: this tokensel extension was built without CUDA"):
        call(FakeCuda)


@pytest.mark.parametrize("call,message", [
    (lambda c, h: ts.vispruner.select(c(2, 17, 17), h(16, 8)), r"vispruner.features.device = cpu: must be on the device of the attention \(cuda:0\)"),
    (lambda c, h: ts.dart.select(h(2, 30, 4), c(30, 8), (1, 20)), r"dart.keys.device = cpu: must be on the device of dart.hidden \(cuda:0\)"),
    (lambda c, h: ts.dart.select(c(2, 30, 4), c(30, 8), (1, 20), norm_weight=h(8)),
     r"dart.norm_weight.device = cpu: must be on the device of dart.hidden \(cuda:0\)"),
    (lambda c, h: ts.visionzip.select(c(2, 17, 17), None, h(17, 8)), r"visionzip.hidden.device = cpu: must be on the device of the attention"),
    (lambda c, h: ts.prumerge.select(c(17, 8), h(17, 8)), r"prumerge.keys.device = cpu: must be on the device of prumerge.queries \(cuda:0\)"),
    (lambda c, h: ts.prumerge.select([h(17, 8), c(17, 8)], [h(17, 8), h(17, 8)]),
     r"prumerge.keys\[1\].device = cpu: must be on the device of prumerge.queries \(cuda:0\)"),
    (lambda c, h: ts.prumerge.select(c(17, 8), c(17, 8), features=h(16, 4)),
     r"prumerge.features.device = cpu: must be on the device of prumerge.queries \(cuda:0\)"),
    (lambda c, h: ts.prumerge.select_from_attention(c(16), features=h(16, 4)),
     r"prumerge.features = given with CUDA attention: select_from_attention merges on the CPU only"),
    (lambda c, h: ts.vispruner.select([h(2, 17, 17), c(2, 17, 17)], [h(16, 8), h(16, 8)], keep=4),
     r"vispruner.features\[1\].device = cpu: must be on the device of the attention \(cuda:0\)"),
    (lambda c, h: ts.dart.select([c(2, 30, 4)], [c(30, 8)], (1, 20), norm_weight=h(8)),
     r"dart.norm_weight.device = cpu: must be on the device of dart.hidden\[0\] \(cuda:0\)"),
    (lambda c, h: ts.fopru.select([c(2, 2, 17, 17)]), r"fopru.attention\[0\].ndim = 4: must be 3"),
    (lambda c, h: ts.fopru.select(ts.qk_source(c(2, 17, 8), h(2, 17, 8))),
     r"qk_source.keys.device = cpu: must be on the device of qk_source.queries \(cuda:0\)"),
    (lambda c, h: ts.fastv.select(ts.qk_source(c(2, 1, 8), c(2, 30, 8), lse=h(2, 1)), (1, 20)),
     r"qk_source.lse.device = cpu: must be on the device of qk_source.queries \(cuda:0\)"),
    (lambda c, h: ts.fopru.select(ts.qk_source(c(17, 8), c(17, 8))), r"qk_source.queries.ndim = 2: must be 3"),
    (lambda c, h: ts.visionzip.select(ts.qk_source(c(2, 17, 8), c(2, 17, 8)), h(2, 17, 8), c(17, 4)),
     r"visionzip.keys.device = cpu: must be on the device of qk_source.queries \(cuda:0\)"),
    (lambda c, h: ts.vispruner.select(ts.qk_source(c(2, 17, 8), c(2, 17, 8)), h(16, 4)),
     r"vispruner.features.device = cpu: must be on the device of qk_source.queries \(cuda:0\)"),
    (lambda c, h: ts.fastv.select_scores(c(16), keep=4), r"fastv.scores = a CUDA tensor: fastv.select_scores runs on the CPU only"),
    (lambda c, h: ts.gather(c(16, 8), np.arange(4, dtype=np.int32)), r"gather.indices.device = cpu: must be on the device of gather.src \(cuda:0\)"),
    (lambda c, h: ts.gather(c(16, 8), c(4)), r"gather.indices.dtype = code 2 bits 32: must be int32 with CUDA tensors"),
    (lambda c, h: ts.gather(c(16, 8), [0, 3]), r"gather.indices = a list: must be a CUDA int32 tensor with a CUDA gather.src"),
    (lambda c, h: ts.gather(c(2, 16, 8), c(2, 4, dtype=np.int32), out=h(2, 4, 8)),
     r"gather.out.device = cpu: must be on the device of gather.src \(cuda:0\)"),
    (lambda c, h: ts.gather(c(2, 16, 8), c(4, dtype=np.int32)), r"gather.indices.ndim = 1: must be 2 \(\[batch, k\]\)"),
])
def test_cuda_companion_on_another_device(call, message):
    """Checked before any device work: in a CUDA build the mix is refused by device, in a CPU build
    the CUDA tensor is refused; nothing is read either way."""
    host = lambda *shape: np.zeros(shape, np.float32)  # noqa: E731
    with pytest.raises(ts.Error, match=message if ts.built_with_cuda() else "built without CUDA"):
        call(FakeCuda, host)


def test_other_dlpack_dtypes_named_by_code():
    """A host DLPack array of a kind the library does not read (float8 e4m3fn: DLPack code 10) is
    refused by its code and bits."""
    f8 = FakeCuda(16, 8, dtype=np.uint8, code=10, device=1)  # kDLCPU
    with pytest.raises(ts.Error, match=r"divprune.features.dtype = dlpack code 10 bits 8: must be float32, float16 or bfloat16"):
        ts.divprune.select(f8)
