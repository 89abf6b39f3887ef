"""Command-line helpers shared by the benchmark scripts."""
from __future__ import annotations

import argparse
import os
from typing import Iterable, List, Optional

import torch

import dwconv

from . import conv_ops, roofline

__all__ = ["split_choices", "default_backends", "resolve_device", "DTYPE_LAYOUT_CASES", "SINGLE_OPS"]


# "<dtype>-<layout>" pairs the per-case scripts (triton_tiles.py, profile_ops.py) accept, and their ops.
DTYPE_LAYOUT_CASES = [f"{d}-{layout}" for d in conv_ops.DTYPES for layout in ("nchw", "nhwc")]
SINGLE_OPS = tuple(op for op in roofline.OPS if op != "fwd+bwd")


def split_choices(text: str, allowed: Iterable[str], flag: str, parser: argparse.ArgumentParser) -> List[str]:
    """A comma-separated option value as a list, every item checked against `allowed`."""
    allowed = list(allowed)
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        parser.error(f"{flag}: unknown {bad}; choose from {', '.join(allowed)}")
    return items


def default_backends(device: torch.device) -> List[str]:
    """Every dwconv backend that can run on `device`, except the reference 'torch' (PyTorch itself) and
    Triton's interpreter (TRITON_INTERPRET=1: a correctness tool, not a fast path)."""
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    return [name for name, reason in dwconv.available_backends(device).items()
            if reason is None and name != "torch" and not (name == "triton" and interpreted)]


def resolve_device(name: Optional[str], parser: argparse.ArgumentParser) -> torch.device:
    """--device: cuda when available unless told otherwise."""
    device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    return device


def run_with_cudnn_setting(run, args: argparse.Namespace, argv: List[str]):
    """run(args, argv) with torch.backends.cudnn.benchmark set as the arguments ask, restored afterwards."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    try:
        return run(args, argv)
    finally:
        torch.backends.cudnn.benchmark = saved
