"""Small-map kernels (planes up to 16x16, fp16/bf16): the whole plane as a banded GEMM on tensor cores.

Per channel, a depthwise conv over a small plane is one matrix product with the batch as M:
    y[n, o] = sum_i x[n, i] * B[i, o]      (forward)       dx[n, i] = sum_o dy[n, o] * B[i, o]   (dgrad)
with i = ih*W + iw a flat input pixel, o = oh*WO + ow a flat output pixel and the banded matrix
    B[i, o] = w[kh, kw]  where ih = oh*SH + kh*DH - PT and iw = ow*SW + kw*DW - PL  (else 0),
which encodes stride, dilation and any padding. Padding taps simply do not appear in B, and K-chunks of
pixels that lie outside an output chunk's band are skipped. A program owns BLOCK_C channels x BLOCK_M
images x BLOCK_N pixels and runs a batched [BLOCK_C] dot per K-chunk of BLOCK_K pixels, building its B
chunk by gathering weights (L1-resident). Products of half inputs are exact; accumulation is fp32.
"""
from __future__ import annotations


import torch
import triton
import triton.language as tl

from .._conv_args import ConvArgs
from ..outputs import new_output
from . import plane_tiles
from .common import INTERPRET, needs_int64, strides4, widen_strides
from .launcher import launch

# Largest plane (input and output pixels) the GEMM formulation takes.
MAX_PLANE_PIXELS = 256
PLANE_DTYPES = (torch.float16, torch.bfloat16)


def applies(x_dtype: torch.dtype, args: ConvArgs) -> bool:
    """Whether the small-map GEMM kernels serve this call (else the direct kernels do)."""
    return (x_dtype in PLANE_DTYPES and args.height * args.width <= MAX_PLANE_PIXELS
            and args.out_height * args.out_width <= MAX_PLANE_PIXELS)


@triton.jit
def _band(w_co, in_row, in_col, out_row, out_col, ok, KH: tl.constexpr, KW: tl.constexpr,
          SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr, PT, PL):
    # B[i, o] for broadcastable input (in_row, in_col) and output (out_row, out_col) coordinates:
    # the weight of tap (kh, kw) with in = out*S + k*D - P, or 0 when no tap links them.
    dh = in_row - (out_row * SH - PT)
    dw = in_col - (out_col * SW - PL)
    dh_pos = tl.where(dh >= 0, dh, 0)
    dw_pos = tl.where(dw >= 0, dw, 0)
    kh = dh_pos // DH
    kw = dw_pos // DW
    linked = ((dh >= 0) & (dw >= 0) & (kh * DH == dh_pos) & (kw * DW == dw_pos) & (kh < KH) & (kw < KW)
              & ok)
    return tl.load(w_co + kh * KW + kw, mask=linked, other=0.0)


@triton.jit
def _rows_meet(in_first, in_last, out_first, out_last, W, WO, KH: tl.constexpr, SH: tl.constexpr,
               DH: tl.constexpr, PT):
    # Does the input-pixel chunk [in_first, in_last] share a row band with the output chunk?
    in_lo = in_first // W
    in_hi = in_last // W
    out_lo = out_first // WO
    out_hi = out_last // WO
    return (out_lo * SH - PT <= in_hi) & (out_hi * SH - PT + (KH - 1) * DH >= in_lo)


@triton.jit
def plane_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr,
                     N, CO, H, W, HO, WO, PT, PL,
                     sxn, sxc, sxh, sxw, syn, syc, syh, syw,
                     M: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                     DH: tl.constexpr, DW: tl.constexpr, HAS_BIAS: tl.constexpr, INDEX_64: tl.constexpr,
                     UPCAST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # Program order: output-pixel chunks fastest, then image blocks, channel blocks.
    pid = tl.program_id(0)
    q_chunks = tl.cdiv(HO * WO, BLOCK_N)
    n_blocks = tl.cdiv(N, BLOCK_M)
    qb = pid % q_chunks
    rest = pid // q_chunks
    nb = rest % n_blocks
    cb = rest // n_blocks

    sxn, sxc, sxh, sxw = widen_strides(sxn, sxc, sxh, sxw, INDEX_64)
    syn, syc, syh, syw = widen_strides(syn, syc, syh, syw, INDEX_64)
    co = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    n = nb * BLOCK_M + tl.arange(0, BLOCK_M)
    o = qb * BLOCK_N + tl.arange(0, BLOCK_N)
    if INDEX_64:
        co = co.to(tl.int64)
        n = n.to(tl.int64)
    c_ok = co < CO
    n_ok = n < N
    o_ok = o < HO * WO
    oh = o // WO
    ow = o % WO
    if INDEX_64:
        oh = oh.to(tl.int64)
        ow = ow.to(tl.int64)
    w_co = (w_ptr + co * (KH * KW))[:, None, None]
    x_cn = x_ptr + (co // M)[:, None, None] * sxc + n[None, :, None] * sxn
    cn_ok = c_ok[:, None, None] & n_ok[None, :, None]
    o_last = tl.minimum(qb * BLOCK_N + BLOCK_N - 1, HO * WO - 1)

    acc = tl.zeros([BLOCK_C, BLOCK_M, BLOCK_N], dtype=tl.float32)
    for kb in range(tl.cdiv(H * W, BLOCK_K)):
        i_last = tl.minimum(kb * BLOCK_K + BLOCK_K - 1, H * W - 1)
        if _rows_meet(kb * BLOCK_K, i_last, qb * BLOCK_N, o_last, W, WO, KH, SH, DH, PT):
            i = kb * BLOCK_K + tl.arange(0, BLOCK_K)
            i_ok = i < H * W
            ih = i // W
            iw = i % W
            a = tl.load(x_cn + (ih * sxh + iw * sxw)[None, None, :], mask=cn_ok & i_ok[None, None, :],
                        other=0.0)
            band = _band(w_co, ih[None, :, None], iw[None, :, None], oh[None, None, :], ow[None, None, :],
                         c_ok[:, None, None] & i_ok[None, :, None] & o_ok[None, None, :],
                         KH, KW, SH, SW, DH, DW, PT, PL)
            if UPCAST:  # the interpreter's dot mishandles bf16
                acc = tl.dot(a.to(tl.float32), band.to(tl.float32), acc)
            else:
                acc = tl.dot(a, band, acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + co, mask=c_ok, other=0.0).to(tl.float32)[:, None, None]
    y_ptrs = (y_ptr + co[:, None, None] * syc + n[None, :, None] * syn
              + (oh * syh + ow * syw)[None, None, :])
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=cn_ok & o_ok[None, None, :])


@triton.jit
def plane_dgrad_kernel(dy_ptr, w_ptr, dx_ptr,
                       N, C, CO, H, W, HO, WO, PT, PL,
                       sdn, sdc, sdh, sdw, sxn, sxc, sxh, sxw,
                       M: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr,
                       SW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr, INDEX_64: tl.constexpr,
                       UPCAST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # Program order: input-pixel chunks fastest, then image blocks, channel blocks.
    # dx[n, i] = sum_{j<M} sum_o dy[n, c*M+j, o] * B_{c*M+j}[i, o]: K runs over output pixels.
    pid = tl.program_id(0)
    p_chunks = tl.cdiv(H * W, BLOCK_N)
    n_blocks = tl.cdiv(N, BLOCK_M)
    pb = pid % p_chunks
    rest = pid // p_chunks
    nb = rest % n_blocks
    cb = rest // n_blocks

    sdn, sdc, sdh, sdw = widen_strides(sdn, sdc, sdh, sdw, INDEX_64)
    sxn, sxc, sxh, sxw = widen_strides(sxn, sxc, sxh, sxw, INDEX_64)
    ci = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    n = nb * BLOCK_M + tl.arange(0, BLOCK_M)
    i = pb * BLOCK_N + tl.arange(0, BLOCK_N)
    if INDEX_64:
        ci = ci.to(tl.int64)
        n = n.to(tl.int64)
    c_ok = ci < C
    n_ok = n < N
    i_ok = i < H * W
    ih = i // W
    iw = i % W
    if INDEX_64:
        ih = ih.to(tl.int64)
        iw = iw.to(tl.int64)
    cn_ok = c_ok[:, None, None] & n_ok[None, :, None]
    i_last = tl.minimum(pb * BLOCK_N + BLOCK_N - 1, H * W - 1)

    acc = tl.zeros([BLOCK_C, BLOCK_M, BLOCK_N], dtype=tl.float32)
    for j in range(M):
        co = ci * M + j
        w_co = (w_ptr + co * (KH * KW))[:, None, None]
        dy_cn = dy_ptr + co[:, None, None] * sdc + n[None, :, None] * sdn
        for kb in range(tl.cdiv(HO * WO, BLOCK_K)):
            o_last = tl.minimum(kb * BLOCK_K + BLOCK_K - 1, HO * WO - 1)
            if _rows_meet(pb * BLOCK_N, i_last, kb * BLOCK_K, o_last, W, WO, KH, SH, DH, PT):
                o = kb * BLOCK_K + tl.arange(0, BLOCK_K)
                o_ok = o < HO * WO
                oh = o // WO
                ow = o % WO
                a = tl.load(dy_cn + (oh * sdh + ow * sdw)[None, None, :], mask=cn_ok & o_ok[None, None, :],
                            other=0.0)
                band_t = _band(w_co, ih[None, None, :], iw[None, None, :], oh[None, :, None],
                               ow[None, :, None], c_ok[:, None, None] & o_ok[None, :, None] & i_ok[None, None, :],
                               KH, KW, SH, SW, DH, DW, PT, PL)
                if UPCAST:
                    acc = tl.dot(a.to(tl.float32), band_t.to(tl.float32), acc)
                else:
                    acc = tl.dot(a, band_t, acc)
    dx_ptrs = (dx_ptr + ci[:, None, None] * sxc + n[None, :, None] * sxn
               + (ih * sxh + iw * sxw)[None, None, :])
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=cn_ok & i_ok[None, None, :])


def _upcast(dtype: torch.dtype) -> bool:
    return INTERPRET and dtype == torch.bfloat16


def forward(x, weight, bias, args: ConvArgs, channels_last: bool, variant: str = "", autotune: bool = False):
    """y = conv(x, weight) + bias for applies(x.dtype, args), allocated with new_output in x's layout: with the
    tile `variant` names (plane_tiles.py), or the default ("": autotuned among the candidates when `autotune`)."""
    y = new_output(args.output_shape, like=x)
    n, co, ho, wo = args.output_shape
    if y.numel() == 0:
        return y
    pt, _, pl, _ = args.padding

    def grid(meta):
        return (triton.cdiv(co, meta["BLOCK_C"]) * triton.cdiv(n, meta["BLOCK_M"])
                * triton.cdiv(ho * wo, meta["BLOCK_N"]),)

    b = bias if bias is not None else weight  # never read when HAS_BIAS is False
    cands, tile = plane_tiles.choose("fwd", args, channels_last, x.element_size(), variant)
    launch(plane_fwd_kernel, grid,
           (x, weight, b, y, n, co, args.height, args.width, ho, wo, pt, pl) + strides4(x) + strides4(y),
           dict(M=args.multiplier, KH=args.kernel[0], KW=args.kernel[1], SH=args.stride[0], SW=args.stride[1],
                DH=args.dilation[0], DW=args.dilation[1], HAS_BIAS=bias is not None, INDEX_64=needs_int64(x, y),
                UPCAST=_upcast(x.dtype)),
           cands, plane_tiles.FORMAT, tile=tile, autotune=autotune, key=plane_tiles.TUNE_KEY)
    return y


def dgrad(grad_out, weight, args: ConvArgs, channels_last: bool, variant: str = "", autotune: bool = False):
    """dx for applies(grad_out.dtype, args), allocated with new_output in grad_out's layout; tiles as forward's."""
    dx = new_output(args.input_shape, like=grad_out)
    n, c, h, w = args.input_shape
    if dx.numel() == 0:
        return dx
    pt, _, pl, _ = args.padding

    def grid(meta):
        return (triton.cdiv(c, meta["BLOCK_C"]) * triton.cdiv(n, meta["BLOCK_M"])
                * triton.cdiv(h * w, meta["BLOCK_N"]),)

    cands, tile = plane_tiles.choose("dgrad", args, channels_last, grad_out.element_size(), variant)
    launch(plane_dgrad_kernel, grid,
           (grad_out, weight, dx, n, c, args.out_channels, h, w, args.out_height, args.out_width, pt, pl)
           + strides4(grad_out) + strides4(dx),
           dict(M=args.multiplier, KH=args.kernel[0], KW=args.kernel[1], SH=args.stride[0], SW=args.stride[1],
                DH=args.dilation[0], DW=args.dilation[1], INDEX_64=needs_int64(grad_out, dx),
                UPCAST=_upcast(grad_out.dtype)),
           cands, plane_tiles.FORMAT, tile=tile, autotune=autotune, key=plane_tiles.TUNE_KEY)
    return dx
