"""The eager training route through the C++ autograd Function (autograd.apply_native, csrc/direct_conv.cpp): taken
exactly where dispatch.training_route says, the same results as the Python Function route (bit for bit) and as
float64, for every subset of inputs needing a gradient, poisoned outputs, and the cases it hands back."""
import pytest
import torch
import torch.nn.functional as F

import dwconv
from dwconv import config, dispatch, outputs, remembered
from dwconv._conv_args import check_and_resolve
from conftest import require_backend

pytestmark = pytest.mark.skipif(dwconv._extension.direct_entry("train_conv") is None,
                                reason="dwconv._C built without train_conv")


def _operands(channels_last=False, dtype=torch.float32, n=2, c=3, h=9, w=7):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randn(c, 1, 5, 3, generator=g, dtype=dtype), torch.randn(c, generator=g, dtype=dtype)


def _is_native(y):
    return "dwconv::DirectDepthwiseConv2d" in y.grad_fn.name()


def _force_python_route(monkeypatch):
    """Later calls take the Python Function route (and are not made again from the remembered calls)."""
    monkeypatch.setattr(dispatch, "training_route", lambda *args: ("python", None))
    remembered.forget()


def _step(x, w, b, needs, backend="cpu"):
    leaves = [t.clone().requires_grad_(need) for t, need in zip((x, w, b), needs)]
    y = dwconv.depthwise_conv2d(*leaves, 1, (2, 1), backend=backend)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=y.dtype).to(y.device).contiguous(
        memory_format=torch.channels_last if not x.is_contiguous() else torch.contiguous_format)
    wanted = [t for t in leaves if t.requires_grad]
    return y, torch.autograd.grad(y, wanted, gy), gy


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("needs", [(True, True, True), (True, False, False), (False, True, False),
                                   (False, False, True), (True, True, False)], ids=str)
def test_native_route_equals_the_python_route_and_float64(channels_last, needs, monkeypatch):
    require_backend("cpu", "cpu")
    x, w, b = _operands(channels_last)
    y, grads, gy = _step(x, w, b, needs)
    assert _is_native(y)
    _force_python_route(monkeypatch)
    y_py, grads_py, _ = _step(x, w, b, needs)
    assert type(y_py.grad_fn).__name__ == "DirectDepthwiseConv2dBackward"
    assert torch.equal(y, y_py) and y.is_contiguous(memory_format=torch.channels_last) == channels_last
    for got, want in zip(grads, grads_py):
        assert torch.equal(got, want)
        assert got.stride() == want.stride()
    leaves = [t.double().requires_grad_(need) for t, need in zip((x, w, b), needs)]
    ref = F.conv2d(F.pad(leaves[0], (1, 1, 2, 2)), leaves[1], leaves[2], groups=3)
    ref_grads = torch.autograd.grad(ref, [t for t in leaves if t.requires_grad], gy.double())
    for got, want in zip(grads, ref_grads):
        assert ((got.double() - want).norm() / want.norm()).item() < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_bias_gradients_of_64k_elements_and_more_match_the_python_route(dtype, monkeypatch):
    """From 64K elements the bias gradient of fp32 / bf16 is the extension's channel sum on both routes."""
    require_backend("cpu", "cpu")
    x, w, b = _operands(dtype=dtype, n=2, c=32, h=32, w=33)
    y, grads, _ = _step(x, w, b, (True, True, True))
    assert _is_native(y) and y.numel() >= 1 << 16
    _force_python_route(monkeypatch)
    _, grads_py, _ = _step(x, w, b, (True, True, True))
    for got, want in zip(grads, grads_py):
        assert torch.equal(got, want)


def test_poisoned_outputs_are_all_written():
    """With the tests' poisoning on, the C++ route fills its outputs with NaN before the kernels run too."""
    require_backend("cpu", "cpu")
    x, w, b = _operands()
    old = outputs.POISON_OUTPUTS
    outputs.POISON_OUTPUTS = True
    try:
        y, grads, _ = _step(x, w, b, (True, True, True))
    finally:
        outputs.POISON_OUTPUTS = old
    assert _is_native(y)
    assert not torch.isnan(y).any() and not any(torch.isnan(g).any() for g in grads)


def test_double_backward_and_deterministic_wgrad():
    require_backend("cpu", "cpu")
    x, w, b = _operands()
    xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
    y = dwconv.depthwise_conv2d(xs, ws, bs, 1, 1, backend="cpu")
    assert _is_native(y)
    dx, dw = torch.autograd.grad(y.square().sum(), (xs, ws), create_graph=True)
    second = torch.autograd.grad(dx.square().sum() + dw.sum(), (xs, ws, bs))
    xd, wd, bd = (t.double().requires_grad_() for t in (x, w, b))
    yd = F.conv2d(xd, wd, bd, 1, 1, 1, 3)
    dxd, dwd = torch.autograd.grad(yd.square().sum(), (xd, wd), create_graph=True)
    expected = torch.autograd.grad(dxd.square().sum() + dwd.sum(), (xd, wd, bd))
    for got, want in zip(second, expected):
        assert ((got.double() - want).norm() / want.norm()).item() < 1e-5
    torch.use_deterministic_algorithms(True)
    try:
        runs = [_step(x, w, b, (True, True, True))[1] for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(False)
    assert all(torch.equal(a, c) for a, c in zip(*runs))


def test_the_python_route_takes_what_the_native_route_does_not():
    """Large CPU outputs (the output pool), plans that are not all native, and operands the C++ entry declines
    (a non-contiguous weight) take the Python Function; results stay right."""
    require_backend("cpu", "cpu")
    x, w, b = _operands()
    args = check_and_resolve(x, w, b, 1, (2, 1), 1)
    assert dispatch.training_route("cpu", x, args)[0] == "native"
    assert dispatch.training_route("torch", x, args)[0] == "torch"
    big = torch.randn(4, 64, 96, 96)
    big_args = check_and_resolve(big, torch.randn(64, 1, 3, 3), None, 1, 1, 1)
    assert dispatch.training_route("cpu", big, big_args)[0] == "python", "a 9 MiB output comes from the pool"
    w_strided = torch.randn(3, 1, 3, 5)[:, :, :, 1:4].requires_grad_()
    xs = x.clone().requires_grad_()
    y = dwconv.depthwise_conv2d(xs, w_strided, None, 1, (2, 1), backend="cpu")
    assert type(y.grad_fn).__name__ == "DirectDepthwiseConv2dBackward"
    gx, gw = torch.autograd.grad(y.sum(), (xs, w_strided))
    xd, wd = x.double().requires_grad_(), w_strided.detach().double().requires_grad_()
    ref = F.conv2d(F.pad(xd, (1, 1, 2, 2)), wd, None, groups=3)
    for got, want in zip((gx, gw), torch.autograd.grad(ref.sum(), (xd, wd))):
        assert ((got.double() - want).norm() / want.norm()).item() < 1e-6


def test_benchmark_mode_takes_the_native_route_once_all_ops_were_timed():
    require_backend("cpu", "cpu")
    x, w, b = _operands()
    dispatch.clear_decisions()
    with config.override(benchmark=True, dispatch_table=False):
        monkey = {}
        import dwconv.benchmark as benchmark
        original = benchmark.choose

        def choose_cpu(op, x_, args_, run):  # make every timed choice the cpu kernels', deterministically
            plan = dispatch.plan_for("cpu", op, x_, args_)
            monkey[op] = plan
            return plan, run(plan)
        benchmark.choose = choose_cpu
        try:
            y1, _, _ = _step(x, w, b, (True, True, True), backend="auto")
            y2, _, _ = _step(x, w, b, (True, True, True), backend="auto")
        finally:
            benchmark.choose = original
    dispatch.clear_decisions()
    assert type(y1.grad_fn).__name__ == "DirectDepthwiseConv2dBackward", "nothing timed at the first call"
    assert set(monkey) == {"fwd", "dgrad", "wgrad"}
    assert _is_native(y2), "all three timed choices are the cpu kernels"


def test_batched_gradients_with_a_bias_of_64k_elements_and_more():
    """autograd.grad(is_grads_batched=True): the bias gradient of a batched gradient is PyTorch's sum (the native
    sum has no batching rule), as on the Python route."""
    require_backend("cpu", "cpu")
    x, w, b = _operands(n=1, c=16, h=64, w=64)
    xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
    y = dwconv.depthwise_conv2d(xs, ws, bs, 1, (2, 1), backend="cpu")
    assert _is_native(y) and y.numel() >= 1 << 16
    gys = torch.randn(3, *y.shape)
    batched = torch.autograd.grad(y, (xs, ws, bs), gys, is_grads_batched=True, retain_graph=True)
    for i in range(3):
        one = torch.autograd.grad(y, (xs, ws, bs), gys[i], retain_graph=True)
        for got, want in zip(batched, one):
            assert ((got[i].double() - want.double()).norm() / want.double().norm()).item() < 1e-5


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_saved_tensor_hooks_that_change_the_layout(channels_last):
    """An unpack hook may return x in another layout (save_on_cpu repacks into NCHW): the backward then goes
    through the differentiable ops, which convert, and the gradients stay right."""
    require_backend("cpu", "cpu")
    x, w, b = _operands(channels_last)
    xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
    flip = torch.contiguous_format if channels_last else torch.channels_last
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t.contiguous(memory_format=flip)):
        y = dwconv.depthwise_conv2d(xs, ws, bs, 1, (2, 1), backend="cpu")
    assert _is_native(y)
    grads = torch.autograd.grad(y.sum(), (xs, ws, bs))
    xd, wd, bd = (t.double().requires_grad_() for t in (x, w, b))
    ref = F.conv2d(F.pad(xd, (1, 1, 2, 2)), wd, bd, groups=3)
    for got, want in zip(grads, torch.autograd.grad(ref.sum(), (xd, wd, bd))):
        assert ((got.double() - want).norm() / want.norm()).item() < 1e-5


def test_one_pixel_outputs_of_channels_last_inputs(monkeypatch):
    """A 1x1 output map is NCHW and channels_last at once; dx then has the Python route's strides."""
    require_backend("cpu", "cpu")
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 4, 8, 8, generator=g).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, generator=g)
    results = []
    for native in (True, False):
        if not native:
            _force_python_route(monkeypatch)
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
        y = dwconv.depthwise_conv2d(xs, ws, bs, backend="cpu")
        assert _is_native(y) == native
        results.append((y, *torch.autograd.grad(y.sum(), (xs, ws, bs))))
    for got, want in zip(*results):
        assert torch.equal(got, want) and got.stride() == want.stride()


def test_input_gradients_of_4mib_and_more_take_the_python_route():
    """A strided conv's small output can have a large input gradient: it comes from the output pool, so the call
    takes the Python route."""
    x = torch.randn(1, 64, 256, 128)
    args = check_and_resolve(x, torch.randn(64, 1, 3, 3), None, 2, 1, 1)
    assert dispatch.training_route("cpu", x, args)[0] == "python"


@pytest.mark.gpu
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_cuda_native_route_equals_the_python_route(channels_last, monkeypatch):
    """On a GPU with backend "cuda": the C++ Function's outputs and gradients bit-equal the Python Function's."""
    require_backend("cuda", "cuda")
    x, w, b = (t.cuda() for t in _operands(channels_last))
    y, grads, _ = _step(x, w, b, (True, True, True), backend="cuda")
    assert _is_native(y)
    _force_python_route(monkeypatch)
    y_py, grads_py, _ = _step(x, w, b, (True, True, True), backend="cuda")
    assert torch.equal(y, y_py)
    for got, want in zip(grads, grads_py):
        assert torch.equal(got, want) and got.stride() == want.stride()
