"""The in-tree build backend (build_backend/): it finds the torch installed in the target environment when
pip's isolated build hides it. A whole `pip install -e .` in a fresh environment takes minutes: it is
checked by hand (docs/building.md), not here."""
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import torch

BACKEND_DIR = str(Path(__file__).resolve().parent.parent / "build_backend")
PEP517_HOOKS = ("get_requires_for_build_wheel", "get_requires_for_build_editable", "get_requires_for_build_sdist",
                "prepare_metadata_for_build_wheel", "prepare_metadata_for_build_editable", "build_wheel",
                "build_editable", "build_sdist")


def run_python(python, code, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE")}
    return subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120, env={**base, **env})


def test_finds_the_installed_torch_when_site_packages_are_hidden():
    """Site-packages removed from sys.path and user site off, as pip's isolated build does: torch is found
    where this one lives, and the environment's scripts directory is on PATH."""
    code = (f"import importlib.util, json, os, site, sys, sysconfig\n"
            "hide = {sysconfig.get_path('purelib'), sysconfig.get_path('platlib'), *site.getsitepackages()}\n"
            f"sys.path = [{BACKEND_DIR!r}] + [p for p in sys.path if p not in hide]\n"
            "hidden = importlib.util.find_spec('torch') is None\n"
            "import installed_torch\n"
            "found = installed_torch.make_installed_torch_importable()\n"
            "import torch\n"
            "print(json.dumps([hidden, found, torch.__file__, os.environ['PATH'].split(os.pathsep)]))")
    proc = run_python(sys.executable, code, PYTHONNOUSERSITE="1")
    assert proc.returncode == 0, proc.stderr
    hidden, found, torch_file, path = json.loads(proc.stdout)
    assert hidden
    assert os.path.samefile(found, os.path.dirname(torch.__file__))
    assert os.path.samefile(torch_file, torch.__file__)
    assert sysconfig.get_path("scripts") in path


def test_says_to_install_torch_first_when_the_environment_has_none(tmp_path):
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "env")], check=True, timeout=120)
    python = str(tmp_path / "env" / "bin" / "python")
    code = (f"import sys; sys.path.insert(0, {BACKEND_DIR!r})\n"
            "import installed_torch\n"
            "try:\n    installed_torch.make_installed_torch_importable()\n"
            "except installed_torch.TorchNotInstalledError as e:\n    print(e)")
    proc = run_python(python, code)
    assert proc.returncode == 0, proc.stderr
    assert "has no torch. Install torch first" in proc.stdout and python in proc.stdout


def test_backend_wraps_every_setuptools_hook(monkeypatch):
    from setuptools import build_meta

    monkeypatch.syspath_prepend(BACKEND_DIR)
    import dwconv_build_backend as backend

    assert set(backend.__all__) == set(PEP517_HOOKS)
    for name in PEP517_HOOKS:
        assert getattr(backend, name).__wrapped__ is getattr(build_meta, name), name
