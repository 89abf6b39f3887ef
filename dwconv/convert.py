"""convert(model): swap every depthwise nn.Conv2d of a model for a FastDWConv, in place."""
from __future__ import annotations

import torch.nn as nn

from .backends import check_backend_name
from .module import FastDWConv


def is_depthwise_conv(module: nn.Module) -> bool:
    """Plain nn.Conv2d (not a subclass with its own forward) with groups == in_channels."""
    return type(module) is nn.Conv2d and module.groups == module.in_channels and module.in_channels > 0


def convert(model: nn.Module, *, backend: str = "auto") -> nn.Module:
    """Replace every depthwise nn.Conv2d in `model` by a FastDWConv sharing its parameters.

    Weights, device, dtype, train/eval mode, hooks and state_dict keys are kept; other modules are left
    alone. Existing FastDWConv modules get the requested backend. Returns `model` (a bare depthwise
    nn.Conv2d passed as `model` is returned converted).
    """
    check_backend_name(backend)
    if is_depthwise_conv(model):
        return FastDWConv.from_conv2d(model, backend)
    if isinstance(model, FastDWConv):
        model.backend = backend
        return model
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if is_depthwise_conv(child):
                parent._modules[name] = FastDWConv.from_conv2d(child, backend)
            elif isinstance(child, FastDWConv):
                child.backend = backend
    return model
