"""The public functional entry point."""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor
from torch.autograd import forward_ad
from torch.overrides import handle_torch_function, has_torch_function_variadic

from . import ops  # noqa: F401  (registers the dwconv ops)
from . import config, onnx_export, outputs, remembered
from ._conv_args import IntPair, check_and_resolve_cached
from .autograd import DirectDepthwiseConv2d, apply_native
from . import dispatch
from .backends import check_backend_name, get_backend


def depthwise_conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: IntPair = 1,
                     padding: Union[IntPair, str] = 0, dilation: IntPair = 1, *, backend: str = "auto") -> Tensor:
    """Same result as `F.conv2d(input, weight, bias, stride, padding, dilation, groups=input.shape[-3])`.

    input: (N, C, H, W) or unbatched (C, H, W), NCHW or channels_last (the output follows it), any strides.
    weight: (C*m, 1, kH, kW) for a channel multiplier m. padding: int, pair, "same" or "valid".
    backend: "auto" (the fastest that supports the call), "cuda", "triton", "cpu" or "torch"; a named
    backend that cannot serve the call raises BackendUnavailableError with the reason.
    """
    if not torch.compiler.is_compiling() and forward_ad._current_level < 0:
        out = remembered.conv(input, weight, bias, stride, padding, dilation, backend, config.generation,
                              outputs.POISON_OUTPUTS)
        if out is not NotImplemented:
            return out
    if has_torch_function_variadic(input, weight, bias):
        # As F.conv2d: torch.fx tracing records one call of this function (its Proxy's __torch_function__),
        # and tensor subclasses see it whole.
        return handle_torch_function(depthwise_conv2d, (input, weight, bias), input, weight, bias, stride, padding,
                                     dilation, backend=backend)
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a tensor, got {type(input).__name__}")
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    elif input.dim() != 4:
        raise RuntimeError(f"depthwise_conv2d expects a 3-D (unbatched) or 4-D (batched) input, got "
                           f"{input.dim()}-D input of shape {tuple(input.shape)}")
    args = check_and_resolve_cached(input, weight, bias, stride, padding, dilation)
    check_backend_name(backend)
    if weight.dtype == input.dtype and ops.direct_call_possible(input, weight, bias, recording_ok=True):
        if torch.is_grad_enabled() and torch._C._any_requires_grad(input, weight, bias):
            route, plans = dispatch.training_route(backend, input, args)
            out = None
            if route == "torch":
                out = get_backend("torch").forward(input, weight, bias, args, dispatch.TORCH_PLAN)
            elif route == "native":
                out = apply_native(input, weight, bias, args, backend, plans)
            if out is None:
                out = DirectDepthwiseConv2d.apply(input, weight, bias, args, backend)
            elif not unbatched:
                remembered.remember_training(backend, input, weight, bias, stride, padding, dilation, args, route,
                                             plans)
        else:
            out = ops.run_forward(input, weight, bias, args, backend)
            if not unbatched:
                remembered.remember_inference(backend, input, weight, bias, stride, padding, dilation, args)
        return out.squeeze(0) if unbatched else out
    stride, padding, dilation = list(args.stride), list(args.padding), list(args.dilation)
    if torch.jit.is_tracing():  # "same" padding computed from traced sizes: the op's schema takes ints
        stride, padding, dilation = ([int(v) for v in values] for values in (stride, padding, dilation))
    if onnx_export.exporting():
        out = onnx_export.as_conv2d(input, weight, bias, stride, padding, dilation)
    else:
        out = torch.ops.dwconv.depthwise_conv2d(input, weight, bias, stride, padding, dilation, backend)
    return out.squeeze(0) if unbatched else out
