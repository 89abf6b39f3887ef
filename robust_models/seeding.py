"""Derived seeds: every random draw of a training run is a function of (seed, rank, epoch, position).

Seeding each sample's augmentation and each step's mixup / drop path from such a key, instead of
carrying generator states along, makes a run resumable bit-exactly from any step and independent of
the number of data-loader workers.
"""
from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["derived_seed", "seed_all"]


def derived_seed(*keys: int) -> int:
    """A well-mixed 32-bit seed from non-negative integer keys (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def seed_all(seed: int) -> None:
    """Seed Python's, numpy's and torch's (CPU and every CUDA device) global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
