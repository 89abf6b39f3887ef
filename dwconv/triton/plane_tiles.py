"""Tiles of the small-map GEMM kernels (plane.py; the "plane" family, forward and dgrad).

A tile is BLOCK_C channels x BLOCK_M images x BLOCK_N output pixels, reduced over K-chunks of BLOCK_K pixels.

Variants: "C<BLOCK_C>,M<BLOCK_M>,N<BLOCK_N>,K<BLOCK_K>,w<num_warps>", e.g. "C1,M64,N32,K64,w4"; M, N and K are
at least 16 (the smallest tensor-core product).
"""
from __future__ import annotations

from typing import List, Optional

import triton

from .._conv_args import ConvArgs
from .direct_tiles import TUNE_KEY as _DIRECT_TUNE_KEY
from .launcher import WARPS, Field, TileFormat, unique

MIN_DOT = 16
FORMAT = TileFormat("plane", "fwd and dgrad", [
    Field("C", "BLOCK_C", power_of_two=True), Field("M", "BLOCK_M", power_of_two=True, minimum=MIN_DOT),
    Field("N", "BLOCK_N", power_of_two=True, minimum=MIN_DOT),
    Field("K", "BLOCK_K", power_of_two=True, minimum=MIN_DOT), WARPS])

# (BLOCK_C, BLOCK_M images, BLOCK_N pixels, BLOCK_K pixels, warps)
# (1, 64, 64, 64, 4) and (1, 128, 64, 32, 8) spill on sm_90 (255 registers): not candidates.
_NCHW = [(1, 64, 32, 64, 4), (1, 32, 64, 64, 4), (1, 64, 64, 64, 8), (1, 128, 32, 32, 8), (1, 16, 64, 64, 4)]
_NHWC = [(8, 16, 32, 32, 4), (4, 32, 32, 32, 4), (8, 32, 32, 32, 8), (2, 64, 64, 32, 4), (4, 16, 64, 64, 4)]
TUNE_KEY = ("N",) + _DIRECT_TUNE_KEY


def candidates(channels_last: bool, batch: int, channels: int) -> List[triton.Config]:
    """Candidates with the image block cut to the batch (16 at least: the smallest tensor-core M)."""
    max_m = max(MIN_DOT, triton.next_power_of_2(batch))
    max_c = triton.next_power_of_2(channels)
    return unique([triton.Config({"BLOCK_C": min(bc, max_c), "BLOCK_M": min(bm, max_m), "BLOCK_N": bn,
                                  "BLOCK_K": bk}, num_warps=warps)
                   for bc, bm, bn, bk, warps in (_NHWC if channels_last else _NCHW)])


def candidates_for(op: str, args: ConvArgs, channels_last: bool, element_size: int) -> List[triton.Config]:
    """The candidate tiles of one forward or dgrad call (the first is the default)."""
    return candidates(channels_last, args.batch, args.channels if op == "dgrad" else args.out_channels)


def problem(tile: triton.Config, op: str, args: ConvArgs, channels_last: bool) -> Optional[str]:
    return None


def choose(op: str, args: ConvArgs, channels_last: bool, element_size: int, variant: str):
    """(candidates, tile) of one forward or dgrad call: the candidate tiles (the first is the default) and the
    tile `variant` names (None for the default variant "")."""
    return candidates_for(op, args, channels_last, element_size), (FORMAT.parse(variant) if variant else None)
