"""FastDWConv as a drop-in nn.Conv2d, and convert()."""
import copy
import io

import pytest
import torch
import torch.nn as nn

import dwconv
from dwconv import FastDWConv
from utils import assert_close

BACKENDS_HERE = [b for b, reason in dwconv.available_backends("cpu").items() if reason is None]


def test_same_parameters_attributes_and_state_dict_as_conv2d():
    torch.manual_seed(0)
    ref = nn.Conv2d(6, 12, (5, 3), stride=2, padding=(2, 1), dilation=1, groups=6, bias=True)
    fast = FastDWConv(6, 12, (5, 3), stride=2, padding=(2, 1), dilation=1, bias=True)
    for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                 "padding_mode", "transposed", "output_padding"):
        assert getattr(fast, attr) == getattr(ref, attr), attr
    assert isinstance(fast, nn.Conv2d)
    assert list(fast.state_dict()) == list(ref.state_dict())
    fast.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 6, 11, 10)
    assert_close(fast(x), ref(x.double().float()), torch.float32, "state_dict from nn.Conv2d")
    ref2 = nn.Conv2d(6, 12, (5, 3), stride=2, padding=(2, 1), groups=6)
    buf = io.BytesIO()
    torch.save(fast.state_dict(), buf)
    buf.seek(0)
    ref2.load_state_dict(torch.load(buf), strict=True)
    assert torch.equal(ref2.weight, fast.weight) and torch.equal(ref2.bias, fast.bias)


@pytest.mark.parametrize("backend", BACKENDS_HERE)
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding", [3, "same", (1, 2)])
def test_padding_modes_match_conv2d(backend, padding_mode, padding):
    torch.manual_seed(1)
    ref = nn.Conv2d(4, 4, 7, padding=padding, padding_mode=padding_mode, groups=4).double()
    fast = FastDWConv.from_conv2d(copy.deepcopy(ref).float(), backend=backend)
    assert fast.padding_mode == padding_mode and fast.padding == ref.padding
    x = torch.randn(2, 4, 12, 13)
    assert_close(fast(x), ref(x.double()), torch.float32, f"{padding_mode} {padding}")


def test_from_conv2d_shares_parameters_and_keeps_mode_and_hooks():
    conv = nn.Conv2d(8, 8, 5, padding=2, groups=8).eval()
    calls = []
    conv.register_forward_hook(lambda m, i, o: calls.append(1))
    fast = FastDWConv.from_conv2d(conv, backend="torch")
    assert fast.weight is conv.weight and fast.bias is conv.bias
    assert not fast.training
    fast(torch.randn(1, 8, 6, 6))
    assert calls == [1]
    with pytest.raises(ValueError, match="not a depthwise"):
        FastDWConv.from_conv2d(nn.Conv2d(8, 8, 3, groups=2))


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)                     # dense: stays
        self.dw = nn.Conv2d(8, 8, 7, padding=3, groups=8)            # depthwise: swapped
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)       # grouped, not depthwise: stays
        self.block = nn.Sequential(nn.Conv2d(8, 16, 5, padding=2, groups=8),  # multiplier 2: swapped
                                   nn.BatchNorm2d(16), nn.ReLU())
        self.pw = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.pw(self.block(self.grouped(self.dw(self.stem(x)))))


def test_convert_mixed_model_keeps_weights_keys_mode_and_outputs():
    torch.manual_seed(2)
    model = Mixed().eval()
    keys = list(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    same = dwconv.convert(model, backend="torch")
    assert same is model
    assert type(model.stem) is nn.Conv2d and type(model.grouped) is nn.Conv2d and type(model.pw) is nn.Conv2d
    assert isinstance(model.dw, FastDWConv) and isinstance(model.block[0], FastDWConv)
    assert list(model.state_dict()) == keys
    assert not model.training and not model.dw.training
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    dwconv.convert(model, backend="auto")
    assert model.dw.backend == "auto"
    bare = dwconv.FastDWConv(4, 4, 3)
    assert dwconv.convert(bare, backend="torch") is bare and bare.backend == "torch"


def test_convert_keeps_dtype_and_device():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4)).to(torch.float64)
    dwconv.convert(model)
    assert isinstance(model[0], FastDWConv) and model[0].weight.dtype == torch.float64
    assert model(torch.randn(1, 4, 5, 5, dtype=torch.float64)).dtype == torch.float64


def test_module_backward_matches_conv2d():
    torch.manual_seed(3)
    ref = nn.Conv2d(4, 8, 11, padding=5, groups=4)
    fast = FastDWConv.from_conv2d(copy.deepcopy(ref))
    x1 = torch.randn(2, 4, 14, 14, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    g = torch.randn(2, 8, 14, 14)
    ref(x1).backward(g)
    fast(x2).backward(g)
    assert_close(x2.grad, x1.grad.double(), torch.float32, "dx")
    assert_close(fast.weight.grad, ref.weight.grad.double(), torch.float32, "dw")
    assert_close(fast.bias.grad, ref.bias.grad.double(), torch.float32, "db")


def test_available_backends_report():
    report = dwconv.available_backends("cpu")
    assert set(report) == set(dwconv.BACKENDS)
    assert report["torch"] is None
    assert isinstance(report["cuda"], str) and "cuda" in report["cuda"]
    gpu_report = dwconv.available_backends("cuda")
    assert set(gpu_report) == set(dwconv.BACKENDS)
    if not torch.cuda.is_available():
        assert all(isinstance(reason, str) for reason in gpu_report.values()), gpu_report


def test_auto_rule_picks_cpu_kernels_where_they_are_faster():
    """The fallback rule of "auto" (dwconv/dispatch.py) for calls the dispatch table does not cover."""
    from dwconv import config, dispatch
    from dwconv._conv_args import check_and_resolve

    def picked(x, w, op="fwd"):
        assert dwconv.available_backends("cpu")["cpu"] is None, "the cpu backend must be built here"
        with config.override(dispatch_table=False):
            return dispatch.plan_for("auto", op, x, check_and_resolve(x, w, None, 1, w.shape[-1] // 2, 1)).backend

    x = torch.randn(2, 8, 14, 14)
    assert picked(x, torch.randn(8, 1, 11, 11)) == "cpu"
    assert picked(x, torch.randn(8, 1, 3, 3)) == "cpu"
    assert picked(x.contiguous(memory_format=torch.channels_last), torch.randn(8, 1, 7, 7)) == "cpu"
    assert picked(x.contiguous(memory_format=torch.channels_last), torch.randn(8, 1, 3, 3)) == "torch"
    assert picked(x.double(), torch.randn(8, 1, 11, 11, dtype=torch.float64)) == "torch"
    big = torch.randn(2, 8, 56, 56).contiguous(memory_format=torch.channels_last)
    assert picked(big, torch.randn(8, 1, 7, 7), "fwd") == "torch"
    assert picked(big, torch.randn(8, 1, 7, 7), "dgrad") == "cpu"
    assert picked(big, torch.randn(8, 1, 11, 11), "fwd") == "cpu"
