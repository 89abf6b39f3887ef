"""Runs the C++ kernels over a test grid with every tensor placed against an inaccessible page.

    python tests/memcheck_kernels.py SUITE

SUITE is one of SUITES below. Inputs and outputs are copies placed by tests/guarded_memory.py in each of its
placements in turn (the last byte before, or the first byte after, each tensor is unreadable), so a kernel
that reads or writes past either end of a tensor dies with SIGSEGV; the faulthandler traceback and the last
"run:" line name the call. Results are also checked against the float64 reference, so the guarded runs are
real ones. Tensors a binding allocates itself (workspaces) are not guarded. Prints "memcheck: N runs clean"
and exits 0 when every run finished. Run by tests/test_memcheck.py.

    python tests/memcheck_kernels.py stray_read_after | stray_read_before

The guard pages' self-test: an emulated kernel reading one float past the end (or before the start) of a
guarded tensor, which must die with SIGSEGV.
"""
from __future__ import annotations

import faulthandler
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

from guarded_memory import PLACEMENTS, guarded_copy, guarded_full  # noqa: E402
from utils import TOLERANCE, assert_close, make_inputs, reference_grads  # noqa: E402

F32, F64 = torch.float32, torch.float64


def _cuda_host_ops():
    sys.path.insert(0, os.path.join(HERE, "cuda_host"))
    from build_host_kernels import NAMESPACE, load_host_kernels
    load_host_kernels()
    return getattr(torch.ops, NAMESPACE)


def _cpu_ops():
    import dwconv._C  # noqa: F401  (registers torch.ops.dwconv.native_* for CPU tensors)
    return torch.ops.dwconv


# Cases as (name, n, c, h, w, k, multiplier, stride, padding (t, b, l, r), dilation, dtypes, bias).
def _cuda_cases():
    import test_cuda_backend
    return [case + (True,) for case in test_cuda_backend.CASES]


def _mma_cases():
    import test_cuda_mma
    dtypes = (torch.float16, torch.bfloat16)
    return [(name, n, c, h, w, k, m, (1, 1), pad, (1, 1), dtypes, bias)
            for name, n, c, h, w, k, m, pad, bias in test_cuda_mma.CASES]


def _cpu_cases(dtypes=None):
    import test_cpu_backend
    dtypes = dtypes or tuple(test_cpu_backend.DTYPES)
    return [(test_cpu_backend._ids(case), n, c, h, w, k, m, s, p, d, dtypes, True)
            for case in test_cpu_backend.CASES for n, c, h, w, k, m, s, p, d in [case]]


# suite: (ops loader, cases, environment, wgrad modes (deterministic or not))
SUITES = {
    "cuda_host": (_cuda_host_ops, _cuda_cases, {}, (False, True)),
    "cuda_host_mma": (_cuda_host_ops, _mma_cases, {"DWCONV_CUDA_MMA": "1"}, ()),
    "cpu": (_cpu_ops, _cpu_cases, {}, (True,)),
    "cpu_portable": (_cpu_ops, lambda: _cpu_cases((torch.float32, torch.bfloat16)), {"DWCONV_CPU_ISA": "portable"},
                     (True,)),
}


def run_case(ops, case, dtype, channels_last, placement, wgrad_modes):
    name, n, c, h, w, k, m, stride, pad, dil, _, with_bias = case
    x, wt, b = make_inputs(n, c, h, w, k, m, dtype=dtype, channels_last=channels_last, seed=n * 1000 + c)
    b = b if with_bias else None
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    guarded = [None if t is None else guarded_copy(t, placement) for t in (x, wt, b)]
    xg, wg, bg = guarded
    import torch.nn.functional as F
    pt, pb, pl, pr = pad
    out_shape = F.conv2d(F.pad(x[:1, :1].double(), (pl, pr, pt, pb)), wt[:1].double(), None, stride, 0, dil).shape
    y_like = torch.empty((n, c * m) + tuple(out_shape[2:]), dtype=dtype).contiguous(memory_format=fmt)
    grad_out = torch.randn(y_like.shape).to(dtype).contiguous(memory_format=fmt)
    y_ref, dx_ref, dw_ref, _ = reference_grads(x, wt, b, grad_out, stride, pad, dil)

    y = guarded_full(y_like, float("nan"), placement)
    ops.native_fwd(xg, wg, bg, list(stride), list(pad), list(dil), y)
    assert_close(y, y_ref, dtype, f"{name} forward")
    dy = guarded_copy(grad_out, placement)
    dx = guarded_full(x, float("nan"), placement)
    ops.native_dgrad(dy, wg, list(stride), list(pad), list(dil), dx)
    assert_close(dx, dx_ref, dtype, f"{name} dgrad")
    acc = F64 if dtype == F64 else F32
    for deterministic in wgrad_modes:
        dw = guarded_full(torch.empty(wt.shape, dtype=acc), float("nan"), placement)
        ops.native_wgrad(dy, xg, list(stride), list(pad), list(dil), deterministic, dw)
        factor = max(1.0, 10 * TOLERANCE[acc] / TOLERANCE[dtype])
        assert_close(dw, dw_ref, dtype, f"{name} wgrad", factor=factor)


def run_suite(name: str) -> int:
    load_ops, cases, env, wgrad_modes = SUITES[name]
    os.environ.update(env)
    ops = load_ops()
    runs = 0
    for case in cases():
        for dtype in case[10]:
            for channels_last in (False, True):
                for placement in PLACEMENTS:
                    print(f"run: {case[0]} {str(dtype)[6:]} {'nhwc' if channels_last else 'nchw'} {placement}",
                          flush=True)
                    run_case(ops, case, dtype, channels_last, placement, wgrad_modes)
                    runs += 1
    print(f"memcheck: {runs} runs clean", flush=True)
    return runs


def stray_read(placement: str) -> None:
    """An emulated kernel reads data[numel] ("after") or data[-1] ("before") of a guarded tensor."""
    ops = _cuda_host_ops()
    data = guarded_copy(torch.randn(16), placement)
    ops.emulation_selftest(data, 0)  # in bounds: must pass
    print("in-bounds run clean; now the stray read", flush=True)
    ops.emulation_selftest(data, 5 if placement == "after" else 6)
    print("stray read not caught", flush=True)


def main(argv) -> int:
    faulthandler.enable()
    if len(argv) != 1 or argv[0] not in list(SUITES) + ["stray_read_after", "stray_read_before"]:
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0].startswith("stray_read_"):
        stray_read(argv[0][len("stray_read_"):])
        return 1
    run_suite(argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
