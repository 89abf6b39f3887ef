"""Builds the host-emulation library of the CUDA kernels (once per source state; cached by torch's builder)."""
from __future__ import annotations

import hashlib
import os
import tempfile

import torch
import torch.utils.cpp_extension

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "..", "..", "csrc")
SOURCES = [os.path.join(HERE, f) for f in ("binding_host.cpp", "fwd_host.cpp", "dgrad_host.cpp", "wgrad_host.cpp",
                                           "fwd_mma_host.cpp", "emulation_selftest.cpp")]
NAMESPACE = "dwconv_cuda_host"


def load_host_kernels(build_dir: str | None = None) -> None:
    """Compile (if needed) and load the library registering torch.ops.dwconv_cuda_host.native_*."""
    if hasattr(torch.ops, NAMESPACE) and hasattr(getattr(torch.ops, NAMESPACE), "native_fwd"):
        try:
            getattr(torch.ops, NAMESPACE).native_fwd.default
            return
        except (AttributeError, RuntimeError):
            pass
    # One build directory per checkout: several trees on one machine must not share objects.
    tree = hashlib.sha1(HERE.encode()).hexdigest()[:10]
    build_dir = build_dir or os.path.join(tempfile.gettempdir(), f"dwconv_cuda_host_{os.getuid()}_{tree}")
    os.makedirs(build_dir, exist_ok=True)
    torch.utils.cpp_extension.load(
        name="dwconv_cuda_host",
        sources=SOURCES,
        extra_include_paths=[os.path.abspath(CSRC)],
        extra_cflags=["-O2", "-std=c++20", "-DDWCONV_CUDA_HOST_EMULATION=1", "-Wno-unknown-pragmas"],
        build_directory=build_dir,
        is_python_module=False,
        verbose=bool(os.environ.get("DWCONV_VERBOSE_BUILD")),
    )
