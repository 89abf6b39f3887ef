"""The tensor-core path of the CUDA backend (csrc/cuda/fwd_mma.cu) against the float64 reference.

The family "mma" of the native ops routes fp16 / bf16 forward and stride-1 dgrad (multiplier 1) to the mma kernels. Without a
GPU they run in the host emulation (tests/cuda_host), where mma_16x8x16 computes each lane's accumulator
fragment from the shared-memory tiles; with a GPU the same cases run on the device. Every case checks that the
mma kernel really ran (host: a launch counter; GPU: the profiler's kernel names), and every output is
NaN-poisoned first.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_cuda_backend import _device_ops, _nan  # noqa: E402
from utils import assert_close, make_inputs, reference_conv, reference_grads  # noqa: E402

F16, BF16 = torch.float16, torch.bfloat16


@pytest.fixture(scope="session")
def host_ops():
    """The CUDA kernels compiled for the host emulation (the library test_cuda_backend.py uses)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda_host"))
    from build_host_kernels import NAMESPACE, load_host_kernels
    load_host_kernels()
    return getattr(torch.ops, NAMESPACE)


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
    ("k7_18x20_16ch_vector_access", 1, 16, 18, 20, 7, 1, (3, 3, 3, 3), True),
    ("k4x9_non_square_even", 3, 8, 9, 13, (4, 9), 1, (1, 2, 4, 4), True),
    ("k17_20x24", 1, 2, 20, 24, 17, 1, (8, 8, 8, 8), False),
    ("k25x1_column", 1, 3, 26, 9, (25, 1), 1, (12, 12, 0, 0), True),
    ("k7_1x1_map", 3, 8, 1, 1, 7, 1, (3, 3, 3, 3), True),
    ("k3_padding_beyond_kernel", 1, 2, 5, 6, 3, 1, (3, 4, 2, 3), False),
]

PARAMS = [pytest.param(case, dtype, cl, id=f"{case[0]}-{str(dtype)[6:]}-{'nhwc' if cl else 'nchw'}")
          for case in CASES for dtype in (F16, BF16) for cl in (False, True)]


def _ran_mma(ops, device, call):
    """Runs call(); whether it launched the mma kernel (host: the launch counter; GPU: the profiler's kernel names)."""
    if device == "cpu":
        before = ops.mma_launches()
        call()
        return ops.mma_launches() - before == 1
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    names = [e.key for e in prof.key_averages()]
    assert names, "the profiler recorded no CUDA kernels"
    return any("conv_mma_kernel" in name for name in names)


def _run(ops, case, dtype, channels_last, device):
    """The mma forward and dgrad of one case, checked (path taken, float64 reference); returns (y, dx)."""
    _, n, c, h, w, k, m, pad, with_bias = case
    x, wt, b = make_inputs(n, c, h, w, k, m, dtype=dtype, device=device, channels_last=channels_last)
    b = b if with_bias else None
    stride, dil = (1, 1), (1, 1)
    y_shape = reference_conv(x[:1], wt, None, stride, pad, dil).shape[1:]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = _nan((n,) + tuple(y_shape), dtype, device, channels_last)
    assert _ran_mma(ops, device, lambda: ops.native_fwd(x, wt, b, list(stride), list(pad), list(dil), "mma", 0, y)), \
        "the forward did not run the mma kernel"
    grad_out = torch.randn(y.shape, dtype=torch.float32).to(device=device, dtype=dtype).contiguous(memory_format=fmt)
    dx = _nan(x.shape, dtype, device, channels_last)
    dgrad_family = "mma" if m == 1 else "fma"  # the mma dgrad takes multiplier 1 only
    dgrad_mma = _ran_mma(ops, device, lambda: ops.native_dgrad(grad_out, wt, list(stride), list(pad), list(dil),
                                                              dgrad_family, 0, dx))
    assert dgrad_mma == (m == 1), "dgrad took the wrong path"
    y_ref, dx_ref, _, _ = reference_grads(x, wt, b, grad_out, stride, pad, dil)
    assert y.is_contiguous(memory_format=fmt) and dx.is_contiguous(memory_format=fmt)
    assert_close(y, y_ref, dtype, "forward (mma)")
    assert_close(dx, dx_ref, dtype, "dgrad (mma)" if m == 1 else "dgrad (fma)")
    return y, dx


@pytest.mark.parametrize("case,dtype,channels_last", PARAMS)
def test_host_emulated_mma_matches_reference(host_ops, case, dtype, channels_last):
    _run(host_ops, case, dtype, channels_last, "cpu")


@pytest.mark.parametrize("family", ["", "fma"])
def test_mma_runs_only_when_named(host_ops, family):
    """The family "" (the native ops' default) and "fma" run the FMA kernels."""
    x, wt, b = make_inputs(1, 4, 7, 7, 7, dtype=BF16)
    y = _nan((1, 4, 7, 7), BF16, "cpu", False)
    before = host_ops.mma_launches()
    host_ops.native_fwd(x, wt, b, [1, 1], [3, 3, 3, 3], [1, 1], family, 0, y)
    host_ops.native_dgrad(y, wt, [1, 1], [3, 3, 3, 3], [1, 1], family, 0, torch.empty_like(x))
    assert host_ops.mma_launches() == before
    assert_close(y, reference_conv(x, wt, b, (1, 1), (3, 3, 3, 3), (1, 1)), BF16, "forward")


@pytest.mark.parametrize("what", ["float32", "stride2", "dilation2", "k27", "k3x27"])
def test_mma_named_but_not_applicable_raises(host_ops, what):
    """The mma family named for a call it cannot run is an error, never a silent switch to the FMA kernels;
    dwconv.backends.native.mma_applies (what the plans offer) agrees."""
    from dwconv._conv_args import ConvArgs
    from dwconv.backends.native import mma_applies

    dtype = torch.float32 if what == "float32" else BF16
    k = {"k27": 27, "k3x27": (3, 27)}.get(what, 7)
    stride = (2, 2) if what == "stride2" else (1, 1)
    dil = (2, 2) if what == "dilation2" else (1, 1)
    x, wt, b = make_inputs(1, 4, 16, 30, k, dtype=dtype)
    pad = {"k27": (13, 13, 13, 13), "k3x27": (1, 1, 13, 13)}.get(what, (3, 3, 3, 3))
    y_ref = reference_conv(x, wt, b, stride, pad, dil)
    y = _nan(tuple(y_ref.shape), dtype, "cpu", False)
    before = host_ops.mma_launches()
    with pytest.raises(RuntimeError, match="the mma forward does not support this call"):
        host_ops.native_fwd(x, wt, b, list(stride), list(pad), list(dil), "mma", 0, y)
    assert host_ops.mma_launches() == before
    args = ConvArgs(1, 4, 16, 30, 1, tuple(wt.shape[2:]), stride, pad, dil)
    assert not mma_applies("fwd", x, args)
    host_ops.native_fwd(x, wt, b, list(stride), list(pad), list(dil), "fma", 0, y)
    assert_close(y, y_ref, dtype, "forward")


@pytest.mark.parametrize("dtype", [F16, BF16])
def test_host_emulated_warp_mma_fragment_layout(host_ops, dtype):
    """load_a_chunk / load_b_frag / mma_16x8x16 alone: each lane's c[0..3] lands where cuda_compat.cuh says."""
    a = torch.randn(16, 16).to(dtype)
    b = torch.randn(16, 8).to(dtype)
    c = host_ops.mma_selftest(a, b)
    torch.testing.assert_close(c, a.float() @ b.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("voter,voter_block", [(-1, 0), (0, 0), (63, 1), (37, 0)])
def test_host_emulated_syncthreads_or(host_ops, voter, voter_block):
    """__syncthreads_or: the OR over the block, in every thread, vote by vote (no result read late)."""
    out = host_ops.vote_selftest(voter, voter_block).view(2, 64, 3)
    for block in range(2):
        first = int(voter >= 0 and block == voter_block)
        assert out[block, :, 0].tolist() == [first] * 64, f"block {block}, first vote"
        assert out[block, :, 1].tolist() == [1] * 64 and out[block, :, 2].tolist() == [0] * 64


def test_host_emulated_mma_unaligned_channels_last(host_ops):
    """16 channels, channels_last, data pointers not 16-byte aligned: the scalar staging and stores."""
    n, c, h, w = 2, 16, 9, 9
    x = torch.randn(n * c * h * w + 1).to(BF16)[1:].view(n, h, w, c).permute(0, 3, 1, 2)
    assert x.is_contiguous(memory_format=torch.channels_last) and x.data_ptr() % 16 != 0
    wt = (torch.randn(c, 1, 7, 7) / 7).to(BF16)
    y = torch.full((n * c * h * w + 1,), float("nan"), dtype=BF16)[1:].view(n, h, w, c).permute(0, 3, 1, 2)
    before = host_ops.mma_launches()
    host_ops.native_fwd(x, wt, None, [1, 1], [3, 3, 3, 3], [1, 1], "mma", 0, y)
    assert host_ops.mma_launches() == before + 1
    assert_close(y, reference_conv(x, wt, None, (1, 1), (3, 3, 3, 3), (1, 1)), BF16, "forward")


# Inputs with inf / NaN values: (name, n, c, h, w, k, padding (t, b, l, r), bias). The kernel must give
# PyTorch's answer: a non-finite input reaches exactly the outputs whose window covers it (the band's zeros
# must not spread it along the strip).
NONFINITE_CASES = [
    ("k7_7x7_batch3", 3, 8, 7, 7, 7, (3, 3, 3, 3), True),
    ("k11_14x14_two_k_steps", 1, 8, 14, 14, 11, (5, 5, 5, 5), False),
    ("k9_37x70_several_tiles", 1, 2, 37, 70, 9, (4, 4, 4, 4), True),
    ("k7_18x20_16ch_vector_access", 1, 16, 18, 20, 7, (3, 3, 3, 3), True),
    ("k3_9x13_asymmetric_padding", 1, 5, 9, 13, 3, (0, 2, 2, 1), True),
]

NONFINITE_PARAMS = [pytest.param(case, dtype, cl, id=f"{case[0]}-{str(dtype)[6:]}-{'nhwc' if cl else 'nchw'}")
                    for case in NONFINITE_CASES for dtype in (F16, BF16) for cl in (False, True)]


def _plant_nonfinite(t):
    """Puts +inf, -inf and NaN into t (N, C, H, W) at corners, borders, the interior and tile seams."""
    n, c, h, w = t.shape
    inf, nan = float("inf"), float("nan")
    spots = [(0, 0, 0, 0, inf), (n - 1, c - 1, h - 1, w - 1, -inf), (0, c // 2, h // 2, w // 2, nan),
             (n - 1, 0, h // 2, w - 1, inf), (0, c - 1, min(1, h - 1), min(1, w - 1), -inf),
             (n // 2, c // 2, h - 1, w // 3, nan), (n - 1, c - 1, h // 3, 0, inf)]
    # Tile seams: NHWC tiles are 32 columns wide, NCHW 64; tall NCHW tiles 32 rows, NHWC 16.
    spots += [(0, 1 % c, s, w // 2 + 1, -inf) for s in (16, 32) if s < h]
    spots += [(0, 0, h // 2 + 1, s, nan) for s in (32, 64) if s < w]
    with torch.no_grad():
        for ni, ci, hi, wi, v in spots:
            t[ni, ci, hi, wi] = v
    return t


def _assert_matches_with_nonfinite(actual, expected, dtype, what):
    """inf / NaN exactly where the float64 reference has them (with the sign of inf); the rest within tolerance."""
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    for name, mask in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        diff = mask(a) != mask(e)
        assert not diff.any(), (f"{what}: {name} pattern differs at {int(diff.sum())} of {a.numel()} outputs, "
                                f"first at {tuple(diff.nonzero()[0].tolist())}")
    finite = torch.isfinite(e)
    assert finite.any() and not finite.all(), f"{what}: the case must have finite and non-finite outputs"
    assert_close(a[finite], e[finite], dtype, what)


def _run_nonfinite(ops, case, dtype, channels_last, device):
    _, n, c, h, w, k, pad, with_bias = case
    x, wt, b = make_inputs(n, c, h, w, k, dtype=dtype, device=device, channels_last=channels_last, seed=7)
    b = b if with_bias else None
    x = _plant_nonfinite(x)
    stride, dil = (1, 1), (1, 1)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y_shape = reference_conv(x[:1], wt, None, stride, pad, dil).shape[1:]
    y = _nan((n,) + tuple(y_shape), dtype, device, channels_last)
    assert _ran_mma(ops, device, lambda: ops.native_fwd(x, wt, b, list(stride), list(pad), list(dil), "mma", 0,
                                                        y)), \
        "the forward did not run the mma kernel"
    g = torch.Generator().manual_seed(8)
    grad_out = torch.randn(y.shape, generator=g).to(dtype)
    grad_out = _plant_nonfinite(grad_out).to(device).contiguous(memory_format=fmt)
    dx = _nan(x.shape, dtype, device, channels_last)
    assert _ran_mma(ops, device, lambda: ops.native_dgrad(grad_out, wt, list(stride), list(pad), list(dil), "mma",
                                                          0, dx)), \
        "the dgrad did not run the mma kernel"
    y_ref, dx_ref, _, _ = reference_grads(x, wt, b, grad_out, stride, pad, dil)
    _assert_matches_with_nonfinite(y, y_ref, dtype, "forward (mma), inf / NaN inputs")
    _assert_matches_with_nonfinite(dx, dx_ref, dtype, "dgrad (mma), inf / NaN in dy")


def _run_single_nonfinite(ops, dtype, channels_last, device):
    """One inf / NaN per call, so no other value of its tile can trigger the exact path: every channel of a
    16-channel block (each half of each 32-bit word of both 16-byte NHWC vectors), at rows and columns that
    move with it (map border and interior, the last staged columns), and in dy for the dgrad."""
    n, c, h, w, k, pad = 1, 16, 9, 9, 7, (3, 3, 3, 3)
    x0, wt, b = make_inputs(n, c, h, w, k, dtype=dtype, device=device, channels_last=channels_last, seed=9)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    values = (float("inf"), float("-inf"), float("nan"))
    for ch in range(c):
        for what in ("fwd", "dgrad"):
            spot = (0, ch, (ch * 5) % h, (ch * 7) % w)
            x = x0.clone()
            grad_out = torch.randn(n, c, h, w).to(dtype).to(device).contiguous(memory_format=fmt)
            target = x if what == "fwd" else grad_out
            target[spot] = values[ch % 3]
            out = _nan((n, c, h, w), dtype, device, channels_last)
            if what == "fwd":
                ran = _ran_mma(ops, device, lambda: ops.native_fwd(x, wt, b, [1, 1], list(pad), [1, 1], "mma", 0, out))
                ref = reference_conv(x, wt, b, (1, 1), pad, (1, 1))
            else:
                ran = _ran_mma(ops, device, lambda: ops.native_dgrad(grad_out, wt, [1, 1], list(pad), [1, 1], "mma", 0,
                                                                     out))
                ref = reference_grads(x, wt, b, grad_out, (1, 1), pad, (1, 1))[1]
            assert ran, f"{what} did not run the mma kernel"
            _assert_matches_with_nonfinite(out, ref, dtype, f"{what}, {values[ch % 3]} at {spot}")


@pytest.mark.parametrize("dtype", [F16, BF16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_host_emulated_mma_single_nonfinite_value(host_ops, dtype, channels_last):
    _run_single_nonfinite(host_ops, dtype, channels_last, "cpu")


@pytest.mark.parametrize("case,dtype,channels_last", NONFINITE_PARAMS)
def test_host_emulated_mma_nonfinite_inputs(host_ops, case, dtype, channels_last):
    _run_nonfinite(host_ops, case, dtype, channels_last, "cpu")


@pytest.fixture
def device_mma_ops():
    """The device build's ops (GPU tests only; the calls name the mma family)."""
    ops = _device_ops()
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("mma.sync m16n8k16 needs sm_80+")
    return ops


@pytest.mark.gpu
@pytest.mark.parametrize("case,dtype,channels_last", NONFINITE_PARAMS)
def test_device_mma_nonfinite_inputs(device_mma_ops, case, dtype, channels_last):
    ops = device_mma_ops
    _run_nonfinite(ops, case, dtype, channels_last, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [F16, BF16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_device_mma_single_nonfinite_value(device_mma_ops, dtype, channels_last):
    ops = device_mma_ops
    _run_single_nonfinite(ops, dtype, channels_last, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("case,dtype,channels_last", PARAMS)
def test_device_mma_matches_reference(device_mma_ops, case, dtype, channels_last):
    ops = device_mma_ops
    _run(ops, case, dtype, channels_last, "cuda")
