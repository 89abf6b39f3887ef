"""Kernel selection: plans, settings, the dispatch table, the fallback rule and benchmark mode (CPU)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

import dwconv
from dwconv import benchmark, config, dispatch, dispatch_table, plans
from dwconv._conv_args import check_and_resolve
from dwconv.backends.native import BF16_ONLY_CPU_FAMILIES
from dwconv.plans import Plan
from utils import assert_close, make_inputs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the families that run fp32 (avx512bf16 runs bfloat16 only)
CPU_FAMILIES = tuple(f for f in torch.ops.dwconv.cpu_families() if f not in BF16_ONLY_CPU_FAMILIES)


@pytest.fixture(autouse=True)
def _fresh_choices():
    """Each test starts and ends with no kept decisions or benchmark choices."""
    benchmark.clear()
    yield
    benchmark.clear()


def _call(n=2, c=8, hw=14, k=7, channels_last=False, dtype=torch.float32, stride=1):
    x, w, b = make_inputs(n, c, hw, hw, k, dtype=dtype, channels_last=channels_last, seed=n * 100 + c)
    return x, w, b, check_and_resolve(x, w, b, stride, k // 2, 1)


# ---- plans and settings

@pytest.mark.parametrize("spec,expected", [("cpu", Plan("cpu")), ("cuda:mma", Plan("cuda", "mma")),
                                           ("triton:rows:N4,C1", Plan("triton", "rows", "N4,C1")),
                                           ("torch:aten", Plan("torch", "aten"))])
def test_plan_strings_round_trip(spec, expected):
    assert plans.parse(spec) == expected and str(expected) == spec


@pytest.mark.parametrize("spec", ["cudnn", "cpu::4", "", "auto:x"])
def test_bad_plan_strings_raise(spec):
    with pytest.raises(ValueError):
        plans.parse(spec)


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("DWCONV_BENCHMARK", "1")
    monkeypatch.setenv("DWCONV_CPU_FAMILY", "portable")
    monkeypatch.setenv("DWCONV_DISPATCH_TABLE", "0")
    monkeypatch.setenv("DWCONV_HUGE_PAGES", "0")
    s = config._from_environment()
    assert s.benchmark and s.cpu_family == "portable" and not s.dispatch_table and not s.huge_pages
    monkeypatch.setenv("DWCONV_CUDA_FAMILY", "tensor")
    with pytest.raises(ValueError, match="cuda_family"):
        config._from_environment()
    monkeypatch.delenv("DWCONV_CUDA_FAMILY")
    monkeypatch.setenv("DWCONV_BENCHMARK", "maybe")
    with pytest.raises(ValueError, match="DWCONV_BENCHMARK"):
        config._from_environment()


def test_replaced_switches_warn(monkeypatch):
    monkeypatch.setenv("DWCONV_CUDA_MMA", "1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config._from_environment()
    assert any("DWCONV_CUDA_FAMILY=mma" in str(w.message) for w in caught)


def test_settings_setters_and_override():
    before = config.get()
    with config.override(cpu_family="portable", benchmark=True) as s:
        assert s.cpu_family == "portable" and config.get().benchmark
    assert config.get() == before
    with pytest.raises(TypeError, match="unknown dwconv setting"):
        config.set(fast=True)
    with pytest.raises(ValueError):
        config.set(cpu_family="sse2")
    dwconv.set_benchmark(True)
    try:
        assert config.get().benchmark
    finally:
        dwconv.set_benchmark(False)


def test_decisions_are_kept_once_per_settings_state():
    """Switching settings back and forth (as a benchmark toggling benchmark mode per step does) reuses the
    decisions made under each state instead of piling up new ones."""
    x, w, b, _ = _call()
    for _ in range(20):
        dwconv.depthwise_conv2d(x, w, b, padding=3)
        with config.override(dispatch_table=False):
            dwconv.depthwise_conv2d(x, w, b, padding=3)
    assert len(dispatch._decisions) == 2


def test_family_setting_moves_the_default():
    x, w, b, args = _call()
    if "portable" not in CPU_FAMILIES or len(CPU_FAMILIES) < 2:
        pytest.skip("needs two CPU families")
    assert dispatch.plan_for("cpu", "fwd", x, args) == Plan("cpu", CPU_FAMILIES[0])
    with config.override(cpu_family="portable"):
        assert dispatch.plan_for("cpu", "fwd", x, args) == Plan("cpu", "portable")


def test_named_plan_runs_as_named_and_refuses_what_it_cannot():
    x, w, b, _ = _call()
    ref = F.conv2d(x.double(), w.double(), b.double(), padding=3, groups=8)
    for family in CPU_FAMILIES:
        assert_close(dwconv.depthwise_conv2d(x, w, b, padding=3, backend=f"cpu:{family}"), ref, torch.float32, family)
    with pytest.raises(dwconv.BackendUnavailableError, match="'cpu:sse' cannot run"):
        dwconv.depthwise_conv2d(x, w, b, padding=3, backend="cpu:sse")
    with pytest.raises(dwconv.BackendUnavailableError, match="no variants"):
        dwconv.depthwise_conv2d(x, w, b, padding=3, backend=f"cpu:{CPU_FAMILIES[0]}:7")
    with pytest.raises(dwconv.BackendUnavailableError, match="cuda"):
        dwconv.depthwise_conv2d(x, w, b, padding=3, backend="cuda:mma")


# ---- the dispatch table

def _table_with(tmp_path, x, args, op, plan, level="classes"):
    key_of = dispatch_table.call_class if level == "classes" else dispatch_table.call_key
    key = key_of(op, x.dtype, not x.is_contiguous(), args, torch.get_num_threads())
    path = tmp_path / "table.json"
    path.write_text(json.dumps({"format": 2, "devices": {
        dispatch_table.device_key(x.device): {level: {key: {"plan": plan, "speedup_vs_torch": 1.5}}}}}))
    dispatch_table._load.cache_clear()
    return path


def test_table_entry_decides_auto(tmp_path, monkeypatch):
    x, w, b, args = _call()
    monkeypatch.setattr(dispatch_table, "TABLE_PATH", _table_with(tmp_path, x, args, "fwd", "torch:aten"))
    assert dispatch.plan_for("auto", "fwd", x, args) == Plan("torch", "aten")
    # Other ops and calls of other classes fall to the rule (the cpu kernels for this NCHW 7x7 call).
    assert dispatch.plan_for("auto", "dgrad", x, args).backend == "cpu"
    x2, w2, b2, args2 = _call(n=40)
    assert dispatch.plan_for("auto", "fwd", x2, args2).backend == "cpu"
    with config.override(dispatch_table=False):
        assert dispatch.plan_for("auto", "fwd", x, args).backend == "cpu"
    dispatch_table._load.cache_clear()


def test_table_exact_call_entry(tmp_path, monkeypatch):
    """An entry for the exact call decides it; a call of the same class but another size does not see it."""
    x, w, b, args = _call()
    monkeypatch.setattr(dispatch_table, "TABLE_PATH", _table_with(tmp_path, x, args, "fwd", "torch:aten", "calls"))
    assert dispatch.plan_for("auto", "fwd", x, args) == Plan("torch", "aten")
    x2, w2, b2, args2 = _call(n=3)
    assert dispatch.plan_for("auto", "fwd", x2, args2).backend == "cpu"
    dispatch_table._load.cache_clear()


def test_table_entry_that_cannot_run_falls_to_the_rule(tmp_path, monkeypatch):
    x, w, b, args = _call()
    monkeypatch.setattr(dispatch_table, "TABLE_PATH", _table_with(tmp_path, x, args, "fwd", "cpu:riscv"))
    assert dispatch.plan_for("auto", "fwd", x, args) == dispatch.fallback_rule(
        "fwd", x, args, dwconv.backends.capable_plans("fwd", x, args))
    dispatch_table._load.cache_clear()


def test_missing_table_warns_and_falls_to_the_rule(tmp_path, monkeypatch):
    x, w, b, args = _call()
    monkeypatch.setattr(dispatch_table, "TABLE_PATH", tmp_path / "absent.json")
    dispatch_table._load.cache_clear()
    with pytest.warns(UserWarning, match="dispatch table .* is missing"):
        plan = dispatch.plan_for("auto", "fwd", x, args)
    assert plan == dispatch.fallback_rule("fwd", x, args, dwconv.backends.capable_plans("fwd", x, args))
    dispatch_table._load.cache_clear()


def test_auto_result_follows_the_table(tmp_path, monkeypatch):
    """The call really runs the table's plan (the cpu kernels are bypassed when the table says torch)."""
    x, w, b, args = _call()
    monkeypatch.setattr(dispatch_table, "TABLE_PATH", _table_with(tmp_path, x, args, "fwd", "torch:aten"))
    ran = []
    real = dwconv.backends.get_backend("torch").forward
    monkeypatch.setattr(dwconv.backends.get_backend("torch"), "forward",
                        lambda *a: ran.append(1) or real(*a))
    dwconv.depthwise_conv2d(x, w, b, padding=3)
    assert ran == [1]
    dispatch_table._load.cache_clear()


def test_size_classes():
    assert dispatch_table.size_class(14, dispatch_table.MAP_CLASSES) == "<=16"
    assert dispatch_table.size_class(1000, dispatch_table.MAP_CLASSES) == ">64"
    x, w, b, args = _call(n=2, c=384, hw=14, k=11)
    key = dispatch_table.call_class("fwd", x.dtype, False, args, 2)
    assert key == "fwd fp32 nchw k11x11 s1x1 d1x1 m1 hw<=16 c<=384 n<=3 t<=2"


def test_shipped_table_is_generated_from_the_committed_results():
    """dwconv/dispatch_table.json is exactly what benchmarks/make_dispatch_table.py makes of benchmarks/results/,
    and every plan in it parses."""
    result = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "make_dispatch_table.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    table = json.loads(dispatch_table.TABLE_PATH.read_text())
    for device, levels in table["devices"].items():
        assert set(levels) == {"calls", "classes"}
        for level, entries in levels.items():
            for key, entry in entries.items():
                plans.parse(entry["plan"])
                assert entry["plan"] == "torch:aten" or entry["speedup_vs_torch"] > 1.0, (device, key)


# ---- benchmark mode

def _count_timings(monkeypatch):
    """The plans benchmark mode times from now on (a list that grows)."""
    timed = []
    real = benchmark._time_candidates

    def counting(candidates, run, device):
        ms, best, out = real(candidates, run, device)
        timed.extend(ms)
        return ms, best, out
    monkeypatch.setattr(benchmark, "_time_candidates", counting)
    return timed


def test_benchmark_mode_times_once_per_signature(monkeypatch):
    timed = _count_timings(monkeypatch)
    x, w, b, _ = _call()
    ref = F.conv2d(x.double(), w.double(), b.double(), padding=3, groups=8)
    with config.override(benchmark=True):
        y1 = dwconv.depthwise_conv2d(x, w, b, padding=3)
        first = list(timed)
        y2 = dwconv.depthwise_conv2d(x, w, b, padding=3)
    candidates = [f"cpu:{f}" for f in CPU_FAMILIES] + ["torch:aten"]
    assert sorted(first) == sorted(candidates), "the first call times every capable plan, torch included"
    assert timed == first, "a later call of the same signature times nothing"
    assert_close(y1, ref, torch.float32, "first call") and assert_close(y2, ref, torch.float32, "second call")
    (key, choice), = benchmark.choices().items()
    assert choice.plan in candidates and set(choice.ms) == set(candidates)
    assert choice.ms[choice.plan] == min(choice.ms.values())


@pytest.mark.parametrize("change", ["batch", "dtype", "layout", "stride", "padding", "kernel", "deterministic"])
def test_benchmark_signatures_separate_what_must_be_separate(monkeypatch, change):
    timed = _count_timings(monkeypatch)
    x, w, b, _ = _call()
    with config.override(benchmark=True):
        dwconv.depthwise_conv2d(x, w, b, padding=3)
        n_first = len(timed)
        pad, stride = 3, 1
        if change == "batch":
            x = torch.cat([x, x])
        elif change == "dtype":
            x, w, b = x.double(), w.double(), b.double()
        elif change == "layout":
            x = x.contiguous(memory_format=torch.channels_last)
        elif change == "stride":
            stride = 2
        elif change == "padding":
            pad = 2
        elif change == "kernel":
            w = w[:, :, 1:, 1:].contiguous()
        previous = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(change == "deterministic" or previous)
        try:
            dwconv.depthwise_conv2d(x, w, b, stride=stride, padding=pad)
        finally:
            torch.use_deterministic_algorithms(previous)
    assert len(timed) > n_first, f"a different {change} must be timed on its own"
    assert len(benchmark.choices()) == 2


def test_benchmark_mode_accumulates_gradients_once():
    """Timing runs every candidate of dgrad and wgrad; the gradients still equal one reference backward."""
    x, w, b, _ = _call()
    conv = dwconv.FastDWConv(8, 8, 7, padding=3)
    ref = torch.nn.Conv2d(8, 8, 7, padding=3, groups=8).double()
    with torch.no_grad():
        conv.weight.copy_(w)
        conv.bias.copy_(b)
        ref.weight.copy_(w.double())
        ref.bias.copy_(b.double())
    xs = x.clone().requires_grad_()
    xr = x.double().requires_grad_()
    g = torch.randn(2, 8, 14, 14)
    with config.override(benchmark=True):
        conv(xs).backward(g)
    ref(xr).backward(g.double())
    assert len(benchmark.choices()) == 3, "fwd, dgrad and wgrad were each timed"
    assert_close(xs.grad, xr.grad, torch.float32, "dx")
    assert_close(conv.weight.grad, ref.weight.grad, torch.float32, "dw")
    assert_close(conv.bias.grad, ref.bias.grad, torch.float32, "db")


def test_benchmark_mode_skips_plans_that_refuse_and_keeps_deterministic_keys(monkeypatch):
    """A plan that raises (as PyTorch's non-deterministic kernels do under use_deterministic_algorithms) is not
    a candidate."""
    torch_backend = dwconv.backends.get_backend("torch")

    def refuses(*args):
        raise RuntimeError("not deterministic")
    monkeypatch.setattr(torch_backend, "wgrad", refuses)
    x, w, b, args = _call()
    g = torch.randn(2, 8, 14, 14)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with config.override(benchmark=True):
            dw = torch.ops.dwconv.wgrad(g, x, list(w.shape), [1, 1], [3] * 4, [1, 1], "auto")
    finally:
        torch.use_deterministic_algorithms(previous)
    (key, choice), = benchmark.choices().items()
    assert "det1" in key and choice.plan.startswith("cpu:") and "torch:aten" not in choice.ms
    ref = torch.nn.grad.conv2d_weight(x.double(), w.shape, g.double(), padding=3, groups=8)
    assert_close(dw, ref, torch.float32, "dw")


def test_benchmark_cache_file_round_trip_and_invalidation(tmp_path, monkeypatch):
    cache = tmp_path / "dwconv-cache.json"
    x, w, b, _ = _call()
    with config.override(benchmark=True, benchmark_cache=str(cache)):
        dwconv.depthwise_conv2d(x, w, b, padding=3)
    data = json.loads(cache.read_text())
    (ctx, entries), = data["contexts"].items()
    (key, entry), = entries.items()
    assert "torch " + torch.__version__ in ctx and "dwconv " + dwconv.__version__ in ctx
    # A new process (here: the choices forgotten) reads the choice instead of timing.
    benchmark.clear()
    timed = _count_timings(monkeypatch)
    with config.override(benchmark=True, benchmark_cache=str(cache)):
        dwconv.depthwise_conv2d(x, w, b, padding=3)
    assert timed == [] and benchmark.choices()[f"{ctx} || {key}"].plan == entry["plan"]
    # Another version (here: another context) does not reuse it.
    benchmark.clear()
    monkeypatch.setattr(benchmark, "context", lambda device: ctx.replace("dwconv ", "dwconv 9"))
    with config.override(benchmark=True, benchmark_cache=str(cache)):
        dwconv.depthwise_conv2d(x, w, b, padding=3)
    assert len(timed) > 0
    assert len(json.loads(cache.read_text())["contexts"]) == 2


def test_benchmark_cache_that_cannot_be_read_raises(tmp_path):
    cache = tmp_path / "bad.json"
    cache.write_text("{ not json")
    x, w, b, _ = _call()
    with config.override(benchmark=True, benchmark_cache=str(cache)):
        with pytest.raises(RuntimeError, match="cannot be read"):
            dwconv.depthwise_conv2d(x, w, b, padding=3)


def test_benchmark_mode_under_torch_compile_fullgraph():
    """The choice is made when the compiled graph runs the op (eagerly), with no graph break."""
    x, w, b, _ = _call()
    conv = dwconv.FastDWConv(8, 8, 7, padding=3)
    with torch.no_grad():
        conv.weight.copy_(w)
        conv.bias.copy_(b)
    compiled = torch.compile(conv, fullgraph=True, backend="aot_eager")
    xs = x.clone().requires_grad_()
    with config.override(benchmark=True):
        y = compiled(xs)
        y.sum().backward()
    assert_close(y, F.conv2d(x.double(), w.double(), b.double(), padding=3, groups=8), torch.float32, "y")
    assert {k.split(" || ")[1].split()[0] for k in benchmark.choices()} == {"fwd", "dgrad", "wgrad"}


_DDP_CHILD = r"""
import os, sys, torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method="file://" + {store!r}, rank=rank, world_size=2)
import dwconv
from dwconv import benchmark, config
from dwconv.plans import Plan
# Each rank's own timing would pick a different plan: rank 0 torch, rank 1 the cpu kernels.
favourite = Plan("torch", "aten") if rank == 0 else Plan("cpu", {fp32_family!r})
benchmark._time_candidates = lambda candidates, run, device: (
    {{str(p): 1.0 if p == favourite else 2.0 for p in candidates}}, favourite, run(favourite))
x = torch.randn(2, 8, 14, 14); w = torch.randn(8, 1, 7, 7)
with config.override(benchmark=True):
    y = dwconv.depthwise_conv2d(x, w, None, padding=3)
(choice,) = benchmark.choices().values()
ref = torch.nn.functional.conv2d(x, w, None, padding=3, groups=8)
print("PLAN", rank, choice.plan, float((y - ref).abs().max()))
dist.destroy_process_group()
"""


def test_benchmark_mode_ranks_agree(tmp_path):
    """Under torch.distributed every rank runs rank 0's choice."""
    script = tmp_path / "child.py"
    script.write_text(_DDP_CHILD.format(tests=os.path.dirname(os.path.abspath(__file__)),
                                        store=str(tmp_path / "store"), fp32_family=CPU_FAMILIES[0]))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(r)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for r in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    lines = [next(line for line in out.splitlines() if line.startswith("PLAN")) for out, _ in outs
             if "PLAN" in out]
    assert len(lines) == 2, [err[-2000:] for _, err in outs]
    plans_seen = {line.split()[2] for line in lines}
    assert plans_seen == {"torch:aten"}, lines
    assert all(float(line.split()[3]) < 1e-4 for line in lines)


# ---- the tuner

def test_tuner_writes_the_cache_and_reports_every_op(tmp_path, capsys):
    from dwconv import tune
    cache = tmp_path / "tuned.json"
    assert tune.main(["--shapes", "2,8,10,10,7", "2,4,9,9,5,2,2", "--device", "cpu", "--cache", str(cache),
                      "--no-progress"]) == 0
    report = capsys.readouterr().out
    rows = [line for line in report.splitlines() if " fwd " in line or " dgrad " in line or " wgrad " in line]
    assert len(rows) == 6, report
    (ctx, entries), = json.loads(cache.read_text())["contexts"].items()
    assert len(entries) == 6 and {e["plan"].split(":")[0] for e in entries.values()} <= {"cpu", "torch"}
    # Inference only: the forward alone.
    benchmark.clear()
    assert tune.main(["--shapes", "1,8,10,10,7", "--modes", "inference", "--cache", str(cache), "--no-progress"]) == 0
    assert sum(" fwd " in line for line in capsys.readouterr().out.splitlines()) == 1


def test_tuner_on_a_model_finds_its_layers(tmp_path, capsys):
    from dwconv import tune
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, stride=4), torch.nn.Conv2d(8, 8, 7, padding=3, groups=8),
                                torch.nn.Conv2d(8, 8, 7, padding=3, groups=8), torch.nn.Conv2d(8, 16, 3, padding=1, groups=8))
    layers = tune.model_layers(model, (2, 3, 32, 32), torch.float32, torch.device("cpu"), channels_last=False)
    assert sorted((layer.input_shape, layer.multiplier, len(layer.names)) for layer in layers) == [
        ((2, 8, 8, 8), 1, 2), ((2, 8, 8, 8), 2, 1)]
    with pytest.raises(SystemExit, match="positive ints"):
        tune.shape_layers(["2,8,10"])


# ---- the functional's direct path (per-call overhead)

def test_direct_path_only_where_nothing_must_see_the_op():
    from dwconv import ops
    from torch.utils.flop_counter import FlopCounterMode
    x, w, b, _ = _call()
    assert ops.direct_call_possible(x, w, b)
    with torch.no_grad():
        assert ops.direct_call_possible(x, w.requires_grad_(), b)
    assert not ops.direct_call_possible(x, w, b), "a weight that requires grad needs the autograd kernel"
    w = w.detach()
    with FlopCounterMode(display=False):
        assert not ops.direct_call_possible(x, w, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not ops.direct_call_possible(x, w, b)
    with torch.autograd.forward_ad.dual_level():
        assert not ops.direct_call_possible(x, w, b)
    seen = []
    torch.func.vmap(lambda t: seen.append(ops.direct_call_possible(t, w, b)) or t)(x.unsqueeze(0))
    assert seen == [False], "inside torch.func.vmap the op's batching rule must run"
    assert not ops.direct_call_possible(x.to("meta"), w.to("meta"), b.to("meta"))


def test_direct_path_gives_the_op_results():
    x, w, b, _ = _call()
    with torch.no_grad():
        direct = dwconv.depthwise_conv2d(x, w, b, padding=3, backend=f"cpu:{CPU_FAMILIES[0]}")
        via_op = torch.ops.dwconv.depthwise_conv2d(x, w, b, [1, 1], [3] * 4, [1, 1], f"cpu:{CPU_FAMILIES[0]}")
    assert torch.equal(direct, via_op)
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        dwconv.depthwise_conv2d(x, w, b, padding=3)
    assert counter.get_total_flops() == 2 * 2 * 8 * 14 * 14 * 49, "the op still runs (and is counted) under a mode"


def test_remembered_validation_still_refuses_bad_calls():
    """check_and_resolve_cached remembers only calls that passed, keyed by everything the checks read."""
    x, w, b, _ = _call()
    dwconv.depthwise_conv2d(x, w, b, padding=3)
    with pytest.raises(RuntimeError, match="same dtype"):
        dwconv.depthwise_conv2d(x, w.double(), b, padding=3)
    with pytest.raises(RuntimeError, match="bias"):
        dwconv.depthwise_conv2d(x, w, b[:4], padding=3)
    with pytest.raises(RuntimeError, match="can't be greater"):
        dwconv.depthwise_conv2d(x[:, :, :3, :3], w, b, padding=1)
    with pytest.raises(ValueError, match="negative padding"):
        dwconv.depthwise_conv2d(x, w, b, padding=-1)
    assert dwconv.depthwise_conv2d(x, w, b, padding=[3, 3]).shape == x.shape  # a list: checked, not remembered


# ---- training calls whose three ops all run PyTorch's convolution

def _train_step(x, w, b, spec):
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    y = dwconv.depthwise_conv2d(*leaves, padding=3, backend=spec)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(7))
    return y, torch.autograd.grad(y, leaves, g), g


def _reference_grads(x, w, b, g):
    leaves = [t.double().requires_grad_() for t in (x, w, b)]
    y = F.conv2d(leaves[0], leaves[1], leaves[2], padding=3, groups=x.shape[1])
    return y, torch.autograd.grad(y, leaves, g.double())


def _route(y) -> str:
    """Which route recorded a training call: "torch" (F.conv2d's own node), "native" (autograd.apply_native's C++
    Function) or "python" (autograd.DirectDepthwiseConv2d)."""
    if type(y.grad_fn).__name__ == "DirectDepthwiseConv2dBackward":
        return "python"
    return "native" if "dwconv::DirectDepthwiseConv2d" in y.grad_fn.name() else "torch"


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_training_call_on_torch_alone_is_pytorchs_own_conv(channels_last, monkeypatch):
    """When forward, dgrad and wgrad all resolve to torch:aten (backend "torch", or "auto" where each op's
    decision is torch's, as on a GPU the table does not list), a training call is F.conv2d under PyTorch's
    autograd (nn.Conv2d's per-call cost); one dwconv kernel among the three keeps dwconv's Function. Results
    match float64 either way."""
    x, w, b, _ = _call(channels_last=channels_last)
    decided = {"fwd": Plan("torch", "aten"), "dgrad": Plan("torch", "aten"), "wgrad": Plan("torch", "aten")}
    monkeypatch.setattr(dispatch, "auto_plan", lambda op, x, args: decided[op])
    for spec, route in (("torch", "torch"), ("auto", "torch"), ("cpu", "native")):
        y, grads, g = _train_step(x, w, b, spec)
        assert _route(y) == route, spec
        ry, rgrads = _reference_grads(x, w, b, g)
        assert_close(y, ry, torch.float32, f"{spec} y")
        for got, expected, what in zip(grads, rgrads, ("dx", "dw", "db")):
            assert_close(got, expected, torch.float32, f"{spec} {what}")
    decided["wgrad"] = Plan("cpu", CPU_FAMILIES[0])
    dispatch.clear_decisions()
    y, grads, g = _train_step(x, w, b, "auto")
    assert _route(y) == "python", "wgrad alone on dwconv's kernel"
    for got, expected, what in zip(grads, _reference_grads(x, w, b, g)[1], ("dx", "dw", "db")):
        assert_close(got, expected, torch.float32, f"mixed {what}")


def test_benchmark_mode_takes_torch_alone_only_once_every_op_was_timed():
    """In benchmark mode the first training call times every op (dwconv's Python Function); afterwards the call
    is PyTorch's own conv exactly when all three timed choices are torch's, the C++ Function when all three are
    dwconv's kernels."""
    x, w, b, args = _call()
    with config.override(benchmark=True):
        assert not dispatch.all_ops_on_torch("auto", x, args), "nothing timed yet"
        y, _, _ = _train_step(x, w, b, "auto")
        assert _route(y) == "python"
        chosen = [dispatch._decisions[dispatch.signature("auto", op, x, args)][1] for op in ("fwd", "dgrad", "wgrad")]
        on_torch = all(p.backend == "torch" for p in chosen)
        assert dispatch.all_ops_on_torch("auto", x, args) == on_torch
        y, _, _ = _train_step(x, w, b, "auto")
        on_native = all(p.backend == "cpu" for p in chosen)
        assert _route(y) == ("torch" if on_torch else "native" if on_native else "python")


def test_benchmark_mode_finds_the_timed_dgrad_of_channels_last_calls_with_one_pixel_outputs():
    """grad_out of a one-pixel output map is NCHW-contiguous, so dgrad's timed decision is kept under the NCHW
    layout; the training route finds it there, and the second call leaves the Python Function route."""
    g = torch.Generator().manual_seed(23)
    x = torch.randn(2, 4, 7, 7, generator=g).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(4, 1, 7, 7, generator=g), torch.randn(4, generator=g)
    args = check_and_resolve(x, w, b, 1, 0, 1)
    with config.override(benchmark=True):
        routes = []
        for _ in range(2):
            leaves = [t.clone().requires_grad_() for t in (x, w, b)]
            y = dwconv.depthwise_conv2d(*leaves)
            assert y.shape == (2, 4, 1, 1)
            routes.append(_route(y))
            torch.autograd.grad(y.sum(), leaves)
        plans = dispatch.training_route("auto", x, args)[1]
    assert routes[0] == "python"
    assert plans is not None, "the timed decisions were not all found"
    backends = {p.backend for p in plans}
    assert routes[1] == ("torch" if backends == {"torch"} else "native" if backends == {"cpu"} else "python")
