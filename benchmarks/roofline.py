"""Machine rates measured in the same run, and the ideal work of each depthwise-conv op.

GPU: DRAM bandwidth (a large device copy) and the fp32 FMA rate (a Triton kernel of independent FMA
chains); an op's lower-bound time is max(ideal bytes / bandwidth, FLOPs / FMA rate), the bound of
docs/benchmarking.md, "Roofline" (bf16/fp16 inputs accumulate in fp32, so they share the FFMA ceiling).
CPU: the sgemm rate (torch.mm in fp32 on the threads torch uses); an op's fraction of the roofline is its
FLOP rate over that.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from .shapes import DWShape
from .timing import Timer, interleaved

__all__ = ["OPS", "op_flops", "op_bytes", "measure_sgemm_gflops", "measure_gpu_rates", "lower_bound_seconds"]

OPS = ("fwd", "dgrad", "wgrad", "fwd+bwd")


def op_flops(op: str, shape: DWShape) -> int:
    """FLOPs (2 per multiply-add, every tap counted) of one op; fwd+bwd = fwd + dgrad + wgrad."""
    per_pass = 2 * shape.macs
    return 3 * per_pass if op == "fwd+bwd" else per_pass


def op_bytes(op: str, shape: DWShape, element_size: int) -> int:
    """Ideal DRAM traffic: every tensor read or written once (halos and weights from cache)."""
    ho, wo = shape.out_hw
    x = shape.n * shape.c * shape.h * shape.w
    y = shape.n * shape.out_channels * ho * wo
    w = shape.out_channels * shape.k * shape.k
    elements = {"fwd": x + y + w + shape.out_channels, "dgrad": y + x + w, "wgrad": x + y + w}
    if op == "fwd+bwd":
        return sum(elements.values()) * element_size
    return elements[op] * element_size


def measure_sgemm_gflops(device: torch.device, n: int = 2048, reps: int = 5) -> float:
    """fp32 matrix-multiply rate (GFLOP/s) of torch.mm on `device` with its current thread count."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    out = torch.empty(n, n, device=device)
    stats = interleaved({"sgemm": lambda: torch.mm(a, b, out=out)}, Timer(device), warmup=1, reps=reps)
    return 2 * n**3 / stats["sgemm"].median / 1e9


def _measure_bandwidth_gbs(device: torch.device, mib: int, reps: int) -> float:
    src = torch.empty(mib * 2**20 // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    stats = interleaved({"copy": lambda: dst.copy_(src)}, Timer(device), warmup=2, reps=reps)
    return 2 * src.numel() * 4 / stats["copy"].median / 1e9


def _measure_fma_tflops(device: torch.device, reps: int) -> Optional[float]:
    try:
        from ._fma_kernel import fma_flops, fma_output_elements, launch_fma_kernel
    except ImportError:
        return None
    out = torch.empty(fma_output_elements(device), device=device)
    stats = interleaved({"fma": lambda: launch_fma_kernel(out)}, Timer(device), warmup=2, reps=reps)
    return fma_flops(out) / stats["fma"].median / 1e12


def measure_gpu_rates(device: torch.device, reps: int = 10, copy_mib: int = 1024) -> Dict[str, Optional[float]]:
    """{"bandwidth_gbs": DRAM copy bandwidth, "fma_tflops": fp32 FMA rate (None without Triton)}."""
    return {"bandwidth_gbs": _measure_bandwidth_gbs(device, copy_mib, reps),
            "fma_tflops": _measure_fma_tflops(device, reps)}


def lower_bound_seconds(op: str, shape: DWShape, element_size: int, bandwidth_gbs: float,
                        fma_tflops: Optional[float]) -> float:
    """max(memory time, FMA time) for the op (fwd+bwd: the sum over its three ops, each its own pass);
    the memory time alone when the FMA rate is unknown."""
    if op == "fwd+bwd":
        return sum(lower_bound_seconds(o, shape, element_size, bandwidth_gbs, fma_tflops)
                   for o in ("fwd", "dgrad", "wgrad"))
    memory = op_bytes(op, shape, element_size) / (bandwidth_gbs * 1e9)
    if fma_tflops is None:
        return memory
    return max(memory, op_flops(op, shape) / (fma_tflops * 1e12))
