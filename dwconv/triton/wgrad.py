"""wgrad kernels: dw[co, kh, kw] = sum_{n, oh, ow} dy[n, co, oh, ow] * x[n, co/M, ih, iw]
with ih = oh*SH + kh*DH - PT and iw = ow*SW + kw*DW - PL.

Pass 1 (`wgrad_kernel`): a program owns BLOCK_C output channels x one output tile x a slice of the batch.
Per tap it accumulates dy * shifted x over its tile and batch slice in registers, reduces the tile to one
fp32 partial sum per channel and either adds it to an fp32 [CO, KH*KW] workspace with one atomic, or
(deterministic) stores it into its own row of a [splits, CO, KH*KW] workspace.
Pass 2 (`wgrad_reduce_kernel`): sums the workspace rows in a fixed order and casts to x's dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._conv_args import ConvArgs
from ..outputs import new_output
from . import direct_tiles
from .common import acc_dtype, acc_torch_dtype, needs_int64, strides4, widen_strides
from .launcher import launch, launch_fixed

# Programs pass 1 aims for (a few waves on a large GPU); the batch is split to get there.
TARGET_PROGRAMS = 1024
# Nominal tile used to size the batch split (autotuning may pick another tile, that only shifts the count).
_NOMINAL_TILE_PIXELS = 256
_NOMINAL_CHANNELS_NCHW, _NOMINAL_CHANNELS_NHWC = 4, 32


@triton.jit
def _wgrad_tap(dy_tile, x_tap, n_first, n_last, sdn, sxn, ok, MASKED: tl.constexpr, ACC: tl.constexpr,
               BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    # Sum over images n_first..n_last-1 and the tile of dy * x(shifted by this tap) -> [BLOCK_C].
    acc = tl.zeros([BLOCK_C, BLOCK_H, BLOCK_W], dtype=ACC)
    for n in range(n_first, n_last):
        if MASKED:
            dy = tl.load(dy_tile + n * sdn, mask=ok, other=0.0)
            xv = tl.load(x_tap + n * sxn, mask=ok, other=0.0)
        else:
            dy = tl.load(dy_tile + n * sdn)
            xv = tl.load(x_tap + n * sxn)
        acc += dy.to(ACC) * xv.to(ACC)
    return tl.sum(tl.sum(acc, axis=2), axis=1)


@triton.jit
def wgrad_program(N, CO, HO, WO, IMAGES_PER_PROGRAM, INDEX_64: tl.constexpr, BLOCK_C: tl.constexpr,
                  BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """This program's (channel block, split, column tile, row tile, first image, end image). Order: channel
    blocks fastest, then column tiles, row tiles, batch slices; `split` (the rest) is the program's workspace
    row when deterministic, the same for all channel blocks."""
    pid = tl.program_id(0)
    cblocks = tl.cdiv(CO, BLOCK_C)
    tiles_w = tl.cdiv(WO, BLOCK_W)
    tiles_h = tl.cdiv(HO, BLOCK_H)
    cb = pid % cblocks
    split = pid // cblocks
    tw = split % tiles_w
    rest = split // tiles_w
    th = rest % tiles_h
    slice_ = rest // tiles_h
    n_first = slice_ * IMAGES_PER_PROGRAM
    n_last = tl.minimum(n_first + IMAGES_PER_PROGRAM, N)
    if INDEX_64:
        split = split.to(tl.int64)
        n_first = n_first.to(tl.int64)
        n_last = n_last.to(tl.int64)
    return cb, split, tw, th, n_first, n_last


@triton.jit
def workspace_of(ws_ptr, split, co, CO, TAPS: tl.constexpr, DETERMINISTIC: tl.constexpr):
    """Per-channel pointers to the taps a program adds to: its own workspace row when deterministic."""
    if DETERMINISTIC:
        return ws_ptr + split * (CO * TAPS) + co * TAPS
    return ws_ptr + co * TAPS


@triton.jit
def add_tap(ws_co, tap, part, c_ok, DETERMINISTIC: tl.constexpr):
    # One program's sum for one tap: its own workspace element, or an fp32 atomic into the shared one.
    if DETERMINISTIC:
        tl.store(ws_co + tap, part, mask=c_ok)
    else:
        tl.atomic_add(ws_co + tap, part, mask=c_ok)


@triton.jit
def wgrad_kernel(dy_ptr, x_ptr, ws_ptr,
                 N, CO, H, W, HO, WO, PT, PL, IMAGES_PER_PROGRAM,
                 sdn, sdc, sdh, sdw, sxn, sxc, sxh, sxw,
                 M: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                 DH: tl.constexpr, DW: tl.constexpr, DETERMINISTIC: tl.constexpr, INDEX_64: tl.constexpr,
                 ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    cb, split, tw, th, n_first, n_last = wgrad_program(N, CO, HO, WO, IMAGES_PER_PROGRAM, INDEX_64, BLOCK_C,
                                                       BLOCK_H, BLOCK_W)
    sdn, sdc, sdh, sdw = widen_strides(sdn, sdc, sdh, sdw, INDEX_64)
    sxn, sxc, sxh, sxw = widen_strides(sxn, sxc, sxh, sxw, INDEX_64)

    co = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    oh = th * BLOCK_H + tl.arange(0, BLOCK_H)
    ow = tw * BLOCK_W + tl.arange(0, BLOCK_W)
    if INDEX_64:
        co = co.to(tl.int64)
        oh = oh.to(tl.int64)
        ow = ow.to(tl.int64)
    c_ok = co < CO
    ih0 = oh * SH - PT
    iw0 = ow * SW - PL
    dy_tile = dy_ptr + co[:, None, None] * sdc + oh[None, :, None] * sdh + ow[None, None, :] * sdw
    x_tap0 = x_ptr + (co // M)[:, None, None] * sxc + ih0[None, :, None] * sxh + iw0[None, None, :] * sxw
    out_ok = c_ok[:, None, None] & (oh < HO)[None, :, None] & (ow < WO)[None, None, :]
    ws_co = workspace_of(ws_ptr, split, co, CO, KH * KW, DETERMINISTIC)

    ih_first = th * BLOCK_H * SH - PT
    iw_first = tw * BLOCK_W * SW - PL
    ih_last = tl.minimum(th * BLOCK_H + BLOCK_H - 1, HO - 1) * SH - PT
    iw_last = tl.minimum(tw * BLOCK_W + BLOCK_W - 1, WO - 1) * SW - PL
    interior = ((ih_first >= 0) & (iw_first >= 0) & (cb * BLOCK_C + BLOCK_C <= CO)
                & ((th * BLOCK_H + BLOCK_H - 1) * SH - PT + (KH - 1) * DH < H)
                & ((tw * BLOCK_W + BLOCK_W - 1) * SW - PL + (KW - 1) * DW < W))

    for kh in range(KH):
        row = kh * DH
        # Filter rows and taps whose window lies entirely in the padding contribute nothing: skipped,
        # except that a deterministic program still writes its zeros (each workspace element once).
        if DETERMINISTIC | ((ih_first + row < H) & (ih_last + row >= 0)):
            ih = ih0 + row
            row_ok = out_ok & ((ih >= 0) & (ih < H))[None, :, None]
            x_row = x_tap0 + row * sxh
            for kw in tl.static_range(KW):
                col = kw * DW
                if DETERMINISTIC | ((iw_first + col < W) & (iw_last + col >= 0)):
                    x_tap = x_row + col * sxw
                    if interior:
                        part = _wgrad_tap(dy_tile, x_tap, n_first, n_last, sdn, sxn, out_ok, False, ACC,
                                          BLOCK_C, BLOCK_H, BLOCK_W)
                    else:
                        iw = iw0 + col
                        ok = row_ok & ((iw >= 0) & (iw < W))[None, None, :]
                        part = _wgrad_tap(dy_tile, x_tap, n_first, n_last, sdn, sxn, ok, True, ACC,
                                          BLOCK_C, BLOCK_H, BLOCK_W)
                    add_tap(ws_co, kh * KW + kw, part, c_ok, DETERMINISTIC)


@triton.jit
def wgrad_reduce_kernel(ws_ptr, dw_ptr, SPLITS, NUMEL, BLOCK: tl.constexpr, ACC: tl.constexpr):
    # dw[e] = sum over s = 0, 1, ..., SPLITS-1 of ws[s, e], always in that order.
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < NUMEL
    acc = tl.zeros([BLOCK], dtype=ACC)
    row = ws_ptr + offs  # advanced one workspace row at a time: no split * NUMEL product to overflow
    for _ in range(SPLITS):
        acc += tl.load(row, mask=ok, other=0.0)
        row += NUMEL
    tl.store(dw_ptr + offs, acc.to(dw_ptr.dtype.element_ty), mask=ok)


def images_per_program(args: ConvArgs, channels_last: bool) -> int:
    """Batch slice of one pass-1 program: enough programs to fill the GPU, as few atomics as that allows."""
    n, co, ho, wo = args.output_shape
    nominal_c = _NOMINAL_CHANNELS_NHWC if channels_last else _NOMINAL_CHANNELS_NCHW
    programs_per_image = triton.cdiv(co, nominal_c) * triton.cdiv(ho * wo, _NOMINAL_TILE_PIXELS)
    slices = max(1, min(n, TARGET_PROGRAMS // max(programs_per_image, 1)))
    return triton.cdiv(n, slices)


def wgrad(grad_out, x, args: ConvArgs, channels_last: bool, deterministic: bool, variant: str = "",
          autotune: bool = False):
    """dw (shape args.weight_shape, x's dtype), accumulated in fp32 (fp64 for fp64 inputs): with the tile
    `variant` names (direct_tiles.py), or the default ("": autotuned among the candidates when `autotune`,
    except deterministic, whose workspace is sized for one tile)."""
    dw = new_output(args.weight_shape, like=x, channels_last=False)
    n, co, ho, wo = args.output_shape
    kh, kw = args.kernel
    acc_torch = acc_torch_dtype(x.dtype)
    if grad_out.numel() == 0:
        return dw.zero_()
    per_program = images_per_program(args, channels_last)
    slices = triton.cdiv(n, per_program)
    pt, _, pl, _ = args.padding

    def grid(meta):
        return (triton.cdiv(co, meta["BLOCK_C"]) * triton.cdiv(ho, meta["BLOCK_H"])
                * triton.cdiv(wo, meta["BLOCK_W"]) * slices,)

    cands, tile = direct_tiles.choose("wgrad", args, channels_last, x.element_size(), variant)
    if deterministic:
        tile = tile if tile is not None else cands[0]
        splits = grid(tile.kwargs)[0] // triton.cdiv(co, tile.kwargs["BLOCK_C"])
        ws = torch.empty((splits, co, kh * kw), dtype=acc_torch, device=x.device)
    else:
        splits = 1
        ws = torch.zeros((co, kh * kw), dtype=acc_torch, device=x.device)
    launch(wgrad_kernel, grid,
           (grad_out, x, ws, n, co, args.height, args.width, ho, wo, pt, pl, per_program)
           + strides4(grad_out) + strides4(x),
           dict(M=args.multiplier, KH=kh, KW=kw, SH=args.stride[0], SW=args.stride[1], DH=args.dilation[0],
                DW=args.dilation[1], DETERMINISTIC=deterministic, INDEX_64=needs_int64(grad_out, x, ws),
                ACC=acc_dtype(x.dtype)),
           cands, direct_tiles.FORMAT, tile=tile, autotune=autotune, key=direct_tiles.TUNE_KEY,
           reset_to_zero=None if deterministic else ["ws_ptr"])
    return reduce_workspace(ws, splits, dw)


def reduce_workspace(ws, splits: int, dw):
    """dw = the sum of the workspace's `splits` rows (one row: a copy with the cast to dw's dtype)."""
    numel = dw.numel()
    block = min(1024, triton.next_power_of_2(numel))
    launch_fixed(wgrad_reduce_kernel, (triton.cdiv(numel, block),), (ws, dw, splits, numel),
                 dict(BLOCK=block, ACC=acc_dtype(ws.dtype)))
    return dw
