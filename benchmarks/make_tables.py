"""The README's results tables, generated from the committed JSON files in benchmarks/results/; and the
static SASS tables of docs/sass.md, from benchmarks/results/sass-sm90.json.

    python benchmarks/make_tables.py                     # print the Markdown
    python benchmarks/make_tables.py --update README.md  # replace the text between the results markers
    python benchmarks/make_tables.py --update-sass docs/sass.md   # the same for the SASS tables (sass markers)

Every result file contributes a section: the device, versions, commit and exact command, then its tables
(throughput: model costs and images/s with speed-ups over nn.Conv2d; kernels: geometric-mean speed-ups
per op, the forward + backward time of every shape, and the plot when a PNG of the same name sits beside
the JSON; peers: dwconv's inference forward against PyTorch, ONNX Runtime and OpenVINO). GPU files come
before CPU files. Image links are relative to the repository root (the README's folder). The SASS report
(benchmarks/sass_report.py --json) is not a README section: it goes to docs/sass.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from benchmarks import tables

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"

# The result files rendered, in this order within a device.
_SCRIPT_ORDER = {"throughput": 0, "kernels": 1, "peers": 2}

BEGIN_MARKER = "<!-- results:begin -->"
END_MARKER = "<!-- results:end -->"
SASS_BEGIN_MARKER = "<!-- sass:begin -->"
SASS_END_MARKER = "<!-- sass:end -->"
SASS_RESULT = RESULTS_DIR / "sass-sm90.json"
# Result files rendered into a docs page of their own rather than the README.
_DOCS_SCRIPTS = {"sass_report"}


def load_results(paths: List[Path]) -> List[Dict]:
    """Result dictionaries from JSON files and directories of them, GPU runs first, then by device and script."""
    files: List[Path] = []
    for path in paths:
        files += sorted(path.glob("*.json")) if path.is_dir() else [path]
    loaded = []
    for f in files:
        with open(f) as fh:
            data = json.load(fh)
        plot = f.with_suffix(".png")
        if isinstance(data, dict) and plot.exists():
            data["plot_path"] = _relative_to_repo(plot)
        loaded.append(data)
    return load_results_from(loaded)


def _relative_to_repo(path: Path) -> str:
    try:
        return path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return path.as_posix()


def load_results_from(results: List[Dict]) -> List[Dict]:
    """The benchmark results among `results`, GPU runs first, then by device, script and date."""
    scripts = [r["meta"].get("script") if isinstance(r, dict) and "meta" in r else None for r in results]
    kept = [r for r, script in zip(results, scripts) if script in _SCRIPT_ORDER and not _dispatch_table_input(r)]
    others = sum(script not in _SCRIPT_ORDER and script not in _DOCS_SCRIPTS for script in scripts)
    if others:
        print(f"skipping {others} file(s) that are not benchmark results", file=sys.stderr)
    return sorted(kept, key=lambda r: (r["meta"]["device_type"] != "cuda", r["meta"]["device_name"],
                                       _SCRIPT_ORDER[r["meta"]["script"]], r["meta"]["date_utc"]))


def _dispatch_table_input(result: Dict) -> bool:
    """Kernel runs on the 'dispatch' shape set feed dwconv/dispatch_table.json (make_dispatch_table.py), not the
    README."""
    return result["meta"].get("script") == "kernels" and result.get("settings", {}).get("shapes") == "dispatch"


def section(result: Dict) -> str:
    meta = result["meta"]
    if meta["script"] == "peers":
        return "\n\n".join([f"#### Depthwise-conv inference against other libraries, {meta['device_name']}",
                            tables.run_heading(result), tables.peers_summary(result), tables.peers_table(result)])
    if meta["script"] == "throughput":
        return "\n\n".join([f"#### Model throughput, {meta['device_name']}", tables.run_heading(result),
                            tables.model_cost_table(result), tables.throughput_table(result)])
    parts = [f"#### Depthwise-conv kernels, {meta['device_name']}", tables.run_heading(result),
             _machine_line(result), tables.kernel_summary_table(result)]
    parts += [tables.kernel_op_table(result, dtype, "fwd+bwd") for dtype in result["settings"]["dtypes"]
              if "fwd+bwd" in result["settings"]["ops"]]
    if result.get("plot_path"):
        parts.append(f"![speed-ups per shape, {meta['device_name']}]({result['plot_path']})")
    return "\n\n".join(parts)


def _machine_line(result: Dict) -> str:
    rates = result["machine"]
    if "sgemm_gflops" in rates:
        return f"Measured in the same run: sgemm {rates['sgemm_gflops']:.1f} GFLOP/s."
    fma = rates.get("fma_tflops")
    return (f"Measured in the same run: DRAM copy {rates['bandwidth_gbs']:.0f} GB/s, fp32 FMA "
            f"{'n/a' if fma is None else f'{fma:.1f}'} TFLOP/s.")


def render(results: List[Dict]) -> str:
    header = "<!-- generated by benchmarks/make_tables.py from benchmarks/results/*.json; do not edit by hand -->"
    if not results:
        return header + "\n\nNo results yet."
    return header + "\n\n" + "\n\n".join(section(r) for r in results)


# The SASS tables: the target set (forward and dgrad, K = 7, 9, 11) and the rest; fp16 rows stay in the JSON
# (they match bf16's up to conversion instructions).
_SASS_TARGET_KERNELS = ("fwd", "dgrad", "fwd_mma", "dgrad_mma")
_SASS_TARGET_KS = (7, 9, 11)


def _in_sass_target(row: Dict) -> bool:
    return row["kernel"] in _SASS_TARGET_KERNELS and row["K"] in _SASS_TARGET_KS


def render_sass(report: Dict) -> str:
    """docs/sass.md's generated part: where the counts come from, the target summary and the tables."""
    rows = report["rows"]
    return "\n\n".join([
        "<!-- generated by benchmarks/make_tables.py from benchmarks/results/sass-sm90.json; do not edit by hand -->",
        tables.sass_heading(report),
        "### Forward and dgrad at K = 7, 9, 11: the targets",
        "Every row of the target set (fp32, fp16, bf16; both layouts; maps 56 and 14), per kernel function:",
        tables.sass_summary_table(rows, _SASS_TARGET_KERNELS, _SASS_TARGET_KS),
        "### Forward and dgrad, K = 7, 9, 11 (fp32 and bf16)",
        tables.sass_table(rows, lambda r: _in_sass_target(r) and r["dtype"] != "float16"),
        "### wgrad (K = 7, 9, 11) and K = 31 (fp32 and bf16)",
        tables.sass_table(rows, lambda r: not _in_sass_target(r) and r["dtype"] != "float16"),
    ])


def load_sass(path: Path = SASS_RESULT) -> Dict:
    with open(path) as f:
        report = json.load(f)
    if not isinstance(report, dict) or report.get("meta", {}).get("script") != "sass_report":
        raise ValueError(f"{path} is not a sass_report.py --json result")
    return report


def replace_between_markers(text: str, generated: str, begin_marker: str = BEGIN_MARKER,
                            end_marker: str = END_MARKER) -> str:
    begin, end = text.find(begin_marker), text.find(end_marker)
    if begin < 0 or end < 0 or end < begin:
        raise ValueError(f"markers {begin_marker} ... {end_marker} not found (in that order)")
    return text[:begin + len(begin_marker)] + "\n" + generated + "\n" + text[end:]


def main(argv: Optional[List[str]] = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="*", type=Path, default=[RESULTS_DIR],
                   help="result files or directories (default: benchmarks/results/)")
    p.add_argument("--update", metavar="README.md", type=Path,
                   help="replace the text between the results markers of this file")
    p.add_argument("--sass", action="store_true", help="print the SASS tables (docs/sass.md's) instead")
    p.add_argument("--update-sass", metavar="docs/sass.md", type=Path,
                   help=f"replace the text between the sass markers of this file with the tables of "
                        f"{SASS_RESULT.relative_to(REPO_ROOT)}")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.sass or args.update_sass:
        sass = render_sass(load_sass())
        if args.update_sass:
            args.update_sass.write_text(replace_between_markers(args.update_sass.read_text(), sass,
                                                                SASS_BEGIN_MARKER, SASS_END_MARKER))
            print(f"updated {args.update_sass}", file=sys.stderr)
        if args.sass:
            print(sass)
            return sass
        if not args.update:
            return sass
    generated = render(load_results(args.paths))
    if args.update:
        args.update.write_text(replace_between_markers(args.update.read_text(), generated))
        print(f"updated {args.update}", file=sys.stderr)
    else:
        print(generated)
    return generated


if __name__ == "__main__":
    main()
