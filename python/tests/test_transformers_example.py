"""examples/transformers/llava_tokensel.py (transformers + tokensel) equals examples/llava (`llava --json`):
same kept indices and same generated tokens on the committed tiny checkpoints."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "transformers" / "llava_tokensel.py"
VARIANTS = {  # checkpoint: (image, template, pad), as the goldens of tools/llava
    "fp32": ("shapes.png", "llava-hf", True),
    "bf16": ("scene.jpg", "vicuna", False),
}
CASES = [("fp32", "fopru", "0.5"), ("fp32", "fopru", "0.25"), ("fp32", "visionzip", "0.5"), ("fp32", "visionzip", None),
         ("fp32", "fopru", "16"), ("bf16", "fopru", "0.5"), ("bf16", "visionzip", "0.25")]
TOKENS = 8


@pytest.fixture(scope="module")
def llava():
    for mod in ("torch", "transformers", "PIL"):
        pytest.importorskip(mod, reason=f"{mod} is not installed: the transformers example cannot run")
    path = pathlib.Path(os.environ.get("TOKENSEL_LLAVA", ROOT / "build" / "examples" / "llava" / "llava"))
    if not path.is_file():
        pytest.skip(f"the llava runtime is not built at {path} (set TOKENSEL_LLAVA)")
    return str(path)


def common_flags(variant, method, keep):
    image, template, pad = VARIANTS[variant]
    flags = ["--model", str(ROOT / "tests" / "data" / f"llava-tiny-{variant}"),
             "--image", str(ROOT / "tests" / "data" / "llava-images" / image),
             "--prompt", "What is in the picture?", "--template", template, "--method", method,
             "--max-new-tokens", str(TOKENS), "--json"]
    if keep is not None:
        flags += ["--keep", keep]
    if not pad:
        flags.append("--no-pad")
    return flags


@pytest.mark.parametrize("variant,method,keep", CASES)
def test_same_as_llava_runtime(llava, variant, method, keep):
    flags = common_flags(variant, method, keep)
    rt = subprocess.run([llava] + flags, capture_output=True, text=True)
    assert rt.returncode == 0, rt.stderr
    py = subprocess.run([sys.executable, str(SCRIPT)] + flags, capture_output=True, text=True,
                        env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert py.returncode == 0, py.stderr
    want, got = json.loads(rt.stdout), json.loads(py.stdout)
    assert got["input_ids"] == want["input_ids"]
    assert got["kept"] == want["kept"]
    assert got["answer_ids"] == want["answer_ids"]
