"""vmap rules of the dwconv ops (torch.func.vmap, and jacrev / jacfwd / per-sample gradients through it).

A vmapped depthwise conv is one depthwise conv: a vmap dimension that only the activations carry folds
into the batch N; one that the weights carry folds into the channels (B stacks of C channels convolved
with B stacks of weights are B*C independent channels). wgrad sums over N, so it always folds into
the channels.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def _batch_first(t: Tensor, bdim: Optional[int], size: int) -> Tensor:
    """t with its vmap dimension first (an unbatched t expanded to `size`)."""
    if bdim is None:
        return t.unsqueeze(0).expand(size, *t.shape)
    return t.movedim(bdim, 0)


def _fold_into_batch(t: Tensor, bdim: Optional[int], size: int) -> Tensor:
    """(B, N, C, H, W) -> (B*N, C, H, W)."""
    return _batch_first(t, bdim, size).flatten(0, 1)


def _activations_into_channels(t: Tensor, bdim: Optional[int], size: int) -> Tensor:
    """(B, N, C, H, W) -> (N, B*C, H, W)."""
    return _batch_first(t, bdim, size).transpose(0, 1).flatten(1, 2)


def _parameters_into_channels(t: Tensor, bdim: Optional[int], size: int) -> Tensor:
    """Weights (B, C, 1, kh, kw) -> (B*C, 1, kh, kw); bias (B, C) -> (B*C,)."""
    return _batch_first(t, bdim, size).flatten(0, 1)


def _forward_rule(info, in_dims, x, weight, bias, stride, padding, dilation, backend):
    x_bdim, w_bdim, b_bdim = in_dims[:3]
    size = info.batch_size
    if w_bdim is None and b_bdim is None:
        y = torch.ops.dwconv.depthwise_conv2d(_fold_into_batch(x, x_bdim, size), weight, bias, stride, padding,
                                              dilation, backend)
        return y.unflatten(0, (size, -1)), 0
    bias = None if bias is None else _parameters_into_channels(bias, b_bdim, size)
    y = torch.ops.dwconv.depthwise_conv2d(_activations_into_channels(x, x_bdim, size),
                                          _parameters_into_channels(weight, w_bdim, size), bias, stride, padding,
                                          dilation, backend)
    return y.unflatten(1, (size, -1)), 1


def _dgrad_rule(info, in_dims, grad_out, weight, input_shape, stride, padding, dilation, backend):
    g_bdim, w_bdim = in_dims[:2]
    size = info.batch_size
    n, c, h, w = input_shape
    if w_bdim is None:
        dx = torch.ops.dwconv.dgrad(_fold_into_batch(grad_out, g_bdim, size), weight, [size * n, c, h, w],
                                    stride, padding, dilation, backend)
        return dx.unflatten(0, (size, n)), 0
    dx = torch.ops.dwconv.dgrad(_activations_into_channels(grad_out, g_bdim, size),
                                _parameters_into_channels(weight, w_bdim, size), [n, size * c, h, w],
                                stride, padding, dilation, backend)
    return dx.unflatten(1, (size, c)), 1


def _wgrad_rule(info, in_dims, grad_out, x, weight_shape, stride, padding, dilation, backend):
    g_bdim, x_bdim = in_dims[:2]
    size = info.batch_size
    cout, one, kh, kw = weight_shape
    dw = torch.ops.dwconv.wgrad(_activations_into_channels(grad_out, g_bdim, size),
                                _activations_into_channels(x, x_bdim, size), [size * cout, one, kh, kw],
                                stride, padding, dilation, backend)
    return dw.unflatten(0, (size, cout)), 0


def register(forward_op, dgrad_op, wgrad_op) -> None:
    """Register the vmap rules on the three custom ops (torch.library CustomOpDefs)."""
    forward_op.register_vmap(_forward_rule)
    dgrad_op.register_vmap(_dgrad_rule)
    wgrad_op.register_vmap(_wgrad_rule)
