"""Remembered calls: the functional's eager calls made again without Python (csrc/remembered_calls.cpp).

The first eager call of a signature (sizes, dtypes, devices and layouts of the tensors, stride, padding and
dilation as given, backend, deterministic flag, CPU threads, settings' generation) takes the functional's Python route, which validates
it and decides how it runs (dwconv/dispatch.py). Where that route is one the extension can take by itself, the
functional remembers it here: PyTorch's convolution, or native kernels with outputs below the CPU output pool's
size, separately for calls that record a gradient (dispatch.training_route) and calls that do not (the forward's
plan). Later calls of the signature that need nothing from the dispatcher run the remembered route in C++ at a
fraction of the Python route's cost, with the same kernels and results. Changing a setting or clearing the
dispatch decisions forgets every remembered call.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import _extension, config, dispatch
from ._conv_args import ConvArgs
from .backends.native import variant_number
from .outputs import large_cpu_output
from .plans import Plan


def _declined(*args):
    return NotImplemented


# conv(x, weight, bias, stride, padding, dilation, backend, config.generation, poison): the remembered route's output,
# or NotImplemented where the call is not remembered or needs the Python route.
conv = _extension.direct_entry("remembered_conv") or _declined
_remember = _extension.direct_entry("remember_conv")
_forget = _extension.direct_entry("forget_convs")


def remember_inference(spec: str, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride,
                       padding, dilation, args: ConvArgs) -> bool:
    """Remember how a call that records no gradient ran (after the Python route ran it): its forward's plan."""
    plan = dispatch.decided_plan(spec, "fwd", x, args)
    if plan is None or _remember is None:
        return False
    if plan.backend == "torch":
        return _store(x, weight, bias, stride, padding, dilation, spec, False, "torch", args, (plan,))
    if plan.backend in dispatch.NATIVE_BACKENDS and not large_cpu_output(args.output_shape, x.dtype, x.device):
        return _store(x, weight, bias, stride, padding, dilation, spec, False, "native", args, (plan,))
    return False


def remember_training(spec: str, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride,
                      padding, dilation, args: ConvArgs, route: str, plans: Optional[Sequence[Plan]]) -> bool:
    """Remember how a call that records a gradient ran: dispatch.training_route's "torch" or "native" route."""
    if route not in ("torch", "native") or plans is None or _remember is None:
        return False
    return _store(x, weight, bias, stride, padding, dilation, spec, True, route, args, plans)


def _store(x, weight, bias, stride, padding, dilation, spec, training, route, args, plans) -> bool:
    kernels = []
    for i in range(3):
        plan = plans[i] if i < len(plans) else None
        kernels += [plan.family, variant_number(plan)] if plan is not None and plan.backend != "torch" else ["", 0]
    return _remember(x, weight, bias, stride, padding, dilation, spec, config.generation, training, route,
                     args.stride, args.padding, args.dilation, args.output_shape, *kernels)


def forget() -> int:
    """Forget every remembered call (the next call of each signature takes the Python route); how many were."""
    return _forget() if _forget is not None else 0


# The settings' generation is part of every signature; forgetting on a change keeps the memory to what the settings
# in force can use.
config.on_change(lambda _settings: forget())
