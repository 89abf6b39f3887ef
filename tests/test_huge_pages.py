"""CPU outputs of 4 MiB and more are backed by transparent huge pages (dwconv/outputs.py,
csrc/cpu/huge_pages.cpp): the hint reaches the kernel's mapping of the output, changes no value, and the
huge_pages setting turns it off."""
import pathlib
import sys

import pytest
import torch

import dwconv
from dwconv import _extension, config, outputs
from utils import assert_close, make_inputs, poisoned_outputs, reference_grads

THP = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")
pytestmark = [
    pytest.mark.skipif(not _extension.has_cpu_kernels(), reason="needs the C++ extension's CPU kernels"),
    pytest.mark.skipif(not sys.platform.startswith("linux") or not THP.exists(),
                       reason="transparent huge pages are a Linux kernel feature, absent here"),
]

# 1 x 8 x 512 x 512 fp32: 8.4 MB, above outputs.HUGE_PAGE_MIN_BYTES (whatever malloc's state, a fresh mapping
# or a reused one is all the same to the flag checked), yet a cheap 3x3 conv.
SHAPE = (1, 8, 512, 512, 3)
# 38.7 MB: above glibc's largest mmap threshold (32 MiB), so always a fresh mapping, never one an earlier
# output left advised.
FRESH_SHAPE = (1, 8, 1100, 1100, 3)


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
def test_large_outputs_advised_and_exact(channels_last):
    n, c, h, w, k = SHAPE
    x, wt, b = make_inputs(n, c, h, w, k, channels_last=channels_last, seed=11)
    x.requires_grad_(True)
    assert x.nbytes >= outputs.HUGE_PAGE_MIN_BYTES
    with config.override(huge_pages=True), poisoned_outputs():
        y = dwconv.depthwise_conv2d(x, wt, b, padding=1, backend="cpu")
        assert "hg" in vm_flags(middle(y))
        grad_out = torch.randn_like(y)
        dx, = torch.autograd.grad(y, x, grad_out)
        assert "hg" in vm_flags(middle(dx))
    y_ref, dx_ref, _, _ = reference_grads(x, wt, b, grad_out, (1, 1), (1, 1, 1, 1), (1, 1))
    assert_close(y, y_ref, torch.float32, "forward")
    assert_close(dx, dx_ref, torch.float32, "dgrad")


def test_setting_off_leaves_pages_alone():
    n, c, h, w, k = FRESH_SHAPE
    x, wt, b = make_inputs(n, c, h, w, k, seed=12)
    with config.override(huge_pages=False):
        y = dwconv.depthwise_conv2d(x, wt, b, padding=1, backend="cpu")
    assert "hg" not in vm_flags(middle(y))


def test_small_outputs_not_advised():
    x, wt, b = make_inputs(2, 16, 32, 32, 3, seed=13)
    with config.override(huge_pages=True):
        y = dwconv.depthwise_conv2d(x, wt, b, padding=1, backend="cpu")
    assert y.nbytes < outputs.HUGE_PAGE_MIN_BYTES and "hg" not in vm_flags(middle(y))


def test_advise_op_edges():
    assert torch.ops.dwconv.advise_huge_pages(torch.empty(1000)) is False  # holds no aligned 2 MiB page
    assert torch.ops.dwconv.advise_huge_pages(torch.empty(4 << 20)) is True  # 16 MiB
    with pytest.raises(RuntimeError, match="advise_huge_pages"):  # registered for CPU tensors only
        torch.ops.dwconv.advise_huge_pages(torch.empty(8, device="meta"))
