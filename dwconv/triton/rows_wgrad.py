"""Row-streaming wgrad: dw[co, kh, kw] = sum_{n, oh, ow} dy[n, co, oh, ow] * x[n, co/M, oh*SH + kh - PT, iw]
with iw = ow*SW + kw*DW - PL, for dilation 1 along H.

A program owns BLOCK_N images x BLOCK_C channels x BLOCK_W output columns (1-2 elements per thread) of a strip
of output rows, for a slice of the batch. Every thread keeps one partial sum per tap (KH*KW accumulators)
and a window of the last J = ceil(KH / SH) dy rows it read (a tuple, newest last):

    step o reads dy row o into window[J-1] and the input rows ih = o*SH - PT + r (r < SH); input row r meets
    dy row o - d (window[J-1-d]) through filter row kh = d*SH + r; shifted by kw columns, tap (kh, kw).

So per input row and filter column a thread makes one load and up to J FMAs (KH at stride 1; the direct
wgrad kernel, wgrad.py, loads both operands for every FMA). At the end each tap's partial sums are reduced
over the program (one cross-thread sum per tap) and added with one fp32 atomic per channel and tap, or
(deterministic) stored into the program's own workspace row; wgrad.py's reduce kernel then sums the rows
and casts.
Non-finite inputs give PyTorch's answer: x meets only dy values that exist, so an inf/NaN in x never meets a
stand-in zero (x is masked where this lane's dy column does not exist; a filter row whose dy row lies outside
the strip is skipped, one uniform branch per filter row and step).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._conv_args import ConvArgs
from ..outputs import new_output
from . import rows_wgrad_tiles
from .common import acc_dtype, acc_torch_dtype, needs_int64, strides4, widen_strides
from .launcher import launch
from .rows import MAX_KERNEL
from .wgrad import TARGET_PROGRAMS, add_tap, reduce_workspace, wgrad_program, workspace_of


def applies(args: ConvArgs) -> bool:
    kh, kw = args.kernel
    return args.dilation[0] == 1 and kh <= MAX_KERNEL and kw <= MAX_KERNEL


@triton.jit
def _row_values(x_row, ok, col_ok, sxw, KW: tl.constexpr, DW: tl.constexpr, ACC: tl.constexpr,
                MASKED: tl.constexpr, GUARDED: tl.constexpr):
    # The KW shifted x values of one input row (column kw at x_row + kw*DW*sxw). GUARDED: the row may lie
    # outside the map (ok false: a prefetch; such rows are never used, their loads only must not fault).
    xs = ()
    for kw in tl.static_range(KW):
        if MASKED and GUARDED:
            xs = xs + (tl.load(x_row + (kw * DW) * sxw, mask=col_ok[kw] & ok, other=0.0).to(ACC),)
        elif MASKED:
            xs = xs + (tl.load(x_row + (kw * DW) * sxw, mask=col_ok[kw], other=0.0).to(ACC),)
        elif GUARDED:
            xs = xs + (tl.load(x_row + (kw * DW) * sxw, mask=ok, other=0.0).to(ACC),)
        else:
            xs = xs + (tl.load(x_row + (kw * DW) * sxw).to(ACC),)
    return xs


@triton.jit
def _prefetch_step(dy_img, x_img, o, oh_end, H, PT, sdh, sxh, sxw, dy_ok, col_ok, ACC: tl.constexpr,
                   KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, DW: tl.constexpr, MASKED: tl.constexpr):
    # Step o's operands, loaded a step ahead: (dy row o, then input row r's KW values for r < min(SH, KH));
    # zeros for a dy row past the strip or an input row outside the map.
    if MASKED:
        vals = (tl.load(dy_img + o * sdh, mask=dy_ok & (o < oh_end), other=0.0).to(ACC),)
    else:
        vals = (tl.load(dy_img + o * sdh, mask=o < oh_end, other=0.0).to(ACC),)
    for r in tl.static_range(SH):
        if r < KH:
            ih = o * SH - PT + r
            vals = vals + _row_values(x_img + ih * sxh, (ih >= 0) & (ih < H), col_ok, sxw, KW, DW, ACC, MASKED,
                                      GUARDED=True)
    return vals


@triton.jit
def _taps_of_row(accs, window, xs, o, oh_first, oh_end, R: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                 SH: tl.constexpr):
    # accs[kh*KW + kw]: tap (kh, kw). xs: the KW values of the step's input row R; through filter row
    # kh = d*SH + R they meet dy row o - d, which is window[J-1-d]. Only dy rows of the strip exist: a window
    # slot outside it holds a zero that must not meet x (an inf there would become NaN), so each filter row
    # is skipped as a whole (one uniform branch) when its dy row is missing.
    J: tl.constexpr = (KH + SH - 1) // SH
    for kh in tl.static_range(KH):
        if (kh >= R) and ((kh - R) % SH == 0):
            dy_row = o - (kh - R) // SH
            if (dy_row >= oh_first) & (dy_row < oh_end):
                dyv = window[J - 1 - (kh - R) // SH]
                updated = ()
                for kw in tl.static_range(KW):
                    updated = updated + (accs[kh * KW + kw] + xs[kw] * dyv,)
                accs = accs[:kh * KW] + updated + accs[(kh + 1) * KW:]
    return accs


@triton.jit
def _prefetched_step(accs, window, vals, o, oh_first, oh_end, H, PT, KH: tl.constexpr, KW: tl.constexpr,
                     SH: tl.constexpr):
    # vals = _prefetch_step(o): dy row o enters the window, then each input row of the step meets it.
    window = window[1:] + (vals[0],)
    for r in tl.static_range(SH):
        if r < KH:  # rows past the filter (stride > KH) meet no tap
            ih = o * SH - PT + r
            if (ih >= 0) & (ih < H):
                accs = _taps_of_row(accs, window, vals[1 + r * KW:1 + (r + 1) * KW], o, oh_first, oh_end, r, KH,
                                    KW, SH)
    return accs, window


@triton.jit
def _step(accs, window, dy_img, x_img, o, oh_first, oh_end, H, PT, sdh, sxh, sxw, dy_ok, col_ok, zero, interior,
          ACC: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, DW: tl.constexpr):
    # Step o without prefetch: dy row o (zero past the strip) enters the window; each input row inside the
    # map is loaded and meets it (rows outside are neither loaded nor used).
    if o < oh_end:
        if interior:
            dyv = tl.load(dy_img + o * sdh).to(ACC)
        else:
            dyv = tl.load(dy_img + o * sdh, mask=dy_ok, other=0.0).to(ACC)
    else:
        dyv = zero
    window = window[1:] + (dyv,)
    for r in tl.static_range(SH):
        if r < KH:  # rows past the filter (stride > KH) meet no tap
            ih = o * SH - PT + r
            if (ih >= 0) & (ih < H):
                x_row = x_img + ih * sxh
                if interior:
                    xs = _row_values(x_row, True, col_ok, sxw, KW, DW, ACC, MASKED=False, GUARDED=False)
                    accs = _taps_of_row(accs, window, xs, o, oh_first, oh_end, r, KH, KW, SH)
                else:
                    xs = _row_values(x_row, True, col_ok, sxw, KW, DW, ACC, MASKED=True, GUARDED=False)
                    accs = _taps_of_row(accs, window, xs, o, oh_first, oh_end, r, KH, KW, SH)
    return accs, window


@triton.jit
def rows_wgrad_kernel(dy_ptr, x_ptr, ws_ptr, N, CO, H, W, HO, WO, PT, PL, IMAGES_PER_PROGRAM,
                      sdn, sdc, sdh, sdw, sxn, sxc, sxh, sxw,
                      M: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                      DW: tl.constexpr, DETERMINISTIC: tl.constexpr, INDEX_64: tl.constexpr, ACC: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr, ROWS: tl.constexpr,
                      PREFETCH: tl.constexpr = False):
    # Row strips of ROWS rows stand where wgrad_kernel has row tiles; the workspace row of a program
    # (deterministic) is its (batch slice, strip, column tile) index. PREFETCH: step o + 1's loads are issued
    # before step o's FMAs (their latency hides behind a step of work, for (1 + SH*KW) * elements more
    # registers per thread).
    cb, split, tw, strip, n_first, n_last = wgrad_program(N, CO, HO, WO, IMAGES_PER_PROGRAM, INDEX_64, BLOCK_C,
                                                          ROWS, BLOCK_W)
    sdn, sdc, sdh, sdw = widen_strides(sdn, sdc, sdh, sdw, INDEX_64)
    sxn, sxc, sxh, sxw = widen_strides(sxn, sxc, sxh, sxw, INDEX_64)

    nl = tl.arange(0, BLOCK_N)
    co = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    ow = tw * BLOCK_W + tl.arange(0, BLOCK_W)
    if INDEX_64:
        co = co.to(tl.int64)
        ow = ow.to(tl.int64)
    c_ok = co < CO
    iw0 = ow * SW - PL
    dy_col = dy_ptr + nl[:, None, None] * sdn + co[None, :, None] * sdc + ow[None, None, :] * sdw
    x_col = x_ptr + nl[:, None, None] * sxn + (co // M)[None, :, None] * sxc + iw0[None, None, :] * sxw
    col_interior = ((cb * BLOCK_C + BLOCK_C <= CO) & (tw * BLOCK_W + BLOCK_W <= WO)
                    & (tw * BLOCK_W * SW - PL >= 0)
                    & ((tw * BLOCK_W + BLOCK_W - 1) * SW - PL + (KW - 1) * DW < W))
    oh_first = strip * ROWS
    oh_end = tl.minimum(oh_first + ROWS, HO)
    zero = tl.zeros([BLOCK_N, BLOCK_C, BLOCK_W], dtype=ACC)
    accs = (zero,) * (KH * KW)
    J: tl.constexpr = (KH + SH - 1) // SH

    for n0 in range(n_first, n_last, BLOCK_N):
        nc_ok = ((n0 + nl) < n_last)[:, None, None] & c_ok[None, :, None]
        dy_ok = nc_ok & (ow < WO)[None, None, :]
        # x is read only where this lane's dy exists (ow < WO): an inf there must not meet a missing dy (0).
        col_ok = ()
        for kw in tl.static_range(KW):
            iw = iw0 + kw * DW
            col_ok = col_ok + (dy_ok & ((iw >= 0) & (iw < W))[None, None, :],)
        interior = col_interior & (n0 + BLOCK_N <= n_last)
        dy_img = dy_col + n0 * sdn
        x_img = x_col + n0 * sxn
        window = (zero,) * J
        # Step o reads dy row o (zero past the strip) into window[J-1] and its SH input rows o*SH - PT + r.
        if PREFETCH:
            if interior:
                ahead = _prefetch_step(dy_img, x_img, oh_first, oh_end, H, PT, sdh, sxh, sxw, dy_ok, col_ok, ACC, KH,
                                       KW, SH, DW, MASKED=False)
            else:
                ahead = _prefetch_step(dy_img, x_img, oh_first, oh_end, H, PT, sdh, sxh, sxw, dy_ok, col_ok, ACC, KH,
                                       KW, SH, DW, MASKED=True)
            for o in range(oh_first, oh_end + J - 1):
                vals = ahead
                if interior:
                    ahead = _prefetch_step(dy_img, x_img, o + 1, oh_end, H, PT, sdh, sxh, sxw, dy_ok, col_ok, ACC, KH,
                                           KW, SH, DW, MASKED=False)
                else:
                    ahead = _prefetch_step(dy_img, x_img, o + 1, oh_end, H, PT, sdh, sxh, sxw, dy_ok, col_ok, ACC, KH,
                                           KW, SH, DW, MASKED=True)
                accs, window = _prefetched_step(accs, window, vals, o, oh_first, oh_end, H, PT, KH, KW, SH)
        else:
            for o in range(oh_first, oh_end + J - 1):
                accs, window = _step(accs, window, dy_img, x_img, o, oh_first, oh_end, H, PT, sdh, sxh, sxw, dy_ok,
                                     col_ok, zero, interior, ACC, KH, KW, SH, DW)

    ws_co = workspace_of(ws_ptr, split, co, CO, KH * KW, DETERMINISTIC)
    for tap in tl.static_range(KH * KW):
        add_tap(ws_co, tap, tl.sum(tl.sum(accs[tap], axis=2), axis=0), c_ok, DETERMINISTIC)


def _images_per_program(n: int, programs_per_slice: int, block_n: int) -> int:
    """Batch slice of one program: enough programs to fill the GPU, as few atomics as that allows."""
    slices = max(1, min(triton.cdiv(n, block_n), TARGET_PROGRAMS // max(programs_per_slice, 1)))
    return triton.cdiv(triton.cdiv(n, slices), block_n) * block_n


def wgrad(grad_out, x, args: ConvArgs, channels_last: bool, deterministic: bool, variant: str = "",
          autotune: bool = False):
    """dw (shape args.weight_shape, x's dtype) for applies(args), accumulated in fp32 (fp64 for fp64): with the
    tile `variant` names (rows_wgrad_tiles.py), or the default ("": autotuned among the candidates when
    `autotune`, except deterministic, whose workspace is sized for one tile)."""
    dw = new_output(args.weight_shape, like=x, channels_last=False)
    n, co, ho, wo = args.output_shape
    kh, kw = args.kernel
    if grad_out.numel() == 0:
        return dw.zero_()
    pt, _, pl, _ = args.padding
    cands, tile = rows_wgrad_tiles.choose("wgrad", args, channels_last, x.element_size(), variant)
    if deterministic and tile is None:  # one workspace row per (slice, strip, column tile): one tile sizes it
        tile = cands[0]
    nominal = (tile if tile is not None else cands[0]).kwargs
    cblocks = triton.cdiv(co, nominal["BLOCK_C"])
    per_slice = triton.cdiv(wo, nominal["BLOCK_W"]) * triton.cdiv(ho, nominal["ROWS"])
    per_program = _images_per_program(n, cblocks * per_slice, nominal["BLOCK_N"])
    slices = triton.cdiv(n, per_program)

    def grid(meta):
        return (triton.cdiv(co, meta["BLOCK_C"]) * triton.cdiv(wo, meta["BLOCK_W"])
                * triton.cdiv(ho, meta["ROWS"]) * slices,)

    acc_torch = acc_torch_dtype(x.dtype)
    if deterministic:
        ws = new_output((slices * per_slice, co, kh * kw), like=x, dtype=acc_torch, channels_last=False)
    else:
        ws = torch.zeros((co, kh * kw), dtype=acc_torch, device=x.device)
    launch(rows_wgrad_kernel, grid,
           (grad_out, x, ws, n, co, args.height, args.width, ho, wo, pt, pl, per_program)
           + strides4(grad_out) + strides4(x),
           dict(M=args.multiplier, KH=kh, KW=kw, SH=args.stride[0], SW=args.stride[1], DW=args.dilation[1],
                DETERMINISTIC=deterministic, INDEX_64=needs_int64(grad_out, x, ws), ACC=acc_dtype(x.dtype)),
           cands, rows_wgrad_tiles.FORMAT, tile=tile, autotune=autotune, key=rows_wgrad_tiles.TUNE_KEY,
           reset_to_zero=None if deterministic else ["ws_ptr"])

    return reduce_workspace(ws, ws.shape[0] if deterministic else 1, dw)
