"""Per-call overhead: dwconv's Python and dispatch cost on a tiny depthwise conv, against PyTorch's own call.

On a conv so small that its kernel takes microseconds (default N1 C16 8x8 K3, the batch-1 inference case),
the time per call is mostly the path from Python to the kernel: argument checks, backend resolution, the
custom-op dispatcher, autograd glue. Timed side by side (interleaved medians, benchmarks/timing.py):

- F.conv2d / nn.Conv2d: PyTorch's own per-call cost;
- dwconv backend "torch": the same PyTorch kernel behind dwconv's path, so its excess over F.conv2d is
  dwconv's overhead alone;
- dwconv "auto" (functional and FastDWConv): what users run;
- the op itself (torch.ops.dwconv.depthwise_conv2d, no functional-level checks);
in inference (torch.no_grad) and training (forward + backward) modes.

    python benchmarks/overhead.py [--device cuda] [--shape 1,16,8,8,3] [--json benchmarks/results/]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import torch
import torch.nn.functional as F

import dwconv
from benchmarks.cli import resolve_device
from benchmarks.run_info import device_name, load_average, result_path, run_metadata, write_json
from benchmarks.tables import markdown_table
from benchmarks.timing import Timer, calibrate_inner, interleaved

MODES = ("inference", "training")


def cases(n: int, c: int, h: int, k: int, device: torch.device, mode: str) -> Dict[str, Callable[[], object]]:
    """The calls timed, each a zero-argument callable doing one forward (inference) or forward + backward."""
    p = k // 2
    x = torch.randn(n, c, h, h, device=device, requires_grad=mode == "training")
    conv = torch.nn.Conv2d(c, c, k, padding=p, groups=c, device=device)
    fast = dwconv.FastDWConv(c, c, k, padding=p, device=device)
    fast.load_state_dict(conv.state_dict())
    w, b = conv.weight, conv.bias
    calls = {
        "F.conv2d": lambda: F.conv2d(x, w, b, 1, p, 1, c),
        "nn.Conv2d": lambda: conv(x),
        "dwconv torch": lambda: dwconv.depthwise_conv2d(x, w, b, 1, p, backend="torch"),
        "dwconv op torch": lambda: torch.ops.dwconv.depthwise_conv2d(x, w, b, [1, 1], [p] * 4, [1, 1], "torch"),
        "dwconv auto": lambda: dwconv.depthwise_conv2d(x, w, b, 1, p),
        "FastDWConv auto": lambda: fast(x),
    }
    if mode == "inference":
        def no_grad(fn):
            def call():
                with torch.no_grad():
                    return fn()
            return call
        return {name: no_grad(fn) for name, fn in calls.items()}
    grad = torch.randn(n, c, h, h, device=device)
    params = (x, w, b)
    fast_params = (x, fast.weight, fast.bias)

    def train(fn, inputs):
        def call():
            return torch.autograd.grad(fn(), inputs, grad)
        return call
    return {name: train(fn, fast_params if name.startswith("FastDWConv") else params) for name, fn in calls.items()}


def run(args) -> Dict:
    device = args.device
    n, c, h, k = args.shape
    timer = Timer(device)
    load_at_start = load_average()
    records: List[Dict] = []
    for mode in args.modes:
        todo = cases(n, c, h, k, device, mode)
        inner = {name: calibrate_inner(fn, timer, 0.02 if device.type == "cpu" else 0.005) for name, fn in todo.items()}
        stats = interleaved(todo, timer, warmup=2, reps=args.reps, inner=inner)
        base = stats["F.conv2d"].median
        for name, s in stats.items():
            records.append({"mode": mode, "case": name, "us": s.median * 1e6, "p20_us": s.p20 * 1e6,
                            "p80_us": s.p80 * 1e6, "calls_per_sample": inner[name],
                            "excess_over_f_conv2d_us": (s.median - base) * 1e6})
    result = {"meta": run_metadata("overhead", args.argv, device, args.notes, load_at_start=load_at_start),
              "settings": {"shape": {"n": n, "c": c, "h": h, "w": h, "k": k}, "reps": args.reps,
                           "threads": torch.get_num_threads()},
              "results": records}
    print(overhead_table(result))
    if args.json:
        write_json(result_path(args.json, device, "overhead"), result)
    return result


def overhead_table(result: Dict) -> str:
    shape = result["settings"]["shape"]
    rows = []
    for mode in dict.fromkeys(r["mode"] for r in result["results"]):
        for r in (r for r in result["results"] if r["mode"] == mode):
            rows.append([mode, r["case"], f"{r['us']:.1f}", f"{r['excess_over_f_conv2d_us']:+.1f}"])
    title = (f"Per-call time on {result['meta']['device_name']}, depthwise conv N{shape['n']} C{shape['c']} "
             f"{shape['h']}x{shape['w']} K{shape['k']} (µs, median; excess over F.conv2d)")
    return f"{title}\n\n" + markdown_table(["mode", "call", "µs per call", "vs F.conv2d"], rows)


def main(argv: Optional[List[str]] = None) -> Dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--shape", default="1,16,8,3", help="N,C,HW,K (default 1,16,8,3)")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (default 1: on a tiny conv a second thread only adds its wake-up time)")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--notes", default="")
    args = p.parse_args(argv)
    args.argv = argv
    args.device = resolve_device(args.device, p)
    try:
        args.shape = tuple(int(v) for v in args.shape.split(","))
        assert len(args.shape) == 4 and min(args.shape) > 0
    except (ValueError, AssertionError):
        p.error("--shape: N,C,HW,K positive ints")
    if args.device.type == "cpu":
        torch.set_num_threads(args.threads)
    args.modes = [m for m in args.modes.split(",") if m]
    if not args.modes or any(m not in MODES for m in args.modes):
        p.error(f"--modes: choose from {', '.join(MODES)}")
    print(f"device {device_name(args.device)}, threads {torch.get_num_threads()}, torch {torch.__version__}",
          file=sys.stderr)
    return run(args)


if __name__ == "__main__":
    main()
