"""Make the torch of the environment being installed into importable in a PEP 517 build process.

pip builds in an isolated environment by default: only the build requirements (setuptools, wheel) are on
sys.path, and PYTHONPATH / PYTHONNOUSERSITE are set to hide everything else. The interpreter running the
build is still the one pip installs for, so started without those variables (`-E`) it reports the
sys.path its own programs see; appending those entries (after the build environment's, whose setuptools
keeps precedence) makes that environment's torch, and only that one, importable here.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
from typing import List

__all__ = ["environment_sys_path", "make_installed_torch_importable", "TorchNotInstalledError"]


class TorchNotInstalledError(RuntimeError):
    pass


def environment_sys_path(python: str = sys.executable) -> List[str]:
    """The sys.path of `python` started as usual, without the PYTHON* variables of an isolated build."""
    code = "import json, sys; print(json.dumps(sys.path[1:]))"  # sys.path[0]: the -c script's directory
    proc = subprocess.run([python, "-E", "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def _torch_missing(python: str) -> str:
    return (f"dwconv compiles its C++ extension against the torch installed in the environment it is installed "
            f"into, and that environment ({python}) has no torch. Install torch first (`pip install torch`; a "
            f"CUDA build of torch for the CUDA kernels), then run this install again.")


def make_installed_torch_importable() -> str:
    """Directory of the target environment's torch package, importable from here on; raises
    TorchNotInstalledError when that environment has none. Also appends the environment's scripts
    directory to PATH, so tools installed there (ninja) are found."""
    scripts = sysconfig.get_path("scripts")
    if scripts and scripts not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.environ.get("PATH", "") + os.pathsep + scripts
    spec = importlib.util.find_spec("torch")
    if spec is None:
        sys.path.extend(p for p in environment_sys_path() if p and p not in sys.path)
        importlib.invalidate_caches()
        spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        raise TorchNotInstalledError(_torch_missing(sys.executable))
    return list(spec.submodule_search_locations)[0]
