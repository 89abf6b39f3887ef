"""The "cpu" and "cuda" backends: the C++/CUDA kernels of the extension dwconv._C (csrc/)."""
from __future__ import annotations

from typing import Optional

import torch

from .. import _extension
from .._conv_args import is_channels_last
from .base import Backend, cuda_device_problem, new_output


class _NativeBackend(Backend):
    device_type = ""

    def _kernels_missing(self) -> Optional[str]:
        raise NotImplementedError

    def unavailable_reason(self, device: torch.device) -> Optional[str]:
        device = torch.device(device)
        if device.type != self.device_type:
            return f"the {self.name!r} backend runs on {self.device_type} tensors, not {device.type}"
        return _extension.load() or self._kernels_missing()

    def forward(self, x, weight, bias, args):
        y = new_output(args.output_shape, x)
        torch.ops.dwconv.native_fwd(x, weight, bias, args.stride, args.padding, args.dilation, y)
        return y

    def dgrad(self, grad_out, weight, args):
        dx = new_output(args.input_shape, grad_out)
        torch.ops.dwconv.native_dgrad(grad_out, weight, args.stride, args.padding, args.dilation, dx)
        return dx

    def wgrad(self, grad_out, x, args):
        acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        dw = new_output(args.weight_shape, x, dtype=acc_dtype, channels_last=False)
        torch.ops.dwconv.native_wgrad(grad_out, x, args.stride, args.padding, args.dilation,
                                      torch.are_deterministic_algorithms_enabled(), dw)
        return dw.to(x.dtype)


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

    def preferred_by_auto(self, op, x, args):
        # Measured on 2 cores (docs/perf_cpu.md, v8-v9): PyTorch's oneDNN path wins channels_last 3x3 convs,
        # and the channels_last forward of kernels up to 7x7 on large maps at small batch; float64 is
        # correct here but not tuned. Every other case, and every dgrad/wgrad from 5x5 up, is faster here.
        # Strided dgrad (v11, stride phases): faster here at every kernel size measured, 3x3 channels_last
        # included (PyTorch's strided depthwise backward measured 4-90x slower in channels_last).
        # float16 (v12): PyTorch's CPU depthwise conv in float16 measured 15-85x slower than these kernels for
        # every op in channels_last, 3x3 and the large-map forward included.
        if x.dtype == torch.float64:
            return False
        if x.dtype == torch.float16:
            return True
        if op == "dgrad" and args.stride != (1, 1):
            return True
        if is_channels_last(x):
            area = args.kernel[0] * args.kernel[1]
            if area < 25:
                return False
            if op == "fwd" and area <= 49 and args.height * args.width >= 28 * 28 and args.batch < 32:
                return False
        return True


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
