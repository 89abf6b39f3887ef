"""Converted models go where nn.Conv2d models go: TorchScript (script and trace), torch.fx (symbolic tracing,
torchvision feature extraction, FX graph-mode quantization, conv-BN fusion), torch.export and ONNX (both
exporters, run in ONNX Runtime). Every result is compared with eager dwconv or the unconverted model."""
from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
import torch.nn as nn

import dwconv
import robust_models
from utils import assert_close

F32 = torch.float32
DW_OP = "dwconv::depthwise_conv2d"
# Robust-ResNets at a small size (every block type and downsampling path of the released models).
SMALL = dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), num_classes=10)


def _robust_resnet(name, seed=0):
    torch.manual_seed(seed)
    model = robust_models.create_model(name, **SMALL).eval()
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():  # non-trivial BN statistics, so eval-mode BN is not close to identity
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
    return model


def _mixed_model(seed=0):
    """Depthwise convs of every kind between plain layers, converted."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 5, padding=2, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, (3, 5), stride=2, padding=(1, 2), groups=8),             # multiplier 2, stride 2
        nn.Conv2d(16, 16, 4, padding="same", dilation=(2, 1), groups=16, bias=False),  # asymmetric "same"
        nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 4, 1))
    return dwconv.convert(model).eval()


def _count_dw(model):
    return sum(isinstance(m, dwconv.FastDWConv) for m in model.modules())


def _rel_close(actual, expected, what, factor=10.0):
    assert_close(actual, expected.double(), F32, what, factor=factor)


# --------------------------------------------------------------------------------------------------------
# TorchScript

CONV_CASES = {
    "k5_pad2": dict(in_channels=6, out_channels=6, kernel_size=5, padding=2),
    "same_even_kernel_dilated": dict(in_channels=4, out_channels=4, kernel_size=(4, 3), padding="same", dilation=2),
    "valid_stride_multiplier": dict(in_channels=3, out_channels=6, kernel_size=3, padding="valid", stride=(2, 1)),
    "reflect_no_bias": dict(in_channels=4, out_channels=4, kernel_size=3, padding=(1, 2), padding_mode="reflect",
                            bias=False),
    "circular": dict(in_channels=4, out_channels=8, kernel_size=3, padding=1, padding_mode="circular"),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_script_runs_the_dwconv_op_and_matches_eager(case):
    torch.manual_seed(1)
    conv = dwconv.FastDWConv(**CONV_CASES[case], backend="cpu")
    scripted = torch.jit.script(conv)
    assert scripted.inlined_graph.findAllNodes(DW_OP), "the scripted module does not call dwconv's op"
    assert not scripted.inlined_graph.findAllNodes("aten::conv2d")
    assert not scripted.inlined_graph.findAllNodes("aten::_convolution")
    x = torch.randn(2, conv.in_channels, 11, 9)
    for inp in (x, x.contiguous(memory_format=torch.channels_last), x[0]):  # channels_last and unbatched too
        torch.testing.assert_close(scripted(inp), conv(inp), rtol=0, atol=0)
    # Saved and loaded (what deployment does), with gradients.
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    xs, xe = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    loaded(xs).square().sum().backward()
    conv(xe).square().sum().backward()
    torch.testing.assert_close(xs.grad, xe.grad, rtol=0, atol=0)


@pytest.mark.parametrize("bad_input, pattern", [
    (torch.randn(2, 5, 9, 9), "multiple of in_channels"),
    (torch.randn(1, 2, 4, 9, 9), "3-D .* or 4-D"),
    (torch.ones(2, 4, 9, 9, dtype=torch.int32), "floating"),
    (torch.randn(2, 4, 2, 9), "greater than the padded input"),
    (torch.randn(2, 4, 9, 9, device="meta"), "same device"),
])
def test_scripted_module_rejects_bad_input(bad_input, pattern):
    scripted = torch.jit.script(dwconv.FastDWConv(4, 4, 7, padding=1))
    with pytest.raises(torch.jit.Error, match=pattern):  # what a TorchScript `raise` becomes
        scripted(bad_input)


def test_trace_runs_the_dwconv_op():
    model = _mixed_model()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
    assert len(traced.inlined_graph.findAllNodes(DW_OP)) == _count_dw(model)
    assert len(traced.inlined_graph.findAllNodes("aten::_convolution")) == 2  # the 1x1 convs only
    torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", robust_models.list_models())
def test_script_and_trace_robust_resnets(name):
    model = _robust_resnet(name)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        scripted = torch.jit.script(model)
        traced = torch.jit.trace(model, x, check_trace=False)
    assert len(scripted.inlined_graph.findAllNodes(DW_OP, recurse=True)) == _count_dw(model)
    assert len(traced.inlined_graph.findAllNodes(DW_OP)) == _count_dw(model)
    with torch.no_grad(), torch.jit.optimized_execution(False):  # one run: skip the profiling executor's passes
        torch.testing.assert_close(scripted(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(traced(x), expected, rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", robust_models.list_models())
def test_script_released_robust_resnets(name):
    """The released sizes (robust_models.create_model(name)): the small ones above cover the code paths."""
    torch.manual_seed(0)
    model = robust_models.create_model(name).eval()
    scripted = torch.jit.script(model)
    assert len(scripted.inlined_graph.findAllNodes(DW_OP, recurse=True)) == _count_dw(model) > 0
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), torch.jit.optimized_execution(False):
        torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------------
# torch.fx

def _dw_nodes(graph_module):
    return [n for n in graph_module.graph.nodes if n.op == "call_function" and n.target is dwconv.depthwise_conv2d]


def test_symbolic_trace_keeps_one_node_per_depthwise_conv():
    model = _mixed_model()
    gm = torch.fx.symbolic_trace(model)
    assert len(_dw_nodes(gm)) == _count_dw(model) == 3
    # Nothing of the validation or the backend choice leaks into the graph: every node is a module call,
    # a parameter, the input/output, or one of the dwconv calls.
    kinds = {(n.op, n.target if n.op == "call_function" else None) for n in gm.graph.nodes}
    assert kinds == {("placeholder", None), ("output", None), ("call_module", None), ("get_attr", None),
                     ("call_function", dwconv.depthwise_conv2d)}
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)
    # A direct call of the functional traces to one node too.
    weight = torch.randn(6, 1, 3, 3)
    fn = torch.fx.symbolic_trace(lambda t: dwconv.depthwise_conv2d(t, weight, None, 1, 1).relu())
    assert len(_dw_nodes(fn)) == 1
    torch.testing.assert_close(fn(x[:, :3]), dwconv.depthwise_conv2d(x[:, :3], weight, None, 1, 1).relu())


def test_torchvision_feature_extractor_on_a_robust_resnet():
    feature_extraction = pytest.importorskip("torchvision.models.feature_extraction")
    model = _robust_resnet("robust_resnet_inverted_dw_small")
    x = torch.randn(2, 3, 64, 64)
    names = ["stages.1.blocks.0.conv_dw", "stages.2", "head.fc"]
    extractor = feature_extraction.create_feature_extractor(model, return_nodes=names)
    captured = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: captured.__setitem__(n, o)) for n in names]
    model(x)
    for h in hooks:
        h.remove()
    features = extractor(x)
    assert list(features) == names
    for n in names:
        torch.testing.assert_close(features[n], captured[n], rtol=0, atol=0)


def test_fx_conv_bn_fusion_runs_and_keeps_the_numbers():
    """torch.fx.experimental.optimization.fuse folds BatchNorms into the nn.Conv2d before them; a FastDWConv
    is a traced call, not an nn.Conv2d module, so its BatchNorm stays (dwconv.fold_batchnorm folds those)."""
    from torch.fx.experimental.optimization import fuse
    torch.manual_seed(2)
    model = dwconv.convert(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                         nn.Conv2d(8, 8, 7, padding=3, groups=8), nn.BatchNorm2d(8))).eval()
    for bn in (model[1], model[4]):
        with torch.no_grad():
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 1.5)
    fused = fuse(model)
    assert len(_dw_nodes(fused)) == 1
    assert sum(isinstance(m, nn.BatchNorm2d) for m in fused.modules()) == 1  # the FastDWConv's
    x = torch.randn(2, 3, 16, 16)
    _rel_close(fused(x), model(x), "fused model")


def test_fx_quantization_keeps_fastdwconv_in_float():
    """FX graph-mode quantization (prepare_fx, calibrate, convert_fx) has no quantized counterpart for the
    dwconv call: it stays a float op on a dequantized input, its output is observed and quantized for the
    next quantized layer, and its weights stay float. The model runs and stays close to the float model."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    torch.manual_seed(3)
    model = dwconv.convert(nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 5, padding=2, groups=8),
                                         nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))).eval()
    x = torch.randn(4, 3, 16, 16)
    prepared = prepare_fx(copy.deepcopy(model), get_default_qconfig_mapping("x86"), (x,))
    (node,) = _dw_nodes(prepared)
    assert "activation_post_process" in node.args[0].target  # its input is observed ...
    (user,) = node.users
    assert "activation_post_process" in user.target  # ... and its output
    for _ in range(4):
        prepared(torch.randn(4, 3, 16, 16))
    quantized = convert_fx(prepared)
    (node,) = _dw_nodes(quantized)
    assert node.args[0].op == "call_method" and node.args[0].target == "dequantize"
    (user,) = node.users
    assert user.target is torch.quantize_per_tensor
    weight = getattr(quantized, node.args[1].target.split(".")[0]).weight
    assert weight.dtype == F32 and not weight.is_quantized
    y, expected = quantized(x), model(x)
    assert (y - expected).norm() / expected.norm() < 0.05  # int8 activations around it


# --------------------------------------------------------------------------------------------------------
# torch.export

def test_torch_export_keeps_the_op_and_decomposes_to_aten_on_request():
    model = _mixed_model()
    x = torch.randn(2, 3, 16, 16)
    program = torch.export.export(model, (x,))
    dw_op = torch.ops.dwconv.depthwise_conv2d.default
    targets = [n.target for n in program.graph.nodes]
    assert targets.count(dw_op) == 3
    torch.testing.assert_close(program.module()(x), model(x), rtol=0, atol=0)
    assert [n.target for n in program.run_decompositions().graph.nodes].count(dw_op) == 3
    decomposed = dwconv.onnx_export.decompose(program)
    assert dw_op not in [n.target for n in decomposed.graph.nodes]
    _rel_close(decomposed.module()(x), model(x), "decomposed program")


@pytest.mark.slow
def test_aot_inductor_package_calls_the_dwconv_op(tmp_path, monkeypatch):
    """AOTInductor compiles the exported program into a package whose depthwise convs call dwconv's op (through
    its proxy executor, in a process that has imported dwconv), with the eager numbers."""
    model = _mixed_model(seed=3)
    x = torch.randn(2, 3, 16, 16)
    program = torch.export.export(model, (x,))
    path = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "model.pt2"))
    loaded = torch._inductor.aoti_load_package(path)
    calls = []
    run = dwconv.dispatch.run
    monkeypatch.setattr(dwconv.dispatch, "run", lambda spec, op, *rest: (calls.append(op), run(spec, op, *rest))[1])
    with torch.no_grad():
        y = loaded(x)
    assert calls == ["fwd"] * 3
    _rel_close(y, model(x), "AOTInductor package")


# --------------------------------------------------------------------------------------------------------
# ONNX

def _export_onnx(model, x, dynamo):
    onnx = pytest.importorskip("onnx")
    if dynamo:
        pytest.importorskip("onnxscript")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            return torch.onnx.export(model, (x,), dynamo=True, verbose=False).model_proto
        buffer = io.BytesIO()
        torch.onnx.export(model, (x,), buffer, dynamo=False)
    return onnx.load_from_string(buffer.getvalue())


def _run_onnx(proto, x):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def _depthwise_groups(model):
    return sorted(m.in_channels for m in model.modules() if isinstance(m, dwconv.FastDWConv))


def _check_onnx(model, x, dynamo, expected=None, groups=None, factor=10.0):
    """Export, check every depthwise conv is a standard Conv with group = its input channels (`groups`,
    default: the model's FastDWConvs) and that no node is in a custom domain, then run in ONNX Runtime
    against `expected` (default: the model's output)."""
    expected = model(x) if expected is None else expected
    groups = _depthwise_groups(model) if groups is None else groups
    proto = _export_onnx(model, x, dynamo)
    custom = {n.domain for n in proto.graph.node} - {"", "ai.onnx"}
    assert not custom and not proto.functions, f"custom-domain nodes or functions: {custom}"
    conv_groups = [next((a.i for a in n.attribute if a.name == "group"), 1)
                   for n in proto.graph.node if n.op_type == "Conv"]
    assert sorted(g for g in conv_groups if g > 1) == groups
    _rel_close(_run_onnx(proto, x), expected, f"ONNX Runtime ({'dynamo' if dynamo else 'TorchScript'} exporter)",
               factor)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_onnx_every_conv_geometry(dynamo):
    model = _mixed_model()
    with torch.no_grad():
        _check_onnx(model, torch.randn(2, 3, 16, 16), dynamo)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", robust_models.list_models())
def test_onnx_robust_resnets(name, dynamo):
    model = _robust_resnet(name)
    with torch.no_grad():
        _check_onnx(model, torch.randn(1, 3, 64, 64), dynamo)


def test_onnx_of_a_scripted_module():
    """A ScriptModule's graph holds dwconv's op: the registered symbolic writes it as Conv."""
    model = _mixed_model()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        _check_onnx(torch.jit.script(model), x, dynamo=False, expected=model(x), groups=_depthwise_groups(model))


def test_onnx_of_an_exported_program():
    model = _mixed_model()
    x = torch.randn(2, 3, 16, 16)
    program = dwconv.onnx_export.decompose(torch.export.export(model, (x,)))
    pytest.importorskip("onnxscript")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = torch.onnx.export(program, dynamo=True, verbose=False).model_proto
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    assert sorted(next((a.i for a in n.attribute if a.name == "group"), 1) for n in proto.graph.node
                  if n.op_type == "Conv") == [1, 1] + _depthwise_groups(model)
    with torch.no_grad():
        _rel_close(_run_onnx(proto, x), model(x), "ONNX Runtime")


def test_eager_and_compile_do_not_take_the_export_route():
    """The F.conv2d route is for ONNX export only: eager, torch.compile and torch.export run dwconv's op."""
    model = _mixed_model()
    x = torch.randn(2, 3, 16, 16)
    with torch.profiler.profile() as prof:
        model(x)
    names = {e.name for e in prof.events()}
    assert "aten::convolution" in names  # the 1x1 convs
    assert sum(e.name == "dwconv::native_fwd" for e in prof.events()) == 3  # dwconv's kernels, not F.conv2d
    from torch._dynamo.testing import CompileCounterWithBackend
    counter = CompileCounterWithBackend("eager")
    torch.compile(model, fullgraph=True, backend=counter)(x)
    (graph,) = counter.graphs
    dw_op = torch.ops.dwconv.depthwise_conv2d
    assert sum(n.target in (dw_op, dw_op.default) for n in graph.graph.nodes) == 3


@pytest.mark.parametrize("route", ["functional", "op"])
def test_compiled_autograd_runs_the_backward(route):
    """Compiled autograd (a backward traced by torch.compile) through both routes a training call can take:
    the functional's direct Function and the custom op's (autocast, modes, subclasses take the op); gradients
    equal eager's."""
    from torch._dynamo import compiled_autograd
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 4, 9, 8, generator=g), torch.randn(4, 1, 3, 3, generator=g), torch.randn(4, generator=g)
    call = (lambda x, w, b: dwconv.depthwise_conv2d(x, w, b, 1, 1, backend="cpu")) if route == "functional" else (
        lambda x, w, b: torch.ops.dwconv.depthwise_conv2d(x, w, b, [1, 1], [1, 1, 1, 1], [1, 1], "cpu"))
    grads = []
    for compiled in (False, True):
        torch._dynamo.reset()
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        loss = call(*leaves).pow(2).sum()
        if compiled:
            with compiled_autograd._enable(torch.compile(backend="eager")):
                loss.backward()
        else:
            loss.backward()
        grads.append([t.grad for t in leaves])
    for got, expected, what in zip(*grads, ("x", "w", "b")):
        assert_close(got, expected.double(), torch.float32, what)
