"""Shared-memory races in the CUDA kernels, found without a GPU (the host's counterpart of racecheck).

The host emulation (csrc/cuda/host_emulation.h) runs a block's warps one at a time between two block
barriers, and a warp's lanes one after another between two warp barriers, in index order or, after
set_reverse_schedule(True), in reverse order. When two threads touch one shared-memory address in that span
and one of them writes, each sees the other's access in one order and not in the other, so a racy kernel's
results depend on the order. Every kernel family here must give bitwise the same outputs under both orders,
from the same inputs. (Not seen this way: a lost update of a non-atomic read-modify-write, since a thread is
never interrupted between its read and its write.)

The same tests run once more with the grid capped at a few blocks (set_max_grid_blocks), so that each block
runs several rounds of its grid-stride loop: a barrier missing at the end of a round (the next round's staging
overwriting shared memory that other threads still read) shows only there. On the GPU those rounds happen only
past 2^30 blocks.
"""
from __future__ import annotations

import contextlib
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_cuda_backend as fma  # noqa: E402
import test_cuda_mma as mma  # noqa: E402

host_ops = fma.host_ops  # the session fixture building the host library


@contextlib.contextmanager
def reverse_schedule(ops):
    previous = ops.set_reverse_schedule(True)
    try:
        yield
    finally:
        ops.set_reverse_schedule(previous)


@contextlib.contextmanager
def max_grid_blocks(ops, blocks):
    previous = ops.set_max_grid_blocks(blocks) if blocks else None
    try:
        yield
    finally:
        if previous is not None:
            ops.set_max_grid_blocks(previous)


GRIDS = [pytest.param(None, id="full_grid"), pytest.param(3, id="grid_of_3_blocks")]


def _outputs_in_both_orders(ops, run):
    """run() twice from the same random state, in index then in reverse thread order."""
    launches = [ops.emulated_launches(False), ops.emulated_launches(True)]
    torch.manual_seed(1234)
    index_order = run()
    with reverse_schedule(ops):
        torch.manual_seed(1234)
        reverse_order = run()
    assert ops.emulated_launches(False) > launches[0] and ops.emulated_launches(True) > launches[1], \
        "the kernels did not run under both schedules"
    return index_order, reverse_order


def _assert_bitwise_equal(index_order, reverse_order, what):
    for name, a, b in zip(("y", "dx", "dw"), index_order, reverse_order):
        assert not a.isnan().any(), f"{what} {name}: NaN left in the output"
        assert torch.equal(a, b), (f"{what} {name}: {int((a != b).sum())} of {a.numel()} elements differ between "
                                   f"the two thread orders (a shared-memory race)")


@pytest.mark.parametrize("mode", [4, 7], ids=["no_barrier", "warps_skewed_by_a_warp_barrier"])
def test_schedule_order_exposes_a_race(host_ops, mode):
    """The self-test kernel without its barrier gives different results in the two orders (also when one
    warp passes a warp barrier before its racing write and the other does not); with it, the same."""
    data = torch.zeros(16)
    racy = _outputs_in_both_orders(host_ops, lambda: host_ops.emulation_selftest(data, mode))
    assert not torch.equal(*racy)
    correct = _outputs_in_both_orders(host_ops, lambda: host_ops.emulation_selftest(data, 0))
    assert torch.equal(*correct) and correct[0].tolist() == [(i + 1) % 64 for i in range(64)]


def _fma_race_check(ops, case, dtype, channels_last, deterministic, wgrad_blocks=0):
    """Both orders bitwise equal, and the first against the float64 reference."""
    runs = []

    def run():
        runs.append(fma._run_native(ops, case, dtype, channels_last, "cpu", deterministic, wgrad_blocks))
        return runs[-1][1]
    _assert_bitwise_equal(*_outputs_in_both_orders(ops, run), case[0])
    fma._check_against_reference(*runs[0], case, dtype, channels_last)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic_wgrad", "deterministic_wgrad"])
@pytest.mark.parametrize("case,dtype,channels_last", fma.PARAMS)
def test_fma_kernels_race_free(host_ops, case, dtype, channels_last, deterministic, grid):
    with max_grid_blocks(host_ops, grid):
        _fma_race_check(host_ops, case, dtype, channels_last, deterministic)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic_wgrad", "deterministic_wgrad"])
def test_wgrad_several_images_per_block_race_free(host_ops, deterministic, grid):
    with max_grid_blocks(host_ops, grid):
        for case in (fma.CASES[1], fma.CASES[7]):
            for channels_last in (False, True):
                _fma_race_check(host_ops, case, fma.F32, channels_last, deterministic, wgrad_blocks=1)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("case,dtype,channels_last", mma.PARAMS)
def test_mma_kernels_race_free(host_ops, case, dtype, channels_last, grid):
    with max_grid_blocks(host_ops, grid):
        # mma._run checks the path and the float64 reference; there is no dw here (a placeholder).
        outputs = _outputs_in_both_orders(
            host_ops, lambda: (*mma._run(host_ops, case, dtype, channels_last, "cpu"), torch.zeros(1)))
    _assert_bitwise_equal(*outputs, case[0])
