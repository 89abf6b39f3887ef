"""Runs the C++ kernels over a test grid with every tensor placed against an inaccessible region.

    python tests/memcheck_kernels.py SUITE

SUITE is one of SUITES below. Inputs and outputs are copies placed by tests/guarded_memory.py in each of its
placements in turn (the bytes just before, or just after, each tensor are unreadable), and the CUDA kernels'
shared memory ends at an unreadable page (csrc/cuda/host_emulation.h), so a kernel that reads or writes past
either end of a tensor, or past its shared memory, dies with SIGSEGV; the faulthandler traceback and the last
"run:" line name the call. Results are also checked against the float64 reference, so the guarded runs are
real ones. Tensors a binding allocates itself (workspaces) are not guarded. Each suite sets the environment
switches that choose its code path (and checks the CUDA mma switch took effect). Prints
"memcheck: N runs clean" and exits 0 when every run finished. Run by tests/test_memcheck.py.

    python tests/memcheck_kernels.py stray_read_after | stray_read_before | stray_read_shared

The guards' self-test: an emulated kernel reads one element past the end (or before the start) of a guarded
tensor, or past its shared memory, and must die with SIGSEGV.
"""
from __future__ import annotations

import faulthandler
import os
import sys
from typing import Callable, NamedTuple, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from guarded_memory import PLACEMENTS, guarded_copy, guarded_full, start_offset  # noqa: E402
from utils import TOLERANCE, assert_close, make_inputs, reference_grads  # noqa: E402

F32, F64 = torch.float32, torch.float64


class Case(NamedTuple):
    name: str
    n: int
    c: int
    h: int
    w: int
    kernel: object  # int or (KH, KW)
    multiplier: int
    stride: Tuple[int, int]
    padding: Tuple[int, int, int, int]  # top, bottom, left, right
    dilation: Tuple[int, int]
    dtypes: tuple
    bias: bool


class Suite(NamedTuple):
    load_ops: Callable
    cases: Callable
    family: str  # the kernel family the native ops are asked for ("" = the backend's default)
    wgrad_modes: tuple  # deterministic flags to run wgrad with (none: forward and dgrad only)
    mma: Optional[bool] = None  # the CUDA forward must (True) or must not (False) run the mma kernel


def _cuda_host_ops():
    sys.path.insert(0, os.path.join(HERE, "cuda_host"))
    from build_host_kernels import NAMESPACE, load_host_kernels
    load_host_kernels()
    return getattr(torch.ops, NAMESPACE)


def _cpu_ops():
    import dwconv._C  # noqa: F401  (registers torch.ops.dwconv.native_* for CPU tensors)
    return torch.ops.dwconv


def _cuda_cases():
    import test_cuda_backend
    return [Case(*case, bias=True) for case in test_cuda_backend.CASES]


def _mma_cases():
    import test_cuda_mma
    cases = []
    for name, n, c, h, w, k, m, pad, bias in test_cuda_mma.CASES:
        cases.append(Case(name, n, c, h, w, k, m, (1, 1), pad, (1, 1), (torch.float16, torch.bfloat16), bias))
    return cases


def _cpu_cases(dtypes=None):
    import test_cpu_backend
    cases = []
    for case in test_cpu_backend.CASES:
        n, c, h, w, k, m, stride, pad, dil = case
        cases.append(Case(test_cpu_backend._ids(case), n, c, h, w, k, m, stride, pad, dil,
                          dtypes or tuple(test_cpu_backend.DTYPES), True))
    return cases


SUITES = {
    "cuda_host": Suite(_cuda_host_ops, _cuda_cases, "fma", (False, True), mma=False),
    "cuda_host_mma": Suite(_cuda_host_ops, _mma_cases, "mma", (), mma=True),
    "cpu": Suite(_cpu_ops, _cpu_cases, "", (True,)),
    "cpu_portable": Suite(_cpu_ops, lambda: _cpu_cases((torch.float32, torch.bfloat16)), "portable", (True,)),
    "cpu_avx512": Suite(_cpu_ops, _cpu_cases, "avx512", (True,)),
    "cpu_avx512bf16": Suite(_cpu_ops, lambda: _cpu_cases((torch.bfloat16,)), "avx512bf16", (True,)),
}


def _output_shape(case: Case, x, wt):
    pt, pb, pl, pr = case.padding
    out = F.conv2d(F.pad(x[:1, :1].double(), (pl, pr, pt, pb)), wt[:1].double(), None, case.stride, 0,
                   case.dilation)
    return (case.n, wt.shape[0]) + tuple(out.shape[2:])


def run_case(ops, suite: Suite, case: Case, dtype, placements) -> int:
    """The case in both layouts, each in every placement; returns the number of runs. The float64 reference is
    computed once (the layouts hold the same values)."""
    x, wt, b = make_inputs(case.n, case.c, case.h, case.w, case.kernel, case.multiplier, dtype=dtype,
                           seed=case.n * 1000 + case.c)
    b = b if case.bias else None
    grad_out = torch.randn(_output_shape(case, x, wt)).to(dtype)
    y_ref, dx_ref, dw_ref, _ = reference_grads(x, wt, b, grad_out, case.stride, case.padding, case.dilation)
    geometry = (list(case.stride), list(case.padding), list(case.dilation))
    runs = 0
    for channels_last in (False, True):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        layout = "nhwc" if channels_last else "nchw"
        for placement in placements:
            print(f"run: {case.name} {str(dtype)[6:]} {layout} {placement}", flush=True)
            xg, dy = (guarded_copy(t.contiguous(memory_format=fmt), placement) for t in (x, grad_out))
            wg = guarded_copy(wt, placement)
            bg = None if b is None else guarded_copy(b, placement)
            y = guarded_full(y_ref.to(dtype).contiguous(memory_format=fmt), float("nan"), placement)
            mma_before = ops.mma_launches() if suite.mma is not None else 0
            ops.native_fwd(xg, wg, bg, *geometry, suite.family, 0, y)
            if suite.mma is not None:
                assert (ops.mma_launches() > mma_before) == suite.mma, f"{case.name}: mma kernel ran: {not suite.mma}"
            assert_close(y, y_ref, dtype, f"{case.name} forward")
            dx = guarded_full(x.contiguous(memory_format=fmt), float("nan"), placement)
            # The mma dgrad takes multiplier 1 only: the FMA kernels serve the others.
            dgrad_family = "fma" if suite.family == "mma" and case.multiplier != 1 else suite.family
            ops.native_dgrad(dy, wg, *geometry, dgrad_family, 0, dx)
            assert_close(dx, dx_ref, dtype, f"{case.name} dgrad")
            acc = F64 if dtype == F64 else F32
            for deterministic in suite.wgrad_modes:
                dw = guarded_full(torch.empty(wt.shape, dtype=acc), float("nan"), placement)
                ops.native_wgrad(dy, xg, *geometry, deterministic, suite.family, 0, dw)
                factor = max(1.0, 10 * TOLERANCE[acc] / TOLERANCE[dtype])
                assert_close(dw, dw_ref, dtype, f"{case.name} wgrad", factor=factor)
            runs += 1
    return runs


def _distinct_placements(case: Case, dtype) -> list:
    """PLACEMENTS, without "after_aligned" when it puts x where "after" does (x's size a multiple of 16)."""
    nbytes = case.n * case.c * case.h * case.w * torch.empty((), dtype=dtype).element_size()
    same = start_offset(nbytes, "after_aligned") == start_offset(nbytes, "after")
    return [p for p in PLACEMENTS if not (p == "after_aligned" and same)]


def run_suite(name: str) -> int:
    suite = SUITES[name]
    ops = suite.load_ops()
    runs = 0
    for case in suite.cases():
        for dtype in case.dtypes:
            runs += run_case(ops, suite, case, dtype, _distinct_placements(case, dtype))
    print(f"memcheck: {runs} runs clean", flush=True)
    return runs


STRAY_READS = {"stray_read_after": ("after", 5), "stray_read_before": ("before", 6), "stray_read_shared": ("after", 8)}


def stray_read(name: str) -> None:
    """The emulation self-test kernel's stray read (emulation_selftest.cpp, modes 5, 6 and 8)."""
    placement, mode = STRAY_READS[name]
    ops = _cuda_host_ops()
    data = guarded_copy(torch.randn(16), placement)
    ops.emulation_selftest(data, 0)  # in bounds: must pass
    print("in-bounds run clean; now the stray read", flush=True)
    ops.emulation_selftest(data, mode)
    print("stray read not caught", flush=True)


def main(argv) -> int:
    faulthandler.enable()
    if len(argv) != 1 or argv[0] not in list(SUITES) + list(STRAY_READS):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] in STRAY_READS:
        stray_read(argv[0])
        return 1
    run_suite(argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
