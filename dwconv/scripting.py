"""FastDWConv's forward in TorchScript: nn.Conv2d's arguments resolved and checked in scriptable code,
then dwconv's op `torch.ops.dwconv.depthwise_conv2d` (the Python entry point, functional.py, validates
with code TorchScript cannot compile).

The module's own geometry was checked when it was built; what only the input can get wrong is checked
here, with the messages of _conv_args.check_and_resolve. Mixed dtypes are left to the op, which raises
for them outside autocast.
"""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor


def explicit_padding(padding: Union[str, Tuple[int, int]], kernel_size: Tuple[int, int],
                     dilation: Tuple[int, int]) -> List[int]:
    """nn.Conv2d's padding as (top, bottom, left, right): "same" puts the odd element at the end."""
    if isinstance(padding, str):
        if padding == "valid":
            return [0, 0, 0, 0]
        total_h = dilation[0] * (kernel_size[0] - 1)
        total_w = dilation[1] * (kernel_size[1] - 1)
        return [total_h // 2, total_h - total_h // 2, total_w // 2, total_w - total_w // 2]
    return [padding[0], padding[0], padding[1], padding[1]]


def _check_input(x: Tensor, weight: Tensor, padding: List[int], dilation: List[int]) -> None:
    if not x.is_floating_point():
        raise RuntimeError(f"input must be a floating-point tensor, got {x.dtype}")
    if x.device != weight.device:
        raise RuntimeError(f"input ({x.device}) and weight ({weight.device}) must be on the same device")
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    cout, kh, kw = weight.shape[0], weight.shape[2], weight.shape[3]
    if c == 0:
        raise RuntimeError("input must have at least one channel")
    if h == 0 or w == 0:
        raise RuntimeError(f"Only zero batch or zero channel inputs are supported, got spatial size ({h}, {w})")
    if cout % c != 0:
        raise RuntimeError(f"out_channels ({cout}) must be a positive multiple of in_channels ({c})")
    eff_h = dilation[0] * (kh - 1) + 1
    eff_w = dilation[1] * (kw - 1) + 1
    padded_h = h + padding[0] + padding[1]
    padded_w = w + padding[2] + padding[3]
    if padded_h < eff_h or padded_w < eff_w:
        raise RuntimeError(f"kernel size ({eff_h}x{eff_w} with dilation) can't be greater than the padded input "
                           f"size ({padded_h}x{padded_w})")


def depthwise_conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
                     dilation: List[int], backend: str) -> Tensor:
    """dwconv::depthwise_conv2d with explicit (top, bottom, left, right) padding, for 3-D or 4-D input."""
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    elif input.dim() != 4:
        raise RuntimeError(f"depthwise_conv2d expects a 3-D (unbatched) or 4-D (batched) input, got "
                           f"{input.dim()}-D input of shape {input.shape}")
    _check_input(input, weight, padding, dilation)
    out = torch.ops.dwconv.depthwise_conv2d(input, weight, bias, stride, padding, dilation, backend)
    return out.squeeze(0) if unbatched else out
