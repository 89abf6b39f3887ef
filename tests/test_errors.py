"""Bad input raises a clear exception (never a crash, never a silent wrong answer)."""
import pytest
import torch

import dwconv

ANY_ERROR = (TypeError, ValueError, RuntimeError)


def _x(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


BAD_CALLS = {
    "input rank 2": (lambda: dwconv.depthwise_conv2d(_x(4, 9), _x(4, 1, 3, 3)), "3-D .* or 4-D"),
    "input rank 5": (lambda: dwconv.depthwise_conv2d(_x(1, 4, 9, 9, 2), _x(4, 1, 3, 3)), "3-D .* or 4-D"),
    "weight rank 3": (lambda: dwconv.depthwise_conv2d(_x(1, 4, 9, 9), _x(4, 3, 3)), "weight must be 4-D"),
    "not depthwise": (lambda: dwconv.depthwise_conv2d(_x(1, 4, 9, 9), _x(4, 2, 3, 3)), "not a depthwise weight"),
    "out not multiple": (lambda: dwconv.depthwise_conv2d(_x(1, 4, 9, 9), _x(6, 1, 3, 3)), "multiple of in_channels"),
    "dtype mismatch": (lambda: dwconv.depthwise_conv2d(_x(1, 4, 9, 9), _x(4, 1, 3, 3, dtype=torch.float64)),
                       "same dtype"),
    "device mismatch": (lambda: dwconv.depthwise_conv2d(_x(1, 4, 9, 9), torch.randn(4, 1, 3, 3, device="meta")),
                        "same device"),
    "integer input": (lambda: dwconv.depthwise_conv2d(torch.ones(1, 4, 9, 9, dtype=torch.int32),
                                                      torch.ones(4, 1, 3, 3, dtype=torch.int32)), "floating"),
    "zero stride": (lambda: dwconv.depthwise_conv2d(_x(1, 4, 9, 9), _x(4, 1, 3, 3), stride=0), "stride must be positive"),
    "negative stride": (lambda: dwconv.depthwise_conv2d(_x(1, 4, 9, 9), _x(4, 1, 3, 3), stride=(1, -1)),
                        "stride must be positive"),
    "zero dilation": (lambda: dwconv.depthwise_conv2d(_x(1, 4, 9, 9), _x(4, 1, 3, 3), dilation=0),
                      "dilation must be positive"),
    "negative padding": (lambda: dwconv.depthwise_conv2d(_x(1, 4, 9, 9), _x(4, 1, 3, 3), padding=-1), "negative padding"),
    "kernel too large": (lambda: dwconv.depthwise_conv2d(_x(1, 4, 5, 5), _x(4, 1, 7, 7)), "greater than the padded input"),
    "kernel too large dilated": (lambda: dwconv.depthwise_conv2d(_x(1, 4, 9, 9), _x(4, 1, 3, 3), dilation=5),
                                 "greater than the padded input"),
    "same with stride": (lambda: dwconv.depthwise_conv2d(_x(1, 4, 9, 9), _x(4, 1, 3, 3), stride=2, padding="same"),
                         "'same' is not supported for strided"),
    "bad padding string": (lambda: dwconv.depthwise_conv2d(_x(1, 4, 9, 9), _x(4, 1, 3, 3), padding="full"),
                           "Invalid padding string"),
    "bias shape": (lambda: dwconv.depthwise_conv2d(_x(1, 4, 9, 9), _x(4, 1, 3, 3), _x(5)), "bias must have shape"),
    "bias rank": (lambda: dwconv.depthwise_conv2d(_x(1, 4, 9, 9), _x(4, 1, 3, 3), _x(4, 1)), "bias must have shape"),
    "bias dtype": (lambda: dwconv.depthwise_conv2d(_x(1, 4, 9, 9), _x(4, 1, 3, 3), _x(4, dtype=torch.float64)),
                   "bias"),
    "unknown backend": (lambda: dwconv.depthwise_conv2d(_x(1, 4, 9, 9), _x(4, 1, 3, 3), backend="cudnn"),
                        "unknown dwconv backend"),
    "stride triple": (lambda: dwconv.depthwise_conv2d(_x(1, 4, 9, 9), _x(4, 1, 3, 3), stride=(1, 1, 1)),
                      "stride must be an int or a pair"),
    "empty spatial size": (lambda: dwconv.depthwise_conv2d(_x(1, 2, 0, 5), _x(2, 1, 1, 1), padding=1),
                           "zero batch or zero channel"),
    "not a tensor": (lambda: dwconv.depthwise_conv2d([[1.0]], _x(4, 1, 3, 3)), "must be a tensor"),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_input_raises(name):
    call, pattern = BAD_CALLS[name]
    with pytest.raises(ANY_ERROR, match=pattern):
        call()


def test_named_backend_that_cannot_serve_raises():
    x, w = _x(1, 4, 9, 9), _x(4, 1, 3, 3)
    with pytest.raises(dwconv.BackendUnavailableError, match="'cuda' cannot run this call"):
        dwconv.depthwise_conv2d(x, w, backend="cuda")


def test_module_rejects_non_depthwise_and_unknown_backend():
    with pytest.raises(ValueError, match="groups"):
        dwconv.FastDWConv(4, 8, 3, groups=2)
    with pytest.raises(ValueError, match="unknown dwconv backend"):
        dwconv.FastDWConv(4, 4, 3, backend="fast")
    with pytest.raises(ValueError, match="unknown dwconv backend"):
        dwconv.convert(torch.nn.Conv2d(4, 4, 3, groups=4), backend="nope")
