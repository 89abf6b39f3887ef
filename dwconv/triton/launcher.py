"""What every Triton kernel family's launcher shares: tiles written as variant strings, one launch (a named
tile, the family's default tile, or autotuning among its candidates) and a capture hook.

A tile is a `triton.Config`: the kernel's tile constexprs (BLOCK_*, ROWS, HOIST, WIN, PREFETCH, ...) and its
num_warps. A family writes its tiles as a variant (the last part of a plan "triton:<family>:<variant>"): comma
separated fields, each a short key and a number, e.g. rows "N2,C1,W64,R14,H1,WIN8,w2" (w = num_warps; flags
are 0 or 1; a field with a default is written only when it differs from it). `TileFormat` parses and writes
them; each family module (direct_tiles.py, rows_tiles.py, rows_wgrad_tiles.py, plane_tiles.py) declares its
fields, candidate tables and default tile (the first candidate).
"""
from __future__ import annotations

import contextlib
import functools
import re
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import triton

MAX_WARPS = 32
MAX_TILE_ELEMENTS = 1 << 20  # Triton's largest tensor


class Field(NamedTuple):
    key: str                     # as written in a variant
    name: str                    # the kernel's constexpr, or "num_warps"
    required: bool = True        # else absent means `default` (None: the launcher decides per call)
    default: Optional[int] = None
    flag: bool = False           # 0 or 1 (a bool constexpr)
    power_of_two: bool = False   # a block size (tl.arange needs powers of two)
    minimum: int = 1


WARPS = Field("w", "num_warps", power_of_two=True)
_TOKEN = re.compile(r"([A-Za-z]+)(\d+)")


class TileFormat:
    """One family's variant syntax (one per kernel: the rows family's wgrad tiles have their own fields)."""

    def __init__(self, family: str, op_names: str, fields: Sequence[Field]):
        self.family, self.op_names, self.fields = family, op_names, tuple(fields)
        self._by_key = {f.key: f for f in self.fields}

    def describe(self) -> str:
        """The fields, e.g. "N (BLOCK_N), ..., [P (PREFETCH 0/1)], w (num_warps)" (optional ones bracketed)."""
        parts = []
        for f in self.fields:
            part = f"{f.key} ({f.name}{' 0/1' if f.flag else ''})"
            parts.append(part if f.required else f"[{part}]")
        return ", ".join(parts)

    def format(self, tile: triton.Config) -> str:
        """The variant naming `tile` (fields in the format's order)."""
        parts = []
        for f in self.fields:
            value = tile.num_warps if f.name == "num_warps" else tile.kwargs.get(f.name, f.default)
            if value is None or (not f.required and value == f.default):
                continue
            parts.append(f"{f.key}{int(value)}")
        return ",".join(parts)

    def parse(self, variant: str) -> triton.Config:
        """The tile a variant names (raises ValueError saying what is wrong). Do not modify the result: it is
        cached per variant."""
        return _parse(self, variant)

    def _parse(self, variant: str) -> triton.Config:
        where = f"triton {self.family} variant {variant!r} ({self.op_names} tiles: {self.describe()})"
        values: Dict[str, int] = {}
        for token in variant.split(","):
            match = _TOKEN.fullmatch(token.strip())
            if match is None:
                raise ValueError(f"{where}: cannot read {token!r} (a field is a key and a number, e.g. 'W64')")
            key, number = match.group(1), int(match.group(2))
            field = self._by_key.get(key)
            if field is None:
                raise ValueError(f"{where}: unknown field {key!r}")
            if key in values:
                raise ValueError(f"{where}: field {key!r} given twice")
            if field.flag and number not in (0, 1):
                raise ValueError(f"{where}: {key} ({field.name}) is 0 or 1, got {number}")
            if not field.flag and number < field.minimum:
                raise ValueError(f"{where}: {key} ({field.name}) must be at least {field.minimum}, got {number}")
            if field.power_of_two and number & (number - 1):
                raise ValueError(f"{where}: {key} ({field.name}) must be a power of two, got {number}")
            values[key] = number
        missing = [f.key for f in self.fields if f.required and f.key not in values]
        if missing:
            raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
        warps = values.pop(WARPS.key)
        if warps > MAX_WARPS:
            raise ValueError(f"{where}: at most {MAX_WARPS} warps, got {warps}")
        kwargs = {}
        for f in self.fields:
            if f.name == "num_warps":
                continue
            value = values.get(f.key, f.default)
            if value is not None:
                kwargs[f.name] = bool(value) if f.flag else value
        elements = 1
        for name, value in kwargs.items():
            if name.startswith("BLOCK_"):
                elements *= value
        if elements > MAX_TILE_ELEMENTS:
            raise ValueError(f"{where}: a tile of {elements} elements is more than Triton's {MAX_TILE_ELEMENTS}")
        return triton.Config(kwargs, num_warps=warps)


@functools.lru_cache(maxsize=1024)
def _parse(tile_format: TileFormat, variant: str) -> triton.Config:
    return tile_format._parse(variant)


def unique(tiles: Sequence[triton.Config]) -> List[triton.Config]:
    """tiles without repeats (same constexprs and warps), order kept."""
    out, seen = [], set()
    for tile in tiles:
        key = (tuple(sorted(tile.kwargs.items())), tile.num_warps)
        if key not in seen:
            seen.add(key)
            out.append(tile)
    return out


class Launch(NamedTuple):
    """One kernel launch as the launchers would issue it (recorded by `capture_launches`)."""
    kernel: object
    args: tuple
    constexprs: dict  # the kernel's constexpr arguments, tile sizes included
    num_warps: int
    grid: tuple = (1,)
    # The grid as a function of a tile's kwargs, and the tiles this launch chose among (the recorded tile is
    # the first: the default, or the named variant) with their variants: what a tile sweep
    # (benchmarks/triton_tiles.py) replays.
    grid_of: Optional[Callable[[dict], tuple]] = None
    candidates: Tuple[triton.Config, ...] = ()
    variants: Tuple[str, ...] = ()


_captured: Optional[List[Launch]] = None


@contextlib.contextmanager
def capture_launches():
    """Record launches instead of running them (the default or named tile, no autotuning): how
    benchmarks/sass_report.py compiles exactly the variants the launchers issue, without a GPU."""
    global _captured
    previous, _captured = _captured, []
    try:
        yield _captured
    finally:
        _captured = previous


_TUNERS: Dict[tuple, object] = {}


def launch(kernel, grid, args, constexprs, candidates: Sequence[triton.Config], tile_format: TileFormat, *,
           tile: Optional[triton.Config] = None, autotune: bool = False, key: Sequence[str] = (),
           reset_to_zero=None):
    """Launch `kernel` over `grid(tile kwargs)`: with `tile` (a named variant) when given; else autotuned among
    `candidates` when `autotune` (the caller's choice: on a GPU with the triton_autotune setting on) and there
    is more than one; else with the first candidate (the family's default tile). `key`: the kernel arguments
    whose values select the autotuned tile."""
    if tile is None and autotune and _captured is None and len(candidates) > 1:
        family = (kernel, tuple(tuple(sorted(c.kwargs.items())) + (c.num_warps,) for c in candidates))
        tuner = _TUNERS.get(family)
        if tuner is None:
            tuner = _TUNERS[family] = triton.autotune(configs=list(candidates), key=list(key),
                                                      reset_to_zero=reset_to_zero)(kernel)
        tuner[grid](*args, **constexprs)
        return
    chosen = tile if tile is not None else candidates[0]
    recorded = (chosen,) if tile is not None else tuple(candidates)
    launch_fixed(kernel, grid(chosen.kwargs), args, {**constexprs, **chosen.kwargs}, chosen.num_warps, grid,
                 recorded, tuple(tile_format.format(c) for c in recorded))


def launch_fixed(kernel, grid, args, constexprs, num_warps: int = 4, grid_of=None, candidates=(), variants=()):
    """Launch `kernel` over a fixed grid with fixed constexprs (recorded instead under capture_launches)."""
    if _captured is not None:
        _captured.append(Launch(kernel, tuple(args), dict(constexprs), num_warps, tuple(grid), grid_of,
                                tuple(candidates), tuple(variants)))
        return
    kernel[grid](*args, **constexprs, num_warps=num_warps)
