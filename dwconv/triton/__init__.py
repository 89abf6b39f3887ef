"""Triton kernels of the depthwise convolution: forward, dgrad (dx) and wgrad (dw).

`fwd.py`, `dgrad.py` and `wgrad.py` each hold one kernel family and its launcher (`forward`, `dgrad`,
`wgrad`); `tiles.py` holds every tile-size and autotune choice; `common.py` the shared helpers
(interpreter flag, dtypes, index width). Importing this package does not import triton.
"""
