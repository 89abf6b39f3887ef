"""SASS rows for the CUDA C++ kernels (csrc/cuda), read from the built extension's cubins with cuobjdump.

    python benchmarks/sass_report.py --backends cuda [--json]

Picked up by sass_report.py (`collect_rows` with its signature, rows in its FIELDS with backend "cuda").
The extension is `dwconv/_C*.so` of this checkout unless DWCONV_CUDA_SO names another build (e.g. one
built in a copy of the tree). Kernel sizes without a compile-time instantiation (see csrc/cuda/static_switch.h)
report the generic kernel (variant `..._tiled_kernel<K=any>`). The small-map path is a tile choice of the
same kernels, so every map reports the same function. fp16/bf16 fwd and dgrad rows of K <= 25 are followed
by rows of the tensor-core kernel that the plan cuda:mma selects (kernel `fwd_mma` / `dgrad_mma`, one function
serves both; variant `conv_mma_kernel<KSTEPS=.., NJ=..>`: k-steps per 8-column strip and strips per tile row,
which depend on K and the map).
"""
from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from sass_report import ARCH, _cuobjdump, cubin_stats  # noqa: E402

SPECIALIZED_K = (3, 5, 7, 9, 11, 13)  # csrc/cuda/static_switch.h
_DTYPES = {"float32": "float", "float16": "__half", "bfloat16": "__nv_bfloat16", "float64": "double"}
_LAYOUTS = {"nchw": "0", "nhwc": "1"}
# e.g. "void dwconv::cuda::(anonymous namespace)::fwd_tiled_kernel<float, (dwconv::Layout)1, 7>(...)"
_KERNEL = re.compile(r"(fwd|dgrad|wgrad)_tiled_kernel<([^,]+), \(dwconv::Layout\)(\d), (\d+)>")
# The tensor-core kernel (fwd_mma.cu) serves both fwd and stride-1 dgrad: conv_mma_kernel<T, layout, KSTEPS, NJ>,
# keyed as ("mma", T, layout, (KSTEPS, NJ)).
_MMA_KERNEL = re.compile(r"(conv_mma)_kernel<([^,]+), \(dwconv::Layout\)(\d), (\d+), (\d+)>")
MMA_MAX_K = 25
MMA_DTYPES = ("float16", "bfloat16")


def mma_variant(k: int, size: int, layout: str) -> Tuple[int, int]:
    """(KSTEPS, NJ) the launcher picks for a square size x size map (mma_tile and launch_strips in fwd_mma.cu)."""
    ksteps = 1 if k <= 9 else 2
    tw = min((size + 7) // 8 * 8, 32 if size > 16 and layout == "nhwc" else 64)
    nj = next(n for n in (1, 2, 4, 8) if tw // 8 <= n)
    return ksteps, nj


def extension_path() -> str:
    path = os.environ.get("DWCONV_CUDA_SO")
    if path:
        return path
    found = sorted(glob.glob(str(ROOT / "dwconv" / "_C*.so")))
    if not found:
        raise SystemExit("no built dwconv/_C*.so: run `pip install --no-build-isolation -e .` or set DWCONV_CUDA_SO")
    return found[0]


def _demangle(names: List[str]) -> List[str]:
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def extract_kernels(so_path: str, arch: int = ARCH) -> Dict[Tuple[str, str, str, int], Tuple[bytes, str]]:
    """(kernel, C++ dtype, layout digit, K) -> (cubin bytes, mangled name) for the sm_<arch> cubins of so_path."""
    tool = _cuobjdump()
    found = {}
    with tempfile.TemporaryDirectory() as tmp:
        listing = subprocess.run([tool, "-lelf", os.path.abspath(so_path)], capture_output=True, text=True).stdout
        cubins = [line.split(":", 1)[1].strip() for line in listing.splitlines()
                  if line.startswith("ELF file") and f"sm_{arch}." in line]
        for name in cubins:
            subprocess.run([tool, "-xelf", name, os.path.abspath(so_path)], cwd=tmp, capture_output=True, check=True)
            with open(os.path.join(tmp, name), "rb") as f:
                cubin = f.read()
            usage = subprocess.run([tool, "-res-usage", os.path.join(tmp, name)], capture_output=True, text=True,
                                   check=True).stdout
            mangled = re.findall(r"Function (\S+):", usage)
            for raw, pretty in zip(mangled, _demangle(mangled)):
                m = _KERNEL.search(pretty)
                if m:
                    found[(m.group(1), m.group(2), m.group(3), int(m.group(4)))] = (cubin, raw)
                m = _MMA_KERNEL.search(pretty)
                if m:
                    found[("mma", m.group(2), m.group(3), (int(m.group(4)), int(m.group(5))))] = (cubin, raw)
    return found


def collect_rows(ks: Iterable[int], dtypes: Iterable[str], layouts: Iterable[str], maps: Iterable[int],
                 kernels: Iterable[str]) -> List[dict]:
    so_path = extension_path()
    table = extract_kernels(so_path)
    if not table:
        print(f"sass_cuda: {so_path} holds no sm_{ARCH} dwconv kernels (built without CUDA?); no cuda rows",
              file=sys.stderr)
        return []
    rows = []
    for kernel in kernels:
        for k in ks:
            for dtype_name in dtypes:
                for layout in layouts:
                    k_inst = k if k in SPECIALIZED_K and dtype_name != "float64" else 0
                    key = (kernel, _DTYPES[dtype_name], _LAYOUTS[layout], k_inst)
                    if key not in table:
                        raise SystemExit(f"sass_cuda: no kernel {key} in {so_path}")
                    cubin, function = table[key]
                    stats = cubin_stats(cubin, function)
                    variant = f"{kernel}_tiled_kernel<K={k_inst if k_inst else 'any'}>"
                    for size in maps:
                        if size < k // 2 + 1:
                            continue
                        rows.append(dict(backend="cuda", kernel=kernel, K=k, dtype=dtype_name, layout=layout,
                                         map=size, variant=variant, **stats))
                    # The tensor-core alternative (plan cuda:mma), reported as kernel "fwd_mma" / "dgrad_mma".
                    if kernel not in ("fwd", "dgrad") or k > MMA_MAX_K or dtype_name not in MMA_DTYPES:
                        continue
                    for size in maps:
                        if size < k // 2 + 1:
                            continue
                        ksteps, nj = mma_variant(k, size, layout)
                        mma_key = ("mma", _DTYPES[dtype_name], _LAYOUTS[layout], (ksteps, nj))
                        if mma_key not in table:
                            raise SystemExit(f"sass_cuda: no kernel {mma_key} in {so_path}")
                        cubin, function = table[mma_key]
                        rows.append(dict(backend="cuda", kernel=f"{kernel}_mma", K=k, dtype=dtype_name, layout=layout,
                                         map=size, variant=f"conv_mma_kernel<KSTEPS={ksteps},NJ={nj}>",
                                         **cubin_stats(cubin, function)))
    return rows


if __name__ == "__main__":
    import json
    print(json.dumps(collect_rows([7, 9, 11, 31], ["float32", "float16", "bfloat16"], ["nchw", "nhwc"], [56],
                                  ["fwd", "dgrad", "wgrad"]), indent=1))
