"""The CPU output pool (csrc/cpu/output_pool.cpp, dwconv/outputs.py): outputs of 4 MiB and more come from memory
that stays mapped after their tensors die; the next output of a fitting size reuses it. Reused memory holds the
previous output's values, so these tests compute into it without poisoning: an element a kernel left unwritten
would keep an old value and fail the comparison."""
import threading

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


def test_turning_off_frees_what_comes_back():
    n, c, h, w, k = SHAPE
    x, wt, b = make_inputs(n, c, h, w, k, seed=7)
    y = conv(x, wt, b)
    config.set(output_pool_mib=0)
    conv(x, wt, b)  # not pooled; does not tell the pool the new limit
    config.set(output_pool_mib=1)  # pooled calls carry the limit: 1 MiB holds no block of this size
    z = conv(x, wt, b)
    del y, z
    assert stats()["cached_blocks"] == 0 and stats()["in_use_blocks"] == 0


def test_big_block_not_given_to_small_output():
    n, c, h, w, k = SHAPE
    x, wt, b = make_inputs(n, c, h, w, k, seed=8)
    del_me = conv(x, wt, b)
    del del_me
    xs, ws, bs = make_inputs(1, 8, 400, 400, 3, seed=9)  # 5.1 MB: an 18 MB block would waste most of itself
    y = conv(xs, ws, bs)
    assert stats()["hits"] == 0 and stats()["cached_blocks"] == 1
    assert_close(y, expected(xs, ws, bs), torch.float32)


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


def test_resize_and_tensor_tools():
    n, c, h, w, k = SHAPE
    x, wt, b = make_inputs(n, c, h, w, k, seed=11)
    y = conv(x, wt, b)
    ref = expected(x, wt, b)
    head = y.flatten()[:1000].clone()
    y.resize_(2, c, h, w)  # a bigger block from the pool, the old values copied
    assert torch.equal(y.flatten()[:1000], head)
    y = y[:1]
    assert_close(y, ref, torch.float32, "after resize")
    assert_close(torch.from_numpy(y.numpy()), ref, torch.float32, "numpy view")
    assert_close(y.clone().share_memory_(), ref, torch.float32, "shared memory")


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
        except AssertionError as e:  # reported from the main thread
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
