"""Benchmark mode: "auto" times every plan that can run a call on the call's own tensors, once per signature.

    dwconv.set_benchmark(True)          # or DWCONV_BENCHMARK=1; like torch.backends.cudnn.benchmark

The first call of each signature (op, shapes, dtype, layout, stride, padding, dilation, device, the
deterministic flag, CPU threads) runs every capable plan, PyTorch's own convolution included, keeps the
fastest and returns that plan's result; later calls of the signature run the kept plan directly. Plans that
raise (for example PyTorch's kernels that refuse torch.use_deterministic_algorithms) are left out. Every
plan computes the same op into a fresh output, so timing changes no result and accumulates nothing.

With torch.distributed initialized, every rank times and then takes rank 0's choice (one broadcast per
signature), so all ranks run the same kernels. With a cache file (DWCONV_BENCHMARK_CACHE or
dwconv.config.set(benchmark_cache=path)) the choices persist across processes, keyed by the device and the
versions of torch, triton, dwconv and the GPU driver: a new process starts tuned.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch

from . import config
from ._conv_args import ConvArgs, is_channels_last
from .backends import capable_plans
from .plans import Plan, parse

CACHE_FORMAT = 1
REPS = 5             # interleaved samples per candidate
MIN_SAMPLE_MS = 2.0  # a sample repeats the call until it lasts this long (at most MAX_INNER calls)
MAX_INNER = 50


class Choice(NamedTuple):
    plan: str
    ms: Dict[str, float]  # median milliseconds of every plan timed (empty when taken from another rank)


_choices: Dict[str, Choice] = {}
_disk: Optional[Dict[str, Dict[str, dict]]] = None
_disk_path: Optional[str] = None
_lock = threading.Lock()


def signature(op: str, x: torch.Tensor, args: ConvArgs) -> str:
    """The signature a choice is kept under (a string: it is also the on-disk key)."""
    threads = torch.get_num_threads() if x.device.type == "cpu" else 0
    return (f"{op} {str(x.dtype).replace('torch.', '')} {'nhwc' if is_channels_last(x) else 'nchw'} "
            f"n{args.batch} c{args.channels} h{args.height} w{args.width} m{args.multiplier} "
            f"k{args.kernel[0]}x{args.kernel[1]} s{args.stride[0]}x{args.stride[1]} "
            f"p{'x'.join(map(str, args.padding))} d{args.dilation[0]}x{args.dilation[1]} "
            f"det{int(torch.are_deterministic_algorithms_enabled())} t{threads}")


def context(device: torch.device) -> str:
    """What a cached choice is valid for: the device and the versions that can change which plan is fastest."""
    from . import __version__
    from .dispatch_table import device_key
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    driver = "none"
    if device.type == "cuda":
        driver = str(torch._C._cuda_getDriverVersion()) if hasattr(torch._C, "_cuda_getDriverVersion") else "?"
    return (f"{device_key(device)} | torch {torch.__version__} | triton {triton_version} | dwconv {__version__} "
            f"| driver {driver}")


def _time_candidates(candidates: List[Plan], run: Callable[[Plan], torch.Tensor],
                     device: torch.device) -> Tuple[Dict[str, float], Optional[Plan], Optional[torch.Tensor]]:
    """Median milliseconds per call of every candidate that runs, timed interleaved (one sample of each in turn,
    so a busy moment of the machine hits all alike) after a warm-up call (which also compiles Triton kernels);
    each sample repeats the call until it lasts MIN_SAMPLE_MS. Returns the times, the fastest plan and its
    output."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *a: None)
    inner: Dict[Plan, int] = {}
    for plan in candidates:
        try:
            start = time.perf_counter()
            run(plan)
            sync(device)
            first_ms = (time.perf_counter() - start) * 1e3
            start = time.perf_counter()
            run(plan)
            sync(device)
            warm_ms = (time.perf_counter() - start) * 1e3
        except RuntimeError:  # this plan refuses the call here (e.g. deterministic mode): not a candidate
            continue
        inner[plan] = max(1, min(MAX_INNER, int(MIN_SAMPLE_MS / max(min(first_ms, warm_ms), 1e-3)) + 1))
    samples: Dict[Plan, List[float]] = {plan: [] for plan in inner}
    outputs: Dict[Plan, torch.Tensor] = {}
    for _ in range(REPS):
        for plan, count in inner.items():
            start = time.perf_counter()
            for _ in range(count):
                outputs[plan] = run(plan)
            sync(device)
            samples[plan].append((time.perf_counter() - start) * 1e3 / count)
    ms = {str(plan): statistics.median(values) for plan, values in samples.items()}
    best = min(inner, key=lambda plan: ms[str(plan)], default=None)
    return ms, best, outputs.get(best)


def _agree(plan: Plan) -> Plan:
    """Rank 0's plan on every rank of an initialized process group (a no-op otherwise)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return plan
    message: List[Optional[str]] = [str(plan)]
    dist.broadcast_object_list(message, src=0)
    return parse(message[0])


def choose(op: str, x: torch.Tensor, args: ConvArgs, run: Callable[[Plan], torch.Tensor]) -> Tuple[Plan, torch.Tensor]:
    """The plan for this call's signature (timed now if no choice is kept) and this call's result."""
    key = signature(op, x, args)
    ctx = context(x.device)
    known = _choices.get(f"{ctx} || {key}") or _from_disk(ctx, key)
    candidates = capable_plans(op, x, args)
    local: Optional[Plan] = None
    ms: Dict[str, float] = {}
    out = None
    if known is not None and parse(known.plan) in candidates:
        local, ms = parse(known.plan), known.ms
    else:
        ms, local, out = _time_candidates(candidates, run, x.device)
        if local is None:
            raise RuntimeError(f"dwconv benchmark mode: no plan could run this call ({key})")
    plan = _agree(local)
    if plan != local or out is None:
        out = run(plan)
    choice = Choice(str(plan), ms)
    with _lock:
        _choices[f"{ctx} || {key}"] = choice
    if known is None or known.plan != choice.plan:
        _to_disk(ctx, key, choice)
    return plan, out


def choices() -> Dict[str, Choice]:
    """Every choice made (or read) in this process, by "context || signature"."""
    return dict(_choices)


def clear() -> None:
    """Forget the choices of this process (the cache file is left alone)."""
    from . import dispatch
    global _disk, _disk_path
    with _lock:
        _choices.clear()
        _disk, _disk_path = None, None
    dispatch.clear_decisions()


def _read(path: str) -> Dict[str, Dict[str, dict]]:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise RuntimeError(f"dwconv benchmark cache {path!r} cannot be read ({e}); delete it or choose another "
                           f"path (DWCONV_BENCHMARK_CACHE)") from e
    if data.get("format") != CACHE_FORMAT:
        return {}  # written by another format version: start afresh
    return data.get("contexts", {})


def _from_disk(ctx: str, key: str) -> Optional[Choice]:
    global _disk, _disk_path
    path = config.get().benchmark_cache
    if not path:
        return None
    with _lock:
        if _disk is None or _disk_path != path:
            _disk, _disk_path = _read(path), path
        entry = _disk.get(ctx, {}).get(key)
    return None if entry is None else Choice(entry["plan"], dict(entry.get("ms", {})))


def _to_disk(ctx: str, key: str, choice: Choice) -> None:
    """Merge one choice into the cache file (read again first: other processes may have written to it)."""
    path = config.get().benchmark_cache
    if not path:
        return
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return  # one writer per process group
    with _lock:
        contexts = _read(path)
        contexts.setdefault(ctx, {})[key] = {"plan": choice.plan, "ms": choice.ms}
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".dwconv-cache-")
        with os.fdopen(fd, "w") as f:
            json.dump({"format": CACHE_FORMAT, "contexts": contexts}, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
        global _disk, _disk_path
        _disk, _disk_path = contexts, path
