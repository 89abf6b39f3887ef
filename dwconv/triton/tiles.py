"""Every tile-size choice of the Triton kernels, in one place.

A tile is BLOCK_C channels x BLOCK_H rows x BLOCK_W columns of the map a kernel iterates over (the output
for forward and wgrad, one stride phase of the input for dgrad). The same kernel serves both layouts through
its strides, so the tile shapes decide the vectorisation: NCHW tiles are wide along W (contiguous there),
channels_last tiles are wide along C (16-byte vectors over channels) and small in space.
Small maps (<= 16 wide, the Robust-ResNet 7x7 and 14x14 planes) get whole-row tiles: one program covers
full rows of several channels, so filter rows that fall entirely into padding are skipped.
"""
from __future__ import annotations

import contextlib
from typing import Callable, List, NamedTuple, Optional, Tuple

import triton

from .. import config
from .common import INTERPRET

# (BLOCK_C, BLOCK_H, BLOCK_W, num_warps); "W" in a small-map entry means the map width rounded up to 2^k.
_NCHW_LARGE = [(1, 8, 64, 4), (1, 16, 64, 8), (1, 4, 128, 4), (1, 16, 32, 4), (1, 8, 32, 2)]
# BLOCK_H 0: the whole height, rounded up to 2^k, at most 16.
_NCHW_SMALL = [(8, 0, "W", 4), (4, 0, "W", 2), (16, 4, "W", 4), (8, 2, "W", 2)]
_NHWC_LARGE = [(32, 4, 8, 4), (64, 2, 8, 4), (64, 4, 4, 4), (128, 1, 8, 4), (32, 8, 8, 8)]
_NHWC_SMALL = [(32, 1, "W", 4), (64, 1, "W", 4), (32, 2, "W", 4), (64, 2, "W", 8), (128, 1, "W", 8)]

SMALL_MAP_WIDTH = 16


def autotune_enabled() -> bool:
    """Autotuning benchmarks every candidate; the interpreter runs the heuristic choice only, and so does a GPU
    run with the setting triton_autotune off (dwconv.config; the tests: they check results, and compiling every
    candidate of every test shape would take most of their time)."""
    return not INTERPRET and config.get().triton_autotune


# Interior tiles of the direct kernels unroll the filter rows (no loop overhead on the hot path) for NCHW
# tiles when the kernel is at most this tall and each thread holds at most OUTPUTS_PER_THREAD_UNROLLED
# outputs. With more outputs per thread (whole-plane small-map tiles), or channels_last tiles (a channel
# vector per pixel), the unrolled schedule runs out of registers and ptxas spills (seen at K = 9 and 11).
UNROLL_ROWS_MAX = 13
OUTPUTS_PER_THREAD_UNROLLED = 4


def unroll_rows(channels_last: bool, kernel_height: int, tile_elements: int, num_warps: int) -> bool:
    return (not channels_last and kernel_height <= UNROLL_ROWS_MAX
            and tile_elements <= OUTPUTS_PER_THREAD_UNROLLED * 32 * num_warps)


def width_bucket(width: int) -> int:
    """Map widths that share one autotune family: 8, 16 (small maps, whole rows) or 0 (large)."""
    if width <= 8:
        return 8
    if width <= SMALL_MAP_WIDTH:
        return 16
    return 0


def configs(channels_last: bool, bucket: int, height: int = 0) -> List[triton.Config]:
    """Autotune candidates for one layout and width bucket (height only resolves 'whole height')."""
    if bucket == 0:
        table = _NHWC_LARGE if channels_last else _NCHW_LARGE
    else:
        table = _NHWC_SMALL if channels_last else _NCHW_SMALL
    out = []
    for bc, bh, bw, warps in table:
        bw = bucket if bw == "W" else bw
        if bh == 0:
            bh = min(triton.next_power_of_2(max(height, 1)), 16)
        out.append(triton.Config({"BLOCK_C": bc, "BLOCK_H": bh, "BLOCK_W": bw}, num_warps=warps))
    return out


def fit_channels(configs_, channels: int, height: int) -> List[triton.Config]:
    """Shrink channel blocks wider than the channel count (rounded up to 2^k), giving the freed lanes to
    rows (up to the height rounded up to 2^k); duplicates removed, order kept."""
    limit = triton.next_power_of_2(max(channels, 1))
    max_rows = triton.next_power_of_2(max(height, 1))
    out, seen = [], set()
    for cfg in configs_:
        bc, bh, bw = (cfg.kwargs[k] for k in ("BLOCK_C", "BLOCK_H", "BLOCK_W"))
        if bc > limit:
            bh = max(bh, min(max_rows, bh * (bc // limit)))
            bc = limit
        key = (bc, bh, bw, cfg.num_warps)
        if key not in seen:
            seen.add(key)
            out.append(triton.Config({"BLOCK_C": bc, "BLOCK_H": bh, "BLOCK_W": bw}, num_warps=cfg.num_warps))
    return out


def candidates(channels_last: bool, channels: int, height: int, width: int,
               kernel_height: int = 0) -> List[triton.Config]:
    """The autotune candidates of one shape family (the first is the heuristic default). With a
    kernel_height (kernels that take UNROLL_ROWS), each carries its UNROLL_ROWS decision."""
    out = fit_channels(configs(channels_last, width_bucket(width), height), channels, height)
    if not kernel_height:
        return out
    for cfg in out:
        elements = cfg.kwargs["BLOCK_C"] * cfg.kwargs["BLOCK_H"] * cfg.kwargs["BLOCK_W"]
        cfg.kwargs["UNROLL_ROWS"] = unroll_rows(channels_last, kernel_height, elements, cfg.num_warps)
    return out


def default_config(channels_last: bool, channels: int, height: int, width: int,
                   kernel_height: int = 0) -> triton.Config:
    """The heuristic choice, used where autotuning is off (interpreter, deterministic wgrad).

    On the GPU: the family's first candidate. The interpreter pays per program, not per element: the
    largest candidate tile.
    """
    return heuristic_of(candidates(channels_last, channels, height, width, kernel_height))


def heuristic_of(cands: List[triton.Config]) -> triton.Config:
    """default_config's choice among given candidates."""
    if INTERPRET:
        return max(cands, key=lambda c: c.kwargs["BLOCK_C"] * c.kwargs["BLOCK_H"] * c.kwargs["BLOCK_W"])
    return cands[0]


_TUNERS = {}


def tuned(kernel, channels_last: bool, channels: int, height: int, width: int, kernel_height: int, key,
          reset_to_zero=None):
    """The autotuned launcher of `kernel` for one shape family (cached; candidates fixed per family)."""
    cands = candidates(channels_last, channels, height, width, kernel_height)
    family = (kernel, channels_last, tuple(tuple(sorted(c.kwargs.items())) + (c.num_warps,) for c in cands))
    tuner = _TUNERS.get(family)
    if tuner is None:
        tuner = triton.autotune(configs=cands, key=list(key), reset_to_zero=reset_to_zero)(kernel)
        _TUNERS[family] = tuner
    return tuner


# Autotune cache key: every shape argument that changes the best tile (the kernels name them alike).
TUNE_KEY = ("CO", "H", "W", "HO", "WO", "M", "KH", "KW", "SH", "SW", "DH", "DW")


class Launch(NamedTuple):
    """One kernel launch as the launchers would issue it (recorded by `capture_launches`)."""
    kernel: object
    args: tuple
    constexprs: dict  # the kernel's constexpr arguments, tile sizes included
    num_warps: int
    grid: tuple = (1,)
    # Autotuned launches: the grid as a function of a candidate's kwargs, and every candidate (the recorded
    # tile is the first): what a tile sweep (benchmarks/triton_tiles.py) replays.
    grid_of: Optional[Callable[[dict], tuple]] = None
    candidates: Tuple[triton.Config, ...] = ()


_captured: Optional[List[Launch]] = None


@contextlib.contextmanager
def capture_launches():
    """Record launches instead of running them (the heuristic tile, no autotuning): how
    benchmarks/sass_report.py compiles exactly the variants the launchers issue, without a GPU."""
    global _captured
    previous, _captured = _captured, []
    try:
        yield _captured
    finally:
        _captured = previous


def launch(kernel, grid, args, constexprs, channels_last: bool, channels: int, height: int, width: int,
           kernel_height: int = 0, reset_to_zero=None, autotune: bool = True):
    """Launch `kernel` over `grid(meta)`: autotuned among the family's candidates, or the heuristic tile.
    Kernels that take UNROLL_ROWS pass their kernel height (it is part of each candidate)."""
    if autotune_enabled() and autotune and _captured is None:
        tuner = tuned(kernel, channels_last, channels, height, width, kernel_height, TUNE_KEY, reset_to_zero)
        tuner[grid](*args, **constexprs)
        return
    cands = candidates(channels_last, channels, height, width, kernel_height)
    cfg = heuristic_of(cands)
    launch_fixed(kernel, grid(cfg.kwargs), args, {**constexprs, **cfg.kwargs}, cfg.num_warps, grid,
                 cands if autotune else ())


def launch_fixed(kernel, grid, args, constexprs, num_warps: int = 4, grid_of=None, candidates=()):
    """Launch `kernel` over a fixed grid with fixed constexprs (recorded instead under capture_launches)."""
    if _captured is not None:
        _captured.append(Launch(kernel, tuple(args), dict(constexprs), num_warps, tuple(grid), grid_of,
                                tuple(candidates)))
        return
    kernel[grid](*args, **constexprs, num_warps=num_warps)


# ---- small-map GEMM kernels (plane.py): (BLOCK_C, BLOCK_M images, BLOCK_N pixels, BLOCK_K pixels, warps)
# (1, 64, 64, 64, 4) and (1, 128, 64, 32, 8) spill on sm_90 (255 registers): not candidates.
_PLANE_NCHW = [(1, 64, 32, 64, 4), (1, 32, 64, 64, 4), (1, 64, 64, 64, 8), (1, 128, 32, 32, 8),
               (1, 16, 64, 64, 4)]
_PLANE_NHWC = [(8, 16, 32, 32, 4), (4, 32, 32, 32, 4), (8, 32, 32, 32, 8), (2, 64, 64, 32, 4),
               (4, 16, 64, 64, 4)]
PLANE_TUNE_KEY = ("N",) + TUNE_KEY


def plane_candidates(channels_last: bool, batch: int, channels: int) -> List[triton.Config]:
    """Candidates with the image block cut to the batch (16 at least: the smallest tensor-core M)."""
    max_m = max(16, triton.next_power_of_2(batch))
    max_c = triton.next_power_of_2(channels)
    out, seen = [], set()
    for bc, bm, bn, bk, warps in (_PLANE_NHWC if channels_last else _PLANE_NCHW):
        key = (min(bc, max_c), min(bm, max_m), bn, bk, warps)
        if key not in seen:
            seen.add(key)
            out.append(triton.Config(dict(zip(("BLOCK_C", "BLOCK_M", "BLOCK_N", "BLOCK_K"), key[:4])),
                                     num_warps=warps))
    return out


def launch_plane(kernel, grid, batch: int, channels: int, args, constexprs, channels_last: bool):
    """Launch a plane.py kernel: autotuned on the GPU, the first candidate otherwise."""
    launch_candidates(kernel, grid, plane_candidates(channels_last, batch, channels), PLANE_TUNE_KEY, args,
                      constexprs, largest_in_interpreter=False)


# ---- row-streaming kernels (rows.py): a thread holds E outputs per open output row, KH rows open at once,
# so E * KH accumulators: E = 8 keeps K = 11 within 255 registers without spills on sm_90; K <= 7 affords 16.
# (elements per thread, warps); NCHW tiles: BLOCK_N images x one channel x BLOCK_W columns (so the weights
# are uniform in a program), channels_last tiles: BLOCK_C channels (channel vectors) x BLOCK_W columns.
# Half-precision channels_last tiles at K <= 7 lead with 16 per thread (their loads are 8 bytes: twice the
# work per load and conversion keeps the FMA share above one half; fp32 spills there).
_ROWS_NCHW = [(8, 2), (8, 1), (4, 2), (16, 2)]
_ROWS_NHWC = [(8, 4), (8, 2), (4, 4), (16, 4)]
_ROWS_NHWC_HALF_SMALL_K = [(16, 4), (8, 4), (8, 2), (4, 4)]
ROWS_MAX_STRIP, ROWS_LONG_MAP_STRIP = 64, 32  # maps up to 64 tall are walked whole, taller ones in strips of 32
# FLIP and SH: forward and dgrad (and strides) of one shape tune separately.
ROWS_TUNE_KEY = ("N", "CO", "H", "W", "HO", "WO", "M", "KH", "KW", "SH", "SW", "DW", "FLIP")
# A program's weights go into registers (HOIST) when it has one channel and taps + KH * E registers stay
# within this (K = 11 at E = 8, 209, spilled 104 bytes; K = 9 at E = 8 and K = 11 at E = 4 fit).
ROWS_HOIST_REGISTERS = 170


# A program walks its strip serially: grids under ROWS_UNDERFILLED programs (seen on an H200: 256 programs of
# a channels_last 56x56 forward, 2.6x behind cuDNN) split the strip until ROWS_TARGET_PROGRAMS, keeping
# strips of at least max(8, 2 KH) rows (each strip re-reads KH - 1 halo rows).
ROWS_UNDERFILLED, ROWS_TARGET_PROGRAMS = 512, 1024


def _split_rows(rows: int, programs: int, kernel_height: int) -> int:
    if programs >= ROWS_UNDERFILLED:
        return rows
    strips = min(triton.cdiv(ROWS_TARGET_PROGRAMS, programs), max(rows // max(8, 2 * kernel_height), 1))
    return triton.cdiv(rows, strips)


def rows_candidates(channels_last: bool, batch: int, channels: int, height: int, width: int,
                    kernel: tuple, element_size: int, column_windows: bool = False) -> List[triton.Config]:
    """Candidates for one shape: the column tile covers the row (up to 64 wide); the remaining lanes go to
    images (NCHW) or pixels (channels_last). NCHW programs stay on one channel: small batches get fewer
    elements per thread (or fewer warps) instead, and only a plane too small to fill one warp takes several
    channels. With `column_windows` (NCHW, stride 1 and dilation 1 along W) each thread's elements are
    consecutive columns of one row (WIN, rows.py), so a row's input loads are shared across its taps; the
    first candidate's single-column twin (WIN = 1) stays among the candidates."""
    kernel_height, taps = kernel[0], kernel[0] * kernel[1]
    rows = height if height <= ROWS_MAX_STRIP else ROWS_LONG_MAP_STRIP
    max_n = triton.next_power_of_2(max(batch, 1))
    max_c = triton.next_power_of_2(max(channels, 1))
    max_w = triton.next_power_of_2(max(width, 1))
    out, seen = [], set()
    if not channels_last:
        table = _ROWS_NCHW
    elif kernel_height <= 7 and element_size <= 2:
        table = _ROWS_NHWC_HALF_SMALL_K
    else:
        table = _ROWS_NHWC
    for per_thread, warps in table:
        # 16 accumulators per open row: past K = 7 they do not fit; at K = 7 only half-precision channels_last
        # tiles hold them (NCHW with hoisted weights spilled 128-240 bytes on sm_90).
        if per_thread > 8 and (kernel_height > 7 or (kernel_height == 7 and table is not _ROWS_NHWC_HALF_SMALL_K)):
            continue
        elements = per_thread * 32 * warps
        if channels_last:
            bc = min(max_c, 64)  # 16 lanes x 4 channels
            bw = min(max_w, max(elements // bc, 1))
            bn = min(max_n, max(elements // (bc * bw), 1))
        else:
            bw = min(max_w, 64)
            bn = min(max_n, max(elements // bw, 1))
            while warps > 1 and bn * bw < elements:  # fewer images than the tile wants: fewer warps
                warps //= 2
                elements //= 2
            bc = min(max_c, max(32 // (bn * bw), 1))
        per_thread = max(bn * bc * bw // (32 * warps), 1)
        hoist = not channels_last and bc == 1 and taps + kernel_height * per_thread <= ROWS_HOIST_REGISTERS
        programs = (triton.cdiv(batch, bn) * triton.cdiv(channels, bc) * triton.cdiv(width, bw)
                    * triton.cdiv(height, rows))
        win = min(per_thread, bw) if column_windows and not channels_last else 1
        key = (bn, bc, bw, _split_rows(rows, programs, kernel_height), hoist, win, warps)
        if key not in seen:
            seen.add(key)
            out.append(triton.Config(dict(zip(("BLOCK_N", "BLOCK_C", "BLOCK_W", "ROWS", "HOIST", "WIN"), key[:6])),
                                     num_warps=warps))
    out = with_prefetch_twin(out)
    if out[0].kwargs["WIN"] > 1:
        out.insert(2, triton.Config({**out[0].kwargs, "WIN": 1}, num_warps=out[0].num_warps))
    return out


def with_prefetch_twin(cands: List[triton.Config]) -> List[triton.Config]:
    """The candidates with the first one's PREFETCH twin second (loads of the next step issued before this
    step's FMAs; not yet measured against the plain tile, so the heuristic choice stays the plain one)."""
    first = cands[0]
    return [first, triton.Config({**first.kwargs, "PREFETCH": True}, num_warps=first.num_warps)] + cands[1:]


# wgrad (rows_wgrad.py) keeps KH*KW partial sums per element: one element per thread (two for K <= 7).
_ROWS_WGRAD = [(1, 2), (1, 4), (2, 2)]
ROWS_WGRAD_MAX_STRIP = 64


def rows_wgrad_candidates(channels_last: bool, batch: int, channels: int, height: int, width: int,
                          taps: int) -> List[triton.Config]:
    """Candidates for one shape: NCHW tiles span the row (up to 64 columns) and then images; channels_last
    tiles put 32 consecutive channels on a warp's lanes, then columns, then images."""
    rows = height if height <= ROWS_WGRAD_MAX_STRIP else ROWS_WGRAD_MAX_STRIP
    max_n = triton.next_power_of_2(max(batch, 1))
    max_c = triton.next_power_of_2(max(channels, 1))
    max_w = triton.next_power_of_2(max(width, 1))
    out, seen = [], set()
    for per_thread, warps in _ROWS_WGRAD:
        if per_thread > 1 and taps > 49:
            continue
        elements = per_thread * 32 * warps
        if channels_last:
            bc = min(max_c, 32 * per_thread)
            bw = min(max_w, max(elements // bc, 1))
            bn = min(max_n, max(elements // (bc * bw), 1))
        else:
            bw = min(max_w, 64)
            bn = min(max_n, max(elements // bw, 1))
            bc = min(max_c, max(elements // (bw * bn), 1))
        key = (bn, bc, bw, rows, warps)
        if key not in seen:
            seen.add(key)
            out.append(triton.Config(dict(zip(("BLOCK_N", "BLOCK_C", "BLOCK_W", "ROWS"), key[:4])),
                                     num_warps=warps))
    return with_prefetch_twin(out)


def launch_candidates(kernel, grid, cands: List[triton.Config], key, args, constexprs, reset_to_zero=None,
                      largest_in_interpreter: bool = True):
    """Launch `kernel` autotuned among `cands` on the GPU; otherwise with the first candidate (the heuristic
    choice), or in the interpreter the largest BLOCK_N x BLOCK_C x BLOCK_W tile (it pays per program, not per
    element)."""
    if autotune_enabled() and _captured is None and len(cands) > 1:
        family = (kernel, tuple(tuple(sorted(c.kwargs.items())) + (c.num_warps,) for c in cands))
        tuner = _TUNERS.get(family)
        if tuner is None:
            tuner = _TUNERS[family] = triton.autotune(configs=cands, key=list(key),
                                                      reset_to_zero=reset_to_zero)(kernel)
        tuner[grid](*args, **constexprs)
        return
    cfg = cands[0]
    if INTERPRET and largest_in_interpreter:
        cfg = max(cands, key=lambda c: c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_C"] * c.kwargs["BLOCK_W"])
    launch_fixed(kernel, grid(cfg.kwargs), args, {**constexprs, **cfg.kwargs}, cfg.num_warps, grid, cands)
