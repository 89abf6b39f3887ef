"""The CPU backend's native ops (csrc/cpu) called directly: parity with the float64 reference on a grid of
shapes, layouts and dtypes (outputs NaN-poisoned first), float64 gradcheck, thread-count independence and
run-to-run bit-identical weight gradients."""
import pytest
import torch

import dwconv._C  # noqa: F401  (registers torch.ops.dwconv.native_*)
from dwconv.backends.native import BF16_ONLY_CPU_FAMILIES
from utils import TOLERANCE, assert_close, make_inputs, reference_grads

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]

# (N, C, H, W, (KH, KW), multiplier, stride, padding (top, bottom, left, right), dilation)
CASES = [
    (2, 8, 14, 14, (11, 11), 1, (1, 1), (5, 5, 5, 5), (1, 1)),    # Robust-ResNet layer, small batch
    (1, 16, 7, 7, (11, 11), 1, (1, 1), (5, 5, 5, 5), (1, 1)),     # kernel wider than the map
    (2, 12, 9, 13, (7, 7), 1, (1, 1), (3, 3, 3, 3), (1, 1)),      # channels not a multiple of 8
    (1, 5, 14, 14, (11, 11), 1, (2, 2), (5, 5, 5, 5), (1, 1)),    # stride 2
    (2, 3, 10, 11, (5, 3), 2, (1, 1), (2, 1, 0, 3), (1, 1)),      # multiplier 2, asymmetric pad, KH != KW
    (1, 4, 12, 15, (3, 3), 3, (2, 3), (1, 2, 3, 0), (2, 3)),      # multiplier 3, odd strides, dilation
    (2, 9, 11, 10, (7, 5), 1, (1, 1), (6, 0, 1, 4), (1, 2)),      # dilation along W only
    (1, 16, 8, 8, (1, 1), 1, (1, 1), (0, 0, 0, 0), (1, 1)),       # 1x1 kernel
    (1, 17, 12, 27, (13, 13), 1, (1, 1), (6, 6, 6, 6), (1, 1)),   # wide map (4 register blocks), K=13
    (1, 6, 6, 6, (3, 3), 1, (3, 3), (0, 0, 0, 0), (1, 1)),        # stride = kernel
    (1, 2, 5, 5, (3, 3), 1, (1, 1), (4, 4, 4, 4), (1, 1)),        # padding larger than the kernel reach
    # N >= 5 on small maps where most taps read padding: the batched path (images per register block)
    (11, 12, 7, 7, (11, 11), 1, (1, 1), (5, 5, 5, 5), (1, 1)),    # two image groups (6 + 5), channel tail
    (5, 4, 5, 5, (7, 7), 2, (1, 1), (3, 3, 3, 3), (1, 1)),        # multiplier 2 (dgrad sums two sources)
    (5, 3, 6, 5, (5, 5), 2, (1, 1), (4, 1, 2, 3), (1, 1)),        # asymmetric padding (dgrad windowed)
    (5, 8, 6, 6, (5, 5), 1, (2, 2), (4, 4, 4, 4), (2, 2)),        # strided, dilated (dgrad windowed)
    # strided dgrad by stride phases: phases with no taps or no pixels, several register blocks and bands
    (1, 5, 13, 11, (7, 7), 1, (3, 3), (3, 3, 3, 3), (1, 1)),      # stride 3
    (2, 9, 10, 9, (5, 7), 1, (2, 1), (1, 3, 2, 4), (1, 1)),       # stride (2, 1), asymmetric padding
    (2, 6, 12, 11, (3, 5), 1, (2, 2), (2, 3, 4, 1), (3, 2)),      # dilation 3 (rows) / 2 (cols: half the phases empty)
    (2, 5, 15, 13, (11, 11), 2, (2, 2), (5, 5, 5, 5), (1, 1)),    # multiplier 2, stride 2, odd sizes, K=11
    (2, 9, 1, 5, (3, 3), 1, (2, 2), (1, 1, 1, 1), (1, 1)),        # one row: phase rh = 1 has no pixels
    (1, 8, 2, 3, (5, 5), 1, (3, 3), (2, 2, 2, 2), (1, 1)),        # map smaller than the stride
    (1, 8, 7, 6, (1, 1), 1, (2, 2), (0, 0, 0, 0), (1, 1)),        # 1x1 kernel, stride 2: odd pixels get zeros
    (1, 4, 23, 33, (11, 11), 1, (4, 4), (5, 2, 5, 6), (1, 1)),    # stride 4
    (1, 3, 9, 40, (7, 7), 1, (2, 2), (3, 3, 3, 3), (1, 1)),       # phase rows 20 wide: 3 register blocks
    (1, 5, 75, 70, (7, 7), 1, (2, 2), (3, 3, 3, 3), (1, 1)),      # several bands of row groups
    (1, 8, 14, 14, (4, 6), 1, (2, 2), (1, 2, 3, 2), (1, 1)),      # even kernel, asymmetric "same"-like padding
    # NCHW planes with the lanes along W (AVX-512): two row blocks, three 16-column segments, dgrad summing two
    # sources; dilation along W with asymmetric padding
    (2, 6, 20, 35, (7, 7), 2, (1, 1), (3, 3, 3, 3), (1, 1)),
    (1, 4, 18, 16, (5, 5), 1, (1, 1), (1, 3, 4, 0), (1, 2)),
    # bf16 pairs (avx512bf16): an even filter width on the planes (no unpaired column); channels_last rows with
    # dilation 2 along H (the pair's second row DH rows down)
    (2, 5, 12, 20, (5, 4), 1, (1, 1), (2, 2, 2, 1), (1, 1)),
    (2, 17, 12, 16, (5, 5), 1, (1, 1), (4, 4, 2, 2), (2, 1)),
    # NCHW planes as whole columns (AVX-512, output rows >= 4 x KH, one source): three segments, the last 5 wide;
    # exactly 4 x KH rows with no padding along H; KH != KW with dilation along W and asymmetric padding; K=13
    (2, 5, 30, 37, (7, 7), 1, (1, 1), (3, 3, 3, 3), (1, 1)),
    (1, 2, 24, 14, (5, 5), 1, (1, 1), (0, 0, 2, 2), (1, 1)),
    (1, 3, 22, 16, (3, 5), 1, (1, 1), (0, 2, 1, 3), (1, 2)),
    (1, 2, 53, 16, (13, 13), 1, (1, 1), (6, 6, 6, 6), (1, 1)),
    # columns with a multiplier (forward only: dgrad sums two sources on the blocks); padding past the filter's
    # reach at the top (output rows with no taps, and a dgrad whose window starts inside the map)
    (1, 3, 30, 28, (7, 7), 2, (1, 1), (3, 3, 3, 3), (1, 1)),
    (1, 2, 24, 14, (5, 5), 1, (1, 1), (7, 6, 2, 2), (1, 1)),
    # bf16 channels_last wgrad pairs gathered straight from the pixels (full blocks of 16 channels): padding on
    # every side; none on the left (the row's first pixel read); a partial block after a full one is above
    (2, 32, 14, 14, (11, 11), 1, (1, 1), (5, 5, 5, 5), (1, 1)),
    (1, 16, 12, 13, (5, 5), 1, (1, 1), (1, 3, 0, 4), (1, 1)),
    (1, 8, 12, 12, (5, 5), 2, (1, 1), (2, 2, 2, 2), (1, 1)),      # multiplier 2, one full block (NCHW pairs)
    (1, 16, 60, 12, (3, 3), 1, (1, 1), (1, 1, 1, 1), (1, 1)),     # tall map: bands starting inside the map
    # bf16 wgrad on rows under 10 outputs: pairs of images (512 channels: all three images in one chunk, the
    # third alone)
    (3, 512, 7, 7, (5, 5), 1, (1, 1), (2, 2, 2, 2), (1, 1)),
    # bf16 NCHW planes of 10-14 rows two at a time (plane_block_dual): an odd number of planes (the last alone),
    # odd and even filter widths
    (1, 3, 13, 13, (7, 7), 1, (1, 1), (3, 3, 3, 3), (1, 1)),
    (1, 5, 14, 12, (5, 6), 1, (1, 1), (2, 2, 3, 2), (1, 1)),
    # bf16 NCHW wgrad pairs gathered by rows of 16 planes (rows of 16 columns and more), 16-column chunks and a
    # partial one (45 = 16 + 16 + 13), odd width
    (1, 16, 40, 45, (5, 5), 1, (1, 1), (2, 2, 2, 2), (1, 1)),
]


# The x86 families beside "portable", best first, and the CPU features each needs (/proc/cpuinfo flag names).
AVX512 = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq")
X86_FAMILIES = {"avx512bf16": AVX512 + ("avx512_bf16",), "avx512": AVX512, "avx2": ("avx2", "fma")}
BF16_ONLY = BF16_ONLY_CPU_FAMILIES  # families that run bfloat16 only
FAMILIES = tuple(torch.ops.dwconv.cpu_families())


def requires_family(family):
    return pytest.mark.skipif(family not in FAMILIES, reason=f"this CPU cannot run the {family} kernels "
                                                              f"(it runs {', '.join(FAMILIES)})")


def _ids(case):
    n, c, h, w, k, m, s, p, d = case
    return f"n{n}c{c}_{h}x{w}_k{k[0]}x{k[1]}_m{m}_s{s[0]}{s[1]}_p{''.join(map(str, p))}_d{d[0]}{d[1]}"


def _out_size(h, w, k, s, p, d):
    ho = (h + p[0] + p[1] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    wo = (w + p[2] + p[3] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    return ho, wo


def _poisoned(shape, dtype, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(shape, dtype=dtype, memory_format=fmt).fill_(float("nan"))


def run_native(x, w, b, dy, stride, padding, dilation, family=""):
    """(y, dx, dw) from the native CPU ops (kernel family: "" = the best this CPU has) into NaN-poisoned outputs
    in x's layout."""
    cl = not x.is_contiguous()
    n, c, h, wd = x.shape
    y = _poisoned(dy.shape, x.dtype, cl)
    torch.ops.dwconv.native_fwd(x, w, b, stride, padding, dilation, family, 0, y)
    dx = _poisoned(x.shape, x.dtype, cl)
    torch.ops.dwconv.native_dgrad(dy, w, stride, padding, dilation, family, 0, dx)
    dw = _poisoned(w.shape, torch.float64 if x.dtype == torch.float64 else torch.float32, False)
    torch.ops.dwconv.native_wgrad(dy, x, stride, padding, dilation, True, family, 0, dw)
    return y, dx, dw


def _random_grad_out(x, w, stride, padding, dilation, seed):
    n, c, h, wd = x.shape
    ho, wo = _out_size(h, wd, tuple(w.shape[2:]), stride, padding, dilation)
    g = torch.Generator().manual_seed(seed)
    dy = torch.randn(n, w.shape[0], ho, wo, generator=g).to(x.dtype)
    return dy.contiguous(memory_format=torch.channels_last) if not x.is_contiguous() else dy


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_parity(case, dtype, channels_last, family=""):
    n, c, h, wd, k, m, stride, padding, dilation = case
    x, w, b = make_inputs(n, c, h, wd, k, m, dtype=dtype, channels_last=channels_last, seed=hash(case) % 1000)
    dy = _random_grad_out(x, w, stride, padding, dilation, seed=7)
    y, dx, dw = run_native(x, w, b, dy, stride, padding, dilation, family)
    ry, rdx, rdw, _ = reference_grads(x, w, b, dy, stride, padding, dilation)
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    # bf16 / fp16 outputs carry one rounding; dw (fp32 accumulation) is compared at the input rounding's level.
    assert_close(y, ry, dtype, "y")
    assert_close(dx, rdx, dtype, "dx")
    assert_close(dw, rdw, dtype, "dw")


@requires_family("avx512")
@requires_family("avx2")
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_avx512_matches_avx2(case):
    """The AVX-512 kernels (16 fp32 / 8 fp64 lanes per channel block, wider register blocks) sum every output's
    taps in the AVX2 kernels' order with the same fused multiply-adds, and round bf16 / fp16 results the same
    way: y, dx and dw are bit-identical, every dtype, both layouts (test_parity checks the best family, here
    avx512, against the float64 reference)."""
    n, c, h, wd, k, m, stride, padding, dilation = case
    for dtype in DTYPES:
        for channels_last in (False, True):
            x, w, b = make_inputs(n, c, h, wd, k, m, dtype=dtype, channels_last=channels_last, seed=hash(case) % 997)
            dy = _random_grad_out(x, w, stride, padding, dilation, seed=8)
            wide = run_native(x, w, b, dy, stride, padding, dilation, "avx512")
            narrow = run_native(x, w, b, dy, stride, padding, dilation, "avx2")
            for name, a, e in zip(("y", "dx", "dw"), wide, narrow):
                assert torch.equal(a, e), f"{name} differs from avx2 ({dtype}, channels_last={channels_last})"


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "portable"] or ["none"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_bf16_every_family(case, channels_last, family):
    """bfloat16 on every x86 family against the float64 reference: test_parity runs only the best one (avx512bf16
    where the CPU has AVX512_BF16: vdpbf16ps), so the FMA kernels that other CPUs run for bf16 are checked here."""
    if family == "none":
        pytest.skip("no x86 kernel families on this CPU")
    test_parity(case, torch.bfloat16, channels_last, family=family)


@requires_family("avx512bf16")
@requires_family("avx512")
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_bf16_pairs_match_fma_kernels(case, channels_last):
    """Element by element, the vdpbf16ps kernels agree with the FMA kernels of avx512 on bf16 (both sum exact
    products in fp32, in another order): y and dx within one bf16 rounding step, or 1e-5 of their largest element
    (an output that cancels to almost zero keeps the fp32 sums' order difference), dw within 1e-5 of its largest
    element. A wrong tap at a border output would pass the global relative-norm check; not this one."""
    n, c, h, wd, k, m, stride, padding, dilation = case
    x, w, b = make_inputs(n, c, h, wd, k, m, dtype=torch.bfloat16, channels_last=channels_last, seed=hash(case) % 991)
    dy = _random_grad_out(x, w, stride, padding, dilation, seed=9)
    dot = run_native(x, w, b, dy, stride, padding, dilation, "avx512bf16")
    fma = run_native(x, w, b, dy, stride, padding, dilation, "avx512")
    for name, a, e in zip(("y", "dx"), dot[:2], fma[:2]):
        a, e = a.float(), e.float()
        assert ((a - e).abs() <= e.abs() * 2.0 ** -7 + 1e-5 * e.abs().max()).all(), \
            f"{name} differs from avx512 beyond one bf16 step"
    assert ((dot[2] - fma[2]).abs() <= 1e-5 * fma[2].abs().max()).all(), "dw differs from avx512"


def _assert_nonfinite_like(names, got, want):
    """NaN and Inf (with their signs) in exactly the places the portable build puts them."""
    for name, a, e in zip(names, got, want):
        a, e = a.float(), e.float()
        assert torch.equal(a.isnan(), e.isnan()), f"{name}: NaN where the portable build has none (or the reverse)"
        assert torch.equal(a.isinf(), e.isinf()) and torch.equal(a[a.isinf()], e[e.isinf()]), f"{name}: Inf differs"


@requires_family("avx512bf16")
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", [(2, 3, 14, 14, (7, 7), 1, (1, 1), (3, 3, 3, 3), (1, 1)),
                                  (6, 3, 7, 7, (11, 11), 1, (1, 1), (5, 5, 5, 5), (1, 1)),
                                  (2, 3, 30, 28, (7, 7), 1, (1, 1), (3, 3, 3, 3), (1, 1)),
                                  (6, 3, 7, 7, (9, 9), 1, (1, 1), (4, 4, 4, 4), (1, 1))],
                         ids=["rows_planes", "batched", "plane_columns", "batched_k9"])
def test_bf16_pairs_keep_inf_outside_the_filter_out(case, channels_last):
    """An odd filter pairs its last column (planes) or row (channels_last) with a zero weight, and wgrad an odd
    last output with zero: the other half of those pairs is masked off, so an Inf that no real tap reads makes no
    NaN. Inf and NaN land where the portable build puts them."""
    n, c, h, wd, k, m, stride, padding, dilation = case
    x, w, b = make_inputs(n, c, h, wd, k, m, dtype=torch.bfloat16, channels_last=channels_last, seed=4)
    dy = _random_grad_out(x, w, stride, padding, dilation, seed=5)
    with torch.no_grad():
        x[0, 0, 3, wd // 2] = float("inf")  # an interior pixel
        x[0, 1, :, wd - 1] = float("inf")  # the last column: right of the filter for the outputs left of it
        x[0, 2, :, wd - 2] = float("inf")  # 7x7 K9: right of output 0's five taps (an odd last column pair)
        x[1 % n, 2, h - 1, :] = -float("inf")  # the last row
        dy[0, 1, :, wd - 1] = float("inf")  # the last output column (an odd wgrad tail)
    got = run_native(x, w, b, dy, stride, padding, dilation, "avx512bf16")
    want = run_native(x, w, b, dy, stride, padding, dilation, "portable")
    _assert_nonfinite_like(("y", "dx", "dw"), got, want)


@pytest.mark.parametrize("family, dtype", [("avx512", torch.float32), ("avx512", torch.bfloat16),
                                           ("avx512", torch.float16), ("avx512bf16", torch.bfloat16)],
                         ids=["avx512-float32", "avx512-bfloat16", "avx512-float16", "avx512bf16-bfloat16"])
@pytest.mark.parametrize("case", [(2, 3, 30, 28, (7, 7), 1, (1, 1), (3, 3, 3, 3), (1, 1)),
                                  (1, 2, 24, 14, (5, 5), 1, (1, 1), (0, 0, 2, 2), (1, 1))],
                         ids=["same", "valid_rows"])
def test_plane_columns_keep_inf_where_portable_does(case, family, dtype):
    """The NCHW column kernels (FMA, and vdpbf16ps from pairs planes) multiply input rows near the map's top and
    bottom into registers of output rows that do not exist (cleared before their row starts, or never stored):
    an Inf there must reach no real output. Inf and NaN land where the portable build puts them."""
    if family not in FAMILIES:
        pytest.skip(f"this CPU cannot run the {family} kernels (it runs {', '.join(FAMILIES)})")
    n, c, h, wd, k, m, stride, padding, dilation = case
    x, w, b = make_inputs(n, c, h, wd, k, m, dtype=dtype, channels_last=False, seed=6)
    dy = _random_grad_out(x, w, stride, padding, dilation, seed=9)
    with torch.no_grad():
        x[0, 0, 0, :] = float("inf")  # the first row: products for output rows above the map
        x[0, 1, 1, 3] = -float("inf")
        x[n - 1, 2 % c, h - 1, :] = float("inf")  # the last row: products for output rows below it
        x[n - 1, 0, h // 2, wd - 1] = float("inf")  # an interior row, the last column
        dy[0, 0, 0, :] = float("inf")
        dy[n - 1, 1, -1, 2] = float("inf")
    got = run_native(x, w, b, dy, stride, padding, dilation, family)
    want = run_native(x, w, b, dy, stride, padding, dilation, "portable")
    _assert_nonfinite_like(("y", "dx"), got[:2], want[:2])
    for name, a, e in zip(("y", "dx"), got[:2], want[:2]):
        finite = a.isfinite()
        assert_close(a[finite], e[finite], dtype, name)


@requires_family("avx512bf16")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=["float32", "float64", "float16"])
def test_bf16_only_family_refuses_other_dtypes(dtype):
    x, w, b = make_inputs(1, 4, 6, 6, 3, dtype=dtype, seed=0)
    y = torch.empty(1, 4, 6, 6, dtype=dtype)
    with pytest.raises(RuntimeError, match="avx512bf16 kernels run bfloat16 only"):
        torch.ops.dwconv.native_fwd(x, w, b, [1, 1], [1, 1, 1, 1], [1, 1], "avx512bf16", 0, y)


def test_families_follow_cpu_features():
    """cpu_families() lists an x86 family exactly where /proc/cpuinfo shows every feature it needs, best first,
    and "portable" last."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags on this system")
    expected = [name for name, needs in X86_FAMILIES.items() if set(needs) <= set(flags)] + ["portable"]
    assert list(FAMILIES) == expected


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("case", [CASES[2], CASES[5], CASES[12], CASES[18]], ids=_ids)
def test_portable_kernels(case, dtype):
    """The build for CPUs without AVX2 (family "portable" forces it here), NCHW and channels_last."""
    for channels_last in (False, True):
        test_parity(case, dtype, channels_last, family="portable")


def test_gradcheck_float64():
    """The native ops as an autograd function, checked numerically in float64."""
    stride, padding, dilation = (2, 1), (2, 1, 0, 2), (1, 2)

    class NativeConv(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w, b):
            ctx.save_for_backward(x, w)
            n, c, h, wd = x.shape
            ho, wo = _out_size(h, wd, tuple(w.shape[2:]), stride, padding, dilation)
            y = torch.empty(n, w.shape[0], ho, wo, dtype=x.dtype)
            torch.ops.dwconv.native_fwd(x, w, b, stride, padding, dilation, "", 0, y)
            return y

        @staticmethod
        def backward(ctx, dy):
            x, w = ctx.saved_tensors
            dy = dy.contiguous()
            dx = torch.empty_like(x)
            torch.ops.dwconv.native_dgrad(dy, w, stride, padding, dilation, "", 0, dx)
            dw = torch.empty_like(w)
            torch.ops.dwconv.native_wgrad(dy, x, stride, padding, dilation, True, "", 0, dw)
            return dx, dw, dy.sum((0, 2, 3))

    x, w, b = make_inputs(2, 3, 7, 8, (3, 4), 2, dtype=torch.float64, seed=1)
    for t in (x, w, b):
        t.requires_grad_(True)
    assert torch.autograd.gradcheck(NativeConv.apply, (x, w, b))


@pytest.mark.parametrize("n, c, size, s", [(4, 24, 14, 1), (11, 20, 7, 1), (4, 28, 14, 2)],
                         ids=["windowed", "batched", "strided"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_thread_count_independence(dtype, channels_last, n, c, size, s):
    """1 and 2 threads: y, dx and dw are bit-identical (every output element is computed by one work item, whose
    split depends on the shape only; channel counts with a partial block and, in NHWC, a partial group of
    blocks per work item; stride 2: dgrad by stride phases); dw repeats bit-identically."""
    stride, padding, dilation = (s, s), (5, 5, 5, 5), (1, 1)
    x, w, b = make_inputs(n, c, size, size, 11, dtype=dtype, channels_last=channels_last, seed=3)
    dy = _random_grad_out(x, w, stride, padding, dilation, seed=4)
    old = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 2):
            torch.set_num_threads(threads)
            results.append(run_native(x, w, b, dy, stride, padding, dilation))
    finally:
        torch.set_num_threads(old)
    (y1, dx1, dw1), (y2, dx2, dw2), (_, _, dw3) = results
    assert torch.equal(y2, y1), "y differs between 1 and 2 threads"
    assert torch.equal(dx2, dx1), "dx differs between 1 and 2 threads"
    assert torch.equal(dw2, dw3), "dw differs between two identical runs"
    assert torch.equal(dw1, dw2), "dw differs between 1 and 2 threads"


# dtype: mantissa bits, the exponent of each of the 20 channels (subnormal results to overflow), special bit
# patterns (signalling NaN with payload, negative NaN, +-inf, smallest +-subnormal)
_ROUNDING = {
    torch.bfloat16: (7, [-133, -130, -127, -126, -120, -60, -10, -3, -1, 0, 0, 1, 2, 5, 20, 60, 100, 126, 127, 127],
                     [0x7F81, -0x0041, 0x7F80, -0x0080, 0x0001, -0x7FFF]),
    torch.float16: (10, [-24, -23, -20, -15, -14, -13, -10, -5, -1, 0, 0, 1, 2, 4, 8, 10, 12, 14, 15, 15],
                    [0x7C01, -0x0201, 0x7C00, -0x0400, 0x0001, -0x7FFF]),
}


@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("shape", [(2, 20, 14, 14, 7), (6, 20, 7, 7, 11), (1, 20, 40, 40, 7), (2, 20, 9, 9, 1)],
                         ids=["rows_planes", "batched", "plane_columns", "k1"])
def test_bf16_subnormal_results_round_like_pytorch(shape, channels_last):
    """Results in bfloat16's subnormal range are rounded, not flushed, on every path that stores bf16 (the
    avx512bf16 kernels round with VCVTNEPS2BF16, which flushes them, and fall back to the integer rounding for a
    vector holding one). A filter that is 1 at its centre makes y = x + b exactly in fp32; x just above the
    smallest normal and b = -2^-126 put most results below it: bit for bit PyTorch's rounding of x + b."""
    n, c, h, w, k = shape
    g = torch.Generator().manual_seed(12)
    tiny = torch.finfo(torch.bfloat16).tiny  # 2^-126
    x = (tiny * (1 + torch.randint(0, 256, (n, c, h, w), generator=g) / 128.0)).to(torch.bfloat16)  # exact
    x = x * torch.where(torch.rand(n, c, h, w, generator=g) < 0.5, -1.0, 1.0).to(torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    b = (torch.where(torch.arange(c) % 2 == 0, -tiny, tiny)).to(torch.bfloat16)
    wt = torch.zeros(c, 1, k, k, dtype=torch.bfloat16)
    wt[:, :, k // 2, k // 2] = 1
    expected = (x.float() + b.float().view(1, c, 1, 1)).to(torch.bfloat16)
    subnormal = (expected.float().abs() < tiny) & (expected.float() != 0)
    assert subnormal.float().mean() > 0.2
    for isa in [f for f in FAMILIES if f != "portable"] + ["portable"]:
        y = _poisoned(x.shape, x.dtype, channels_last)
        torch.ops.dwconv.native_fwd(x, wt, b, (1, 1), (k // 2,) * 4, (1, 1), isa, 0, y)
        assert torch.equal(y.view(torch.int16), expected.view(torch.int16)), f"{isa}: y differs from PyTorch's"


@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_half_rounding_matches_portable(dtype, channels_last):
    """bfloat16 / float16 results: the vector conversion of the AVX2 and AVX-512 builds' result stores rounds
    like the portable build's scalar one, bit for bit: ties to even, NaN (with payload), infinities, overflow,
    subnormals; channels_last: full and partial channel blocks (20 channels); NCHW: runs of 8 pixels and the
    tail of each 42-pixel plane. A 1x1 filter of ones makes y = x + b and dx = dy exactly in fp32. The avx512bf16
    kernels' vdpbf16ps reads subnormal bf16 inputs as zero (the instruction's rule; their other paths do not):
    each of their results is the portable build's for x or for x with its subnormals set to zero."""
    bits, exponents, special = _ROUNDING[dtype]
    g = torch.Generator().manual_seed(5)
    n, c, h, w = 2, 20, 6, 7
    base = 1 + torch.randint(0, 2 ** bits, (n, c, h, w), generator=g).float() * 2.0 ** -bits  # exact in dtype
    base[:, -1] = 2 - 2.0 ** -bits  # the largest finite value in the last channel: x + b overflows
    sign = torch.where(torch.rand(n, c, h, w, generator=g) < 0.5, -1.0, 1.0)
    scale = 2.0 ** torch.tensor(exponents, dtype=torch.float)
    x = (sign * base * scale.view(1, c, 1, 1)).to(dtype)
    x.view(-1).view(torch.int16)[:6] = torch.tensor(special, dtype=torch.int16)
    x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    b = (torch.tensor([1.0, -1.0, 0.0, 1.0] * 5) * scale * 2.0 ** -(bits + 1)).to(dtype)  # half an ulp: ties
    wt = torch.ones(c, 1, 1, 1, dtype=dtype)
    subnormal = (x.float().abs() < torch.finfo(dtype).tiny) & (x.float() != 0)
    flushed = torch.where(subnormal, torch.zeros_like(x), x)

    def run(isa, x):
        y, dx = _poisoned(x.shape, x.dtype, channels_last), _poisoned(x.shape, x.dtype, channels_last)
        torch.ops.dwconv.native_fwd(x, wt, b, (1, 1), (0, 0, 0, 0), (1, 1), isa, 0, y)
        torch.ops.dwconv.native_dgrad(x, wt, (1, 1), (0, 0, 0, 0), (1, 1), isa, 0, dx)
        return y.view(torch.int16), dx.view(torch.int16)

    vector_families = [f for f in FAMILIES if f != "portable" and (dtype == torch.bfloat16 or f not in BF16_ONLY)]
    if not vector_families:
        pytest.skip("this CPU runs the portable kernels only")
    results = {isa: run(isa, x) for isa in vector_families + ["portable"]}
    assert subnormal.any()
    exact, zeroed = results["portable"], run("portable", flushed)
    for isa in vector_families:
        for i, name in enumerate(("y", "dx")):
            same = results[isa][i] == exact[i]
            if isa in BF16_ONLY:
                same |= results[isa][i] == zeroed[i]
            assert same.all(), f"{name} differs between the {isa} and portable builds"
    expected = (x.float() + b.float().view(1, c, 1, 1)).to(dtype)  # PyTorch: round to nearest even
    y = results["portable"][0].view(dtype)
    valid = ~expected.float().isnan()
    assert torch.equal(y[valid].view(torch.int16), expected[valid].view(torch.int16))
    assert y.float().isnan().sum() == 2 and results["portable"][1].view(dtype).float().isnan().sum() == 2


def _rule_backend(op, x, w, stride, padding):
    """The backend of the plan "auto"'s fallback rule (dispatch table off) picks for one call."""
    from dwconv import config, dispatch
    from dwconv._conv_args import check_and_resolve

    with config.override(dispatch_table=False):
        return dispatch.plan_for("auto", op, x, check_and_resolve(x, w, None, stride, padding, 1)).backend


def test_auto_picks_cpu_for_strided_dgrad():
    """channels_last 3x3 stays with PyTorch, except the strided dgrad (docs/perf_cpu.md v11)."""
    x = torch.randn(2, 8, 28, 28).contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, 1, 3, 3)
    for stride, op, expected in [(2, "dgrad", "cpu"), ((2, 1), "dgrad", "cpu"), (1, "dgrad", "torch"),
                                 (2, "fwd", "torch"), (2, "wgrad", "torch")]:
        assert _rule_backend(op, x, w, stride, 1) == expected, (stride, op)
    assert _rule_backend("dgrad", x.double(), w.double(), 2, 1) == "torch"


def test_auto_picks_cpu_for_float16():
    """float16 goes to the cpu backend for every op, also where float32 channels_last stays with PyTorch (3x3,
    the forward of 7x7 on a 56x56 map at batch 8): PyTorch's float16 CPU path measured 15-85x slower
    (docs/perf_cpu.md v12)."""
    for shape, k in [((8, 16, 56, 56), 7), ((2, 8, 28, 28), 3)]:
        x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
        w = torch.randn(shape[1], 1, k, k)
        assert _rule_backend("fwd", x, w, 1, k // 2) == "torch"
        for op in ("fwd", "dgrad", "wgrad"):
            assert _rule_backend(op, x.half(), w.half(), 1, k // 2) == "cpu", (shape, k, op)


def test_bad_inputs_raise():
    x, w, b = make_inputs(1, 4, 8, 8, 3, seed=0)
    y = torch.empty(1, 4, 8, 8)
    pad = (1, 1, 1, 1)
    with pytest.raises(RuntimeError, match="must have size"):
        torch.ops.dwconv.native_fwd(x, w, b, (1, 1), pad, (1, 1), "", 0, torch.empty(1, 4, 7, 8))
    with pytest.raises(RuntimeError, match="float32, float64, bfloat16 or float16"):
        torch.ops.dwconv.native_fwd(x.int(), w.int(), None, (1, 1), pad, (1, 1), "", 0, y.int())
    with pytest.raises(RuntimeError, match="weight must be Float"):
        torch.ops.dwconv.native_fwd(x, w.double(), None, (1, 1), pad, (1, 1), "", 0, y)
    with pytest.raises(RuntimeError, match="channels_last"):
        torch.ops.dwconv.native_fwd(x, w, b, (1, 1), pad, (1, 1), "", 0, y.contiguous(memory_format=torch.channels_last))
    with pytest.raises(RuntimeError, match="multiple"):
        torch.ops.dwconv.native_fwd(x, w[:3], None, (1, 1), pad, (1, 1), "", 0, torch.empty(1, 3, 8, 8))
    with pytest.raises(RuntimeError, match="stride must be positive"):
        torch.ops.dwconv.native_fwd(x, w, b, (0, 1), pad, (1, 1), "", 0, y)
    with pytest.raises(RuntimeError, match="larger than the padded input"):
        torch.ops.dwconv.native_fwd(x, torch.randn(4, 1, 11, 11), None, (1, 1), (0, 0, 0, 0), (1, 1), "", 0, y)
    with pytest.raises(RuntimeError, match="grad_w must be Float"):
        torch.ops.dwconv.native_wgrad(y, x, (1, 1), pad, (1, 1), True, "", 0, torch.empty(4, 1, 3, 3, dtype=torch.double))
    with pytest.raises(RuntimeError, match="unknown kernel family 'sse'"):
        torch.ops.dwconv.native_fwd(x, w, b, (1, 1), pad, (1, 1), "sse", 0, y)
    with pytest.raises(RuntimeError, match="no variants"):
        torch.ops.dwconv.native_fwd(x, w, b, (1, 1), pad, (1, 1), "portable", 3, y)
