"""Tiles of the row-streaming wgrad kernel (rows_wgrad.py; the "rows" family's wgrad).

A tile is BLOCK_N images x BLOCK_C channels x BLOCK_W output columns walking a strip of ROWS output rows;
PREFETCH: the next step's operands are loaded before this step's FMAs.

Variants: "N<BLOCK_N>,C<BLOCK_C>,W<BLOCK_W>,R<ROWS>[,P<PREFETCH 0|1>],w<num_warps>", e.g. "N1,C1,W64,R14,w2".
"""
from __future__ import annotations

from typing import List, Optional

import triton

from .._conv_args import ConvArgs
from .launcher import WARPS, Field, TileFormat, unique
from .rows_tiles import with_prefetch_twin

FORMAT = TileFormat("rows", "wgrad", [
    Field("N", "BLOCK_N", power_of_two=True), Field("C", "BLOCK_C", power_of_two=True),
    Field("W", "BLOCK_W", power_of_two=True), Field("R", "ROWS"),
    Field("P", "PREFETCH", required=False, default=0, flag=True), WARPS])

# A thread keeps KH*KW partial sums per element: one element per thread (two for K <= 7).
# (elements per thread, warps)
_TABLE = [(1, 2), (1, 4), (2, 2)]
MAX_STRIP = 64
TUNE_KEY = ("N", "CO", "H", "W", "HO", "WO", "M", "KH", "KW", "SH", "SW", "DW")


def candidates(channels_last: bool, batch: int, channels: int, height: int, width: int,
               taps: int) -> List[triton.Config]:
    """Candidates for one shape: NCHW tiles span the row (up to 64 columns) and then images; channels_last
    tiles put 32 consecutive channels on a warp's lanes, then columns, then images."""
    rows = height if height <= MAX_STRIP else MAX_STRIP
    max_n = triton.next_power_of_2(max(batch, 1))
    max_c = triton.next_power_of_2(max(channels, 1))
    max_w = triton.next_power_of_2(max(width, 1))
    out = []
    for per_thread, warps in _TABLE:
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
        out.append(triton.Config(dict(zip(("BLOCK_N", "BLOCK_C", "BLOCK_W", "ROWS"), (bn, bc, bw, rows))),
                                 num_warps=warps))
    return with_prefetch_twin(unique(out))


def candidates_for(op: str, args: ConvArgs, channels_last: bool, element_size: int) -> List[triton.Config]:
    """The candidate tiles of one wgrad call (the first is the default): tiles of the output map."""
    n, co, ho, wo = args.output_shape
    return candidates(channels_last, n, co, ho, wo, args.kernel[0] * args.kernel[1])


def problem(tile: triton.Config, op: str, args: ConvArgs, channels_last: bool) -> Optional[str]:
    return None


def choose(op: str, args: ConvArgs, channels_last: bool, element_size: int, variant: str):
    """(candidates, tile) of one wgrad call: the candidate tiles (the first is the default) and the tile
    `variant` names (None for the default variant "")."""
    return candidates_for(op, args, channels_last, element_size), (FORMAT.parse(variant) if variant else None)
