"""One call of each op per backend and goal shape, bracketed for a profiler: what Nsight Compute measures.

    ncu --profile-from-start off --section SpeedOfLight --section Occupancy --section LaunchStats \
        --section WarpStateStats --csv python benchmarks/profile_ops.py --backend cuda,triton

Each (shape, layout, backend, op) runs once untimed (compilation, autotuning, cuDNN's algorithm search),
then once between torch.cuda.profiler.start() and stop(), so a profiler started with its capture off sees
exactly one launch sequence per case. An NVTX range names each case. The layouts are the issues' goals:
fp32 NCHW and bf16 channels_last (--cases). Without a GPU, --dry-run lists the cases.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import torch

from benchmarks import conv_ops, shapes
from benchmarks.cli import DTYPE_LAYOUT_CASES, SINGLE_OPS, split_choices
from dwconv import plans


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="cuda,triton",
                   help="comma-separated dwconv backends or plans ('triton:rows', 'cuda:mma', dwconv/plans.py) "
                        "and/or 'torch' (PyTorch's own convolution)")
    p.add_argument("--shapes", default="goals", choices=sorted(shapes.SHAPE_SETS))
    p.add_argument("--only", default="", help="keep shapes whose name contains this text")
    p.add_argument("--cases", default="fp32-nchw,bf16-nhwc", help="comma-separated dtype-layout pairs")
    p.add_argument("--ops", default="fwd,dgrad,wgrad")
    p.add_argument("--dry-run", action="store_true", help="list the cases, run nothing")
    args = p.parse_args(argv)
    args.cases = split_choices(args.cases, DTYPE_LAYOUT_CASES, "--cases", p)
    args.ops = split_choices(args.ops, SINGLE_OPS, "--ops", p)
    args.backend = [b.strip() for b in args.backend.split(",") if b.strip()]
    if not args.backend:
        p.error("--backend: name at least one backend or plan")
    for backend in args.backend:
        try:
            plans.parse(backend)
        except ValueError as e:
            p.error(f"--backend: {e}")
    return args


def cases(args):
    for shape in shapes.shape_set(args.shapes, "cuda"):
        if args.only and args.only not in shape.name:
            continue
        for pair in args.cases:
            dtype, layout = pair.split("-")
            for backend in args.backend:
                for op in args.ops:
                    yield shape, dtype, layout, backend, op


def main(argv=None):
    args = parse_args(argv)
    todo = list(cases(args))
    if args.dry_run:
        for shape, dtype, layout, backend, op in todo:
            print(f"{shape.name} {dtype} {layout} {backend} {op}")
        return todo
    if not torch.cuda.is_available():
        raise SystemExit("profile_ops.py needs a CUDA device (--dry-run lists the cases)")
    torch.backends.cudnn.benchmark = True
    device = torch.device("cuda")
    for shape, dtype, layout, backend, op in todo:
        operands = conv_ops.make_operands(shape, conv_ops.DTYPES[dtype], device, layout == "nhwc", 1)
        call = conv_ops.make_op(backend, op, shape, operands)
        call()
        torch.cuda.synchronize()
        name = f"{shape.name} {dtype} {layout} {backend} {op}"
        torch.cuda.nvtx.range_push(name)
        torch.cuda.profiler.start()
        call()
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
        torch.cuda.nvtx.range_pop()
        print(f"profiled: {name}", flush=True)
    return todo


if __name__ == "__main__":
    main()
