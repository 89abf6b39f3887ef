"""Autograd of the dwconv ops: backward, double backward, forward-mode AD and the torch.func transforms.

Every derivative of a depthwise conv is itself a depthwise conv, its input gradient (dgrad) or its weight
gradient (wgrad) with other operands, so each op's derivatives are written with dwconv's own ops:
  y  = fwd(x, w) + b     dy = fwd(dx, w) + fwd(x, dw) + db    backward: dgrad(gy, w), wgrad(gy, x), sum(gy)
  dx = dgrad(gy, w)      linear in gy and w                   backward: fwd(g, w), wgrad(gy, g)
  dw = wgrad(gy, x)      linear in gy and x                   backward: fwd(x, g), dgrad(gy, g)
(from <fwd(x, w), gy> = <x, dgrad(gy, w)> = <w, wgrad(gy, x)>). Since the backward formulas call
differentiable ops, derivatives of any order follow.

Each op gets an Autograd-key kernel, the Python counterpart of an ATen op's autograd kernel: when a
gradient is being recorded it applies a single-level autograd.Function (setup_context, backward, jvp)
whose forward redispatches the op below autograd. Under torch.func every transform level runs that
kernel once on its own wrapped tensors (as it does for ATen ops), so grad, jvp, jacrev, jacfwd and
their nestings compose; vmap goes to the ops' vmap rules (batching.py) before autograd. torch.compile
and torch.export see only the ops (the Functions run inside them), so they trace without graph breaks.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch._functorch.utils import enable_single_level_autograd_function
from torch.autograd import forward_ad
from torch.autograd.function import _SingleLevelFunction

from . import _extension, ops, outputs
from .backends.native import variant_number
from ._conv_args import is_channels_last
from .bias_grad import bias_grad

_fwd = torch.ops.dwconv.depthwise_conv2d.default
_dgrad = torch.ops.dwconv.dgrad.default
_wgrad = torch.ops.dwconv.wgrad.default


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if is_channels_last(t) else torch.contiguous_format


def _in_layout_of(grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """grad_out in x's memory layout; a batched gradient (autograd.grad(is_grads_batched=True)) as it is: legacy
    vmap cannot query channels_last contiguity, and the ops run each of its slices on their own."""
    if ops.legacy_batched(grad_out):
        return grad_out
    return grad_out.contiguous(memory_format=_memory_format(x))


def _redispatch(op, keyset, *args):
    """op on the kernels below autograd (the next functorch level, or the device kernel)."""
    with torch._C._AutoDispatchBelowAutograd():
        return op.redispatch(keyset & torch._C._after_autograd_keyset, *args)


def _redispatch_from_function(op, state, *args):
    """_redispatch inside a Function's forward, with the grad modes of the op call restored (apply turns
    them off; a C++ autograd kernel keeps them, and the next torch.func level must see them)."""
    keyset, grad_enabled, fwd_grad_enabled = state
    with torch.autograd.set_grad_enabled(grad_enabled), forward_ad._set_fwd_grad_enabled(fwd_grad_enabled):
        return _redispatch(op, keyset, *args)


def _add(a, b):
    """a + b where either term may be None (no tangent)."""
    if a is None:
        return b
    return a if b is None else a + b


class _OpFunction(_SingleLevelFunction):
    """The ops' Functions: single-level (each torch.func level applies its own), and keyed for compiled
    autograd as torch.autograd.Function keys its subclasses (_SingleLevelFunction does not)."""

    @staticmethod
    def _compiled_autograd_key(ctx):
        return (ctx._autograd_function_id,)


class DepthwiseConv2dFunction(_OpFunction):
    """y = dwconv::depthwise_conv2d(x, weight, bias, stride, padding, dilation, backend)."""

    @staticmethod
    def forward(x, weight, bias, stride, padding, dilation, backend, state):
        return _redispatch_from_function(_fwd, state, x, weight, bias, stride, padding, dilation, backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, stride, padding, dilation, backend, _ = inputs
        ctx.save_for_backward(x, weight)
        ctx.save_for_forward(x, weight)
        ctx.has_bias = bias is not None
        ctx.output_shape = output.shape
        ctx.conv = (stride, padding, dilation, backend)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        conv = ctx.conv
        grad_out = _in_layout_of(grad_out, x)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = _dgrad(grad_out, weight, list(x.shape), *conv)
        if ctx.needs_input_grad[1]:
            dw = _wgrad(grad_out, x, list(weight.shape), *conv)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = bias_grad(grad_out)
        return dx, dw, db, None, None, None, None, None

    @staticmethod
    def jvp(ctx, x_t, weight_t, bias_t, *_):
        x, weight = ctx.saved_tensors
        conv = ctx.conv
        tangent = None
        if x_t is not None:
            tangent = _fwd(x_t, weight, bias_t, *conv)
            bias_t = None
        if weight_t is not None:
            tangent = _add(tangent, _fwd(x, weight_t, bias_t, *conv))
            bias_t = None
        if bias_t is not None:
            tangent = bias_t.reshape(1, -1, 1, 1).expand(ctx.output_shape).contiguous(
                memory_format=_memory_format(x))
        return tangent


class DgradFunction(_OpFunction):
    """dx = dwconv::dgrad(grad_out, weight, input_shape, stride, padding, dilation, backend)."""

    @staticmethod
    def forward(grad_out, weight, input_shape, stride, padding, dilation, backend, state):
        return _redispatch_from_function(_dgrad, state, grad_out, weight, input_shape, stride, padding, dilation,
                                         backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_out, weight, input_shape, stride, padding, dilation, backend, _ = inputs
        ctx.save_for_backward(grad_out, weight)
        ctx.save_for_forward(grad_out, weight)
        ctx.input_shape = list(input_shape)
        ctx.conv = (stride, padding, dilation, backend)

    @staticmethod
    def backward(ctx, grad_dx):
        grad_out, weight = ctx.saved_tensors
        conv = ctx.conv
        d_grad_out = d_weight = None
        if ctx.needs_input_grad[0]:
            d_grad_out = _fwd(grad_dx, weight, None, *conv)
        if ctx.needs_input_grad[1]:
            d_weight = _wgrad(grad_out, grad_dx, list(weight.shape), *conv)
        return d_grad_out, d_weight, None, None, None, None, None, None

    @staticmethod
    def jvp(ctx, grad_out_t, weight_t, *_):
        grad_out, weight = ctx.saved_tensors
        conv = ctx.conv
        tangent = None
        if grad_out_t is not None:
            tangent = _dgrad(grad_out_t, weight, ctx.input_shape, *conv)
        if weight_t is not None:
            tangent = _add(tangent, _dgrad(grad_out, weight_t, ctx.input_shape, *conv))
        return tangent


class WgradFunction(_OpFunction):
    """dw = dwconv::wgrad(grad_out, x, weight_shape, stride, padding, dilation, backend)."""

    @staticmethod
    def forward(grad_out, x, weight_shape, stride, padding, dilation, backend, state):
        return _redispatch_from_function(_wgrad, state, grad_out, x, weight_shape, stride, padding, dilation, backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_out, x, weight_shape, stride, padding, dilation, backend, _ = inputs
        ctx.save_for_backward(grad_out, x)
        ctx.save_for_forward(grad_out, x)
        ctx.weight_shape = list(weight_shape)
        ctx.conv = (stride, padding, dilation, backend)

    @staticmethod
    def backward(ctx, grad_dw):
        grad_out, x = ctx.saved_tensors
        conv = ctx.conv
        d_grad_out = d_x = None
        if ctx.needs_input_grad[0]:
            d_grad_out = _fwd(x, grad_dw, None, *conv)
        if ctx.needs_input_grad[1]:
            d_x = _dgrad(grad_out, grad_dw, list(x.shape), *conv)
        return d_grad_out, d_x, None, None, None, None, None, None

    @staticmethod
    def jvp(ctx, grad_out_t, x_t, *_):
        grad_out, x = ctx.saved_tensors
        conv = ctx.conv
        tangent = None
        if grad_out_t is not None:
            tangent = _wgrad(grad_out_t, x, ctx.weight_shape, *conv)
        if x_t is not None:
            tangent = _add(tangent, _wgrad(grad_out, x_t, ctx.weight_shape, *conv))
        return tangent


class DirectDepthwiseConv2d(torch.autograd.Function):
    """y = depthwise_conv2d(x, weight, bias) recorded by autograd without the dispatcher, for eager calls on
    plain tensors that need nothing else from the op path (ops.direct_call_possible(recording_ok=True)): the
    op's bodies, so the same kernels, results and derivatives as DepthwiseConv2dFunction, without the per-call
    cost of the custom op's Python dispatch (several times PyTorch's own conv call on a small layer). A
    backward that records a graph (create_graph=True: double backward) or runs under a dispatch mode calls
    the differentiable ops instead."""

    @staticmethod
    def forward(ctx, x, weight, bias, args, backend):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.args, ctx.backend = args, backend
        return ops.run_forward(x, weight, bias, args, backend)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        args, backend = ctx.args, ctx.backend
        grad_out = _in_layout_of(grad_out, x)
        needs_dx, needs_dw = ctx.needs_input_grad[:2]
        dx = dw = db = None
        if not torch.is_grad_enabled() and ops.direct_call_possible(grad_out, weight, None):
            dx = ops.run_dgrad(grad_out, weight, args, backend) if needs_dx else None
            dw = ops.run_wgrad(grad_out, x, args, backend) if needs_dw else None
        else:
            conv = (list(args.stride), list(args.padding), list(args.dilation), backend)
            dx = _dgrad(grad_out, weight, list(x.shape), *conv) if needs_dx else None
            dw = _wgrad(grad_out, x, list(weight.shape), *conv) if needs_dw else None
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = bias_grad(grad_out)
        return dx, dw, db, None, None


def apply_native(x: torch.Tensor, weight: torch.Tensor, bias, args, backend: str, plans) -> Optional[torch.Tensor]:
    """depthwise_conv2d recorded as one C++ autograd Function (dwconv._C.train_conv, csrc/direct_conv.cpp) for a
    call whose three ops run the native plans `plans` (dispatch.training_route): the same kernels, results and
    derivatives as DirectDepthwiseConv2d at about a third of its per-call cost. None where the extension has no
    such entry or declines the call (the caller then applies DirectDepthwiseConv2d)."""
    train_conv = _extension.direct_entry("train_conv")
    if train_conv is None:
        return None
    fwd, dgrad, wgrad = plans
    out = train_conv(x, weight, bias, args.stride, args.padding, args.dilation, fwd.family, variant_number(fwd),
                     dgrad.family, variant_number(dgrad), wgrad.family, variant_number(wgrad), backend,
                     outputs.POISON_OUTPUTS)
    return None if out is NotImplemented else out


def _recording(args) -> bool:
    """True when a call must go through its autograd.Function: a backward graph is being recorded, or a
    forward-mode AD level is open (the Function then passes on whatever tangents the inputs carry)."""
    if torch.is_grad_enabled() and torch._C._any_requires_grad(*args):
        return True
    return torch._C._is_fwd_grad_enabled() and forward_ad._current_level >= 0


def _autograd_kernel(op, function):
    def kernel(keyset, *args):
        if not _recording(args):
            return _redispatch(op, keyset, *args)
        state = (keyset, torch.is_grad_enabled(), torch._C._is_fwd_grad_enabled())
        if torch._C._are_functorch_transforms_active():
            with enable_single_level_autograd_function():
                return function.apply(*args, state)
        return function.apply(*args, state)
    return kernel


def register(forward_op, dgrad_op, wgrad_op) -> None:
    """Install the Autograd kernels of the three custom ops (torch.library CustomOpDefs)."""
    for custom_op, op, function in ((forward_op, _fwd, DepthwiseConv2dFunction),
                                    (dgrad_op, _dgrad, DgradFunction),
                                    (wgrad_op, _wgrad, WgradFunction)):
        name = op._schema.name.split("::")[1]
        # Replaces the Autograd kernel custom_op registered: torch 2.11 refuses unless told (allow_override
        # defaults to False there), and then warns about the replacement.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="(?s).*Overriding a previously registered kernel")
            custom_op._lib.impl(name, _autograd_kernel(op, function), "Autograd", with_keyset=True,
                                allow_override=True)
