"""CPU outputs of 4 MiB and more that dwconv's kernels allocate are advised for transparent huge pages
(dwconv/outputs.py, csrc/cpu/huge_pages.cpp, csrc/cpu/output_pool.cpp): the hint reaches the output's mapping,
changes no value, the huge_pages setting turns it off, and the op advises nothing outside the tensor it is given.
With the output pool off (output_pool_mib=0) outputs are torch.empty's memory, advised by advise_huge_pages; with
it on, the pool advises each block it maps."""
import pathlib
import sys

import pytest
import torch

import dwconv
from dwconv import _extension, config, outputs
from utils import assert_close, make_inputs, poisoned_outputs, reference_conv, reference_grads

THP = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")
pytestmark = [
    pytest.mark.skipif(not _extension.has_huge_page_hint(), reason="needs the C++ extension's CPU kernels"),
    pytest.mark.skipif(not sys.platform.startswith("linux") or not THP.exists(),
                       reason="transparent huge pages are a Linux kernel feature, absent here"),
]

# 1 x 8 x 1100 x 1100 fp32: 38.7 MB, above glibc's largest mmap threshold (32 MiB), so every output is a fresh
# mapping (never one an earlier, advised output left behind), yet a cheap 3x3 conv.
FRESH_SHAPE = (1, 8, 1100, 1100, 3)


@pytest.fixture
def advised(monkeypatch):
    """The outputs new_output advises, in order (with the output pool off: torch.empty's memory)."""
    for name in ("_settings", "generation"):  # restored after the test
        monkeypatch.setattr(config, name, getattr(config, name))
    config.set(output_pool_mib=0)
    calls = []
    hint = outputs.advise_huge_pages
    monkeypatch.setattr(outputs, "advise_huge_pages", lambda out: (calls.append(out.data_ptr()), hint(out))[1])
    return calls


def vm_flags(address: int) -> list:
    """The VmFlags of the mapping that holds `address` ("hg": advised for huge pages), from /proc/self/smaps."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split(maxsplit=1)[0]
            if not head.endswith(":"):
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "VmFlags:":
                return line.split()[1:]
    raise AssertionError(f"address {address:#x} is in no mapping of this process")


def middle(t: torch.Tensor) -> int:
    return t.data_ptr() + t.nbytes // 2


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_large_outputs_advised_and_exact(channels_last, advised):
    n, c, h, w, k = FRESH_SHAPE
    x, wt, b = make_inputs(n, c, h, w, k, channels_last=channels_last, seed=11)
    x.requires_grad_(True)
    with config.override(huge_pages=True), poisoned_outputs():
        y = dwconv.depthwise_conv2d(x, wt, b, padding=1, backend="cpu")
        assert advised == [y.data_ptr()] and "hg" in vm_flags(middle(y))
        grad_out = torch.randn_like(y)
        dx, = torch.autograd.grad(y, x, grad_out)
        assert advised[1:] == [dx.data_ptr()] and "hg" in vm_flags(middle(dx))
    y_ref, dx_ref, _, _ = reference_grads(x, wt, b, grad_out, (1, 1), (1, 1, 1, 1), (1, 1))
    assert_close(y, y_ref, torch.float32, "forward")
    assert_close(dx, dx_ref, torch.float32, "dgrad")


def test_setting_off(advised):
    n, c, h, w, k = FRESH_SHAPE
    x, wt, b = make_inputs(n, c, h, w, k, seed=12)
    with config.override(huge_pages=False):
        y = dwconv.depthwise_conv2d(x, wt, b, padding=1, backend="cpu")
    assert y.nbytes >= outputs.LARGE_OUTPUT_BYTES and advised == []


def test_threshold(advised):
    x, wt, b = make_inputs(2, 16, 32, 32, 3, seed=13)
    with config.override(huge_pages=True):
        small = dwconv.depthwise_conv2d(x, wt, b, padding=1, backend="cpu")
        assert small.nbytes < outputs.LARGE_OUTPUT_BYTES and advised == []
        xl, wl, bl = make_inputs(1, 8, 363, 363, 3, seed=14)  # 4,216,608 bytes: just above 4 MiB
        large = dwconv.depthwise_conv2d(xl, wl, bl, padding=1, backend="cpu")
    assert large.nbytes >= outputs.LARGE_OUTPUT_BYTES and advised == [large.data_ptr()]


def test_advise_op_edges():
    advise = torch.ops.dwconv.advise_huge_pages
    assert advise(torch.empty(1000)) is False  # holds no whole 2 MiB page
    assert advise(torch.empty(0)) is False
    fresh = torch.empty(10 << 20)  # 40 MiB: a fresh mapping
    assert advise(fresh[1:]) is True and "hg" in vm_flags(middle(fresh))
    with pytest.raises(RuntimeError, match="non-overlapping"):  # a view reaching past its storage's 4 bytes
        advise(torch.empty(1).expand(3 << 20))
    with pytest.raises(RuntimeError, match="advise_huge_pages"):  # registered for CPU tensors only
        advise(torch.empty(8, device="meta"))


@pytest.mark.skipif(not _extension.has_output_pool(), reason="needs the C++ extension's output pool")
@pytest.mark.parametrize("huge_pages", [True, False], ids=["advised", "not-advised"])
def test_pool_blocks_advised(huge_pages):
    n, c, h, w, k = FRESH_SHAPE
    x, wt, b = make_inputs(n, c, h, w, k, seed=15)
    dwconv.empty_output_pool()
    with config.override(huge_pages=huge_pages, output_pool_mib=1024):
        misses = dwconv.output_pool_stats()["misses"]
        y = dwconv.depthwise_conv2d(x, wt, b, padding=1, backend="cpu")
        assert dwconv.output_pool_stats()["misses"] == misses + 1  # a fresh block, advised as it was mapped
    assert ("hg" in vm_flags(middle(y))) == huge_pages
    assert_close(y, reference_conv(x, wt, b, (1, 1), (1, 1, 1, 1), (1, 1)), torch.float32)
