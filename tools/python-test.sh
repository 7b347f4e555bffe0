#!/usr/bin/env bash
# The python stage of tools/test.sh: installs the Python package (pip install ./python, nanobind and
# scikit-build-core from PyPI), CPU-side test dependencies, and runs pytest (python/tests): CLI parity
# for every method against the main build's CLI, inputs / errors / refcounts, the README's Python
# snippet, and the transformers example against the main build's llava runtime.
#   TOKENSEL_BUILD_DIR  main build (default build): its CLI and llava binaries are compared against
#   TOKENSEL_PYTHON_TORCH=0  skip installing torch + transformers (their tests then skip with the reason)
#   TOKENSEL_PYTHON_CUDA  auto (default: when nvcc is found) | 1 | 0: build the CUDA dispatch
#      (the methods of tokensel.cuda_methods() on CUDA tensors; compiled and linked here, run on a GPU only)
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
py=${PYTHON:-python3}
build=${TOKENSEL_BUILD_DIR:-build}
pip_q=(-m pip install --quiet --disable-pip-version-check --root-user-action=ignore)
"$py" "${pip_q[@]}" "nanobind>=2.2" "scikit-build-core>=0.10" numpy pytest ml_dtypes  # ml_dtypes: NumPy bf16 tests
if [ "${TOKENSEL_PYTHON_TORCH:-1}" != 0 ]; then
  # The versions tools/llava/README.md names (about 95 s from PyPI on the 2-core CI machine, once).
  "$py" "${pip_q[@]}" torch==2.15.0 transformers==5.23.0 sentencepiece protobuf safetensors pillow
fi
echo "python: dependencies $((SECONDS - start)) s"
cuda_flag=()
cuda=${TOKENSEL_PYTHON_CUDA:-auto}
if [ "$cuda" = auto ]; then
  if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then cuda=1; else cuda=0; fi
fi
if [ "$cuda" = 1 ]; then
  command -v nvcc >/dev/null || export CUDACXX=${CUDACXX:-/usr/local/cuda/bin/nvcc}
  cuda_flag=(-C cmake.define.TOKENSEL_PYTHON_WITH_CUDA=ON)
fi
export TOKENSEL_EXPECT_PYTHON_CUDA=$cuda
# No build isolation: the build requirements were installed above (no second download).
"$py" "${pip_q[@]}" --no-build-isolation "${cuda_flag[@]}" ./python
echo "python: package built and installed at $((SECONDS - start)) s"
TOKENSEL_CLI=${TOKENSEL_CLI:-$build/examples/cli/tokensel} TOKENSEL_LLAVA=${TOKENSEL_LLAVA:-$build/examples/llava/llava} \
  "$py" -m pytest -q -rs python/tests
echo "python: stage took $((SECONDS - start)) s"
