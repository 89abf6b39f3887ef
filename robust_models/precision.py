"""Mixed-precision choices shared by train.py and validate.py."""
from __future__ import annotations

import contextlib
from typing import Optional

import torch

__all__ = ["AMP_CHOICES", "amp_dtype", "autocast"]

AMP_CHOICES = ("none", "bf16", "fp16")


def amp_dtype(name: str) -> Optional[torch.dtype]:
    """"none" -> None (full precision), "bf16" -> torch.bfloat16, "fp16" -> torch.float16."""
    dtypes = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"amp must be one of {AMP_CHOICES}, got {name!r}")
    return dtypes[name]


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """torch.autocast on the device's type in dtype, or a no-op context for full precision."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
