"""Every backend against the float64 PyTorch reference: forward, dx, dw, db."""
import pytest
import torch

import dwconv
from conftest import backend_devices, require_backend
from utils import assert_close, make_inputs, poisoned_outputs, reference_grads
from dwconv._conv_args import resolve_padding

# (n, c, h, w, kernel, stride, padding, dilation, multiplier, bias): a covering set, not a product.
CASES = [
    (2, 3, 9, 9, 3, 1, 1, 1, 1, True),
    (1, 4, 14, 14, 11, 1, 5, 1, 1, True),          # Robust-ResNet 14x14 k11
    (2, 4, 7, 7, 11, 1, 5, 1, 1, True),            # 7x7 k11: every output sees the whole plane
    (2, 3, 14, 14, 7, 2, 3, 1, 2, True),           # stride 2, multiplier 2
    (3, 2, 13, 10, (3, 5), 1, (1, 2), 1, 1, False),  # non-square kernel, odd sizes, no bias
    (1, 2, 11, 12, 5, 1, "same", 2, 1, True),      # dilation 2
    (2, 2, 12, 9, 4, 1, "same", 1, 1, True),       # even kernel: asymmetric "same" padding
    (1, 3, 1, 1, 3, 1, 1, 1, 1, True),             # 1x1 map
    (2, 3, 10, 11, 3, 3, 0, 1, 3, True),           # stride 3, valid, multiplier 3
    (2, 2, 9, 16, 7, (2, 1), (3, 1), (1, 2), 1, True),  # per-dim stride/padding/dilation
    (1, 2, 16, 16, 31, 1, 15, 1, 1, True),         # K=31
    (2, 4, 15, 15, 11, 2, 5, 1, 1, True),          # stride 2 K11 on an odd map (dgrad stride phases)
    (2, 3, 1, 6, 3, 2, 1, 1, 2, True),             # one row, stride 2: a stride phase without pixels
]
DTYPES = [torch.float32, torch.bfloat16]


def _case_id(case):
    n, c, h, w, k, s, p, d, m, b = case
    return f"n{n}c{c}_{h}x{w}_k{k}_s{s}_p{p}_d{d}_m{m}" + ("" if b else "_nobias")


def run_case(backend, device, case, dtype, channels_last):
    n, c, h, w, k, stride, padding, dilation, mult, bias = case
    x, wt, bt = make_inputs(n, c, h, w, k, mult, dtype, device, channels_last, bias)
    x.requires_grad_(True)
    wt.requires_grad_(True)
    if bt is not None:
        bt.requires_grad_(True)
    with poisoned_outputs():
        y = dwconv.depthwise_conv2d(x, wt, bt, stride, padding, dilation, backend=backend)
        grad_out = torch.randn_like(y)
        y.backward(grad_out)
    args = dwconv._conv_args.check_and_resolve(x, wt, bt, stride, padding, dilation)
    y_ref, dx_ref, dw_ref, db_ref = reference_grads(x, wt, bt, grad_out, args.stride, args.padding, args.dilation)
    assert y.dtype == dtype and y.shape == y_ref.shape
    assert_close(y, y_ref, dtype, "forward")
    assert_close(x.grad, dx_ref, dtype, "dx")
    assert_close(wt.grad, dw_ref, dtype, "dw")
    if bt is not None:
        assert_close(bt.grad, db_ref, dtype, "db")
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("backend,device", backend_devices())
@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_parity(backend, device, case, dtype, channels_last):
    require_backend(backend, device)
    run_case(backend, device, case, dtype, channels_last)


@pytest.mark.parametrize("backend,device", [p for p in backend_devices() if p[1] == "cuda"])
@pytest.mark.parametrize("case", CASES[:4], ids=_case_id)
def test_parity_fp16_gpu(backend, device, case):
    require_backend(backend, device)
    run_case(backend, device, case, torch.float16, True)
    run_case(backend, device, case, torch.float16, False)


@pytest.mark.parametrize("backend,device", backend_devices())
def test_strided_views(backend, device):
    """Inputs that are views with arbitrary strides give the reference result."""
    require_backend(backend, device)
    base = torch.randn(3, 10, 20, 17, device=device)
    x = base[::2, 1::3, 2:, ::2]  # non-contiguous in every dim
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    w = torch.randn(x.shape[1] * 2, 1, 5, 5, device=device)
    b = torch.randn(x.shape[1] * 2, device=device)
    with poisoned_outputs():
        y = dwconv.depthwise_conv2d(x, w, b, 1, 2, backend=backend)
    y_ref = torch.nn.functional.conv2d(x.double().cpu(), w.double().cpu(), b.double().cpu(), 1, 2, groups=x.shape[1])
    assert_close(y, y_ref, torch.float32, "forward on a view")


@pytest.mark.parametrize("backend,device", backend_devices())
def test_unbatched_and_empty_batch(backend, device):
    require_backend(backend, device)
    x = torch.randn(4, 9, 9, device=device)
    w = torch.randn(4, 1, 3, 3, device=device)
    y = dwconv.depthwise_conv2d(x, w, None, 1, 1, backend=backend)
    assert y.shape == (4, 9, 9)
    assert_close(y, torch.nn.functional.conv2d(x.double().cpu(), w.double().cpu(), None, 1, 1, groups=4),
                 torch.float32, "unbatched")
    x0 = torch.randn(0, 4, 9, 9, device=device, requires_grad=True)
    w0 = w.clone().requires_grad_(True)
    y0 = dwconv.depthwise_conv2d(x0, w0, None, 2, 1, backend=backend)
    assert y0.shape == torch.nn.functional.conv2d(x0, w0, None, 2, 1, groups=4).shape
    y0.sum().backward()
    assert x0.grad.shape == x0.shape and torch.equal(w0.grad, torch.zeros_like(w0))


@pytest.mark.parametrize("backend,device", backend_devices())
def test_nan_inf_propagate(backend, device):
    require_backend(backend, device)
    x = torch.randn(1, 2, 8, 8, device=device)
    x[0, 0, 3, 3] = float("nan")
    x[0, 1, 5, 2] = float("inf")
    w = torch.rand(2, 1, 3, 3, device=device) + 0.1  # positive taps: inf stays inf, no inf - inf
    y = dwconv.depthwise_conv2d(x, w, None, 1, 1, backend=backend)
    y_ref = torch.nn.functional.conv2d(x, w, None, 1, 1, groups=2)
    assert torch.equal(torch.isnan(y), torch.isnan(y_ref))
    assert torch.equal(torch.isinf(y), torch.isinf(y_ref))


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_gradcheck_float64(backend):
    require_backend(backend, "cpu")
    for stride, padding, dilation, mult in [(1, 2, 1, 1), (2, (1, 3), (2, 1), 2)]:
        x = torch.randn(2, 2, 7, 8, dtype=torch.float64, requires_grad=True)
        w = torch.randn(2 * mult, 1, 3, 5, dtype=torch.float64, requires_grad=True)
        b = torch.randn(2 * mult, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(
            lambda x, w, b: dwconv.depthwise_conv2d(x, w, b, stride, padding, dilation, backend=backend),
            (x, w, b))


def test_resolve_same_padding_matches_torch():
    # PyTorch puts the odd element of "same" padding at the end.
    assert resolve_padding("same", (4, 5), (1, 1), (1, 2)) == (1, 2, 4, 4)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", [CASES[2], CASES[3], CASES[5], CASES[11]], ids=_case_id)
def test_torch_plan_grads_are_autograds(case, channels_last):
    """The torch plan makes the calls F.conv2d's autograd makes (the ones the dispatch table measured): same bits."""
    n, c, h, w, k, stride, padding, dilation, mult, bias = case
    inputs = make_inputs(n, c, h, w, k, mult, torch.float32, "cpu", channels_last, bias)
    grad_out = None
    grads = {}
    for name, conv in (("torch plan", lambda *t: dwconv.depthwise_conv2d(*t, stride, padding, dilation,
                                                                          backend="torch")),
                       ("F.conv2d", lambda *t: torch.nn.functional.conv2d(*t, stride, padding, dilation, groups=c))):
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        y = conv(*leaves)
        grad_out = torch.randn_like(y) if grad_out is None else grad_out
        y.backward(grad_out)
        grads[name] = [t.grad for t in leaves]
        assert leaves[0].grad.is_contiguous(memory_format=torch.channels_last if channels_last
                                            else torch.contiguous_format), name
    for what, ours, autograds in zip(("dx", "dw"), grads["torch plan"], grads["F.conv2d"]):  # db: dwconv sums itself
        assert torch.equal(ours, autograds), what
