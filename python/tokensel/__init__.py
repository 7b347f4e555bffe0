"""tokensel: training-free visual-token selection for vision-language models.

NumPy arrays and PyTorch CPU tensors (float32, float16, bfloat16; any strides) are read in place
through DLPack / the buffer protocol; selections come back as NumPy int32 index arrays.
Bad input raises tokensel.Error (a ValueError) whose message names the parameter and its value.
See docs/python.md in the repository.
"""
from . import _core
from ._core import (  # noqa: F401
    Error,
    budget,
    built_with_cuda,
    cuda_methods,
    gather,
    head_reduction,
    layer_span,
    method_requirements,
    model_shape,
    qk_source,
    row_reduction,
    significance_axis,
    stage,
    threading_available,
    token_grid,
)
from ._core import baselines, dart, divprune, fastv, fitprune, fopru, freepruner, prumerge, visionzip, vispruner  # noqa: F401

__version__ = "0.1.0"

__all__ = [
    "Error", "budget", "built_with_cuda", "cuda_methods", "gather", "head_reduction", "layer_span", "method_requirements",
    "model_shape", "qk_source", "row_reduction", "significance_axis", "stage", "threading_available",
    "token_grid", "baselines", "dart", "divprune", "fastv", "fitprune", "fopru", "freepruner", "prumerge", "visionzip",
    "vispruner",
]
