"""The "torch" backend: PyTorch's own convolution, the reference every other backend is tested against."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .._conv_args import ConvArgs
from .base import Backend, cuda_device_problem


def _pad_input(x: torch.Tensor, args: ConvArgs):
    """Asymmetric padding is applied explicitly; symmetric padding goes to the conv itself."""
    pt, pb, pl, pr = args.padding
    if pt == pb and pl == pr:
        return x, (pt, pl)
    return F.pad(x, (pl, pr, pt, pb)), (0, 0)


class TorchBackend(Backend):
    name = "torch"

    def unavailable_reason(self, device: torch.device) -> Optional[str]:
        return cuda_device_problem(torch.device(device)) if torch.device(device).type == "cuda" else None

    def families(self, op, x, args):
        return ("aten",)

    def forward(self, x, weight, bias, args, plan):
        x, padding = _pad_input(x, args)
        return F.conv2d(x, weight, bias, args.stride, padding, args.dilation, groups=args.channels)

    def dgrad(self, grad_out, weight, args, plan):
        pt, pb, pl, pr = args.padding
        if pt == pb and pl == pr:
            # The call autograd makes for F.conv2d (and the one benchmarks/kernels.py times for the dispatch table):
            # the real padding. Padding 0 on the padded shape, below, can take a much slower PyTorch kernel (CPU,
            # N32 C768 7x7 K11: 47 ms against 4 ms). x's values are not read; its shape and layout are.
            x_like = torch.empty((args.batch, args.channels, args.height, args.width), dtype=grad_out.dtype,
                                 device=grad_out.device, memory_format=_layout_of(grad_out))
            dx = torch.ops.aten.convolution_backward(
                grad_out, x_like, weight, None, list(args.stride), [pt, pl], list(args.dilation), False, [0, 0],
                args.channels, [True, False, False])[0]
            return dx.contiguous(memory_format=_layout_of(grad_out))
        padded_shape = (args.batch, args.channels, args.height + pt + pb, args.width + pl + pr)
        dx = torch.nn.grad.conv2d_input(padded_shape, weight, grad_out, args.stride, 0, args.dilation,
                                        groups=args.channels)
        return dx[:, :, pt:pt + args.height, pl:pl + args.width].contiguous(
            memory_format=_layout_of(grad_out))

    def wgrad(self, grad_out, x, args, plan):
        x, padding = _pad_input(x, args)
        return torch.nn.grad.conv2d_weight(x, args.weight_shape, grad_out, args.stride, padding,
                                           args.dilation, groups=args.channels)


def _layout_of(t: torch.Tensor) -> torch.memory_format:
    if not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
