"""Row-streaming kernels: forward and stride-1 dgrad with a sliding window of output rows in registers.

A program owns BLOCK_N images x BLOCK_C channels x BLOCK_W output columns and walks down a strip of ROWS
output rows. With stride SH, output row o reads input rows o*SH - PT + kh (kh < KH), so an input row feeds
J = ceil(KH / SH) consecutive output rows and the program keeps J accumulators, one per output row still
open (a tuple of [BLOCK_N, BLOCK_C, BLOCK_W] tensors). Step s opens output row o = oh_first + s and reads
its SH input rows o*SH - PT + r:

    accs[j] = output row  o - (J - 1) + j,   fed by input row r of the step through filter row (J-1-j)*SH + r.

Per input row and filter column kw it loads the shifted input row once and does up to J multiply-adds with
it (one per open output row; J = KH at stride 1), where the direct kernels (fwd.py) pay one load per FMA.
After the step accs[0] is complete: it is stored and the window moves down (accs[1:] + a fresh zero).

Along W, with stride 1 and dilation 1 (NCHW tiles, WIN > 1), a thread's outputs are WIN consecutive columns
and its input row values are shared along W as well: a row's WIN + KW - 1 input columns are loaded once and
each feeds every (column, filter column) pair that needs it, instead of one shifted load per filter column
(WIN * KW). Each accumulator is then one tensor per output phase (column g*WIN + e of the tile).
NCHW tiles take several images of one channel (the weights are then uniform across the program, and for
small enough kernels are held in registers: HOIST, see rows_tiles.py); channels_last tiles take a channel vector
per pixel.

Served: dilation 1 along H, any stride along H, any stride and dilation along W, KH and KW up to MAX_KERNEL.
The dgrad of a stride-1 conv with multiplier 1 is the same walk over dy with the filter rotated by 180
degrees (FLIP) and padding (KH-1-PT, (KW-1)*DW-PL).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .._conv_args import ConvArgs
from ..outputs import new_output
from . import rows_tiles
from .common import acc_torch_dtype, acc_dtype, needs_int64, strides4, widen_strides
from .launcher import launch

# KH accumulators of E elements each live in registers: beyond 13 rows they spill.
MAX_KERNEL = 13


def applies_forward(args: ConvArgs) -> bool:
    kh, kw = args.kernel
    return args.dilation[0] == 1 and kh <= MAX_KERNEL and kw <= MAX_KERNEL


def applies_dgrad(args: ConvArgs) -> bool:
    return applies_forward(args) and args.stride == (1, 1) and args.multiplier == 1


@triton.jit
def _weight(w_co, tap, swt: tl.constexpr):
    # One tap's weights for the program's channels (the operand is zero-padded to whole channel blocks, so
    # a partial block reads zeros, never past the buffer).
    return tl.load(w_co + tap * swt)


@triton.jit
def _first_columns(x_col, o, H, PT, sxh, col_ok, ACC: tl.constexpr, KH: tl.constexpr, SH: tl.constexpr,
                   MASKED: tl.constexpr):
    # Filter column 0 of the input rows that step o reads (o*SH - PT + r, r < min(SH, KH)), in ACC; zero for
    # a row outside the map (never used). Loaded a step ahead (PREFETCH), they also bring the rows' cache
    # lines to L1 for the other columns' loads.
    firsts = ()
    for r in tl.static_range(SH):
        if r < KH:
            ih = o * SH - PT + r
            ok = (ih >= 0) & (ih < H)
            if MASKED:
                firsts = firsts + (tl.load(x_col + ih * sxh, mask=col_ok[0] & ok, other=0.0).to(ACC),)
            else:
                firsts = firsts + (tl.load(x_col + ih * sxh, mask=ok, other=0.0).to(ACC),)
    return firsts


@triton.jit
def _accumulate_row(accs, wts, x_row, x_first, w_co, col_ok, sxw, swt: tl.constexpr, R: tl.constexpr,
                    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, DW: tl.constexpr, FLIP: tl.constexpr,
                    HOIST: tl.constexpr, WIN: tl.constexpr, PREFETCH: tl.constexpr, MASKED: tl.constexpr):
    # x_row: pointers of the step's input row R at the window's first column (see rows_kernel); with
    # PREFETCH, x_first holds that column already loaded. Window value t (col_ok[t]) is column t*DW (WIN = 1)
    # or t (WIN > 1: stride 1, dilation 1 along W); output phase e, filter column kw reads value
    # e + kw (WIN > 1) or kw. accs[j * WIN + e] takes it through filter row (J-1-j)*SH + R when that is
    # < KH; FLIP (dgrad, SH = 1): through the rotated filter, i.e. w[j, KW-1-kw]. wts: the hoisted weights,
    # tap-major.
    J: tl.constexpr = (KH + SH - 1) // SH
    T: tl.constexpr = KW if WIN == 1 else WIN + KW - 1
    tl.static_assert(not FLIP or SH == 1, "the rotated-filter walk (dgrad) is stride 1")
    # One window value at a time, used at once by every (phase, filter column) pair that reads it: few
    # values stay live, and each accumulator still sums its filter columns in ascending order.
    for t in tl.static_range(T):
        if PREFETCH and t == 0:
            xv = x_first
        elif MASKED:
            xv = tl.load(x_row + (t * DW) * sxw, mask=col_ok[t], other=0.0).to(accs[0].dtype)
        else:
            xv = tl.load(x_row + (t * DW) * sxw).to(accs[0].dtype)
        for e in tl.static_range(WIN):
            for kw in tl.static_range(KW):
                if (e + kw == t) if WIN > 1 else (kw == t):
                    for j in tl.static_range(J):
                        if (J - 1 - j) * SH + R < KH:
                            if FLIP:
                                if HOIST:
                                    wv = wts[j * KW + (KW - 1 - kw)]
                                else:
                                    wv = _weight(w_co, j * KW + (KW - 1 - kw), swt)
                            elif HOIST:
                                wv = wts[((J - 1 - j) * SH + R) * KW + kw]
                            else:
                                wv = _weight(w_co, ((J - 1 - j) * SH + R) * KW + kw, swt)
                            accs = (accs[:j * WIN + e] + (accs[j * WIN + e] + xv * wv[None, :, None],)
                                    + accs[j * WIN + e + 1:])
    return accs


@triton.jit
def rows_kernel(x_ptr, w_ptr, b_ptr, y_ptr, N, CO, H, W, HO, WO, PT, PL,
                sxn, sxc, sxh, sxw, syn, syc, syh, syw, swc, swt: tl.constexpr,
                M: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                DW: tl.constexpr, FLIP: tl.constexpr, HAS_BIAS: tl.constexpr, INDEX_64: tl.constexpr, ACC: tl.constexpr,
                HOIST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr,
                ROWS: tl.constexpr, WIN: tl.constexpr = 1, PREFETCH: tl.constexpr = False):
    # x: (N, CO/M, H, W) input (dy for dgrad); y: (N, CO, HO, WO) output (dx); w: ACC-typed weights, tap t of
    # channel c at w_ptr + c*swc + t*swt (swt a compile-time stride: tap offsets fold into load immediates).
    # Program order: column tiles fastest, then row strips, channel blocks, image blocks.
    # WIN > 1 (column windows, module docstring): the tile's columns are G groups of WIN; every tensor is
    # [BLOCK_N, BLOCK_C, G], one per output phase e (tile column g*WIN + e); group g reads input columns
    # g*WIN - PL + t, t < T.
    # PREFETCH: filter column 0 of step s + 1's input rows is loaded before step s's FMAs (_first_columns).
    tl.static_assert(WIN == 1 or (SW == 1 and DW == 1), "windows of several columns need stride 1, dilation 1")
    tl.static_assert(BLOCK_W % WIN == 0, "BLOCK_W must be whole windows")
    G: tl.constexpr = BLOCK_W // WIN
    T: tl.constexpr = KW if WIN == 1 else WIN + KW - 1  # window values per group and row
    pid = tl.program_id(0)
    tiles_w = tl.cdiv(WO, BLOCK_W)
    strips = tl.cdiv(HO, ROWS)
    cblocks = tl.cdiv(CO, BLOCK_C)
    tw = pid % tiles_w
    rest = pid // tiles_w
    strip = rest % strips
    rest = rest // strips
    cb = rest % cblocks
    nb = rest // cblocks
    sxn, sxc, sxh, sxw = widen_strides(sxn, sxc, sxh, sxw, INDEX_64)
    syn, syc, syh, syw = widen_strides(syn, syc, syh, syw, INDEX_64)

    nn = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    co = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    ow = tw * BLOCK_W + tl.arange(0, G) * WIN  # each group's first output column
    if INDEX_64:
        nn = nn.to(tl.int64)
        co = co.to(tl.int64)
        ow = ow.to(tl.int64)
    c_ok = co < CO
    nc_ok = (nn < N)[:, None, None] & c_ok[None, :, None]
    iw0 = ow * SW - PL
    x_col = x_ptr + nn[:, None, None] * sxn + (co // M)[None, :, None] * sxc + iw0[None, None, :] * sxw
    y_col = y_ptr + nn[:, None, None] * syn + co[None, :, None] * syc + ow[None, None, :] * syw
    w_co = w_ptr + co * swc
    col_ok = ()
    for t in tl.static_range(T):
        iw = iw0 + t * DW
        col_ok = col_ok + (nc_ok & ((iw >= 0) & (iw < W))[None, None, :],)
    out_ok = ()
    for e in tl.static_range(WIN):
        out_ok = out_ok + (nc_ok & (ow + e < WO)[None, None, :],)
    # Interior column tile: every image, channel and column valid, every tap's column inside the input.
    interior = ((nb * BLOCK_N + BLOCK_N <= N) & (cb * BLOCK_C + BLOCK_C <= CO)
                & (tw * BLOCK_W + BLOCK_W <= WO) & (tw * BLOCK_W * SW - PL >= 0)
                & ((tw * BLOCK_W + BLOCK_W - 1) * SW - PL + (KW - 1) * DW < W))

    wts = ()
    if HOIST:
        for tap in tl.static_range(KH * KW):
            wts = wts + (_weight(w_co, tap, swt),)
    if HAS_BIAS:
        bias = tl.load(b_ptr + co, mask=c_ok, other=0.0).to(ACC)[None, :, None]
    else:
        bias = tl.zeros([1, BLOCK_C, 1], dtype=ACC)

    oh_first = strip * ROWS
    oh_end = tl.minimum(oh_first + ROWS, HO)
    zero = tl.zeros([BLOCK_N, BLOCK_C, G], dtype=ACC)
    J: tl.constexpr = (KH + SH - 1) // SH  # output rows open at once
    accs = (zero,) * (J * WIN)  # accs[j * WIN + e]: open row j, phase e
    ROWS_READ: tl.constexpr = SH if SH < KH else KH  # input rows a step reads
    firsts = (zero,) * ROWS_READ  # their filter column 0 (PREFETCH only)
    if PREFETCH:
        if interior:
            ahead = _first_columns(x_col, oh_first, H, PT, sxh, col_ok, ACC, KH, SH, MASKED=False)
        else:
            ahead = _first_columns(x_col, oh_first, H, PT, sxh, col_ok, ACC, KH, SH, MASKED=True)
    # Step s opens output row o = oh_first + s (accs[(J-1)*WIN:]), reads its SH input rows o*SH - PT + r and
    # completes output row o - (J - 1) (accs[:WIN]).
    for step in range(0, oh_end - oh_first + J - 1):
        o_new = oh_first + step
        if PREFETCH:
            firsts = ahead
            if interior:
                ahead = _first_columns(x_col, o_new + 1, H, PT, sxh, col_ok, ACC, KH, SH, MASKED=False)
            else:
                ahead = _first_columns(x_col, o_new + 1, H, PT, sxh, col_ok, ACC, KH, SH, MASKED=True)
        for r in tl.static_range(SH):
            if r < KH:  # rows past the filter (stride > KH) feed no output
                ih = o_new * SH - PT + r
                if (ih >= 0) & (ih < H):
                    x_row = x_col + ih * sxh
                    if interior:
                        accs = _accumulate_row(accs, wts, x_row, firsts[r], w_co, col_ok, sxw, swt, r, KH, KW, SH,
                                               DW, FLIP, HOIST, WIN, PREFETCH, MASKED=False)
                    else:
                        accs = _accumulate_row(accs, wts, x_row, firsts[r], w_co, col_ok, sxw, swt, r, KH, KW, SH,
                                               DW, FLIP, HOIST, WIN, PREFETCH, MASKED=True)
        oh = o_new - (J - 1)
        if oh >= oh_first:
            for e in tl.static_range(WIN):
                out = (accs[e] + bias).to(y_ptr.dtype.element_ty)
                if interior:
                    tl.store(y_col + oh * syh + e * syw, out)
                else:
                    tl.store(y_col + oh * syh + e * syw, out, mask=out_ok[e])
        accs = accs[WIN:] + (zero,) * WIN


def _weight_operand(weight, channels_last: bool, channel_block: int):
    """The weights in the accumulation dtype with a compile-time tap stride: (CO', taps) for NCHW
    (tap stride 1), tap-major (taps, CO') for channels_last (one tap of a channel vector is one 16-byte load;
    tap stride CO', so the kernel is compiled per channel count). CO' is CO rounded up to whole channel
    blocks, the extra channels zero: weight loads need no mask."""
    co, taps = weight.shape[0], weight.shape[2] * weight.shape[3]
    co_padded = triton.cdiv(co, channel_block) * channel_block
    w = weight.new_zeros((co_padded, taps), dtype=acc_torch_dtype(weight.dtype))
    w[:co] = weight.reshape(co, taps)
    if channels_last:
        return w.t().contiguous(), 1, co_padded
    return w, taps, 1


def _launch(x, weight, bias, y, in_hw, out_hw, pad_tl, stride, dil_w, multiplier, flip, channels_last, cands, tile,
            autotune):
    n, co, ho, wo = y.shape
    kh, kw = weight.shape[2], weight.shape[3]

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_N"]) * triton.cdiv(co, meta["BLOCK_C"])
                * triton.cdiv(ho, meta["ROWS"]) * triton.cdiv(wo, meta["BLOCK_W"]),)

    w, swc, swt = _weight_operand(weight, channels_last,
                                  max(c.kwargs["BLOCK_C"] for c in cands + ([tile] if tile is not None else [])))
    b = bias if bias is not None else w  # never read when HAS_BIAS is False
    launch(rows_kernel, grid,
           (x, w, b, y, n, co, in_hw[0], in_hw[1], ho, wo, pad_tl[0], pad_tl[1]) + strides4(x) + strides4(y) + (swc,),
           dict(swt=swt, M=multiplier, KH=kh, KW=kw, SH=stride[0], SW=stride[1], DW=dil_w, FLIP=flip,
                HAS_BIAS=bias is not None, INDEX_64=needs_int64(x, y), ACC=acc_dtype(x.dtype)),
           cands, rows_tiles.FORMAT, tile=tile, autotune=autotune, key=rows_tiles.TUNE_KEY)


def forward(x, weight, bias, args: ConvArgs, channels_last: bool, variant: str = "", autotune: bool = False):
    """y = conv(x, weight) + bias for applies_forward(args), allocated with new_output in x's layout: with the
    tile `variant` names (rows_tiles.py), or the default ("": autotuned among the candidates when `autotune`)."""
    y = new_output(args.output_shape, like=x)
    if y.numel() == 0:
        return y
    cands, tile = rows_tiles.choose("fwd", args, channels_last, x.element_size(), variant)
    pt, _, pl, _ = args.padding
    _launch(x, weight, bias, y, (args.height, args.width), (args.out_height, args.out_width), (pt, pl),
            args.stride, args.dilation[1], args.multiplier, False, channels_last, cands, tile, autotune)
    return y


def dgrad(grad_out, weight, args: ConvArgs, channels_last: bool, variant: str = "", autotune: bool = False):
    """dx for applies_dgrad(args): the forward over dy with the filter rotated by 180 degrees and
    padding (K-1)*D - P (dx[ih, iw] = sum dy[ih + PT - kh, iw + PL - kw*DW] * w[kh, kw]); tiles as forward's."""
    dx = new_output(args.input_shape, like=grad_out)
    if dx.numel() == 0:
        return dx
    if grad_out.numel() == 0:
        return dx.zero_()
    cands, tile = rows_tiles.choose("dgrad", args, channels_last, grad_out.element_size(), variant)
    kh, kw = args.kernel
    dw = args.dilation[1]
    pt, _, pl, _ = args.padding
    _launch(grad_out, weight, None, dx, (args.out_height, args.out_width), (args.height, args.width),
            (kh - 1 - pt, (kw - 1) * dw - pl), (1, 1), dw, 1, True, channels_last, cands, tile, autotune)
    return dx
