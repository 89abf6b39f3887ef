"""Helpers shared by the Triton launchers."""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction


@triton.jit
def _decorated():
    pass


# Triton decides at decoration time (i.e. when these modules are imported) whether @triton.jit builds GPU
# kernels or interpreter functions: this is its decision, read off a decorated function.
INTERPRET: bool = not isinstance(_decorated, JITFunction)

_INT32_LIMIT = 2 ** 31 - 1

_ACC_DTYPE = {
    torch.float32: tl.float32,
    torch.float16: tl.float32,
    torch.bfloat16: tl.float32,
    torch.float64: tl.float64,
}


def acc_dtype(dtype: torch.dtype):
    """Triton accumulation dtype for an input dtype: fp32 for fp32/fp16/bf16, fp64 for fp64."""
    try:
        return _ACC_DTYPE[dtype]
    except KeyError:
        raise RuntimeError(f"the triton backend does not support dtype {dtype}") from None


def acc_torch_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def needs_int64(*tensors: torch.Tensor) -> bool:
    """True when some element offset of these tensors does not fit in int32."""
    return any(t.numel() > _INT32_LIMIT for t in tensors)


def strides4(t: torch.Tensor):
    """(n, c, h, w) element strides: one kernel serves NCHW and channels_last through these."""
    return tuple(int(s) for s in t.stride())


def weight_operand(weight: torch.Tensor, channels_last: bool):
    """The weights as the direct kernels read them, with their (channel, tap) element strides.

    NCHW tiles hold one or a few channels: the (CO, 1, KH, KW) weight as given (channel-major).
    channels_last tiles give each thread a vector of consecutive channels at one pixel, so the weights are
    passed tap-major, (KH*KW, CO) in the accumulation dtype (a tiny copy): one tap's weights for a channel
    vector are then one contiguous 16-byte load instead of a gather.
    """
    co, taps = weight.shape[0], weight.shape[2] * weight.shape[3]
    if not channels_last:
        return weight, (taps, 1)
    tap_major = weight.reshape(co, taps).t().to(acc_torch_dtype(weight.dtype)).contiguous()
    return tap_major, (1, co)


def phase_offset(k: int, d: int, s: int) -> int:
    """Smallest multiple of s that is >= (k-1)*d: added before a floor division by s so that the
    dividend is never negative (integer division of negatives differs between the GPU and the interpreter)."""
    return s * triton.cdiv((k - 1) * d, s)


@triton.jit
def widen_strides(s0, s1, s2, s3, INDEX_64: tl.constexpr):
    """The four (n, c, h, w) strides as int64 when INDEX_64, so every offset product is 64-bit."""
    if INDEX_64:
        s0 = tl.cast(s0, tl.int64)
        s1 = tl.cast(s1, tl.int64)
        s2 = tl.cast(s2, tl.int64)
        s3 = tl.cast(s3, tl.int64)
    return s0, s1, s2, s3
