"""The "triton" backend: the kernels of `dwconv/triton/` (on CUDA, or in Triton's interpreter on the CPU)."""
from __future__ import annotations

import contextlib
from typing import Optional

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

    def forward(self, x, weight, bias, args, plan):
        from ..triton import fwd, plane, rows
        kernels = {"plane": plane, "rows": rows, "direct": fwd}[plan.family]
        with _on_device(x):
            return kernels.forward(x, weight, bias, args, channels_last=is_channels_last(x))

    def dgrad(self, grad_out, weight, args, plan):
        from ..triton import dgrad, plane, rows
        kernels = {"plane": plane, "rows": rows, "direct": dgrad}[plan.family]
        with _on_device(grad_out):
            return kernels.dgrad(grad_out, weight, args, channels_last=is_channels_last(grad_out))

    def wgrad(self, grad_out, x, args, plan):
        from ..triton import rows_wgrad, wgrad
        kernels = {"rows": rows_wgrad, "direct": wgrad}[plan.family]
        with _on_device(x):
            return kernels.wgrad(grad_out, x, args, channels_last=is_channels_last(x),
                                 deterministic=torch.are_deterministic_algorithms_enabled())
