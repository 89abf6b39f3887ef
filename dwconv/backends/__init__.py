"""Backend registry: names, lazy construction, `auto` preference order, availability reports."""
from __future__ import annotations

import importlib
from typing import Dict, List, Optional

import torch

from .. import plans
from ..plans import Plan
from .base import Backend

# name -> "module:Class" (imported on first use: the Triton backend must not import triton eagerly); the
# names are plans.BACKEND_NAMES.
_BACKEND_CLASSES = {
    "cuda": "dwconv.backends.native:CudaBackend",
    "triton": "dwconv.backends.triton:TritonBackend",
    "cpu": "dwconv.backends.native:CpuBackend",
    "torch": "dwconv.backends.reference:TorchBackend",
}
BACKENDS = tuple(_BACKEND_CLASSES)

# The backends "auto" chooses among on each device type (dwconv/dispatch.py), in the order they are listed.
AUTO_ORDER = {
    "cuda": ("cuda", "triton", "torch"),
    "cpu": ("cpu", "torch"),
}

_instances: Dict[str, Backend] = {}
_import_errors: Dict[str, str] = {}


class BackendUnavailableError(RuntimeError):
    """A backend or plan requested by name cannot serve the call (the message says why)."""


_valid_names = {"auto"}


def check_backend_name(name) -> str:
    """name if it is "auto", a backend name or a plan "backend:family[:variant]" (dwconv/plans.py)."""
    if name in _valid_names:
        return name
    try:
        plans.parse(name)
    except ValueError as e:
        raise ValueError(f"unknown dwconv backend {name!r}; choose one of {('auto',) + BACKENDS} or a plan "
                         f"'backend:family[:variant]' (dwconv/plans.py)") from e
    if len(_valid_names) < 1024:
        _valid_names.add(name)
    return name


def get_backend(name: str) -> Optional[Backend]:
    """The backend instance, or None when its module cannot be imported (reason in _import_errors)."""
    if name not in _instances and name not in _import_errors:
        if name not in _BACKEND_CLASSES:
            raise ValueError(f"unknown dwconv backend {name!r}; choose one of {BACKENDS}")
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
    """For each backend ("auto"'s candidates on that device first): None if it can serve tensors on `device`
    in this process, else the reason it cannot."""
    device = torch.device(device)
    order = list(AUTO_ORDER.get(device.type, ())) + [b for b in BACKENDS if b not in AUTO_ORDER.get(device.type, ())]
    return {name: unavailable_reason(name, device) for name in order}


def problem(plan: Plan, op: str, x: torch.Tensor, args) -> Optional[str]:
    """None when `plan` (family and variant possibly empty) can run op on this call, else why not."""
    reason = unavailable_reason(plan.backend, x.device)
    if reason is not None:
        return reason
    backend = get_backend(plan.backend)
    reason = backend.unsupported_reason(x, args)
    if reason is None and plan.family:
        reason = backend.family_problem(plan.family, op, x, args)
    if reason is None and plan.variant:
        reason = backend.variant_problem(plan, op, x, args)
    return reason


def complete(plan: Plan, op: str, x: torch.Tensor, args) -> Plan:
    """The plan with its backend's default family for the call filled in (raises when it cannot run)."""
    reason = problem(plan, op, x, args)
    if reason is not None:
        raise BackendUnavailableError(f"dwconv {'plan' if plan.family else 'backend'} {str(plan)!r} cannot run "
                                      f"this call ({op}): {reason}")
    if plan.family:
        return plan
    return Plan(plan.backend, get_backend(plan.backend).families(op, x, args)[0], plan.variant)


def capable_plans(op: str, x: torch.Tensor, args) -> List[Plan]:
    """Every plan that can run op on this call, over the backends "auto" considers on x's device."""
    out = []
    for name in AUTO_ORDER.get(x.device.type, ("torch",)):
        if unavailable_reason(name, x.device) is None:
            backend = get_backend(name)
            if backend.unsupported_reason(x, args) is None:
                out += backend.plans(op, x, args)
    return out
