import os
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def root():
    return ROOT


@pytest.fixture(scope="session")
def cli():
    """The C++ CLI of the main build (TOKENSEL_CLI, default build/examples/cli/tokensel)."""
    path = pathlib.Path(os.environ.get("TOKENSEL_CLI", ROOT / "build" / "examples" / "cli" / "tokensel"))
    if not path.is_file():
        pytest.skip(f"the tokensel CLI is not built at {path} (set TOKENSEL_CLI to compare with it)")
    return str(path)


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def attention(rng, *shape, peak=3.0):
    """Softmax probabilities [..., q, k] of random logits (peaked like real maps)."""
    return softmax(rng.standard_normal(shape) * peak).astype(np.float32)


def causal_attention(rng, heads, length, peak=3.0):
    logits = rng.standard_normal((heads, length, length)) * peak
    logits = np.where(np.tril(np.ones((length, length), dtype=bool)), logits, -np.inf)
    return softmax(logits).astype(np.float32)
