"""Prints a .safetensors image written by the reference `safetensors` package (pip install
safetensors) as a C++ byte string, for tests/test_safetensors.cpp (interoperability).
Run: python3 tools/reference/safetensors_fixtures.py"""
import numpy as np
from safetensors.numpy import save

image = save(
    {
        "attn": (np.arange(6, dtype=np.float16).reshape(2, 3) / 2).astype(np.float16),
        "b": np.array([1.5, -2.0], dtype=np.float32),
        "pos": np.arange(3, dtype=np.int64),
        "scalar": np.array(3.0, dtype=np.float32),
    },
    metadata={"format": "np"},
)
body = "".join("\\x%02x" % b for b in image)
print('// %d bytes\nconst std::string k_reference_image("%s", %d);' % (len(image), body, len(image)))
