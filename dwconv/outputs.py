"""Output allocation shared by every kernel layer (native backends and Triton launchers alike)."""
from __future__ import annotations

from typing import Optional

import torch

from . import _extension, config

# Large outputs are often fresh memory that the kernel's first writes fault in 4 KiB at a time: above 32 MiB
# glibc maps every allocation anew, and below it reuse depends on what was freed before. Advised for transparent
# huge pages, they fault once per 2 MiB (a region this large holds at least one aligned 2 MiB page).
HUGE_PAGE_MIN_BYTES = 4 << 20

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
    if (out.device.type == "cpu" and out.nbytes >= HUGE_PAGE_MIN_BYTES and config.get().huge_pages
            and not torch._C._len_torch_dispatch_stack()  # fake tensors (tracing) have no memory to advise
            and _extension.has_huge_page_hint()):
        advise_huge_pages(out)
    if POISON_OUTPUTS:
        out.fill_(float("nan"))
    return out


def advise_huge_pages(out: torch.Tensor) -> None:
    """The hint itself (a function of its own so that tests can count its calls)."""
    torch.ops.dwconv.advise_huge_pages(out)
