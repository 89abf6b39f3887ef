"""Markdown tables from the benchmark result dictionaries (the JSON files): used by the scripts to print
their results and by make_tables.py for the README, so both show the same numbers the same way."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

__all__ = ["markdown_table", "kernel_op_table", "kernel_rate_table", "kernel_summary_table", "throughput_table", "model_cost_table",
           "run_heading", "peers_table", "peers_rate_table", "peers_summary", "sass_heading", "sass_summary_table",
           "sass_table"]

PYTORCH_PROVIDERS = ("torch-nchw", "torch-nhwc")


def markdown_table(header: Sequence[str], rows: List[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fraction_label(result: Dict) -> str:
    return "of sgemm" if result["meta"]["device_type"] == "cpu" else "of roofline"


def _providers(result: Dict) -> List[str]:
    return list(dict.fromkeys(r["provider"] for r in result["results"]))


def kernel_op_table(result: Dict, dtype: str, op: str) -> str:
    """One row per shape: PyTorch's times, then each dwconv provider's time (speed-up over PyTorch's faster
    layout, fraction of the roofline)."""
    providers = _providers(result)
    shapes = list(dict.fromkeys(r["shape"]["name"] for r in result["results"]))
    index = {(r["shape"]["name"], r["provider"]): r for r in result["results"] if r["dtype"] == dtype and r["op"] == op}
    rows = []
    for shape in shapes:
        cells = [shape]
        for p in providers:
            r = index.get((shape, p))
            if r is None or "ms" not in r:
                cells.append("n/a")
            elif p in PYTORCH_PROVIDERS:
                cells.append(f"{r['ms']:.3f}")
            else:
                cells.append(f"{r['ms']:.3f} ({r['speedup_vs_best_torch']:.2f}x, {100 * r['roofline_fraction']:.0f}%)")
        rows.append(cells)
    title = (f"{op}, {dtype}: ms (speed-up over PyTorch's faster layout, fraction {_fraction_label(result)})")
    return f"{title}\n\n" + markdown_table(["shape"] + [f"{p} ms" for p in providers], rows)


def kernel_rate_table(result: Dict, dtype: str, op: str) -> str:
    """One row per shape: each provider's achieved FLOP rate and DRAM-traffic rate (ideal bytes over time)."""
    cpu = result["meta"]["device_type"] == "cpu"
    unit, scale = ("GFLOP/s", 1e3) if cpu else ("TFLOP/s", 1.0)
    providers = _providers(result)
    shapes = list(dict.fromkeys(r["shape"]["name"] for r in result["results"]))
    index = {(r["shape"]["name"], r["provider"]): r for r in result["results"] if r["dtype"] == dtype and r["op"] == op}
    rows = []
    for shape in shapes:
        cells = [shape]
        for p in providers:
            r = index.get((shape, p))
            cells.append("n/a" if r is None or "ms" not in r else f"{r['tflops'] * scale:.3g} / {r['gbs']:.3g}")
        rows.append(cells)
    return (f"{op}, {dtype}: achieved {unit} / GB/s\n\n"
            + markdown_table(["shape"] + providers, rows))


def kernel_summary_table(result: Dict) -> str:
    """Per dtype and dwconv provider: geometric-mean speed-up over PyTorch's faster layout for each op, and the
    lowest forward fraction of the roofline at K=11."""
    ops = list(dict.fromkeys(s["op"] for s in result["summary"]))
    rows = []
    for dtype, provider in dict.fromkeys((s["dtype"], s["provider"]) for s in result["summary"]):
        by_op = {s["op"]: s for s in result["summary"] if (s["dtype"], s["provider"]) == (dtype, provider)}
        k11 = by_op.get("fwd", {}).get("min_roofline_fraction_k11")
        rows.append([dtype, provider] + [f"{by_op[o]['geomean_speedup_vs_best_torch']:.2f}x" if o in by_op else "n/a"
                                         for o in ops] + ["n/a" if k11 is None else f"{100 * k11:.0f}%"])
    n_shapes = max((s["shapes"] for s in result["summary"]), default=0)
    title = (f"Geometric mean over {n_shapes} shapes of the speed-up over PyTorch's faster layout; "
             f"last column: forward at K=11, lowest fraction {_fraction_label(result)}")
    return f"{title}\n\n" + markdown_table(["dtype", "provider"] + ops + ["fwd K=11"], rows)


def _peers_cell(r: Optional[Dict]) -> str:
    if r is None:
        return "n/a"
    if "missing" in r:
        return "missing"
    return "n/a" if "ms" not in r else f"{r['ms']:.2f}"


def _percent(fraction: Optional[float]) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.0f}%"


def peers_table(result: Dict) -> str:
    """peers.py: one row per shape: every provider's ms, dwconv's faster layout against the fastest peer, and
    its forward GFLOP/s with the fractions of the FMA peak and of sgemm."""
    providers = _providers(result)
    index = {(r["shape"]["name"], r["provider"]): r for r in result["results"]}
    rows = []
    for s in result["summary"]["per_shape"]:
        cells = [s["shape"]] + [_peers_cell(index.get((s["shape"], p))) for p in providers]
        ratio = s.get("speedup_vs_best_peer")
        cells.append("n/a" if ratio is None else f"{ratio:.2f}x vs {s['best_peer']}")
        cells.append("n/a" if "dwconv_gflops" not in s else
                     f"{s['dwconv_gflops']:.3g} ({_percent(s['dwconv_fma_peak_fraction'])} / "
                     f"{_percent(s['dwconv_sgemm_fraction'])})")
        rows.append(cells)
    machine = result["machine"]
    peak = f"{machine['fma_peak_isa']} FMA peak" if machine.get("fma_peak_isa") else "FMA peak"
    header = (["shape"] + [f"{p} ms" for p in providers]
              + ["dwconv's faster layout: speed-up over the fastest peer", f"its GFLOP/s (of {peak} / of sgemm)"])
    return markdown_table(header, rows)


def peers_rate_table(result: Dict) -> str:
    """peers.py: one row per shape: every provider's forward GFLOP/s (fraction of the FMA peak)."""
    providers = _providers(result)
    index = {(r["shape"]["name"], r["provider"]): r for r in result["results"]}
    rows = []
    for s in result["summary"]["per_shape"]:
        cells = [s["shape"]]
        for p in providers:
            r = index.get((s["shape"], p))
            cells.append("n/a" if r is None or "ms" not in r else
                         f"{r['gflops']:.3g} ({_percent(r['fma_peak_fraction'])})")
        rows.append(cells)
    return "forward GFLOP/s (fraction of the FMA peak)\n\n" + markdown_table(["shape"] + providers, rows)


def peers_summary(result: Dict) -> str:
    """peers.py: the machine's measured rates, the geometric-mean speed-ups and the peers that did not run."""
    m, summary, threads = result["machine"], result["summary"], result["settings"]["threads"]
    lines = []
    probe = m.get("fma_probe", {}).get("isas", {})
    rates = []
    for isa, entry in probe.items():
        if "gflops" in entry:
            per = ", ".join(f"{v['median']:.0f} on {n} thread{'s' if n != '1' else ''}"
                            for n, v in entry["gflops"].items())
            rates.append(f"{isa} {per}")
        else:
            rates.append(f"{isa} skipped ({entry['skipped']})")
    lines.append(f"Measured in the same run: fp32 FMA peak (GFLOP/s, by thread CPU time) {'; '.join(rates) or 'n/a'}; "
                 f"sgemm {m['sgemm_gflops']:.1f} GFLOP/s on {threads} threads.")
    if m.get("fma_peak_note"):
        lines.append(f"The FMA peak used is {m.get('fma_peak_isa') or 'unknown'}: {m['fma_peak_note']}.")
    geo = summary.get("geomean_speedup_vs_best_peer")
    if geo is not None:
        each = ", ".join(f"{p} {v:.2f}x" for p, v in summary["geomean_speedup_vs"].items() if v is not None)
        lines.append(f"dwconv's faster layout against the fastest peer, geometric mean over "
                     f"{summary['shapes_compared']} shapes: {geo:.2f}x (against each: {each}).")
    for name, runtime in result["settings"].get("runtimes", {}).items():
        if "missing" in runtime:
            lines.append(f"{name}: missing ({runtime['missing']}).")
    skipped = [f"{r['shape']['name']} {r['provider']}: {r['skipped']}" for r in result["results"] if "skipped" in r]
    if skipped:
        lines.append("Skipped: " + "; ".join(skipped) + ".")
    return "\n\n".join(lines)


def _config_label(r: Dict) -> str:
    label = f"{r['dtype']} {'channels_last' if r['channels_last'] else 'NCHW'} batch {r['batch_size']}"
    if r.get("compile"):
        label += " compiled"
    if r.get("world_size", 1) > 1:
        label += f" x{r['world_size']} DDP"
    return label


def throughput_table(result: Dict) -> str:
    """One row per model, configuration and mode: images/s of each variant (speed-up over nn.Conv2d)."""
    records = result["results"]
    variants = list(dict.fromkeys(r["variant"] for r in records))
    index = {(r["model"], _config_label(r), r["mode"], r["variant"]): r for r in records}
    rows = []
    for model, config, mode in dict.fromkeys((r["model"], _config_label(r), r["mode"]) for r in records):
        cells = [model, config, mode]
        for v in variants:
            r: Optional[Dict] = index.get((model, config, mode, v))
            if r is None or "images_per_s" not in r:
                cells.append("n/a")
            elif v == variants[0]:
                cells.append(f"{r['images_per_s']:.1f}")
            else:
                cells.append(f"{r['images_per_s']:.1f} ({r['speedup_vs_conv2d']:.2f}x)")
        rows.append(cells)
    return markdown_table(["model", "configuration", "mode"] + [f"{v} img/s" for v in variants], rows)


def model_cost_table(result: Dict) -> str:
    rows = [[m["name"], f"{m['params'] / 1e6:.2f} M",
             "n/a" if m.get("gflops") is None else f"{m['gflops']:.2f}", f"{m['image_size']}"]
            for m in result["models"]]
    return markdown_table(["model", "parameters", "GFLOPs (fvcore)", "image size"], rows)


def run_heading(result: Dict) -> str:
    """Device, versions, commit and the exact command of a result file."""
    m = result["meta"]
    versions = f"torch {m['torch']}" + (f", triton {m['triton']}" if m.get("triton") else "") + (
        f", CUDA {m['cuda']}" if m.get("cuda") and m["device_type"] == "cuda" else "")
    threads = f", {m['torch_num_threads']} threads" if m["device_type"] == "cpu" else ""
    commit = (m.get("git_commit") or "unknown")[:10] + (" (modified)" if m.get("git_dirty") else "")
    text = (f"{m['device_name']} ({m['device_type']}{threads}), {versions}, commit {commit}, {m['date_utc']}\n"
            f"`{m['command']}`")
    load = (m.get("load_average") or {}).get("start")
    if m["device_type"] == "cpu" and load:
        text += f"\n\nLoad average (1 min) at the start: {load[0]} on {m.get('cpu_count')} cores."
    if m.get("notes"):
        text += f"\n\nNotes: {m['notes']}"
    return text


# ------------------------------------------------------------------------- static SASS (sass_report.py --json)

SASS_FIELDS = ("backend", "kernel", "K", "dtype", "layout", "map", "variant", "registers", "spill_bytes",
               "instructions", "fma_instructions", "fma_share")


def sass_heading(report: Dict) -> str:
    """Where the counts come from: target, tools, the extension's build, commit and the exact command."""
    m = report["meta"]
    tools = ", ".join(f"{name} {_release(m.get(name))}" for name in ("ptxas", "cuobjdump") if m.get(name))
    commit = (m.get("git_commit") or "unknown")[:10] + (" (modified)" if m.get("git_dirty") else "")
    text = (f"{m['target']}, compiled on {m['cpu']} without a GPU: torch {m['torch']}, triton {m['triton']}"
            + (f", {tools}" if tools else "") + f"; commit {commit}, {m['date_utc']}")
    extension = m.get("cuda_extension")
    if extension:
        text += f"\nCUDA kernels: the cubins of `{extension['path']}` (built {extension['built_utc']})"
    text += f"\n`{m['command']}`"
    if m.get("notes"):
        text += f"\n\nNotes: {m['notes']}"
    return text


def _release(line: Optional[str]) -> str:
    """"Cuda compilation tools, release 12.9, V12.9.86" -> "12.9"."""
    if not line or "release " not in line:
        return "unknown"
    return line.split("release ", 1)[1].split(",", 1)[0]


def _kernel_function(variant: str) -> str:
    """The kernel function of a variant, without template arguments ("fwd_tiled_kernel<K=7>" -> "fwd_tiled_kernel")."""
    return variant.split("<", 1)[0]


def _span(values: List, fmt: str = "{}") -> str:
    lo, hi = min(values), max(values)
    return fmt.format(lo) if lo == hi else f"{fmt.format(lo)}-{fmt.format(hi)}"


def sass_summary_table(rows: List[Dict], kernels: Sequence[str], ks: Sequence[int]) -> str:
    """Per backend and kernel function, over the rows of these kernels and sizes: how many rows, how many
    spill, their registers, and how many reach an FMA share of at least one half (with the range)."""
    groups: Dict = {}
    for r in rows:
        if r["kernel"] in kernels and r["K"] in ks:
            groups.setdefault((r["backend"], _kernel_function(r["variant"])), []).append(r)
    table = []
    for (backend, function), members in groups.items():
        shares = [r["fma_share"] for r in members]
        table.append([backend, f"`{function}`", len(members), sum(r["spill_bytes"] > 0 for r in members),
                      _span([r["registers"] for r in members]), sum(s >= 0.5 for s in shares),
                      _span(shares, "{:.3f}")])
    return markdown_table(["backend", "kernel function", "rows", "spilling", "registers",
                           "FMA share >= 0.5", "FMA share"], table)


def sass_table(rows: List[Dict], keep) -> str:
    """The rows for which keep(row) holds, in the report's order, every field."""
    return markdown_table(SASS_FIELDS, [[r[f] for f in SASS_FIELDS] for r in rows if keep(r)])
