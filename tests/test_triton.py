"""The Triton backend against the float64 reference: forward, dx, dw, db.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (conftest sets TRITON_INTERPRET=1),
which pays per program and per tap: the grid is a covering set of small shapes, each case with its own
layout and dtype, rather than a product.
"""
import pytest
import torch

import dwconv
from conftest import HAS_CUDA, require_backend
from utils import assert_close, make_inputs, poisoned_outputs, reference_grads

DEVICE = "cuda" if HAS_CUDA else "cpu"
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16

# (n, c, h, w, kernel, stride, padding, dilation, multiplier, bias, channels_last, dtype)
CASES = [
    (1, 4, 7, 7, 11, 1, 5, 1, 1, True, False, F32),          # Robust-ResNet 7x7 k11: taps mostly padding
    (3, 4, 7, 7, 11, 1, 5, 1, 1, True, True, BF16),
    (1, 3, 14, 14, 7, 1, 3, 1, 1, True, True, F32),          # 14x14 k7
    (3, 2, 14, 14, 7, 2, 3, 1, 2, True, False, F16),         # stride 2 + multiplier 2 (up-inverted stage 3)
    (1, 2, 14, 14, 13, 1, 6, 1, 1, True, False, BF16),       # K=13
    (1, 3, 14, 14, 11, 2, 5, 1, 2, True, True, F16),         # k11, stride 2, multiplier 2, channels_last
    (1, 3, 13, 11, (3, 5), 2, (1, 0, 2, 1), 2, 2, True, True, F16),  # non-square, asymmetric pad, dil 2
    (3, 3, 9, 10, 3, 1, "same", 2, 1, False, False, F32),    # dilation 2, no bias, odd map
    (1, 3, 1, 1, 3, 1, 1, 1, 1, True, True, F32),            # 1x1 map
    (1, 3, 1, 1, 3, 2, 1, 1, 2, True, False, BF16),
    (2, 2, 11, 9, 9, 3, 4, 1, 1, True, True, BF16),          # K=9, stride 3
    (1, 2, 12, 20, 5, (2, 1), (0, 2, 1, 3), (1, 2), 1, True, False, F32),  # per-dim stride, asym padding
    (1, 1, 16, 16, 31, 1, 15, 1, 1, True, False, F32),       # K=31 once
    (17, 2, 5, 6, 3, 1, 1, 1, 1, True, False, F16),          # small-map GEMM: two image blocks
]


def _case_id(case):
    n, c, h, w, k, s, p, d, m, b, cl, dt = case
    return (f"n{n}c{c}_{h}x{w}_k{k}_s{s}_p{p}_d{d}_m{m}" + ("" if b else "_nobias")
            + ("_nhwc" if cl else "_nchw") + "_" + str(dt).replace("torch.", ""))


def run_case(case, device=DEVICE, backend="triton"):
    n, c, h, w, k, stride, padding, dilation, mult, bias, channels_last, dtype = case
    x, wt, bt = make_inputs(n, c, h, w, k, mult, dtype, device, channels_last, bias)
    for t in (x, wt, bt):
        if t is not None:
            t.requires_grad_(True)
    with poisoned_outputs():
        y = dwconv.depthwise_conv2d(x, wt, bt, stride, padding, dilation, backend=backend)
        grad_out = torch.randn_like(y)
        y.backward(grad_out)
    args = dwconv._conv_args.check_and_resolve(x, wt, bt, stride, padding, dilation)
    y_ref, dx_ref, dw_ref, db_ref = reference_grads(x, wt, bt, grad_out, args.stride, args.padding,
                                                    args.dilation)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert y.dtype == dtype and y.is_contiguous(memory_format=fmt)
    assert x.grad.is_contiguous(memory_format=fmt) and wt.grad.dtype == dtype
    assert_close(y, y_ref, dtype, "forward")
    assert_close(x.grad, dx_ref, dtype, "dx")
    assert_close(wt.grad, dw_ref, dtype, "dw")
    if bt is not None:
        assert_close(bt.grad, db_ref, dtype, "db")


def run_ops(case, fwd="triton", dgrad="triton", wgrad="triton"):
    """y, dx and dw of one case from the three ops, each with its own plan (None: not run), against the float64
    reference."""
    n, c, h, w, k, stride, padding, dilation, mult, bias, channels_last, dtype = case
    x, wt, bt = make_inputs(n, c, h, w, k, mult, dtype, DEVICE, channels_last, bias)
    args = dwconv._conv_args.check_and_resolve(x, wt, bt, stride, padding, dilation)
    s, p, d = list(args.stride), list(args.padding), list(args.dilation)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    grad_out = torch.randn(args.output_shape, device=DEVICE, dtype=dtype).contiguous(memory_format=fmt)
    y_ref, dx_ref, dw_ref, _ = reference_grads(x, wt, bt, grad_out, args.stride, args.padding, args.dilation)
    name = f"{n}x{c}x{h}x{w} k{k} s{stride} d{dilation} m{mult}"
    with poisoned_outputs():
        if fwd is not None:
            assert_close(torch.ops.dwconv.depthwise_conv2d(x, wt, bt, s, p, d, fwd), y_ref, dtype, f"y {name} {fwd}")
        if dgrad is not None:
            dx = torch.ops.dwconv.dgrad(grad_out, wt, list(x.shape), s, p, d, dgrad)
            assert_close(dx, dx_ref, dtype, f"dx {name} {dgrad}")
        if wgrad is not None:
            dw = torch.ops.dwconv.wgrad(grad_out, x, list(wt.shape), s, p, d, wgrad)
            assert_close(dw, dw_ref, dtype, f"dw {name} {wgrad}")
    return args


@pytest.fixture(autouse=True)
def _triton_available():
    require_backend("triton", DEVICE)


def test_bounds_checker_catches_out_of_bounds_loads():
    """The checker itself: a kernel reading one element past its tensor fails, the in-bounds read passes."""
    import triton
    import triton.language as tl
    from dwconv.triton.common import INTERPRET
    if not INTERPRET:
        pytest.skip("the bounds checker hooks the interpreter")

    @triton.jit
    def copy_shifted(x_ptr, y_ptr, SHIFT: tl.constexpr):
        offs = tl.arange(0, 4)
        tl.store(y_ptr + offs, tl.load(x_ptr + offs + SHIFT))

    x, y = torch.randn(4), torch.empty(4)  # the suite's autouse fixture has the checker on (conftest.py)
    copy_shifted[(1,)](x, y, SHIFT=0)
    assert torch.equal(x, y)
    with pytest.raises(Exception, match="out-of-bounds load"):
        copy_shifted[(1,)](x, y, SHIFT=1)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_triton_matches_reference(case):
    run_case(case)


def test_interior_and_border_tiles():
    """A small named tile gives the direct kernels interior tiles (unmasked path, filter rows unrolled or
    looped) next to border tiles."""
    small = "triton:direct:C2,H2,W4,w1"
    run_case((1, 2, 7, 9, 3, 1, 1, 1, 2, True, False, F32), backend=small)   # NCHW: filter rows unrolled
    run_case((1, 4, 12, 18, 3, 2, 1, 1, 1, True, True, F32), backend=small)  # channels_last: filter rows looped


def test_int64_indexing(monkeypatch):
    """The 64-bit addressing variant (taken for tensors over 2^31 elements) computes the same result."""
    import importlib
    for name in ("fwd", "dgrad", "wgrad", "plane", "rows", "rows_wgrad"):
        module = importlib.import_module(f"dwconv.triton.{name}")
        monkeypatch.setattr(module, "needs_int64", lambda *tensors: True)
    run_case((2, 3, 9, 8, 5, 2, 2, 1, 2, True, True, F32))
    run_case((1, 2, 7, 7, 3, 1, 1, 2, 1, True, False, BF16))  # small-map GEMM kernels
    run_case((3, 2, 9, 8, 5, 1, 2, 1, 1, True, False, F32))   # row-streaming kernels
    run_case((3, 2, 9, 8, 5, 1, 2, 1, 1, True, True, F32))
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # the 64-bit workspace offsets of the deterministic wgrad
    try:
        run_case((2, 2, 7, 8, 3, 1, 1, 1, 1, False, True, F32))
    finally:
        torch.use_deterministic_algorithms(previous)


def _captured(call):
    from dwconv.triton import launcher
    with launcher.capture_launches() as launches:
        call()
    return launches


def _launched_kernels(call):
    return [launch.kernel.__name__ for launch in _captured(call)]


def test_row_streaming_routing():
    """Forward and wgrad with dilation 1 along H (any stride) and stride-1 dgrad with multiplier 1 go to
    rows.py / rows_wgrad.py (the cases above then test them); the rest goes to the direct kernels."""
    x, wt, bt = make_inputs(2, 3, 9, 9, 7, 1, F32, DEVICE)
    dy = torch.randn(2, 3, 9, 9, device=DEVICE)
    dy_strided = torch.randn(2, 3, 5, 5, device=DEVICE)

    def dgrad(grad, stride):
        return lambda: torch.ops.dwconv.dgrad(grad, wt, list(x.shape), stride, [3, 3, 3, 3], [1, 1], "triton")

    def wgrad(grad, stride, dilation=(1, 1)):
        return lambda: torch.ops.dwconv.wgrad(grad, x, list(wt.shape), stride, [3, 3, 3, 3], dilation, "triton")

    assert _launched_kernels(lambda: dwconv.depthwise_conv2d(x, wt, bt, 1, 3, backend="triton")) == ["rows_kernel"]
    assert _launched_kernels(lambda: dwconv.depthwise_conv2d(x, wt, bt, 2, 3, backend="triton")) == ["rows_kernel"]
    assert _launched_kernels(dgrad(dy, [1, 1])) == ["rows_kernel"]
    assert _launched_kernels(wgrad(dy, [1, 1])) == ["rows_wgrad_kernel", "wgrad_reduce_kernel"]
    assert _launched_kernels(wgrad(dy_strided, [2, 2])) == ["rows_wgrad_kernel", "wgrad_reduce_kernel"]
    assert _launched_kernels(dgrad(dy_strided, [2, 2])) == ["dgrad_kernel"]
    assert _launched_kernels(lambda: dwconv.depthwise_conv2d(x, wt, bt, 1, 6, 2, backend="triton")) == ["fwd_kernel"]
    assert _launched_kernels(wgrad(torch.randn(2, 3, 3, 9), [1, 1], (2, 1))) == ["wgrad_kernel", "wgrad_reduce_kernel"]


def _rows_plans(case, tile, window=1):
    """Plans forcing a row-streaming tile (a dict of its variant fields but H and WIN) on a case's three ops:
    weights in registers for kernels of at most 25 taps (NCHW), column windows of `window` where W has stride
    1 and dilation 1; dgrad goes to the default where the row kernels do not take it."""
    from dwconv.triton import rows
    n, c, h, w, k, stride, padding, dilation, mult, bias, channels_last, dtype = case
    kh, kw = (k, k) if isinstance(k, int) else k
    args = dwconv._conv_args.check_and_resolve(torch.empty(n, c, h, w), torch.empty(c * mult, 1, kh, kw), None,
                                               stride, padding, dilation)
    base = ",".join(f"{key}{value}" for key, value in tile.items() if key not in ("P", "w"))
    prefetch, warps = f",P{tile['P']}" if "P" in tile else "", f",w{tile.get('w', 1)}"
    hoist = int(not channels_last and kh * kw <= 25)

    def fwd_or_dgrad(windows):
        return f"triton:rows:{base},H{hoist},WIN{window if windows else 1}{prefetch}{warps}"
    return dict(fwd=fwd_or_dgrad(args.stride[1] == 1 and args.dilation[1] == 1),
                dgrad=fwd_or_dgrad(args.dilation[1] == 1) if rows.applies_dgrad(args) else "triton",
                wgrad=f"triton:rows:{base}{prefetch}{warps}")


# Forced row-streaming tiles over these cases: interior column tiles (unmasked) next to border ones, several
# row strips, partial image and channel blocks, weights held in registers (K = 5) and loaded per row
# (K = 11), a strided and dilated W axis, a strided H axis, the flipped-filter dgrad, wgrad over several batch
# slices (the last one partial for NCHW), half precision (18 wide: not plane.py).
ROW_TILE_CASES = [(3, 3, 10, 13, 5, 1, 2, 1, 1), (1, 1, 11, 20, 11, 1, (5, 4, 3, 6), 1, 1),
                  (1, 3, 7, 19, (3, 5), (1, 2), (1, 1, 4, 2), (1, 2), 2),
                  (3, 2, 13, 14, 5, (2, 1), 2, 1, 1),  # stride 2 along H: 3 rows open
                  (2, 3, 6, 11, 3, 1, (1, 2, 0, 4), (1, 3), 1)]  # dgrad, W dilation


def _row_tile(channels_last, rows=5, **fields):
    return {"N": 1 if channels_last else 2, "C": 2 if channels_last else 1, "W": 4, "R": rows, **fields}


@pytest.mark.parametrize("channels_last,window", [(False, 1), (False, 2), (True, 1)],
                         ids=["nchw", "nchw_windows_of_2", "nhwc"])
def test_row_streaming_tiles(channels_last, window):
    """Small row-streaming tiles named as plans over ROW_TILE_CASES and a half-precision case; NCHW also
    with column windows (WIN = 2: two groups of 2 columns per 4-wide tile) wherever W has stride 1 and
    dilation 1."""
    tile = _row_tile(channels_last)
    for case in ROW_TILE_CASES + [(1, 3, 9, 18, 5, 1, 2, 1, 1, True, channels_last, F16)]:
        case = case if len(case) == 12 else case + (True, channels_last, F32)
        plans = _rows_plans(case, tile, window)
        run_ops(case, **plans)
    # wgrad runs batch slices of BLOCK_N images (the last NCHW one partial), deterministic too: one workspace
    # row per (batch slice, strip, column tile).
    case = ROW_TILE_CASES[0] + (True, channels_last, F32)
    x, wt, _ = make_inputs(3, 3, 10, 13, 5, 1, F32, DEVICE, channels_last=channels_last, bias=False)
    grad_out = torch.randn(3, 3, 10, 13, device=DEVICE)
    launches = _captured(lambda: torch.ops.dwconv.wgrad(grad_out, x, list(wt.shape), [1, 1], [2, 2, 2, 2], [1, 1],
                                                        _rows_plans(case, tile)["wgrad"]))
    assert dict(zip(launches[0].kernel.arg_names, launches[0].args))["IMAGES_PER_PROGRAM"] == tile["N"] < 3
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with poisoned_outputs():
            dw = torch.ops.dwconv.wgrad(grad_out, x, list(wt.shape), [1, 1], [2, 2, 2, 2], [1, 1],
                                        _rows_plans(case, tile)["wgrad"])
    finally:
        torch.use_deterministic_algorithms(previous)
    _, _, dw_ref, _ = reference_grads(x, wt, None, grad_out, (1, 1), (2, 2, 2, 2), (1, 1))
    assert_close(dw, dw_ref, F32, "deterministic dw over batch slices")


@pytest.mark.parametrize("shape", [(32, 64, 56, 56, 7, 2), (128, 384, 14, 14, 11, 4), (1, 8, 7, 7, 7, 4),
                                   (2, 3, 9, 5, 3, 2)], ids=["56x56_k7", "14x14_k11", "batch1_7x7", "5_wide"])
def test_row_streaming_candidates_windows(shape):
    """NCHW with unit W stride and dilation: the heuristic tile takes column windows of its elements per
    thread, its PREFETCH twin follows, then its single-column twin; otherwise (channels_last, or a strided
    or dilated W) every candidate has WIN = 1. Every window divides the tile width."""
    from dwconv.triton import rows_tiles
    n, c, h, w, k, size = shape
    windowed = rows_tiles.candidates(False, n, c, h, w, (k, k), size, column_windows=True)
    first = windowed[0].kwargs
    per_thread = first["BLOCK_N"] * first["BLOCK_C"] * first["BLOCK_W"] // (32 * windowed[0].num_warps)
    assert first["WIN"] == min(max(per_thread, 1), first["BLOCK_W"])
    if first["WIN"] > 1:
        assert windowed[1].kwargs == {**first, "PREFETCH": True}
        assert windowed[2].kwargs == {**first, "WIN": 1} and windowed[2].num_warps == windowed[0].num_warps
    assert all(cfg.kwargs["BLOCK_W"] % cfg.kwargs["WIN"] == 0 for cfg in windowed)
    for channels_last, column_windows in ((False, False), (True, True)):
        cands = rows_tiles.candidates(channels_last, n, c, h, w, (k, k), size, column_windows=column_windows)
        assert all(cfg.kwargs["WIN"] == 1 for cfg in cands)


def test_row_streaming_windows_give_the_same_bits():
    """Column windows change which loads feed an accumulator, not its sum order: WIN = 2 and WIN = 1 tiles
    give bitwise the same forward and dgrad."""
    x, wt, bt = make_inputs(2, 3, 9, 13, 5, 1, F32, DEVICE)
    grad_out = torch.randn(2, 3, 9, 13, device=DEVICE)
    results = []
    for win in (1, 2):
        plan = f"triton:rows:N2,C1,W4,R5,H1,WIN{win},w1"
        y = torch.ops.dwconv.depthwise_conv2d(x, wt, bt, [1, 1], [2, 2, 2, 2], [1, 1], plan)
        dx = torch.ops.dwconv.dgrad(grad_out, wt, list(x.shape), [1, 1], [2, 2, 2, 2], [1, 1], plan)
        results.append((y, dx))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_row_streaming_wgrad_prefetch(monkeypatch, channels_last):
    """The wgrad variant that loads step o + 1 during step o: the cases of test_row_streaming_tiles (interior
    and border columns, several strips and batch slices, strided and dilated W, strided H), plus a strip
    whose last step prefetches past the map, and the 64-bit addressing variant."""
    from dwconv.triton import rows_wgrad
    tile = _row_tile(channels_last, P=1)
    cases = ROW_TILE_CASES[:4] + [(2, 2, 9, 8, 3, (4, 1), 0, 1, 1)]  # stride 4 > K: rows past the filter
    for case in [c + (True, channels_last, F32) for c in cases] + [(1, 3, 9, 18, 5, 1, 2, 1, 1, True,
                                                                    channels_last, F16)]:
        run_ops(case, fwd=None, dgrad=None, wgrad=_rows_plans(case, tile)["wgrad"])
    monkeypatch.setattr(rows_wgrad, "needs_int64", lambda *tensors: True)
    case = ROW_TILE_CASES[0] + (True, channels_last, F32)
    run_ops(case, fwd=None, dgrad=None, wgrad=_rows_plans(case, tile)["wgrad"])


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_row_streaming_prefetch_forward_and_dgrad(monkeypatch, channels_last):
    """The forward / dgrad variant that loads filter column 0 of step s + 1 during step s, on small named
    tiles (interior and border columns, several strips, weights in registers and not, strided and dilated W,
    strided H, stride past the kernel, the rotated dgrad; NCHW with column windows of 2 where W allows), the
    first case again with 64-bit addressing."""
    from dwconv.triton import rows
    tile = _row_tile(channels_last, P=1)
    cases = ROW_TILE_CASES[:4] + [(2, 2, 9, 8, 3, (4, 1), 0, 1, 1), ROW_TILE_CASES[4]]
    for case in [c + (True, channels_last, F32) for c in cases]:
        plans = _rows_plans(case, tile, window=1 if channels_last else 2)
        run_ops(case, fwd=plans["fwd"], dgrad=plans["dgrad"], wgrad=None)
    monkeypatch.setattr(rows, "needs_int64", lambda *tensors: True)
    case = ROW_TILE_CASES[0] + (True, channels_last, F32)
    plans = _rows_plans(case, tile, window=1 if channels_last else 2)
    run_ops(case, fwd=plans["fwd"], dgrad=plans["dgrad"], wgrad=None)


@pytest.mark.parametrize("prefetch", [False, True], ids=["plain", "prefetch"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_row_streaming_wgrad_non_finite_on_partial_tiles(channels_last, prefetch):
    """inf/NaN in x near the right and bottom edges, on named 4-wide tiles over 7 output columns: the lanes
    of the last column tile that have no dy column must not read x (an inf times their stand-in zero would be
    NaN in taps where PyTorch has a finite value), nor must strips meet rows past their dy rows."""
    tile = _row_tile(channels_last, rows=3, P=int(prefetch))
    plan = "triton:rows:" + ",".join(f"{key}{value}" for key, value in tile.items()) + ",w1"
    x, wt, _ = make_inputs(2, 3, 8, 9, 3, 1, F32, DEVICE, channels_last=channels_last, bias=False)
    x = x.detach().clone()
    x[0, 0, 2, 8] = float("inf")    # last column: only the lanes of output columns 6 and 7 (missing) reach it
    x[1, 1, 7, 7] = float("-inf")   # last row
    x[0, 2, 4, 8] = float("nan")
    x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    grad_out = torch.randn(2, 3, 8, 7, device=DEVICE)  # 3x3 filter, padding (1, 1, 0, 0): 8x7 outputs
    dw = torch.ops.dwconv.wgrad(grad_out, x, list(wt.shape), [1, 1], [1, 1, 0, 0], [1, 1], plan)
    _, _, dw_ref, _ = reference_grads(x, wt, None, grad_out, (1, 1), (1, 1, 0, 0), (1, 1))
    dw_ref = dw_ref.to(dw.device)
    assert torch.isfinite(dw_ref).any() and not torch.isfinite(dw_ref).all()
    assert torch.equal(torch.isnan(dw), torch.isnan(dw_ref))
    assert torch.equal(torch.isposinf(dw), torch.isposinf(dw_ref))
    assert torch.equal(torch.isneginf(dw), torch.isneginf(dw_ref))
    finite = torch.isfinite(dw_ref)
    assert_close(dw[finite], dw_ref[finite], F32, "finite taps")


def test_small_map_direct_kernels():
    """With the direct family named, half-precision small maps run the direct kernels (not the small-map
    GEMM)."""
    run_case((1, 3, 7, 7, 7, 1, 3, 1, 2, True, True, BF16), backend="triton:direct")


def test_deterministic_wgrad():
    """With deterministic algorithms on, dw comes from the two-pass workspace: correct and bitwise repeatable."""
    n, c, h, w, k = 3, 4, 14, 14, 7
    x, wt, _ = make_inputs(n, c, h, w, k, 1, F32, DEVICE, channels_last=True, bias=False)
    grad_out = torch.randn(n, c, h, w, device=DEVICE).contiguous(memory_format=torch.channels_last)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with poisoned_outputs():
            dws = [torch.ops.dwconv.wgrad(grad_out, x, list(wt.shape), [1, 1], [3, 3, 3, 3], [1, 1], "triton")
                   for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(previous)
    _, _, dw_ref, _ = reference_grads(x, wt, None, grad_out, (1, 1), (3, 3, 3, 3), (1, 1))
    assert_close(dws[0], dw_ref, F32, "deterministic dw")
    assert torch.equal(dws[0], dws[1])


def test_float64_accumulates_in_float64():
    """fp64 inputs accumulate in fp64: the fp64 tolerance (1e-10) fails with fp32 accumulation."""
    x, wt, bt = make_inputs(2, 3, 8, 9, 5, 2, torch.float64, DEVICE)
    y = dwconv.depthwise_conv2d(x, wt, bt, 1, 2, backend="triton")
    y_ref = torch.nn.functional.conv2d(x.cpu(), wt.cpu(), bt.cpu(), 1, 2, groups=3)
    assert_close(y, y_ref, torch.float64, "fp64 forward")


def test_availability_reasons():
    from dwconv.backends.triton import TritonBackend
    from dwconv.triton.common import INTERPRET
    backend = TritonBackend()
    assert backend.unavailable_reason(torch.device("meta")) is not None
    cpu_reason = backend.unavailable_reason(torch.device("cpu"))
    assert (cpu_reason is None) == INTERPRET
    if not INTERPRET:
        assert "TRITON_INTERPRET" in cpu_reason


def test_row_streaming_wgrad_non_finite_like_pytorch():
    """An inf or NaN in x reaches only the taps that meet it in PyTorch: not the taps whose dy rows or columns
    lie outside the map (the row kernels must not multiply it by a stand-in zero)."""
    x, wt, _ = make_inputs(2, 3, 9, 10, 5, 1, F32, DEVICE, bias=False)
    x = x.detach().clone()
    x[0, 0, 0, 0] = float("inf")
    x[1, 2, 8, 9] = float("-inf")
    x[0, 1, 4, 0] = float("nan")
    grad_out = torch.randn(2, 3, 7, 8, device=DEVICE)  # padding 1 on a 5x5 filter: 7x8 outputs
    assert _launched_kernels(lambda: torch.ops.dwconv.wgrad(grad_out, x, list(wt.shape), [1, 1], [1, 1, 1, 1],
                                                            [1, 1], "triton"))[0] == "rows_wgrad_kernel"
    dw = torch.ops.dwconv.wgrad(grad_out, x, list(wt.shape), [1, 1], [1, 1, 1, 1], [1, 1], "triton")
    _, _, dw_ref, _ = reference_grads(x, wt, None, grad_out, (1, 1), (1, 1, 1, 1), (1, 1))
    dw_ref = dw_ref.to(dw.device)
    assert torch.equal(torch.isnan(dw), torch.isnan(dw_ref))
    assert torch.equal(torch.isposinf(dw), torch.isposinf(dw_ref))
    assert torch.equal(torch.isneginf(dw), torch.isneginf(dw_ref))
    finite = torch.isfinite(dw_ref)
    assert_close(dw[finite], dw_ref[finite], F32, "finite taps")
