"""Tune dwconv for a model's depthwise layers: benchmark mode run ahead of time, its choices written to a cache.

    python -m dwconv.tune --model robust_resnet_dw_small --batch-size 32
    python -m dwconv.tune --model convnext_tiny --device cuda --dtype bf16 --channels-last
    python -m dwconv.tune --shapes 32,384,14,14,11 32,768,7,7,11,2

For every distinct depthwise conv of the model (a robust_models or timm model name, converted with
dwconv.convert) or of the listed shapes (N,C,H,W,K[,stride[,multiplier]], "same" padding), the ops training
runs (forward, dgrad, wgrad) and inference runs (forward) are timed on every capable plan, PyTorch included,
and the fastest is kept in the cache file (dwconv/benchmark.py). Then, per layer, it prints the chosen plan and
its speed-up over PyTorch. Run the model later with DWCONV_BENCHMARK=1 and DWCONV_BENCHMARK_CACHE=<the file>
(or dwconv.config.set(benchmark=True, benchmark_cache=...)) and it starts tuned.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import benchmark, config
from ._conv_args import check_and_resolve
from .convert import convert
from .module import FastDWConv

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("train", "inference")


class Layer(NamedTuple):
    """One distinct depthwise conv: its input shape and resolved arguments, and the modules that have it."""
    input_shape: Tuple[int, int, int, int]
    kernel: Tuple[int, int]
    multiplier: int
    stride: Tuple[int, int]
    padding: Tuple[int, int, int, int]
    dilation: Tuple[int, int]
    bias: bool
    names: Tuple[str, ...]


def default_cache_path() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "dwconv", "benchmark.json")


def _build_model(name: str) -> nn.Module:
    try:
        import robust_models
        if name in robust_models.list_models():
            return robust_models.create_model(name)
    except ImportError:
        pass
    try:
        import timm
    except ImportError:
        raise SystemExit(f"unknown model {name!r}: not a robust_models model, and timm is not installed") from None
    try:
        return timm.create_model(name, pretrained=False)
    except RuntimeError as e:  # timm's "Unknown model"
        raise SystemExit(f"unknown model {name!r}: {e}") from None


def model_layers(model: nn.Module, input_shape: Sequence[int], dtype: torch.dtype, device: torch.device,
                 channels_last: bool) -> List[Layer]:
    """The distinct depthwise convs one forward of `model` runs (after dwconv.convert), with their inputs."""
    convert(model)
    model.to(device=device, dtype=dtype).eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    seen: Dict[tuple, List[str]] = {}

    def hook(name):
        def record(module: FastDWConv, inputs):
            x = inputs[0]
            if x.dim() == 3:
                x = x.unsqueeze(0)
            padding = module.padding
            if module.padding_mode != "zeros":
                pl, pr, pt, pb = module._reversed_padding_repeated_twice
                x = torch.empty(x.shape[0], x.shape[1], x.shape[2] + pt + pb, x.shape[3] + pl + pr, device="meta")
                padding = 0
            args = check_and_resolve(x, module.weight, module.bias, module.stride, padding, module.dilation)
            key = (args.input_shape, args.kernel, args.multiplier, args.stride, args.padding, args.dilation,
                   module.bias is not None)
            seen.setdefault(key, []).append(name)
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, FastDWConv)]
    try:
        with torch.no_grad():
            x = torch.randn(*input_shape, device=device, dtype=dtype)
            model(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
    finally:
        for h in handles:
            h.remove()
    return [Layer(*key, names=tuple(names)) for key, names in seen.items()]


def shape_layers(specs: Sequence[str]) -> List[Layer]:
    layers = []
    for spec in specs:
        try:
            values = [int(v) for v in spec.split(",")]
            n, c, h, w, k = values[:5]
            stride = values[5] if len(values) > 5 else 1
            multiplier = values[6] if len(values) > 6 else 1
            if len(values) > 7 or min(n, c, h, w, k, stride, multiplier) < 1:
                raise ValueError
        except ValueError:
            raise SystemExit(f"--shapes: {spec!r} is not N,C,H,W,K[,stride[,multiplier]] of positive ints") from None
        p = k // 2
        layers.append(Layer((n, c, h, w), (k, k), multiplier, (stride, stride), (p, p, p, p), (1, 1), True,
                            (f"shape {spec}",)))
    return layers


def tune_layer(layer: Layer, modes: Sequence[str], dtype: torch.dtype, device: torch.device,
               channels_last: bool) -> Dict[str, Tuple[str, Optional[float]]]:
    """Benchmark mode on one layer's ops; op -> (chosen plan, speed-up over torch:aten)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    n, c, h, w = layer.input_shape
    cout = c * layer.multiplier
    x = torch.randn(n, c, h, w, device=device, dtype=dtype).contiguous(memory_format=fmt)
    weight = torch.randn(cout, 1, *layer.kernel, device=device, dtype=dtype)
    bias = torch.randn(cout, device=device, dtype=dtype) if layer.bias else None
    geometry = (list(layer.stride), list(layer.padding), list(layer.dilation))
    ops = ["fwd"] + (["dgrad", "wgrad"] if "train" in modes else [])
    out: Dict[str, Tuple[str, Optional[float]]] = {}
    with torch.no_grad():
        y = torch.ops.dwconv.depthwise_conv2d(x, weight, bias, *geometry, "auto")
        grad_out = torch.randn_like(y)
        for op in ops:
            if op == "dgrad":
                torch.ops.dwconv.dgrad(grad_out, weight, list(x.shape), *geometry, "auto")
            elif op == "wgrad":
                torch.ops.dwconv.wgrad(grad_out, x, list(weight.shape), *geometry, "auto")
            like = grad_out if op == "dgrad" else x
            args = check_and_resolve(x, weight, bias, layer.stride, layer.padding, layer.dilation)
            key = f"{benchmark.context(x.device)} || {benchmark.signature(op, like, args)}"
            choice = benchmark.choices()[key]
            base = choice.ms.get("torch:aten")
            out[op] = (choice.plan, base / choice.ms[choice.plan] if base and choice.plan in choice.ms else None)
    return out


def _progress(total: int, enabled: bool):
    try:
        from tqdm import tqdm
        return tqdm(total=total, desc="tuning", disable=not enabled, file=sys.stderr)
    except ImportError:
        class Plain:
            def __init__(self):
                self.done = 0

            def update(self, k=1):
                self.done += k
                if enabled:
                    print(f"tuning {self.done}/{total}", file=sys.stderr, flush=True)

            def set_postfix_str(self, text):
                pass

            def close(self):
                pass
        return Plain()


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dwconv.tune", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="a robust_models or timm model name")
    what.add_argument("--shapes", nargs="+", metavar="N,C,H,W,K[,S[,M]]", help="depthwise convs to tune")
    p.add_argument("--batch-size", type=int, default=None, help="with --model (default: 32 on CUDA, 2 on CPU)")
    p.add_argument("--image-size", type=int, default=224, help="with --model")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--modes", default="train,inference", help="comma-separated from train, inference")
    p.add_argument("--cache", default=None, help=f"the cache file (default: DWCONV_BENCHMARK_CACHE, else "
                                                 f"{default_cache_path()})")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        p.error(f"--modes: choose from {', '.join(MODES)}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    dtype = DTYPES[args.dtype]
    cache = args.cache or config.get().benchmark_cache or default_cache_path()
    if args.model:
        batch = args.batch_size or (32 if device.type == "cuda" else 2)
        layers = model_layers(_build_model(args.model), (batch, 3, args.image_size, args.image_size), dtype, device,
                              args.channels_last)
        if not layers:
            print(f"{args.model} has no depthwise convolutions to tune", file=sys.stderr)
            return 0
    else:
        layers = shape_layers(args.shapes)
    print(f"tuning {len(layers)} depthwise conv shape(s) on {device} ({benchmark.context(device)}), {args.dtype}, "
          f"{'channels_last' if args.channels_last else 'NCHW'}, {' + '.join(modes)}; cache {cache}", file=sys.stderr)
    rows = []
    bar = _progress(len(layers), not args.no_progress)
    with config.override(benchmark=True, benchmark_cache=cache):
        for layer in layers:
            bar.set_postfix_str(f"N{layer.input_shape[0]} C{layer.input_shape[1]} "
                                f"{layer.input_shape[2]}x{layer.input_shape[3]} K{layer.kernel[0]}")
            rows.append((layer, tune_layer(layer, modes, dtype, device, args.channels_last)))
            bar.update(1)
    bar.close()
    print_report(rows)
    print(f"\nwrote {cache}\nuse it: DWCONV_BENCHMARK=1 DWCONV_BENCHMARK_CACHE={cache} python your_script.py")
    return 0


def print_report(rows) -> None:
    header = ["layer(s)", "input", "kernel", "op", "plan", "vs torch"]
    lines = []
    for layer, result in rows:
        names = layer.names[0] + (f" (+{len(layer.names) - 1} more)" if len(layer.names) > 1 else "")
        n, c, h, w = layer.input_shape
        kernel = f"{layer.kernel[0]}x{layer.kernel[1]}" + (f" s{layer.stride[0]}" if layer.stride != (1, 1) else "") \
            + (f" m{layer.multiplier}" if layer.multiplier != 1 else "")
        for op, (plan, speedup) in result.items():
            lines.append([names, f"{n}x{c}x{h}x{w}", kernel, op, plan, "n/a" if speedup is None else f"{speedup:.2f}x"])
            names = ""
    widths = [max(len(str(r[i])) for r in lines + [header]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths]] + lines:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)))


if __name__ == "__main__":
    sys.exit(main())
