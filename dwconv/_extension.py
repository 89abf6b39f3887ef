"""Loading of the compiled extension `dwconv._C`, with the reason kept when it cannot be loaded."""
from __future__ import annotations

import functools
from typing import Optional

import torch

_load_error: Optional[str] = None
_loaded = False


def load() -> Optional[str]:
    """Import dwconv._C once (registering the native ops); None on success, else why it failed."""
    global _load_error, _loaded
    if not _loaded:
        _loaded = True
        try:
            from . import _C  # noqa: F401  (import runs the TORCH_LIBRARY registrations)
        except ImportError as e:
            _load_error = (f"the C++ extension dwconv._C is not available ({e}); build it against this torch "
                           f"({torch.__version__}) with `pip install -e .`")
    return _load_error


@functools.lru_cache(maxsize=None)
def direct_entry(op: str):
    """dwconv._C's direct entry to the native op `op` (csrc/python_module.cpp): it runs the op for plain tensors
    and returns NotImplemented where torch.ops must make the call. None when the loaded extension has none."""
    if load() is not None:
        return None
    from . import _C
    return getattr(_C, op, None)


@functools.lru_cache(maxsize=None)
def has_cuda_kernels() -> bool:
    return load() is None and torch._C._dispatch_has_kernel_for_dispatch_key("dwconv::native_fwd", "CUDA")


@functools.lru_cache(maxsize=None)
def has_cpu_kernels() -> bool:
    return _has_cpu_kernel("dwconv::native_fwd")


@functools.lru_cache(maxsize=None)
def has_huge_page_hint() -> bool:
    """Whether the loaded extension has dwconv::advise_huge_pages (an extension built before it has not)."""
    return _has_cpu_kernel("dwconv::advise_huge_pages")


@functools.lru_cache(maxsize=None)
def has_output_pool() -> bool:
    """Whether the loaded extension has the output pool's ops (an extension built before them has not; one built
    before output_pool_set_limit counts as without the pool)."""
    return load() is None and all(
        torch._C._dispatch_has_kernel_for_dispatch_key(f"dwconv::{op}", "CompositeExplicitAutograd")
        for op in ("output_pool_empty", "output_pool_set_limit"))


@functools.lru_cache(maxsize=None)
def has_channel_sums() -> bool:
    """Whether the loaded extension has dwconv::native_channel_sums (an extension built before it has not)."""
    return _has_cpu_kernel("dwconv::native_channel_sums")


def _has_cpu_kernel(op: str) -> bool:
    return load() is None and torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU")
