"""ONNX export: a dwconv depthwise conv becomes the standard ONNX `Conv` with group = C.

Two routes, so that a plain `torch.onnx.export(model, ...)` needs nothing from dwconv:
- While torch.onnx exports (either exporter: dynamo=True captures the model with torch.export,
  dynamo=False traces it), `dwconv.depthwise_conv2d` computes with F.conv2d, which both exporters
  translate to Conv. Outside an export this never happens (torch.compile folds the check to False).
- A graph that already holds the op (a ScriptModule given to the TorchScript exporter) is translated
  by an ONNX symbolic for `dwconv::depthwise_conv2d`, registered when this module is imported (by dwconv).
An ExportedProgram that holds the op is turned into aten convolutions by `decompose(program)` before
`torch.onnx.export(program, ...)`.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
import torch.onnx
from torch import Tensor

_OPSET = 7  # the oldest opset the TorchScript exporter writes; Conv is older


def exporting() -> bool:
    """True while torch.onnx.export runs (either exporter). Both capture the model by exporting or tracing
    it, two cheap checks that come first."""
    return (torch.compiler.is_exporting() or torch.jit.is_tracing()) and torch.onnx.is_in_onnx_export()


def as_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride, padding, dilation) -> Tensor:
    """The depthwise conv as F.conv2d (groups = C); padding is (top, bottom, left, right)."""
    pt, pb, pl, pr = padding
    if pt != pb or pl != pr:
        x = F.pad(x, (pl, pr, pt, pb))
        pt = pl = 0
    return F.conv2d(x, weight, bias, tuple(stride), (pt, pl), tuple(dilation), groups=x.shape[1])


def _decomposition(x, weight, bias, stride, padding, dilation, backend):
    return as_conv2d(x, weight, bias, stride, padding, dilation)


def decompose(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """program with every dwconv::depthwise_conv2d replaced by an aten convolution (groups = C), e.g. before
    handing an ExportedProgram to torch.onnx.export."""
    return program.run_decompositions({torch.ops.dwconv.depthwise_conv2d.default: _decomposition})


def _symbolic(g, x, weight, bias, stride, padding, dilation, backend):
    """TorchScript-exporter symbolic: dwconv::depthwise_conv2d -> Conv(x, weight[, bias])."""
    from torch.onnx import symbolic_helper

    stride = symbolic_helper._get_const(stride, "is", "stride")
    pt, pb, pl, pr = symbolic_helper._get_const(padding, "is", "padding")
    dilation = symbolic_helper._get_const(dilation, "is", "dilation")
    channels = symbolic_helper._get_tensor_dim_size(x, 1)
    weight_sizes = symbolic_helper._get_tensor_sizes(weight)
    if channels is None or weight_sizes is None or None in weight_sizes[2:]:
        raise torch.onnx.errors.SymbolicValueError(
            "dwconv::depthwise_conv2d exports as Conv with group = channels, which needs the input's channel "
            "count and the kernel size known at export time", x)
    inputs = [x, weight] if symbolic_helper._is_none(bias) else [x, weight, bias]
    return g.op("Conv", *inputs, kernel_shape_i=weight_sizes[2:], strides_i=stride, pads_i=[pt, pl, pb, pr],
                dilations_i=dilation, group_i=channels)


torch.onnx.register_custom_op_symbolic("dwconv::depthwise_conv2d", _symbolic, _OPSET)
