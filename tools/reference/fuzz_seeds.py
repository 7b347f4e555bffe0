"""Writes the seed corpora of the parser fuzz targets (fuzz/corpus/npy, safetensors,
fitprune_json): small valid files as numpy and the safetensors layout define them, plus a few
near-misses. Run: python3 tools/reference/fuzz_seeds.py (from the repository root)."""
import io
import json
import os
import struct

import numpy as np
from numpy.lib import format as npf


def save(folder, name, data):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def npy(arr, version=None):
    buf = io.BytesIO()
    if version is None:
        np.save(buf, arr)
    else:
        npf.write_array(buf, arr, version=version)
    return buf.getvalue()


d = "fuzz/corpus/npy"
save(d, "f4_2x3.npy", npy(np.arange(6, dtype="<f4").reshape(2, 3) / 4))
save(d, "f2_3.npy", npy(np.array([1.5, -2.0, 65504.0], dtype="<f2")))
save(d, "f8_2x2.npy", npy(np.array([[0.1, -1e-3], [3.0, 1e30]], dtype="<f8")))
save(d, "be_f4_2.npy", npy(np.array([1.0, -0.5], dtype=">f4")))
save(d, "scalar_f4.npy", npy(np.array(7.25, dtype="<f4")))
save(d, "empty_0x4.npy", npy(np.zeros((0, 4), dtype="<f4")))
save(d, "v2_f4_1x2.npy", npy(np.array([[1.0, 2.0]], dtype="<f4"), version=(2, 0)))
save(d, "v3_f2_2.npy", npy(np.array([0.25, 4.0], dtype="<f2"), version=(3, 0)))
save(d, "fortran_2x2.npy", npy(np.asfortranarray(np.arange(4, dtype="<f4").reshape(2, 2))))
save(d, "i4_unsupported.npy", npy(np.arange(3, dtype="<i4")))
save(d, "nan_inf_f4.npy", npy(np.array([np.nan, np.inf, -np.inf, 1e-45], dtype="<f4")))
save(d, "truncated.npy", npy(np.arange(8, dtype="<f4"))[:-5])


def safetensors(tensors, metadata=None, pad=True):
    header, blob = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + blob


d = "fuzz/corpus/safetensors"
f32 = np.arange(6, dtype="<f4").tobytes()
save(d, "one_f32.safetensors", safetensors({"attn": ("F32", [2, 3], f32)}))
save(d, "three.safetensors", safetensors({
    "a": ("F16", [2], np.array([1, 2], dtype="<f2").tobytes()),
    "b": ("BF16", [1, 2], b"\x80\x3f\x00\x40"),
    "c": ("I32", [1], b"\x01\x00\x00\x00")}, metadata={"format": "pt"}))
save(d, "empty_tensor.safetensors", safetensors({"e": ("F32", [0, 3], b"")}))
save(d, "scalar.safetensors", safetensors({"s": ("F32", [], b"\x00\x00\x80\x3f")}))
save(d, "no_tensors.safetensors", safetensors({}, metadata={"k": "v"}))
save(d, "bad_offsets.safetensors", safetensors({"x": ("F32", [2], f32[:4])}, pad=False)[:-2])

d = "fuzz/corpus/fitprune_json"
recipe = {"format": "tokensel.fitprune.recipe", "version": 1, "model": "tiny", "source": "seed",
          "geometry": {"hidden": 64, "ffn": 160, "layers": 3, "visual_tokens": 8},
          "reduction": 0.5, "alpha": 0.25, "drops": [2, 1, 0]}
save(d, "tiny.json", json.dumps(recipe, indent=1).encode())
r2 = dict(recipe)
del r2["alpha"]
r2["drops"] = [9, 0, 0]
save(d, "too_many_drops.json", json.dumps(r2).encode())
save(d, "number_overflow.json", b'{"drops": [7E1566]}')
