"""Every tile the Triton autotuner would try, launched one by one on the goal shapes: time, registers,
spills and occupancy side by side, so a GPU run shows which tile parameters matter.

    python benchmarks/triton_tiles.py --json benchmarks/results/cuda-<card>-triton-tiles.json [--only C384]

For each shape (benchmarks/shapes.py, default the `goals` set), case (fp32 NCHW and bf16 channels_last by
default) and op, the backend's call is recorded instead of run (`dwconv.triton.launcher.capture_launches`: the
kernel, its arguments, its grid function and every autotune candidate with its variant; the first candidate is
the default tile). --family rows / direct / plane sweeps that kernel family's tiles (default: the family the
backend picks per call). Each record names its tile as a plan ("triton:rows:N4,C1,W64,R14,H1,WIN8,w2") that
`backend=` accepts.
Each candidate is then launched directly: its result is checked against the first candidate's and against
PyTorch in float64 (outputs NaN-poisoned first; wgrad workspaces zeroed), and all candidates plus PyTorch's own call of the op in the
same layout are timed interleaved (benchmarks/timing.py: CUDA events, medians; kernel launches only, no op
dispatch); for wgrad also the whole op as users call it, with atomics and with the deterministic
workspace (torch.use_deterministic_algorithms). Registers and spills are the compiled kernel's; programs per SM follow from the registers
(64 K registers and 64 warps per SM, allocated per warp in units of 256). --smoke: tiny shapes, checks only
(the interpreter on a CPU).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Dict, List

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import dwconv  # noqa: E402  (registers the ops)
from benchmarks import conv_ops, shapes  # noqa: E402
from benchmarks.cli import DTYPE_LAYOUT_CASES, SINGLE_OPS, split_choices  # noqa: E402
from benchmarks.run_info import load_average, run_metadata, write_json  # noqa: E402
from benchmarks.timing import Timer, calibrate_inner, interleaved  # noqa: E402
from dwconv import dispatch  # noqa: E402
from dwconv._conv_args import check_and_resolve  # noqa: E402
from dwconv.backends import BackendUnavailableError  # noqa: E402
from dwconv.triton.launcher import Launch, capture_launches  # noqa: E402

OUTPUT_ARGS = ("y_ptr", "dx_ptr", "ws_ptr")  # what the Triton kernels write, by argument name
REGISTERS_PER_SM, MAX_WARPS_PER_SM, REGISTER_UNIT = 65536, 64, 256


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="goals", choices=sorted(shapes.SHAPE_SETS))
    p.add_argument("--only", default="", help="keep shapes whose name contains this text")
    p.add_argument("--cases", default="fp32-nchw,bf16-nhwc", help="comma-separated dtype-layout pairs")
    p.add_argument("--ops", default="fwd,dgrad,wgrad")
    p.add_argument("--family", default=None, choices=("rows", "direct", "plane"),
                   help="the Triton kernel family whose tiles are swept (default: the backend's choice per call; "
                        "an op the family cannot run is skipped)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--notes", default="")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, checks only")
    args = p.parse_args(argv)
    args.cases = split_choices(args.cases, DTYPE_LAYOUT_CASES, "--cases", p)
    args.ops = split_choices(args.ops, SINGLE_OPS, "--ops", p)
    if args.smoke:
        args.shapes, args.warmup, args.reps = "smoke", 0, 1
    return args


def record(op: str, shape, o: conv_ops.Operands, spec: str = "triton") -> List[Launch]:
    """The launches the Triton backend issues for one op under plan `spec` (recorded, not run)."""
    s, p4, d = [shape.stride] * 2, [shape.padding] * 4, [1, 1]
    with capture_launches() as launches:
        if op == "fwd":
            torch.ops.dwconv.depthwise_conv2d(o.x, o.weight, o.bias, s, p4, d, spec)
        elif op == "dgrad":
            torch.ops.dwconv.dgrad(o.grad_out, o.weight, list(o.x.shape), s, p4, d, spec)
        else:
            torch.ops.dwconv.wgrad(o.grad_out, o.x, list(o.weight.shape), s, p4, d, spec)
    return [launch for launch in launches if launch.kernel is launches[0].kernel]  # not wgrad's reduction


def family_of(op: str, shape, o: conv_ops.Operands, spec: str) -> str:
    """The kernel family plan `spec` runs op with on these operands."""
    args = check_and_resolve(o.x, o.weight, o.bias, shape.stride, shape.padding, 1)
    return dispatch.plan_for(spec, op, o.grad_out if op == "dgrad" else o.x, args).family


def outputs(launch: Launch) -> List[torch.Tensor]:
    return [a for name, a in zip(launch.kernel.arg_names, launch.args) if name in OUTPUT_ARGS]


def runner(launches: List[Launch], cfg):
    """A call launching every recorded launch with the candidate `cfg`; returns the compiled kernel."""
    def run():
        compiled = None
        for launch in launches:
            grid = launch.grid_of(cfg.kwargs) if launch.grid_of else launch.grid
            compiled = launch.kernel[grid](*launch.args, **{**launch.constexprs, **cfg.kwargs},
                                           num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        return compiled
    return run


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm().clamp_min(1e-30)).item()


def float64_reference(shape, o: conv_ops.Operands) -> Dict[str, torch.Tensor]:
    """y, dx and dw of one operand set, computed by PyTorch in float64."""
    x, w, b, dy = (t.detach().double() for t in (o.x, o.weight, o.bias, o.grad_out))
    s, p = [shape.stride] * 2, [shape.padding] * 2
    y = torch.nn.functional.conv2d(x, w, b, s, p, 1, shape.c)
    dx, dw, _ = torch.ops.aten.convolution_backward(dy, x, w, None, s, p, [1, 1], False, [0, 0], shape.c,
                                                    [True, True, False])
    return {"y": y, "dx": dx, "dw": dw}


def launch_error(launches: List[Launch], refs: Dict[str, torch.Tensor]) -> float:
    """The largest relative error of what the launches wrote: y or dx as a whole, or the wgrad workspace
    summed over its rows (one per program when deterministic) against dw."""
    errors, seen = [], set()
    for launch in launches:
        for name, a in zip(launch.kernel.arg_names, launch.args):
            if name not in OUTPUT_ARGS or a.data_ptr() in seen:
                continue
            seen.add(a.data_ptr())
            if name == "ws_ptr":
                ref = refs["dw"].flatten()
                errors.append(rel_err(a.double().reshape(-1, ref.numel()).sum(0), ref))
            else:
                errors.append(rel_err(a, refs["y" if name == "y_ptr" else "dx"]))
    return max(errors)


def deterministic(call):
    """`call` with torch.use_deterministic_algorithms(True) (the wgrad workspace path), restored after."""
    def run():
        previous = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            return call()
        finally:
            torch.use_deterministic_algorithms(previous)
    return run


def programs_per_sm(registers: int, num_warps: int) -> int:
    per_warp = -(-registers * 32 // REGISTER_UNIT) * REGISTER_UNIT
    return min(REGISTERS_PER_SM // (per_warp * num_warps), MAX_WARPS_PER_SM // num_warps)


def sweep_op(op, shape, dtype_name, layout, device, timer, args) -> List[Dict]:
    o = conv_ops.make_operands(shape, conv_ops.DTYPES[dtype_name], device, layout == "nhwc", 1)
    spec = f"triton:{args.family}" if args.family else "triton"
    try:
        family = family_of(op, shape, o[0], spec)
    except BackendUnavailableError as e:
        print(f"skipped {shape.name} {dtype_name} {layout} {op}: {e}", flush=True)
        return []
    launches = record(op, shape, o[0], spec)
    cands = list(launches[0].candidates)
    base = {"shape": shape.as_dict(), "dtype": dtype_name, "layout": layout, "op": op, "family": family,
            "kernel": launches[0].kernel.__name__, "launches": len(launches)}
    refs = float64_reference(shape, o[0])
    records, cases, first = [], {}, None
    for i, cfg in enumerate(cands):
        run = runner(launches, cfg)
        for launch in launches:
            for name, a in zip(launch.kernel.arg_names, launch.args):
                if name == "ws_ptr":  # atomics add into it (a deterministic run overwrites it)
                    a.zero_()
                elif name in OUTPUT_ARGS:
                    a.fill_(float("nan"))
        compiled = run()
        result = torch.cat([t.detach().double().flatten() for launch in launches for t in outputs(launch)])
        if first is None:
            first = result.clone()
        rec = {**base, "candidate": i, "plan": f"triton:{family}:{launches[0].variants[i]}",
               "tile": dict(cfg.kwargs), "num_warps": cfg.num_warps,
               "rel_err_vs_first": rel_err(result, first), "rel_err_vs_float64": launch_error(launches, refs),
               "finite": bool(torch.isfinite(result).all())}
        regs = getattr(compiled, "n_regs", None)
        if regs is not None:
            rec.update(registers=regs, spills=getattr(compiled, "n_spills", None),
                       programs_per_sm=programs_per_sm(regs, cfg.num_warps))
            rec["warps_per_sm"] = rec["programs_per_sm"] * cfg.num_warps
        grid = launches[0].grid_of(cfg.kwargs) if launches[0].grid_of else launches[0].grid
        rec["programs"] = grid[0] * len(launches)
        records.append(rec)
        cases[f"tile{i}"] = run
    if op == "wgrad":  # the whole op (kernel, zeroing or workspace, reduction): atomics against the workspace
        cases["op_atomic"] = conv_ops.make_op(spec, op, shape, o)
        cases["op_deterministic"] = deterministic(cases["op_atomic"])
        op_errors = {f"{name}_rel_err_vs_float64": rel_err(cases[name]().double(), refs["dw"])  # a check anywhere
                     for name in ("op_atomic", "op_deterministic")}
        for rec in records:
            rec.update(op_errors)
    if device.type == "cuda":
        cases["torch"] = conv_ops.make_op(conv_ops.PYTORCH, op, shape, o)
        inner = {name: calibrate_inner(fn, timer, 2e-3) for name, fn in cases.items()}
        stats = interleaved(cases, timer, warmup=args.warmup, reps=args.reps, inner=inner)
        for rec in records:
            rec["us"] = stats[f"tile{rec['candidate']}"].median * 1e6
            rec["torch_us"] = stats["torch"].median * 1e6
            rec["speedup_vs_torch_same_layout"] = rec["torch_us"] / rec["us"]
            for name in ("op_atomic", "op_deterministic"):
                if name in stats:
                    rec[f"{name}_us"] = stats[name].median * 1e6
    for rec in records:
        print(" ".join(f"{k}={v}" for k, v in rec.items() if k != "shape"), shape.name, flush=True)
    return records


def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    load_at_start = load_average()
    torch.backends.cudnn.benchmark = True
    timer = Timer(device)
    records = []

    def result_of(complete: bool) -> Dict:
        return {"meta": run_metadata("triton_tiles", list(argv if argv is not None else sys.argv[1:]), device,
                                     args.notes, load_at_start=load_at_start),
                "settings": {"shapes": args.shapes, "only": args.only, "cases": args.cases, "ops": args.ops,
                             "family": args.family, "warmup": args.warmup, "reps": args.reps},
                "complete": complete, "results": records}

    for shape in shapes.shape_set(args.shapes, "cuda" if device.type == "cuda" else "cpu"):
        if args.only and args.only not in shape.name:
            continue
        for pair in args.cases:
            dtype_name, layout = pair.split("-")
            for op in args.ops:
                records += sweep_op(op, shape, dtype_name, layout, device, timer, args)
                if args.json:  # a run cut short (a time limit) keeps what it finished
                    write_json(Path(args.json), result_of(False), quiet=True)
    result = result_of(True)
    if args.json:
        write_json(Path(args.json), result)
    return result


if __name__ == "__main__":
    main()
