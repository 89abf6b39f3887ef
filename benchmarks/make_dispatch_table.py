"""Build dwconv/dispatch_table.json (what "auto" runs per device and class of call) from committed results.

Reads every kernel-timing result in benchmarks/results/:
- benchmarks/kernels.py files (each dwconv plan and PyTorch in both layouts, per op and shape);
- the Triton row-streaming comparisons (benchmarks/triton_rows.py: triton:rows, triton:direct and PyTorch).
For each device and measured call, the plan with the highest speed-up over PyTorch in the same layout wins
if it beats PyTorch, otherwise PyTorch ("torch:aten") does; for each class of call (dwconv/dispatch_table.py:
op, dtype, layout, kernel, stride, dilation, multiplier, and map-size, channel, batch and thread classes) the
plan with the highest geometric-mean speed-up across the class's measured calls, likewise. The table keeps
every candidate's speed-up and the shapes behind it.

    python benchmarks/make_dispatch_table.py            # rewrite dwconv/dispatch_table.json
    python benchmarks/make_dispatch_table.py --check    # exit 1 if the committed table is not what the results give
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import torch

from dwconv._conv_args import ConvArgs
from dwconv.dispatch_table import TABLE_PATH, call_class, call_key
from benchmarks.run_info import REPO_ROOT, RESULTS_DIR

TORCH_PLAN = "torch:aten"
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
OPS = ("fwd", "dgrad", "wgrad")

# (device, "classes" or "calls", key) -> shape name -> plan -> speed-up over PyTorch in the same layout
Measurements = Dict[Tuple[str, str, str], Dict[str, Dict[str, float]]]


def _add(out: Measurements, device: str, op: str, dtype: str, channels_last: bool, args: ConvArgs, threads: int,
         shape: str, plan: str, speedup: float) -> None:
    for level, key in (("classes", call_class(op, _DTYPES[dtype], channels_last, args, threads)),
                       ("calls", call_key(op, _DTYPES[dtype], channels_last, args, threads))):
        out[(device, level, key)].setdefault(shape, {TORCH_PLAN: 1.0})[plan] = speedup


def _args(n: int, c: int, h: int, w: int, k: int, stride: int, multiplier: int) -> ConvArgs:
    p = k // 2
    return ConvArgs(n, c, h, w, multiplier, (k, k), (stride, stride), (p, p, p, p), (1, 1))


def _threads(meta: Dict) -> int:
    return int(meta.get("torch_num_threads") or 0) if meta.get("device_type") == "cpu" else 0


def from_kernels_result(data: Dict, out: Measurements) -> bool:
    """Add a benchmarks/kernels.py result; False when it predates per-plan records."""
    device = data.get("settings", {}).get("dispatch_device")
    if not device:
        return False
    threads = _threads(data["meta"])
    torch_ms = {(r["shape"]["name"], r["dtype"], r["op"], r["layout"]): r["ms"]
                for r in data["results"] if r["backend"] == "torch" and r.get("provider", "").startswith("torch-")
                and "ms" in r}
    for r in data["results"]:
        spec = r["backend"]
        if r["op"] not in OPS or "ms" not in r or spec == "auto" or r.get("provider", "").startswith("torch-"):
            continue
        plan = r.get("plan") or spec
        base = torch_ms.get((r["shape"]["name"], r["dtype"], r["op"], r["layout"]))
        if base is None or plan == "none":
            continue
        s = r["shape"]
        args = _args(s["n"], s["c"], s["h"], s["w"], s["k"], s["stride"], s.get("multiplier", 1))
        _add(out, device, r["op"], r["dtype"], r["layout"] == "nhwc", args, threads, s["name"], plan, base / r["ms"])
    return True


def from_triton_rows_result(data: Dict, out: Measurements) -> bool:
    """Add a benchmarks/triton_rows.py result (rows: torch_us, rows_us, direct_us per op and shape). Only runs
    with autotuning on, as the triton backend runs by default on a GPU."""
    info = data.get("info", {})
    device = info.get("device")
    if not device or not info.get("autotune") or not data.get("rows") or "rows_us" not in data["rows"][0]:
        return False
    for r in data["rows"]:
        if r["op"] not in OPS:
            continue
        args = _args(r["N"], r["C"], r["H"], r.get("W", r["H"]), r["K"], r.get("stride", 1), r.get("multiplier", 1))
        for family in ("rows", "direct"):
            if r.get(f"{family}_us"):
                _add(out, device, r["op"], r["dtype"], bool(r["channels_last"]), args, 0, r["shape"] + f" N{r['N']}",
                     f"triton:{family}", r["torch_us"] / r[f"{family}_us"])
    return True


def geomean(values: Iterable[float]) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


def build(paths: List[Path]) -> Dict:
    measured: Measurements = defaultdict(dict)
    sources = []
    for path in sorted(paths):
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict):
            continue
        script = data.get("meta", {}).get("script")
        used = (from_kernels_result(data, measured) if script == "kernels"
                else from_triton_rows_result(data, measured) if "info" in data else False)
        if used:
            sources.append(str(path.relative_to(REPO_ROOT)))
    devices: Dict[str, Dict[str, Dict[str, Dict]]] = defaultdict(lambda: {"calls": {}, "classes": {}})
    for (device, level, key), shapes in sorted(measured.items()):
        plans = sorted({p for by_plan in shapes.values() for p in by_plan})
        speedups = {}
        for plan in plans:
            values = [by_plan[plan] for by_plan in shapes.values() if plan in by_plan]
            if len(values) == len(shapes):  # only plans measured on every shape of the class compete
                speedups[plan] = round(geomean(values), 4)
        best = max(speedups, key=lambda p: (speedups[p], p == TORCH_PLAN))
        devices[device][level][key] = {"plan": best, "speedup_vs_torch": speedups[best], "measured": speedups,
                                       "shapes": sorted(shapes)}
    return {"format": 2, "generated_by": "benchmarks/make_dispatch_table.py", "sources": sources,
            "devices": {d: {level: dict(sorted(e.items())) for level, e in sorted(levels.items())}
                        for d, levels in sorted(devices.items())}}


def render(table: Dict) -> str:
    return json.dumps(table, indent=1, sort_keys=False) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=str(RESULTS_DIR), help="folder of result JSON files")
    p.add_argument("--out", default=str(TABLE_PATH), help="the table to write")
    p.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = p.parse_args(argv)
    text = render(build(list(Path(args.results).glob("*.json"))))
    out = Path(args.out)
    if args.check:
        if not out.exists() or out.read_text() != text:
            print(f"{out} is not what {args.results} gives: run python benchmarks/make_dispatch_table.py",
                  file=sys.stderr)
            return 1
        return 0
    out.write_text(text)
    table = json.loads(text)
    print(f"wrote {out}: " + ", ".join(f"{d}: {len(e['calls'])} calls, {len(e['classes'])} classes"
                                       for d, e in table["devices"].items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
