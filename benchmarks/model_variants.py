"""The same Robust-ResNet with its depthwise convs on PyTorch's own nn.Conv2d or on a dwconv backend."""
from __future__ import annotations

import copy
from typing import Dict, List

import torch.nn as nn

import dwconv
import robust_models

__all__ = ["PLAIN", "to_plain_conv2d", "build_variants"]

PLAIN = "nn.Conv2d"


def to_plain_conv2d(model: nn.Module) -> nn.Module:
    """Replace every dwconv.FastDWConv in `model` (in place) by the nn.Conv2d it extends, sharing its
    parameters: the model as the official code runs it (PyTorch's own depthwise path)."""
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if isinstance(child, dwconv.FastDWConv):
                plain = nn.Conv2d.__new__(nn.Conv2d)
                plain.__dict__.update({k: (v.copy() if isinstance(v, dict) else v)
                                       for k, v in child.__dict__.items() if k != "backend"})
                parent._modules[name] = plain
    return model


def build_variants(model_name: str, backends: List[str], **overrides) -> Dict[str, nn.Module]:
    """{"nn.Conv2d": plain model, "dwconv-<backend>": dwconv.convert(copy, backend)}, same initial weights."""
    plain = to_plain_conv2d(robust_models.create_model(model_name, **overrides))
    variants = {PLAIN: plain}
    for backend in backends:
        variants[f"dwconv-{backend}"] = dwconv.convert(copy.deepcopy(plain), backend=backend)
    return variants
