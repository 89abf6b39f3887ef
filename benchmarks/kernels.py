"""Per-op timings of large-kernel depthwise convolutions: dwconv's backends against PyTorch.

For every shape of the chosen set (benchmarks/shapes.py) and every op (forward, dgrad, wgrad,
forward + backward), each plan (every kernel family of every available dwconv backend, dwconv/plans.py)
and "auto" in NCHW and channels_last run side by side with PyTorch NCHW and PyTorch channels_last (cuDNN on GPU, oneDNN on CPU): medians of interleaved repetitions
after warm-up, CUDA events on GPU, input sets rotated so caches do not flatter. Reported per case: time,
speed-up over PyTorch in the same layout and over PyTorch's faster layout, TFLOP/s, GB/s and the
fraction of the roofline (GPU: bandwidth and FMA rate measured in this run; CPU: the sgemm rate
measured in this run). Each record names the plan that ran (for "auto": the plan it chose). On CPU the
default shape set is the CPU backend's target set, and the summary gives the fwd+bwd geometric-mean
speed-up and forward K=11 GFLOP/s as a fraction of sgemm. benchmarks/make_dispatch_table.py turns these
results into the dispatch table "auto" uses.

    python benchmarks/kernels.py                        # GPU if present, else CPU
    python benchmarks/kernels.py --device cpu --shapes all --json benchmarks/results/ --plot speedup.png
    python benchmarks/kernels.py --backend cpu:avx2,cpu:avx512,auto --ops fwd
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time

started_at = time.perf_counter()  # before torch's import: the run's start-up is part of the record
from pathlib import Path
from typing import Dict, List, Optional

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `dwconv` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import torch

import dwconv
from dwconv import config, dispatch, dispatch_table, plans
from dwconv._conv_args import check_and_resolve
from benchmarks import conv_ops, roofline, shapes, tables
from benchmarks.cli import default_backends, resolve_device, run_with_cudnn_setting, split_choices
from benchmarks.progress import Progress
from benchmarks.run_info import device_name, load_average, result_path, run_metadata, write_json
from benchmarks.timing import PhaseClock, Timer, calibrate_inner, interleaved

DTYPES = conv_ops.DTYPES
LAYOUTS = ("nchw", "nhwc")
# relative norm error against float64 of each op (dgrad and wgrad too) before timing
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda when available, else cpu")
    p.add_argument("--dtype", default=None,
                   help="comma-separated from fp32, bf16, fp16 (default: fp32 on CPU, bf16,fp32 on GPU)")
    p.add_argument("--shapes", default=None, choices=sorted(shapes.SHAPE_SETS),
                   help="shape set (default: target on CPU, all on GPU)")
    p.add_argument("--backend", default=None,
                   help="comma-separated dwconv backends, plans (backend:family[:variant]) or 'auto' (default: every "
                        "kernel family of every available backend except the reference 'torch', and 'auto')")
    p.add_argument("--layouts", default=",".join(LAYOUTS),
                   help="comma-separated layouts the dwconv backends run in (PyTorch always runs both: the baseline "
                        "is its faster layout)")
    p.add_argument("--ops", default=",".join(roofline.OPS), help="comma-separated from " + ", ".join(roofline.OPS))
    p.add_argument("--warmup", type=int, default=None, help="warm-up repetitions (default: 2 GPU, 1 CPU)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default: 10 GPU, 7 CPU)")
    p.add_argument("--json", metavar="PATH", help="write results here (a directory: a file named by the device)")
    p.add_argument("--plot", metavar="PATH.png",
                   help="bar chart of speed-ups per shape and backend (needs matplotlib; a directory: named by the device)")
    p.add_argument("--resume", action="store_true",
                   help="continue the --json file of a run cut short with the same settings: keep its shapes, "
                        "measure the rest")
    p.add_argument("--notes", default="", help="free text stored in the JSON (e.g. how busy the machine was)")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, one repetition: a check that it runs")
    p.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True,
                   help="let cuDNN pick its fastest algorithm per shape (PyTorch's strongest baseline; default on)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    args.device = resolve_device(args.device, p)
    gpu = args.device.type == "cuda"
    if args.smoke:
        args.shapes = args.shapes or "smoke"
        args.warmup = 0 if args.warmup is None else args.warmup
        args.reps = 1 if args.reps is None else args.reps
    args.shapes = args.shapes or shapes.default_shape_set(args.device.type)
    args.warmup = args.warmup if args.warmup is not None else (2 if gpu else 1)
    args.reps = args.reps if args.reps is not None else (10 if gpu else 7)
    args.dtypes = split_choices(args.dtype or ("bf16,fp32" if gpu else "fp32"), DTYPES, "--dtype", p)
    args.ops = split_choices(args.ops, roofline.OPS, "--ops", p)
    args.layouts = split_choices(args.layouts, LAYOUTS, "--layouts", p)
    args.backends = split_plans(args.backend, p) if args.backend else default_plans(args.device)
    return args


def split_plans(text: str, parser: argparse.ArgumentParser) -> List[str]:
    """--backend: backends, plans or "auto", each checked (dwconv/plans.py)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    for item in items:
        if item != "auto":
            try:
                plans.parse(item)
            except ValueError as e:
                parser.error(f"--backend: {e}")
    return items or parser.error("--backend: empty")


def default_plans(device: torch.device) -> List[str]:
    """Every kernel family of every dwconv backend that can run on `device` (default_backends), then "auto"."""
    families = {"cpu": [f for f in config.CPU_FAMILIES if f in native_cpu_families()],
                "cuda": list(config.CUDA_FAMILIES), "triton": list(config.TRITON_FAMILIES)}
    return [f"{b}:{f}" for b in default_backends(device) for f in families[b]] + ["auto"]


def native_cpu_families() -> List[str]:
    return list(torch.ops.dwconv.cpu_families()) if dwconv.available_backends("cpu")["cpu"] is None else []


def _cache_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 * 2**20)
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            text = f.read().strip()
        return int(text[:-1]) * {"K": 2**10, "M": 2**20}.get(text[-1], 1) if text[-1] in "KM" else int(text)
    except (OSError, ValueError):
        return 32 * 2**20


def rotation_count(shape: shapes.DWShape, element_size: int, cache_bytes: int, budget_bytes: int) -> int:
    """Input sets to cycle through: enough that twice the last-level cache is streamed, at least 2."""
    ho, wo = shape.out_hw
    set_bytes = (shape.n * shape.c * shape.h * shape.w + shape.n * shape.out_channels * ho * wo) * element_size
    wanted = math.ceil(2 * cache_bytes / set_bytes)
    return max(2, min(wanted, 32, max(2, budget_bytes // set_bytes)))


def providers(backends: List[str], layouts=LAYOUTS) -> List[str]:
    """'torch-nchw', 'torch-nhwc', then '<backend>-<layout>' for each dwconv backend and chosen layout."""
    return ([f"{conv_ops.PYTORCH}-{layout}" for layout in LAYOUTS]
            + [f"{b}-{layout}" for b in backends for layout in LAYOUTS if layout in layouts])


def _reference(op: str, shape, operands) -> torch.Tensor:
    """The op on one operand set in float64 (PyTorch), the check's reference."""
    o = operands[0]
    as64 = conv_ops.Operands(*(t.detach().double().contiguous() for t in (o.x, o.grad_out, o.weight, o.bias)))
    cudnn = torch.backends.cudnn
    # No algorithm search for a reference computed once (cuDNN's heuristic choice is as exact)
    with cudnn.flags(enabled=cudnn.enabled, benchmark=False, deterministic=cudnn.deterministic):
        return conv_ops.make_op(conv_ops.PYTORCH, op, shape, [as64])().double()


def _mismatch(call, reference: torch.Tensor, op: str, dtype) -> Optional[str]:
    """None when a provider's op matches the float64 reference, else a description of the mismatch."""
    with torch.no_grad():
        out = call().double()
    err = ((out - reference).norm() / reference.norm().clamp_min(1e-12)).item()
    return None if err <= TOLERANCE[dtype] else f"{op} relative error {err:.2e}"


def _check(backend: str, op: str, shape, operands, reference, dtype) -> Optional[str]:
    """_mismatch, with a backend that refuses or fails the call reported instead of raised."""
    try:
        return _mismatch(conv_ops.make_op(backend, op, shape, operands), reference, op, dtype)
    except dwconv.BackendUnavailableError as e:
        return f"unsupported: {e}"
    except RuntimeError as e:  # a backend that accepts the call but fails it: report it, go on
        return f"{op} failed: {str(e).splitlines()[0]}"


def bench_shape(shape, dtype_name, args, timer, cache_bytes, rates, progress, clock: PhaseClock) -> List[Dict]:
    """Time every op of every provider on one shape and dtype; one record per (op, provider). `clock` gets the
    seconds of each phase (operands, float64 references, checks, calibration, timing)."""
    dtype, device = DTYPES[dtype_name], args.device
    element_size = torch.finfo(dtype).bits // 8
    budget = (2 << 30) if device.type == "cuda" else (512 << 20)
    count = 1 if args.smoke else rotation_count(shape, element_size, cache_bytes, budget)
    with clock("operands"):
        operands = {layout: conv_ops.make_operands(shape, dtype, device, layout == "nhwc", count)
                    for layout in LAYOUTS}
    skipped: Dict[str, str] = {}
    names = providers(args.backends, args.layouts)
    references: Dict = {}

    def reference(layout: str, op: str) -> torch.Tensor:  # computed once, where a dwconv provider needs it
        if (layout, op) not in references:
            with clock("reference"):
                references[(layout, op)] = _reference(op, shape, operands[layout][:1])
        return references[(layout, op)]

    def check(backend: str, op: str, layout: str) -> Optional[str]:
        expected = reference(layout, op)
        with clock("check"):
            return _check(backend, op, shape, operands[layout][:1], expected, dtype)

    for name in names:
        backend, layout = name.rsplit("-", 1)
        if backend == conv_ops.PYTORCH:
            continue
        mismatch = check(backend, "fwd", layout)
        if mismatch:
            skipped[name] = mismatch
            print(f"warning: {shape.name} {dtype_name} {name} skipped ({mismatch})", file=sys.stderr)
    active = [n for n in names if n not in skipped]
    records = []
    min_sample = 0.0 if args.smoke else (2e-3 if device.type == "cuda" else 2e-2)
    for op in args.ops:
        cases, inner, failed = {}, {}, dict(skipped)
        for n in active:
            backend, layout = n.rsplit("-", 1)
            if op in ("dgrad", "wgrad") and backend != conv_ops.PYTORCH:  # fwd: checked above; fwd+bwd: its parts
                mismatch = check(backend, op, layout)
                if mismatch:
                    failed[n] = mismatch
                    print(f"warning: {shape.name} {dtype_name} {n} {op} skipped ({mismatch})", file=sys.stderr)
                    continue
            cases[n] = conv_ops.make_op(backend, op, shape, operands[layout])
            try:
                with clock("first call"):  # cuDNN's algorithm search, JIT compilation
                    cases[n]()
                with clock("calibrate"):
                    inner[n] = calibrate_inner(cases[n], timer, min_sample)
            except (RuntimeError, ValueError) as e:  # a dwconv backend that fails this op: report, go on
                if backend == conv_ops.PYTORCH:
                    raise
                failed[n] = f"{op} failed: {str(e).splitlines()[0]}"
                print(f"warning: {shape.name} {dtype_name} {n} {failed[n]}", file=sys.stderr)
                del cases[n]
        progress.set_description(f"{shape.name} {dtype_name} {op}")
        with clock("timing"):
            stats = interleaved(cases, timer, warmup=args.warmup, reps=args.reps, inner=inner,
                                on_sample=progress.update)
        torch_ms = {layout: stats[f"torch-{layout}"].median for layout in LAYOUTS}
        best_torch = min(torch_ms.values())
        flops = roofline.op_flops(op, shape)
        nbytes = roofline.op_bytes(op, shape, element_size)
        for n in names:
            backend, layout = n.rsplit("-", 1)
            rec = {"shape": shape.as_dict(), "dtype": dtype_name, "op": op, "provider": n, "backend": backend,
                   "layout": layout}
            if backend != conv_ops.PYTORCH:
                rec["plan"] = resolved_plan(backend, op, shape, operands[layout][0])
            if n in failed:
                records.append({**rec, "skipped": failed[n]})
                continue
            t = stats[n].median
            rec.update({
                "ms": t * 1e3, "p20_ms": stats[n].p20 * 1e3, "p80_ms": stats[n].p80 * 1e3,
                "samples": stats[n].samples, "samples_ms": [round(v * 1e3, 5) for v in stats[n].values],
                "calls_per_sample": inner[n], "input_sets": count,
                "speedup_vs_torch_same_layout": torch_ms[layout] / t, "speedup_vs_best_torch": best_torch / t,
                "tflops": flops / t / 1e12, "gbs": nbytes / t / 1e9,
            })
            if device.type == "cuda":
                bound = roofline.lower_bound_seconds(op, shape, element_size, rates["bandwidth_gbs"],
                                                     rates["fma_tflops"])
                rec["roofline_fraction"] = bound / t
            else:
                rec["roofline_fraction"] = flops / t / 1e9 / rates["sgemm_gflops"]
            records.append(rec)
    return records


def resolved_plan(spec: str, op: str, shape, operands) -> Optional[str]:
    """The plan `spec` runs for op on these operands (fwd+bwd: its three ops' plans, '/'-joined)."""
    x = operands.x.detach()
    args = check_and_resolve(x, operands.weight, operands.bias, shape.stride, shape.padding, 1)
    single = ("fwd", "dgrad", "wgrad") if op == "fwd+bwd" else (op,)
    chosen = []
    for o in single:
        like = operands.grad_out if o == "dgrad" else x
        chosen.append(dispatch.describe(spec, o, like, args) or "none")
    return "/".join(chosen)


def geomean(values: List[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def summarize(records: List[Dict]) -> List[Dict]:
    """Per dtype, dwconv provider and op: geometric-mean speed-up over PyTorch's faster layout, the
    shapes it covers, and (forward) the lowest roofline fraction at K=11 (the CPU target's measure)."""
    out = []
    keys = dict.fromkeys((r["dtype"], r["provider"], r["op"]) for r in records if r["backend"] != conv_ops.PYTORCH)
    for dtype, provider, op in keys:
        rows = [r for r in records if (r["dtype"], r["provider"], r["op"]) == (dtype, provider, op) and "ms" in r]
        if not rows:
            continue
        k11 = [r["roofline_fraction"] for r in rows if r["shape"]["k"] == 11]
        out.append({"dtype": dtype, "provider": provider, "op": op, "shapes": len(rows),
                    "geomean_speedup_vs_best_torch": geomean([r["speedup_vs_best_torch"] for r in rows]),
                    "geomean_speedup_vs_torch_same_layout": geomean([r["speedup_vs_torch_same_layout"] for r in rows]),
                    "min_roofline_fraction_k11": min(k11) if k11 else None})
    return out


def print_cpu_target(result: Dict) -> None:
    """The CPU backend's acceptance measures on the target shapes: forward + backward geometric-mean
    speed-up over PyTorch's faster layout (target >= 3x) and forward GFLOP/s at K=11 as a fraction of the
    sgemm rate (target >= 50%)."""
    sgemm = result["machine"]["sgemm_gflops"]
    print(f"\nCPU target (sgemm {sgemm:.1f} GFLOP/s, {result['meta']['torch_num_threads']} threads):")
    for s in result["summary"]:
        if s["dtype"] != "fp32" or s["op"] != "fwd+bwd":
            continue
        print(f"  {s['provider']}: fwd+bwd geometric-mean speed-up {s['geomean_speedup_vs_best_torch']:.2f}x "
              f"over {s['shapes']} shapes (target >= 3x)")
        for r in result["results"]:
            if (r["provider"], r["op"], r["dtype"], r["shape"]["k"]) == (s["provider"], "fwd", "fp32", 11) and "ms" in r:
                print(f"  {s['provider']}: fwd {r['shape']['name']}: {r['tflops'] * 1e3:.1f} GFLOP/s = "
                      f"{100 * r['roofline_fraction']:.0f}% of sgemm (target >= 50%)")


def plot_speedups(records: List[Dict], path: Path, args) -> None:
    """One panel per dtype and op: bars of each dwconv provider's speed-up over PyTorch's faster layout."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter
    except ImportError:
        print("--plot needs matplotlib (pip install matplotlib); no plot written", file=sys.stderr)
        return
    names = providers(args.backends, args.layouts)[2:]
    shape_names = [s.name for s in shapes.shape_set(args.shapes, args.device.type)]
    panels = [(d, o) for d in args.dtypes for o in args.ops]
    fig, axes = plt.subplots(len(panels), 1, sharex=True, squeeze=False,
                             figsize=(max(8.0, 0.35 * len(shape_names) * max(2, len(names))), 2.6 * len(panels) + 2))
    index = {(r["dtype"], r["op"], r["provider"], r["shape"]["name"]): r for r in records if "ms" in r}
    width = 0.8 / max(1, len(names))
    for ax, (dtype, op) in zip(axes[:, 0], panels):
        for i, n in enumerate(names):
            values = [index[(dtype, op, n, s)]["speedup_vs_best_torch"] if (dtype, op, n, s) in index else 0.0
                      for s in shape_names]
            ax.bar([j + i * width for j in range(len(shape_names))], values, width, label=n)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%gx"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{op}, {dtype}: speed-up over PyTorch's faster layout", fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
    bottom = axes[-1, 0]
    bottom.set_xticks([j + 0.4 - width / 2 for j in range(len(shape_names))])
    bottom.set_xticklabels(shape_names, rotation=60, ha="right", fontsize=7)
    fig.suptitle(f"dwconv kernels on {device_name(args.device)}", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}", file=sys.stderr)


def main(argv: Optional[List[str]] = None) -> Dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_with_cudnn_setting(run, parse_args(argv), argv)


def resumed_run(args: argparse.Namespace, device: torch.device, settings: Dict) -> Optional[Dict]:
    """The --json file a --resume run continues (None when there is none yet); an error when its settings differ."""
    if not args.json:
        raise SystemExit("kernels.py: --resume needs --json (the file to continue)")
    path = result_path(args.json, device, "kernels")
    if not path.exists():
        return None
    with open(path) as f:
        earlier = json.load(f)
    same = ("shapes", "dtypes", "ops", "backends", "warmup", "reps", "layouts", "dwconv_settings", "dispatch_device")
    differing = [k for k in same if earlier.get("settings", {}).get(k) != settings[k]]
    if differing:
        raise SystemExit(f"kernels.py: --resume: {path} was measured with other settings ({', '.join(differing)})")
    return earlier


def run(args: argparse.Namespace, argv: List[str]) -> Dict:
    """The benchmark for parsed arguments (argv: as given, recorded in the result)."""
    load_at_start = load_average()
    device = args.device
    timer = Timer(device)
    print(f"device: {device.type} ({device_name(device)}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, backends {args.backends}, "
          f"shapes '{args.shapes}', dtypes {args.dtypes}, warm-up {args.warmup}, reps {args.reps}")
    if device.type == "cuda":
        rates = roofline.measure_gpu_rates(device, reps=3 if args.smoke else 10, copy_mib=64 if args.smoke else 1024)
        print(f"measured: DRAM copy {rates['bandwidth_gbs']:.0f} GB/s, fp32 FMA "
              f"{'n/a' if rates['fma_tflops'] is None else format(rates['fma_tflops'], '.1f')} TFLOP/s")
    else:
        rates = {"sgemm_gflops": roofline.measure_sgemm_gflops(device, n=256 if args.smoke else 2048,
                                                               reps=2 if args.smoke else 5)}
        print(f"measured: sgemm {rates['sgemm_gflops']:.1f} GFLOP/s on {torch.get_num_threads()} threads")
    shape_list = shapes.shape_set(args.shapes, device.type)
    n_providers = len(providers(args.backends, args.layouts))
    progress = Progress(len(shape_list) * len(args.dtypes) * len(args.ops) * n_providers * (args.warmup + args.reps),
                        "kernels", enabled=not args.no_progress)
    cache_bytes = _cache_bytes(device)
    settings = {"shapes": args.shapes, "dtypes": args.dtypes, "ops": args.ops, "backends": args.backends,
                "warmup": args.warmup, "reps": args.reps, "layouts": args.layouts,
                "dwconv_settings": dataclasses.asdict(config.get()),
                "dispatch_device": dispatch_table.device_key(device),
                "flops_count": "2 per multiply-add, every tap (padding taps too)",
                "roofline": ("fraction of the sgemm rate" if device.type == "cpu" else
                             "lower bound max(ideal bytes / DRAM bandwidth, FLOPs / FMA rate) over time")}
    # where a time-limited run's time went: before the first shape, then per shape and phase
    seconds: Dict = {"start": round(time.perf_counter() - started_at, 2), "shapes": []}
    earlier = resumed_run(args, device, settings) if args.resume else None
    records: List[Dict] = list(earlier["results"]) if earlier else []
    done = {(r["shape"]["name"], r["dtype"]) for r in records}
    if earlier:
        before = dict(earlier.get("seconds") or {})
        seconds["earlier_runs"] = before.pop("earlier_runs", []) + ([before] if before else [])
        print(f"resuming {args.json}: {len(done)} shape(s) measured on {earlier['meta']['date_utc']}")

    def result_of(records_, complete: bool) -> Dict:
        meta = run_metadata("kernels", argv, device, args.notes, load_at_start=load_at_start)
        if earlier:  # the records of earlier runs carry no commit or date of their own: keep their runs' metadata
            meta["resumed_from"] = earlier["meta"].get("resumed_from", []) + [
                {k: v for k, v in earlier["meta"].items() if k != "resumed_from"}]
        return {"meta": meta, "settings": settings, "machine": rates, "complete": complete, "results": records_,
                "summary": summarize(records_), "seconds": seconds}

    try:
        for dtype_name in args.dtypes:
            for shape in shape_list:
                if (shape.name, dtype_name) in done:
                    continue
                clock, started = PhaseClock(device), time.perf_counter()
                records += bench_shape(shape, dtype_name, args, timer, cache_bytes, rates, progress, clock)
                total = time.perf_counter() - started
                seconds["shapes"].append({"shape": shape.name, "dtype": dtype_name, "total": round(total, 2),
                                          **{k: round(v, 2) for k, v in clock.seconds.items()}})
                if not args.smoke:
                    print(f"{shape.name} {dtype_name}: {total:.1f} s (" + ", ".join(
                        f"{k} {v:.1f}" for k, v in clock.seconds.items()) + ")", file=sys.stderr)
                if args.json:  # a run cut short (a time limit) keeps the shapes it finished
                    write_json(result_path(args.json, device, "kernels"), result_of(records, False), quiet=True)
    finally:
        progress.close()
    result = result_of(records, True)
    for dtype_name in args.dtypes:
        for op in args.ops:
            print("\n" + tables.kernel_op_table(result, dtype_name, op))
            print("\n" + tables.kernel_rate_table(result, dtype_name, op))
    print("\n" + tables.kernel_summary_table(result))
    if device.type == "cpu" and args.shapes == "target":
        print_cpu_target(result)
    if args.json:
        write_json(result_path(args.json, device, "kernels"), result)
    if args.plot:
        plot_speedups(records, result_path(args.plot, device, "kernels", ".png"), args)
    return result


if __name__ == "__main__":
    main()
