"""fvcore support: count dwconv::depthwise_conv2d as fvcore counts the nn.Conv2d it replaces (N*Cout*Ho*Wo*Kh*Kw)."""
from __future__ import annotations

import importlib.util
import warnings


def _fvcore_dwconv_handle(inputs, outputs):
    """fvcore op handle (JIT values in, one multiply-add = one flop)."""
    from fvcore.nn.jit_handles import get_shape

    weight_shape = get_shape(inputs[1])
    out_shape = get_shape(outputs[0])
    count = weight_shape[2] * weight_shape[3]
    for s in out_shape:
        count *= s
    return count


def register_fvcore() -> bool:
    """Add dwconv's op to fvcore's default handles (so plain FlopCountAnalysis counts it)."""
    if importlib.util.find_spec("fvcore") is None:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flop_count = importlib.import_module("fvcore.nn.flop_count")
    flop_count._DEFAULT_SUPPORTED_OPS["dwconv::depthwise_conv2d"] = _fvcore_dwconv_handle
    return True
