"""The training checkpoint: official train-state format (weights under "model") plus what a resume needs.

Besides the weights a checkpoint holds the optimizer, LR scheduler, fp16 grad scaler and EMA weights
("model_ema"), the position in the run (epoch, updates done in it, total updates) and the run's
configuration. No generator states are needed: every random draw derives from (seed, rank, epoch,
position) (see seeding.py). Everything is tensors and plain containers, so the file loads with
torch.load(weights_only=True).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterable, Mapping, Optional

import torch

__all__ = ["Progress", "save_train_state", "load_train_state", "ResumeMismatchError"]

FORMAT_VERSION = 1


class ResumeMismatchError(ValueError):
    """The run being resumed was configured differently, so it could not continue exactly."""


@dataclass
class Progress:
    epoch: int = 0  # the epoch in progress
    update_in_epoch: int = 0  # optimizer updates already done in that epoch
    num_updates: int = 0  # optimizer updates since the start of the run
    best_top1: Optional[float] = None


def save_train_state(path: str, model: torch.nn.Module, *, optimizer, lr_scheduler, scaler, model_ema,
                     progress: Progress, config: Mapping[str, Any]) -> None:
    """Write atomically (a temporary file renamed over path), so an interrupted save leaves the old file."""
    from robust_models import save_checkpoint

    extra: Dict[str, Any] = dict(
        version=FORMAT_VERSION,
        arch=config.get("model"),
        progress=asdict(progress),
        optimizer=optimizer.state_dict(),
        lr_scheduler=lr_scheduler.state_dict(),
        config=dict(config),
    )
    if scaler is not None:
        extra["scaler"] = scaler.state_dict()
    if model_ema is not None:
        extra["model_ema"] = model_ema.module.state_dict()
    tmp = f"{path}.tmp"
    save_checkpoint(model, tmp, **extra)
    os.replace(tmp, path)


def load_train_state(path: str, model: torch.nn.Module, *, optimizer, lr_scheduler, scaler, model_ema,
                     config: Mapping[str, Any], invariant_keys: Iterable[str]) -> Progress:
    """Restore everything save_train_state wrote; the config entries in invariant_keys must match."""
    from robust_models.checkpoint import load_state_dict_checked, strip_wrapper_prefixes

    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint to resume not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("version") != FORMAT_VERSION or "progress" not in state:
        raise ValueError(f"{path} is not a train state written by robust_models.train "
                         f"(format version {FORMAT_VERSION}); to start from its weights use --pretrained")
    saved = state["config"]
    differences = [f"{k}: checkpoint {saved.get(k)!r}, now {config.get(k)!r}"
                   for k in invariant_keys if saved.get(k) != config.get(k)]
    if differences:
        raise ResumeMismatchError(f"{path} was trained with other settings; a resumed run must use the "
                                  "same ones:\n  " + "\n  ".join(differences))
    for name, holder, present in (("scaler", scaler, "scaler" in state), ("model_ema", model_ema, "model_ema" in state)):
        if (holder is not None) != present:
            raise ResumeMismatchError(f"{path} {'has' if present else 'has no'} {name} state but this run "
                                      f"{'does not use' if holder is None else 'uses'} one")
    load_state_dict_checked(model, strip_wrapper_prefixes(state["model"]), strict=True, source=path)
    optimizer.load_state_dict(state["optimizer"])
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    if scaler is not None:
        scaler.load_state_dict(state["scaler"])
    if model_ema is not None:
        load_state_dict_checked(model_ema.module, state["model_ema"], strict=True, source=f"{path} (model_ema)")
    return Progress(**state["progress"])
