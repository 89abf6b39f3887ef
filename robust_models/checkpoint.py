"""Checkpoint files: the official train-state format (weights under "model") and bare state dicts.

Reading accepts a train state with weights under "model", "state_dict" or "model_ema" (looked up in that
order unless `key` says which), or a bare state dict; DistributedDataParallel ("module.") and
torch.compile ("_orig_mod.") prefixes are removed. Loading reports every missing, unexpected and
mis-shaped key at once.
"""
from __future__ import annotations

import os
import pickle
from typing import Any, Dict, Iterable, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn

__all__ = ["CheckpointMismatchError", "LoadResult", "read_state_dict", "strip_wrapper_prefixes",
           "load_state_dict_checked", "load_checkpoint", "save_checkpoint"]

WEIGHT_KEYS = ("model", "state_dict", "model_ema")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointMismatchError(RuntimeError):
    """A checkpoint's keys or shapes do not match the model."""


class LoadResult(NamedTuple):
    missing_keys: Tuple[str, ...]
    unexpected_keys: Tuple[str, ...]


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def read_state_dict(path, key: Optional[str] = None, weights_only: bool = True) -> Dict[str, torch.Tensor]:
    """The weights stored in a checkpoint file, on the CPU.

    weights_only=True refuses pickled Python objects other than tensors and plain containers; pass
    False only for a file you trust (a train state that also pickled, e.g., an argparse Namespace).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as err:
        raise RuntimeError(
            f"{path} holds Python objects besides tensors; if you trust the file, load it with "
            f"weights_only=False ({err})") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a dict (got {type(obj).__name__})")
    if key is not None:
        if key not in obj:
            raise KeyError(f"{path} has no {key!r} entry; top-level keys: {sorted(map(str, obj))}")
        state_dict = obj[key]
    elif _is_state_dict(obj):
        state_dict = obj
    else:
        found = [k for k in WEIGHT_KEYS if k in obj]
        if not found:
            raise ValueError(
                f"{path} is neither a state dict nor a train state with weights under one of {WEIGHT_KEYS}; "
                f"top-level keys: {sorted(map(str, obj))}")
        key = found[0]
        state_dict = obj[key]
    if not _is_state_dict(state_dict):
        raise ValueError(f"{path}: entry {key!r} is not a state dict of tensors")
    return dict(state_dict)


def strip_wrapper_prefixes(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Remove the "module." (DDP) and "_orig_mod." (torch.compile) prefixes wrappers add to every key."""
    out = {}
    for name, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _WRAPPER_PREFIXES:
                if name.startswith(prefix):
                    name, stripped = name[len(prefix):], True
        out[name] = value
    return out


def _shown(keys: Iterable[str], limit: int = 20) -> str:
    keys = list(keys)
    text = ", ".join(keys[:limit])
    return text + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_state_dict_checked(model: nn.Module, state_dict: Dict[str, torch.Tensor], strict: bool = True,
                            ignore_missing: Iterable[str] = (), source: str = "checkpoint") -> LoadResult:
    """model.load_state_dict with one error that lists every missing, unexpected and mis-shaped key.

    Shape mismatches always raise; missing / unexpected keys raise when strict. Keys in
    ignore_missing may be absent from state_dict.
    """
    expected = model.state_dict()
    ignored = set(ignore_missing)
    missing = tuple(k for k in expected if k not in state_dict and k not in ignored)
    unexpected = tuple(k for k in state_dict if k not in expected)
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                  for k, v in state_dict.items() if k in expected and v.shape != expected[k].shape]
    problems = []
    if strict and missing:
        problems.append(f"missing keys ({len(missing)}): {_shown(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_shown(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {_shown(mismatched)}")
    if problems:
        raise CheckpointMismatchError(
            f"{source} does not match {type(model).__name__}:\n  " + "\n  ".join(problems))
    model.load_state_dict(state_dict, strict=False)
    return LoadResult(missing, unexpected)


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside torch.compile / DistributedDataParallel wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def load_checkpoint(model: nn.Module, path, strict: bool = True, key: Optional[str] = None,
                    weights_only: bool = True) -> LoadResult:
    """Load a checkpoint file (official train state or bare state dict) into model."""
    state_dict = strip_wrapper_prefixes(read_state_dict(path, key=key, weights_only=weights_only))
    return load_state_dict_checked(_unwrap(model), state_dict, strict=strict, source=str(path))


def save_checkpoint(model: nn.Module, path, /, **extra) -> None:
    """Write the official train-state format: {"model": state_dict, **extra} (e.g. epoch, optimizer)."""
    if "model" in extra:
        raise ValueError("'model' is reserved for the model's weights")
    torch.save({"model": _unwrap(model).state_dict(), **extra}, path)
