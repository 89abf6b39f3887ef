"""Forward kernel: y = depthwise_conv(x, w) + b, one output tile per program.

Tile: BLOCK_C output channels x BLOCK_H output rows x BLOCK_W output columns of one image; the layout
(NCHW or channels_last) comes in through the element strides, so both run natively (no copies).
Each tap (kh, kw) reads the tile's input window shifted by (kh*DH, kw*DW): one pointer tensor for tap
(0, 0) plus a scalar offset per tap, the neighbouring taps' reads hitting L1. Interior tiles (the whole
input window inside the image, every channel valid) run with no masks at all; border tiles mask per tap
and skip filter rows and taps whose window lies entirely in the padding.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .._conv_args import ConvArgs
from ..outputs import new_output
from . import direct_tiles
from .launcher import launch
from .common import acc_dtype, needs_int64, strides4, weight_operand, widen_strides


@triton.jit
def _fwd_row_interior(acc, x_row, w_row, sxw, swt, KW: tl.constexpr, DW: tl.constexpr):
    # x_row: [BC, BH, BW] pointers of tap (kh, 0); per tap only a constant offset when sxw == 1 (NCHW),
    # which ptxas folds into the load's immediate.
    for kw in tl.static_range(KW):
        wv = tl.load(w_row + kw * swt).to(acc.dtype)
        acc += tl.load(x_row + (kw * DW) * sxw).to(acc.dtype) * wv[:, None, None]
    return acc


@triton.jit
def _fwd_taps(acc, x_tap0, w_co, ih0, iw0, c_ok, ih_first, ih_last, iw_first, iw_last, H, W,
              sxh, sxw, swt, KH: tl.constexpr, KW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
              UNROLL_ROWS: tl.constexpr, MASKED: tl.constexpr):
    # x_tap0: [BC, BH, BW] pointers of tap (0, 0); ih0 / iw0: its input rows / columns;
    # ih_first..ih_last, iw_first..iw_last: the window of tap (0, 0) over the tile's valid outputs.
    if not MASKED:
        if UNROLL_ROWS:
            for kh in tl.static_range(KH):
                acc = _fwd_row_interior(acc, x_tap0 + (kh * DH) * sxh, w_co + (kh * KW) * swt, sxw, swt,
                                        KW, DW)
        else:
            for kh in range(KH):
                acc = _fwd_row_interior(acc, x_tap0 + (kh * DH) * sxh, w_co + (kh * KW) * swt, sxw, swt,
                                        KW, DW)
    else:
        for kh in range(KH):
            row = kh * DH
            # Filter rows whose window lies entirely in the padding are skipped, and so are such taps.
            if (ih_first + row < H) & (ih_last + row >= 0):
                x_row = x_tap0 + row * sxh
                ih = ih0 + row
                row_ok = c_ok[:, None, None] & ((ih >= 0) & (ih < H))[None, :, None]
                for kw in tl.static_range(KW):
                    col = kw * DW
                    if (iw_first + col < W) & (iw_last + col >= 0):
                        iw = iw0 + col
                        ok = row_ok & ((iw >= 0) & (iw < W))[None, None, :]
                        wv = tl.load(w_co + (kh * KW + kw) * swt, mask=c_ok, other=0.0).to(acc.dtype)
                        acc += tl.load(x_row + col * sxw, mask=ok, other=0.0).to(acc.dtype) * wv[:, None, None]
    return acc


@triton.jit
def fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr,
               CO, H, W, HO, WO, PT, PL,
               sxn, sxc, sxh, sxw, syn, syc, syh, syw, swc, swt,
               M: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
               DH: tl.constexpr, DW: tl.constexpr, HAS_BIAS: tl.constexpr, INDEX_64: tl.constexpr,
               ACC: tl.constexpr, UNROLL_ROWS: tl.constexpr,
               BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    # Program order: column tiles fastest, then row tiles, channel blocks, images (neighbours share halos).
    pid = tl.program_id(0)
    tiles_w = tl.cdiv(WO, BLOCK_W)
    tiles_h = tl.cdiv(HO, BLOCK_H)
    cblocks = tl.cdiv(CO, BLOCK_C)
    tw = pid % tiles_w
    rest = pid // tiles_w
    th = rest % tiles_h
    rest = rest // tiles_h
    cb = rest % cblocks
    n = rest // cblocks
    if INDEX_64:
        n = n.to(tl.int64)
    sxn, sxc, sxh, sxw = widen_strides(sxn, sxc, sxh, sxw, INDEX_64)
    syn, syc, syh, syw = widen_strides(syn, syc, syh, syw, INDEX_64)

    co = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    oh = th * BLOCK_H + tl.arange(0, BLOCK_H)
    ow = tw * BLOCK_W + tl.arange(0, BLOCK_W)
    if INDEX_64:
        co = co.to(tl.int64)
        oh = oh.to(tl.int64)
        ow = ow.to(tl.int64)
    ci = co // M
    c_ok = co < CO
    ih0 = oh * SH - PT
    iw0 = ow * SW - PL
    x_tap0 = (x_ptr + n * sxn + ci[:, None, None] * sxc + ih0[None, :, None] * sxh
              + iw0[None, None, :] * sxw)
    w_co = w_ptr + co * swc

    # Tap (0, 0) input window of the tile's valid outputs.
    ih_first = th * BLOCK_H * SH - PT
    iw_first = tw * BLOCK_W * SW - PL
    ih_last = tl.minimum(th * BLOCK_H + BLOCK_H - 1, HO - 1) * SH - PT
    iw_last = tl.minimum(tw * BLOCK_W + BLOCK_W - 1, WO - 1) * SW - PL
    # Interior: the full tile (not only its valid part) reads inside the image, so every output is valid too.
    interior = ((ih_first >= 0) & (iw_first >= 0) & (cb * BLOCK_C + BLOCK_C <= CO)
                & ((th * BLOCK_H + BLOCK_H - 1) * SH - PT + (KH - 1) * DH < H)
                & ((tw * BLOCK_W + BLOCK_W - 1) * SW - PL + (KW - 1) * DW < W))

    acc = tl.zeros([BLOCK_C, BLOCK_H, BLOCK_W], dtype=ACC)
    y_ptrs = (y_ptr + n * syn + co[:, None, None] * syc + oh[None, :, None] * syh
              + ow[None, None, :] * syw)
    if interior:
        acc = _fwd_taps(acc, x_tap0, w_co, ih0, iw0, c_ok, ih_first, ih_last, iw_first, iw_last, H, W,
                        sxh, sxw, swt, KH, KW, DH, DW, UNROLL_ROWS, MASKED=False)
        if HAS_BIAS:
            acc += tl.load(b_ptr + co).to(ACC)[:, None, None]
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty))
    else:
        acc = _fwd_taps(acc, x_tap0, w_co, ih0, iw0, c_ok, ih_first, ih_last, iw_first, iw_last, H, W,
                        sxh, sxw, swt, KH, KW, DH, DW, UNROLL_ROWS, MASKED=True)
        if HAS_BIAS:
            acc += tl.load(b_ptr + co, mask=c_ok, other=0.0).to(ACC)[:, None, None]
        out_ok = c_ok[:, None, None] & (oh < HO)[None, :, None] & (ow < WO)[None, None, :]
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=out_ok)


def forward(x, weight, bias, args: ConvArgs, channels_last: bool, variant: str = "", autotune: bool = False):
    """y = conv(x, weight) + bias, allocated with new_output in x's layout: with the tile `variant` names
    (direct_tiles.py), or the default ("": autotuned among the candidates when `autotune`)."""
    y = new_output(args.output_shape, like=x)
    n, co, ho, wo = args.output_shape
    if y.numel() == 0:
        return y
    pt, _, pl, _ = args.padding

    def grid(meta):
        return (n * triton.cdiv(co, meta["BLOCK_C"]) * triton.cdiv(ho, meta["BLOCK_H"])
                * triton.cdiv(wo, meta["BLOCK_W"]),)

    b = bias if bias is not None else weight  # never read when HAS_BIAS is False
    w, w_strides = weight_operand(weight, channels_last)
    cands, tile = direct_tiles.choose("fwd", args, channels_last, x.element_size(), variant)
    launch(fwd_kernel, grid,
           (x, w, b, y, co, args.height, args.width, ho, wo, pt, pl) + strides4(x) + strides4(y) + w_strides,
           dict(M=args.multiplier, KH=args.kernel[0], KW=args.kernel[1], SH=args.stride[0], SW=args.stride[1],
                DH=args.dilation[0], DW=args.dilation[1], HAS_BIAS=bias is not None, INDEX_64=needs_int64(x, y),
                ACC=acc_dtype(x.dtype)),
           cands, direct_tiles.FORMAT, tile=tile, autotune=autotune, key=direct_tiles.TUNE_KEY)
    return y
