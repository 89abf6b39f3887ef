"""Depthwise-conv shape sets of the kernel benchmark.

- robust_resnet: every distinct depthwise layer of the four Robust-ResNet models at 224x224
  (docs/robust_resnet.md; tests/test_benchmarks.py checks this list against the models).
- convnext: ConvNeXt's 56x56, 28x28, 14x14 and 7x7 stages at K=7.
- replknet: RepLKNet-like 32x32 maps with K = 11 to 31.
- goals: the shapes the GPU issues name (batch 128 Robust-ResNet layers: C384 14x14 K11, C768 7x7 K11,
  C1536 14x14 K7, C768 14x14 K11 stride 2; ConvNeXt 56x56 K7 and RepLKNet-like 32x32 K11 at batch 64).
- models: every Robust-ResNet layer and ConvNeXt's stages (what a GPU's dispatch table is measured on).
- target: the CPU backend's acceptance set (Robust-ResNet's C=384 14x14 K11, C=768 7x7 K11,
  C=1536 14x14 K7 at N=32 and ConvNeXt's 56x56 K7 at N=16): the default on CPU.
- dispatch: what the CPU dispatch table is measured on (benchmarks/make_dispatch_table.py): every Robust-ResNet
  layer at batch 2 (the main job's) and 32, ConvNeXt's stages at batch 2 and 16.
- smoke: tiny shapes for the test suite.
Batch sizes are the CPU ones; on a GPU they are multiplied by GPU_BATCH_FACTOR (N=128 for
Robust-ResNet: the per-GPU training batch).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, List, Tuple

__all__ = ["DWShape", "SHAPE_SETS", "GPU_BATCH_FACTOR", "shape_set", "default_shape_set"]

GPU_BATCH_FACTOR = 4


@dataclass(frozen=True)
class DWShape:
    """One depthwise conv: input (n, c, h, w), square kernel k, padding k//2, stride, channel multiplier."""

    family: str
    n: int
    c: int
    h: int
    w: int
    k: int
    stride: int = 1
    multiplier: int = 1

    @property
    def padding(self) -> int:
        return self.k // 2

    @property
    def out_channels(self) -> int:
        return self.c * self.multiplier

    @property
    def out_hw(self) -> Tuple[int, int]:
        p, s, k = self.padding, self.stride, self.k
        return (self.h + 2 * p - k) // s + 1, (self.w + 2 * p - k) // s + 1

    @property
    def macs(self) -> int:
        """Multiply-adds of the forward with every tap counted (padding taps too)."""
        ho, wo = self.out_hw
        return self.n * self.out_channels * ho * wo * self.k * self.k

    @property
    def name(self) -> str:
        extra = (f" s{self.stride}" if self.stride != 1 else "") + (f" m{self.multiplier}" if self.multiplier != 1 else "")
        return f"{self.family} N{self.n} C{self.c} {self.h}x{self.w} K{self.k}{extra}"

    def as_dict(self) -> Dict[str, object]:
        return {"name": self.name, "family": self.family, "n": self.n, "c": self.c, "h": self.h, "w": self.w,
                "k": self.k, "stride": self.stride, "padding": self.padding, "multiplier": self.multiplier}


# (channels in, map size, kernel, stride, multiplier) of every distinct Robust-ResNet depthwise layer.
ROBUST_RESNET_LAYERS = (
    (96, 14, 11, 1, 1), (96, 14, 11, 1, 2), (192, 14, 11, 1, 1), (192, 14, 11, 1, 2),
    (384, 14, 7, 1, 1), (384, 14, 11, 1, 1), (384, 14, 11, 2, 1), (384, 14, 11, 2, 2),
    (768, 7, 11, 1, 1), (768, 14, 7, 1, 1), (768, 14, 11, 2, 1), (1536, 14, 7, 1, 1),
    (3072, 7, 7, 1, 1), (3072, 14, 7, 2, 1),
)
ROBUST_RESNET = [DWShape("robust_resnet", 32, c, hw, hw, k, s, m) for c, hw, k, s, m in ROBUST_RESNET_LAYERS]
CONVNEXT = [DWShape("convnext", 16, c, hw, hw, 7) for c, hw in ((96, 56), (192, 28), (384, 14), (768, 7))]
REPLKNET = [DWShape("replknet", 16, 384, 32, 32, k) for k in (11, 15, 19, 23, 27, 31)]
TARGET = [DWShape("robust_resnet", 32, 384, 14, 14, 11), DWShape("robust_resnet", 32, 768, 7, 7, 11),
          DWShape("robust_resnet", 32, 1536, 14, 14, 7), DWShape("convnext", 16, 96, 56, 56, 7)]
GOALS = [DWShape("robust_resnet", 32, 384, 14, 14, 11), DWShape("robust_resnet", 32, 768, 7, 7, 11),
         DWShape("robust_resnet", 32, 1536, 14, 14, 7), DWShape("robust_resnet", 32, 768, 14, 14, 11, stride=2),
         DWShape("convnext", 16, 96, 56, 56, 7), DWShape("replknet", 16, 384, 32, 32, 11)]
SMOKE = [DWShape("smoke", 2, 8, 10, 10, 7), DWShape("smoke", 2, 4, 9, 9, 5, stride=2, multiplier=2)]
DISPATCH = ([replace(s, n=2) for s in ROBUST_RESNET] + ROBUST_RESNET + [replace(s, n=2) for s in CONVNEXT] + CONVNEXT)

SHAPE_SETS: Dict[str, List[DWShape]] = {
    "target": TARGET,
    "goals": GOALS,
    "robust_resnet": ROBUST_RESNET,
    "convnext": CONVNEXT,
    "models": ROBUST_RESNET + CONVNEXT,
    "replknet": REPLKNET,
    "all": ROBUST_RESNET + CONVNEXT + REPLKNET,
    "dispatch": DISPATCH,
    "smoke": SMOKE,
}


def default_shape_set(device_type: str) -> str:
    return "all" if device_type == "cuda" else "target"


def shape_set(name: str, device_type: str) -> List[DWShape]:
    """The named set, batch sizes scaled for the device (smoke shapes are never scaled)."""
    if name not in SHAPE_SETS:
        raise ValueError(f"unknown shape set {name!r}; choose one of {sorted(SHAPE_SETS)}")
    factor = GPU_BATCH_FACTOR if device_type == "cuda" and name != "smoke" else 1
    return [replace(s, n=s.n * factor) for s in SHAPE_SETS[name]]
