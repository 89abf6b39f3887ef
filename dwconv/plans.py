"""Plans: which kernels run one op of one call.

A plan names a backend, a kernel family within it and a variant of that family:

| backend | families | variant |
|---|---|---|
| cpu | avx512bf16 (bfloat16 only: AVX-512 with vdpbf16ps), avx512, avx2, portable (the instruction set) | none |
| cuda | fma (tiled FMA kernels), mma (tensor cores: fp16/bf16 forward and stride-1 dgrad) | wgrad: the block count its batch is sliced for |
| triton | rows (row-streaming), direct, plane (fp16/bf16 small-map GEMM) | a tile, as its family writes it |
| torch | aten (PyTorch's own convolution) | none |

Written "backend[:family[:variant]]" ("cuda:mma", "triton:rows", "cpu"), a plan is what the dispatch table
stores, what benchmark mode times and caches, what tests and benchmarks pass as `backend=` to force kernels,
and what runs. An empty family or variant means the backend's default for the call.
"""
from __future__ import annotations

from typing import NamedTuple

BACKEND_NAMES = ("cuda", "triton", "cpu", "torch")
OPS = ("fwd", "dgrad", "wgrad")


class Plan(NamedTuple):
    backend: str
    family: str = ""
    variant: str = ""

    def __str__(self) -> str:
        parts = [self.backend, self.family, self.variant]
        while len(parts) > 1 and not parts[-1]:
            parts.pop()
        return ":".join(parts)

    @property
    def complete(self) -> bool:
        """Whether the family is named (the variant may still be the family's default)."""
        return bool(self.family)


def parse(spec: str) -> Plan:
    """A Plan from "backend[:family[:variant]]"; the backend must exist (families are checked by it)."""
    if not isinstance(spec, str):
        raise ValueError(f"a dwconv backend or plan must be a string, got {spec!r}")
    backend, _, rest = spec.partition(":")
    family, _, variant = rest.partition(":")
    if backend not in BACKEND_NAMES:
        raise ValueError(f"unknown dwconv backend {spec!r}; choose 'auto', one of {BACKEND_NAMES}, or a plan "
                         f"'backend:family[:variant]' (dwconv/plans.py)")
    if ":" in rest and not family:
        raise ValueError(f"dwconv plan {spec!r} has a variant but no family")
    return Plan(backend, family, variant)
