"""The tensor-core path of the CUDA backend (csrc/cuda/fwd_mma.cu) against the float64 reference.

DWCONV_CUDA_MMA=1 routes fp16 / bf16 forward and stride-1 dgrad (multiplier 1) to the mma kernels. Without a
GPU they run in the host emulation (tests/cuda_host), where mma_16x8x16 computes each lane's accumulator
fragment from the shared-memory tiles; with a GPU the same cases run on the device. Every case checks, through
a launch counter, that the mma kernel really ran, and every output is NaN-poisoned first.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_cuda_backend import _device_ops, _nan, host_ops  # noqa: E402,F401  (host_ops is a fixture)
from utils import assert_close, make_inputs, reference_conv, reference_grads  # noqa: E402

F16, BF16 = torch.float16, torch.bfloat16

# (name, n, c, h, w, k, multiplier, padding (t, b, l, r), bias)
CASES = [
    ("k7_7x7_batch3", 3, 8, 7, 7, 7, 1, (3, 3, 3, 3), True),
    ("k11_14x14", 1, 8, 14, 14, 11, 1, (5, 5, 5, 5), False),
    ("k13_9x13_batch3", 3, 4, 9, 13, 13, 1, (6, 6, 6, 6), True),
    ("k3_9x13_asymmetric_padding", 1, 5, 9, 13, 3, 1, (0, 2, 2, 1), True),
    ("k7_14x14_batch3_no_bias", 3, 4, 14, 14, 7, 1, (3, 3, 3, 3), False),
    ("k9_37x70_several_tiles", 1, 2, 37, 70, 9, 1, (4, 4, 4, 4), True),
    ("k11_20x70_two_k_steps_wide_tiles", 1, 2, 20, 70, 11, 1, (5, 5, 5, 5), False),
    ("k5_mult2_dgrad_on_fma", 1, 3, 9, 13, 5, 2, (2, 2, 2, 2), True),
]

PARAMS = [pytest.param(case, dtype, cl, id=f"{case[0]}-{str(dtype)[6:]}-{'nhwc' if cl else 'nchw'}")
          for case in CASES for dtype in (F16, BF16) for cl in (False, True)]


def _mma_launches(ops, device):
    if device == "cpu":
        return ops.mma_launches()
    return None  # the device extension exposes no counter (csrc/ops.cpp is untouched)


def _run(ops, case, dtype, channels_last, device):
    _, n, c, h, w, k, m, pad, with_bias = case
    x, wt, b = make_inputs(n, c, h, w, k, m, dtype=dtype, device=device, channels_last=channels_last)
    b = b if with_bias else None
    stride, dil = (1, 1), (1, 1)
    y_shape = reference_conv(x[:1], wt, None, stride, pad, dil).shape[1:]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = _nan((n,) + tuple(y_shape), dtype, device, channels_last)
    before = _mma_launches(ops, device)
    ops.native_fwd(x, wt, b, list(stride), list(pad), list(dil), y)
    after_fwd = _mma_launches(ops, device)
    grad_out = torch.randn(y.shape, dtype=torch.float32).to(device=device, dtype=dtype).contiguous(memory_format=fmt)
    dx = _nan(x.shape, dtype, device, channels_last)
    ops.native_dgrad(grad_out, wt, list(stride), list(pad), list(dil), dx)
    after_dgrad = _mma_launches(ops, device)
    if before is not None:
        assert after_fwd - before == 1, "the forward did not run the mma kernel"
        assert after_dgrad - after_fwd == (1 if m == 1 else 0), "dgrad took the wrong path"
    y_ref, dx_ref, _, _ = reference_grads(x, wt, b, grad_out, stride, pad, dil)
    assert y.is_contiguous(memory_format=fmt) and dx.is_contiguous(memory_format=fmt)
    assert_close(y, y_ref, dtype, "forward (mma)")
    assert_close(dx, dx_ref, dtype, "dgrad (mma)" if m == 1 else "dgrad (fma)")


@pytest.mark.parametrize("case,dtype,channels_last", PARAMS)
def test_host_emulated_mma_matches_reference(host_ops, monkeypatch, case, dtype, channels_last):
    monkeypatch.setenv("DWCONV_CUDA_MMA", "1")
    _run(host_ops, case, dtype, channels_last, "cpu")


@pytest.mark.parametrize("setting", [None, "0", "auto"])
def test_mma_is_off_unless_requested(host_ops, monkeypatch, setting):
    """Until measured on a GPU, the default (and auto) stays on the FMA kernels."""
    if setting is None:
        monkeypatch.delenv("DWCONV_CUDA_MMA", raising=False)
    else:
        monkeypatch.setenv("DWCONV_CUDA_MMA", setting)
    x, wt, b = make_inputs(1, 4, 7, 7, 7, dtype=BF16)
    y = _nan((1, 4, 7, 7), BF16, "cpu", False)
    before = host_ops.mma_launches()
    host_ops.native_fwd(x, wt, b, [1, 1], [3, 3, 3, 3], [1, 1], y)
    host_ops.native_dgrad(y, wt, [1, 1], [3, 3, 3, 3], [1, 1], torch.empty_like(x))
    assert host_ops.mma_launches() == before
    assert_close(y, reference_conv(x, wt, b, (1, 1), (3, 3, 3, 3), (1, 1)), BF16, "forward")


@pytest.mark.parametrize("what", ["float32", "stride2", "dilation2", "k15", "k3x5"])
def test_mma_requested_but_not_applicable_runs_fma(host_ops, monkeypatch, what):
    monkeypatch.setenv("DWCONV_CUDA_MMA", "1")
    dtype = torch.float32 if what == "float32" else BF16
    k = {"k15": 15, "k3x5": (3, 5)}.get(what, 7)
    stride = (2, 2) if what == "stride2" else (1, 1)
    dil = (2, 2) if what == "dilation2" else (1, 1)
    x, wt, b = make_inputs(1, 4, 16, 16, k, dtype=dtype)
    pad = (7, 7, 7, 7) if what == "k15" else (3, 3, 3, 3)
    y_ref = reference_conv(x, wt, b, stride, pad, dil)
    y = _nan(tuple(y_ref.shape), dtype, "cpu", False)
    before = host_ops.mma_launches()
    host_ops.native_fwd(x, wt, b, list(stride), list(pad), list(dil), y)
    assert host_ops.mma_launches() == before
    assert_close(y, y_ref, dtype, "forward")


@pytest.mark.gpu
@pytest.mark.parametrize("case,dtype,channels_last", PARAMS)
def test_device_mma_matches_reference(monkeypatch, case, dtype, channels_last):
    ops = _device_ops()
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("mma.sync m16n8k16 needs sm_80+")
    monkeypatch.setenv("DWCONV_CUDA_MMA", "1")
    _run(ops, case, dtype, channels_last, "cuda")
