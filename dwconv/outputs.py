"""Output allocation shared by every kernel layer (native backends and Triton launchers alike)."""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch

from . import _extension, config

# Large outputs are often fresh memory that the kernel's first writes fault in 4 KiB at a time: above 32 MiB
# glibc maps every allocation anew, and below it reuse depends on what was freed before. They come from the
# output pool (csrc/cpu/output_pool.cpp: memory kept mapped from one output to the next), or with the pool off
# from torch.empty advised for transparent huge pages (one fault per 2 MiB; a region this large holds at least one
# aligned 2 MiB page).
LARGE_OUTPUT_BYTES = 4 << 20

# Tests set this to fill every output a backend allocates with NaN, so elements a kernel
# forgets to write fail the comparison instead of passing on leftover memory.
POISON_OUTPUTS = False


def new_output(shape, like: torch.Tensor, dtype: Optional[torch.dtype] = None,
               channels_last: Optional[bool] = None) -> torch.Tensor:
    """Allocate a backend output on like's device, in like's layout unless told otherwise."""
    if channels_last is None:
        channels_last = (not like.is_contiguous()) and like.is_contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if channels_last and len(shape) == 4 else torch.contiguous_format
    dtype = dtype or like.dtype
    # (fake tensors, under a dispatch mode while tracing, have no memory to pool)
    if large_cpu_output(shape, dtype, like.device) and not torch._C._len_torch_dispatch_stack():
        out = _new_large_cpu_output(shape, dtype, fmt)
    else:
        out = torch.empty(shape, dtype=dtype, device=like.device, memory_format=fmt)
    if POISON_OUTPUTS:
        out.fill_(float("nan"))
    return out


def large_cpu_output(shape, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether new_output takes an output of this shape from the output pool (or advises huge pages for it)."""
    return device.type == "cpu" and math.prod(shape) * dtype.itemsize >= LARGE_OUTPUT_BYTES


def _new_large_cpu_output(shape, dtype: torch.dtype, fmt: torch.memory_format) -> torch.Tensor:
    settings = config.get()
    if settings.output_pool_mib > 0 and _extension.has_output_pool():
        return torch.ops.dwconv.output_pool_empty(list(shape), dtype, fmt == torch.channels_last, settings.huge_pages,
                                                  settings.output_pool_mib << 20)
    out = torch.empty(shape, dtype=dtype, device="cpu", memory_format=fmt)
    if settings.huge_pages and _extension.has_huge_page_hint():
        advise_huge_pages(out)
    return out


def advise_huge_pages(out: torch.Tensor) -> None:
    """The hint itself (a function of its own so that tests can count its calls)."""
    torch.ops.dwconv.advise_huge_pages(out)


def _apply_pool_limit(settings: config.Settings) -> None:
    """A lowered output_pool_mib frees the excess cached memory at once (0: all of it)."""
    if _extension.has_output_pool():
        torch.ops.dwconv.output_pool_set_limit(settings.output_pool_mib << 20)


config.on_change(_apply_pool_limit)


def output_pool_stats() -> Dict[str, int]:
    """The CPU output pool's state: memory cached for reuse and in use (bytes and blocks), and how many
    allocations it served from the cache (hits) or fresh (misses). All zero without the extension."""
    keys = ("cached_bytes", "cached_blocks", "in_use_bytes", "in_use_blocks", "hits", "misses")
    values = torch.ops.dwconv.output_pool_stats() if _extension.has_output_pool() else [0] * len(keys)
    return dict(zip(keys, values))


def empty_output_pool() -> None:
    """Frees the memory the CPU output pool holds for reuse (as torch.cuda.empty_cache does for the GPU)."""
    if _extension.has_output_pool():
        torch.ops.dwconv.output_pool_release()
