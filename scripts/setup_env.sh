#!/usr/bin/env bash
# Create ./.venv (if missing) and install dwconv into it with what the tests and benchmarks use.
# The extension is built against the torch installed here: plain `pip install -e .`, as users type it (the
# in-tree build backend, build_backend/, finds this environment's torch from pip's isolated build).
# DWCONV_TORCH overrides the torch requirement (default torch==2.14.1); other DWCONV_* build variables
# (DWCONV_BUILD_CUDA, DWCONV_CUDA_ARCHS) pass through to setup.py.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
# setuptools at run time: the tests build host kernels with torch.utils.cpp_extension, which imports it
.venv/bin/python -m pip install -q "setuptools>=64"
.venv/bin/python -m pip install -q "${DWCONV_TORCH:-torch==2.14.1}" "torchvision${DWCONV_TORCHVISION:-==0.29.1}" \
    fvcore pytest ninja timm tqdm onnx onnxruntime onnxscript
MAX_JOBS=${MAX_JOBS:-$(nproc)} .venv/bin/python -m pip install -q -e .
.venv/bin/python -c "import dwconv; print('dwconv backends (cpu):', dwconv.available_backends('cpu'))"
