"""dwconv: fast large-kernel depthwise convolutions for PyTorch.

    y = dwconv.depthwise_conv2d(x, weight, bias, stride, padding, dilation, backend="auto")
    conv = dwconv.FastDWConv(C, C, 11, padding=5)        # an nn.Conv2d with groups=C
    model = dwconv.convert(model)                         # swap every depthwise nn.Conv2d in place
    model = dwconv.fold_batchnorm(model.eval())           # inference: BatchNorms folded into the convs before them
    dwconv.available_backends("cuda")                     # which backends can serve here, and why not
    dwconv.empty_output_pool()                            # free the memory kept for large CPU outputs
"""
import torch  # noqa: F401  (must precede the extension, which links against libtorch)

from . import _extension, config, ops  # noqa: F401
from .backends import BACKENDS, BackendUnavailableError, available_backends
from .convert import convert, is_depthwise_conv
from .fold import fold_batchnorm
from .flops import register_fvcore
from .functional import depthwise_conv2d
from .config import set_benchmark
from .module import FastDWConv
from .outputs import empty_output_pool, output_pool_stats

_extension.load()
register_fvcore()

__version__ = "0.1.0"
__all__ = ["depthwise_conv2d", "FastDWConv", "convert", "available_backends", "BACKENDS",
           "BackendUnavailableError", "is_depthwise_conv", "set_benchmark", "config", "fold_batchnorm",
           "empty_output_pool", "output_pool_stats"]
