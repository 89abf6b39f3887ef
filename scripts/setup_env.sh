#!/usr/bin/env bash
# Create ./.venv (if missing) and install dwconv into it with what the tests and benchmarks use.
# The extension is built against the torch installed here (--no-build-isolation).
# DWCONV_TORCH overrides the torch requirement (default torch==2.14.1); other DWCONV_* build variables
# (DWCONV_BUILD_CUDA, DWCONV_CUDA_ARCHS) pass through to setup.py.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q "setuptools>=64" wheel
.venv/bin/python -m pip install -q "${DWCONV_TORCH:-torch==2.14.1}" "torchvision${DWCONV_TORCHVISION:-==0.29.1}" \
    fvcore pytest ninja timm tqdm onnx onnxruntime onnxscript
MAX_JOBS=${MAX_JOBS:-$(nproc)} .venv/bin/python -m pip install -q --no-build-isolation -e .
.venv/bin/python -c "import dwconv; print('dwconv backends (cpu):', dwconv.available_backends('cpu'))"
