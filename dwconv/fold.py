"""fold_batchnorm(model): fold eval-mode BatchNorms into the convolutions whose output only they read.

An eval-mode BatchNorm computes y = (x - mean) * gamma / sqrt(var + eps) + beta with its running statistics,
a per-channel affine map; applied to a convolution's output channel o it equals the same convolution with
weight[o] scaled by gamma[o] / sqrt(var[o] + eps) and bias (bias[o] - mean[o]) * that scale + beta[o].
Padding acts on the conv's input, so this holds for every padding mode; a BN *before* a conv does not fold
exactly (zero padding would not see the BN's shift) and is never touched.

A pair is folded only when the conv's output feeds that BN and nothing else. That is read from the
model's torch.fx graph (convolutions and BatchNorms as leaves, traced under no_grad as inference runs
it); for a module FX cannot trace, from the modules inside it that it can, and from consecutive entries of
plain nn.Sequential containers. Pairs with hooks, parametrizations, shared modules or shared weights are
left alone.
"""
from __future__ import annotations

import warnings
from collections import Counter
from typing import List, Tuple

import torch
import torch.fx as fx
import torch.nn as nn
from torch.nn.utils import parametrize

from .module import FastDWConv

__all__ = ["fold_batchnorm", "find_batchnorm_folds"]

_BATCHNORM_TYPES = (nn.BatchNorm2d, nn.SyncBatchNorm)
_ON_TRAINING = ("raise", "skip")


def _is_plain_conv(module: nn.Module) -> bool:
    """An nn.Conv2d (FastDWConv included) computing conv(x, weight) + bias: no forward of its own, no
    parametrized weight, not transposed (nn.Conv2d never is, but the attribute is public)."""
    if not isinstance(module, nn.Conv2d) or parametrize.is_parametrized(module) or module.transposed:
        return False
    return any(isinstance(module, base) and type(module).forward is base.forward
               and type(module)._conv_forward is base._conv_forward for base in (FastDWConv, nn.Conv2d))


def _is_batchnorm(module: nn.Module) -> bool:
    return type(module) in _BATCHNORM_TYPES


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


class _LeafTracer(fx.Tracer):
    """Convolutions and BatchNorms stay single call_module nodes (FastDWConv would be traced into)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.modules.batchnorm._BatchNorm)) or \
            super().is_leaf_module(m, module_qualified_name)


def _pairs_in_graph(root: nn.Module, graph: fx.Graph, prefix: str) -> List[Tuple[str, str]]:
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    # get_attr: a parameter read in forward, or the module itself passed to a function FX does not trace
    attrs = [n.target for n in graph.nodes if n.op == "get_attr"]

    def reached_otherwise(name: str) -> bool:
        return calls[name] != 1 or any(a == name or a.startswith(name + ".") for a in attrs)

    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not _is_batchnorm(root.get_submodule(node.target)):
            continue
        if len(node.args) != 1 or node.kwargs:
            continue
        src = node.args[0]
        if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        conv, bn = root.get_submodule(src.target), root.get_submodule(node.target)
        if not _is_plain_conv(conv) or reached_otherwise(src.target) or reached_otherwise(node.target):
            continue
        pairs.append((prefix + src.target, prefix + node.target))
    return pairs


def _pairs_in_sequential(seq: nn.Module, prefix: str) -> List[Tuple[str, str]]:
    if not isinstance(seq, nn.Sequential) or type(seq).forward is not nn.Sequential.forward:
        return []
    entries = [(name, m) for name, m in seq._modules.items() if m is not None]
    return [(prefix + c_name, prefix + b_name) for (c_name, conv), (b_name, bn) in zip(entries, entries[1:])
            if _is_plain_conv(conv) and _is_batchnorm(bn)]


def _candidate_pairs(module: nn.Module, prefix: str = "") -> List[Tuple[str, str]]:
    try:
        with torch.no_grad():
            graph = _LeafTracer().trace(module)
    except Exception:  # any failure to trace: look inside instead
        pairs = _pairs_in_sequential(module, prefix)
        for name, child in module.named_children():
            pairs += _candidate_pairs(child, f"{prefix}{name}.")
        return pairs
    return _pairs_in_graph(module, graph, prefix)


def find_batchnorm_folds(model: nn.Module) -> List[Tuple[str, str]]:
    """(conv name, BatchNorm name) of every pair fold_batchnorm may fold: the conv's output feeds only
    that BN, neither module is hooked or reached another way, and the conv's parameters are its own (a
    conv registered under two names shares them). Training mode and running statistics are not
    considered here."""
    param_count = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    pairs = []
    for conv_name, bn_name in _candidate_pairs(model):
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        shared = any(param_count[id(p)] != 1 for p in conv.parameters(recurse=False))
        if shared or _has_hooks(conv) or _has_hooks(bn):
            continue
        if bn.num_features != conv.out_channels:
            continue
        pairs.append((conv_name, bn_name))
    return pairs


@torch.no_grad()
def _fold_into_conv(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """conv's weight and bias (created if absent) take on bn's running-statistics affine map, computed in
    float64 and stored in the conv's dtype, device and memory format (the same Parameter objects)."""
    f64 = dict(device="cpu", dtype=torch.float64)
    scale = torch.rsqrt(bn.running_var.to(**f64) + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.to(**f64)
    shift = -bn.running_mean.to(**f64) * scale
    if bn.bias is not None:
        shift = shift + bn.bias.to(**f64)
    weight = conv.weight
    bias = shift if conv.bias is None else conv.bias.to(**f64) * scale + shift
    weight.copy_(weight.to(**f64) * scale.reshape(-1, 1, 1, 1))
    if conv.bias is None:
        conv.bias = nn.Parameter(bias.to(device=weight.device, dtype=weight.dtype),
                                 requires_grad=weight.requires_grad)
    else:
        conv.bias.copy_(bias)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    model.get_submodule(parent_name)._modules[child] = new


def fold_batchnorm(model: nn.Module, *, on_training: str = "raise") -> nn.Module:
    """Fold every eval-mode BatchNorm2d that directly follows a convolution into it, in place.

    Depthwise convs (FastDWConv, or nn.Conv2d with groups == in_channels, any channel multiplier) and
    other nn.Conv2d alike; with or without bias, any padding_mode. A pair is folded only when the conv's
    output feeds that BatchNorm and nothing else (see find_batchnorm_folds); the conv's weight and bias
    (created when it had none) take on the BatchNorm's affine map (computed in float64), and the
    BatchNorm is replaced by nn.Identity. The model's output is unchanged up to rounding for any input;
    its state_dict loses the folded BNs' keys and gains a conv bias where there was none. Parameters keep their objects, device, dtype and layout.
    Calling it again changes nothing. Fold before torch.compile or wrapping in DDP.

    A BatchNorm without running statistics (track_running_stats=False) normalizes with batch statistics
    in eval mode too: it stays, with a warning. Folding is for inference: a model in training mode, or a
    foldable pair with a module in training mode, raises ValueError before anything changes; with
    on_training="skip" such a model is returned untouched and such pairs are left as they are.
    Returns `model`.
    """
    if on_training not in _ON_TRAINING:
        raise ValueError(f"on_training must be one of {_ON_TRAINING}, got {on_training!r}")
    if model.training:
        if on_training == "skip":
            return model
        raise ValueError("fold_batchnorm folds a model for inference: call model.eval() first (in training mode "
                         "BatchNorm normalizes with batch statistics and updates its running ones)")
    folds, training = [], []
    for conv_name, bn_name in find_batchnorm_folds(model):
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        if conv.training or bn.training:
            training.append(bn_name if bn.training else conv_name)
        elif bn.running_mean is None or bn.running_var is None:
            warnings.warn(f"fold_batchnorm: {bn_name} has no running statistics (track_running_stats=False): it "
                          f"normalizes with batch statistics and is not folded", stacklevel=2)
        else:
            folds.append((conv_name, bn_name, conv, bn))
    if training and on_training == "raise":
        raise ValueError(f"fold_batchnorm: {', '.join(training)} in training mode inside an eval-mode model; "
                         f"call model.eval(), or pass on_training='skip' to leave these pairs unfolded")
    for _, bn_name, conv, bn in folds:
        _fold_into_conv(conv, bn)
        _replace(model, bn_name, nn.Identity().train(bn.training))
    return model
