"""Shared test helpers: float64 reference, relative-norm comparison, per-dtype tolerances."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

# Relative norm error allowed against the float64 reference.
TOLERANCE = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 2e-3,
    torch.bfloat16: 1e-2,
}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64 (NaN anywhere gives NaN, which fails any bound)."""
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    assert a.shape == e.shape, f"shape {tuple(a.shape)} != expected {tuple(e.shape)}"
    denom = e.norm().item()
    return (a - e).norm().item() / (denom if denom > 0 else 1.0)


def assert_close(actual, expected, dtype, what="", factor=1.0):
    err = rel_err(actual, expected)
    tol = TOLERANCE[dtype] * factor
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e} ({dtype})"


def reference_conv(x, w, b, stride, padding4, dilation):
    """float64 F.conv2d with explicit (top, bottom, left, right) padding, on the CPU."""
    x64 = x.detach().to("cpu", torch.float64)
    w64 = w.detach().to("cpu", torch.float64)
    b64 = None if b is None else b.detach().to("cpu", torch.float64)
    pt, pb, pl, pr = padding4
    x64 = F.pad(x64, (pl, pr, pt, pb))
    return F.conv2d(x64, w64, b64, stride, 0, dilation, groups=x.shape[1])


def reference_grads(x, w, b, grad_out, stride, padding4, dilation):
    """(y, dx, dw, db) of the float64 reference for upstream gradient grad_out."""
    x64 = x.detach().to("cpu", torch.float64).requires_grad_(True)
    w64 = w.detach().to("cpu", torch.float64).requires_grad_(True)
    b64 = None if b is None else b.detach().to("cpu", torch.float64).requires_grad_(True)
    pt, pb, pl, pr = padding4
    y = F.conv2d(F.pad(x64, (pl, pr, pt, pb)), w64, b64, stride, 0, dilation, groups=x.shape[1])
    grads = torch.autograd.grad(y, [t for t in (x64, w64, b64) if t is not None],
                                grad_out.detach().to("cpu", torch.float64))
    dx, dw = grads[0], grads[1]
    db = grads[2] if b is not None else None
    return y.detach(), dx, dw, db


def make_inputs(n, c, h, w, k, multiplier=1, dtype=torch.float32, device="cpu", channels_last=False,
                bias=True, seed=None):
    """Fresh random (non-zero, non-trivial) x, weight, bias."""
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    kh, kw = (k, k) if isinstance(k, int) else k
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float32)
    wt = torch.randn(c * multiplier, 1, kh, kw, generator=g, dtype=torch.float32) / (kh * kw) ** 0.5
    bt = torch.randn(c * multiplier, generator=g, dtype=torch.float32) if bias else None
    x = x.to(device=device, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    wt = wt.to(device=device, dtype=dtype)
    bt = None if bt is None else bt.to(device=device, dtype=dtype)
    return x, wt, bt


@contextlib.contextmanager
def poisoned_outputs():
    """Every output a backend allocates is NaN-filled first, so unwritten elements fail."""
    from dwconv import outputs
    old = outputs.POISON_OUTPUTS
    outputs.POISON_OUTPUTS = True
    try:
        yield
    finally:
        outputs.POISON_OUTPUTS = old


class RecordingDispatchMode(TorchDispatchMode):
    """A dispatch mode that runs every op as it comes and keeps their names (`ops`, e.g. "dwconv.native_fwd.default")."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))
