"""Robust-ResNet models ("Can CNNs Be More Robust Than Transformers?") built on dwconv.FastDWConv.

Importing this package registers the models in timm's registry when timm is installed.
"""
from .checkpoint import CheckpointMismatchError, load_checkpoint, save_checkpoint
from .robust_resnet import (
    BLOCK_TYPES,
    NORM_ACT_LAYOUTS,
    RobustResNet,
    create_model,
    default_cfgs,
    list_models,
)

__all__ = [
    "BLOCK_TYPES", "NORM_ACT_LAYOUTS", "CheckpointMismatchError", "RobustResNet", "create_model",
    "default_cfgs", "list_models", "load_checkpoint", "save_checkpoint",
]
