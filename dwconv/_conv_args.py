"""Normalisation and validation of depthwise-conv arguments.

Every entry point (functional, module, ops) turns user arguments into one
`ConvArgs`, so validation lives in exactly one place and every backend sees
the same, fully resolved geometry.
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Sequence, Tuple, Union

import torch

IntPair = Union[int, Sequence[int]]


class ConvArgs(NamedTuple):
    """Resolved geometry of one depthwise convolution (always 4-D, NCHW logical order).

    padding is explicit and possibly asymmetric: (top, bottom, left, right).
    multiplier m: output channel c*m + j reads input channel c.
    A tuple, so hashing it (per call, in dwconv/dispatch.py's decision cache) happens in C.
    """

    batch: int
    channels: int
    height: int
    width: int
    multiplier: int
    kernel: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int, int, int]
    dilation: Tuple[int, int]

    @property
    def out_channels(self) -> int:
        return self.channels * self.multiplier

    @property
    def out_height(self) -> int:
        pt, pb, _, _ = self.padding
        return (self.height + pt + pb - self.dilation[0] * (self.kernel[0] - 1) - 1) // self.stride[0] + 1

    @property
    def out_width(self) -> int:
        _, _, pl, pr = self.padding
        return (self.width + pl + pr - self.dilation[1] * (self.kernel[1] - 1) - 1) // self.stride[1] + 1

    @property
    def input_shape(self) -> Tuple[int, int, int, int]:
        return (self.batch, self.channels, self.height, self.width)

    @property
    def output_shape(self) -> Tuple[int, int, int, int]:
        return (self.batch, self.out_channels, self.out_height, self.out_width)

    @property
    def weight_shape(self) -> Tuple[int, int, int, int]:
        return (self.out_channels, 1, self.kernel[0], self.kernel[1])

    @property
    def macs(self) -> int:
        """Multiply-adds of the forward (fvcore's 'flop'): N*Cout*Ho*Wo*Kh*Kw."""
        n, c, ho, wo = self.output_shape
        return n * c * ho * wo * self.kernel[0] * self.kernel[1]


def _pair(value: IntPair, name: str) -> Tuple[int, int]:
    if type(value) is int:
        return (value, value)
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        return value  # type: ignore[return-value]
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list, torch.Size)):
        if len(value) == 1:
            value = (value[0], value[0])
        if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
        return (int(value[0]), int(value[1]))
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


def resolve_padding(padding, kernel: Tuple[int, int], stride: Tuple[int, int],
                    dilation: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """Explicit (top, bottom, left, right) padding from an int, a pair, a 4-tuple or "same"/"valid".

    "same" pads d*(k-1) in total per dim, the odd extra element at the end, as PyTorch does.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions")
            total_h = dilation[0] * (kernel[0] - 1)
            total_w = dilation[1] * (kernel[1] - 1)
            return (total_h // 2, total_h - total_h // 2, total_w // 2, total_w - total_w // 2)
        raise ValueError(f"Invalid padding string {padding!r}, should be one of {{'valid', 'same'}}")
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in padding):
            raise TypeError(f"padding must be ints, got {padding!r}")
        pads = tuple(int(v) for v in padding)
    else:
        ph, pw = _pair(padding, "padding")
        pads = (ph, ph, pw, pw)
    if any(p < 0 for p in pads):
        raise ValueError(f"negative padding is not supported, got {padding!r}")
    return pads  # type: ignore[return-value]


def check_and_resolve(x: torch.Tensor, weight: torch.Tensor, bias, stride, padding,
                      dilation) -> ConvArgs:
    """Validate a (4-D) depthwise conv call and return its resolved geometry.

    Raises TypeError / ValueError / RuntimeError with a message for every bad input.
    """
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError("input and weight must be tensors")
    if x.dim() != 4:
        raise RuntimeError(f"depthwise_conv2d expects a 3-D (unbatched) or 4-D (batched) input, got {x.dim() if x.dim() != 4 else 4}-D")
    if weight.dim() != 4:
        raise RuntimeError(f"weight must be 4-D (out_channels, 1, kH, kW), got shape {tuple(weight.shape)}")
    for name, t in (("input", x), ("weight", weight)) + ((("bias", bias),) if bias is not None else ()):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise RuntimeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    # Under autocast the op casts input, weight and bias to the autocast dtype first (as nn.Conv2d does),
    # so mixed dtypes are fine there unless one of them is float64, which autocast leaves alone.
    mixed_ok = (weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype)) and (
        torch.amp.is_autocast_available(x.device.type) and torch.is_autocast_enabled(x.device.type)
        and torch.float64 not in (x.dtype, weight.dtype, bias.dtype if bias is not None else x.dtype))
    if weight.dtype != x.dtype and not mixed_ok:
        raise RuntimeError(f"input ({x.dtype}) and weight ({weight.dtype}) must have the same dtype")
    if weight.device != x.device:
        raise RuntimeError(f"input ({x.device}) and weight ({weight.device}) must be on the same device")
    n, c, h, w = x.shape
    cout, cin_per_group, kh, kw = weight.shape
    if c == 0:
        raise RuntimeError("input must have at least one channel")
    if h == 0 or w == 0:
        raise RuntimeError(f"Only zero batch or zero channel inputs are supported, got spatial size {(h, w)}")
    if cin_per_group != 1:
        raise RuntimeError(
            f"not a depthwise weight: expected shape (out_channels, 1, kH, kW), got {tuple(weight.shape)} "
            f"for an input with {c} channels")
    if cout == 0 or cout % c != 0:
        raise RuntimeError(f"out_channels ({cout}) must be a positive multiple of in_channels ({c})")
    if kh == 0 or kw == 0:
        raise RuntimeError(f"kernel size must be positive, got {(kh, kw)}")
    if bias is not None:
        if bias.dtype != x.dtype and not mixed_ok:
            raise RuntimeError(f"bias ({bias.dtype}) must have the input's dtype ({x.dtype})")
        if bias.device != x.device:
            raise RuntimeError(f"bias ({bias.device}) must be on the input's device ({x.device})")
        if bias.shape != (cout,):
            raise RuntimeError(f"bias must have shape ({cout},), got {tuple(bias.shape)}")
    stride_ = _pair(stride, "stride")
    dilation_ = _pair(dilation, "dilation")
    if min(stride_) <= 0:
        raise ValueError(f"stride must be positive, got {stride!r}")
    if min(dilation_) <= 0:
        raise ValueError(f"dilation must be positive, got {dilation!r}")
    pads = resolve_padding(padding, (kh, kw), stride_, dilation_)
    args = ConvArgs(n, c, h, w, cout // c, (kh, kw), stride_, pads, dilation_)
    eff_h = dilation_[0] * (kh - 1) + 1
    eff_w = dilation_[1] * (kw - 1) + 1
    if h + pads[0] + pads[1] < eff_h or w + pads[2] + pads[3] < eff_w:
        raise RuntimeError(
            f"kernel size ({eff_h}x{eff_w} with dilation) can't be greater than the padded input size "
            f"({h + pads[0] + pads[1]}x{w + pads[2] + pads[3]})")
    return args


_resolved: Dict[tuple, ConvArgs] = {}
_RESOLVED_MAX = 4096


def check_and_resolve_cached(x: torch.Tensor, weight: torch.Tensor, bias, stride, padding, dilation) -> ConvArgs:
    """check_and_resolve, remembered per (sizes, dtypes, devices, stride, padding, dilation) of calls that passed:
    the checks depend on nothing else (calls with mixed dtypes, which also depend on autocast, are not
    remembered). Saves most of the per-call cost of validation on repeated calls (a model's layers). Not under
    torch.compile, where sizes may be symbolic and a lookup keyed by them would specialise the graph."""
    if torch.compiler.is_compiling():
        return check_and_resolve(x, weight, bias, stride, padding, dilation)
    try:
        key = (x.shape, x.dtype, x.device, weight.shape, weight.dtype, weight.device,
               None if bias is None else (bias.shape, bias.dtype, bias.device), _exact(stride), _exact(padding),
               _exact(dilation))
        args = _resolved.get(key)
    except (TypeError, AttributeError):  # other forms (lists, bools) or non-tensors: the full check says what
        return check_and_resolve(x, weight, bias, stride, padding, dilation)
    if args is None:
        args = check_and_resolve(x, weight, bias, stride, padding, dilation)
        if weight.dtype == x.dtype and (bias is None or bias.dtype == x.dtype):
            if len(_resolved) >= _RESOLVED_MAX:
                _resolved.clear()
            _resolved[key] = args
    return args


def _exact(value):
    """value where it is a str, an int or a tuple of ints of exactly those types (True and 1.0 are equal to 1 and
    hash alike, but the checks reject them); else TypeError."""
    kind = type(value)
    if kind is int or kind is str or (kind is tuple and all(type(v) is int for v in value)):
        return value
    raise TypeError


def is_channels_last(x: torch.Tensor) -> bool:
    """True when x is stored NHWC (and not also plainly NCHW-contiguous)."""
    return (not x.is_contiguous()) and x.is_contiguous(memory_format=torch.channels_last)
