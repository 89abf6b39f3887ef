"""The CPU output pool (csrc/cpu/output_pool.cpp, dwconv/outputs.py): outputs of 4 MiB and more come from memory
that stays mapped after their tensors die; the next output of a fitting size reuses it. Reused memory holds the
previous output's values, so these tests compute into it without poisoning: an element a kernel left unwritten
would keep an old value and fail the comparison."""
import multiprocessing
import os
import sys
import threading
import time

import pytest
import torch

import dwconv
from dwconv import _extension, config, outputs
from utils import assert_close, make_inputs, poisoned_outputs, reference_conv, reference_grads

pytestmark = pytest.mark.skipif(not _extension.has_output_pool() or not _extension.has_cpu_kernels(),
                                reason="needs the C++ extension's CPU kernels and output pool")

# N1 C8 750x750 fp32: 18 MB per output; a 3x3 conv keeps it cheap.
SHAPE = (1, 8, 750, 750, 3)
MIB = 1 << 20


_start = {}


@pytest.fixture(autouse=True)
def fresh_pool(monkeypatch):
    """Each test starts with an empty cache, the default limit and its own copy of the settings; stats() counts
    from the test's start."""
    for name in ("_settings", "generation"):
        monkeypatch.setattr(config, name, getattr(config, name))
    config.set(output_pool_mib=1024)
    dwconv.empty_output_pool()
    _start.update(dwconv.output_pool_stats())
    yield
    dwconv.empty_output_pool()


def conv(x, wt, b):
    return dwconv.depthwise_conv2d(x, wt, b, padding=1, backend="cpu")


def expected(x, wt, b):
    return reference_conv(x, wt, b, (1, 1), (1, 1, 1, 1), (1, 1))


def stats():
    """The pool's stats, counts and memory in use since the test started (the cache starts empty)."""
    now = dwconv.output_pool_stats()
    return {k: v - _start[k] if k in ("in_use_bytes", "in_use_blocks", "hits", "misses") else v
            for k, v in now.items()}


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_reuse_after_free_is_exact(channels_last):
    n, c, h, w, k = SHAPE
    x1, wt1, b1 = make_inputs(n, c, h, w, k, channels_last=channels_last, seed=1)
    x2, wt2, b2 = make_inputs(n, c, h, w, k, channels_last=channels_last, seed=2)
    y1 = conv(x1, wt1, b1)
    assert y1.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert_close(y1, expected(x1, wt1, b1), torch.float32, "first")
    first, s = y1.data_ptr(), stats()
    assert s["in_use_blocks"] == 1 and s["in_use_bytes"] >= y1.nbytes and s["misses"] == 1 and s["hits"] == 0
    del y1
    assert stats()["cached_blocks"] == 1 and stats()["in_use_blocks"] == 0
    y2 = conv(x2, wt2, b2)  # into the memory that holds y1's values
    assert y2.data_ptr() == first and stats()["hits"] == 1 and stats()["cached_blocks"] == 0
    assert_close(y2, expected(x2, wt2, b2), torch.float32, "reused")


def test_backward_outputs_pooled_and_exact():
    n, c, h, w, k = SHAPE
    x, wt, b = make_inputs(n, c, h, w, k, seed=3)
    x.requires_grad_(True)
    y = conv(x, wt, b)
    grad_out = torch.randn_like(y)
    dx, = torch.autograd.grad(y, x, grad_out)
    assert stats()["in_use_blocks"] == 2  # y and dx
    y_ref, dx_ref, _, _ = reference_grads(x, wt, b, grad_out, (1, 1), (1, 1, 1, 1), (1, 1))
    assert_close(y, y_ref, torch.float32, "forward")
    assert_close(dx, dx_ref, torch.float32, "dgrad")
    del y, dx
    dx2, = torch.autograd.grad(conv(x, wt, b), x, grad_out)  # both from the cache now
    assert stats()["hits"] == 2
    assert_close(dx2, dx_ref, torch.float32, "dgrad from reused memory")


def test_small_outputs_not_pooled():
    x, wt, b = make_inputs(2, 16, 32, 32, 3, seed=4)
    y = conv(x, wt, b)
    assert y.nbytes < outputs.LARGE_OUTPUT_BYTES and stats()["misses"] == 0 and stats()["in_use_blocks"] == 0


def test_limit_keeps_least_recently_freed_out():
    n, c, h, w, k = SHAPE
    x, wt, b = make_inputs(n, c, h, w, k, seed=5)
    config.set(output_pool_mib=30)  # room for one 18 MB output, not two
    a, bb = conv(x, wt, b), conv(x, wt, b)
    second = bb.data_ptr()
    del a, bb  # a first, then bb: bb's block stays
    s = stats()
    assert s["cached_blocks"] == 1 and s["cached_bytes"] <= 30 * MIB
    assert conv(x, wt, b).data_ptr() == second


def test_pool_off_uses_torch_empty():
    n, c, h, w, k = SHAPE
    x, wt, b = make_inputs(n, c, h, w, k, seed=6)
    config.set(output_pool_mib=0)
    with poisoned_outputs():
        y = conv(x, wt, b)
    assert stats()["misses"] == 0 and stats()["in_use_blocks"] == 0
    assert_close(y, expected(x, wt, b), torch.float32)


def test_lowering_the_limit_frees_at_once():
    n, c, h, w, k = SHAPE
    x, wt, b = make_inputs(n, c, h, w, k, seed=7)
    y, z, keep = conv(x, wt, b), conv(x, wt, b), conv(x, wt, b)
    del y, z
    assert stats()["cached_blocks"] == 2
    config.set(output_pool_mib=30)  # room for one
    assert stats()["cached_blocks"] == 1 and stats()["cached_bytes"] <= 30 * MIB
    with config.override(output_pool_mib=0):  # off: nothing cached, outputs from torch.empty
        assert stats()["cached_blocks"] == 0
        assert stats()["in_use_blocks"] == 1  # keep
        del keep  # comes back under limit 0: freed
        assert stats()["cached_blocks"] == 0 and stats()["in_use_blocks"] == 0
        conv(x, wt, b)
        assert stats()["misses"] == 3
    conv(x, wt, b)  # the limit is back (override's exit): pooled again
    assert stats()["misses"] == 4 and stats()["cached_blocks"] == 1


def test_override_exit_lowers_the_limit_at_once():
    n, c, h, w, k = SHAPE
    x, wt, b = make_inputs(n, c, h, w, k, seed=17)
    config.set(output_pool_mib=20)  # room for one 18 MiB block
    with config.override(output_pool_mib=1024):
        y, z = conv(x, wt, b), conv(x, wt, b)
        del y, z
        assert stats()["cached_blocks"] == 2
    assert stats()["cached_blocks"] == 1


def test_block_above_the_limit_leaves_the_others_cached():
    empty = torch.ops.dwconv.output_pool_empty
    small = empty([8 * MIB], torch.uint8, False, True, 30 * MIB)
    ptr = small.data_ptr()
    del small
    big = empty([40 * MIB], torch.uint8, False, True, 30 * MIB)
    del big  # more than the limit: unmapped itself, not the older block
    assert stats()["cached_blocks"] == 1 and stats()["cached_bytes"] == 8 * MIB
    assert empty([8 * MIB], torch.uint8, False, True, 30 * MIB).data_ptr() == ptr


@pytest.mark.parametrize("block_mib, need_mib, reused", [(10, 8, True), (12, 8, False), (8, 6, False), (8, 8, True)])
def test_fit_rule(block_mib, need_mib, reused):
    """A block serves a request rounded up to 2 MiB if it is at most a quarter larger."""
    empty = torch.ops.dwconv.output_pool_empty
    block = empty([block_mib * MIB], torch.uint8, False, True, 1 << 30)
    ptr = block.data_ptr()
    del block
    t = empty([need_mib * MIB - 100], torch.uint8, False, True, 1 << 30)
    assert (t.data_ptr() == ptr) == reused and stats()["hits"] == int(reused)


def test_big_block_not_given_to_small_output():
    n, c, h, w, k = SHAPE
    x, wt, b = make_inputs(n, c, h, w, k, seed=8)
    del_me = conv(x, wt, b)
    del del_me
    xs, ws, bs = make_inputs(1, 8, 400, 400, 3, seed=9)  # 5.1 MB: an 18 MB block would waste most of itself
    y = conv(xs, ws, bs)
    assert stats()["hits"] == 0 and stats()["cached_blocks"] == 1
    assert_close(y, expected(xs, ws, bs), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_other_dtypes(dtype):
    n, c, h, w, k = SHAPE
    x, wt, b = (t.to(dtype) for t in make_inputs(n, c, h, w, k, seed=12))
    y = conv(x, wt, b)
    assert y.dtype == dtype and stats()["in_use_blocks"] == 1
    ptr = y.data_ptr()
    del y
    y = conv(x, wt, b)
    assert y.data_ptr() == ptr
    assert_close(y, expected(x, wt, b), dtype)


def test_empty_output_pool_keeps_live_tensors():
    n, c, h, w, k = SHAPE
    x, wt, b = make_inputs(n, c, h, w, k, seed=10)
    keep, drop = conv(x, wt, b), conv(x, wt, b)
    del drop
    dwconv.empty_output_pool()
    s = stats()
    assert s["cached_blocks"] == 0 and s["cached_bytes"] == 0 and s["in_use_blocks"] == 1
    assert_close(keep, expected(x, wt, b), torch.float32)
    del keep
    assert stats()["cached_blocks"] == 1  # returned after the release, kept under the limit


def mapped(address: int) -> bool:
    """Whether `address` lies in a mapping of this process (/proc/self/maps)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            lo, hi = (int(v, 16) for v in line.split(maxsplit=1)[0].split("-"))
            if lo <= address < hi:
                return True
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process's mappings from /proc")
def test_freed_blocks_go_back_to_the_system():
    n, c, h, w, k = SHAPE
    x, wt, b = make_inputs(n, c, h, w, k, seed=16)
    y = conv(x, wt, b)
    ptr = y.data_ptr()
    del y
    assert mapped(ptr) and stats()["cached_blocks"] == 1
    dwconv.empty_output_pool()
    assert not mapped(ptr)


def test_resize_and_tensor_tools(tmp_path):
    n, c, h, w, k = SHAPE
    x, wt, b = make_inputs(n, c, h, w, k, seed=11)
    y = conv(x, wt, b)
    ref = expected(x, wt, b)
    head = y.flatten()[:1000].clone()
    y.resize_(2, c, h, w)  # a bigger block from the pool, the old values copied, the old block back in the pool
    s = stats()
    assert s["misses"] == 2 and s["in_use_blocks"] == 1 and s["cached_blocks"] == 1
    assert torch.equal(y.flatten()[:1000], head)
    y = y[:1]
    assert_close(y, ref, torch.float32, "after resize")
    assert_close(torch.from_numpy(y.numpy()), ref, torch.float32, "numpy view")
    assert_close(torch.from_dlpack(torch.utils.dlpack.to_dlpack(y)), ref, torch.float32, "dlpack")
    torch.save(y, tmp_path / "y.pt")
    assert_close(torch.load(tmp_path / "y.pt"), ref, torch.float32, "saved")
    y.share_memory_()  # moves the values to shared memory: the pooled block comes back
    assert stats()["in_use_blocks"] == 0 and stats()["cached_blocks"] == 2
    assert_close(y, ref, torch.float32, "shared memory")


def test_forked_child_allocates():
    """A child forked while the pool holds blocks allocates, frees and computes (the lock survives fork). The child
    runs one thread, as PyTorch's DataLoader workers do: GNU OpenMP cannot start a parallel region in a child forked
    after the parent ran one (PyTorch's own convolutions hang there too)."""
    n, c, h, w, k = SHAPE
    x, wt, b = make_inputs(n, c, h, w, k, seed=13)
    del_me = conv(x, wt, b)
    del del_me
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as workers:
        assert workers.apply_async(_child_conv, (x, wt, b)).get(timeout=300) < 1e-5


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_fork_while_another_thread_allocates():
    """Children forked while a thread allocates and frees pooled blocks can use the pool: the pool's lock is
    held across fork(), so no child starts with it taken by a thread it does not have."""
    empty = torch.ops.dwconv.output_pool_empty
    stop = threading.Event()

    def churn():  # limit 0: each free unmaps its written block under the lock, which keeps the lock held often
        while not stop.is_set():
            t = empty([5 * MIB], torch.uint8, False, True, 0)
            t.fill_(1)
            del t

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        for _ in range(200):  # catches a fork without the lock handling in most runs, not all
            pid = os.fork()
            if pid == 0:  # the child: allocate and free, then leave without Python's clean-up
                code = 1
                try:
                    t = empty([5 * MIB], torch.uint8, False, True, 1 << 30)
                    del t
                    code = 0
                finally:
                    os._exit(code)
            deadline = time.monotonic() + 20
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                    pytest.fail("a forked child hung on the pool's lock")
                time.sleep(0.001)
            assert os.waitstatus_to_exitcode(status) == 0
    finally:
        stop.set()
        worker.join()


def _child_conv(x, wt, b):
    torch.set_num_threads(1)
    y = conv(x, wt, b)
    del y
    y = conv(x, wt, b)
    ref = expected(x, wt, b)
    return ((y.double() - ref).norm() / ref.norm()).item()


def test_torch_compile_allocates_from_the_pool():
    n, c, h, w, k = SHAPE
    x, wt, b = make_inputs(n, c, h, w, k, seed=14)
    compiled = torch.compile(conv, fullgraph=True, backend="aot_eager")
    y = compiled(x, wt, b)
    assert stats()["in_use_blocks"] == 1  # the real call, not the traced one, allocated
    assert_close(y, expected(x, wt, b), torch.float32)


def test_inference_mode_and_threads():
    n, c, h, w, k = SHAPE
    inputs = [make_inputs(n, c, h, w, k, seed=20 + i) for i in range(4)]
    errors = []

    def work(i):
        try:
            with torch.inference_mode():
                for _ in range(3):
                    y = conv(*inputs[i])
                    assert y.is_inference()
                    assert_close(y, expected(*inputs[i]), torch.float32, f"thread {i}")
        except BaseException as e:  # reported from the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    s = stats()
    assert s["in_use_blocks"] == 0 and s["hits"] + s["misses"] == 12 and s["hits"] >= 1


@pytest.mark.parametrize("value", [-1, 1.5, True, "64"])
def test_bad_limit_rejected(value):
    with pytest.raises((ValueError, TypeError), match="output_pool_mib"):
        config.set(output_pool_mib=value)


def test_environment_parsed(monkeypatch):
    monkeypatch.setenv("DWCONV_OUTPUT_POOL_MIB", "64")
    assert config._from_environment().output_pool_mib == 64
    monkeypatch.setenv("DWCONV_OUTPUT_POOL_MIB", "lots")
    with pytest.raises(ValueError, match="DWCONV_OUTPUT_POOL_MIB"):
        config._from_environment()


def test_op_rejects_bad_arguments():
    empty = torch.ops.dwconv.output_pool_empty
    with pytest.raises(RuntimeError, match="limit_bytes"):
        empty([4, 4], torch.float32, False, True, -1)
    with pytest.raises(RuntimeError, match="channels_last"):
        empty([4, 4, 4], torch.float32, True, True, 1 << 30)
    z = empty([0, 3], torch.float32, False, True, 1 << 30)
    assert z.numel() == 0 and z.shape == (0, 3)
