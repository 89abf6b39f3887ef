"""Triton plans "triton:<family>:<variant>": the variant syntax, the checks on a named variant, that the default
variant runs the first candidate tile (what a GPU runs with autotuning off, here in the interpreter too), and
every candidate tile autotuning chooses among on a GPU, run as a named plan against the float64 reference.

Candidates depend on the call's shape, so the candidates of representative GPU calls (the goal shapes' kernel
sizes, layouts and dtypes) run on small maps of the same kernel size, layout and dtype: the tiles are what a
GPU would autotune over, the maps what the interpreter can afford. Each candidate runs once; ops that share a
candidate table (rows fwd and dgrad; direct fwd, dgrad and wgrad; plane fwd and dgrad) take turns.
"""
import pytest
import torch

from conftest import HAS_CUDA, require_backend
from dwconv._conv_args import check_and_resolve
from dwconv.backends import BackendUnavailableError
from utils import assert_close, make_inputs, poisoned_outputs, reference_grads

DEVICE = "cuda" if HAS_CUDA else "cpu"
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
FMT = {False: torch.contiguous_format, True: torch.channels_last}


@pytest.fixture(autouse=True)
def _triton_available():
    require_backend("triton", DEVICE)


def _call(n, c, h, w, k, channels_last=False, dtype=F32, device="meta", stride=1):
    """x (on `device`, uninitialised unless on the test device) and the resolved args of a call."""
    x = torch.empty(n, c, h, w, dtype=dtype, device=device).contiguous(memory_format=FMT[channels_last])
    weight = torch.empty(c, 1, k, k, dtype=dtype, device=device)
    return x, check_and_resolve(x, weight, None, stride, k // 2, 1)


def _backend():
    from dwconv.backends.triton import TritonBackend
    return TritonBackend()


def _formats():
    from dwconv.triton import direct_tiles, plane_tiles, rows_tiles, rows_wgrad_tiles
    return {"direct": direct_tiles.FORMAT, "rows": rows_tiles.FORMAT, "rows_wgrad": rows_wgrad_tiles.FORMAT,
            "plane": plane_tiles.FORMAT}


def test_variants_round_trip():
    """Every candidate of representative calls written as a variant reads back as the same tile, and writing
    that tile gives the same variant."""
    backend, formats = _backend(), _formats()
    calls = [_call(64, 96, 56, 56, 7), _call(64, 96, 56, 56, 7, True, BF16), _call(128, 384, 14, 14, 11),
             _call(128, 768, 7, 7, 11, True, BF16), _call(2, 3, 9, 10, 5, stride=2)]
    seen = 0
    for x, args in calls:
        for family in backend.families("fwd", x, args):
            for op in ("fwd", "dgrad", "wgrad"):
                if family not in backend.families(op, x, args):
                    continue
                tile_format = formats["rows_wgrad" if (family, op) == ("rows", "wgrad") else family]
                for variant in backend.variants(family, op, x, args):
                    assert ":" not in variant
                    tile = tile_format.parse(variant)
                    assert tile_format.format(tile) == variant
                    seen += 1
    assert seen > 50


def test_variant_written_fields():
    """A rows tile with its optional fields at their defaults leaves them out; flags read as bools."""
    import triton
    formats = _formats()
    tile = triton.Config({"BLOCK_N": 2, "BLOCK_C": 1, "BLOCK_W": 64, "ROWS": 14, "HOIST": True, "WIN": 1},
                         num_warps=2)
    assert formats["rows"].format(tile) == "N2,C1,W64,R14,H1,w2"
    parsed = formats["rows"].parse("w2,P1,N2,C1,W64,R14,H0,WIN8")  # any order
    assert parsed.kwargs == {"BLOCK_N": 2, "BLOCK_C": 1, "BLOCK_W": 64, "ROWS": 14, "HOIST": False, "WIN": 8,
                             "PREFETCH": True}
    assert parsed.num_warps == 2 and formats["rows"].format(parsed) == "N2,C1,W64,R14,H0,WIN8,P1,w2"


@pytest.mark.parametrize("plan,op,message", [
    ("triton:rows:N2,C1,W4,R5,w1", "fwd", "missing field(s) H"),
    ("triton:rows:N3,C1,W4,R5,H1,w1", "fwd", "must be a power of two"),
    ("triton:rows:N2,C1,W4,R5,H2,w1", "fwd", "is 0 or 1"),
    ("triton:rows:N2,C1,W4,R0,H1,w1", "fwd", "must be at least 1"),
    ("triton:rows:N2,N2,C1,W4,R5,H1,w1", "fwd", "given twice"),
    ("triton:rows:N2,C1,W4,R5,H1,X1,w1", "fwd", "unknown field 'X'"),
    ("triton:rows:N2,C1,W4,R5,H1,w", "fwd", "cannot read 'w'"),
    ("triton:rows:N2,C1,W4,R5,H1,w64", "fwd", "at most 32 warps"),
    ("triton:rows:N2,C1,W4,R5,H1,WIN8,w1", "fwd", "not a whole number of WIN8 windows"),
    ("triton:rows:N2,C1,W4,R5,H1,WIN2,w1", "fwd_strided", "need stride 1 and dilation 1 along W"),
    ("triton:rows:N2,C1,W4,R5,H1,w1", "wgrad", "unknown field 'H'"),  # wgrad tiles have no HOIST
    ("triton:direct:C2,H2,W4,U1,w1", "wgrad", "no UNROLL_ROWS"),
    ("triton:direct:C1024,H32,W64,w4", "fwd", "more than Triton's"),
    ("triton:plane:C1,M8,N32,K32,w4", "fwd_half", "must be at least 16"),
])
def test_named_variant_problems(plan, op, message):
    """A named variant that cannot run the call raises with the reason, before any kernel runs."""
    half = op == "fwd_half"
    x, wt, bt = make_inputs(2, 3, 7, 9, 3, 1, F16 if half else F32, DEVICE)
    stride = (1, 2) if op == "fwd_strided" else (1, 1)
    args = check_and_resolve(x, wt, bt, stride, 1, 1)
    s, p, d = list(args.stride), list(args.padding), list(args.dilation)
    grad_out = torch.randn(args.output_shape, device=DEVICE)
    with pytest.raises(BackendUnavailableError, match="cannot run this call") as caught:
        if op == "wgrad":
            torch.ops.dwconv.wgrad(grad_out, x, list(wt.shape), s, p, d, plan)
        else:
            torch.ops.dwconv.depthwise_conv2d(x, wt, bt, s, p, d, plan)
    assert message in str(caught.value)


def test_default_variant_runs_the_first_candidate():
    """The default variant launches the first candidate (as a GPU with autotuning off does; the interpreter no
    longer takes the largest tile) and records every candidate with its variant; a named variant launches
    that tile alone."""
    from dwconv.triton import launcher
    backend = _backend()
    x, wt, bt = make_inputs(2, 3, 9, 20, 5, 1, F32, DEVICE)
    args = check_and_resolve(x, wt, bt, 1, 2, 1)
    for family in ("rows", "direct"):
        variants = backend.variants(family, "fwd", x, args)
        assert len(variants) > 1
        for spec, expected in ((f"triton:{family}", variants), (f"triton:{family}:{variants[-1]}", variants[-1:])):
            with launcher.capture_launches() as launches:
                torch.ops.dwconv.depthwise_conv2d(x, wt, bt, [1, 1], [2] * 4, [1, 1], spec)
            (launch,) = launches
            assert list(launch.variants) == expected
            tile = launch.candidates[0]
            assert all(launch.constexprs[name] == value for name, value in tile.kwargs.items())
            assert launch.num_warps == tile.num_warps


# The candidate sweeps: (family, groups of ops sharing one candidate table, representative GPU call
# (n, c, h, w), kernel size, channels_last, dtype, the small map (n, c, h, w) the interpreter runs them on).
SWEEPS = [
    ("rows", (("fwd", "dgrad"), ("wgrad",)), (64, 96, 56, 56), 7, False, F32, (2, 2, 6, 9)),  # ConvNeXt 56x56
    ("rows", (("fwd", "dgrad"), ("wgrad",)), (128, 384, 14, 14), 11, False, F32, (2, 1, 4, 7)),  # Robust-ResNet
    ("rows", (("fwd", "dgrad"), ("wgrad",)), (64, 96, 56, 56), 7, True, F32, (1, 3, 6, 9)),
    ("rows", (("fwd", "dgrad"), ("wgrad",)), (64, 96, 56, 56), 7, True, BF16, (1, 3, 6, 9)),
    ("rows", (("fwd", "dgrad"), ("wgrad",)), (128, 384, 14, 14), 11, True, BF16, (1, 2, 4, 7)),
    ("direct", (("fwd", "dgrad", "wgrad"),), (64, 96, 56, 56), 7, False, F32, (1, 2, 6, 9)),
    ("direct", (("fwd", "dgrad", "wgrad"),), (128, 384, 14, 14), 11, False, F32, (1, 3, 5, 7)),
    ("direct", (("fwd", "dgrad", "wgrad"),), (64, 96, 56, 56), 7, True, F32, (1, 3, 6, 9)),
    ("direct", (("fwd", "dgrad", "wgrad"),), (128, 384, 14, 14), 11, True, BF16, (1, 3, 5, 7)),
    ("plane", (("fwd", "dgrad"),), (128, 384, 14, 14), 11, False, BF16, (3, 2, 7, 7)),
    ("plane", (("fwd", "dgrad"),), (128, 768, 7, 7), 11, True, F16, (3, 2, 7, 7)),
]


def _sweep_id(sweep):
    family, _, big, k, channels_last, dtype, _ = sweep
    return f"{family}_{big[2]}x{big[3]}_k{k}_{'nhwc' if channels_last else 'nchw'}_{str(dtype)[6:]}"


def _sweep_plans(backend, family, ops, x, args):
    """(op, plan) pairs running each candidate of the ops' shared table once, the ops taking turns; a candidate
    that differs from an earlier one only in num_warps (which the interpreter ignores) is left out."""
    tables = [backend.variants(family, op, x, args) for op in ops]
    assert len({len(table) for table in tables}) == 1 and len(tables[0]) > 1
    formats = _formats()
    tile_format = formats["rows_wgrad" if (family, ops[0]) == ("rows", "wgrad") else family]
    out, seen = [], set()
    for i in range(len(tables[0])):
        op, variant = ops[len(out) % len(ops)], tables[len(out) % len(ops)][i]
        tile = tile_format.parse(tables[0][i])
        key = tuple(sorted(tile.kwargs.items()))
        if key not in seen:
            seen.add(key)
            out.append((op, f"triton:{family}:{variant}"))
    return out


@pytest.mark.parametrize("sweep", SWEEPS, ids=_sweep_id)
def test_candidates_as_plans(sweep):
    """Each candidate of the representative call, named as a plan, on the small map against the float64
    reference."""
    family, groups, big, k, channels_last, dtype, small = sweep
    backend = _backend()
    x_big, args_big = _call(*big, k, channels_last, dtype)
    x, wt, bt = make_inputs(*small, k, 1, dtype, DEVICE, channels_last, True)
    args = check_and_resolve(x, wt, bt, 1, k // 2, 1)
    s, p, d = list(args.stride), list(args.padding), list(args.dilation)
    grad_out = torch.randn(args.output_shape, device=DEVICE, dtype=dtype).contiguous(memory_format=FMT[channels_last])
    refs = dict(zip(("fwd", "dgrad", "wgrad"), reference_grads(x, wt, bt, grad_out, args.stride, args.padding,
                                                                 args.dilation)))
    for ops in groups:
        for op, plan in _sweep_plans(backend, family, ops, x_big, args_big):
            with poisoned_outputs():
                if op == "fwd":
                    out = torch.ops.dwconv.depthwise_conv2d(x, wt, bt, s, p, d, plan)
                elif op == "dgrad":
                    out = torch.ops.dwconv.dgrad(grad_out, wt, list(x.shape), s, p, d, plan)
                else:
                    out = torch.ops.dwconv.wgrad(grad_out, x, list(wt.shape), s, p, d, plan)
            assert_close(out, refs[op], dtype, f"{op} {plan}")
