"""The "cpu" and "cuda" backends: the C++/CUDA kernels of the extension dwconv._C (csrc/)."""
from __future__ import annotations

import functools
from typing import Optional

import torch

from .. import _extension
from .._conv_args import is_channels_last
from .. import config
from ..plans import Plan
from .base import Backend, cuda_device_problem, new_output, preferred_first


class _NativeBackend(Backend):
    device_type = ""

    def _kernels_missing(self) -> Optional[str]:
        raise NotImplementedError

    def unavailable_reason(self, device: torch.device) -> Optional[str]:
        device = torch.device(device)
        if device.type != self.device_type:
            return f"the {self.name!r} backend runs on {self.device_type} tensors, not {device.type}"
        return _extension.load() or self._kernels_missing()

    def forward(self, x, weight, bias, args, plan):
        y = new_output(args.output_shape, x)
        _native_op("native_fwd")(x, weight, bias, args.stride, args.padding, args.dilation, plan.family,
                                    variant_number(plan), y)
        return y

    def dgrad(self, grad_out, weight, args, plan):
        dx = new_output(args.input_shape, grad_out)
        _native_op("native_dgrad")(grad_out, weight, args.stride, args.padding, args.dilation, plan.family,
                                      variant_number(plan), dx)
        return dx

    def wgrad(self, grad_out, x, args, plan):
        acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        dw = new_output(args.weight_shape, x, dtype=acc_dtype, channels_last=False)
        _native_op("native_wgrad")(grad_out, x, args.stride, args.padding, args.dilation,
                                      torch.are_deterministic_algorithms_enabled(), plan.family,
                                      variant_number(plan), dw)
        return dw.to(x.dtype)


@functools.lru_cache(maxsize=None)
def _native_op(name: str):
    """A callable running the native op `name`: through dwconv._C's direct entry (no torch.ops argument parsing,
    about 2 µs less per call) where it serves the call, else through torch.ops."""
    op = getattr(torch.ops.dwconv, name).default
    direct = _extension.direct_entry(name)
    if direct is None:
        return op

    def call(*args):
        if direct(*args) is NotImplemented:
            op(*args)
    return call


def variant_number(plan: Plan) -> int:
    """A plan's variant as the native ops take it (0: the default)."""
    return int(plan.variant) if plan.variant else 0


try:  # the SM architectures the extension was compiled for (setup.py, DWCONV_CUDA_ARCHS)
    from .._build_info import CUDA_ARCHS
except ImportError:
    CUDA_ARCHS = (80,)
MIN_CAPABILITY = divmod(min(CUDA_ARCHS), 10) if CUDA_ARCHS else (0, 0)


class CpuBackend(_NativeBackend):
    name = "cpu"
    device_type = "cpu"

    def _kernels_missing(self):
        return None if _extension.has_cpu_kernels() else "dwconv._C was built without CPU kernels"

    def unsupported_reason(self, x, args):
        if x.dtype not in (torch.float32, torch.bfloat16, torch.float64, torch.float16):
            return f"dtype {x.dtype} is not supported by the cpu backend"
        return None

    def families(self, op, x, args):
        families = _cpu_families()
        if x.dtype != torch.bfloat16:
            families = tuple(f for f in families if f not in BF16_ONLY_CPU_FAMILIES)
        return preferred_first(families, config.get().cpu_family)


# Families whose kernels run bfloat16 only (csrc/cpu/kernels.h: isa_bf16_only).
BF16_ONLY_CPU_FAMILIES = ("avx512bf16",)


@functools.lru_cache(maxsize=None)
def _cpu_families():
    """The instruction sets this CPU runs the kernels for, best first (the extension asks the CPU)."""
    return tuple(torch.ops.dwconv.cpu_families())


class CudaBackend(_NativeBackend):
    name = "cuda"
    device_type = "cuda"

    def unavailable_reason(self, device):
        device = torch.device(device)
        reason = super().unavailable_reason(device) or cuda_device_problem(device)
        if reason is None and torch.cuda.get_device_capability(device) < MIN_CAPABILITY:
            reason = ("the CUDA kernels are built for compute capability {}.{} and newer; {} has {}.{}".format(
                *MIN_CAPABILITY, torch.cuda.get_device_name(device), *torch.cuda.get_device_capability(device)))
        return reason

    def _kernels_missing(self):
        if not _extension.has_cuda_kernels():
            return ("dwconv._C was built without CUDA kernels (needs a CUDA build of torch and nvcc at "
                    "build time; DWCONV_BUILD_CUDA=0 skips them)")
        return None

    def families(self, op, x, args):
        if mma_applies(op, x, args):
            return preferred_first(("fma", "mma"), config.get().cuda_family)
        return ("fma",)

    def variant_problem(self, plan, op, x, args):
        if not plan.variant:
            return None
        if op == "wgrad" and plan.family == "fma" and plan.variant.isdigit() and int(plan.variant) > 0:
            return None
        return (f"the cuda backend's variants are wgrad's block counts (a positive integer, "
                f"e.g. 'cuda:fma:4'), got {plan.variant!r} for {op}")


# The tensor-core kernels' reach (csrc/cuda/fwd_mma.cu: fwd_mma_supported, dgrad_mma_supported; the native ops
# refuse anything else).
MMA_DTYPES = (torch.float16, torch.bfloat16)
MMA_MAX_KERNEL = (25, 25)


def mma_applies(op: str, x: torch.Tensor, args) -> bool:
    if op == "wgrad" or x.dtype not in MMA_DTYPES or args.stride != (1, 1) or args.dilation != (1, 1):
        return False
    if args.kernel[0] > MMA_MAX_KERNEL[0] or args.kernel[1] > MMA_MAX_KERNEL[1]:
        return False
    if op == "dgrad" and args.multiplier != 1:
        return False
    return x.device.type != "cuda" or torch.cuda.get_device_capability(x.device) >= (8, 0)
