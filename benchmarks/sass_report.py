"""Static SASS report: compile every kernel variant for sm_90 (no GPU needed) and count what ptxas made.

    python benchmarks/sass_report.py [--json] [--ks 7 9 11 31] [--map 56] [--kernels fwd dgrad wgrad]

One row per variant: backend, kernel (fwd / dgrad / wgrad), K, dtype, layout, map (the H = W the kernel and
tile were chosen for), variant (the kernel function that runs), registers (per thread), spill_bytes (the
per-thread stack frame: these kernels declare no local arrays, so it is all spill space), instructions (static SASS count, NOPs excluded), fma_instructions
(FFMA, FFMA2, HFMA2, DFMA, HMMA, HGMMA, IMMA and kin) and fma_share.
Register clears that ptxas writes as `HFMA2.MMA Rx, -RZ, RZ, 0, 0` are moves and are not counted at all.

`--json` prints {"meta": ..., "rows": [...]}: meta as in the other result files (command, commit, date,
versions; the machine is the one that compiled) plus the target and the ptxas / cuobjdump / extension that made
and read the cubins; benchmarks/results/sass-sm90.json is rendered into docs/sass.md by make_tables.py.

Backends contribute rows through a `collect_rows(ks, dtypes, layouts, maps, kernels)` function: the
Triton one lives here; a module `benchmarks/sass_<backend>.py` defining `collect_rows` with the same
signature (e.g. for the CUDA C++ kernels' cubins, using `cubin_stats` below) is picked up automatically.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

ARCH = 90
FMA_OPCODES = ("FFMA", "FFMA2", "HFMA2", "DFMA", "HMMA", "HGMMA", "IMMA", "IGMMA", "QMMA", "DMMA", "BMMA")
_SASS_LINE = re.compile(r"^\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)(?:\.[A-Z0-9_.]+)?")
# ptxas clears registers with "HFMA2.MMA Rx, -RZ, RZ, 0, 0": a move, not an FMA (dropped from all counts).
_REGISTER_CLEAR = re.compile(r"HFMA2\.MMA\s+R\d+,\s*-RZ,\s*RZ,")
_RES_USAGE = re.compile(r"REG:(\d+)\s+STACK:(\d+)")
FIELDS = ("backend", "kernel", "K", "dtype", "layout", "map", "variant", "registers", "spill_bytes",
          "instructions", "fma_instructions", "fma_share")


def _cuobjdump() -> str:
    import triton
    try:
        return triton.knobs.nvidia.cuobjdump.path
    except AttributeError:
        return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


def cubin_stats(cubin: bytes, function: str) -> Dict[str, int]:
    """registers, spill_bytes, instructions and fma_instructions of `function` in a cubin."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        tool = _cuobjdump()
        usage = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([tool, "-sass", "-fun", function, path], capture_output=True, text=True,
                              check=True).stdout
    match = None
    lines = usage.splitlines()
    for i, line in enumerate(lines):
        if f"Function {function}" in line and i + 1 < len(lines):
            match = _RES_USAGE.search(lines[i + 1]) or _RES_USAGE.search(line)
    if match is None:
        raise RuntimeError(f"no resource usage for {function} in cuobjdump output:\n{usage}")
    opcodes = Counter(m.group(1) for m in map(_SASS_LINE.match, sass.splitlines())
                      if m and not _REGISTER_CLEAR.search(m.string))
    opcodes.pop("NOP", None)
    total = sum(opcodes.values())
    fma = sum(n for op, n in opcodes.items() if op in FMA_OPCODES)
    return dict(registers=int(match.group(1)), spill_bytes=int(match.group(2)), instructions=total,
                fma_instructions=fma, fma_share=round(fma / total, 3) if total else 0.0)


# ---------------------------------------------------------------------------------------------- Triton

def _compile_triton(launch, target):
    """Compile one recorded launch for `target`, specialised exactly as a launch with these args would be."""
    import triton
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import native_specialize_impl

    backend = make_backend(target)
    fn = launch.kernel
    values = dict(zip(fn.arg_names, launch.args))
    values.update(launch.constexprs)
    signature, constexprs, attrs = {}, {}, {}
    for i, (name, param) in enumerate(zip(fn.arg_names, fn.params)):
        value = values[name] if name in values or not param.has_default else param.default
        if param.is_constexpr:
            signature[name], constexprs[name] = "constexpr", value
            continue
        kind, attr = native_specialize_impl(backend, value, False, True, True)
        signature[name] = kind
        if kind == "constexpr":  # Triton turns integer arguments equal to 1 (unit strides) into constants
            constexprs[name] = value
        elif attr:
            attrs[(i,)] = backend.parse_attr(attr)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                          options={"num_warps": launch.num_warps})


def _triton_launches(kernel: str, k: int, dtype, channels_last: bool, size: int):
    """The launches the Triton launcher issues for one variant (recorded, not run): the default family and
    tile of the call."""
    import torch

    from dwconv._conv_args import check_and_resolve
    from dwconv.backends.triton import TritonBackend
    from dwconv.plans import Plan
    from dwconv.triton.launcher import capture_launches

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    # 64 channels, batch 32: sizes only matter through the tile family and Triton's specialisation.
    x = torch.empty(32, 64, size, size, dtype=dtype).contiguous(memory_format=fmt)
    w = torch.empty(64, 1, k, k, dtype=dtype)
    b = torch.empty(64, dtype=dtype)
    args = check_and_resolve(x, w, b, 1, k // 2, 1)
    grad_out = torch.empty(args.output_shape, dtype=dtype).contiguous(memory_format=fmt)
    backend = TritonBackend()  # routes small half-precision maps to the GEMM kernels, as in real calls
    plan = Plan("triton", backend.families(kernel, x, args)[0])
    with capture_launches() as launches:
        if kernel == "fwd":
            backend.forward(x, w, b, args, plan)
        elif kernel == "dgrad":
            backend.dgrad(grad_out, w, args, plan)
        else:
            backend.wgrad(grad_out, x, args, plan)
    return launches[:1]  # the main kernel (wgrad's second pass is a tiny reduction)


def collect_rows(ks: Iterable[int], dtypes: Iterable[str], layouts: Iterable[str], maps: Iterable[int],
                 kernels: Iterable[str]) -> List[dict]:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise SystemExit("unset TRITON_INTERPRET: the report compiles real GPU kernels")
    import torch
    from triton.backends.compiler import GPUTarget

    target = GPUTarget("cuda", ARCH, 32)
    rows = []
    for kernel in kernels:
        for k in ks:
            for dtype_name in dtypes:
                for layout in layouts:
                    for size in maps:
                        if size < k // 2 + 1:
                            continue
                        launch = _triton_launches(kernel, k, getattr(torch, dtype_name), layout == "nhwc",
                                                  size)[0]
                        compiled = _compile_triton(launch, target)
                        stats = cubin_stats(compiled.asm["cubin"], compiled.metadata.name)
                        rows.append(dict(backend="triton", kernel=kernel, K=k, dtype=dtype_name, layout=layout,
                                         map=size, variant=launch.kernel.__name__, **stats))
                        print(f"compiled triton {kernel} K={k} {dtype_name} {layout} {size}x{size}",
                              file=sys.stderr, flush=True)
    return rows


# ---------------------------------------------------------------------------------------------- report

def _collectors():
    found = {"triton": collect_rows}
    for path in sorted((ROOT / "benchmarks").glob("sass_*.py")):
        if path.stem == "sass_report":
            continue
        module = importlib.import_module(path.stem)
        if hasattr(module, "collect_rows"):
            found[path.stem[len("sass_"):]] = module.collect_rows
    return found


def format_table(rows: List[dict]) -> str:
    header = "| " + " | ".join(FIELDS) + " |"
    sep = "|" + "|".join("---" for _ in FIELDS) + "|"
    body = ["| " + " | ".join(str(row[f]) for f in FIELDS) + " |" for row in rows]
    return "\n".join([header, sep] + body)


def _tool_release(path: str) -> Optional[str]:
    """The "release" line of a CUDA tool's --version ("Cuda compilation tools, release 12.9, V12.9.86")."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return next((line.strip() for line in out.splitlines() if "release" in line), None)


def report_metadata(argv: List[str], backends: List[str]) -> Dict:
    """run_info's record of the run (command, commit, date, versions, the compiling machine), the target, and
    the tools and extension the counts come from."""
    import torch
    import triton

    from run_info import REPO_ROOT, run_metadata

    meta = run_metadata("sass_report", argv, torch.device("cpu"))
    meta["target"] = f"sm_{ARCH}"
    try:
        ptxas = triton.knobs.nvidia.ptxas.path
    except AttributeError:
        ptxas = str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas")
    meta["ptxas"] = _tool_release(ptxas) if "triton" in backends else None
    meta["cuobjdump"] = _tool_release(_cuobjdump())
    if "cuda" in backends:
        from sass_cuda import extension_path
        so = Path(extension_path()).resolve()
        meta["cuda_extension"] = {
            "path": so.relative_to(REPO_ROOT).as_posix() if so.is_relative_to(REPO_ROOT) else str(so),
            "built_utc": datetime.datetime.fromtimestamp(so.stat().st_mtime, datetime.timezone.utc)
            .strftime("%Y-%m-%dT%H:%M:%SZ")}
    return meta


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON: run metadata and one object per variant")
    parser.add_argument("--backends", nargs="+", default=None, help="default: every collector found")
    parser.add_argument("--kernels", nargs="+", default=["fwd", "dgrad", "wgrad"])
    parser.add_argument("--ks", nargs="+", type=int, default=[7, 9, 11, 31])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float16", "bfloat16"])
    parser.add_argument("--layouts", nargs="+", default=["nchw", "nhwc"])
    parser.add_argument("--maps", nargs="+", type=int, default=[56],
                        help="map sizes whose tile family is compiled (56: large maps, 14: small maps)")
    opts = parser.parse_args(argv)
    collectors = _collectors()
    names = opts.backends or list(collectors)
    rows = []
    for name in names:
        if name not in collectors:
            raise SystemExit(f"no SASS collector for backend {name!r}; found {sorted(collectors)}")
        rows += collectors[name](opts.ks, opts.dtypes, opts.layouts, opts.maps, opts.kernels)
    if opts.json:
        argv = sys.argv[1:] if argv is None else list(argv)
        print(json.dumps({"meta": report_metadata(argv, names), "rows": rows}, indent=1))
    else:
        print(format_table(rows))


if __name__ == "__main__":
    main()
