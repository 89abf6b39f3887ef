"""Backend registry: names, lazy construction, `auto` preference order, availability reports."""
from __future__ import annotations

import importlib
from typing import Dict, Optional

import torch

from .base import Backend

# name -> "module:Class" (imported on first use: the Triton backend must not import triton eagerly).
_BACKEND_CLASSES = {
    "cuda": "dwconv.backends.native:CudaBackend",
    "triton": "dwconv.backends.triton:TritonBackend",
    "cpu": "dwconv.backends.native:CpuBackend",
    "torch": "dwconv.backends.reference:TorchBackend",
}
BACKENDS = tuple(_BACKEND_CLASSES)

# Order in which "auto" tries backends on each device type; the first that can serve the call wins.
AUTO_ORDER = {
    "cuda": ("cuda", "triton", "torch"),
    "cpu": ("cpu", "torch"),
}

_instances: Dict[str, Backend] = {}
_import_errors: Dict[str, str] = {}


class BackendUnavailableError(RuntimeError):
    """A backend requested by name cannot serve the call (the message says why)."""


def check_backend_name(name) -> str:
    if not isinstance(name, str) or (name != "auto" and name not in _BACKEND_CLASSES):
        raise ValueError(f"unknown dwconv backend {name!r}; choose one of {('auto',) + BACKENDS}")
    return name


def get_backend(name: str) -> Optional[Backend]:
    """The backend instance, or None when its module cannot be imported (reason in _import_errors)."""
    check_backend_name(name)
    if name not in _instances and name not in _import_errors:
        module_name, class_name = _BACKEND_CLASSES[name].split(":")
        try:
            _instances[name] = getattr(importlib.import_module(module_name), class_name)()
        except ImportError as e:
            _import_errors[name] = f"the {name!r} backend cannot be imported: {e}"
    return _instances.get(name)


def unavailable_reason(name: str, device) -> Optional[str]:
    backend = get_backend(name)
    if backend is None:
        return _import_errors[name]
    return backend.unavailable_reason(torch.device(device))


def available_backends(device="cpu") -> Dict[str, Optional[str]]:
    """For each backend (in `auto` preference order for that device first): None if it can serve tensors
    on `device` in this process, else the reason it cannot."""
    device = torch.device(device)
    order = list(AUTO_ORDER.get(device.type, ())) + [b for b in BACKENDS if b not in AUTO_ORDER.get(device.type, ())]
    return {name: unavailable_reason(name, device) for name in order}


def select_backend(name: str, op: str, x: torch.Tensor, args) -> Backend:
    """The backend that will run op ("fwd", "dgrad", "wgrad") on x (input or grad_out): the named one (or an
    error saying why it cannot), or for "auto" the first in AUTO_ORDER that can and is preferred. Each op
    resolves "auto" on its own, so a backward may use other backends than its forward."""
    check_backend_name(name)
    if name != "auto":
        reason = unavailable_reason(name, x.device)
        if reason is None:
            reason = get_backend(name).unsupported_reason(x, args)
        if reason is not None:
            raise BackendUnavailableError(f"dwconv backend {name!r} cannot run this call: {reason}")
        return get_backend(name)
    reasons = []
    for candidate in AUTO_ORDER.get(x.device.type, ("torch",)):
        reason = unavailable_reason(candidate, x.device)
        backend = get_backend(candidate)
        if reason is None:
            reason = backend.unsupported_reason(x, args) or (
                None if backend.preferred_by_auto(op, x, args) else "slower than another backend here")
        if reason is None:
            return backend
        reasons.append(f"{candidate}: {reason}")
    raise BackendUnavailableError("no dwconv backend can run this call: " + "; ".join(reasons))
