"""Robust-ResNet: the models of "Can CNNs Be More Robust Than Transformers?".

Paper: Zeyu Wang, Yutong Bai, Yuyin Zhou, Cihang Xie, ICLR 2023 (arXiv:2206.03452).
Architecture: docs/robust_resnet.md. State-dict names and shapes match the official
(timm-based) code, so its released checkpoints load with strict=True. Every depthwise conv is a
`dwconv.FastDWConv`.

Three changes turn a ResNet into a Robust-ResNet: a patchify stem (conv, kernel = stride = patch size),
large depthwise kernels, and one BatchNorm + one ReLU per block. The four block types (a)-(d) differ in
where the depthwise conv sits:
  (a) bottleneck        pwconv1 -> BN -> conv_dw -> pwconv2 -> (+ shortcut) -> ReLU       out = 4*dim
  (b) inverted          pwconv1 -> BN -> ReLU -> conv_dw -> pwconv2 -> (+ shortcut)       out = dim
  (c) dw moved up       conv_dw -> BN -> pwconv1 -> ReLU -> pwconv2 -> (+ shortcut)       out = dim
  (d) dw moved down     pwconv1 -> BN -> ReLU -> pwconv2 -> conv_dw -> (+ shortcut)       out = dim
With norm_act="full" (a ResNet-like layout, for comparison) every conv is followed by a BN, the first two
by a ReLU as well, and a ReLU follows the residual add.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from dwconv import FastDWConv

from . import checkpoint as ckpt

__all__ = ["RobustResNet", "create_model", "list_models", "BLOCK_TYPES", "NORM_ACT_LAYOUTS"]

BLOCK_TYPES = ("a", "b", "c", "d")
NORM_ACT_LAYOUTS = ("reduced", "full")
_OUTPUT_STRIDE = 32  # total downsampling of every configuration, as in the official code


class DropPath(nn.Module):
    """Stochastic depth: zero a sample's residual branch with probability drop_prob (training only)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
        return x * mask.div_(keep_prob)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def _norm(enabled: bool, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if enabled else nn.Identity()


def _act(enabled: bool) -> nn.Module:
    return nn.ReLU(inplace=True) if enabled else nn.Identity()


def _shortcut(in_chs: int, out_chs: int, stride: int) -> nn.Module:
    """Identity, or a 1x1 projection (stride s, bias) + BN when channels or resolution change."""
    if in_chs == out_chs and stride == 1:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, kernel_size=1, stride=stride, bias=True),
                         nn.BatchNorm2d(out_chs))


class _ResidualBlock(nn.Module):
    """What the four block types share: layer scale, drop path, shortcut and the post-add activation.

    Subclasses build `downsample`, `act_out` and their convs, and implement `residual(x)`.
    """

    def _init_residual(self, out_chs: int, drop_path: float, layer_scale_init_value: float) -> None:
        self.out_chs = out_chs
        self.gamma = (nn.Parameter(layer_scale_init_value * torch.ones(out_chs))
                      if layer_scale_init_value > 0 else None)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.residual(x)
        if self.gamma is not None:
            y = y * self.gamma.reshape(1, -1, 1, 1)
        y = self.drop_path(y) + self.downsample(x)
        return self.act_out(y)


class BottleneckDWBlock(_ResidualBlock):
    """(a) pwconv1 (in->dim) -> BN -> conv_dw (dim, stride s) -> pwconv2 (dim->4 dim) -> add -> ReLU."""

    def __init__(self, in_chs: int, dim: int, *, kernel_size: int, stride: int = 1, mlp_ratio: float = 4.0,
                 norm_act: str = "reduced", drop_path: float = 0.0, layer_scale_init_value: float = 0.0,
                 backend: str = "auto"):
        super().__init__()
        full = norm_act == "full"
        out_chs = int(mlp_ratio * dim)
        self.pwconv1 = nn.Conv2d(in_chs, dim, kernel_size=1, bias=True)
        self.norm1 = nn.BatchNorm2d(dim)
        self.act1 = _act(full)
        self.conv_dw = FastDWConv(dim, dim, kernel_size, stride=stride, padding=kernel_size // 2, groups=dim,
                                  bias=True, backend=backend)
        self.norm2 = _norm(full, dim)
        self.act2 = _act(full)
        self.pwconv2 = nn.Conv2d(dim, out_chs, kernel_size=1, bias=True)
        self.norm3 = _norm(full, out_chs)
        self.act_out = nn.ReLU(inplace=True)
        self._init_residual(out_chs, drop_path, layer_scale_init_value)
        self.downsample = _shortcut(in_chs, out_chs, stride)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.norm1(self.pwconv1(x)))
        x = self.act2(self.norm2(self.conv_dw(x)))
        return self.norm3(self.pwconv2(x))


class InvertedDWBlock(_ResidualBlock):
    """(b) pwconv1 (in->4 dim) -> BN -> ReLU -> conv_dw (4 dim, stride s) -> pwconv2 (4 dim->dim) -> add."""

    def __init__(self, in_chs: int, dim: int, *, kernel_size: int, stride: int = 1, mlp_ratio: float = 4.0,
                 norm_act: str = "reduced", drop_path: float = 0.0, layer_scale_init_value: float = 0.0,
                 backend: str = "auto"):
        super().__init__()
        full = norm_act == "full"
        hidden = int(mlp_ratio * dim)
        self.pwconv1 = nn.Conv2d(in_chs, hidden, kernel_size=1, bias=True)
        self.norm1 = nn.BatchNorm2d(hidden)
        self.act1 = nn.ReLU(inplace=True)
        self.conv_dw = FastDWConv(hidden, hidden, kernel_size, stride=stride, padding=kernel_size // 2,
                                  groups=hidden, bias=True, backend=backend)
        self.norm2 = _norm(full, hidden)
        self.act2 = _act(full)
        self.pwconv2 = nn.Conv2d(hidden, dim, kernel_size=1, bias=True)
        self.norm3 = _norm(full, dim)
        self.act_out = _act(full)
        self._init_residual(dim, drop_path, layer_scale_init_value)
        self.downsample = _shortcut(in_chs, dim, stride)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.norm1(self.pwconv1(x)))
        x = self.act2(self.norm2(self.conv_dw(x)))
        return self.norm3(self.pwconv2(x))


class UpInvertedDWBlock(_ResidualBlock):
    """(c) conv_dw (in->dim, stride s) -> BN -> pwconv1 (dim->4 dim) -> ReLU -> pwconv2 (4 dim->dim) -> add.

    When in < dim (first block of a stage) the depthwise conv has a channel multiplier dim / in:
    weight (dim, 1, k, k), groups = in.
    """

    def __init__(self, in_chs: int, dim: int, *, kernel_size: int, stride: int = 1, mlp_ratio: float = 4.0,
                 norm_act: str = "reduced", drop_path: float = 0.0, layer_scale_init_value: float = 0.0,
                 backend: str = "auto"):
        super().__init__()
        if dim % in_chs != 0:
            raise ValueError(
                f"block type 'c' puts the depthwise conv first, so its width ({dim}) must be a multiple of "
                f"the block's input width ({in_chs})")
        full = norm_act == "full"
        hidden = int(mlp_ratio * dim)
        self.conv_dw = FastDWConv(in_chs, dim, kernel_size, stride=stride, padding=kernel_size // 2,
                                  groups=in_chs, bias=True, backend=backend)
        self.norm1 = nn.BatchNorm2d(dim)
        self.act1 = _act(full)
        self.pwconv1 = nn.Conv2d(dim, hidden, kernel_size=1, bias=True)
        self.norm2 = _norm(full, hidden)
        self.act2 = nn.ReLU(inplace=True)
        self.pwconv2 = nn.Conv2d(hidden, dim, kernel_size=1, bias=True)
        self.norm3 = _norm(full, dim)
        self.act_out = _act(full)
        self._init_residual(dim, drop_path, layer_scale_init_value)
        self.downsample = _shortcut(in_chs, dim, stride)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.norm1(self.conv_dw(x)))
        x = self.act2(self.norm2(self.pwconv1(x)))
        return self.norm3(self.pwconv2(x))


class DownInvertedDWBlock(_ResidualBlock):
    """(d) pwconv1 (in->4 dim) -> BN -> ReLU -> pwconv2 (4 dim->dim) -> conv_dw (dim, stride s) -> add.

    The official checkpoints name its one BN `norm2`; the extra BNs of the full layout are norm3, norm4.
    """

    def __init__(self, in_chs: int, dim: int, *, kernel_size: int, stride: int = 1, mlp_ratio: float = 4.0,
                 norm_act: str = "reduced", drop_path: float = 0.0, layer_scale_init_value: float = 0.0,
                 backend: str = "auto"):
        super().__init__()
        full = norm_act == "full"
        hidden = int(mlp_ratio * dim)
        self.pwconv1 = nn.Conv2d(in_chs, hidden, kernel_size=1, bias=True)
        self.norm2 = nn.BatchNorm2d(hidden)
        self.act2 = nn.ReLU(inplace=True)
        self.pwconv2 = nn.Conv2d(hidden, dim, kernel_size=1, bias=True)
        self.norm3 = _norm(full, dim)
        self.act3 = _act(full)
        self.conv_dw = FastDWConv(dim, dim, kernel_size, stride=stride, padding=kernel_size // 2, groups=dim,
                                  bias=True, backend=backend)
        self.norm4 = _norm(full, dim)
        self.act_out = _act(full)
        self._init_residual(dim, drop_path, layer_scale_init_value)
        self.downsample = _shortcut(in_chs, dim, stride)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act2(self.norm2(self.pwconv1(x)))
        x = self.act3(self.norm3(self.pwconv2(x)))
        return self.norm4(self.conv_dw(x))


_BLOCKS = {"a": BottleneckDWBlock, "b": InvertedDWBlock, "c": UpInvertedDWBlock, "d": DownInvertedDWBlock}


class RobustResNetStage(nn.Module):
    """`depth` blocks of one type; the strided block (if any) is block `stride_block_idx`."""

    def __init__(self, block_cls, in_chs: int, dim: int, depth: int, *, stride: int, stride_block_idx: int,
                 drop_path_rates: Sequence[float], **block_kwargs):
        super().__init__()
        self.grad_checkpointing = False
        blocks = []
        for i in range(depth):
            block = block_cls(in_chs, dim, stride=stride if i == stride_block_idx else 1,
                              drop_path=drop_path_rates[i], **block_kwargs)
            blocks.append(block)
            in_chs = block.out_chs
        self.blocks = nn.Sequential(*blocks)
        self.out_chs = in_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and self.grad_checkpointing and torch.is_grad_enabled():
            for block in self.blocks:
                x = checkpoint(block, x, use_reentrant=False)
            return x
        return self.blocks(x)


class ClassifierHead(nn.Module):
    """Global average pool -> flatten -> dropout -> fc (no final norm). Keys: head.fc.*"""

    def __init__(self, in_features: int, num_classes: int, global_pool: str = "avg", drop_rate: float = 0.0):
        super().__init__()
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '' (no pooling), got {global_pool!r}")
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        if global_pool == "" and num_classes > 0:
            raise ValueError("global_pool='' (unpooled feature maps) needs num_classes=0")
        self.global_pool = global_pool
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        x = self.drop(x)
        return x if pre_logits else self.fc(x)


def _check_int_seq(value, name: str) -> Tuple[int, ...]:
    if (not isinstance(value, (tuple, list)) or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {value!r}")
    return tuple(value)


def _downsampling_stages(patch_size: int, num_stages: int) -> int:
    """How many stages halve the resolution so that stem + stages reach an output stride of 32."""
    if (not isinstance(patch_size, int) or isinstance(patch_size, bool) or patch_size <= 0
            or _OUTPUT_STRIDE % patch_size != 0):
        raise ValueError(f"patch_size must divide {_OUTPUT_STRIDE} (the paper uses 4, 8 or 16), got {patch_size!r}")
    count = int(math.log2(_OUTPUT_STRIDE // patch_size))
    if count > num_stages - 1:
        raise ValueError(
            f"patch_size {patch_size} needs {count} downsampling stages after the first, but the model has "
            f"only {num_stages} stages")
    return count


class RobustResNet(nn.Module):
    """Patchify stem -> stages of one block type -> pooled linear head.

    Args:
        block_type: "a" bottleneck, "b" inverted, "c" dw moved up, "d" dw moved down.
        depths, dims: blocks and width per stage (dims[0] is also the stem width).
        kernel_size: depthwise kernel (odd; the paper ablates 3..13).
        patch_size: stem kernel = stride. The last log2(32 / patch_size) stages each halve the resolution
            (stride 2 on the first block's depthwise conv; for block "d", on the last block of the stage
            before), so the output stride is always 32: patch 16 -> one downsampling stage, as released.
        norm_act: "reduced" (the paper's: one BN and one ReLU per block) or "full" (ResNet-like: BN after
            every conv, ReLU after the first two and after the residual add).
        layer_scale_init_value: > 0 adds a per-channel `gamma` on the residual branch (off in the releases).
        drop_path_rate: stochastic depth, linear from 0 to this over all blocks.
        backend: passed to every FastDWConv.
    """

    def __init__(self, block_type: str = "a", depths: Sequence[int] = (3, 4, 12, 3),
                 dims: Sequence[int] = (96, 192, 384, 768), kernel_size: int = 11, patch_size: int = 16,
                 norm_act: str = "reduced", in_chans: int = 3, num_classes: int = 1000, global_pool: str = "avg",
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, layer_scale_init_value: float = 0.0,
                 mlp_ratio: float = 4.0, backend: str = "auto"):
        super().__init__()
        if block_type not in _BLOCKS:
            raise ValueError(f"block_type must be one of {BLOCK_TYPES}, got {block_type!r}")
        if norm_act not in NORM_ACT_LAYOUTS:
            raise ValueError(f"norm_act must be one of {NORM_ACT_LAYOUTS}, got {norm_act!r}")
        depths = _check_int_seq(depths, "depths")
        dims = _check_int_seq(dims, "dims")
        if len(depths) != len(dims):
            raise ValueError(f"depths ({len(depths)} stages) and dims ({len(dims)} stages) must have the same length")
        if not isinstance(kernel_size, int) or isinstance(kernel_size, bool) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
        if not isinstance(in_chans, int) or in_chans < 1:
            raise ValueError(f"in_chans must be a positive int, got {in_chans!r}")
        if not 0.0 <= drop_path_rate < 1.0 or not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate and drop_path_rate must be in [0, 1), got {drop_rate}, {drop_path_rate}")
        if layer_scale_init_value < 0:
            raise ValueError(f"layer_scale_init_value must be >= 0, got {layer_scale_init_value}")
        if not mlp_ratio > 0 or int(mlp_ratio * min(dims)) < 1:
            raise ValueError(f"mlp_ratio must make every expanded width >= 1, got {mlp_ratio!r}")
        num_stages = len(depths)
        num_down = _downsampling_stages(patch_size, num_stages)

        self.block_type = block_type
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.stem = nn.Conv2d(in_chans, dims[0], kernel_size=patch_size, stride=patch_size, bias=True)

        # A downsampling stage i halves the resolution at its first block; block type d does it at the
        # last block of stage i - 1 instead (released d: stage 2's last block, resolutions 14, 14, 14->7, 7).
        down_stages = set(range(num_stages - num_down, num_stages))
        if block_type == "d":
            down_stages = {i - 1 for i in down_stages}
        block_cls = _BLOCKS[block_type]
        drop_path_rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        block_kwargs = dict(kernel_size=kernel_size, mlp_ratio=mlp_ratio, norm_act=norm_act,
                            layer_scale_init_value=layer_scale_init_value, backend=backend)
        stages: List[nn.Module] = []
        self.feature_info: List[Dict[str, Any]] = []
        in_chs, reduction, first = dims[0], patch_size, 0
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            stride = 2 if i in down_stages else 1
            stage = RobustResNetStage(
                block_cls, in_chs, dim, depth, stride=stride,
                stride_block_idx=depth - 1 if block_type == "d" else 0,
                drop_path_rates=drop_path_rates[first:first + depth], **block_kwargs)
            stages.append(stage)
            in_chs, reduction, first = stage.out_chs, reduction * stride, first + depth
            self.feature_info.append(dict(num_chs=in_chs, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = in_chs
        self.head = ClassifierHead(in_chs, num_classes, global_pool, drop_rate)
        self.apply(_init_weights)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New head for num_classes (0: features only); global_pool None keeps the current pooling."""
        pool = self.head.global_pool if global_pool is None else global_pool
        self.num_classes = num_classes
        self.head = ClassifierHead(self.num_features, num_classes, pool, self.drop_rate)
        device, dtype = self.stem.weight.device, self.stem.weight.dtype
        self.head.to(device=device, dtype=dtype)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_weights(module: nn.Module) -> None:
    """Official init: convs kaiming-normal (fan_out, relu) with zero bias; BN weight 1, bias 0.

    The Linear head keeps PyTorch's default init, as in the official code.
    """
    if isinstance(module, nn.Conv2d):  # FastDWConv included
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Official checkpoints already use this model's names: only wrapper prefixes are removed."""
    return ckpt.strip_wrapper_prefixes(state_dict)


def _classifier_matches(state_dict: Dict[str, torch.Tensor], model: RobustResNet) -> bool:
    fc = model.get_classifier()
    ckpt_weight = state_dict.get("head.fc.weight")
    if not isinstance(fc, nn.Linear):
        return ckpt_weight is None
    return ckpt_weight is not None and tuple(ckpt_weight.shape) == tuple(fc.weight.shape)


def load_pretrained(model: RobustResNet, path) -> None:
    """Load a local checkpoint strictly; if its classifier has another number of classes than the
    model's, every other weight is loaded and the model's new head keeps its fresh init."""
    state_dict = checkpoint_filter_fn(ckpt.read_state_dict(path), model)
    ignore: Tuple[str, ...] = ()
    if not _classifier_matches(state_dict, model):
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("head.fc.")}
        ignore = tuple(k for k in model.state_dict() if k.startswith("head.fc."))
    ckpt.load_state_dict_checked(model, state_dict, strict=True, ignore_missing=ignore, source=str(path))


def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),  # ImageNet mean / std
        "first_conv": "stem", "classifier": "head.fc",
        "paper_ids": "arXiv:2206.03452", "paper_name": "Can CNNs Be More Robust Than Transformers?",
        **kwargs,
    }


# Released architectures: keyword arguments of RobustResNet.
released_args: Dict[str, Dict[str, Any]] = {
    "robust_resnet_dw_small": dict(block_type="a", depths=(3, 4, 12, 3), dims=(96, 192, 384, 768),
                                   kernel_size=11),
    "robust_resnet_inverted_dw_small": dict(block_type="b", depths=(3, 4, 14, 3), dims=(96, 192, 384, 768),
                                            kernel_size=7),
    "robust_resnet_up_inverted_dw_small": dict(block_type="c", depths=(3, 4, 14, 3), dims=(96, 192, 384, 768),
                                               kernel_size=11),
    "robust_resnet_down_inverted_dw_small": dict(block_type="d", depths=(3, 4, 15, 3),
                                                 dims=(96, 192, 384, 768), kernel_size=11),
}

default_cfgs: Dict[str, Dict[str, Any]] = {name: _cfg() for name in released_args}

_CONSTRUCTOR_ARGS = frozenset(inspect.signature(RobustResNet.__init__).parameters) - {"self"}


def list_models() -> List[str]:
    """Names accepted by create_model (and, with timm installed, by timm.create_model)."""
    return sorted(released_args)


def create_model(name: str, *, pretrained=None, num_classes: int = 1000, drop_path_rate: float = 0.0,
                 layer_scale_init_value: float = 0.0, backend: str = "auto", **overrides) -> RobustResNet:
    """Build a registered Robust-ResNet.

    pretrained: None (or False), or the path to a local checkpoint (official train state with weights
        under "model", "state_dict" or "model_ema", or a bare state dict), loaded strictly; a classifier
        for another number of classes is skipped.
    overrides: any RobustResNet argument (depths, dims, patch_size, kernel_size, block_type, norm_act,
        in_chans, drop_rate, global_pool, mlp_ratio).
    """
    if name not in released_args:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    unknown = set(overrides) - _CONSTRUCTOR_ARGS
    if unknown:
        raise TypeError(f"create_model got unknown arguments {sorted(unknown)}; "
                        f"accepted: {sorted(_CONSTRUCTOR_ARGS)}")
    kwargs = {**released_args[name], **overrides}
    model = RobustResNet(num_classes=num_classes, drop_path_rate=drop_path_rate,
                         layer_scale_init_value=layer_scale_init_value, backend=backend, **kwargs)
    cfg = dict(default_cfgs[name], architecture=name, num_classes=num_classes)
    model.pretrained_cfg = model.default_cfg = cfg
    if pretrained is True:
        raise TypeError("pretrained must be a path to a local checkpoint (there is no download location)")
    if pretrained is not None and pretrained is not False:
        load_pretrained(model, pretrained)
    return model


def _pretrained_file(pretrained_cfg, pretrained_cfg_overlay) -> Optional[str]:
    """The local file named by timm's pretrained_cfg (a PretrainedCfg, a dict or a tag) and its overlay."""
    path = None
    if pretrained_cfg is not None and not isinstance(pretrained_cfg, str):
        path = pretrained_cfg.get("file") if isinstance(pretrained_cfg, dict) else getattr(pretrained_cfg, "file", None)
    if pretrained_cfg_overlay:
        path = pretrained_cfg_overlay.get("file", path)
    return path


def _create_robust_resnet(variant: str, pretrained=False, *, pretrained_cfg=None, pretrained_cfg_overlay=None,
                          cache_dir=None, features_only: bool = False, out_indices=None, **kwargs):
    """timm-style entry: `pretrained` is a local path, or True with a `file` in the pretrained cfg."""
    path = None
    if isinstance(pretrained, (str, bytes)) or hasattr(pretrained, "__fspath__"):
        path = pretrained
    elif pretrained:
        path = _pretrained_file(pretrained_cfg, pretrained_cfg_overlay)
        if not path:
            raise ValueError(
                f"{variant} has no download location: pass a local checkpoint path as pretrained=, "
                f"pretrained_cfg_overlay=dict(file=path), or timm's checkpoint_path=")
    model = create_model(variant, pretrained=path, **kwargs)
    if pretrained_cfg_overlay:
        model.pretrained_cfg = model.default_cfg = {**model.pretrained_cfg, **pretrained_cfg_overlay}
    if features_only:
        try:
            from timm.models import FeatureListNet
        except ImportError as err:
            raise ImportError("features_only needs timm installed") from err
        indices = tuple(range(len(model.feature_info))) if out_indices is None else out_indices
        features = FeatureListNet(model, out_indices=indices, flatten_sequential=True)
        features.pretrained_cfg = features.default_cfg = model.pretrained_cfg
        return features
    return model


def _register(fn: Callable) -> Callable:
    """Register an entry point in timm's registry when timm is installed (timm stays optional)."""
    try:
        from timm.models import register_model
    except ImportError:
        return fn
    return register_model(fn)


@_register
def robust_resnet_dw_small(pretrained=False, **kwargs) -> RobustResNet:
    """Robust-ResNet-DW-Small: block (a), k=11. 38.6M params, 4.49 GFLOPs."""
    return _create_robust_resnet("robust_resnet_dw_small", pretrained, **kwargs)


@_register
def robust_resnet_inverted_dw_small(pretrained=False, **kwargs) -> RobustResNet:
    """Robust-ResNet-Inverted-DW-Small: block (b), k=7. 33.6M params, 4.59 GFLOPs."""
    return _create_robust_resnet("robust_resnet_inverted_dw_small", pretrained, **kwargs)


@_register
def robust_resnet_up_inverted_dw_small(pretrained=False, **kwargs) -> RobustResNet:
    """Robust-ResNet-Up-Inverted-DW-Small: block (c), k=11. 34.4M params, 4.43 GFLOPs."""
    return _create_robust_resnet("robust_resnet_up_inverted_dw_small", pretrained, **kwargs)


@_register
def robust_resnet_down_inverted_dw_small(pretrained=False, **kwargs) -> RobustResNet:
    """Robust-ResNet-Down-Inverted-DW-Small: block (d), k=11. 34.3M params, 4.55 GFLOPs."""
    return _create_robust_resnet("robust_resnet_down_inverted_dw_small", pretrained, **kwargs)
