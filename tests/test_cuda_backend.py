"""The CUDA backend's kernels (csrc/cuda) against the float64 reference.

Without a GPU the kernel sources are compiled as C++ with the host emulation (tests/cuda_host) and run on the
CPU through torch.ops.dwconv_cuda_host.native_*; with a GPU the same grid runs on the device build
(torch.ops.dwconv.native_* on CUDA tensors) and through dwconv.depthwise_conv2d(..., backend="cuda").
Every output is NaN-poisoned first, so elements a kernel forgets to write fail.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from utils import assert_close, make_inputs, reference_conv, reference_grads  # noqa: E402

F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64

# (name, n, c, h, w, k, multiplier, stride, padding (t, b, l, r), dilation, dtypes): a covering set of the
# Triton grid, not a product. Sizes compiled for K in {3, 5, 7, 9, 11, 13} run the unrolled kernels, the rest
# (3x5, 31, float64) the generic ones.
CASES = [
    ("k3_odd_map", 1, 3, 9, 13, 3, 1, (1, 1), (1, 1, 1, 1), (1, 1), (F32, F16, BF16)),
    ("k7_7x7_small_map", 3, 16, 7, 7, 7, 1, (1, 1), (3, 3, 3, 3), (1, 1), (F32, BF16)),
    ("k11_14x14_stride2", 3, 8, 14, 14, 11, 1, (2, 2), (5, 5, 5, 5), (1, 1), (F16, BF16)),
    ("k11_14x14_mult2", 1, 8, 14, 14, 11, 2, (1, 1), (5, 5, 5, 5), (1, 1), (F32, BF16)),
    ("k13_dilation2", 1, 4, 17, 19, 13, 1, (1, 1), (12, 12, 12, 12), (2, 2), (F32,)),
    ("k9_mult2", 3, 4, 11, 12, 9, 2, (1, 1), (4, 4, 4, 4), (1, 1), (F32, F16)),
    ("k5_asymmetric_padding", 1, 5, 10, 9, 5, 1, (1, 2), (0, 3, 2, 1), (1, 1), (F32, BF16)),
    ("k3x5_s2x1_d2x1_mult2", 3, 4, 13, 11, (3, 5), 2, (2, 1), (2, 1, 0, 3), (2, 1), (F32, F16)),
    ("k7_1x1_map", 3, 8, 1, 1, 7, 1, (1, 1), (3, 3, 3, 3), (1, 1), (F32, BF16)),
    ("k31_same", 1, 4, 33, 35, 31, 1, (1, 1), (15, 15, 15, 15), (1, 1), (F32,)),
    ("k7_several_tiles", 1, 3, 37, 70, 7, 1, (1, 1), (3, 3, 3, 3), (1, 1), (F32, BF16)),
    ("k3_stride3", 3, 6, 10, 11, 3, 1, (3, 3), (0, 2, 1, 1), (1, 1), (F32,)),
    ("k5_16ch_vector_loads", 3, 16, 9, 10, 5, 1, (1, 1), (2, 2, 2, 2), (1, 1), (F32, F16, BF16)),
    ("k7_float64", 1, 3, 9, 9, 7, 2, (1, 1), (3, 3, 3, 3), (1, 1), (F64,)),
    # dilated region too large for shared memory: the direct (fallback) kernels
    ("k3_dilation60_fallback", 1, 2, 8, 8, 3, 2, (1, 1), (60, 60, 60, 60), (60, 60), (F32, F16)),
]

PARAMS = [pytest.param(case, dtype, cl, id=f"{case[0]}-{str(dtype)[6:]}-{'nhwc' if cl else 'nchw'}")
          for case in CASES for dtype in case[-1] for cl in (False, True)]


@pytest.fixture(scope="session")
def host_ops():
    """The CUDA kernels compiled for the host emulation (built once per session, cached across sessions)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda_host"))
    from build_host_kernels import NAMESPACE, load_host_kernels
    load_host_kernels()
    return getattr(torch.ops, NAMESPACE)


def _nan(shape, dtype, device, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.full(shape, float("nan"), dtype=dtype, device=device).contiguous(memory_format=fmt)


def _run_native(ops, case, dtype, channels_last, device, deterministic=False, wgrad_blocks=0):
    """(x, w, b, grad_out) and the FMA kernels' (y, dx, dw), every output NaN-poisoned beforehand; wgrad_blocks:
    the block count wgrad slices the batch for (its variant; 0 = the default)."""
    _, n, c, h, w, k, m, stride, pad, dil, _ = case
    x, wt, b = make_inputs(n, c, h, w, k, m, dtype=dtype, device=device, channels_last=channels_last)
    y_shape = reference_conv(x[:1], wt, None, stride, pad, dil).shape[1:]
    y = _nan((n,) + tuple(y_shape), dtype, device, channels_last)
    ops.native_fwd(x, wt, b, list(stride), list(pad), list(dil), "fma", 0, y)
    grad_out = torch.randn(y.shape, dtype=torch.float32).to(device=device, dtype=dtype)
    grad_out = grad_out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    dx = _nan(x.shape, dtype, device, channels_last)
    ops.native_dgrad(grad_out, wt, list(stride), list(pad), list(dil), "fma", 0, dx)
    dw = _nan(wt.shape, F64 if dtype == F64 else F32, device, False)
    ops.native_wgrad(grad_out, x, list(stride), list(pad), list(dil), deterministic, "fma", wgrad_blocks, dw)
    return (x, wt, b, grad_out), (y, dx, dw)


def _check_against_reference(inputs, outputs, case, dtype, channels_last):
    x, wt, b, grad_out = inputs
    y, dx, dw = outputs
    _, _, _, _, _, _, _, stride, pad, dil, _ = case
    y_ref, dx_ref, dw_ref, _ = reference_grads(x, wt, b, grad_out, stride, pad, dil)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt) and dx.is_contiguous(memory_format=fmt)
    assert_close(y, y_ref, dtype, "forward")
    assert_close(dx, dx_ref, dtype, "dgrad")
    # dw is accumulated and stored in fp32 (fp64 for double) from the same rounded inputs as the reference.
    assert_close(dw, dw_ref, F64 if dtype == F64 else F32, "wgrad", factor=10.0)


@pytest.mark.parametrize("case,dtype,channels_last", PARAMS)
def test_host_emulated_kernels_match_reference(host_ops, case, dtype, channels_last):
    inputs, outputs = _run_native(host_ops, case, dtype, channels_last, "cpu")
    _check_against_reference(inputs, outputs, case, dtype, channels_last)


@pytest.mark.parametrize("case,channels_last", [pytest.param(c, i % 2 == 1, id=c[0]) for i, c in enumerate(CASES)])
def test_host_emulated_deterministic_wgrad_matches_reference(host_ops, case, channels_last):
    inputs, outputs = _run_native(host_ops, case, case[-1][-1], channels_last, "cpu", deterministic=True)
    _check_against_reference(inputs, outputs, case, case[-1][-1], channels_last)


@pytest.mark.parametrize("target_blocks", [1, 2])
def test_host_emulated_wgrad_several_images_per_block(host_ops, target_blocks):
    """Few target blocks (wgrad's variant) put 3 (or 2 + 1) images in one block: sums must carry across images."""
    for case in (CASES[1], CASES[7]):
        for channels_last in (False, True):
            for deterministic in (False, True):
                inputs, outputs = _run_native(host_ops, case, F32, channels_last, "cpu", deterministic, target_blocks)
                _check_against_reference(inputs, outputs, case, F32, channels_last)


def test_host_emulated_deterministic_wgrad_is_bitwise_reproducible(host_ops):
    case = CASES[2]
    _, n, c, h, w, k, m, stride, pad, dil, _ = case
    x, wt, _ = make_inputs(n, c, h, w, k, m, dtype=BF16, channels_last=True)
    grad_out = torch.randn(reference_conv(x, wt, None, stride, pad, dil).shape).to(BF16)
    grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    results = []
    for _ in range(2):
        dw = torch.full(wt.shape, float("nan"))
        host_ops.native_wgrad(grad_out, x, list(stride), list(pad), list(dil), True, "fma", 0, dw)
        results.append(dw)
    assert torch.equal(results[0], results[1])


def test_host_emulated_unaligned_input_takes_scalar_path(host_ops):
    """A channels_last input whose data pointer is not 16-byte aligned must still be read correctly."""
    n, c, h, w = 2, 16, 9, 9
    flat = torch.randn(n * c * h * w + 1)
    x = flat[1:].view(n, h, w, c).permute(0, 3, 1, 2)  # channels_last, data_ptr % 16 == 4
    assert x.is_contiguous(memory_format=torch.channels_last) and x.data_ptr() % 16 != 0
    wt = torch.randn(c, 1, 7, 7) / 7
    y = _nan((n, c, h, w), F32, "cpu", True)
    host_ops.native_fwd(x, wt, None, [1, 1], [3, 3, 3, 3], [1, 1], "", 0, y)
    assert_close(y, reference_conv(x, wt, None, (1, 1), (3, 3, 3, 3), (1, 1)), F32, "forward")


def test_host_emulation_orders_shared_memory_at_barriers(host_ops):
    out = host_ops.emulation_selftest(torch.zeros(16), 0)
    assert out.tolist() == [(i + 1) % 64 for i in range(64)]


@pytest.mark.parametrize("mode,message", [(1, "divergent __syncthreads"), (2, "misaligned address"),
                                          (3, "warp barrier")])
def test_host_emulation_rejects_what_the_gpu_would(host_ops, mode, message):
    with pytest.raises(RuntimeError, match=message):
        host_ops.emulation_selftest(torch.zeros(16), mode)


def test_host_emulated_bad_inputs_raise(host_ops):
    x, wt, b = make_inputs(1, 4, 8, 8, 3)
    y = torch.empty(1, 4, 8, 8)
    pad = [1, 1, 1, 1]
    with pytest.raises(RuntimeError, match="output / grad_out must have size"):
        host_ops.native_fwd(x, wt, b, [1, 1], pad, [1, 1], "", 0, torch.empty(1, 4, 7, 8))
    with pytest.raises(RuntimeError, match="channels_last"):
        host_ops.native_fwd(x, wt, b, [1, 1], pad, [1, 1], "", 0, y.contiguous(memory_format=torch.channels_last))
    with pytest.raises(RuntimeError, match="same dtype"):
        host_ops.native_fwd(x, wt.double(), b, [1, 1], pad, [1, 1], "", 0, y)
    with pytest.raises(RuntimeError, match="unsupported dtype"):
        host_ops.native_fwd(x.int(), wt.int(), None, [1, 1], pad, [1, 1], "", 0, y.int())
    with pytest.raises(RuntimeError, match="stride must be"):
        host_ops.native_fwd(x, wt, b, [0, 1], pad, [1, 1], "", 0, y)
    with pytest.raises(RuntimeError, match="larger than the padded input"):
        host_ops.native_fwd(x, torch.randn(4, 1, 11, 11), None, [1, 1], pad, [1, 1], "", 0, y)
    with pytest.raises(RuntimeError, match="grad_w must be Float"):
        host_ops.native_wgrad(y.half(), x.half(), [1, 1], pad, [1, 1], False, "", 0, torch.empty(4, 1, 3, 3, dtype=F16))
    with pytest.raises(RuntimeError, match="weight must be"):
        host_ops.native_fwd(x, torch.randn(6, 1, 3, 3), None, [1, 1], pad, [1, 1], "", 0, torch.empty(1, 6, 8, 8))
    with pytest.raises(RuntimeError, match="unknown kernel family 'wmma'"):
        host_ops.native_fwd(x, wt, b, [1, 1], pad, [1, 1], "wmma", 0, y)
    with pytest.raises(RuntimeError, match="no variants"):
        host_ops.native_fwd(x, wt, b, [1, 1], pad, [1, 1], "fma", 2, y)
    with pytest.raises(RuntimeError, match="must be >= 0"):
        host_ops.native_wgrad(y, x, [1, 1], pad, [1, 1], False, "fma", -1, torch.empty(4, 1, 3, 3))


# ---------------------------------------------------------------------------------------------------------------
# Device build (GPU only)

def _device_ops():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    import dwconv._C  # noqa: F401  (registers dwconv::native_* for CUDA)
    if not torch._C._dispatch_has_kernel_for_dispatch_key("dwconv::native_fwd", "CUDA"):
        pytest.fail("dwconv._C was built without the CUDA kernels (need nvcc and a CUDA torch at build time)")
    return torch.ops.dwconv


@pytest.mark.gpu
@pytest.mark.parametrize("case,dtype,channels_last", PARAMS)
def test_device_kernels_match_reference(case, dtype, channels_last):
    ops = _device_ops()
    for deterministic in (False, True):
        inputs, outputs = _run_native(ops, case, dtype, channels_last, "cuda", deterministic)
        _check_against_reference(inputs, outputs, case, dtype, channels_last)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [F32, BF16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_device_backend_through_functional(dtype, channels_last):
    _device_ops()
    import dwconv
    x, wt, b = make_inputs(3, 32, 14, 14, 11, 2, dtype=dtype, device="cuda", channels_last=channels_last)
    for t in (x, wt, b):
        t.requires_grad_(True)
    y = dwconv.depthwise_conv2d(x, wt, b, stride=1, padding=5, backend="cuda")
    grad_out = torch.randn_like(y)
    y.backward(grad_out)
    y_ref, dx_ref, dw_ref, db_ref = reference_grads(x, wt, b, grad_out, (1, 1), (5, 5, 5, 5), (1, 1))
    assert_close(y, y_ref, dtype, "forward")
    assert_close(x.grad, dx_ref, dtype, "dgrad")
    assert_close(wt.grad, dw_ref, dtype, "wgrad")
    assert_close(b.grad, db_ref, dtype, "bias grad")


@pytest.mark.gpu
@pytest.mark.slow
def test_device_64bit_addressing():
    """A plane with more than 2**31 elements: offsets must not overflow 32 bits."""
    ops = _device_ops()
    h, w = 8, (1 << 31) // 8 + 64
    x = torch.randn(1, 1, h, w, device="cuda", dtype=BF16)
    wt = torch.randn(1, 1, 3, 3, device="cuda", dtype=BF16)
    y = torch.full_like(x, float("nan"))
    ops.native_fwd(x, wt, None, [1, 1], [1, 1, 1, 1], [1, 1], "", 0, y)
    tail = slice(w - 4096, w)
    y_ref = reference_conv(x[..., w - 4098:], wt, None, (1, 1), (1, 1, 0, 1), (1, 1))
    assert_close(y[..., tail], y_ref[..., -4096:], BF16, "forward tail")


SANITIZER_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_cuda_backend import CASES, _run_native, _device_ops
ops = _device_ops()
for name in ("k7_7x7_small_map", "k3x5_s2x1_d2x1_mult2", "k3_dilation60_fallback"):
    case = next(c for c in CASES if c[0] == name)
    for cl in (False, True):
        for det in (False, True):
            _run_native(ops, case, case[-1][-1], cl, "cuda", det)
torch.cuda.synchronize()
"""


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("tool", ["memcheck", "racecheck"])
def test_device_compute_sanitizer(tool):
    _device_ops()
    sanitizer = shutil.which("compute-sanitizer")
    if sanitizer is None:
        pytest.skip("compute-sanitizer not on the PATH")
    script = SANITIZER_SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sanitizer, "--tool", tool, "--error-exitcode", "3", sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

