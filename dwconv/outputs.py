"""Output allocation shared by every kernel layer (native backends and Triton launchers alike)."""
from __future__ import annotations

from typing import Optional

import torch

from . import _extension, config

# Above this size glibc maps every allocation anew (its largest mmap threshold), so each call's output is
# faulted in page by page as the kernel first writes it; huge pages take 1/512 of those faults.
HUGE_PAGE_MIN_BYTES = 32 << 20

# Tests set this to fill every output a backend allocates with NaN, so elements a kernel
# forgets to write fail the comparison instead of passing on leftover memory.
POISON_OUTPUTS = False


def new_output(shape, like: torch.Tensor, dtype: Optional[torch.dtype] = None,
               channels_last: Optional[bool] = None) -> torch.Tensor:
    """Allocate a backend output on like's device, in like's layout unless told otherwise."""
    if channels_last is None:
        channels_last = (not like.is_contiguous()) and like.is_contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if channels_last and len(shape) == 4 else torch.contiguous_format
    out = torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=fmt)
    if out.device.type == "cpu" and out.nbytes >= HUGE_PAGE_MIN_BYTES and config.get().huge_pages \
            and _extension.has_cpu_kernels():
        torch.ops.dwconv.advise_huge_pages(out)
    if POISON_OUTPUTS:
        out.fill_(float("nan"))
    return out
