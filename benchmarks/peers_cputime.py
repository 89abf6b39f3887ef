"""benchmarks/peers.py's comparison on one thread, timed by CPU time: for a machine shared with other work.

peers.py times every provider by wall clock on all threads; where other processes share the cores, their
load lands in those times. Here every library runs on one thread (torch.set_num_threads(1), the runtimes
built with one thread) and each call is timed by the CPU time of this process (time.process_time: all of its
threads, so a runtime that computes on a worker thread of its own is counted too; with one compute thread
nothing spins beside it). Providers, input sets (rotated through more memory than the last-level cache), the
float64 output check and the interleaved medians are peers.py's. `--family` times one of dwconv's cpu
kernel families (the plan cpu:<family>) instead of the default; `--families` adds a column per family.

    python benchmarks/peers_cputime.py                          # peers.py's shapes
    python benchmarks/peers_cputime.py --shapes 32x1536x14x14k7 --families avx512,avx2 --reps 9
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `dwconv` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import torch

import dwconv
from benchmarks import peers
from benchmarks.kernels import _cache_bytes, rotation_count
from benchmarks.peer_runtimes import RUNTIMES
from benchmarks.timing import Timer, calibrate_inner, interleaved


class CpuTimeTimer(Timer):
    """Seconds of this process's CPU time per call."""

    def __call__(self, fn, inner: int = 1) -> float:
        t0 = time.process_time()
        for _ in range(inner):
            fn()
        return (time.process_time() - t0) / inner


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="peers", help="as peers.py --shapes")
    p.add_argument("--peers", default=",".join(RUNTIMES))
    p.add_argument("--families", default="", help="dwconv cpu families to time as extra columns (e.g. avx2)")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    args = p.parse_args(argv)
    args.peers = [r for r in args.peers.split(",") if r]
    args.smoke = False
    torch.set_num_threads(1)
    timer = CpuTimeTimer(torch.device("cpu"))
    shape_list, _ = peers.parse_shapes(args.shapes)
    families = [f for f in args.families.split(",") if f]
    print(f"# 1 thread, process CPU time, median of {args.reps} interleaved; dwconv plan 'cpu' = cpu:"
          f"{torch.ops.dwconv.cpu_families()[0]}; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in shape_list:
            count = rotation_count(shape, 4, _cache_bytes(timer.device), 512 << 20)
            sets, weight, bias = peers.make_inputs(shape, count)
            with torch.inference_mode():
                calls, missing, _ = peers.build_calls(shape, args.peers, weight, bias, sets[0].nchw, Path(tmp), 1)
                pad = shape.padding
                for fam in families:
                    for layout in ("nchw", "nhwc"):
                        calls[f"{fam}-{layout}"] = (lambda f, l: lambda s: dwconv.depthwise_conv2d(
                            getattr(s, l), weight, bias, 1, pad, backend=f"cpu:{f}"))(fam, layout)
                errors, failures = peers.check_against_float64(calls, sets[0], weight, bias, pad)
                active = [n for n in calls if n not in failures]
                cases = {n: peers._cycling(calls[n], sets) for n in active}
                inner = {n: calibrate_inner(cases[n], timer, 2e-2) for n in active}
                stats = interleaved(cases, timer, warmup=args.warmup, reps=args.reps, inner=inner)
            ms = {n: stats[n].median * 1e3 for n in active}
            ours = min(ms[n] for n in ("dwconv-nchw", "dwconv-nhwc") if n in ms)
            peer_names = [n for n in ms if n.startswith("torch-") or n in args.peers]
            best_peer = min(peer_names, key=ms.get)
            ratios.append(ms[best_peer] / ours)
            gflops = 2 * shape.macs / (ours / 1e3) / 1e9
            cells = ", ".join(f"{n} {ms[n]:.2f}" for n in active)
            print(f"{shape.name}: {cells} ms | dwconv best {ours:.2f} ms = {gflops:.0f} GFLOP/s, "
                  f"{ms[best_peer] / ours:.2f}x vs {best_peer}"
                  + (f" | failed: {failures}" if failures else "") + (f" | missing: {missing}" if missing else ""),
                  flush=True)
    print(f"geometric mean speed-up over the fastest peer: {math.exp(sum(map(math.log, ratios)) / len(ratios)):.2f}x; "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
