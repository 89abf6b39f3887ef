"""Tiles of the row-streaming forward and dgrad kernel (rows.py; the "rows" family's fwd and dgrad).

A tile is BLOCK_N images x BLOCK_C channels x BLOCK_W output columns walking a strip of ROWS output rows;
HOIST: the program's weights live in registers; WIN: each thread's columns come as windows of WIN consecutive
columns (stride 1 and dilation 1 along W); PREFETCH: the next step's first filter column is loaded before this
step's FMAs.

Variants: "N<BLOCK_N>,C<BLOCK_C>,W<BLOCK_W>,R<ROWS>,H<HOIST 0|1>[,WIN<WIN>][,P<PREFETCH 0|1>],w<num_warps>",
e.g. "N2,C1,W64,R14,H1,WIN8,w2" (WIN 1 and P0 are the defaults, left out).
"""
from __future__ import annotations

from typing import List, Optional

import triton

from .._conv_args import ConvArgs
from .launcher import WARPS, Field, TileFormat, unique

FORMAT = TileFormat("rows", "fwd and dgrad", [
    Field("N", "BLOCK_N", power_of_two=True), Field("C", "BLOCK_C", power_of_two=True),
    Field("W", "BLOCK_W", power_of_two=True), Field("R", "ROWS"), Field("H", "HOIST", flag=True),
    Field("WIN", "WIN", required=False, default=1, power_of_two=True),
    Field("P", "PREFETCH", required=False, default=0, flag=True), WARPS])

# A thread holds E outputs per open output row, KH rows open at once, so E * KH accumulators: E = 8 keeps
# K = 11 within 255 registers without spills on sm_90; K <= 7 affords 16.
# (elements per thread, warps); NCHW tiles: BLOCK_N images x one channel x BLOCK_W columns (so the weights
# are uniform in a program), channels_last tiles: BLOCK_C channels (channel vectors) x BLOCK_W columns.
# Half-precision channels_last tiles at K <= 7 lead with 16 per thread (their loads are 8 bytes: twice the
# work per load and conversion keeps the FMA share above one half; fp32 spills there).
_NCHW = [(8, 2), (8, 1), (4, 2), (16, 2)]
_NHWC = [(8, 4), (8, 2), (4, 4), (16, 4)]
_NHWC_HALF_SMALL_K = [(16, 4), (8, 4), (8, 2), (4, 4)]
MAX_STRIP, LONG_MAP_STRIP = 64, 32  # maps up to 64 tall are walked whole, taller ones in strips of 32
# FLIP and SH: forward and dgrad (and strides) of one shape tune separately.
TUNE_KEY = ("N", "CO", "H", "W", "HO", "WO", "M", "KH", "KW", "SH", "SW", "DW", "FLIP")
# A program's weights go into registers (HOIST) when it has one channel and taps + KH * E registers stay
# within this (K = 11 at E = 8, 209, spilled 104 bytes; K = 9 at E = 8 and K = 11 at E = 4 fit).
HOIST_REGISTERS = 170

# A program walks its strip serially: grids under UNDERFILLED programs (seen on an H200: 256 programs of
# a channels_last 56x56 forward, 2.6x behind cuDNN) split the strip until TARGET_PROGRAMS, keeping
# strips of at least max(8, 2 KH) rows (each strip re-reads KH - 1 halo rows).
UNDERFILLED, TARGET_PROGRAMS = 512, 1024


def split_rows(rows: int, programs: int, kernel_height: int) -> int:
    if programs >= UNDERFILLED:
        return rows
    strips = min(triton.cdiv(TARGET_PROGRAMS, programs), max(rows // max(8, 2 * kernel_height), 1))
    return triton.cdiv(rows, strips)


def candidates(channels_last: bool, batch: int, channels: int, height: int, width: int,
               kernel: tuple, element_size: int, column_windows: bool = False) -> List[triton.Config]:
    """Candidates for one shape: the column tile covers the row (up to 64 wide); the remaining lanes go to
    images (NCHW) or pixels (channels_last). NCHW programs stay on one channel: small batches get fewer
    elements per thread (or fewer warps) instead, and only a plane too small to fill one warp takes several
    channels. With `column_windows` (NCHW, stride 1 and dilation 1 along W) each thread's elements are
    consecutive columns of one row (WIN, rows.py), so a row's input loads are shared across its taps; the
    first candidate's single-column twin (WIN = 1) stays among the candidates."""
    kernel_height, taps = kernel[0], kernel[0] * kernel[1]
    rows = height if height <= MAX_STRIP else LONG_MAP_STRIP
    max_n = triton.next_power_of_2(max(batch, 1))
    max_c = triton.next_power_of_2(max(channels, 1))
    max_w = triton.next_power_of_2(max(width, 1))
    out = []
    if not channels_last:
        table = _NCHW
    elif kernel_height <= 7 and element_size <= 2:
        table = _NHWC_HALF_SMALL_K
    else:
        table = _NHWC
    for per_thread, warps in table:
        # 16 accumulators per open row: past K = 7 they do not fit; at K = 7 only half-precision channels_last
        # tiles hold them (NCHW with hoisted weights spilled 128-240 bytes on sm_90).
        if per_thread > 8 and (kernel_height > 7 or (kernel_height == 7 and table is not _NHWC_HALF_SMALL_K)):
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
        hoist = not channels_last and bc == 1 and taps + kernel_height * per_thread <= HOIST_REGISTERS
        programs = (triton.cdiv(batch, bn) * triton.cdiv(channels, bc) * triton.cdiv(width, bw)
                    * triton.cdiv(height, rows))
        win = min(per_thread, bw) if column_windows and not channels_last else 1
        key = (bn, bc, bw, split_rows(rows, programs, kernel_height), hoist, win)
        out.append(triton.Config(dict(zip(("BLOCK_N", "BLOCK_C", "BLOCK_W", "ROWS", "HOIST", "WIN"), key)),
                                 num_warps=warps))
    out = with_prefetch_twin(unique(out))
    if out[0].kwargs["WIN"] > 1:
        out.insert(2, triton.Config({**out[0].kwargs, "WIN": 1}, num_warps=out[0].num_warps))
    return out


def with_prefetch_twin(cands: List[triton.Config]) -> List[triton.Config]:
    """The candidates with the first one's PREFETCH twin second (loads of the next step issued before this
    step's FMAs; not yet measured against the plain tile, so the default stays the plain one)."""
    first = cands[0]
    return [first, triton.Config({**first.kwargs, "PREFETCH": True}, num_warps=first.num_warps)] + cands[1:]


def column_windows(op: str, args: ConvArgs) -> bool:
    """Whether op's walk has stride 1 and dilation 1 along W (dgrad walks dy at stride 1)."""
    return args.dilation[1] == 1 and (op == "dgrad" or args.stride[1] == 1)


def candidates_for(op: str, args: ConvArgs, channels_last: bool, element_size: int) -> List[triton.Config]:
    """The candidate tiles of one forward or dgrad call (the first is the default): tiles of the map op
    writes (the output, or dx for dgrad)."""
    n, c, h, w = args.input_shape if op == "dgrad" else args.output_shape
    return candidates(channels_last, n, c, h, w, args.kernel, element_size, column_windows(op, args))


def problem(tile: triton.Config, op: str, args: ConvArgs, channels_last: bool) -> Optional[str]:
    """None when rows_kernel can run `tile` for op on this call, else why not."""
    win = tile.kwargs.get("WIN", 1)
    if win > 1 and not column_windows(op, args):
        return f"column windows (WIN{win}) need stride 1 and dilation 1 along W"
    if tile.kwargs["BLOCK_W"] % win:
        return f"the tile width W{tile.kwargs['BLOCK_W']} is not a whole number of WIN{win} windows"
    return None


def choose(op: str, args: ConvArgs, channels_last: bool, element_size: int, variant: str):
    """(candidates, tile) of one forward or dgrad call: the candidate tiles (the first is the default) and the
    tile `variant` names (None for the default variant "")."""
    return candidates_for(op, args, channels_last, element_size), (FORMAT.parse(variant) if variant else None)
