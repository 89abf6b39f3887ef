"""PEP 517 build backend of dwconv: setuptools.build_meta, with the torch already installed in the target
environment importable in every hook, so `pip install -e .` (build isolation on, pip's default) compiles
dwconv._C against the torch it will run with. torch is not a build requirement: pip would download a
second, possibly different torch into the isolated build environment. Without torch installed, every
hook stops with a message saying to install it first. `--no-build-isolation` works the same way.
"""
from __future__ import annotations

import functools
import sys

from setuptools import build_meta

from installed_torch import TorchNotInstalledError, make_installed_torch_importable

__all__ = ["get_requires_for_build_wheel", "get_requires_for_build_editable", "get_requires_for_build_sdist",
           "prepare_metadata_for_build_wheel", "prepare_metadata_for_build_editable", "build_wheel",
           "build_editable", "build_sdist"]


def _with_installed_torch(hook):
    @functools.wraps(hook)
    def run(*args, **kwargs):
        try:
            make_installed_torch_importable()
        except TorchNotInstalledError as e:
            sys.exit(f"error: {e}")  # pip shows this line as the build's output
        return hook(*args, **kwargs)
    return run


get_requires_for_build_wheel = _with_installed_torch(build_meta.get_requires_for_build_wheel)
get_requires_for_build_editable = _with_installed_torch(build_meta.get_requires_for_build_editable)
get_requires_for_build_sdist = _with_installed_torch(build_meta.get_requires_for_build_sdist)
prepare_metadata_for_build_wheel = _with_installed_torch(build_meta.prepare_metadata_for_build_wheel)
prepare_metadata_for_build_editable = _with_installed_torch(build_meta.prepare_metadata_for_build_editable)
build_wheel = _with_installed_torch(build_meta.build_wheel)
build_editable = _with_installed_torch(build_meta.build_editable)
build_sdist = _with_installed_torch(build_meta.build_sdist)
