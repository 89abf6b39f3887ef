"""The depthwise-conv ops timed by kernels.py, for PyTorch's own path and for a dwconv backend.

`make_op(provider_backend, op, shape, operands)` returns a zero-argument callable doing one call of `op`
("fwd", "dgrad", "wgrad", "fwd+bwd") on the next operand set (sets rotate so caches do not flatter).
provider_backend "torch" means plain PyTorch (F.conv2d / aten.convolution_backward: cuDNN or PyTorch's
native kernel on GPU, oneDNN or the native kernel on CPU); any other name is a dwconv backend.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, List

import torch
import torch.nn.functional as F

import dwconv
from dwconv._conv_args import check_and_resolve
from dwconv.ops import run_dgrad, run_wgrad

from .shapes import DWShape

__all__ = ["Operands", "make_operands", "make_op", "PYTORCH", "DTYPES"]

PYTORCH = "torch"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # the benchmarks' dtype names


@dataclass
class Operands:
    """One set of op inputs in one layout; x is a leaf requiring grad (used by fwd+bwd)."""

    x: torch.Tensor
    grad_out: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor


def make_operands(shape: DWShape, dtype: torch.dtype, device: torch.device, channels_last: bool,
                  count: int) -> List[Operands]:
    """`count` independent input sets sharing one weight and bias (those are small and stay cached)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    gen = torch.Generator(device="cpu").manual_seed(0)
    weight = (torch.randn(shape.out_channels, 1, shape.k, shape.k, generator=gen) / shape.k).to(device, dtype)
    bias = torch.randn(shape.out_channels, generator=gen).to(device, dtype)
    weight.requires_grad_()
    bias.requires_grad_()
    ho, wo = shape.out_hw
    sets = []
    for _ in range(count):
        x = torch.randn(shape.n, shape.c, shape.h, shape.w, device=device, dtype=dtype)
        grad_out = torch.randn(shape.n, shape.out_channels, ho, wo, device=device, dtype=dtype)
        sets.append(Operands(x.contiguous(memory_format=fmt).requires_grad_(),
                             grad_out.contiguous(memory_format=fmt), weight, bias))
    return sets


def _torch_calls(shape: DWShape):
    s, p, g = [shape.stride] * 2, [shape.padding] * 2, shape.c

    def fwd(o: Operands):
        return F.conv2d(o.x, o.weight, o.bias, s, p, 1, g)

    def dgrad(o: Operands):
        return torch.ops.aten.convolution_backward(o.grad_out, o.x, o.weight, None, s, p, [1, 1], False, [0, 0],
                                                   g, [True, False, False])[0]

    def wgrad(o: Operands):
        return torch.ops.aten.convolution_backward(o.grad_out, o.x, o.weight, None, s, p, [1, 1], False, [0, 0],
                                                   g, [False, True, False])[1]

    return fwd, dgrad, wgrad


def _dwconv_calls(shape: DWShape, backend: str, example: Operands):
    """dgrad and wgrad as an eager training backward runs them (the op bodies, autograd.DirectDepthwiseConv2d),
    without the custom ops' dispatch: on a GPU a short kernel would otherwise time the host's per-call cost."""
    args = check_and_resolve(example.x, example.weight, example.bias, shape.stride, shape.padding, 1)

    def fwd(o: Operands):
        return dwconv.depthwise_conv2d(o.x, o.weight, o.bias, shape.stride, shape.padding, backend=backend)

    def dgrad(o: Operands):
        return run_dgrad(o.grad_out, o.weight, args, backend)

    def wgrad(o: Operands):
        return run_wgrad(o.grad_out, o.x, args, backend)

    return fwd, dgrad, wgrad


def make_op(provider_backend: str, op: str, shape: DWShape, operands: List[Operands]) -> Callable[[], object]:
    """One call of `op` per invocation, cycling through `operands`."""
    fwd, dgrad, wgrad = (_torch_calls(shape) if provider_backend == PYTORCH
                         else _dwconv_calls(shape, provider_backend, operands[0]))
    cycle = itertools.cycle(operands)

    if op == "fwd+bwd":
        def run():
            o = next(cycle)
            y = fwd(o)
            return torch.autograd.grad(y, (o.x, o.weight, o.bias), o.grad_out)
        return run

    single = {"fwd": fwd, "dgrad": dgrad, "wgrad": wgrad}[op]

    def run_no_grad():
        with torch.no_grad():
            return single(next(cycle))
    return run_no_grad
