"""Tensors placed against an inaccessible page, for out-of-bounds checks of C++ kernels (tests only).

`guarded_copy(t, placement)` returns a tensor with t's values, shape and strides (t must be dense: contiguous
or channels_last) whose storage lies in an anonymous mapping of its own, between two inaccessible (PROT_NONE)
regions, each at least as large as the tensor and at least a page:

  "after"          the byte after its last element is inaccessible (the start keeps only the element
                   alignment, so a kernel's 16-byte vector path may be off);
  "after_aligned"  the start rounded down to 16 bytes (vector paths on), up to 15 bytes of slack after;
  "before"         the byte before its first element is inaccessible (the start is page-aligned).

A load or store across that edge, by up to the tensor's own size, raises SIGSEGV at once, reads included:
the host counterpart of compute-sanitizer's memcheck for kernels compiled as C++ (csrc/cpu, and csrc/cuda
through the host emulation). A crash ends the process, so the checks run in a subprocess
(tests/memcheck_kernels.py). Linux only (mmap with prot, mprotect through libc); zero-size tensors are not
guarded (torch gives them a null data pointer).
"""
from __future__ import annotations

import ctypes
import mmap

import torch

PAGE = mmap.PAGESIZE
PLACEMENTS = ("after", "after_aligned", "before")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_PROT_NONE = 0


def _protect(address: int, length: int) -> None:
    if _libc.mprotect(address, length, _PROT_NONE) != 0:
        raise OSError(ctypes.get_errno(), "mprotect failed")


def start_offset(nbytes: int, placement: str) -> int:
    """Where a tensor of nbytes starts within its data pages (a multiple of 16 for "after_aligned")."""
    data = _data_bytes(nbytes)
    return {"before": 0, "after": data - nbytes, "after_aligned": (data - nbytes) // 16 * 16}[placement]


def _data_bytes(nbytes: int) -> int:
    return (nbytes + 16 + PAGE - 1) // PAGE * PAGE


def guarded_empty(shape, strides, dtype: torch.dtype, placement: str) -> torch.Tensor:
    """An uninitialised dense tensor of `shape` and `strides`, placed as `placement` says (module docstring)."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    numel = 1
    for s in shape:
        numel *= s
    nbytes = max(numel, 1) * torch.empty((), dtype=dtype).element_size()
    data = _data_bytes(nbytes)
    guard = data  # >= the tensor and >= a page
    region = mmap.mmap(-1, guard + data + guard, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    base = torch.frombuffer(region, dtype=torch.uint8)  # holds `region` alive as long as any view of it
    _protect(base.data_ptr(), guard)
    _protect(base.data_ptr() + guard + data, guard)
    offset = guard + start_offset(nbytes, placement)
    flat = base[offset:offset + nbytes].view(dtype)
    return flat.as_strided(tuple(shape), tuple(strides))


def guarded_copy(t: torch.Tensor, placement: str) -> torch.Tensor:
    """t's values in a guarded tensor of the same shape, strides and dtype."""
    if not (t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError("guarded_copy needs a dense tensor (contiguous or channels_last)")
    out = guarded_empty(t.shape, t.stride(), t.dtype, placement)
    out.copy_(t)
    return out


def guarded_full(like: torch.Tensor, value: float, placement: str) -> torch.Tensor:
    """A guarded tensor of like's shape, strides and dtype, filled with value."""
    out = guarded_empty(like.shape, like.stride(), like.dtype, placement)
    out.fill_(value)
    return out
