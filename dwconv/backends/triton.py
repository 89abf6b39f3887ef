"""The "triton" backend: the kernels of `dwconv/triton/` (on CUDA, or in Triton's interpreter on the CPU).

Plans "triton:<family>:<variant>": families "plane" (fp16/bf16 small-map GEMM, forward and dgrad), "rows"
(row-streaming) and "direct"; a variant names one tile of the family's kernel for the op, as its tile module
writes it (dwconv/triton/*_tiles.py, e.g. "triton:rows:N2,C1,W64,R14,H1,WIN8,w2" for a forward). The default
variant "" is autotuned among the family's candidates on a GPU when the triton_autotune setting is on, else
the first candidate (the heuristic tile).
"""
from __future__ import annotations

import contextlib
from typing import List, Optional

import torch

from .._conv_args import ConvArgs, is_channels_last
from .. import config
from .base import Backend, cuda_device_problem, preferred_first

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_MIN_CAPABILITY = (7, 5)


def _import_error() -> Optional[str]:
    try:
        import triton  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising anything else
        return f"triton is not importable: {exc}"
    return None


def _on_device(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it t's device for the call."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


class TritonBackend(Backend):
    name = "triton"

    def unavailable_reason(self, device: torch.device) -> Optional[str]:
        device = torch.device(device)
        error = _import_error()
        if error is not None:
            return error
        from ..triton.common import INTERPRET
        if device.type == "cuda":
            problem = cuda_device_problem(device)
            if problem is not None:
                return problem
            if torch.cuda.get_device_capability(device) < _MIN_CAPABILITY:
                return (f"Triton needs a GPU of compute capability {_MIN_CAPABILITY[0]}.{_MIN_CAPABILITY[1]} "
                        f"or newer, {torch.cuda.get_device_name(device)} has "
                        "{}.{}".format(*torch.cuda.get_device_capability(device)))
            return None
        if device.type == "cpu":
            if INTERPRET:
                return None
            return ("the triton backend runs on CPU tensors only in Triton's interpreter "
                    "(set TRITON_INTERPRET=1 before triton is imported)")
        return f"the triton backend does not run on {device.type} devices"

    def unsupported_reason(self, x: torch.Tensor, args: ConvArgs) -> Optional[str]:
        if x.dtype not in _SUPPORTED_DTYPES:
            return f"the triton backend does not support dtype {x.dtype}"
        if (x.dtype == torch.bfloat16 and x.device.type == "cuda"
                and torch.cuda.get_device_capability(x.device) < (8, 0)):
            return "bfloat16 needs a GPU of compute capability 8.0 or newer"
        return None

    def families(self, op, x, args):
        from ..triton import plane, rows, rows_wgrad
        if op == "wgrad":
            found = ("rows",) if rows_wgrad.applies(args) else ()
        else:
            found = ("plane",) if plane.applies(x.dtype, args) else ()
            found += ("rows",) if (rows.applies_forward(args) if op == "fwd" else rows.applies_dgrad(args)) else ()
        return preferred_first(found + ("direct",), config.get().triton_family)

    def variant_problem(self, plan, op, x, args):
        if not plan.variant:
            return None
        tiles = _tiles(plan.family, op)
        try:
            tile = tiles.FORMAT.parse(plan.variant)
        except ValueError as e:
            return str(e)
        return tiles.problem(tile, op, args, is_channels_last(x))

    def variants(self, family: str, op: str, x: torch.Tensor, args: ConvArgs) -> List[str]:
        """The variants of `family`'s candidate tiles for op on this call, the default first (what autotuning
        chooses among on a GPU)."""
        tiles = _tiles(family, op)
        cands = tiles.candidates_for(op, args, is_channels_last(x), x.element_size())
        return [tiles.FORMAT.format(tile) for tile in cands]

    def forward(self, x, weight, bias, args, plan):
        from ..triton import fwd, plane, rows
        kernels = {"plane": plane, "rows": rows, "direct": fwd}[plan.family]
        with _on_device(x):
            return kernels.forward(x, weight, bias, args, channels_last=is_channels_last(x), variant=plan.variant,
                                   autotune=_autotune(x))

    def dgrad(self, grad_out, weight, args, plan):
        from ..triton import dgrad, plane, rows
        kernels = {"plane": plane, "rows": rows, "direct": dgrad}[plan.family]
        with _on_device(grad_out):
            return kernels.dgrad(grad_out, weight, args, channels_last=is_channels_last(grad_out),
                                 variant=plan.variant, autotune=_autotune(grad_out))

    def wgrad(self, grad_out, x, args, plan):
        from ..triton import rows_wgrad, wgrad
        kernels = {"rows": rows_wgrad, "direct": wgrad}[plan.family]
        with _on_device(x):
            return kernels.wgrad(grad_out, x, args, channels_last=is_channels_last(x),
                                 deterministic=torch.are_deterministic_algorithms_enabled(), variant=plan.variant,
                                 autotune=_autotune(x))


def _autotune(t: torch.Tensor) -> bool:
    """Whether a default variant is autotuned: on a GPU with the triton_autotune setting on (the interpreter runs
    the default tile)."""
    return t.device.type == "cuda" and config.get().triton_autotune


def _tiles(family: str, op: str):
    """The tile module of family's kernel for op: its FORMAT, candidates_for, choose and problem."""
    from ..triton import direct_tiles, plane_tiles, rows_tiles, rows_wgrad_tiles
    if family == "rows":
        return rows_wgrad_tiles if op == "wgrad" else rows_tiles
    return {"direct": direct_tiles, "plane": plane_tiles}[family]
