"""Derivatives of every order and in every mode: double backward, forward-mode AD, the torch.func transforms
(grad, jvp, vmap, jacrev, jacfwd, hessian, nestings) and the vmap rules of the three ops, in float64
against F.conv2d."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vmap

import dwconv
from conftest import require_backend
from utils import assert_close

F64 = torch.float64
# A geometry that exercises every argument: channel multiplier 2, per-dim stride, asymmetric padding,
# dilation, a non-square kernel.
STRIDE, PADDING, DILATION = (1, 2), (1, 0, 2, 1), (2, 1)


def _inputs(n=2, c=2, h=6, w=5, kernel=(3, 2), multiplier=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=F64)
    weight = torch.randn(c * multiplier, 1, *kernel, generator=g, dtype=F64)
    bias = torch.randn(c * multiplier, generator=g, dtype=F64)
    return x, weight, bias


def _dw(backend, stride=STRIDE, padding=PADDING, dilation=DILATION):
    return lambda x, w, b=None: dwconv.depthwise_conv2d(x, w, b, stride, padding, dilation, backend=backend)


def _ref(stride=STRIDE, padding=PADDING, dilation=DILATION):
    pt, pb, pl, pr = padding

    def conv(x, w, b=None):
        return F.conv2d(F.pad(x, (pl, pr, pt, pb)), w, b, stride, 0, dilation, groups=x.shape[-3])
    return conv


def _close(actual, expected, what):
    if isinstance(expected, (tuple, list)):
        assert len(actual) == len(expected), what
        for i, (a, e) in enumerate(zip(actual, expected)):
            _close(a, e, f"{what}[{i}]")
        return
    assert_close(actual, expected, F64, what)


def _requiring_grad(*tensors):
    return tuple(t.clone().requires_grad_(True) for t in tensors)


# gradcheck / gradgradcheck: cpu in full on the whole geometry; torch (PyTorch's own float64 conv, slow on
# the CPU) in fast mode; triton in the interpreter (a quarter second per launch) in fast mode on a small case,
# without the undefined-gradient pass (the same for every backend), about 40 launches.
def _check_case(backend):
    if backend == "triton":
        x, w, b = _inputs(n=1, c=2, h=4, w=3, kernel=(2, 3), multiplier=2)
        return _dw(backend, (1, 2), (1, 0, 0, 1), 1), (x, w, b), True
    return _dw(backend), _inputs(n=1, h=5, w=4), backend != "cpu"


@pytest.mark.parametrize("backend", ["cpu", "torch", "triton"])
def test_gradgradcheck(backend):
    """Backward of the backward (x, weight, bias): reverse-over-reverse, and forward-over-reverse (Hessian-vector
    products) on the CPU kernels."""
    require_backend(backend, "cpu")
    conv, inputs, fast = _check_case(backend)
    inputs = _requiring_grad(*inputs)
    assert torch.autograd.gradgradcheck(conv, inputs, fast_mode=fast, check_fwd_over_rev=backend == "cpu",
                                        check_undefined_grad=backend != "triton")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton", "torch"])
def test_gradgradcheck_and_forward_ad_on_gpu(backend):
    require_backend(backend, "cuda")
    inputs = _requiring_grad(*(t.cuda() for t in _inputs(n=1, h=5, w=4)))
    conv = _dw(backend)
    nondet_tol = 1e-12  # weight gradients summed with atomics: float64 rounding may differ between runs
    assert torch.autograd.gradgradcheck(conv, inputs, check_fwd_over_rev=True, nondet_tol=nondet_tol)
    assert torch.autograd.gradcheck(conv, inputs, check_forward_ad=True, check_batched_forward_grad=True,
                                    check_batched_grad=True, nondet_tol=nondet_tol)
    x, w, b = (t.detach() for t in inputs)
    _close(torch.func.hessian(lambda x: conv(x, w, b).sin().sum())(x[:, :, :4, :4]),
           torch.func.hessian(lambda x: _ref()(x, w, b).sin().sum())(x[:, :, :4, :4]), "hessian")


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_forward_ad_gradcheck(backend):
    require_backend(backend, "cpu")
    conv, inputs, fast = _check_case(backend)
    inputs = _requiring_grad(*inputs)
    assert torch.autograd.gradcheck(conv, inputs, fast_mode=fast, check_forward_ad=True,
                                    check_batched_forward_grad=not fast, check_batched_grad=not fast)


def test_dgrad_and_wgrad_have_derivatives_of_every_order():
    """dgrad and wgrad themselves: backward, double backward and forward AD (third derivatives of the conv)."""
    x, w, _ = _inputs(n=1, h=5, w=4)
    args = (list(STRIDE), list(PADDING), list(DILATION), "cpu")
    gy = torch.randn_like(_ref()(x, w))
    dgrad = lambda g, w: torch.ops.dwconv.dgrad(g, w, list(x.shape), *args)  # noqa: E731
    wgrad = lambda g, x: torch.ops.dwconv.wgrad(g, x, list(w.shape), *args)  # noqa: E731
    for op, inputs in ((dgrad, (gy, w)), (wgrad, (gy, x))):
        inputs = _requiring_grad(*inputs)
        assert torch.autograd.gradcheck(op, inputs, check_forward_ad=True, check_batched_grad=True)
        assert torch.autograd.gradgradcheck(op, inputs, check_fwd_over_rev=True)


def test_opcheck_of_dgrad_and_wgrad_with_gradients():
    """opcheck with inputs that require grad: the autograd registration of dgrad and wgrad, and their
    backward traced by AOTAutograd (the forward op's is in test_integration.py)."""
    x, w, _ = (t.float() for t in _inputs())
    gy = torch.randn_like(_ref()(x, w))
    args = (list(STRIDE), list(PADDING), list(DILATION), "cpu")
    x, w, gy = _requiring_grad(x, w, gy)
    torch.library.opcheck(torch.ops.dwconv.dgrad.default, (gy, w, list(x.shape), *args))
    torch.library.opcheck(torch.ops.dwconv.wgrad.default, (gy, x, list(w.shape), *args))


def test_derivative_math_against_conv2d():
    """The formulas, not only their consistency: dgrad / wgrad values and their gradients equal autograd
    of F.conv2d's own input / weight gradients."""
    x, w, _ = _inputs()
    gy = torch.randn_like(_ref()(x, w))
    args = (list(STRIDE), list(PADDING), list(DILATION), "cpu")

    def ref_dx(gy, w):
        return torch.autograd.grad(_ref()(x.requires_grad_(True), w), x, gy, create_graph=True)[0]

    def ref_dw(gy, x):
        return torch.autograd.grad(_ref()(x, w.requires_grad_(True)), w, gy, create_graph=True)[0]

    g_dx, g_dw = torch.randn_like(x), torch.randn_like(w)
    for op, ref, inputs, g in (
            (lambda gy, w: torch.ops.dwconv.dgrad(gy, w, list(x.shape), *args), ref_dx, (gy, w), g_dx),
            (lambda gy, x: torch.ops.dwconv.wgrad(gy, x, list(w.shape), *args), ref_dw, (gy, x), g_dw)):
        a, e = _requiring_grad(*inputs), _requiring_grad(*inputs)
        out, out_ref = op(*a), ref(*e)
        _close(out, out_ref, "value")
        _close(torch.autograd.grad(out, a, g), torch.autograd.grad(out_ref, e, g), "gradients")


@pytest.mark.parametrize("grad_mode", [True, False])
def test_dual_tensors(grad_mode):
    """torch.autograd.forward_ad directly, with grad mode on or off (forward AD ignores it, as for aten ops),
    on a channels_last input."""
    import torch.autograd.forward_ad as fwAD
    x, w, b = _inputs()
    x = x.contiguous(memory_format=torch.channels_last)
    x_t, w_t = torch.randn_like(x), torch.randn_like(w)
    tangents = []
    for conv in (_dw("cpu"), _ref()):
        with fwAD.dual_level(), torch.set_grad_enabled(grad_mode):
            y = conv(fwAD.make_dual(x, x_t), fwAD.make_dual(w, w_t), b)
            tangents.append(fwAD.unpack_dual(y).tangent)
    _close(tangents[0], tangents[1], "tangent")


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_torch_func_transforms_match_conv2d(backend):
    x, w, b = _inputs()
    conv, ref = _dw(backend), _ref()

    def loss(fn):
        return lambda x, w, b: fn(x, w, b).sin().sum()

    _close(grad(loss(conv), argnums=(0, 1, 2))(x, w, b), grad(loss(ref), argnums=(0, 1, 2))(x, w, b), "grad")
    tangents = tuple(torch.randn_like(t) for t in (x, w, b))
    _close(jvp(conv, (x, w, b), tangents), jvp(ref, (x, w, b), tangents), "jvp")
    _close(jvp(lambda b: conv(x, w, b), (b,), (tangents[2],)), jvp(lambda b: ref(x, w, b), (b,), (tangents[2],)),
           "jvp of the bias alone")
    small = x[:1, :, :4, :4]
    _close(jacrev(conv, argnums=(0, 1, 2))(small, w, b), jacrev(ref, argnums=(0, 1, 2))(small, w, b), "jacrev")
    _close(jacfwd(conv, argnums=(0, 1, 2))(small, w, b), jacfwd(ref, argnums=(0, 1, 2))(small, w, b), "jacfwd")
    _close(hessian(loss(conv), argnums=(0, 1))(small, w, b), hessian(loss(ref), argnums=(0, 1))(small, w, b),
           "hessian (jacfwd of jacrev)")

    def grad_of_grad(fn):
        return grad(lambda x, w: grad(loss(fn), argnums=1)(x, w, b).cos().sum(), argnums=(0, 1))
    _close(grad_of_grad(conv)(x, w), grad_of_grad(ref)(x, w), "grad of grad")

    def per_sample_grads(fn):
        return vmap(grad(lambda w, x: loss(fn)(x[None], w, b), argnums=0), in_dims=(None, 0))(w, x)
    _close(per_sample_grads(conv), per_sample_grads(ref), "per-sample weight gradients")


@pytest.mark.parametrize("in_dims", [(0, None, None), (None, 0, 0), (1, 0, None), (2, None, 0)])
def test_vmap_of_the_forward(in_dims):
    """vmap over activations (folded into the batch), weights or bias (folded into the channels), or both;
    an unbatched input is channels_last."""
    x, w, b = _inputs()
    x = x.contiguous(memory_format=torch.channels_last)
    batched = [torch.randn(3, *t.shape, dtype=F64).movedim(0, d) if d is not None else t
               for t, d in zip((x, w, b), in_dims)]
    _close(vmap(_dw("cpu"), in_dims=in_dims)(*batched), vmap(_ref(), in_dims=in_dims)(*batched), f"vmap {in_dims}")


@pytest.mark.parametrize("in_dims", [(0, None), (None, 0), (1, 0)])
def test_vmap_of_dgrad_and_wgrad(in_dims):
    x, w, _ = _inputs()
    args = (list(STRIDE), list(PADDING), list(DILATION), "cpu")
    gy = torch.randn_like(_ref()(x, w))
    ops = {"dgrad": (lambda g, w: torch.ops.dwconv.dgrad(g, w, list(x.shape), *args), (gy, w)),
           "wgrad": (lambda g, x: torch.ops.dwconv.wgrad(g, x, list(w.shape), *args), (gy, x))}
    for name, (op, inputs) in ops.items():
        stacks = [torch.randn(3, *t.shape, dtype=F64) if d is not None else t for t, d in zip(inputs, in_dims)]
        batched = [s.movedim(0, d) if d is not None else s for s, d in zip(stacks, in_dims)]
        expected = torch.stack([op(*[s[i] if d is not None else s for s, d in zip(stacks, in_dims)])
                                for i in range(3)])
        _close(vmap(op, in_dims=in_dims)(*batched), expected, f"vmap of {name} {in_dims}")


def _small_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 5, padding=2, groups=6), nn.GELU(),
                         nn.Conv2d(6, 12, 3, stride=2, padding=1, groups=6), nn.Tanh(), nn.Conv2d(12, 2, 1))


def test_gradient_penalty_and_hessian_vector_product_in_a_converted_model():
    """create_graph=True through a converted model: a gradient penalty's parameter gradients and a
    Hessian-vector product equal the nn.Conv2d model's (float32)."""
    plain = _small_net()
    fast = dwconv.convert(_small_net())
    x = torch.randn(2, 3, 12, 12)

    def penalty_grads(model):
        xi = x.clone().requires_grad_(True)
        (gx,) = torch.autograd.grad(model(xi).square().sum(), xi, create_graph=True)
        penalty = gx.square().sum()
        return torch.autograd.grad(penalty, list(model.parameters()))

    for got, want in zip(penalty_grads(fast), penalty_grads(plain)):
        assert_close(got, want.double(), torch.float32, "gradient-penalty parameter gradient", factor=10)
    v = torch.randn_like(x)
    _, hvp = torch.autograd.functional.hvp(lambda xi: fast(xi).sin().sum(), x, v)
    _, hvp_ref = torch.autograd.functional.hvp(lambda xi: plain(xi).sin().sum(), x, v)
    assert_close(hvp, hvp_ref.double(), torch.float32, "Hessian-vector product", factor=10)


def test_autograd_kernels_register_where_library_impl_refuses_overrides():
    """torch 2.11's Library.impl defaults to allow_override=False (`import dwconv` failed there on the lent H200
    before the registration passed it): with this torch's impl wrapped that way, dwconv imports and its own
    Autograd kernels run (a double backward, which custom_op's kernel cannot do). The dispatcher's warning about
    the replacement (printed by 2.11, silenced by dwconv) must not surface where the running torch emits it."""
    script = """
import warnings
import torch, torch.library
impl = torch.library.Library.impl
def impl_2_11(self, op_name, fn, dispatch_key="", *, with_keyset=False, allow_override=False):
    return impl(self, op_name, fn, dispatch_key, with_keyset=with_keyset, allow_override=allow_override)
torch.library.Library.impl = impl_2_11
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import dwconv
assert not [w for w in caught if "Overriding" in str(w.message)], [str(w.message) for w in caught]
x = torch.randn(1, 2, 6, 6, dtype=torch.float64, requires_grad=True)
w = torch.randn(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
assert torch.autograd.gradgradcheck(lambda x, w: dwconv.depthwise_conv2d(x, w, None, 1, 1, backend="torch"), (x, w))
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def _events(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events()]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("direct", ["native", "python"])
def test_eager_training_skips_the_dispatcher_with_the_ops_results(channels_last, dtype, direct, monkeypatch):
    """An eager forward that records a gradient runs without the custom op, for the per-call cost: as one C++
    autograd Function where all three ops run native kernels (autograd.apply_native), else under a Python
    autograd.Function running the ops' bodies (autograd.DirectDepthwiseConv2d). Output and gradients equal the
    custom op's bit for bit, and match float64; the op itself does not run."""
    require_backend("cpu", "cpu")
    if direct == "python":
        monkeypatch.setattr(dwconv.dispatch, "training_route", lambda *args: ("python", None))
        dwconv.remembered.forget()
    node = {"native": "CppNode<dwconv::DirectDepthwiseConv2d>", "python": "DirectDepthwiseConv2dBackward"}[direct]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x, w, b = (t.to(dtype) for t in _inputs(n=3, c=4, h=11, w=9, kernel=(5, 3)))
    x = x.contiguous(memory_format=fmt)
    gy = torch.randn_like(_ref()(x, w, b)).contiguous(memory_format=fmt)
    conv = (list(STRIDE), list(PADDING), list(DILATION), "cpu")
    results = {}
    for route, call in (("direct", _dw("cpu")),
                        ("op", lambda x, w, b: torch.ops.dwconv.depthwise_conv2d(x, w, b, *conv))):
        xs, ws, bs = _requiring_grad(x, w, b)
        y = call(xs, ws, bs)
        assert (node in type(y.grad_fn).__name__ or node in y.grad_fn.name()) == (route == "direct")
        names = _events(lambda: results.__setitem__(route, (y, *torch.autograd.grad(y, (xs, ws, bs), gy))))
        assert "dwconv::dgrad" not in names or route == "op"
        assert "dwconv::native_dgrad" in names  # the cpu backend's kernel on every route
    for direct_result, op, what in zip(results["direct"], results["op"], ("y", "dx", "dw", "db")):
        assert torch.equal(direct_result, op), what
        assert direct_result.is_contiguous(memory_format=fmt) == op.is_contiguous(memory_format=fmt), what
    expected = _ref()(*(t.double().requires_grad_() for t in (x, w, b)))
    assert_close(results["direct"][0], expected, dtype, "y")


def test_eager_double_backward_goes_through_the_ops():
    """create_graph=True: the direct path's backward calls the differentiable ops, so second derivatives
    equal the op route's."""
    require_backend("cpu", "cpu")
    x, w, b = _inputs()
    seconds = []
    for call in (_dw("cpu"), lambda x, w, b: torch.ops.dwconv.depthwise_conv2d(
            x, w, b, list(STRIDE), list(PADDING), list(DILATION), "cpu")):
        xs, ws, bs = _requiring_grad(x, w, b)
        y = call(xs, ws, bs)
        dx, dw = torch.autograd.grad((y * y).sum(), (xs, ws), create_graph=True)
        seconds.append(torch.autograd.grad((dx.square().sum() + dw.sum()), (xs, ws, bs)))
    for a, e, what in zip(*seconds, ("x", "w", "b")):
        assert torch.equal(a, e), what
    xs, ws, bs = _requiring_grad(x, w, b)
    assert torch.autograd.gradgradcheck(_dw("cpu"), (xs, ws, bs))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("route", ["functional", "op"])
def test_batched_gradients_in_both_layouts(channels_last, route):
    """autograd.grad(is_grads_batched=True) (legacy vmap over the backward) matches F.conv2d's, channels_last
    included (legacy vmap cannot query channels_last contiguity, so the gradient is not re-laid out)."""
    require_backend("cpu", "cpu")
    x, w, b = _inputs(n=2, c=3, h=7, w=6, kernel=(3, 3), multiplier=1)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    conv = (list(STRIDE), list(PADDING), list(DILATION), "cpu")
    call = _dw("cpu") if route == "functional" else (
        lambda x, w, b: torch.ops.dwconv.depthwise_conv2d(x, w, b, *conv))
    grads = torch.randn(4, *_ref()(x, w, b).shape, dtype=F64)
    inputs = _requiring_grad(x, w, b)
    got = torch.autograd.grad(call(*inputs), inputs, grads, is_grads_batched=True)
    inputs = _requiring_grad(x, w, b)
    expected = torch.autograd.grad(_ref()(*inputs), inputs, grads, is_grads_batched=True)
    _close(got, expected, "batched grads")
