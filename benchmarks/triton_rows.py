"""The Triton backend's row-streaming kernels against its direct kernels and PyTorch, per op, on one GPU.

    python benchmarks/triton_rows.py --json results.json [--autotune] [--smoke]

For each shape and op (fwd, dgrad, wgrad) it checks both Triton kernel families against a float64 PyTorch
reference (relative norm error) and times PyTorch (cuDNN or its native kernel, cudnn.benchmark on), the
row-streaming kernels (plan "triton:rows") and the direct kernels ("triton:direct") in one process,
interleaved (benchmarks/timing.py: CUDA events, medians); an op the row kernels do not take (dgrad at stride 2)
records why. Without --autotune the Triton kernels run their default tile (dwconv setting triton_autotune off),
which keeps compile time to one kernel per shape and op. --smoke: tiny shapes, runs anywhere (CPU: interpreter).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import dwconv  # noqa: E402  (registers the ops)
from benchmarks.timing import Timer, interleaved  # noqa: E402
from dwconv.backends import BackendUnavailableError  # noqa: E402

# (name, N, C, H=W, K, stride, dtype, channels_last)
SHAPES = [
    ("robust_resnet C384 14x14 K11", 128, 384, 14, 11, 1, "fp32", False),
    ("robust_resnet C384 14x14 K11", 128, 384, 14, 11, 1, "bf16", True),
    ("robust_resnet C768 14x14 K11 s2", 128, 768, 14, 11, 2, "fp32", False),
    ("convnext C96 56x56 K7", 64, 96, 56, 7, 1, "fp32", False),
    ("convnext C96 56x56 K7", 64, 96, 56, 7, 1, "bf16", True),
]
SMOKE = [("smoke C4 9x9 K5", 2, 4, 9, 5, 1, "fp32", False), ("smoke C4 9x9 K3 s2", 2, 4, 9, 3, 2, "fp32", True)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--autotune", action="store_true")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--budget-s", type=float, default=1e9, help="stop starting new shapes after this")
    opts = parser.parse_args(argv)
    with dwconv.config.override(triton_autotune=opts.autotune):
        return run(opts)


def run(opts):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    start = time.time()
    rows = []
    timer = Timer(torch.device(device))

    for name, n, c, hw, k, s, dt, cl in (SMOKE if opts.smoke else SHAPES):
        if time.time() - start > opts.budget_s:
            print(f"budget reached, skipping {name}", flush=True)
            continue
        torch.manual_seed(0)
        fmt = torch.channels_last if cl else torch.contiguous_format
        x = torch.randn(n, c, hw, hw, device=device, dtype=dtypes[dt]).contiguous(memory_format=fmt)
        w = torch.randn(c, 1, k, k, device=device, dtype=dtypes[dt]) / k
        p = k // 2
        y_ref = torch.nn.functional.conv2d(x.double(), w.double(), None, s, p, 1, c)
        dy = torch.randn(y_ref.shape, device=device, dtype=dtypes[dt]).contiguous(memory_format=fmt)
        dx_ref, dw_ref, _ = torch.ops.aten.convolution_backward(
            dy.double(), x.double(), w.double(), None, [s, s], [p, p], [1, 1], False, [0, 0], c, [True, True, False])
        refs = {"fwd": y_ref, "dgrad": dx_ref, "wgrad": dw_ref}

        def dwconv_call(op, plan, x=x, w=w, dy=dy, s=s, p=p):
            calls = {
                "fwd": lambda: torch.ops.dwconv.depthwise_conv2d(x, w, None, [s, s], [p] * 4, [1, 1], plan),
                "dgrad": lambda: torch.ops.dwconv.dgrad(dy, w, list(x.shape), [s, s], [p] * 4, [1, 1], plan),
                "wgrad": lambda: torch.ops.dwconv.wgrad(dy, x, list(w.shape), [s, s], [p] * 4, [1, 1], plan),
            }
            return calls[op]

        torch_calls = {
            "fwd": lambda: torch.nn.functional.conv2d(x, w, None, s, p, 1, c),
            "dgrad": lambda: torch.ops.aten.convolution_backward(dy, x, w, None, [s, s], [p, p], [1, 1], False,
                                                                 [0, 0], c, [True, False, False]),
            "wgrad": lambda: torch.ops.aten.convolution_backward(dy, x, w, None, [s, s], [p, p], [1, 1], False,
                                                                 [0, 0], c, [False, True, False]),
        }
        for op in ("fwd", "dgrad", "wgrad"):
            row = dict(shape=name, N=n, C=c, H=hw, K=k, stride=s, dtype=dt, channels_last=cl, op=op)
            cases = {"torch": torch_calls[op]}
            for family in ("rows", "direct"):
                call = dwconv_call(op, f"triton:{family}")
                t0 = time.time()
                try:
                    out = call()
                except BackendUnavailableError as e:  # the row kernels' dgrad is stride 1 only
                    row[f"{family}_unavailable"] = str(e)
                    continue
                cases[family] = call
                row[f"{family}_rel_err"] = float((out.double() - refs[op]).norm() / refs[op].norm())
                row[f"{family}_first_call_s"] = round(time.time() - t0, 2)
            # The interpreter's times mean nothing: on a CPU only the checks run.
            stats = interleaved(cases, timer, warmup=2, reps=opts.reps) if device == "cuda" else {}
            for case in ("torch", "rows", "direct"):
                row[f"{case}_us"] = stats[case].median * 1e6 if case in stats else 0.0
            row["rows_vs_direct"] = row["direct_us"] / row["rows_us"] if row["rows_us"] and row["direct_us"] else None
            row["rows_vs_torch"] = row["torch_us"] / row["rows_us"] if row["rows_us"] else None
            rows.append(row)
            print(json.dumps(row), flush=True)
    info = dict(device=torch.cuda.get_device_name() if device == "cuda" else "cpu", torch=torch.__version__,
                autotune=opts.autotune, reps=opts.reps)
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:  # pragma: no cover
        pass
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(dict(info=info, rows=rows), f, indent=1)
    return rows


if __name__ == "__main__":
    main()
