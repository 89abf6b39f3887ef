"""dgrad kernel: dx = transposed depthwise conv of dy, one input tile per program.

dx[n, c, ih, iw] = sum_{j<M, kh, kw} dy[n, c*M+j, oh, ow] * w[c*M+j, kh, kw]
  where ih = oh*SH + kh*DH - PT and iw = ow*SW + kw*DW - PL.
Stride phases: a program covers input pixels of one phase (rh, rw) = (ih % SH, iw % SW) only, on the phase
grid ih = ihp*SH + rh. For that phase, tap kh contributes iff (rh + PT - kh*DH) % SH == 0 (a scalar test
per filter row, likewise per column tap), and then reads dy row oh = ihp + (rh + PT - kh*DH) / SH: a plain
shifted window, exactly like the forward. Stride 1 has one phase and every tap contributes (the forward
with the kernel flipped). Tiles, layouts and the interior/border split are as in fwd.py.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .._conv_args import ConvArgs
from ..outputs import new_output
from . import direct_tiles
from .launcher import launch
from .common import acc_dtype, needs_int64, phase_offset, strides4, weight_operand, widen_strides


@triton.jit
def _dgrad_row(acc, kh, dy_base, w_co, ihp, iwp, c_ok, ihp_first, ihp_last, iwp_first, iwp_last, qh0, qw0,
               HO, WO, sdh, sdw, swt, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
               DH: tl.constexpr, DW: tl.constexpr, OFF_H: tl.constexpr, OFF_W: tl.constexpr,
               MASKED: tl.constexpr):
    # dy_base: [BC, BH, BW] pointers of dy at (oh, ow) = (ihp, iwp); qh0 - kh*DH = rh + PT - kh*DH + OFF_H
    # is never negative, so `//` and `%` by the stride need no sign care.
    qh = qh0 - kh * DH
    if qh % SH == 0:
        dh = qh // SH - OFF_H // SH
        if MASKED:
            row_hits = (ihp_first + dh < HO) & (ihp_last + dh >= 0)
        else:
            row_hits = True
        if row_hits:
            # dy at column offset dw = (qw0 - kw*DW) // SW - OFF_W // SW; with SW == 1 that is
            # (qw0 - OFF_W) - kw*DW: a row pointer plus a constant per tap (folded into the load).
            dy_row = dy_base + dh * sdh
            if SW == 1:
                dy_row += (qw0 - OFF_W) * sdw
            if MASKED:
                oh = ihp + dh
                row_ok = c_ok[:, None, None] & ((oh >= 0) & (oh < HO))[None, :, None]
            for kw in tl.static_range(KW):
                qw = qw0 - kw * DW
                if qw % SW == 0:
                    dw = qw // SW - OFF_W // SW
                    if SW == 1:
                        tap = dy_row - (kw * DW) * sdw
                    else:
                        tap = dy_row + dw * sdw
                    if MASKED:
                        if (iwp_first + dw < WO) & (iwp_last + dw >= 0):
                            ow = iwp + dw
                            ok = row_ok & ((ow >= 0) & (ow < WO))[None, None, :]
                            wv = tl.load(w_co + (kh * KW + kw) * swt, mask=c_ok, other=0.0).to(acc.dtype)
                            acc += tl.load(tap, mask=ok, other=0.0).to(acc.dtype) * wv[:, None, None]
                    else:
                        wv = tl.load(w_co + (kh * KW + kw) * swt).to(acc.dtype)
                        acc += tl.load(tap).to(acc.dtype) * wv[:, None, None]
    return acc


@triton.jit
def _dgrad_taps(acc, dy_base, w_co, ihp, iwp, c_ok, ihp_first, ihp_last, iwp_first, iwp_last, qh0, qw0,
                HO, WO, sdh, sdw, swt, KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                DH: tl.constexpr, DW: tl.constexpr, OFF_H: tl.constexpr, OFF_W: tl.constexpr,
                UNROLL_ROWS: tl.constexpr, MASKED: tl.constexpr):
    if (not MASKED) and UNROLL_ROWS:
        for kh in tl.static_range(KH):
            acc = _dgrad_row(acc, kh, dy_base, w_co, ihp, iwp, c_ok, ihp_first, ihp_last, iwp_first, iwp_last,
                             qh0, qw0, HO, WO, sdh, sdw, swt, KW, SH, SW, DH, DW, OFF_H, OFF_W, MASKED)
    else:
        for kh in range(KH):
            acc = _dgrad_row(acc, kh, dy_base, w_co, ihp, iwp, c_ok, ihp_first, ihp_last, iwp_first, iwp_last,
                             qh0, qw0, HO, WO, sdh, sdw, swt, KW, SH, SW, DH, DW, OFF_H, OFF_W, MASKED)
    return acc


@triton.jit
def dgrad_kernel(dy_ptr, w_ptr, dx_ptr,
                 C, CO, H, W, HO, WO, PT, PL,
                 sdn, sdc, sdh, sdw, sxn, sxc, sxh, sxw, swc, swt,
                 M: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                 DH: tl.constexpr, DW: tl.constexpr, OFF_H: tl.constexpr, OFF_W: tl.constexpr,
                 INDEX_64: tl.constexpr, ACC: tl.constexpr, UNROLL_ROWS: tl.constexpr,
                 BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    # Program order: column tiles fastest, then row tiles, stride phases, channel blocks, images.
    # Phases with rh >= H (stride larger than the map) own no pixel and are not launched.
    pid = tl.program_id(0)
    phases_h = tl.minimum(H, SH)
    phases_w = tl.minimum(W, SW)
    tiles_w = tl.cdiv(tl.cdiv(W, SW), BLOCK_W)
    tiles_h = tl.cdiv(tl.cdiv(H, SH), BLOCK_H)
    cblocks = tl.cdiv(C, BLOCK_C)
    tw = pid % tiles_w
    rest = pid // tiles_w
    th = rest % tiles_h
    rest = rest // tiles_h
    rw = rest % phases_w
    rest = rest // phases_w
    rh = rest % phases_h
    rest = rest // phases_h
    cb = rest % cblocks
    n = rest // cblocks
    if INDEX_64:
        n = n.to(tl.int64)
    sdn, sdc, sdh, sdw = widen_strides(sdn, sdc, sdh, sdw, INDEX_64)
    sxn, sxc, sxh, sxw = widen_strides(sxn, sxc, sxh, sxw, INDEX_64)

    ci = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    ihp = th * BLOCK_H + tl.arange(0, BLOCK_H)
    iwp = tw * BLOCK_W + tl.arange(0, BLOCK_W)
    if INDEX_64:
        ci = ci.to(tl.int64)
        ihp = ihp.to(tl.int64)
        iwp = iwp.to(tl.int64)
    c_ok = ci < C
    ih = ihp * SH + rh
    iw = iwp * SW + rw

    # Phase-grid rows / columns of the tile that hold real pixels (rh < H, so H - 1 - rh >= 0).
    ihp_first = th * BLOCK_H
    iwp_first = tw * BLOCK_W
    ihp_last = tl.minimum(ihp_first + BLOCK_H - 1, (H - 1 - rh) // SH)
    iwp_last = tl.minimum(iwp_first + BLOCK_W - 1, (W - 1 - rw) // SW)
    qh0 = rh + PT + OFF_H
    qw0 = rw + PL + OFF_W
    # dy row offsets over all taps lie in [(qh0 - (KH-1)*DH) // SH, qh0 // SH] - OFF_H // SH.
    interior = ((cb * BLOCK_C + BLOCK_C <= C)
                & ((ihp_first + BLOCK_H - 1) * SH + rh < H) & ((iwp_first + BLOCK_W - 1) * SW + rw < W)
                & (ihp_first + (qh0 - (KH - 1) * DH) // SH - OFF_H // SH >= 0)
                & (iwp_first + (qw0 - (KW - 1) * DW) // SW - OFF_W // SW >= 0)
                & (ihp_first + BLOCK_H - 1 + qh0 // SH - OFF_H // SH < HO)
                & (iwp_first + BLOCK_W - 1 + qw0 // SW - OFF_W // SW < WO))

    acc = tl.zeros([BLOCK_C, BLOCK_H, BLOCK_W], dtype=ACC)
    dy_img = dy_ptr + n * sdn + ihp[None, :, None] * sdh + iwp[None, None, :] * sdw
    for j in range(M):
        co = ci * M + j
        dy_base = dy_img + co[:, None, None] * sdc
        w_co = w_ptr + co * swc
        if interior:
            acc = _dgrad_taps(acc, dy_base, w_co, ihp, iwp, c_ok, ihp_first, ihp_last, iwp_first, iwp_last,
                              qh0, qw0, HO, WO, sdh, sdw, swt, KH, KW, SH, SW, DH, DW, OFF_H, OFF_W,
                              UNROLL_ROWS, MASKED=False)
        else:
            acc = _dgrad_taps(acc, dy_base, w_co, ihp, iwp, c_ok, ihp_first, ihp_last, iwp_first, iwp_last,
                              qh0, qw0, HO, WO, sdh, sdw, swt, KH, KW, SH, SW, DH, DW, OFF_H, OFF_W,
                              UNROLL_ROWS, MASKED=True)

    dx_ptrs = dx_ptr + n * sxn + ci[:, None, None] * sxc + ih[None, :, None] * sxh + iw[None, None, :] * sxw
    if interior:
        tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty))
    else:
        ok = c_ok[:, None, None] & (ih < H)[None, :, None] & (iw < W)[None, None, :]
        tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=ok)


def dgrad(grad_out, weight, args: ConvArgs, channels_last: bool, variant: str = "", autotune: bool = False):
    """dx for upstream gradient grad_out, allocated with new_output in grad_out's layout: with the tile
    `variant` names (direct_tiles.py), or the default ("": autotuned among the candidates when `autotune`)."""
    dx = new_output(args.input_shape, like=grad_out)
    if dx.numel() == 0:
        return dx
    if grad_out.numel() == 0:  # no output pixel: nothing flows back
        return dx.zero_()
    n, c, h, w = args.input_shape
    sh, sw = args.stride
    kh, kw = args.kernel
    dh, dw = args.dilation
    pt, _, pl, _ = args.padding
    hp, wp = triton.cdiv(h, sh), triton.cdiv(w, sw)
    phases = min(sh, h) * min(sw, w)

    def grid(meta):
        return (n * triton.cdiv(c, meta["BLOCK_C"]) * phases * triton.cdiv(hp, meta["BLOCK_H"])
                * triton.cdiv(wp, meta["BLOCK_W"]),)

    w_operand, w_strides = weight_operand(weight, channels_last)
    cands, tile = direct_tiles.choose("dgrad", args, channels_last, grad_out.element_size(), variant)
    launch(dgrad_kernel, grid,
           (grad_out, w_operand, dx, c, args.out_channels, h, w, args.out_height, args.out_width, pt, pl)
           + strides4(grad_out) + strides4(dx) + w_strides,
           dict(M=args.multiplier, KH=kh, KW=kw, SH=sh, SW=sw, DH=dh, DW=dw,
                OFF_H=phase_offset(kh, dh, sh), OFF_W=phase_offset(kw, dw, sw),
                INDEX_64=needs_int64(grad_out, dx), ACC=acc_dtype(grad_out.dtype)),
           cands, direct_tiles.FORMAT, tile=tile, autotune=autotune, key=direct_tiles.TUNE_KEY)
    return dx
