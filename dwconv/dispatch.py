"""Which plan runs one op of one call, and running it.

A named backend or plan (`backend="cuda"`, `"cuda:mma"`) runs as named, or raises BackendUnavailableError
saying why. "auto" chooses among every plan that can run the call (torch's own convolution included):
1. in benchmark mode (dwconv.set_benchmark(True)): the fastest, timed on the call's own tensors the first
   time a signature is seen (dwconv/benchmark.py);
2. else the shipped dispatch table of measurements (dwconv/dispatch_table.py), where it has the call's class;
3. else the fallback rule below.

The fallback rule (calls the table has no measurement for):
- CPU tensors: the cpu backend, except where PyTorch measured faster on the EPYC machines the CPU kernels were
  tuned on (docs/perf_cpu.md v8-v12): channels_last kernels smaller than 5x5; channels_last forward of
  kernels up to 7x7 on maps of 28x28 and more at batch < 32 (not for float16, whose PyTorch CPU kernels
  measured 15-85x slower, nor for strided dgrad, 4-90x slower in PyTorch); float64 (correct, not tuned).
- CUDA tensors: torch. No GPU kernel of dwconv has been measured faster than PyTorch on a card the table
  does not list; benchmark mode or `python -m dwconv.tune` measure it on yours.
Each op decides on its own (a backward may run other backends than its forward). Decisions are cached per
call signature, so the choice costs one dictionary lookup after the first call.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch

from . import config
from . import plans as plans_
from ._conv_args import ConvArgs, is_channels_last
from .backends import capable_plans, complete, get_backend
from .backends.base import Backend
from .plans import Plan

Runner = Callable[[Backend, Plan], torch.Tensor]

_decisions: Dict[tuple, Tuple[Backend, Plan]] = {}


def signature(spec: str, op: str, x: torch.Tensor, args: ConvArgs, channels_last: Optional[bool] = None) -> tuple:
    """What a decision depends on: the request, the op, the call's geometry, device, dtype and layout (x's, unless
    given), the deterministic flag, the CPU thread count, and the settings in force."""
    if channels_last is None:
        channels_last = is_channels_last(x)
    return (spec, op, args, x.device, x.dtype, channels_last, torch.are_deterministic_algorithms_enabled(),
            torch.get_num_threads() if x.device.type == "cpu" else 0, config.generation)


def _signature_in_training(spec: str, op: str, x: torch.Tensor, args: ConvArgs) -> tuple:
    """The signature under which op's decision is kept when a training call of input x runs it. dgrad runs on
    grad_out, which the backward gives x's layout; an output map of one pixel (or one channel) in channels_last is
    NCHW-contiguous too, and counts as NCHW (is_channels_last)."""
    if op != "dgrad" or not is_channels_last(x):
        return signature(spec, op, x, args)
    _, c, h, w = args.output_shape
    return signature(spec, op, x, args, channels_last=not (c == 1 or h * w == 1))


def run(spec: str, op: str, x: torch.Tensor, args: ConvArgs, call: Runner) -> torch.Tensor:
    """call(backend, plan) with the plan `spec` ("auto", a backend or a plan) resolves to for op on this call."""
    key = signature(spec, op, x, args)
    decision = _decisions.get(key)
    if decision is None:
        if spec == "auto" and config.get().benchmark:
            from . import benchmark
            plan, out = benchmark.choose(op, x, args, lambda p: call(get_backend(p.backend), p))
            _decisions[key] = (get_backend(plan.backend), plan)
            return out
        plan = auto_plan(op, x, args) if spec == "auto" else complete(plans_.parse(spec), op, x, args)
        decision = _decisions[key] = (get_backend(plan.backend), plan)
    return call(*decision)


def decided_plan(spec: str, op: str, x: torch.Tensor, args: ConvArgs) -> Optional[Plan]:
    """The plan `run` decided on for this call's signature, None before its first run."""
    decision = _decisions.get(signature(spec, op, x, args))
    return None if decision is None else decision[1]


def plan_for(spec: str, op: str, x: torch.Tensor, args: ConvArgs) -> Plan:
    """The plan `spec` resolves to outside benchmark mode (what `run` would use)."""
    return auto_plan(op, x, args) if spec == "auto" else complete(plans_.parse(spec), op, x, args)


def auto_plan(op: str, x: torch.Tensor, args: ConvArgs) -> Plan:
    """"auto" outside benchmark mode: the dispatch table's plan where it has one that can run, else the rule."""
    candidates = capable_plans(op, x, args)
    if config.get().dispatch_table:
        from . import dispatch_table
        measured = dispatch_table.lookup(op, x, args)
        if measured is not None:
            for plan in candidates:
                if (plan.backend, plan.family) == (measured.backend, measured.family):
                    return measured
    return fallback_rule(op, x, args, candidates)


TORCH_PLAN = Plan("torch", "aten")  # PyTorch's own convolution


def fallback_rule(op: str, x: torch.Tensor, args: ConvArgs, candidates) -> Plan:
    """The documented rule for calls the table does not cover (module docstring)."""
    if x.device.type == "cpu":
        native = next((p for p in candidates if p.backend == "cpu"), None)
        if native is not None and cpu_rule_prefers_native(op, x, args):
            return native
    return TORCH_PLAN


def cpu_rule_prefers_native(op: str, x: torch.Tensor, args: ConvArgs) -> bool:
    if x.dtype == torch.float64:
        return False
    if x.dtype == torch.float16 or (op == "dgrad" and args.stride != (1, 1)):
        return True
    if is_channels_last(x):
        area = args.kernel[0] * args.kernel[1]
        if area < 25:
            return False
        if op == "fwd" and area <= 49 and args.height * args.width >= 28 * 28 and args.batch < 32:
            return False
    return True


_OPS = ("fwd", "dgrad", "wgrad")
NATIVE_BACKENDS = ("cpu", "cuda")  # the backends whose kernels dwconv._C calls
_training_routes: Dict[tuple, Tuple[str, Optional[Tuple[Plan, Plan, Plan]]]] = {}


def training_route(spec: str, x: torch.Tensor, args: ConvArgs) -> Tuple[str, Optional[Tuple[Plan, Plan, Plan]]]:
    """How the functional records an eager training call (docs/dispatch.md, "How an eager call runs"), with the
    plans of its forward, dgrad and wgrad where known:
    - "torch": all three run PyTorch's own convolution, so the call is F.conv2d under PyTorch's autograd (the same
      kernels at nn.Conv2d's per-call cost; on a GPU the table does not list, every op of "auto" is torch's);
    - "native": all three run dwconv's native kernels (cpu or cuda backend) and no output or input gradient is
      large enough (4 MiB) to come from the CPU output pool, which only the Python route allocates:
      autograd.apply_native records the call as one C++ autograd Function;
    - "python": anything else (autograd.DirectDepthwiseConv2d). In benchmark mode also until all three ops were
      timed (after the first backward), and that answer is not remembered."""
    key = signature(spec, "train", x, args)
    route = _training_routes.get(key)
    if route is not None:
        return route
    if spec == "auto" and config.get().benchmark:
        decisions = [_decisions.get(_signature_in_training(spec, op, x, args)) for op in _OPS]
        if any(d is None for d in decisions):
            return ("python", None)
        plans = tuple(plan for _, plan in decisions)
    else:
        try:
            plans = tuple(plan_for(spec, op, x, args) for op in _OPS)
        except RuntimeError:  # a named backend that cannot run an op: the op path says why
            plans = None
    from .outputs import large_cpu_output
    large = any(large_cpu_output(shape, x.dtype, x.device) for shape in (args.output_shape, args.input_shape))
    if plans is not None and all(p.backend == "torch" for p in plans):
        route = ("torch", plans)
    elif plans is not None and not large and all(p.backend in NATIVE_BACKENDS for p in plans):
        route = ("native", plans)
    else:
        route = ("python", plans)
    _training_routes[key] = route
    return route


def all_ops_on_torch(spec: str, x: torch.Tensor, args: ConvArgs) -> bool:
    """Whether the forward, dgrad and wgrad of this call all run PyTorch's own convolution (training_route)."""
    return training_route(spec, x, args)[0] == "torch"


def clear_decisions() -> None:
    """Forget every cached decision (the next call of each signature decides again), and the remembered calls
    made with them."""
    _decisions.clear()
    _training_routes.clear()
    from . import remembered
    remembered.forget()


def describe(spec: str, op: str, x: torch.Tensor, args: ConvArgs) -> Optional[str]:
    """The plan a call would run, as a string (None when none can)."""
    try:
        return str(plan_for(spec, op, x, args))
    except RuntimeError:
        return None
