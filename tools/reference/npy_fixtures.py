"""Prints .npy images written by numpy itself as C++ byte strings, for tests/test_npy.cpp
(interoperability: the reader must accept exactly what numpy.save writes).
Run: python3 tools/reference/npy_fixtures.py"""
import io

import numpy as np
from numpy.lib import format as npf


def image(arr, version=None):
    buf = io.BytesIO()
    if version is None:
        np.save(buf, arr)
    else:
        npf.write_array(buf, arr, version=version)
    return buf.getvalue()


def cxx(name, data):
    body = "".join("\\x%02x" % b for b in data)
    print('// %d bytes\nconst std::string %s("%s", %d);' % (len(data), name, body, len(data)))


cxx("k_numpy_f4_2x3", image(np.arange(6, dtype="<f4").reshape(2, 3) / 4))
cxx("k_numpy_f2_3", image(np.array([1.5, -2.0, 65504.0], dtype="<f2")))
cxx("k_numpy_f8_2x2", image(np.array([[0.1, -1e-3], [3.0, 1e30]], dtype="<f8")))
cxx("k_numpy_be_f4_2", image(np.array([1.0, -0.5], dtype=">f4")))
cxx("k_numpy_scalar_f4", image(np.array(7.25, dtype="<f4")))
cxx("k_numpy_v2_f4_1x2", image(np.array([[1.0, 2.0]], dtype="<f4"), version=(2, 0)))
cxx("k_numpy_v3_f2_2", image(np.array([0.25, 4.0], dtype="<f2"), version=(3, 0)))
cxx("k_numpy_fortran_2x2", image(np.asfortranarray(np.arange(4, dtype="<f4").reshape(2, 2))))
cxx("k_numpy_i8_2", image(np.array([1, 2], dtype="<i8")))
