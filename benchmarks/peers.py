"""Depthwise-conv inference on CPU: dwconv against PyTorch, ONNX Runtime and OpenVINO.

For every shape (fp32, stride 1, "same" padding, bias), one forward of each provider, timed side by side:
dwconv's `cpu` backend on NCHW and channels_last input, PyTorch's F.conv2d(groups=C) in both layouts, and
the same conv exported from an nn.Conv2d to ONNX and run by ONNX Runtime (CPU execution provider, graph
optimizations on) and OpenVINO (CPU, latency hint, f32), every library on torch's thread count. Each
provider's output is checked against F.conv2d in float64 before it is timed; a runtime that is not
installed or fails to load is reported as missing with the reason. Timing: medians (p20/p80) of
repetitions interleaved round-robin over the providers (benchmarks/timing.py), calls cycling through input
sets larger than the last-level cache. Reported per shape: ms per provider, dwconv's best layout against
the best peer, and forward GFLOP/s (2*N*C*H*W*K*K, padding taps included) as a fraction of the fp32 FMA
peak on all threads (benchmarks/fma_probe.py: AVX-512 where the CPU has it) and of the sgemm rate, both
measured in the same run.

    python benchmarks/peers.py                                   # the default shapes
    python benchmarks/peers.py --shapes peers,convnext,16x384x32x32k15 --json benchmarks/results/
"""
from __future__ import annotations

import argparse
import itertools
import math
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `dwconv` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import torch
import torch.nn.functional as F

import dwconv
from benchmarks import fma_probe, roofline, shapes, tables
from benchmarks.cli import split_choices
from benchmarks.kernels import _cache_bytes, rotation_count
from benchmarks.peer_runtimes import (RUNTIMES, RuntimeUnavailable, build_runtime, export_conv_onnx, first_line,
                                     runtime_status)
from benchmarks.progress import Progress
from benchmarks.run_info import load_average, result_path, run_metadata, write_json
from benchmarks.timing import Timer, calibrate_inner, interleaved

DWCONV_PROVIDERS = ("dwconv-nchw", "dwconv-nhwc")
TORCH_PROVIDERS = ("torch-nchw", "torch-nhwc")
PROVIDERS = DWCONV_PROVIDERS + TORCH_PROVIDERS + RUNTIMES
FP32_TOLERANCE = 1e-5  # relative norm error against float64 (tests/utils.py)
DWCONV_BACKEND = "cpu"

# The CPU target set (Robust-ResNet's C384 14x14 K11, C768 7x7 K11, C1536 14x14 K7 at N32, ConvNeXt's 56x56 K7
# at N16) and a RepLKNet-like 32x32 K11 at N8.
PEER_SHAPES = shapes.TARGET + [shapes.DWShape("replknet", 8, 384, 32, 32, 11)]
SMOKE_SHAPES = [shapes.DWShape("smoke", 2, 8, 10, 10, 7)]
_SPEC = re.compile(r"^(\d+)x(\d+)x(\d+)x(\d+)k(\d+)$")


def parse_shapes(text: str) -> Tuple[List[shapes.DWShape], List[shapes.DWShape]]:
    """(shapes to run, shapes dropped) from a comma-separated list of set names ('peers', or any set of
    benchmarks/shapes.py at its CPU batch sizes) and shapes written NxCxHxWkK (e.g. 8x384x32x32k11).
    Only stride 1, multiplier 1 shapes run here: the others of a set are dropped; repeats run once."""
    chosen: List[shapes.DWShape] = []
    dropped: List[shapes.DWShape] = []
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError("--shapes: no shapes given")
    for item in items:
        match = _SPEC.match(item.lower())
        if item == "peers":
            found = list(PEER_SHAPES)
        elif item in shapes.SHAPE_SETS:
            found = shapes.shape_set(item, "cpu")
        elif match:
            n, c, h, w, k = (int(v) for v in match.groups())
            if min(n, c, h, w, k) < 1:
                raise ValueError(f"--shapes: {item!r} has a zero size")
            found = [shapes.DWShape("custom", n, c, h, w, k)]
        else:
            raise ValueError(f"--shapes: {item!r} is neither a shape set ({', '.join(['peers', *shapes.SHAPE_SETS])}) "
                             f"nor a shape NxCxHxWkK such as 8x384x32x32k11")
        for s in found:
            (chosen if s.stride == 1 and s.multiplier == 1 else dropped).append(s)
    unique: Dict[Tuple[int, ...], shapes.DWShape] = {}
    for s in chosen:
        unique.setdefault((s.n, s.c, s.h, s.w, s.k), s)
    return list(unique.values()), dropped


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=None,
                   help="comma-separated shape sets ('peers': the default; or any of " + ", ".join(shapes.SHAPE_SETS)
                        + ") and shapes NxCxHxWkK (e.g. 8x384x32x32k11); stride-2 and multiplier shapes are dropped")
    p.add_argument("--peers", default=",".join(RUNTIMES),
                   help="comma-separated runtimes to time beside dwconv and PyTorch (default: all of "
                        + ", ".join(RUNTIMES) + ")")
    p.add_argument("--warmup", type=int, default=None, help="warm-up repetitions (default 1)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default 7)")
    p.add_argument("--json", metavar="PATH", help="write results here (a directory: a file named by the device)")
    p.add_argument("--notes", default="", help="free text stored in the JSON (e.g. how busy the machine was)")
    p.add_argument("--smoke", action="store_true", help="a tiny shape, one repetition: a check that it runs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.smoke:
        args.warmup = 0 if args.warmup is None else args.warmup
        args.reps = 1 if args.reps is None else args.reps
    args.warmup = 1 if args.warmup is None else args.warmup
    args.reps = 7 if args.reps is None else args.reps
    if args.warmup < 0 or args.reps < 1:
        p.error("--warmup must be >= 0 and --reps >= 1")
    args.peers = split_choices(args.peers, RUNTIMES, "--peers", p) if args.peers.strip() else []
    if args.shapes is None and args.smoke:
        args.shape_list, args.dropped = list(SMOKE_SHAPES), []
    else:
        try:
            args.shape_list, args.dropped = parse_shapes(args.shapes or "peers")
        except ValueError as e:
            p.error(str(e))
        if not args.shape_list:
            p.error(f"--shapes {args.shapes}: no stride-1, multiplier-1 shape in it")
    return args


def measure_machine(smoke: bool, threads: int) -> Dict:
    """sgemm (as kernels.py measures it) and the fp32 FMA peak on 1 and `threads` threads (at most one per
    core); fma_peak_gflops is the widest instruction set's rate on those threads, by CPU time (None, with
    the reason, without the probe)."""
    rates: Dict = {"sgemm_gflops": roofline.measure_sgemm_gflops(torch.device("cpu"), n=256 if smoke else 2048,
                                                                 reps=2 if smoke else 5)}
    threads = min(threads, fma_probe.all_threads())  # the probe's CPU-time rate needs a core per thread
    probe = fma_probe.describe(dict.fromkeys([1, threads]), seconds=0.005 if smoke else 0.2, reps=1 if smoke else 5)
    rates["fma_probe"] = probe
    rates["fma_peak_gflops"] = rates["fma_peak_isa"] = None
    reasons = []
    for isa in ("avx512", "avx2"):
        entry = probe["isas"][isa]
        if "gflops" in entry:
            rates["fma_peak_gflops"] = entry["gflops"][str(threads)]["median"]
            rates["fma_peak_isa"] = isa
            break
        reasons.append(f"{isa}: {entry['skipped']}")
    rates["fma_peak_threads"] = threads
    if rates["fma_peak_isa"] != "avx512":
        rates["fma_peak_note"] = "; ".join(reasons)
    return rates


@dataclass
class InputSet:
    nchw: torch.Tensor
    nhwc: torch.Tensor

    def as_numpy(self):
        return self.nchw.numpy()  # shares the NCHW tensor's memory


def make_inputs(shape: shapes.DWShape, count: int) -> Tuple[List[InputSet], torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(shape.c, 1, shape.k, shape.k, generator=gen) / shape.k
    bias = torch.randn(shape.c, generator=gen)
    sets = []
    for _ in range(count):
        x = torch.randn(shape.n, shape.c, shape.h, shape.w, generator=gen)
        sets.append(InputSet(x, x.contiguous(memory_format=torch.channels_last)))
    return sets, weight, bias


def _library(provider: str) -> str:
    return {"dwconv": "dwconv", "torch": "pytorch"}.get(provider.split("-")[0], provider)


def build_calls(shape: shapes.DWShape, peers: List[str], weight: torch.Tensor, bias: torch.Tensor,
                example: torch.Tensor, workdir: Path, threads: int
                ) -> Tuple[Dict[str, Callable[[InputSet], torch.Tensor]], Dict[str, str], Dict[str, Dict]]:
    """(calls, missing, settings): per provider, one forward on an input set returning a torch tensor; the
    providers that cannot run (with the reason); each runtime's settings."""
    pad = shape.padding
    calls: Dict[str, Callable[[InputSet], torch.Tensor]] = {
        "dwconv-nchw": lambda s: dwconv.depthwise_conv2d(s.nchw, weight, bias, 1, pad, backend=DWCONV_BACKEND),
        "dwconv-nhwc": lambda s: dwconv.depthwise_conv2d(s.nhwc, weight, bias, 1, pad, backend=DWCONV_BACKEND),
        "torch-nchw": lambda s: F.conv2d(s.nchw, weight, bias, 1, pad, 1, shape.c),
        "torch-nhwc": lambda s: F.conv2d(s.nhwc, weight, bias, 1, pad, 1, shape.c),
    }
    missing: Dict[str, str] = {}
    settings: Dict[str, Dict] = {}
    status = runtime_status()
    wanted = [p for p in peers if "missing" not in status[p]]
    missing.update({p: status[p]["missing"] for p in peers if "missing" in status[p]})
    if wanted:
        onnx_path = workdir / f"dwconv_{shape.n}x{shape.c}x{shape.h}x{shape.w}k{shape.k}.onnx"
        try:
            exporter = export_conv_onnx(weight, bias, pad, example, onnx_path)
        except RuntimeUnavailable as e:
            missing.update({p: str(e) for p in wanted})
            wanted = []
        for name in wanted:
            try:
                run, settings[name] = build_runtime(name, onnx_path, threads)
            except RuntimeUnavailable as e:
                missing[name] = str(e)
                continue
            settings[name]["onnx_exporter"] = exporter
            calls[name] = (lambda run_: lambda s: torch.from_numpy(run_(s.as_numpy())))(run)
    return calls, missing, settings


def check_against_float64(calls, first: InputSet, weight, bias, pad: int) -> Tuple[Dict[str, float], Dict[str, str]]:
    """(relative errors, failures): each provider's output on `first` against F.conv2d in float64."""
    ref = F.conv2d(first.nchw.double(), weight.double(), bias.double(), 1, pad, 1, weight.shape[0])
    errors, failures = {}, {}
    for name, call in calls.items():
        try:
            out = call(first)
        except Exception as e:  # noqa: BLE001 - a provider that cannot run the shape is reported, not raised
            failures[name] = f"failed: {first_line(e)}"
            continue
        if tuple(out.shape) != tuple(ref.shape):
            failures[name] = f"output shape {tuple(out.shape)} != {tuple(ref.shape)}"
            continue
        err = ((out.double() - ref).norm() / ref.norm().clamp_min(1e-300)).item()
        errors[name] = err
        if not err <= FP32_TOLERANCE:  # NaN fails too
            failures[name] = f"relative error {err:.2e} against float64 > {FP32_TOLERANCE:g}"
    return errors, failures


def _cycling(call: Callable[[InputSet], torch.Tensor], sets: List[InputSet]) -> Callable[[], torch.Tensor]:
    cycle = itertools.cycle(sets)
    return lambda: call(next(cycle))


def bench_shape(shape: shapes.DWShape, args, timer: Timer, rates: Dict, threads: int, workdir: Path,
                progress: Progress) -> Tuple[List[Dict], Dict[str, Dict]]:
    """One record per provider (timed, or missing / skipped with the reason) and the runtimes' settings."""
    count = 1 if args.smoke else rotation_count(shape, 4, _cache_bytes(timer.device), 512 << 20)
    sets, weight, bias = make_inputs(shape, count)
    with torch.inference_mode():
        calls, missing, settings = build_calls(shape, args.peers, weight, bias, sets[0].nchw, workdir, threads)
        errors, failures = check_against_float64(calls, sets[0], weight, bias, shape.padding)
        for name, why in failures.items():
            print(f"warning: {shape.name} {name} skipped ({why})", file=sys.stderr)
        active = [n for n in calls if n not in failures]
        cases = {n: _cycling(calls[n], sets) for n in active}
        min_sample = 0.0 if args.smoke else 2e-2
        inner = {n: calibrate_inner(cases[n], timer, min_sample) for n in active}
        progress.set_description(shape.name)
        stats = interleaved(cases, timer, warmup=args.warmup, reps=args.reps, inner=inner, on_sample=progress.update)
    flops = roofline.op_flops("fwd", shape)
    records = []
    for name in ["dwconv-nchw", "dwconv-nhwc", "torch-nchw", "torch-nhwc", *args.peers]:
        rec: Dict = {"shape": shape.as_dict(), "provider": name, "library": _library(name),
                     "layout": "nhwc" if name.endswith("-nhwc") else "nchw"}
        if name in missing:
            records.append({**rec, "missing": missing[name]})
            continue
        if name in failures:
            records.append({**rec, "skipped": failures[name], "rel_err": errors.get(name)})
            continue
        s = stats[name]
        gflops = flops / s.median / 1e9
        rec.update({"rel_err": errors[name], "ms": s.median * 1e3, "p20_ms": s.p20 * 1e3, "p80_ms": s.p80 * 1e3,
                    "samples": s.samples, "samples_ms": [round(v * 1e3, 5) for v in s.values],
                    "calls_per_sample": inner[name], "input_sets": count, "gflops": gflops,
                    "sgemm_fraction": gflops / rates["sgemm_gflops"],
                    "fma_peak_fraction": gflops / rates["fma_peak_gflops"] if rates["fma_peak_gflops"] else None})
        records.append(rec)
    return records, settings


def geomean(values: List[float]) -> Optional[float]:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def summarize(records: List[Dict]) -> Dict:
    """Per shape: dwconv's faster layout against the fastest peer (every non-dwconv provider that ran);
    over shapes: geometric means of dwconv's speed-up over the best peer and over each peer."""
    per_shape = []
    peers = list(dict.fromkeys(r["provider"] for r in records if r["library"] != "dwconv"))
    for name in dict.fromkeys(r["shape"]["name"] for r in records):
        timed = {r["provider"]: r for r in records if r["shape"]["name"] == name and "ms" in r}
        mine = [timed[p] for p in DWCONV_PROVIDERS if p in timed]
        others = [timed[p] for p in peers if p in timed]
        row: Dict = {"shape": name}
        if mine:
            best = min(mine, key=lambda r: r["ms"])
            row.update({"dwconv_best": best["provider"], "dwconv_ms": best["ms"], "dwconv_gflops": best["gflops"],
                        "dwconv_fma_peak_fraction": best["fma_peak_fraction"],
                        "dwconv_sgemm_fraction": best["sgemm_fraction"]})
        if others:
            peer = min(others, key=lambda r: r["ms"])
            row.update({"best_peer": peer["provider"], "best_peer_ms": peer["ms"]})
        if mine and others:
            row["speedup_vs_best_peer"] = row["best_peer_ms"] / row["dwconv_ms"]
            row["speedup_vs"] = {r["provider"]: r["ms"] / row["dwconv_ms"] for r in others}
        per_shape.append(row)
    ratios = [r["speedup_vs_best_peer"] for r in per_shape if "speedup_vs_best_peer" in r]
    return {"per_shape": per_shape,
            "geomean_speedup_vs_best_peer": geomean(ratios), "shapes_compared": len(ratios),
            "geomean_speedup_vs": {p: geomean([r["speedup_vs"][p] for r in per_shape if p in r.get("speedup_vs", {})])
                                   for p in peers}}


def main(argv: Optional[List[str]] = None) -> Dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    return run(parse_args(argv), argv)


def run(args: argparse.Namespace, argv: List[str]) -> Dict:
    load_at_start = load_average()
    device = torch.device("cpu")
    threads = torch.get_num_threads()
    status = {name: runtime_status()[name] for name in args.peers}
    print(f"threads {threads} (every library), torch {torch.__version__}, peers "
          + ", ".join(f"{n} {s.get('version') or 'MISSING: ' + s['missing']}" for n, s in status.items())
          + f", {len(args.shape_list)} shapes, warm-up {args.warmup}, reps {args.reps}")
    if args.dropped:
        print(f"dropped {len(args.dropped)} shapes (stride or multiplier not 1): "
              + ", ".join(s.name for s in args.dropped), file=sys.stderr)
    rates = measure_machine(args.smoke, threads)
    print(fma_probe.format_description(rates["fma_probe"]))
    print(f"sgemm {rates['sgemm_gflops']:.1f} GFLOP/s on {threads} threads")
    timer = Timer(device)
    n_providers = 4 + len(args.peers)
    progress = Progress(len(args.shape_list) * n_providers * (args.warmup + args.reps), "peers",
                        enabled=not args.no_progress)
    records: List[Dict] = []
    runtime_settings: Dict[str, Dict] = {}

    def result_of(records_: List[Dict], complete: bool) -> Dict:
        return {"meta": run_metadata("peers", argv, device, args.notes, load_at_start=load_at_start),
                "settings": {"shapes": [s.name for s in args.shape_list], "peers": args.peers,
                             "dwconv_backend": DWCONV_BACKEND, "dtype": "fp32", "op": "fwd (inference)",
                             "threads": threads, "warmup": args.warmup, "reps": args.reps,
                             "tolerance_vs_float64": FP32_TOLERANCE,
                             "flops_count": "2 per multiply-add, every tap (padding taps too)",
                             "runtimes": {n: {**status[n], **runtime_settings.get(n, {})} for n in args.peers}},
                "machine": rates, "complete": complete, "results": records_, "summary": summarize(records_)}

    try:
        with tempfile.TemporaryDirectory(prefix="dwconv-peers-") as workdir:
            for shape in args.shape_list:
                shape_records, settings = bench_shape(shape, args, timer, rates, threads, Path(workdir), progress)
                records += shape_records
                runtime_settings.update(settings)
                if args.json:  # a run cut short keeps the shapes it finished
                    write_json(result_path(args.json, device, "peers"), result_of(records, False), quiet=True)
    finally:
        progress.close()
    result = result_of(records, True)
    print("\n" + tables.peers_table(result))
    print("\n" + tables.peers_rate_table(result))
    print("\n" + tables.peers_summary(result))
    if args.json:
        write_json(result_path(args.json, device, "peers"), result)
    return result


if __name__ == "__main__":
    main()
