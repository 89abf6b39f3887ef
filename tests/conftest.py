import os

import pytest
import torch

# Without a GPU, Triton kernels run in Triton's interpreter on CPU tensors; it must be chosen before
# triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# On a GPU the Triton kernels run their heuristic tile (autotuning would compile every candidate per shape).
os.environ.setdefault("DWCONV_TRITON_AUTOTUNE", "0")

import dwconv  # noqa: E402
import interpreter_bounds  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _triton_accesses_in_bounds():
    """Triton kernels run in the interpreter must keep every access inside their tensors (the interpreter
    would silently read or write whatever memory lies past them)."""
    with interpreter_bounds.checked_when_interpreting():
        yield


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


def backend_devices():
    """(backend, device) pairs the shared parity grid runs here. Triton on the CPU (interpreter) and the
    host-emulated CUDA kernels have their own, smaller grids in test_triton.py / test_cuda_backend.py."""
    pairs = [("torch", "cpu"), ("cpu", "cpu")]
    if HAS_CUDA:
        pairs += [("torch", "cuda"), ("cuda", "cuda"), ("triton", "cuda")]
    return pairs


def require_backend(backend, device):
    reason = dwconv.available_backends(device)[backend]
    if reason is not None:
        pytest.fail(f"backend {backend!r} should run on {device} here but: {reason}") if backend in ("torch", "cpu") \
            else pytest.skip(reason)
