"""The contract every backend implements.

A backend receives tensors already validated and laid out by `dwconv.ops`:
- x and grad_out are 4-D and either NCHW-contiguous or channels_last-contiguous
  (the same layout for both within one backward); outputs use that same layout;
- weight is contiguous (C*m, 1, kh, kw); bias is contiguous (C*m,) or None;
- all tensors share one device and one floating dtype; `args` is the resolved geometry.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from .._conv_args import ConvArgs
from ..outputs import new_output  # noqa: F401  (the backends allocate with it)
from ..plans import Plan


class Backend:
    name: str = ""

    def unavailable_reason(self, device: torch.device) -> Optional[str]:
        """None when this backend can run on `device` in this process, else why not."""
        raise NotImplementedError

    def unsupported_reason(self, x: torch.Tensor, args: ConvArgs) -> Optional[str]:
        """None when a call on x (input or grad_out: device, dtype, layout) with geometry args is supported
        (the device already known to be available), else why not."""
        return None

    def families(self, op: str, x: torch.Tensor, args: ConvArgs) -> Tuple[str, ...]:
        """The kernel families that can run op ("fwd", "dgrad" or "wgrad") on this supported call, the
        backend's default first (dwconv.config's family setting moves its family first where it applies)."""
        raise NotImplementedError

    def family_problem(self, family: str, op: str, x: torch.Tensor, args: ConvArgs) -> Optional[str]:
        """None when `family` can run op on this supported call, else why not."""
        if family in self.families(op, x, args):
            return None
        return f"kernel family {family!r} cannot run it (these can: {', '.join(self.families(op, x, args))})"

    def variant_problem(self, plan: Plan, op: str, x: torch.Tensor, args: ConvArgs) -> Optional[str]:
        """None when plan.variant (of a family that can run the call) is valid for it, else why not."""
        return None if not plan.variant else f"the {plan.backend} backend's {plan.family!r} kernels have no variants"

    def plans(self, op: str, x: torch.Tensor, args: ConvArgs) -> List[Plan]:
        """Every plan of this backend that can run op on this supported call (default variants), the default
        first: what benchmark mode times."""
        return [Plan(self.name, family) for family in self.families(op, x, args)]

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                args: ConvArgs, plan: Plan) -> torch.Tensor:
        raise NotImplementedError

    def dgrad(self, grad_out: torch.Tensor, weight: torch.Tensor, args: ConvArgs, plan: Plan) -> torch.Tensor:
        """dL/dx, shape args.input_shape, in grad_out's layout and dtype."""
        raise NotImplementedError

    def wgrad(self, grad_out: torch.Tensor, x: torch.Tensor, args: ConvArgs, plan: Plan) -> torch.Tensor:
        """dL/dweight, shape args.weight_shape, in x's dtype (accumulated in at least fp32)."""
        raise NotImplementedError


def preferred_first(families: Sequence[str], preferred: str) -> Tuple[str, ...]:
    """families with `preferred` moved to the front where it is among them."""
    if preferred in families:
        return (preferred,) + tuple(f for f in families if f != preferred)
    return tuple(families)


def cuda_device_problem(device: torch.device) -> Optional[str]:
    """None when `device` is a usable CUDA device in this process, else why not."""
    if not torch.cuda.is_available():
        return "no CUDA device is available here (torch.cuda.is_available() is False)"
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        return f"CUDA device {index} does not exist ({torch.cuda.device_count()} visible)"
    return None
