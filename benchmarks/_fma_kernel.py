"""A Triton kernel that only does fp32 FMAs (8 independent chains per element): the GPU's FFMA rate."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_ITERS = 512
_CHAINS = 8
_BLOCK = 1024


@triton.jit
def _fma_chains_kernel(out_ptr, a, b, ITERS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x0 = offs.to(tl.float32) * 1e-7
    x1 = x0 + 1.0
    x2 = x0 + 2.0
    x3 = x0 + 3.0
    x4 = x0 + 4.0
    x5 = x0 + 5.0
    x6 = x0 + 6.0
    x7 = x0 + 7.0
    for _ in range(ITERS):
        x0 = x0 * a + b
        x1 = x1 * a + b
        x2 = x2 * a + b
        x3 = x3 * a + b
        x4 = x4 * a + b
        x5 = x5 * a + b
        x6 = x6 * a + b
        x7 = x7 * a + b
    tl.store(out_ptr + offs, ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7)))


def fma_output_elements(device: torch.device) -> int:
    """Output size that fills the GPU: 64 blocks of 1024 per multiprocessor."""
    device = torch.device(device)
    blocks = 64 * torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 2
    return blocks * _BLOCK


def fma_flops(out: torch.Tensor) -> int:
    """FLOPs (2 per FMA) of one launch_fma_kernel(out)."""
    return 2 * _CHAINS * _ITERS * out.numel()


def launch_fma_kernel(out: torch.Tensor) -> None:
    """Fill `out` (fp32, a multiple of 1024 elements) with the result of the FMA chains."""
    _fma_chains_kernel[(out.numel() // _BLOCK,)](out, 0.999, 1e-3, ITERS=_ITERS, BLOCK=_BLOCK, num_warps=8)
