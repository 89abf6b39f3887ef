"""dwconv's settings: the one place that reads the environment (once, at import), with setters and a
context manager.

    dwconv.set_benchmark(True)                    # like torch.backends.cudnn.benchmark
    with dwconv.config.override(cpu_family="portable"):
        ...

| setting | environment | default | effect |
|---|---|---|---|
| benchmark | DWCONV_BENCHMARK=1 | False | "auto" times every capable plan (torch included) on the first call of each signature and keeps the fastest (dwconv/benchmark.py) |
| benchmark_cache | DWCONV_BENCHMARK_CACHE=path | None | a JSON file benchmark mode reads at start and writes after each new choice, keyed by device and versions |
| dispatch_table | DWCONV_DISPATCH_TABLE=0 | True | "auto" outside benchmark mode looks calls up in the shipped table of measurements (dwconv/dispatch_table.json); off: the fallback rule only |
| cpu_family | DWCONV_CPU_FAMILY=avx512bf16/avx512/avx2/portable | "" | the instruction set of the cpu backend's kernels ("" = the best this CPU has for the dtype; avx512bf16 runs bfloat16 only) |
| cuda_family | DWCONV_CUDA_FAMILY=fma/mma | "" | the cuda backend's kernels ("" = fma; mma: tensor cores where they apply, fma elsewhere) |
| triton_family | DWCONV_TRITON_FAMILY=rows/direct/plane | "" | the triton backend's kernels ("" = the default choice per call; a named family where it applies, the default elsewhere) |
| triton_autotune | DWCONV_TRITON_AUTOTUNE=0 | True | off: Triton kernels run their heuristic tile instead of autotuning their candidates |
| huge_pages | DWCONV_HUGE_PAGES=0 | True | the CPU outputs of 4 MiB and more that dwconv's kernels allocate are advised for transparent huge pages (dwconv/outputs.py); off: not advised |
| output_pool_mib | DWCONV_OUTPUT_POOL_MIB=n | 1024 | the CPU outputs of 4 MiB and more that dwconv's kernels allocate come from a pool of whole 2 MiB pages that keeps up to n MiB of freed outputs' memory mapped for the next ones (csrc/cpu/output_pool.cpp); lowering it frees the excess at once; 0: torch.empty's memory, as PyTorch's own outputs |

A family setting is the backend's default where its family can serve a call; a plan named explicitly
(`backend="cuda:mma"`) is strict instead: it runs as named or raises.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from typing import Callable, Iterator, List, Optional

CPU_FAMILIES = ("avx512bf16", "avx512", "avx2", "portable")
CUDA_FAMILIES = ("fma", "mma")
TRITON_FAMILIES = ("rows", "direct", "plane")
MAX_OUTPUT_POOL_MIB = 1 << 40  # the limit in bytes must fit an int64


@dataclasses.dataclass(frozen=True)
class Settings:
    benchmark: bool = False
    benchmark_cache: Optional[str] = None
    dispatch_table: bool = True
    cpu_family: str = ""
    cuda_family: str = ""
    triton_family: str = ""
    triton_autotune: bool = True
    huge_pages: bool = True
    output_pool_mib: int = 1024


_CHOICES = {"cpu_family": CPU_FAMILIES, "cuda_family": CUDA_FAMILIES, "triton_family": TRITON_FAMILIES}


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={value!r}: expected 0 or 1")


def _count(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: expected a whole number") from None


# Switches of earlier versions, read nowhere now: setting one gets a warning naming its replacement.
_REPLACED = {"DWCONV_CPU_ISA": "DWCONV_CPU_FAMILY", "DWCONV_CUDA_MMA": "DWCONV_CUDA_FAMILY=mma",
             "DWCONV_TRITON_ROW_STREAM": "DWCONV_TRITON_FAMILY", "DWCONV_TRITON_PLANE_GEMM": "DWCONV_TRITON_FAMILY",
             "DWCONV_CUDA_WGRAD_TARGET_BLOCKS": "a plan's variant, e.g. backend='cuda:fma:4'"}


def _from_environment() -> Settings:
    for old, new in _REPLACED.items():
        if old in os.environ:
            warnings.warn(f"{old} is no longer read by dwconv; use {new} (dwconv/config.py)", stacklevel=3)
    return _checked(Settings(
        benchmark=_flag("DWCONV_BENCHMARK", False),
        benchmark_cache=os.environ.get("DWCONV_BENCHMARK_CACHE") or None,
        dispatch_table=_flag("DWCONV_DISPATCH_TABLE", True),
        cpu_family=os.environ.get("DWCONV_CPU_FAMILY", ""),
        cuda_family=os.environ.get("DWCONV_CUDA_FAMILY", ""),
        triton_family=os.environ.get("DWCONV_TRITON_FAMILY", ""),
        triton_autotune=_flag("DWCONV_TRITON_AUTOTUNE", True),
        huge_pages=_flag("DWCONV_HUGE_PAGES", True),
        output_pool_mib=_count("DWCONV_OUTPUT_POOL_MIB", 1024),
    ))


def _checked(s: Settings) -> Settings:
    for name, choices in _CHOICES.items():
        value = getattr(s, name)
        if value not in ("",) + choices:
            raise ValueError(f"dwconv setting {name}={value!r}: choose one of {choices} (or '' for the default)")
    for name in ("benchmark", "dispatch_table", "triton_autotune", "huge_pages"):
        if not isinstance(getattr(s, name), bool):
            raise TypeError(f"dwconv setting {name} must be a bool, got {getattr(s, name)!r}")
    if (isinstance(s.output_pool_mib, bool) or not isinstance(s.output_pool_mib, int)
            or not 0 <= s.output_pool_mib <= MAX_OUTPUT_POOL_MIB):
        raise ValueError(f"dwconv setting output_pool_mib must be a whole number in [0, {MAX_OUTPUT_POOL_MIB}], "
                         f"got {s.output_pool_mib!r}")
    return s


_settings = _from_environment()
# A number per distinct settings value (the same settings always get the same number): caches of decisions
# (dwconv/dispatch.py) key on it, so they hold one entry per settings state however often settings change.
_numbers = {_settings: 0}
generation = 0


# Called with the new settings after every change (set, and override on entry and exit).
_listeners: List[Callable[[Settings], None]] = []


def on_change(listener: Callable[[Settings], None]) -> None:
    """Call `listener(settings)` after every change of the settings."""
    _listeners.append(listener)


def _notify() -> None:
    for listener in _listeners:
        listener(_settings)


def get() -> Settings:
    """The current settings (read-only by convention: change them with set() or override())."""
    return _settings


def set(**changes) -> None:  # noqa: A001  (dwconv.config.set reads well)
    """Change settings by name, e.g. `dwconv.config.set(benchmark=True, cpu_family="avx2")`."""
    global _settings, generation
    unknown = [k for k in changes if k not in Settings.__dataclass_fields__]
    if unknown:
        raise TypeError(f"unknown dwconv setting(s) {unknown}; known: {list(Settings.__dataclass_fields__)}")
    _settings = _checked(dataclasses.replace(_settings, **changes))
    generation = _numbers.setdefault(_settings, len(_numbers))
    _notify()


@contextlib.contextmanager
def override(**changes) -> Iterator[Settings]:
    """Settings changed inside a `with` block, restored after it."""
    global _settings, generation
    previous = (_settings, generation)
    try:
        set(**changes)
        yield _settings
    finally:
        _settings, generation = previous
        _notify()


def set_benchmark(enabled: bool = True) -> None:
    """Benchmark mode for backend "auto" (see dwconv/benchmark.py): like torch.backends.cudnn.benchmark."""
    set(benchmark=bool(enabled))
