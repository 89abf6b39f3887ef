"""Tiles of the direct kernels (fwd.py, dgrad.py, wgrad.py: the "direct" family).

A tile is BLOCK_C channels x BLOCK_H rows x BLOCK_W columns of the map a kernel iterates over (the output
for forward and wgrad, one stride phase of the input for dgrad). The same kernel serves both layouts through
its strides, so the tile shapes decide the vectorisation: NCHW tiles are wide along W (contiguous there),
channels_last tiles are wide along C (16-byte vectors over channels) and small in space.
Small maps (<= 16 wide, the Robust-ResNet 7x7 and 14x14 planes) get whole-row tiles: one program covers
full rows of several channels, so filter rows that fall entirely into padding are skipped.

Variants: "C<BLOCK_C>,H<BLOCK_H>,W<BLOCK_W>[,U<UNROLL_ROWS 0|1>],w<num_warps>", e.g. "C1,H8,W64,U1,w4":
forward and dgrad tiles carry U (the candidates decide it with `unroll_rows`, as does a named variant that
leaves it out); wgrad tiles have none.
"""
from __future__ import annotations

from typing import List, Optional

import triton

from .._conv_args import ConvArgs
from .launcher import WARPS, Field, TileFormat, unique

FORMAT = TileFormat("direct", "fwd, dgrad and wgrad", [
    Field("C", "BLOCK_C", power_of_two=True), Field("H", "BLOCK_H", power_of_two=True),
    Field("W", "BLOCK_W", power_of_two=True), Field("U", "UNROLL_ROWS", required=False, flag=True), WARPS])

# (BLOCK_C, BLOCK_H, BLOCK_W, num_warps); "W" in a small-map entry means the map width rounded up to 2^k.
_NCHW_LARGE = [(1, 8, 64, 4), (1, 16, 64, 8), (1, 4, 128, 4), (1, 16, 32, 4), (1, 8, 32, 2)]
# BLOCK_H 0: the whole height, rounded up to 2^k, at most 16.
_NCHW_SMALL = [(8, 0, "W", 4), (4, 0, "W", 2), (16, 4, "W", 4), (8, 2, "W", 2)]
_NHWC_LARGE = [(32, 4, 8, 4), (64, 2, 8, 4), (64, 4, 4, 4), (128, 1, 8, 4), (32, 8, 8, 8)]
_NHWC_SMALL = [(32, 1, "W", 4), (64, 1, "W", 4), (32, 2, "W", 4), (64, 2, "W", 8), (128, 1, "W", 8)]

SMALL_MAP_WIDTH = 16

# Autotune cache key: every shape argument that changes the best tile (the kernels name them alike).
TUNE_KEY = ("CO", "H", "W", "HO", "WO", "M", "KH", "KW", "SH", "SW", "DH", "DW")

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
    """The table of one layout and width bucket (height only resolves 'whole height')."""
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
    out = []
    for cfg in configs_:
        bc, bh, bw = (cfg.kwargs[k] for k in ("BLOCK_C", "BLOCK_H", "BLOCK_W"))
        if bc > limit:
            bh = max(bh, min(max_rows, bh * (bc // limit)))
            bc = limit
        out.append(triton.Config({"BLOCK_C": bc, "BLOCK_H": bh, "BLOCK_W": bw}, num_warps=cfg.num_warps))
    return unique(out)


def candidates(channels_last: bool, channels: int, height: int, width: int) -> List[triton.Config]:
    """The candidate tiles of one shape family (the first is the default)."""
    return fit_channels(configs(channels_last, width_bucket(width), height), channels, height)


def iterated_map(op: str, args: ConvArgs):
    """(channels, height, width) of the map op's kernel tiles: the output, or for dgrad one stride phase of
    the input."""
    if op == "dgrad":
        return (args.channels, triton.cdiv(args.height, args.stride[0]), triton.cdiv(args.width, args.stride[1]))
    return args.out_channels, args.out_height, args.out_width


def candidates_for(op: str, args: ConvArgs, channels_last: bool, element_size: int) -> List[triton.Config]:
    """The candidate tiles of one call of op (the first is the default), forward and dgrad tiles with their
    UNROLL_ROWS decision."""
    cands = candidates(channels_last, *iterated_map(op, args))
    return cands if op == "wgrad" else with_unroll(cands, channels_last, args.kernel[0])


def with_unroll(tiles: List[triton.Config], channels_last: bool, kernel_height: int) -> List[triton.Config]:
    """The tiles with their UNROLL_ROWS decision (forward and dgrad; a tile that names it keeps it)."""
    out = []
    for tile in tiles:
        if "UNROLL_ROWS" in tile.kwargs:
            out.append(tile)
            continue
        elements = tile.kwargs["BLOCK_C"] * tile.kwargs["BLOCK_H"] * tile.kwargs["BLOCK_W"]
        out.append(triton.Config({**tile.kwargs, "UNROLL_ROWS": unroll_rows(channels_last, kernel_height, elements,
                                                                           tile.num_warps)},
                                 num_warps=tile.num_warps))
    return out


def problem(tile: triton.Config, op: str, args: ConvArgs, channels_last: bool) -> Optional[str]:
    """None when the direct kernel of op can run `tile` on this call, else why not."""
    if op == "wgrad" and "UNROLL_ROWS" in tile.kwargs:
        return "the direct wgrad kernel has no UNROLL_ROWS (U) choice"
    return None


def choose(op: str, args: ConvArgs, channels_last: bool, element_size: int, variant: str):
    """(candidates, tile) of one call of op: the candidate tiles (the first is the default) and the tile
    `variant` names (None for the default variant ""); forward and dgrad tiles decide UNROLL_ROWS where the
    variant leaves it out."""
    tile = FORMAT.parse(variant) if variant else None
    if tile is not None and op != "wgrad":
        tile = with_unroll([tile], channels_last, args.kernel[0])[0]
    return candidates_for(op, args, channels_last, element_size), tile
