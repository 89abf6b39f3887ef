"""The `dwconv` op namespace in torch.library: forward, dgrad and wgrad as custom ops.

Each op takes a backend name or plan ("auto" included) and resolves it when it runs (dwconv/dispatch.py),
so torch.compile sees the ops as opaque calls and never traces backend selection. The ops
carry fake kernels (torch.compile / meta tracing), their derivatives (autograd.py: backward, double backward,
forward-mode AD; batching.py: vmap), an autocast rule matching nn.Conv2d's, and FLOP formulas for FlopCounterMode.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from ._conv_args import ConvArgs, is_channels_last
from torch.autograd import forward_ad as _forward_ad

from . import dispatch


def _args(x_shape, w_shape, stride, padding, dilation) -> ConvArgs:
    # No int(): under torch.compile with dynamic shapes these are SymInts, and int() would specialise them.
    n, c, h, w = x_shape
    cout, _, kh, kw = w_shape
    return ConvArgs(n, c, h, w, cout // c, (kh, kw), (stride[0], stride[1]), tuple(padding),
                    (dilation[0], dilation[1]))


def _memory_format(t: Tensor) -> torch.memory_format:
    return torch.channels_last if is_channels_last(t) else torch.contiguous_format


def _empty(shape, like: Tensor, memory_format=torch.contiguous_format, zero=False) -> Tensor:
    out = torch.empty(tuple(shape), dtype=like.dtype, device=like.device, memory_format=memory_format)
    return out.zero_() if zero else out


def _check_grad_shape(grad_out: Tensor, args: ConvArgs) -> None:
    if tuple(grad_out.shape) != args.output_shape:
        raise RuntimeError(f"grad_out must have the output's shape {args.output_shape}, got {tuple(grad_out.shape)}")


_DIRECT_DEVICES = ("cpu", "cuda")
_PLAIN_TENSORS = (Tensor, torch.nn.Parameter)  # Parameter disables __torch_function__: a plain tensor here


def direct_call_possible(x: Tensor, weight: Tensor, bias: Optional[Tensor], recording_ok: bool = False) -> bool:
    """Whether a call can skip the dispatcher (and the op's Python wrappers) and run the op's body directly:
    plain CPU or CUDA tensors, no gradient to record (recording_ok: or one recorded by the caller's own
    autograd.Function, autograd.DirectDepthwiseConv2d), no tangent, and nothing that must see the op itself
    (autocast, dispatch modes such as FlopCounterMode or fake tensors, torch.func transforms, tracing,
    torch.compile). The result is the same either way: only the per-call cost differs."""
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return False  # first: Dynamo cannot trace the queries below (it would break the graph)
    if (type(x) not in _PLAIN_TENSORS or type(weight) not in _PLAIN_TENSORS
            or (bias is not None and type(bias) not in _PLAIN_TENSORS)):
        return False
    if not recording_ok and torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or
                                                         (bias is not None and bias.requires_grad)):
        return False
    if legacy_batched(x) or legacy_batched(weight):
        return False
    device = x.device.type
    return device in _DIRECT_DEVICES and not (
        torch._C._len_torch_dispatch_stack() or _forward_ad._current_level >= 0
        or torch._C._functorch.peek_interpreter_stack() is not None or torch.is_autocast_enabled(device)
        or torch._C._get_tracing_state() is not None)


# A batched gradient of autograd.grad(is_grads_batched=True): legacy vmap's wrapper, a plain Tensor by type.
legacy_batched = torch._C._functorch.is_legacy_batchedtensor


def as_kernel_layout(t: Tensor, like: Optional[Tensor] = None) -> Tensor:
    """t made NCHW- or channels_last-contiguous (like's layout if given): the layouts kernels accept."""
    fmt = _memory_format(like if like is not None else t)
    if like is None and (t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)):
        return t
    return t.contiguous(memory_format=fmt)


@torch.library.custom_op("dwconv::depthwise_conv2d", mutates_args=())
def forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: Sequence[int], padding: Sequence[int],
            dilation: Sequence[int], backend: str) -> Tensor:
    args = _args(x.shape, weight.shape, stride, padding, dilation)
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise RuntimeError(f"input ({x.dtype}), weight ({weight.dtype}) and bias must have the same dtype")
    return run_forward(x, weight, bias, args, backend)


def run_forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], args: ConvArgs, backend: str) -> Tensor:
    """The forward op's body for validated tensors and resolved arguments (the op, and the functional's direct
    path for calls that need nothing from the dispatcher: direct_call_possible)."""
    if x.numel() == 0:
        return _empty(args.output_shape, x, _memory_format(x))
    x = as_kernel_layout(x)
    weight, bias = weight.contiguous(), None if bias is None else bias.contiguous()
    return dispatch.run(backend, "fwd", x, args, lambda impl, plan: impl.forward(x, weight, bias, args, plan))


@forward.register_fake
def _(x, weight, bias, stride, padding, dilation, backend):
    args = _args(x.shape, weight.shape, stride, padding, dilation)
    return _empty(args.output_shape, x, _memory_format(x))


@torch.library.custom_op("dwconv::dgrad", mutates_args=())
def dgrad(grad_out: Tensor, weight: Tensor, input_shape: Sequence[int], stride: Sequence[int],
          padding: Sequence[int], dilation: Sequence[int], backend: str) -> Tensor:
    args = _args(input_shape, weight.shape, stride, padding, dilation)
    _check_grad_shape(grad_out, args)
    return run_dgrad(grad_out, weight, args, backend)


def run_dgrad(grad_out: Tensor, weight: Tensor, args: ConvArgs, backend: str) -> Tensor:
    """The dgrad op's body for a grad_out of the output's shape (the op, and the direct backward)."""
    if grad_out.numel() == 0:
        return _empty(args.input_shape, grad_out, _memory_format(grad_out), zero=True)
    grad_out, weight = as_kernel_layout(grad_out), weight.contiguous()
    return dispatch.run(backend, "dgrad", grad_out, args, lambda impl, plan: impl.dgrad(grad_out, weight, args, plan))


@dgrad.register_fake
def _(grad_out, weight, input_shape, stride, padding, dilation, backend):
    return _empty(input_shape, grad_out, _memory_format(grad_out))


@torch.library.custom_op("dwconv::wgrad", mutates_args=())
def wgrad(grad_out: Tensor, x: Tensor, weight_shape: Sequence[int], stride: Sequence[int],
          padding: Sequence[int], dilation: Sequence[int], backend: str) -> Tensor:
    args = _args(x.shape, weight_shape, stride, padding, dilation)
    _check_grad_shape(grad_out, args)
    return run_wgrad(grad_out, x, args, backend)


def run_wgrad(grad_out: Tensor, x: Tensor, args: ConvArgs, backend: str) -> Tensor:
    """The wgrad op's body for a grad_out of the output's shape (the op, and the direct backward)."""
    if grad_out.numel() == 0:
        return _empty(args.weight_shape, x, zero=True)
    x = as_kernel_layout(x)
    grad_out = as_kernel_layout(grad_out, like=x)
    return dispatch.run(backend, "wgrad", x, args, lambda impl, plan: impl.wgrad(grad_out, x, args, plan))


@wgrad.register_fake
def _(grad_out, x, weight_shape, stride, padding, dilation, backend):
    return _empty(weight_shape, x)


# Autograd (backward, double backward, forward-mode AD) and vmap rules, written with the three ops above.
from . import autograd as _autograd  # noqa: E402
from . import batching as _batching  # noqa: E402

_autograd.register(forward, dgrad, wgrad)
_batching.register(forward, dgrad, wgrad)


def _register_autocast(device_type: str) -> None:
    """Cast like nn.Conv2d under autocast: floating, non-double inputs to the current autocast dtype.

    torch.library.register_autocast takes one fixed dtype; conv follows the dtype of the active
    autocast context, so the kernel reads it at call time.
    """
    key_name = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    key = getattr(torch._C.DispatchKey, key_name)

    def kernel(_keyset, x, weight, bias, stride, padding, dilation, backend):
        dtype = torch.get_autocast_dtype(device_type)

        def cast(t):
            if t is not None and t.is_floating_point() and t.dtype != torch.float64 and t.device.type == device_type:
                return t.to(dtype)
            return t

        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
            return torch.ops.dwconv.depthwise_conv2d.default(cast(x), cast(weight), cast(bias), stride, padding,
                                                    dilation, backend)

    forward._lib.impl("depthwise_conv2d", kernel, key_name, with_keyset=True)


for _device_type in ("cpu", "cuda"):
    _register_autocast(_device_type)


def _register_flop_formulas() -> None:
    """FlopCounterMode: 2 FLOPs per multiply-add, as it counts aten convolutions (forward and backward)."""
    from torch.utils.flop_counter import register_flop_formula

    def macs(out_shape, kernel_hw):
        n = 1
        for s in out_shape:
            n *= s
        return n * kernel_hw[0] * kernel_hw[1]

    @register_flop_formula(torch.ops.dwconv.depthwise_conv2d)
    def _fwd(x_shape, w_shape, *args, out_shape=None, **kwargs):
        return 2 * macs(out_shape, w_shape[2:])

    @register_flop_formula(torch.ops.dwconv.dgrad)
    def _dgrad(grad_shape, w_shape, *args, out_shape=None, **kwargs):
        return 2 * macs(grad_shape, w_shape[2:])

    @register_flop_formula(torch.ops.dwconv.wgrad)
    def _wgrad(grad_shape, x_shape, weight_shape, *args, out_shape=None, **kwargs):
        return 2 * macs(grad_shape, weight_shape[2:])


_register_flop_formulas()
