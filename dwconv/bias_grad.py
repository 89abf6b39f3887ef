"""The bias gradient of a depthwise conv: grad_out summed over images and pixels, per channel.

For plain fp32 / bf16 CPU tensors with nothing to record it is the extension's one-pass channel sum
(csrc/cpu/channel_sums.cpp): PyTorch's grad_out.sum((0, 2, 3)) gives the same values but took 24 ms against
2.4 ms on one thread for a bf16 NCHW gradient of 9.6M elements, and 5.1 ms against 1.9-2.4 ms in fp32
(docs/perf_cpu.md, v19). Everywhere else (other dtypes, GPUs, double backward, torch.func, torch.compile) it
is that sum. The C++ training route (csrc/direct_conv.cpp: bias_grad) applies the same rule.
"""
from __future__ import annotations

import torch

from . import _extension, ops

NATIVE_SUM_DTYPES = (torch.float32, torch.bfloat16)  # fp16 / fp64: the native sum measured no faster
NATIVE_SUM_MIN_ELEMENTS = 1 << 16  # below, PyTorch's sum costs less than the native path's per-call checks


def bias_grad(grad_out: torch.Tensor) -> torch.Tensor:
    if (grad_out.device.type == "cpu" and grad_out.dtype in NATIVE_SUM_DTYPES
            and grad_out.numel() >= NATIVE_SUM_MIN_ELEMENTS and _extension.has_channel_sums()
            and ops.direct_call_possible(grad_out, grad_out, None)
            and (grad_out.is_contiguous() or grad_out.is_contiguous(memory_format=torch.channels_last))):
        sums = grad_out.new_empty((grad_out.shape[1],), dtype=torch.float32)
        torch.ops.dwconv.native_channel_sums(grad_out, sums)
        return sums.to(grad_out.dtype)
    return grad_out.sum(dim=(0, 2, 3))
