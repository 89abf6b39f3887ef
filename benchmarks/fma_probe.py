"""The CPU's fp32 FMA peak, measured: a register-only loop of independent FMA chains.

A tiny C loop (12 independent accumulator chains, so neither the FMA latency nor loads limit it) is compiled
at run time with gcc, one function per instruction set through function target attributes (no -march: the
build runs anywhere, each function is called only where the CPU has its instructions), cached in the temp
directory and loaded with ctypes. ctypes releases the GIL during the call, so N Python threads calling it
run truly in parallel, started together. A rate counts 2 FLOPs per lane per FMA. The peak sums each
thread's FLOPs over its own CPU time (time.thread_time): other processes on a shared machine delay the
threads but do not lower it, while cores that share FMA units (SMT siblings, a power limit) still do. The
wall-clock rate (all FLOPs over the time from the common start to the last thread's end) is reported
beside it.

    python benchmarks/fma_probe.py                # a line per instruction set: 1 thread and all threads
    python benchmarks/fma_probe.py --json         # the same as JSON on stdout
    python benchmarks/fma_probe.py --threads 1,2 --seconds 0.5

From another benchmark: `fma_peak("avx512", threads=2)` (GFLOP/s; raises FMAProbeUnavailable with the reason
when the CPU lacks the instructions or gcc is missing) and `describe()` (everything, as a dict).
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ["ISAS", "CHAINS", "CLOCKS", "FMAProbeUnavailable", "available_isas", "fma_peak", "fma_rates", "describe",
           "all_threads"]

CHAINS = 12
CLOCKS = ("cpu", "wall")


class FMAProbeUnavailable(RuntimeError):
    """The probe cannot run an instruction set here: the reason is the message."""


# name -> (register, fp32 lanes, gcc target attribute, __builtin_cpu_supports feature)
ISAS: Dict[str, tuple] = {
    "avx2": ("ymm", 8, "avx2,fma", "fma"),
    "avx512": ("zmm", 16, "avx512f", "avx512f"),
}

_CHAIN_NAMES = [f"a{i}" for i in range(CHAINS)]


def _isa_function(isa: str) -> str:
    reg, lanes, target, _ = ISAS[isa]
    bits = lanes * 32
    vec, pre = f"__m{bits}", f"_mm{bits if bits == 512 else 256}"
    inits = " ".join(f"{vec} {a} = {pre}_set1_ps(1.0f + {i}e-3f);" for i, a in enumerate(_CHAIN_NAMES))
    steps = " ".join(f"{a} = {pre}_fmadd_ps({a}, m, c);" for a in _CHAIN_NAMES)
    total = " + ".join(f"{pre}_cvtss_f32({a})" for a in _CHAIN_NAMES)
    return f"""
__attribute__((target("{target}"), noinline))
float fma_chains_{isa}(long iters, float mul, float add) {{
    const {vec} m = {pre}_set1_ps(mul), c = {pre}_set1_ps(add);
    {inits}
    for (long i = 0; i < iters; ++i) {{ {steps} }}
    return {total};
}}
int cpu_supports_{isa}(void) {{ __builtin_cpu_init(); return __builtin_cpu_supports("{ISAS[isa][3]}"); }}
"""


_SOURCE = "#include <immintrin.h>\n" + "".join(_isa_function(isa) for isa in ISAS)

_lock = threading.Lock()
_library: Optional[ctypes.CDLL] = None
_library_error: Optional[str] = None


def _compiler() -> Optional[str]:
    return shutil.which(os.environ.get("CC", "gcc"))


def _compiler_version(cc: str) -> str:
    try:
        out = subprocess.run([cc, "-dumpfullversion", "-dumpversion"], capture_output=True, text=True, timeout=30)
        return f"{Path(cc).name} {out.stdout.split()[0]}" if out.returncode == 0 and out.stdout.split() else cc
    except (OSError, subprocess.SubprocessError):
        return cc


def _cache_dir() -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"dwconv-fma-probe-{uid}"


def _build(cc: str) -> Path:
    """The shared library for this source and compiler (built once, then reused from the cache)."""
    key = hashlib.sha256((_SOURCE + _compiler_version(cc)).encode()).hexdigest()[:16]
    lib = _cache_dir() / f"fma_probe_{key}.so"
    if lib.exists():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    src = lib.with_suffix(f".{os.getpid()}.c")
    partial = lib.with_suffix(f".{os.getpid()}.so.tmp")
    src.write_text(_SOURCE)
    try:
        out = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(partial), str(src)],
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise FMAProbeUnavailable(f"{Path(cc).name} failed to compile the FMA loop: {out.stderr.strip()[-500:]}")
        os.replace(partial, lib)  # atomic: concurrent builders never load half a file
    finally:
        for leftover in (src, partial):
            if leftover.exists():
                leftover.unlink()
    return lib


def _load() -> ctypes.CDLL:
    global _library, _library_error
    with _lock:
        if _library is None and _library_error is None:
            cc = _compiler()
            if platform.machine().lower() not in ("x86_64", "amd64"):
                _library_error = f"not an x86-64 CPU ({platform.machine()}): the probe has AVX2 and AVX-512 loops only"
            elif cc is None:
                _library_error = ("gcc is missing (the FMA loop is compiled at run time; install gcc or set CC "
                                  "to a C compiler with GCC's target attributes)")
            else:
                try:
                    lib = ctypes.CDLL(str(_build(cc)))
                    for isa in ISAS:
                        fn = getattr(lib, f"fma_chains_{isa}")
                        fn.argtypes, fn.restype = [ctypes.c_long, ctypes.c_float, ctypes.c_float], ctypes.c_float
                        getattr(lib, f"cpu_supports_{isa}").restype = ctypes.c_int
                    _library = lib
                except (FMAProbeUnavailable, OSError, subprocess.SubprocessError) as e:
                    _library_error = str(e)
        if _library is None:
            raise FMAProbeUnavailable(_library_error)
        return _library


def available_isas() -> Dict[str, Optional[str]]:
    """Every instruction set of the probe: None when it can run here, else why not."""
    try:
        lib = _load()
    except FMAProbeUnavailable as e:
        return {isa: str(e) for isa in ISAS}
    names = {"avx2": "AVX2/FMA", "avx512": "AVX-512F"}
    return {isa: None if getattr(lib, f"cpu_supports_{isa}")() else f"the CPU lacks {names[isa]}" for isa in ISAS}


def _check(isa: str) -> ctypes.CDLL:
    if isa not in ISAS:
        raise ValueError(f"unknown instruction set {isa!r}; choose from {', '.join(ISAS)}")
    reason = available_isas()[isa]
    if reason is not None:
        raise FMAProbeUnavailable(reason)
    return _load()


def flops_per_iteration(isa: str) -> int:
    return 2 * ISAS[isa][1] * CHAINS


def all_threads() -> int:
    """The threads this process may run on at once."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@dataclass(frozen=True)
class _Run:
    wall_s: float  # from the common start to the end of the last thread
    cpu_s: Tuple[float, ...]  # each thread's CPU time


def _run_parallel(fn, iters: int, threads: int) -> _Run:
    """`threads` concurrent calls of fn(iters), started together."""
    barrier = threading.Barrier(threads)
    spans: List[tuple] = [(0.0, 0.0, 0.0)] * threads

    def worker(i: int) -> None:
        barrier.wait()
        t0, c0 = time.perf_counter(), time.thread_time()
        fn(iters, 0.9999, 1e-4)
        spans[i] = (t0, time.perf_counter(), time.thread_time() - c0)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    wall = max(end for _, end, _ in spans) - min(start for start, _, _ in spans)
    return _Run(wall, tuple(max(cpu, 1e-9) for _, _, cpu in spans))


def _gflops(run: _Run, flops_per_thread: int, clock: str) -> float:
    if clock == "wall":
        return flops_per_thread * len(run.cpu_s) / run.wall_s / 1e9
    return sum(flops_per_thread / cpu for cpu in run.cpu_s) / 1e9


def calibrate_iters(isa: str, seconds: float) -> int:
    """Iterations of the FMA loop that take about `seconds` of CPU time on one thread (from a trial run)."""
    fn = getattr(_check(isa), f"fma_chains_{isa}")
    trial = 100_000
    fn(trial, 0.9999, 1e-4)  # warm-up: clocks up, page in
    per_iter = _run_parallel(fn, trial, 1).cpu_s[0] / trial
    return max(trial, int(seconds / per_iter))


def _runs(isa: str, threads: int, reps: int, iters: int, clock: str) -> List[_Run]:
    if threads < 1 or reps < 1 or iters < 1:
        raise ValueError("threads, reps and iters must be at least 1")
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; choose from {', '.join(CLOCKS)}")
    if clock == "cpu" and threads > all_threads():
        raise ValueError(f"the CPU-time rate needs a core per thread: {threads} threads > {all_threads()} cores "
                         "(use clock='wall')")
    fn = getattr(_check(isa), f"fma_chains_{isa}")
    return [_run_parallel(fn, iters, threads) for _ in range(reps)]


def fma_rates(isa: str, threads: int = 1, *, clock: str = "cpu", seconds: float = 0.1, reps: int = 5,
              iters: Optional[int] = None) -> List[float]:
    """GFLOP/s of `reps` runs of the FMA loop on `threads` threads at once, each thread running `iters`
    iterations (default: as many as take about `seconds` on one thread). clock "cpu": the sum over threads
    of each thread's FLOPs over its own CPU time (time.thread_time), so processes sharing the cores slow
    the wall clock but not the measure (a thread per core at most); "wall": all FLOPs over the wall time."""
    iters = calibrate_iters(isa, seconds) if iters is None else iters
    flops = flops_per_iteration(isa) * iters
    return [_gflops(run, flops, clock) for run in _runs(isa, threads, reps, iters, clock)]


def fma_peak(isa: str, threads: int = 1, **kwargs) -> float:
    """Median GFLOP/s of the FMA loop (see fma_rates) on `threads` threads at once."""
    return statistics.median(fma_rates(isa, threads, **kwargs))


def _stats(rates: List[float]) -> Dict:
    return {"median": statistics.median(rates), "max": max(rates), "samples": [round(r, 2) for r in rates]}


def describe(threads: Optional[Sequence[int]] = None, *, seconds: float = 0.1, reps: int = 5,
             iters: Optional[int] = None) -> Dict:
    """The probe's setting and, per instruction set, the rate per thread count (1 and all threads by
    default) or the reason it was skipped: "gflops" by CPU time (the peak), "wall_gflops" by wall time
    (what the machine delivered while others used it). The runs of every instruction set and thread count
    are interleaved (one of each per repetition), so a machine that gets busier slows them alike."""
    threads = list(threads or dict.fromkeys([1, all_threads()]))
    cc = _compiler()
    out: Dict = {"method": f"register-only loop, {CHAINS} independent FMA chains, 2 FLOPs per lane per FMA, "
                           "threads started together (ctypes releases the GIL); rates by each thread's CPU time "
                           "(wall-clock rates beside them)",
                 "compiler": _compiler_version(cc) if cc else None, "all_threads": all_threads(), "isas": {}}
    runnable = {}
    for isa, reason in available_isas().items():
        reg, lanes = ISAS[isa][:2]
        out["isas"][isa] = {"register": reg, "lanes": lanes}
        if reason is not None:
            out["isas"][isa]["skipped"] = reason
        else:
            runnable[isa] = iters if iters is not None else calibrate_iters(isa, seconds)
    runs: Dict[tuple, List[_Run]] = {(isa, n): [] for isa in runnable for n in threads}
    for _ in range(reps):
        for isa, n in runs:
            runs[isa, n] += _runs(isa, n, 1, runnable[isa], "cpu")
    for isa, count in runnable.items():
        flops = flops_per_iteration(isa) * count
        out["isas"][isa]["iterations"] = count
        out["isas"][isa]["gflops"] = {str(n): _stats([_gflops(r, flops, "cpu") for r in runs[isa, n]])
                                      for n in threads}
        out["isas"][isa]["wall_gflops"] = {str(n): _stats([_gflops(r, flops, "wall") for r in runs[isa, n]])
                                           for n in threads}
    return out


def format_description(info: Dict) -> str:
    lines = [f"fp32 FMA peak ({info['method']}; {info['compiler'] or 'no compiler'}):"]
    for isa, entry in info["isas"].items():
        label = f"  {isa} ({entry['register']}, {entry['lanes']} lanes):"
        if "skipped" in entry:
            lines.append(f"{label} skipped: {entry['skipped']}")
            continue
        cells = []
        for n, rate in entry["gflops"].items():
            per_thread = rate["median"] / int(n)
            wall = entry["wall_gflops"][n]["median"]
            cells.append(f"{n} thread{'s' if n != '1' else ''} {rate['median']:.1f} GFLOP/s "
                         f"({per_thread:.1f} per thread; wall clock {wall:.1f})")
        lines.append(f"{label} " + "; ".join(cells))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> Dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--threads", default=None, help="comma-separated thread counts (default: 1 and all threads)")
    p.add_argument("--seconds", type=float, default=0.1, help="length of one run (default 0.1 s)")
    p.add_argument("--reps", type=int, default=5, help="runs per instruction set and thread count (default 5)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        threads = [int(t) for t in args.threads.split(",")] if args.threads else None
    except ValueError:
        p.error(f"--threads: expected comma-separated integers, got {args.threads!r}")
    if threads is not None and (not threads or min(threads) < 1 or max(threads) > all_threads()):
        p.error(f"--threads: thread counts from 1 to the {all_threads()} cores this process may use")
    info = describe(threads, seconds=args.seconds, reps=args.reps)
    print(json.dumps(info, indent=1) if args.json else format_description(info))
    return info


if __name__ == "__main__":
    main()
