"""What every result file records about its run: command, git commit, versions, machine; and where it goes."""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

__all__ = ["REPO_ROOT", "RESULTS_DIR", "device_name", "slug", "load_average", "run_metadata", "result_path", "write_json"]

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _package_version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """The card's name on CUDA ("NVIDIA H100 80GB HBM3"), the processor's model on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_model()


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def result_path(path_arg: str, device: torch.device, script: str, suffix: str = ".json") -> Path:
    """`--json PATH` (or `--plot PATH`): the file itself, or when PATH is a directory (or ends with '/') a file
    in it named by the device, e.g. `cpu-amd-epyc-kernels.json`, `cuda-nvidia-h100-80gb-hbm3-throughput.json`."""
    path = Path(path_arg)
    if path_arg.endswith(("/", os.sep)) or path.is_dir():
        device = torch.device(device)
        return path / f"{device.type}-{slug(device_name(device))}-{script}{suffix}"
    return path


# Tracked paths whose uncommitted changes make a result differ from its commit ("git_dirty"): the code, not the
# results a run writes (a partial write of its own, or an earlier script's, would mark every later run).
_CODE_PATHS = ("benchmarks", "dwconv", "csrc", "robust_models", "setup.py", ":(exclude)benchmarks/results")


def load_average() -> Optional[List[float]]:
    """The machine's 1, 5 and 15 minute load averages (a busy shared machine makes CPU timings noisy)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def run_metadata(script: str, argv: List[str], device: torch.device, notes: str = "",
                 launcher: str = "python", load_at_start: Optional[List[float]] = None) -> Dict[str, Any]:
    """Everything needed to reproduce and judge a result file. launcher: what ran the script
    ("python", or "torchrun --nproc_per_node 8"); load_at_start: load_average() when the run began."""
    device = torch.device(device)
    git_status = _git("status", "--porcelain", "--untracked-files=no", "--", *_CODE_PATHS)
    meta: Dict[str, Any] = {
        "script": script,
        "command": " ".join([launcher, f"benchmarks/{script}.py"] + [shlex.quote(a) for a in argv]),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(git_status) if git_status is not None else None,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _package_version("triton"),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
        "device_type": device.type,
        "device_name": device_name(device),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "load_average": {"start": load_at_start, "end": load_average()},
        "notes": notes,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        meta["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                       "multiprocessors": props.multi_processor_count,
                       "memory_gib": round(props.total_memory / 2**30, 1)}
    return meta


def write_json(path: Path, data: Dict[str, Any], quiet: bool = False) -> None:
    """Write `data` to `path` (through a temporary file, so a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    with open(partial, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(partial, path)
    if not quiet:
        print(f"wrote {path}", file=sys.stderr)
