"""The one timing utility of the benchmarks: medians of interleaved repetitions, after warm-up.

Every case is a zero-argument callable doing one unit of work (one op call, one training step, ...).
Each repetition runs every case once, in an order rotated from one repetition to the next, so slow drifts
of the machine (clock, other processes, thermal state) touch all cases alike. On a GPU each sample is
timed with CUDA events on the current stream; on a CPU with `time.perf_counter`.
"""
from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

__all__ = ["Stats", "Timer", "summarize", "interleaved", "calibrate_inner", "PhaseClock"]


@dataclass(frozen=True)
class Stats:
    """Seconds per call: median with the 20th and 80th percentiles, over `samples` repetitions (`values`,
    in the order they were taken)."""

    median: float
    p20: float
    p80: float
    samples: int
    values: Tuple[float, ...] = ()

    def as_dict(self) -> Dict[str, float]:
        return asdict(self)


def _percentile(sorted_values: List[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 1]) of already sorted values."""
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(values: List[float]) -> Stats:
    if not values:
        raise ValueError("no samples to summarize")
    ordered = sorted(values)
    return Stats(statistics.median(ordered), _percentile(ordered, 0.2), _percentile(ordered, 0.8), len(ordered),
                 tuple(values))


class Timer:
    """Times `fn()` repeated `inner` times; returns seconds per call.

    CUDA: events recorded on the current stream around the loop, then synchronized (the work queued
    before the start event is drained first, so it is not counted). CPU: wall clock.
    """

    def __init__(self, device: torch.device):
        self.device = torch.device(device)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def synchronize(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    def __call__(self, fn: Callable[[], object], inner: int = 1) -> float:
        if self.is_cuda:
            self.synchronize()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / inner
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - t0) / inner


def calibrate_inner(fn: Callable[[], object], timer: Timer, min_sample_s: float, max_inner: int = 1000) -> int:
    """How many calls one sample needs to last at least `min_sample_s` (one trial call after a warm-up)."""
    fn()
    per_call = timer(fn)
    if per_call <= 0:
        return max_inner
    return max(1, min(max_inner, math.ceil(min_sample_s / per_call)))


def interleaved(cases: Dict[str, Callable[[], object]], timer: Timer, *, warmup: int, reps: int,
                inner: Optional[Dict[str, int]] = None,
                on_sample: Optional[Callable[[], None]] = None) -> Dict[str, Stats]:
    """Median seconds per call of every case, from `reps` interleaved repetitions after `warmup` ones.

    inner: calls per sample for each case (default 1). on_sample: called after every sample (progress).
    The garbage collector is paused while timing.
    """
    if reps < 1:
        raise ValueError("reps must be at least 1")
    names = list(cases)
    inner = inner or {}
    samples: Dict[str, List[float]] = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for rep in range(warmup + reps):
            shift = rep % len(names)
            for name in names[shift:] + names[:shift]:
                seconds = timer(cases[name], inner.get(name, 1))
                if rep >= warmup:
                    samples[name].append(seconds)
                if on_sample is not None:
                    on_sample()
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: summarize(values) for name, values in samples.items()}


class PhaseClock:
    """Wall seconds spent per named phase of a benchmark (where a time-limited run's time went): `with
    clock("reference"): ...` adds the block's time, the device synchronized at both ends, to that phase."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: Dict[str, float] = {}

    def __call__(self, phase: str) -> "_Phase":
        return _Phase(self, phase)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class _Phase:
    def __init__(self, clock: PhaseClock, phase: str):
        self.clock, self.phase = clock, phase

    def __enter__(self) -> None:
        self.clock.sync()
        self.started = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.clock.sync()
        elapsed = time.perf_counter() - self.started
        self.clock.seconds[self.phase] = self.clock.seconds.get(self.phase, 0.0) + elapsed
