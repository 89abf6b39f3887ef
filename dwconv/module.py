"""FastDWConv: a drop-in nn.Conv2d for depthwise convolutions, running on dwconv's backends."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import scripting
from .backends import check_backend_name
from .functional import depthwise_conv2d


class FastDWConv(nn.Conv2d):
    """nn.Conv2d with groups == in_channels (out_channels a multiple of it), computed by dwconv.

    Same constructor arguments, parameters, state_dict, attributes and padding_mode behaviour as
    nn.Conv2d; `groups` defaults to in_channels; keyword `backend` chooses the implementation.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=None,
                 bias=True, padding_mode="zeros", device=None, dtype=None, *, backend: str = "auto"):
        if groups is None:
            groups = in_channels
        if groups != in_channels:
            raise ValueError(f"FastDWConv is depthwise: groups ({groups}) must equal in_channels ({in_channels})")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self.backend = check_backend_name(backend)

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d, backend: str = "auto") -> "FastDWConv":
        """A FastDWConv sharing conv's parameters, buffers, hooks, mode and attributes."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"expected an nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != conv.in_channels:
            raise ValueError(f"not a depthwise conv: groups={conv.groups}, in_channels={conv.in_channels}")
        new = cls.__new__(cls)
        new.__dict__.update({k: (v.copy() if isinstance(v, dict) else v) for k, v in conv.__dict__.items()})
        new.backend = check_backend_name(backend)
        return new

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        if not torch.jit.is_scripting():
            return self._eager_conv_forward(input, weight, bias)
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = [0, 0, 0, 0]
        else:
            padding = scripting.explicit_padding(self.padding, self.kernel_size, self.dilation)
        return scripting.depthwise_conv2d(input, weight, bias, [self.stride[0], self.stride[1]], padding,
                                          [self.dilation[0], self.dilation[1]], self.backend)

    @torch.jit.unused
    def _eager_conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return depthwise_conv2d(input, weight, bias, self.stride, 0, self.dilation, backend=self.backend)
        return depthwise_conv2d(input, weight, bias, self.stride, self.padding, self.dilation, backend=self.backend)

    def extra_repr(self):
        return super().extra_repr() + f", backend={self.backend!r}"
