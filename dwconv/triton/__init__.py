"""Triton kernels of the depthwise convolution: forward, dgrad (dx) and wgrad (dw).

Each kernel module holds its kernel and launcher (`forward`, `dgrad`, `wgrad`, taking the tile variant and
whether to autotune): the direct kernels `fwd.py`, `dgrad.py`, `wgrad.py`, the row-streaming `rows.py` and
`rows_wgrad.py`, the small-map GEMM `plane.py`. Each kernel family owns its tiles (`direct_tiles.py`,
`rows_tiles.py`, `rows_wgrad_tiles.py`, `plane_tiles.py`: candidate tables, variant syntax, default tile);
`launcher.py` is the shared launch / autotune / capture helper and `common.py` the shared kernel helpers
(interpreter flag, dtypes, index width). Importing this package does not import triton.
"""
