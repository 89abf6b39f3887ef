"""dwconv._C's direct entries to the native ops (csrc/python_module.cpp): the same kernel as torch.ops for the calls
they serve, NotImplemented for every call torch.ops must make (so the backends fall back to it)."""
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import dwconv
from dwconv import _extension
from utils import RecordingDispatchMode

pytestmark = pytest.mark.skipif(_extension.direct_entry("native_fwd") is None,
                                reason="dwconv._C not built with the direct entries")

STRIDE, PADDING, DILATION = (1, 1), (2, 1, 1, 2), (1, 1)  # asymmetric padding: a 5x6 output of a 4x5 input


def entry(name):
    return _extension.direct_entry(name)


def poisoned(*shape, dtype=torch.float32):
    return torch.full(shape, float("nan"), dtype=dtype)


def operands(requires_grad=False):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 4, 5, generator=g, requires_grad=requires_grad)
    w = torch.randn(3, 1, 3, 3, generator=g, requires_grad=requires_grad)
    b = torch.randn(3, generator=g, requires_grad=requires_grad)
    return x, w, b


def reference(x, w, b):
    xp = F.pad(x.double(), (PADDING[2], PADDING[3], PADDING[0], PADDING[1]))
    return F.conv2d(xp, w.double(), b.double(), STRIDE, 0, DILATION, groups=x.shape[1])


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def fwd_args(x, w, b, y, family="avx512" if "avx512" in torch.ops.dwconv.cpu_families() else "", variant=0):
    return (x, w, b, STRIDE, PADDING, DILATION, family, variant, y)


def test_fwd_matches_torch_ops_and_float64():
    x, w, b = operands()
    y_entry, y_ops = poisoned(2, 3, 5, 6), poisoned(2, 3, 5, 6)
    assert entry("native_fwd")(*fwd_args(x, w, b, y_entry)) is None
    torch.ops.dwconv.native_fwd(*fwd_args(x, w, b, y_ops))
    assert torch.equal(y_entry, y_ops)
    assert rel_err(y_entry, reference(x, w, b)) < 1e-6


def test_dgrad_and_wgrad_match_torch_ops():
    x, w, _ = operands()
    dy = torch.randn(2, 3, 5, 6)
    dx_entry, dx_ops = poisoned(2, 3, 4, 5), poisoned(2, 3, 4, 5)
    assert entry("native_dgrad")(dy, w, STRIDE, PADDING, DILATION, "", 0, dx_entry) is None
    torch.ops.dwconv.native_dgrad(dy, w, STRIDE, PADDING, DILATION, "", 0, dx_ops)
    assert torch.equal(dx_entry, dx_ops)
    dw_entry, dw_ops = poisoned(3, 1, 3, 3), poisoned(3, 1, 3, 3)
    assert entry("native_wgrad")(dy, x, STRIDE, PADDING, DILATION, True, "", 0, dw_entry) is None
    torch.ops.dwconv.native_wgrad(dy, x, STRIDE, PADDING, DILATION, True, "", 0, dw_ops)
    assert torch.equal(dw_entry, dw_ops)
    xd = x.double().requires_grad_()
    out = F.conv2d(F.pad(xd, (PADDING[2], PADDING[3], PADDING[0], PADDING[1])), w.double(), None, STRIDE, 0,
                   DILATION, groups=3)
    ref_dx, = torch.autograd.grad(out, xd, dy.double())
    assert rel_err(dx_entry, ref_dx) < 1e-6


def test_parameters_and_inference_tensors_are_served():
    x, w, b = operands()
    with torch.inference_mode():
        xi = x.clone()
    y = poisoned(2, 3, 5, 6)
    assert entry("native_fwd")(*fwd_args(xi, torch.nn.Parameter(w, requires_grad=False), torch.nn.Parameter(b, requires_grad=False), y)) is None
    assert rel_err(y, reference(x, w, b)) < 1e-6


def test_a_recorded_gradient_goes_to_torch_ops():
    x, w, b = operands(requires_grad=True)
    y = poisoned(2, 3, 5, 6)
    assert entry("native_fwd")(*fwd_args(x, w, b, y)) is NotImplemented
    assert torch.isnan(y).all()
    with torch.no_grad():
        assert entry("native_fwd")(*fwd_args(x, w, b, y)) is None
    assert not torch.isnan(y).any()


class _Subclass(torch.Tensor):
    pass


@pytest.mark.parametrize("case", ["subclass", "dispatch_mode", "function_mode", "vmap", "list_stride",
                                  "bool_variant", "wrong_count"])
def test_calls_torch_ops_must_make_are_declined(case):
    x, w, b = operands()
    y = poisoned(2, 3, 5, 6)
    args = list(fwd_args(x, w, b, y))
    call = entry("native_fwd")
    if case == "subclass":
        args[0] = x.as_subclass(_Subclass)
        assert call(*args) is NotImplemented
    elif case == "dispatch_mode":
        with RecordingDispatchMode():
            assert call(*args) is NotImplemented
    elif case == "function_mode":
        with TorchFunctionMode():
            assert call(*args) is NotImplemented
    elif case == "vmap":
        results = []

        def per_sample(xs):
            results.append(call(xs.unsqueeze(0), w, b, STRIDE, PADDING, DILATION, "", 0, y[:1]))
            return xs
        torch.func.vmap(per_sample)(x)
        assert results == [NotImplemented]
    elif case == "list_stride":
        args[3] = list(STRIDE)
        assert call(*args) is NotImplemented
    elif case == "bool_variant":
        args[7] = False
        assert call(*args) is NotImplemented
    elif case == "wrong_count":
        assert call(*args[:-1]) is NotImplemented
    assert torch.isnan(y).all()


def _op_calls(x, w, b, dy, y, dx, dw):
    """Each entry's argument list, and the positions of its tensor arguments."""
    return {
        "native_fwd": ([x, w, b, STRIDE, PADDING, DILATION, "", 0, y], (0, 1, 2, 8)),
        "native_dgrad": ([dy, w, STRIDE, PADDING, DILATION, "", 0, dx], (0, 1, 7)),
        "native_wgrad": ([dy, x, STRIDE, PADDING, DILATION, True, "", 0, dw], (0, 1, 8)),
    }


@pytest.mark.parametrize("op", ["native_fwd", "native_dgrad", "native_wgrad"])
@pytest.mark.parametrize("special", ["subclass", "requires_grad"])
def test_one_special_tensor_argument_is_enough_to_decline(op, special):
    """Whichever single tensor argument is a subclass or records a gradient, the entry declines the call."""
    x, w, b = operands()
    dy = torch.randn(2, 3, 5, 6)
    tensors = {"y": poisoned(2, 3, 5, 6), "dx": poisoned(2, 3, 4, 5), "dw": poisoned(3, 1, 3, 3)}
    args, positions = _op_calls(x, w, b, dy, tensors["y"], tensors["dx"], tensors["dw"])[op]
    out_position = positions[-1]
    for position in positions:
        changed = list(args)
        if special == "subclass":
            changed[position] = args[position].as_subclass(_Subclass)
        else:
            changed[position] = args[position].detach().clone().requires_grad_()
        assert entry(op)(*changed) is NotImplemented, position
    assert torch.isnan(args[out_position]).all()
    assert entry(op)(*args) is None
    assert not torch.isnan(args[out_position]).any()


def test_torch_jit_trace_records_the_native_op():
    """While tracing (the tracer's key is in the thread's state) the entry declines, so the trace records the op."""
    from dwconv._conv_args import check_and_resolve
    from dwconv.backends import get_backend
    from dwconv.plans import Plan
    x, w, b = operands()
    args = check_and_resolve(x, w, b, 1, 1, 1)
    traced = torch.jit.trace(lambda t: get_backend("cpu").forward(t, w, b, args, Plan("cpu")), (x,), check_trace=False)
    assert "dwconv::native_fwd" in str(traced.graph)
    assert rel_err(traced(x), F.conv2d(x.double(), w.double(), b.double(), 1, 1, 1, 3)) < 1e-6


def test_the_profiler_still_sees_the_native_op():
    x, w, b = operands()
    y = poisoned(2, 3, 5, 6)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        assert entry("native_fwd")(*fwd_args(x, w, b, y)) is None
    assert any(event.name == "dwconv::native_fwd" for event in prof.events())


def test_errors_are_those_of_torch_ops():
    x, w, b = operands()
    y = poisoned(2, 3, 5, 6)
    with pytest.raises(RuntimeError, match="unknown kernel family 'nope'"):
        entry("native_fwd")(*fwd_args(x, w, b, y, family="nope"))
    with pytest.raises(RuntimeError, match="output / grad_out must have size"):
        entry("native_fwd")(*fwd_args(x, w, b, poisoned(2, 3, 5, 4)))
    assert entry("native_fwd")(*fwd_args(x, w, b, y)) is None  # the entry still works after an error


def test_the_backend_falls_back_to_torch_ops_under_a_dispatch_mode():
    """A dispatch mode active where the backend runs sees its native op: the entry declines, torch.ops calls."""
    from dwconv._conv_args import check_and_resolve
    from dwconv.backends import get_backend
    from dwconv.plans import Plan
    x, w, b = operands()
    args = check_and_resolve(x, w, b, 1, 1, 1)
    with RecordingDispatchMode() as mode:
        out = get_backend("cpu").forward(x, w, b, args, Plan("cpu", "", ""))
    assert "dwconv.native_fwd.default" in mode.ops
    assert rel_err(out, F.conv2d(x.double(), w.double(), b.double(), 1, 1, 1, 3)) < 1e-6


def test_the_entry_releases_the_gil():
    """Another Python thread runs while a long kernel does (as with torch.ops)."""
    import threading
    import time
    x = torch.randn(16, 64, 96, 96)
    w = torch.randn(64, 1, 31, 31)
    y = torch.empty(16, 64, 96, 96)
    ticks = []
    done = threading.Event()

    def ticker():
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)
    thread = threading.Thread(target=ticker)
    thread.start()
    time.sleep(0.01)
    t0 = time.perf_counter()
    entry("native_fwd")(x, w, None, (1, 1), (15, 15, 15, 15), (1, 1), "", 0, y)
    elapsed = time.perf_counter() - t0
    done.set()
    thread.join()
    if elapsed < 0.03:
        pytest.skip(f"the kernel took {elapsed * 1e3:.1f} ms, too short to tell")
    during = [t for t in ticks if t0 < t < t0 + elapsed]
    assert len(during) >= 5, (elapsed, len(during))


def test_large_outputs_stay_on_the_cpu_under_a_default_device():
    """new_output's large-output path (output pool off) allocates on the CPU, whatever the default device."""
    from dwconv import config
    from dwconv.outputs import LARGE_OUTPUT_BYTES, new_output
    like = torch.randn(2, 2)
    shape = (LARGE_OUTPUT_BYTES // 4 + 16,)
    with config.override(output_pool_mib=0, huge_pages=False), torch.device("meta"):
        out = new_output(shape, like)
    assert out.device.type == "cpu" and out.shape == shape


@pytest.mark.gpu
def test_cuda_entries_match_torch_ops_and_float64():
    """The CUDA kernels through the entries: bit-equal to torch.ops, close to float64; declined under a mode."""
    x, w, b = (t.cuda() for t in operands())
    dy = torch.randn(2, 3, 5, 6, device="cuda")
    outputs = {}
    for route in ("entry", "ops"):
        y = torch.full((2, 3, 5, 6), float("nan"), device="cuda")
        dx = torch.full((2, 3, 4, 5), float("nan"), device="cuda")
        dw = torch.full((3, 1, 3, 3), float("nan"), device="cuda")
        calls, _ = zip(*_op_calls(x, w, b, dy, y, dx, dw).values())
        for name, args in zip(("native_fwd", "native_dgrad", "native_wgrad"), calls):
            if route == "entry":
                assert entry(name)(*args) is None
            else:
                getattr(torch.ops.dwconv, name)(*args)
        torch.cuda.synchronize()
        outputs[route] = (y, dx, dw)
    for got, want in zip(outputs["entry"], outputs["ops"]):
        assert torch.equal(got, want)
    assert rel_err(outputs["entry"][0].cpu(), reference(x.cpu(), w.cpu(), b.cpu())) < 1e-5
    with RecordingDispatchMode():
        y = torch.full((2, 3, 5, 6), float("nan"), device="cuda")
        assert entry("native_fwd")(x, w, b, STRIDE, PADDING, DILATION, "", 0, y) is NotImplemented
