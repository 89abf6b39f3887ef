"""Small timm models with depthwise convs, converted with dwconv.convert, through TorchScript (timm's
set_scriptable path), torch.jit.trace, torch.fx (timm's FX feature extraction), torch.export and ONNX
Runtime, each against the unconverted model's output."""
from __future__ import annotations

import copy
import functools
import io
import warnings

import pytest
import torch

import dwconv
from utils import assert_close

timm = pytest.importorskip("timm")

# ConvNeXt (7x7), MobileNetV3 (3x3 / 5x5, squeeze-excite), EfficientNet (TinyNet-E: EfficientNet-B0 scaled
# down; 3x3 / 5x5, strided), RepViT (3x3 and 1x1 depthwise branches; fewer blocks than released).
MODEL_ARGS = {"convnext_atto": {}, "mobilenetv3_small_050": {}, "tinynet_e": {},
              "repvit_m0_9": dict(depth=(1, 1, 2, 1))}
MODELS = list(MODEL_ARGS)
DW_OP = "dwconv::depthwise_conv2d"


@functools.lru_cache(maxsize=None)
def _models(name):
    """(unconverted, converted, input, unconverted output), built once per model for all tests."""
    from timm.layers import set_scriptable
    torch.manual_seed(0)
    with set_scriptable(True):  # as timm's TorchScript tests build models
        plain = timm.create_model(name, pretrained=False, num_classes=10, **MODEL_ARGS[name]).eval()
    fast = dwconv.convert(copy.deepcopy(plain))
    assert sum(isinstance(m, dwconv.FastDWConv) for m in fast.modules()) > 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = plain(x)
    return plain, fast, x, expected


def _close(actual, expected, what):
    assert_close(actual, expected.double(), torch.float32, what, factor=10)


@pytest.mark.parametrize("name", MODELS)
def test_script_and_trace(name):
    _, fast, x, expected = _models(name)
    n_dw = sum(isinstance(m, dwconv.FastDWConv) for m in fast.modules())
    with torch.no_grad():
        scripted = torch.jit.script(fast)
        traced = torch.jit.trace(fast, x, check_trace=False)
    assert len(scripted.inlined_graph.findAllNodes(DW_OP, recurse=True)) == n_dw
    assert len(traced.inlined_graph.findAllNodes(DW_OP)) == n_dw
    with torch.no_grad(), torch.jit.optimized_execution(False):  # one run: skip the profiling executor's passes
        _close(scripted(x), expected, "scripted")
        _close(traced(x), expected, "traced")


@pytest.mark.parametrize("name", MODELS)
def test_fx(name):
    """timm's FX feature extraction (as its test_model_forward_fx): the output of the graph's last node."""
    from timm.layers import create_feature_extractor, get_graph_node_names
    _, fast, x, expected = _models(name)
    _, eval_nodes = get_graph_node_names(fast)
    extractor = create_feature_extractor(fast, [eval_nodes[-1]])
    n_dw = sum(isinstance(m, dwconv.FastDWConv) for m in fast.modules())
    assert sum(n.target is dwconv.depthwise_conv2d for n in extractor.graph.nodes) == n_dw
    with torch.no_grad():
        _close(list(extractor(x).values())[0], expected, "FX feature extractor")


@pytest.mark.parametrize("name", MODELS)
def test_export(name):
    _, fast, x, expected = _models(name)
    program = torch.export.export(fast, (x,))
    assert any(n.target is torch.ops.dwconv.depthwise_conv2d.default for n in program.graph.nodes)
    with torch.no_grad():
        _close(program.module()(x), expected, "exported program")


@pytest.mark.parametrize("name, dynamo", [(name, False) for name in MODELS] + [("convnext_atto", True)])
def test_onnx_runtime(name, dynamo):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    if dynamo:
        pytest.importorskip("onnxscript")
    _, fast, x, expected = _models(name)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            proto = torch.onnx.export(fast, (x,), dynamo=True, verbose=False).model_proto
        else:
            buffer = io.BytesIO()
            torch.onnx.export(fast, (x,), buffer, dynamo=False)
            proto = onnx.load_from_string(buffer.getvalue())
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"} and not proto.functions
    groups = sorted(next((a.i for a in n.attribute if a.name == "group"), 1)
                    for n in proto.graph.node if n.op_type == "Conv")
    assert [g for g in groups if g > 1] == sorted(m.in_channels for m in fast.modules()
                                                  if isinstance(m, dwconv.FastDWConv))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    y = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    _close(torch.from_numpy(y), expected, "ONNX Runtime")
