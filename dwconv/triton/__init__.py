"""Triton kernels of the depthwise convolution: forward, dgrad (dx) and wgrad (dw).

`fwd.py`, `dgrad.py` and `wgrad.py` each hold one kernel family and its launcher; `tiles.py` holds every
tile-size and autotune choice; `common.py` the shared helpers (interpreter flag, dtypes, index width).
"""
from .dgrad import dgrad
from .fwd import forward
from .wgrad import wgrad

__all__ = ["forward", "dgrad", "wgrad"]
