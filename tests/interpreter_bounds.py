"""Out-of-bounds detection for kernels run in Triton's interpreter (tests only).

The interpreter executes a kernel's loads and stores on host copies of its tensor arguments, so an address
past a tensor reads or writes whatever memory lies there and a test can pass anyway. Inside
`bounds_checked()`, every load, store and atomic of an active (unmasked) lane must fall inside the storage
of one of the launch's tensor arguments; otherwise it raises at once. The hooks use the interpreter's
internals (triton.runtime.interpreter), so `available()` says whether this Triton has them; tests/conftest.py
runs every test under `checked_when_interpreting()`.
"""
from __future__ import annotations

import contextlib
import os

import numpy as np


def _interpreter():
    from triton.runtime import interpreter
    return interpreter


def available() -> bool:
    try:
        i = _interpreter()
    except ImportError:
        return False
    return all(hasattr(i.InterpreterBuilder, name) for name in
               ("create_masked_load", "create_masked_store", "create_atomic_rmw")) and \
        hasattr(i.GridExecutor, "_init_args_hst") and hasattr(i, "_get_np_dtype")


@contextlib.contextmanager
def bounds_checked():
    i = _interpreter()
    builder, executor = i.InterpreterBuilder, i.GridExecutor
    saved = {name: getattr(builder, name) for name in ("create_masked_load", "create_masked_store", "create_atomic_rmw")}
    saved_init = executor._init_args_hst
    ranges = []  # [start, end) byte ranges of the current launch's tensor arguments (their host copies)

    def init_args(self, args_dev, kwargs):
        args_hst, kwargs_hst = saved_init(self, args_dev, kwargs)
        ranges.clear()
        for arg in list(args_hst) + list(kwargs_hst.values()):
            if hasattr(arg, "untyped_storage"):
                storage = arg.untyped_storage()
                ranges.append((storage.data_ptr(), storage.data_ptr() + storage.nbytes()))
        return args_hst, kwargs_hst

    def check(kind, ptrs, mask):
        size = np.dtype(i._get_np_dtype(ptrs.get_element_ty())).itemsize
        addresses = ptrs.data
        if mask is not None:
            addresses = addresses[np.broadcast_to(mask.data.astype(bool), addresses.shape)]
        addresses = addresses.astype(np.uint64).ravel()
        if addresses.size == 0:
            return
        inside = np.zeros(addresses.shape, dtype=bool)
        for start, end in ranges:
            inside |= (addresses >= start) & (addresses + size <= end)
        if not inside.all():
            raise AssertionError(f"out-of-bounds {kind}: {int((~inside).sum())} lanes, first at address "
                                 f"{int(addresses[~inside][0]):#x}; tensor arguments at {[(hex(a), hex(b)) for a, b in ranges]}")

    def load(self, ptrs, mask, other, *rest):
        check("load", ptrs, mask)
        return saved["create_masked_load"](self, ptrs, mask, other, *rest)

    def store(self, ptrs, value, mask, *rest):
        check("store", ptrs, mask)
        return saved["create_masked_store"](self, ptrs, value, mask, *rest)

    def atomic_rmw(self, op, ptr, val, mask, *rest):
        check("atomic", ptr, mask)
        return saved["create_atomic_rmw"](self, op, ptr, val, mask, *rest)

    executor._init_args_hst = init_args
    builder.create_masked_load, builder.create_masked_store, builder.create_atomic_rmw = load, store, atomic_rmw
    try:
        yield
    finally:
        executor._init_args_hst = saved_init
        for name, fn in saved.items():
            setattr(builder, name, fn)


def checked_when_interpreting():
    """`bounds_checked()` when Triton kernels run in the interpreter (TRITON_INTERPRET=1), else nothing to
    do (on a GPU out-of-bounds accesses are compute-sanitizer's job)."""
    if os.environ.get("TRITON_INTERPRET", "0") != "1":
        return contextlib.nullcontext()
    assert available(), "this Triton's interpreter lacks the hooks tests/interpreter_bounds.py uses"
    return bounds_checked()
