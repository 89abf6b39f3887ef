"""torch.compile, autocast, opcheck and FLOP counting of the dwconv ops."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import dwconv
from utils import TOLERANCE, assert_close, rel_err

BACKENDS_HERE = [b for b, reason in dwconv.available_backends("cpu").items() if reason is None]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch: the same module code compiled across tests would otherwise count
    towards Dynamo's recompile limit, which fullgraph=True turns into an error."""
    torch._dynamo.reset()
    yield


def _model(backend):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 4, 7, padding=3, groups=4), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 8, 5, stride=2, padding=2, groups=4), nn.Conv2d(8, 3, 1))
    return dwconv.convert(model, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS_HERE)
def test_compile_fullgraph_forward_and_backward(backend):
    model = _model(backend)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 4, 16, 16, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y = compiled(x)
    y_eager = model(x2)
    torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-5)
    y.sum().backward()
    y_eager.sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)


def test_compile_dynamic_shapes_one_graph():
    """Batch and spatial sizes stay symbolic: new sizes reuse the graph instead of recompiling."""
    from torch._dynamo.testing import CompileCounterWithBackend
    model = _model("auto")
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=counter)
    frames = []
    for n, size in ((2, 16), (3, 16), (5, 20)):
        x = torch.randn(n, 4, size, size, requires_grad=True)
        y = compiled(x)
        y.sum().backward()
        frames.append(counter.frame_count)
    assert frames[0] >= 1 and frames == [frames[0]] * 3, f"recompiled for new sizes: frames {frames}"


@pytest.mark.parametrize("grad_mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("compiler", ["eager", "aot_eager"])
def test_compile_fullgraph_inference(compiler, grad_mode):
    """Inference under torch.compile: no gradients anywhere, so eager calls take the functional's direct path,
    which Dynamo must see past (no graph break), for a converted model and for the bare functional."""
    torch.manual_seed(6)
    model = _model("auto").eval()
    x = torch.randn(2, 4, 16, 16)
    w = torch.randn(4, 1, 7, 7) / 7
    compiled_model = torch.compile(model, fullgraph=True, backend=compiler)
    compiled_fn = torch.compile(lambda t, k: dwconv.depthwise_conv2d(t, k, padding=3), fullgraph=True,
                                backend=compiler)
    with getattr(torch, grad_mode)():
        y, y_eager, z = compiled_model(x), model(x), compiled_fn(x, w)
    torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-5)
    z_ref = F.conv2d(x.double(), w.double(), padding=3, groups=4)
    assert rel_err(z, z_ref) <= TOLERANCE[torch.float32]


def test_compile_inductor_fullgraph():
    model = _model("auto").eval()
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 4, 16, 16).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS_HERE)
def test_autocast_like_conv2d(backend):
    torch.manual_seed(4)
    ref = nn.Conv2d(4, 4, 7, padding=3, groups=4)
    fast = dwconv.FastDWConv.from_conv2d(nn.Conv2d(4, 4, 7, padding=3, groups=4), backend=backend)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, 4, 12, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ref = ref(x)
        y = fast(x)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    assert_close(y, y_ref.double(), torch.bfloat16, "autocast output")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        assert fast(x).dtype == torch.float32
    # Mixed input / parameter dtypes (a bf16 activation from the previous layer, fp32 weights).
    x_bf16 = x.to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fast(x_bf16)
        y_ref = ref(x_bf16)
    assert y.dtype == torch.bfloat16
    assert_close(y, y_ref.double(), torch.bfloat16, "autocast with bf16 input")
    y.float().sum().backward()
    assert x_bf16.grad.dtype == torch.bfloat16 and fast.weight.grad.dtype == torch.float32
    with pytest.raises(RuntimeError, match="same dtype"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast(x.double())


@pytest.mark.parametrize("backend", BACKENDS_HERE)
def test_opcheck(backend):
    x = torch.randn(2, 3, 9, 8, requires_grad=True)
    w = torch.randn(6, 1, 3, 3, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    torch.library.opcheck(torch.ops.dwconv.depthwise_conv2d.default, (x, w, b, [1, 2], [1, 1, 0, 2], [1, 1], backend))
    g = torch.randn(2, 6, 9, 4)
    torch.library.opcheck(torch.ops.dwconv.dgrad.default, (g, w.detach(), [2, 3, 9, 8], [1, 2], [1, 1, 0, 2],
                                                           [1, 1], backend))
    torch.library.opcheck(torch.ops.dwconv.wgrad.default, (g, x.detach(), [6, 1, 3, 3], [1, 2], [1, 1, 0, 2],
                                                           [1, 1], backend))


def test_fvcore_counts_like_conv2d():
    fvcore_nn = pytest.importorskip("fvcore.nn")
    torch.manual_seed(5)
    plain = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.Conv2d(8, 16, 7, padding=3, groups=8),
                          nn.Conv2d(16, 16, 11, stride=2, padding=5, groups=16))
    x = torch.randn(2, 3, 64, 64)
    expected = fvcore_nn.FlopCountAnalysis(plain, x)
    expected_total = expected.total()
    fast = dwconv.convert(plain)
    counted = fvcore_nn.FlopCountAnalysis(fast, x)
    counted.unsupported_ops_warnings(False)
    assert counted.total() == expected_total
    assert "dwconv::depthwise_conv2d" not in counted.unsupported_ops()
    # N*Cout*Ho*Wo*Kh*Kw for the two depthwise layers
    assert counted.by_operator()["depthwise_conv2d"] == 2 * 16 * 16 * 16 * 49 + 2 * 16 * 8 * 8 * 121


def test_flop_counter_mode_counts_forward_and_backward():
    from torch.utils.flop_counter import FlopCounterMode
    conv = nn.Conv2d(8, 16, 7, padding=3, groups=8)
    fast = dwconv.FastDWConv.from_conv2d(nn.Conv2d(8, 16, 7, padding=3, groups=8))
    forward_counts = []
    for m in (conv, fast):
        with FlopCounterMode(display=False) as counter:
            m(torch.randn(2, 8, 12, 12))
        forward_counts.append(counter.get_total_flops())
    macs = 2 * 16 * 12 * 12 * 49
    assert forward_counts == [2 * macs, 2 * macs]  # 2 FLOPs per MAC, as PyTorch counts its conv
    x = torch.randn(2, 8, 12, 12, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        fast(x).sum().backward()
    # forward + dgrad + wgrad. (PyTorch's own formula for aten.convolution_backward ignores groups and
    # reports 9x the true count for this depthwise conv, so the backward is not compared with nn.Conv2d.)
    assert counter.get_total_flops() == 3 * 2 * macs


def test_meta_tensors_give_the_conv2d_shape():
    """Shape tracing on the meta device (as F.conv2d allows) works through the fake kernel."""
    x = torch.randn(2, 4, 9, 11, device="meta").contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, 1, 5, 3, device="meta")
    y = dwconv.depthwise_conv2d(x, w, None, (2, 1), (2, 1), 1)
    expected = torch.nn.functional.conv2d(x, w, None, (2, 1), (2, 1), 1, groups=4)
    assert y.device.type == "meta" and y.shape == expected.shape
    assert y.is_contiguous(memory_format=torch.channels_last)
