"""The bias gradient: the native channel sums (csrc/cpu/channel_sums.cpp) against a float64 reference, and
dwconv.bias_grad choosing them only where nothing needs the plain sum."""
import pytest
import torch

import dwconv
from dwconv import _extension
from dwconv.bias_grad import NATIVE_SUM_DTYPES, NATIVE_SUM_MIN_ELEMENTS, bias_grad
from utils import TOLERANCE, assert_close

pytestmark = pytest.mark.skipif(not _extension.has_channel_sums(), reason="extension built without CPU kernels")

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
# (N, C, H, W): channel counts around the 16 lanes, planes shorter and longer than 16, fewer pixels than the
# 64 channels_last chunks, a large Robust-ResNet gradient
SHAPES = [(2, 5, 3, 3), (3, 17, 7, 9), (1, 40, 1, 1), (4, 96, 14, 14), (2, 3, 56, 56), (8, 1536, 14, 14)]


def _sums(t):
    out = torch.full((t.shape[1],), float("nan"), dtype=torch.float64 if t.dtype == torch.float64 else torch.float32)
    torch.ops.dwconv.native_channel_sums(t, out)
    return out


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_native_channel_sums_match_reference(shape, dtype, channels_last):
    g = torch.Generator().manual_seed(sum(shape))
    t = (torch.randn(shape, generator=g) + 0.25).to(dtype)  # a mean away from zero: sums are not ~0
    if channels_last:
        t = t.contiguous(memory_format=torch.channels_last)
    expected = t.double().sum(dim=(0, 2, 3))
    # fp32 accumulation of values given in the dtype: compare at the fp32 level (fp64: fp64)
    assert_close(_sums(t), expected, torch.float64 if dtype == torch.float64 else torch.float32, "channel sums")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_native_channel_sums_do_not_depend_on_threads(channels_last):
    t = torch.randn(6, 70, 9, 11, dtype=torch.bfloat16)
    if channels_last:
        t = t.contiguous(memory_format=torch.channels_last)
    old = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 2):
            torch.set_num_threads(threads)
            results.append(_sums(t))
    finally:
        torch.set_num_threads(old)
    assert all(torch.equal(results[0], r) for r in results[1:])


def test_native_channel_sums_reject_bad_arguments():
    t = torch.randn(2, 8, 5, 5)
    with pytest.raises(RuntimeError, match="contiguous"):
        torch.ops.dwconv.native_channel_sums(t[:, :, :, 1:], torch.empty(8))
    with pytest.raises(RuntimeError, match="out must be"):
        torch.ops.dwconv.native_channel_sums(t, torch.empty(8, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="out must be"):
        torch.ops.dwconv.native_channel_sums(t, torch.empty(7))
    with pytest.raises(RuntimeError, match="4-D"):
        torch.ops.dwconv.native_channel_sums(t[0], torch.empty(8))
    with pytest.raises(RuntimeError, match="float32, float64, bfloat16 or float16"):
        torch.ops.dwconv.native_channel_sums(t.to(torch.int32), torch.empty(8))


def _ran_native(fn) -> bool:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return any(e.name == "dwconv::native_channel_sums" for e in prof.events())


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_backward_bias_gradient(dtype):
    """The bias gradient of a CPU backward matches the float64 reference, through the native sums for fp32 / bf16
    and PyTorch's sum for the other dtypes."""
    conv = dwconv.FastDWConv(24, 24, 7, padding=3, groups=24).to(dtype)
    x = torch.randn(3, 24, 32, 32, dtype=dtype, requires_grad=True)  # above NATIVE_SUM_MIN_ELEMENTS
    gy = torch.randn(3, 24, 32, 32, dtype=dtype)
    y = conv(x)
    native = _ran_native(lambda: y.backward(gy))
    assert native == (dtype in NATIVE_SUM_DTYPES)
    assert_close(conv.bias.grad, gy.double().sum(dim=(0, 2, 3)), dtype, "bias grad")


def test_bias_grad_keeps_the_sum_where_a_graph_is_recorded():
    """Under create_graph (double backward) grad_out requires grad: the result must stay differentiable."""
    gy = torch.randn(2, 16, 48, 48, requires_grad=True)  # above NATIVE_SUM_MIN_ELEMENTS
    with torch.enable_grad():
        db = bias_grad(gy)
    assert db.requires_grad
    (g2,) = torch.autograd.grad(db.sum(), gy)
    assert torch.equal(g2, torch.ones_like(gy))
    assert not _ran_native(lambda: bias_grad(gy.detach().requires_grad_()))
    assert _ran_native(lambda: bias_grad(gy.detach()))


def test_bias_grad_of_a_small_gradient_is_pytorchs_sum():
    """Below NATIVE_SUM_MIN_ELEMENTS the per-call cost decides: PyTorch's sum, with the same values."""
    gy = torch.randn(1, 8, 9, 9)
    assert gy.numel() < NATIVE_SUM_MIN_ELEMENTS and not _ran_native(lambda: bias_grad(gy))
    assert_close(bias_grad(gy), gy.double().sum(dim=(0, 2, 3)), torch.float32, "bias grad")


def test_bias_grad_under_torch_func():
    """torch.func.grad through a converted conv: the bias gradient is right, and it comes from PyTorch's sum (the
    native op cannot see through functorch's wrapped tensors)."""
    conv = dwconv.FastDWConv(8, 8, 5, padding=2, groups=8)
    params = dict(conv.named_parameters())
    x = torch.randn(2, 8, 9, 9)

    def loss(p):
        return torch.func.functional_call(conv, p, (x,)).sum()

    assert not _ran_native(lambda: torch.func.grad(loss)(params))
    db = torch.func.grad(loss)(params)["bias"]
    assert_close(db, torch.full((8,), 2 * 9 * 9, dtype=torch.float64), torch.float32, "bias grad")
