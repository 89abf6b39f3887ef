"""Remembered calls (dwconv/remembered.py, csrc/remembered_calls.cpp): the functional's second eager call of a
signature runs without Python, with the Python route's output bit for bit (values, strides, grad_fn, gradients);
keys separate what must be separate; anything that must see the op, or that the memory cannot vouch for, takes
the Python route (which validates and raises as before)."""
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

import dwconv
from dwconv import config, dispatch, ops, remembered
from conftest import require_backend
from utils import (RecordingDispatchMode, assert_close, make_inputs, poisoned_outputs, reference_conv,
                   reference_grads)

pytestmark = pytest.mark.skipif(dwconv._extension.direct_entry("remembered_conv") is None,
                                reason="dwconv._C built without remembered calls")


@pytest.fixture(autouse=True)
def _nothing_remembered():
    remembered.forget()
    yield
    remembered.forget()


class PythonRoutes:
    """Counts the functional's Python routes: the forward op's body (no gradient to record) and the training
    route's decision (a gradient to record)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        run_forward, training_route = ops.run_forward, dispatch.training_route

        def counted(function):
            def call(*args, **kwargs):
                self.calls += 1
                return function(*args, **kwargs)
            return call
        monkeypatch.setattr(ops, "run_forward", counted(run_forward))
        monkeypatch.setattr(dispatch, "training_route", counted(training_route))

    def taken_by(self, call):
        before = self.calls
        out = call()
        return out, self.calls > before


def _dw(x, w, b, stride, padding, dilation, backend):
    return dwconv.depthwise_conv2d(x, w, b, stride, padding, dilation, backend=backend)


def _padding4(padding, w, dilation):
    if padding == "same":
        total = [dilation[i] * (w.shape[2 + i] - 1) for i in range(2)]
        return (total[0] // 2, total[0] - total[0] // 2, total[1] // 2, total[1] - total[1] // 2)
    if padding == "valid":
        return (0, 0, 0, 0)
    if isinstance(padding, int):
        return (padding,) * 4
    if len(padding) == 2:
        return (padding[0], padding[0], padding[1], padding[1])
    return tuple(padding)


CALLS = {
    # id: (n, c, h, w, kernel, multiplier, stride, padding, dilation, bias, dtype)
    "k3-same": (2, 3, 9, 7, 3, 1, 1, "same", 1, True, torch.float32),
    "k5x3-strided-asym": (2, 4, 11, 9, (5, 3), 1, (2, 1), (2, 1, 1, 2), (1, 1), True, torch.float32),
    "k7-dilated-nobias": (1, 5, 12, 10, 3, 1, 1, [2, 2], (2, 2), False, torch.float32),
    "multiplier2-valid": (2, 3, 8, 8, 3, 2, (1, 2), "valid", 1, True, torch.float32),
    "bf16": (2, 8, 10, 10, 5, 1, 1, 2, 1, True, torch.bfloat16),
    "fp64": (1, 3, 7, 6, 3, 1, 2, (1, 1), 1, True, torch.float64),
}


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("backend", ["auto", "cpu", "torch"])
@pytest.mark.parametrize("case", list(CALLS))
def test_the_second_inference_call_is_remembered_with_the_same_output(case, backend, channels_last, monkeypatch):
    require_backend("cpu" if backend == "auto" else backend, "cpu")
    n, c, h, w, k, m, stride, padding, dilation, bias, dtype = CALLS[case]
    x, wt, bt = make_inputs(n, c, h, w, k, m, dtype=dtype, channels_last=channels_last, bias=bias, seed=11)
    routes = PythonRoutes(monkeypatch)
    with poisoned_outputs():
        first, python = routes.taken_by(lambda: _dw(x, wt, bt, stride, padding, dilation, backend))
        assert python
        x2 = torch.randn_like(x)  # fresh values, same signature
        second, python = routes.taken_by(lambda: _dw(x2, wt, bt, stride, padding, dilation, backend))
        assert not python, "the second call of the signature took the Python route"
        remembered.forget()
        want, python = routes.taken_by(lambda: _dw(x2, wt, bt, stride, padding, dilation, backend))
        assert python
    assert torch.equal(second, want) and second.stride() == want.stride() and second.dtype == want.dtype
    ref = reference_conv(x2, wt, bt, (stride,) * 2 if isinstance(stride, int) else stride,
                         _padding4(padding, wt, (dilation,) * 2 if isinstance(dilation, int) else dilation),
                         dilation)
    assert_close(second, ref, dtype, case)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("needs", [(True, True, True), (True, False, False), (False, True, True)], ids=str)
def test_the_second_training_call_is_remembered_with_the_same_gradients(needs, backend, channels_last, monkeypatch):
    require_backend(backend, "cpu")
    stride, padding4 = (2, 1), (2, 1, 1, 2)
    x, w, b = make_inputs(2, 4, 11, 9, (5, 3), channels_last=channels_last, seed=12)
    routes = PythonRoutes(monkeypatch)

    def step():
        leaves = [t.clone().requires_grad_(need) for t, need in zip((x, w, b), needs)]
        y = _dw(*leaves, stride, padding4, 1, backend)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(5)).contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        grads = torch.autograd.grad(y, [t for t in leaves if t.requires_grad], gy)
        return y, grads, gy

    with poisoned_outputs():
        _, python = routes.taken_by(step)
        assert python
        (y, grads, gy), python = routes.taken_by(step)
        assert not python, "the second call of the signature took the Python route"
        remembered.forget()
        (y_py, grads_py, _), python = routes.taken_by(step)
        assert python
    assert y.grad_fn.name() == y_py.grad_fn.name()
    assert torch.equal(y, y_py) and y.stride() == y_py.stride()
    for got, want in zip(grads, grads_py):
        assert torch.equal(got, want) and got.stride() == want.stride()
    ref = reference_grads(x, w, b, gy, stride, padding4, (1, 1))
    assert_close(y, ref[0], torch.float32, "y")
    for got, want in zip(grads, [r for r, need in zip(ref[1:], needs) if need]):
        assert_close(got, want, torch.float32, "grad")


def test_inference_and_training_calls_of_a_signature_are_remembered_apart(monkeypatch):
    require_backend("cpu", "cpu")
    x, w, b = make_inputs(2, 3, 8, 8, 3, seed=13)
    routes = PythonRoutes(monkeypatch)
    w.requires_grad_()
    for _ in range(2):
        y = _dw(x, w, b, 1, 1, 1, "cpu")
    assert "DirectDepthwiseConv2d" in y.grad_fn.name()
    with torch.no_grad():
        y, python = routes.taken_by(lambda: _dw(x, w, b, 1, 1, 1, "cpu"))
        assert python and y.grad_fn is None and not y.requires_grad
        y, python = routes.taken_by(lambda: _dw(x, w, b, 1, 1, 1, "cpu"))
        assert not python and y.grad_fn is None and not y.requires_grad
    y, python = routes.taken_by(lambda: _dw(x, w, b, 1, 1, 1, "cpu"))
    assert not python and "DirectDepthwiseConv2d" in y.grad_fn.name()


def _calls_after_a_remembered_one(monkeypatch, change):
    """Whether a call changed by `change` from a remembered signature takes the Python route."""
    x, w, b = make_inputs(2, 4, 9, 9, 3, seed=14)
    routes = PythonRoutes(monkeypatch)
    call = dict(x=x, w=w, b=b, stride=1, padding=1, dilation=1, backend="auto")
    for _ in range(2):
        _dw(**call)
    _, python = routes.taken_by(lambda: _dw(**call))
    assert not python
    changed = change(dict(call))
    out, python = routes.taken_by(lambda: _dw(**changed))
    return python, out, changed


@pytest.mark.parametrize("change", [
    "stride", "padding", "dilation", "backend", "dtype", "channels_last", "no_bias", "batch", "width", "kernel",
    "multiplier", "threads", "deterministic"])
def test_keys_separate_what_must_be_separate(change, monkeypatch):
    require_backend("cpu", "cpu")
    threads = torch.get_num_threads()

    def changed(call):
        x, w, b = call["x"], call["w"], call["b"]
        if change in ("stride", "padding", "dilation"):
            call[change] = 2
        elif change == "backend":
            call["backend"] = "cpu"
        elif change == "dtype":
            call.update(x=x.double(), w=w.double(), b=b.double())
        elif change == "channels_last":
            call["x"] = x.contiguous(memory_format=torch.channels_last)
        elif change == "no_bias":
            call["b"] = None
        elif change == "batch":
            call["x"] = torch.cat([x, x])
        elif change == "width":
            call["x"] = x[..., :-1].contiguous()
        elif change == "kernel":
            call["w"] = torch.randn(4, 1, 3, 5)
        elif change == "multiplier":
            call.update(w=torch.randn(8, 1, 3, 3), b=torch.randn(8))
        elif change == "threads":
            torch.set_num_threads(1 if threads > 1 else 2)
        elif change == "deterministic":
            torch.use_deterministic_algorithms(True)
        return call

    try:
        python, out, call = _calls_after_a_remembered_one(monkeypatch, changed)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)
    assert python, f"a call with another {change} ran a remembered route"
    padding = (call["padding"],) * 4
    ref = reference_conv(call["x"], call["w"], call["b"], (call["stride"],) * 2, padding, (call["dilation"],) * 2)
    assert_close(out, ref, call["x"].dtype, change)


def test_equal_forms_of_the_same_arguments_share_a_signature(monkeypatch):
    require_backend("cpu", "cpu")
    x, w, b = make_inputs(2, 4, 9, 9, 3, seed=15)
    routes = PythonRoutes(monkeypatch)
    for _ in range(2):
        want = _dw(x, w, b, 1, 1, 1, "auto")
    for stride, padding, dilation in (((1, 1), (1, 1), (1, 1)), ([1, 1], [1, 1, 1, 1], [1, 1]), (1, "same", 1)):
        y, python = routes.taken_by(lambda: _dw(x, w, b, stride, padding, dilation, "auto"))
        # "same" is its own form: remembered from its own first call
        assert python == (padding == "same")
        assert torch.equal(y, want)


def test_settings_changes_and_cleared_decisions_forget_every_call(monkeypatch):
    require_backend("cpu", "cpu")
    x, w, b = make_inputs(2, 4, 9, 9, 3, seed=16)
    routes = PythonRoutes(monkeypatch)
    for _ in range(2):
        _dw(x, w, b, 1, 1, 1, "auto")
    with config.override(dispatch_table=not config.get().dispatch_table):
        _, python = routes.taken_by(lambda: _dw(x, w, b, 1, 1, 1, "auto"))
        assert python
    _, python = routes.taken_by(lambda: _dw(x, w, b, 1, 1, 1, "auto"))
    assert python
    _, python = routes.taken_by(lambda: _dw(x, w, b, 1, 1, 1, "auto"))
    assert not python
    dispatch.clear_decisions()
    _, python = routes.taken_by(lambda: _dw(x, w, b, 1, 1, 1, "auto"))
    assert python


class _Subclass(torch.Tensor):
    pass


class _FunctionMode(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen.append(func)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("case", ["subclass", "function_mode", "dispatch_mode", "flop_counter", "autocast", "vmap",
                                  "func_grad", "forward_ad", "unbatched", "strided_input", "strided_weight",
                                  "strided_bias"])
def test_calls_the_memory_cannot_serve_take_the_python_route(case, monkeypatch):
    """Each such call of a remembered signature is made as before: the mode, transform or wrapper sees the op or
    the function, and the results are those of the Python route."""
    require_backend("cpu", "cpu")
    x, w, b = make_inputs(2, 4, 9, 9, 3, seed=17)
    for _ in range(2):
        want = _dw(x, w, b, 1, 1, 1, "auto")
    routes = PythonRoutes(monkeypatch)
    if case == "subclass":
        y = _dw(x.as_subclass(_Subclass), w, b, 1, 1, 1, "auto")
        assert type(y) is _Subclass
    elif case == "function_mode":
        with _FunctionMode() as mode:
            y = _dw(x, w, b, 1, 1, 1, "auto")
        # the mode sees the function; the call it makes inside, with the mode off, may be a remembered one
        assert mode.seen == [dwconv.depthwise_conv2d]
        routes.calls += 1
    elif case == "flop_counter":
        with FlopCounterMode(display=False) as counter:
            y = _dw(x, w, b, 1, 1, 1, "auto")
        assert counter.get_total_flops() == 2 * want.numel() * 9
    elif case == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = _dw(x, w, b, 1, 1, 1, "auto")
        assert y.dtype == torch.bfloat16
        want = want.bfloat16()
    elif case == "dispatch_mode":
        with RecordingDispatchMode() as mode:
            y = _dw(x, w, b, 1, 1, 1, "auto")
        assert "dwconv.depthwise_conv2d.default" in mode.ops
    elif case == "vmap":  # each sample of the remembered signature's shape
        y = torch.vmap(lambda xi: _dw(xi, w, b, 1, 1, 1, "auto"))(x.unsqueeze(0)).squeeze(0)
    elif case == "func_grad":
        def loss(xi):
            out = _dw(xi, w, b, 1, 1, 1, "auto")
            return out.sum(), out
        dx, (_, y) = torch.func.grad_and_value(loss, has_aux=True)(x)
        xs = x.double().requires_grad_()
        want_dx, = torch.autograd.grad(F.conv2d(xs, w.double(), b.double(), 1, 1, 1, 4).sum(), xs)
        assert_close(dx, want_dx, torch.float32, case)
    elif case == "forward_ad":
        import torch.autograd.forward_ad as fwad
        tangent = torch.randn_like(x)
        with fwad.dual_level():
            y, jvp = fwad.unpack_dual(_dw(fwad.make_dual(x, tangent), w, b, 1, 1, 1, "auto"))
        assert_close(jvp, reference_conv(tangent, w, None, (1, 1), (1,) * 4, (1, 1)), torch.float32, case)
    elif case == "unbatched":
        y = torch.stack([_dw(xi, w, b, 1, 1, 1, "auto") for xi in x])
    elif case == "strided_input":
        wide = torch.randn(2, 4, 9, 18)
        wide[..., ::2] = x
        y = _dw(wide[..., ::2], w, b, 1, 1, 1, "auto")
    elif case == "strided_weight":  # the key has sizes, not strides: the entry checks contiguity itself
        y = _dw(x, torch.randn(4, 1, 3, 6)[..., ::2].copy_(w), b, 1, 1, 1, "auto")
    elif case == "strided_bias":
        y = _dw(x, w, torch.randn(8)[::2].copy_(b), 1, 1, 1, "auto")
    assert routes.calls > 0, "the call ran a remembered route"
    assert_close(y, want, y.dtype, case, factor=1.0)


def test_inference_mode_calls_are_served_as_the_python_route_serves_them(monkeypatch):
    require_backend("cpu", "cpu")
    x, w, b = make_inputs(2, 4, 9, 9, 3, seed=24)
    routes = PythonRoutes(monkeypatch)
    with torch.inference_mode():
        for _ in range(2):
            y, python = routes.taken_by(lambda: _dw(x, w, b, 1, 1, 1, "auto"))
        assert not python
        remembered.forget()
        want = _dw(x, w, b, 1, 1, 1, "auto")
    assert y.is_inference() and want.is_inference() and torch.equal(y, want)


def test_nested_and_sparse_inputs_fail_as_without_remembered_calls():
    x, w, b = make_inputs(2, 4, 9, 9, 3, seed=25)
    nested = torch.nested.nested_tensor([torch.randn(4, 9, 9), torch.randn(4, 9, 8)])
    for bad in ((nested, w, b), (x.to_sparse(), w, b), (x, w.to_sparse(), b), (x, w, b.to_sparse())):
        errors = []
        for warm in (False, True):
            remembered.forget()
            if warm:
                for _ in range(2):
                    _dw(x, w, b, 1, 1, 1, "auto")
            with pytest.raises(Exception) as error:
                _dw(*bad, 1, 1, 1, "auto")
            errors.append((type(error.value), str(error.value)))
        assert errors[0] == errors[1]


def test_invalid_calls_of_remembered_shapes_still_raise():
    require_backend("cpu", "cpu")
    x, w, b = make_inputs(2, 4, 9, 9, 3, seed=18)
    for _ in range(2):
        _dw(x, w, b, 1, 1, 1, "auto")
    with pytest.raises(ValueError, match="negative padding"):
        _dw(x, w, b, 1, -1, 1, "auto")
    # True and 1.0 equal 1 (and hash alike): neither memory (this one, nor the Python route's of resolved
    # arguments) may take them for it
    for stride, padding, dilation in ((True, 1, 1), (1.0, 1, 1), (1, (1, True), 1), (1, 1, (1, 1.0))):
        with pytest.raises(TypeError, match="must be"):
            _dw(x, w, b, stride, padding, dilation, "auto")
    with pytest.raises(ValueError, match="stride must be positive"):
        _dw(x, w, b, 0, 1, 1, "auto")
    with pytest.raises(RuntimeError, match="same dtype"):
        _dw(x, w.double(), b, 1, 1, 1, "auto")
    with pytest.raises(RuntimeError, match="bias must have shape"):
        _dw(x, w, torch.randn(5), 1, 1, 1, "auto")
    with pytest.raises(ValueError):
        _dw(x, w, b, 1, 1, 1, "no-such-backend")


def test_jit_trace_and_torch_compile_see_the_op_of_a_remembered_signature():
    require_backend("cpu", "cpu")
    x, w, b = make_inputs(2, 4, 9, 9, 3, seed=19)
    for _ in range(2):
        want = _dw(x, w, b, 1, 1, 1, "auto")
    with pytest.warns(Warning):
        traced = torch.jit.trace(lambda xi: _dw(xi, w, b, 1, 1, 1, "auto"), x)
    assert "dwconv::depthwise_conv2d" in str(traced.graph)
    compiled = torch.compile(lambda xi: _dw(xi, w, b, 1, 1, 1, "auto"), fullgraph=True, backend="eager")
    assert torch.equal(compiled(x), want)


def test_large_inference_outputs_come_from_the_output_pool_not_a_remembered_route(monkeypatch):
    """A CPU output of 4 MiB and more comes from the output pool, which only the Python route allocates."""
    require_backend("cpu", "cpu")
    x, w, b = make_inputs(1, 64, 128, 128, 3, seed=20)  # a 4 MiB fp32 output
    routes = PythonRoutes(monkeypatch)
    for _ in range(3):
        _, python = routes.taken_by(lambda: _dw(x, w, b, 1, 1, 1, "cpu"))
        assert python


def test_remember_conv_rejects_an_unknown_route():
    x, w, b = make_inputs(1, 2, 4, 4, 3, seed=21)
    with pytest.raises(ValueError, match="route"):
        dwconv._extension.direct_entry("remember_conv")(x, w, b, 1, 1, 1, "cpu", 0, False, "python", (1, 1),
                                                        (1, 1, 1, 1), (1, 1), (1, 2, 4, 4), "", 0, "", 0, "", 0)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "torch"])
def test_cuda_calls_are_remembered_with_the_same_output(backend, monkeypatch):
    require_backend(backend, "cuda")
    x, w, b = make_inputs(2, 8, 14, 14, 7, device="cuda", channels_last=True, seed=22)
    routes = PythonRoutes(monkeypatch)
    with poisoned_outputs():
        for _ in range(2):
            _, python = routes.taken_by(lambda: _dw(x, w, b, 1, 3, 1, backend))
        assert not python
        y = _dw(x, w, b, 1, 3, 1, backend)
        remembered.forget()
        want = _dw(x, w, b, 1, 3, 1, backend)
    assert torch.equal(y, want) and y.stride() == want.stride() and y.device == want.device
    assert_close(y, reference_conv(x, w, b, (1, 1), (3,) * 4, (1, 1)), torch.float32, backend)
