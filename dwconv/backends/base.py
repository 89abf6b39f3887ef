"""The contract every backend implements.

A backend receives tensors already validated and laid out by `dwconv.ops`:
- x and grad_out are 4-D and either NCHW-contiguous or channels_last-contiguous
  (the same layout for both within one backward); outputs use that same layout;
- weight is contiguous (C*m, 1, kh, kw); bias is contiguous (C*m,) or None;
- all tensors share one device and one floating dtype; `args` is the resolved geometry.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._conv_args import ConvArgs


class Backend:
    name: str = ""

    def unavailable_reason(self, device: torch.device) -> Optional[str]:
        """None when this backend can run on `device` in this process, else why not."""
        raise NotImplementedError

    def unsupported_reason(self, x: torch.Tensor, args: ConvArgs) -> Optional[str]:
        """None when a call on x (input or grad_out: device, dtype, layout) with geometry args is supported
        (the device already known to be available), else why not."""
        return None

    def preferred_by_auto(self, op: str, x: torch.Tensor, args: ConvArgs) -> bool:
        """Whether "auto" should pick this backend for op ("fwd", "dgrad" or "wgrad") on a supported call
        (False where another backend is faster)."""
        return True

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                args: ConvArgs) -> torch.Tensor:
        raise NotImplementedError

    def dgrad(self, grad_out: torch.Tensor, weight: torch.Tensor, args: ConvArgs) -> torch.Tensor:
        """dL/dx, shape args.input_shape, in grad_out's layout and dtype."""
        raise NotImplementedError

    def wgrad(self, grad_out: torch.Tensor, x: torch.Tensor, args: ConvArgs) -> torch.Tensor:
        """dL/dweight, shape args.weight_shape, in x's dtype (accumulated in at least fp32)."""
        raise NotImplementedError


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
    if POISON_OUTPUTS:
        out.fill_(float("nan"))
    return out


def cuda_device_problem(device: torch.device) -> Optional[str]:
    """None when `device` is a usable CUDA device in this process, else why not."""
    if not torch.cuda.is_available():
        return "no CUDA device is available here (torch.cuda.is_available() is False)"
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        return f"CUDA device {index} does not exist ({torch.cuda.device_count()} visible)"
    return None
