"""Out-of-bounds accesses of the C++ kernels (csrc/cpu, and csrc/cuda in the host emulation), without a GPU.

Each suite of tests/memcheck_kernels.py runs a backend's test grid with every input and output placed against
an inaccessible page (tests/guarded_memory.py), in a subprocess: a read or write past either end of a tensor
kills it with SIGSEGV, as does one past the emulated CUDA kernels' shared memory. The stray-read cases show
that the guards do catch such accesses. Linux only (mmap / mprotect).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "memcheck_kernels.py")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="guard pages need Linux mmap/mprotect")


def _run(arg):
    result = subprocess.run([sys.executable, SCRIPT, arg], capture_output=True, text=True, timeout=600)
    return result, "\n".join((result.stdout + result.stderr).splitlines()[-25:])


# Suites of a CPU kernel family that not every CPU runs.
CPU_FAMILY_SUITES = {"cpu_avx512": "avx512", "cpu_avx512bf16": "avx512bf16"}


def _cpu_family_missing(family):
    import torch

    import dwconv._C  # noqa: F401  (registers torch.ops.dwconv.cpu_families)
    families = torch.ops.dwconv.cpu_families()
    return None if family in families else f"this CPU cannot run the {family} kernels (it runs {families})"


@pytest.mark.parametrize("suite", ["cuda_host", "cuda_host_mma", "cpu", "cpu_portable", "cpu_avx512", "cpu_avx512bf16"])
def test_kernels_stay_in_bounds(suite):
    if suite in CPU_FAMILY_SUITES and (reason := _cpu_family_missing(CPU_FAMILY_SUITES[suite])):
        pytest.skip(reason)
    result, tail = _run(suite)
    assert result.returncode == 0, f"memcheck suite {suite} failed (rc {result.returncode}):\n{tail}"
    assert "runs clean" in result.stdout, tail


@pytest.mark.parametrize("where", ["after", "before", "shared"])
def test_guard_pages_catch_a_stray_read(where):
    result, tail = _run(f"stray_read_{where}")
    assert "in-bounds run clean" in result.stdout, tail
    assert result.returncode == -signal.SIGSEGV, f"expected SIGSEGV, rc {result.returncode}:\n{tail}"
    assert "stray read not caught" not in result.stdout
