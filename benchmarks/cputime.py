"""Runs a CPU benchmark (kernels.py, peers.py) with every CPU sample timed by this process's CPU time instead of
the wall clock: for a machine shared with other work, one thread.

Wall-clock samples on a loaded machine include the time other processes held the core. The CPU time of the
process (time.process_time: all of its threads) does not; with one thread (OMP_NUM_THREADS=1, and the peer
runtimes built with torch's thread count) nothing spins beside the computing thread, so it is the op's cost.
With more threads the waiting workers' spinning would count too: the tool refuses more than one.
Everything else (shapes, interleaving, input rotation, output checks, tables) is the benchmark's own.

    OMP_NUM_THREADS=1 python benchmarks/cputime.py kernels --device cpu --ops fwd,fwd+bwd --no-progress
    OMP_NUM_THREADS=1 python benchmarks/cputime.py peers --no-progress
"""
from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `dwconv` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import torch

from benchmarks import timing

BENCHMARKS = ("kernels", "peers")


def _cpu_time_call(self, fn, inner: int = 1) -> float:
    if self.is_cuda:
        raise RuntimeError("benchmarks/cputime.py times CPU runs only")
    t0 = time.process_time()
    for _ in range(inner):
        fn()
    return (time.process_time() - t0) / inner


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in BENCHMARKS:
        print(__doc__, file=sys.stderr)
        return 2
    if torch.get_num_threads() != 1:
        print(f"benchmarks/cputime.py: run with one thread (OMP_NUM_THREADS=1); torch has {torch.get_num_threads()}",
              file=sys.stderr)
        return 2
    timing.Timer.__call__ = _cpu_time_call
    module = importlib.import_module(f"benchmarks.{argv[0]}")
    sys.argv = [f"benchmarks/{argv[0]}.py"] + argv[1:]
    result = module.main()
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
