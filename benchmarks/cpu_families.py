"""The cpu backend's kernel families side by side: each native op (fwd, dgrad, wgrad) of each family on the
same tensors, interleaved round-robin, medians.

On a machine shared with other work, wall-clock times of one process are disturbed by every other process;
the CPU time of the calling thread is not (time.thread_time), so with one thread (the default) that is the
clock. With more threads the OpenMP workers' time is not the caller's, so the clock is the wall clock (and
the numbers only mean something on a quiet machine). GFLOP/s count 2 * N * C * M * HO * WO * K * K per op,
padding taps included (benchmarks/kernels.py's convention). Outputs of every family are compared with the
first family's (bit-identical, or the largest relative difference).

    python benchmarks/cpu_families.py                                   # the peers shapes, fp32, both layouts
    python benchmarks/cpu_families.py --families avx512,avx2 --ops fwd --dtypes float32,bfloat16 \\
        --shapes 32x1536x14x14k7,32x768x7x7k11 --reps 9
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `dwconv` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import torch

import dwconv._C  # noqa: F401  (registers torch.ops.dwconv.native_*)
from benchmarks.peers import parse_shapes
from dwconv.backends.native import BF16_ONLY_CPU_FAMILIES

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
OPS = ("fwd", "dgrad", "wgrad")


def _clock(threads: int):
    return time.thread_time if threads == 1 else time.perf_counter


def _op_call(op, family, x, w, b, dy, out, pad):
    geometry = ([1, 1], [pad] * 4, [1, 1])
    if op == "fwd":
        return lambda: torch.ops.dwconv.native_fwd(x, w, b, *geometry, family, 0, out)
    if op == "dgrad":
        return lambda: torch.ops.dwconv.native_dgrad(dy, w, *geometry, family, 0, out)
    return lambda: torch.ops.dwconv.native_wgrad(dy, x, *geometry, True, family, 0, out)


def time_shape(shape, dtype, channels_last, ops, families, reps, warmup, threads):
    """{op: {family: (median seconds, min, max, difference from the first family)}}."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    g = torch.Generator().manual_seed(0)
    n, c, h, w_, k = shape.n, shape.c, shape.h, shape.w, shape.k
    x = torch.randn(n, c, h, w_, generator=g).to(dtype).contiguous(memory_format=fmt)
    w = (torch.randn(c, 1, k, k, generator=g) / k).to(dtype)
    b = torch.randn(c, generator=g).to(dtype)
    dy = torch.randn(n, c, h, w_, generator=g).to(dtype).contiguous(memory_format=fmt)
    clock = _clock(threads)
    results = {}
    for op in ops:
        outs, calls = {}, {}
        for fam in families:
            if op == "wgrad":
                outs[fam] = torch.empty(c, 1, k, k, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
            else:
                outs[fam] = torch.empty_like(x)
            calls[fam] = _op_call(op, fam, x, w, b, dy, outs[fam], k // 2)
        samples = {fam: [] for fam in families}
        for rep in range(warmup + reps):
            order = families[rep % len(families):] + families[:rep % len(families)]
            for fam in order:
                t0 = clock()
                calls[fam]()
                dt = clock() - t0
                if rep >= warmup:
                    samples[fam].append(dt)
        ref = outs[families[0]].double()
        results[op] = {}
        for fam in families:
            diff = (outs[fam].double() - ref).norm().item() / max(ref.norm().item(), 1e-30)
            same = torch.equal(outs[fam], outs[families[0]])
            s = samples[fam]
            results[op][fam] = (statistics.median(s), min(s), max(s), "same bits" if same else f"rel diff {diff:.1e}")
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    every = torch.ops.dwconv.cpu_families()  # bf16-only ones last: the first family is the comparison base
    parser.add_argument("--families", default=",".join([f for f in every if f not in BF16_ONLY_CPU_FAMILIES] +
                                                       [f for f in every if f in BF16_ONLY_CPU_FAMILIES]),
                        help="comma-separated families (default: all this CPU runs; a bfloat16-only family only "
                             "with --dtypes bfloat16)")
    parser.add_argument("--shapes", default="peers", help="as benchmarks/peers.py --shapes")
    parser.add_argument("--ops", default=",".join(OPS))
    parser.add_argument("--dtypes", default="float32")
    parser.add_argument("--layouts", default="nchw,nhwc")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    families = [f for f in args.families.split(",") if f]
    shapes, _ = parse_shapes(args.shapes)
    clock = "per-thread CPU time" if args.threads == 1 else "wall clock"
    print(f"# {args.threads} thread(s), {clock}, median of {args.reps} (min-max); load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    rows = []
    all_families = families
    for dtype_name in args.dtypes.split(","):
        families = [f for f in all_families
                    if DTYPES[dtype_name] == torch.bfloat16 or f not in BF16_ONLY_CPU_FAMILIES]
        for layout in args.layouts.split(","):
            for shape in shapes:
                res = time_shape(shape, DTYPES[dtype_name], layout == "nhwc", args.ops.split(","), families,
                                 args.reps, args.warmup, args.threads)
                for op, per_family in res.items():
                    base = per_family[families[0]][0]
                    cells = []
                    for fam in families:
                        med, lo, hi, diff = per_family[fam]
                        gflops = 2 * shape.macs / med / 1e9
                        cells.append(f"{fam} {med * 1e3:.3f} ms ({lo * 1e3:.3f}-{hi * 1e3:.3f}) {gflops:.0f} GFLOP/s"
                                     f" x{base / med:.2f} {diff if fam != families[0] else ''}".rstrip())
                        rows.append(dict(dtype=dtype_name, layout=layout, shape=shape.name, op=op, family=fam,
                                         median_s=med, min_s=lo, max_s=hi, gflops=gflops, vs_first=diff))
                    print(f"{dtype_name} {layout} {shape.name} {op}: " + " | ".join(cells), flush=True)
    print(f"# load average at the end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(threads=args.threads, clock=clock, families=all_families, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
