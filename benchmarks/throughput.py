"""Images per second of the Robust-ResNet models: dwconv's backends against plain nn.Conv2d.

For each model and configuration (dtype via autocast, memory layout, batch size), the same model runs with
its depthwise convs on PyTorch's own nn.Conv2d and on each dwconv backend, side by side in one run:
inference (eval, inference_mode) and a full training step (forward, cross-entropy, backward, AdamW step),
medians of interleaved repetitions after warm-up. Prints parameters and fvcore GFLOPs (multiply-adds) per
model, then the results with speed-ups over nn.Conv2d.

Defaults: on a GPU the settings users train with, bf16 channels_last and the official fp32 NCHW, batch 128
per GPU, all four models; on a CPU-only machine a small configuration (one model, batch 2, fp32) that
finishes in about a minute and a half. Under torchrun (more than one process) it measures DDP training throughput:

    python benchmarks/throughput.py
    python benchmarks/throughput.py --model robust_resnet_dw_small --dtype bf16 --channels-last --compile
    python benchmarks/throughput.py --fold-bn      # also inference with BatchNorms folded (own columns)
    python benchmarks/throughput.py --no-benchmark-mode   # without the 'dwconv-auto benchmark' variant
    torchrun --nproc_per_node 8 benchmarks/throughput.py --json benchmarks/results/
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional

if __package__ in (None, ""):  # run as a script: make `benchmarks`, `dwconv` and `robust_models` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import dwconv
import robust_models
from benchmarks import tables
from benchmarks.cli import default_backends, resolve_device, run_with_cudnn_setting, split_choices
from benchmarks.model_variants import PLAIN, build_variants
from benchmarks.progress import Progress
from benchmarks.run_info import device_name, load_average, result_path, run_metadata, write_json
from benchmarks.timing import Timer, interleaved

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("inference", "train")
FOLDED = " folded"  # suffix of a variant with its BatchNorms folded (dwconv.fold_batchnorm), timed in inference
BENCHMARK_MODE = " benchmark"  # suffix of the auto variant run in benchmark mode (dwconv.set_benchmark)
CPU_DEFAULT_MODEL = "robust_resnet_dw_small"
CPU_INFERENCE_REPS = 30
SMOKE_MODEL_OVERRIDES = {"depths": (1, 1, 1, 1), "dims": (16, 32, 64, 128)}


@dataclass(frozen=True)
class Config:
    dtype: str
    channels_last: bool
    batch_size: int

    @property
    def label(self) -> str:
        return f"{self.dtype} {'channels_last' if self.channels_last else 'NCHW'} batch {self.batch_size}"


def default_configs(gpu: bool) -> List[Config]:
    if gpu:
        return [Config("bf16", True, 128), Config("fp32", False, 128)]
    return [Config("fp32", False, 2)]


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="comma-separated model names (default: all four on GPU, "
                        f"{CPU_DEFAULT_MODEL} on CPU); choose from " + ", ".join(robust_models.list_models()))
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="autocast dtype (fp32: none); replaces the dtype of every default configuration")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="memory layout of input and model; replaces that of every default configuration")
    p.add_argument("--batch-size", type=int, default=None, help="per process; replaces the default (128 GPU, 2 CPU)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--compile", action="store_true", help="torch.compile every variant")
    p.add_argument("--fold-bn", action="store_true",
                   help="also time inference of every variant with its BatchNorms folded into the convs before "
                        "them (dwconv.fold_batchnorm): a '<variant> folded' column")
    p.add_argument("--backend", default=None,
                   help="comma-separated dwconv backends or plans (default: every available backend except the "
                        "reference 'torch', plus 'auto')")
    p.add_argument("--benchmark-mode", action=argparse.BooleanOptionalAction, default=True,
                   help="also time 'auto' in benchmark mode (each depthwise layer's plans timed at its first call, "
                        "the fastest kept): a 'dwconv-auto benchmark' column (default on)")
    p.add_argument("--mode", default=",".join(MODES), help="comma-separated from inference, train")
    p.add_argument("--warmup", type=int, default=None,
                   help="interleaved warm-up repetitions after each variant's first, untimed step (default: 3 GPU, 0 CPU)")
    p.add_argument("--reps", type=int, default=None,
                   help="timed repetitions (default: 10 GPU; on a CPU 9 for training and 30 for inference, whose "
                        "ratios, near 1 at small batches, need more samples than a shared VM's noise)")
    p.add_argument("--json", metavar="PATH", help="write results here (a directory: a file named by the device)")
    p.add_argument("--notes", default="", help="free text stored in the JSON")
    p.add_argument("--smoke", action="store_true",
                   help="a check that it runs: one small model (one narrow block per stage), 64x64 images, batch 1, one rep")
    p.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True,
                   help="let cuDNN pick its fastest algorithm per shape (PyTorch's strongest baseline; default on)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    args.device = resolve_device(args.device, p)
    gpu = args.device.type == "cuda"
    if args.smoke:
        args.model = args.model or CPU_DEFAULT_MODEL
        args.image_size = 64 if args.image_size == 224 else args.image_size
        args.batch_size = args.batch_size or 1
        args.warmup = 0 if args.warmup is None else args.warmup
        args.reps = 1 if args.reps is None else args.reps
    args.model_overrides = SMOKE_MODEL_OVERRIDES if args.smoke else {}
    all_models = robust_models.list_models()
    args.models = split_choices(args.model, all_models, "--model", p) if args.model else (
        all_models if gpu else [CPU_DEFAULT_MODEL])
    args.modes = split_choices(args.mode, MODES, "--mode", p)
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu else 0)
    args.inference_reps = args.reps if args.reps is not None else (10 if gpu else CPU_INFERENCE_REPS)
    args.reps = args.reps if args.reps is not None else (10 if gpu else 9)
    if args.backend:
        args.backends = [b.strip() for b in args.backend.split(",") if b.strip()]
        for b in args.backends:
            try:
                dwconv.backends.check_backend_name(b)
            except ValueError as e:
                p.error(f"--backend: {e}")
    else:
        args.backends = default_backends(args.device) + ["auto"]
    configs = []
    for c in default_configs(gpu):
        c = Config(args.dtype or c.dtype, c.channels_last if args.channels_last is None else args.channels_last,
                   args.batch_size or c.batch_size)
        if c not in configs:
            configs.append(c)
    args.configs = configs
    return args


def model_cost(model: nn.Module, image_size: int, device: torch.device) -> Dict[str, Optional[float]]:
    """Parameters and fvcore GFLOPs (multiply-adds, one 224x224 image: the paper's 'GFLOPs')."""
    params = sum(p.numel() for p in model.parameters())
    gflops = None
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError:
        print("fvcore is not installed: no GFLOPs", file=sys.stderr)
    else:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            analysis = FlopCountAnalysis(model, torch.zeros(1, 3, image_size, image_size, device=device))
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            gflops = analysis.total() / 1e9
        model.train(was_training)
    return {"params": params, "gflops": gflops}


class StepRunner:
    """One inference or training step of one model variant on a fixed batch."""

    def __init__(self, model: nn.Module, config: Config, images: torch.Tensor, targets: torch.Tensor,
                 device: torch.device, compile_model: bool, ddp: bool, benchmark_mode: bool = False):
        self.model = model
        self.benchmark_mode = benchmark_mode
        self.config = config
        self.images, self.targets = images, targets
        self.device = device
        self.amp_dtype = DTYPES[config.dtype]
        self.train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None) if ddp else model
        self.run_model = torch.compile(self.train_model) if compile_model else self.train_model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.05)
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.dtype == "fp16")

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _settings(self):
        return dwconv.config.override(benchmark=True) if self.benchmark_mode else contextlib.nullcontext()

    def inference(self) -> None:
        self.model.eval()
        with torch.inference_mode(), self._autocast(), self._settings():
            self.run_model(self.images)

    def train(self) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self._settings():
            with self._autocast():
                loss = F.cross_entropy(self.run_model(self.images), self.targets)
            self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()


def bench_model(name: str, args, world_size: int, timer: Timer, progress: Progress, is_main: bool):
    """Records for every configuration, mode and variant of one model, and the model's cost."""
    device = args.device
    variants = build_variants(name, args.backends, **args.model_overrides)
    if args.benchmark_mode and "auto" in args.backends:
        variants["dwconv-auto" + BENCHMARK_MODE] = copy.deepcopy(variants["dwconv-auto"])
    if args.fold_bn:
        variants.update({v + FOLDED: dwconv.fold_batchnorm(copy.deepcopy(m).eval()) for v, m in list(variants.items())})
    cost = model_cost(variants[PLAIN].to(device), args.image_size, device) if is_main else {}
    if is_main:
        gflops = "n/a" if cost["gflops"] is None else f"{cost['gflops']:.2f}"
        print(f"{name}: {cost['params'] / 1e6:.2f} M parameters, {gflops} GFLOPs (fvcore, "
              f"{args.image_size}x{args.image_size})", flush=True)
    records = []
    gen = torch.Generator(device="cpu").manual_seed(0)
    for config in args.configs:
        fmt = torch.channels_last if config.channels_last else torch.contiguous_format
        images = torch.randn(config.batch_size, 3, args.image_size, args.image_size, generator=gen)
        images = images.to(device).contiguous(memory_format=fmt)
        targets = torch.randint(0, 1000, (config.batch_size,), generator=gen).to(device)
        runners = {v: StepRunner(m.to(device, memory_format=fmt), config, images, targets, device, args.compile,
                                 ddp=world_size > 1, benchmark_mode=BENCHMARK_MODE in v) for v, m in variants.items()}
        for mode in args.modes:
            progress.set_description(f"{name} {config.label} {mode}")
            timed = [v for v in runners if mode == "inference" or not v.endswith(FOLDED)]
            cases = {v: getattr(runners[v], mode) for v in timed}
            base_record = {"model": name, "mode": mode, **asdict(config), "compile": args.compile,
                           "image_size": args.image_size, "world_size": world_size}
            skipped = {}
            for v in list(cases):
                try:
                    cases[v]()  # a first step: compilation, benchmark mode's timing, whether every layer can run
                except RuntimeError as e:  # BackendUnavailableError included: report it, time the others
                    if v == PLAIN:
                        raise
                    skipped[v] = str(e).splitlines()[0]
                    print(f"warning: {name} {config.label} {mode} {v} skipped: {skipped[v]}", file=sys.stderr)
                    del cases[v]
            reps = args.inference_reps if mode == "inference" else args.reps
            stats = interleaved(cases, timer, warmup=args.warmup, reps=reps, on_sample=progress.update)
            base = stats[PLAIN].median
            for v in timed:
                if v in skipped:
                    records.append({**base_record, "variant": v, "skipped": skipped[v]})
                    continue
                s = stats[v]
                records.append({**base_record, "variant": v,
                                "images_per_s": config.batch_size * world_size / s.median,
                                "ms_per_step": s.median * 1e3, "p20_ms": s.p20 * 1e3, "p80_ms": s.p80 * 1e3,
                                "samples": s.samples, "samples_ms": [round(v * 1e3, 4) for v in s.values],
                                "speedup_vs_conv2d": base / s.median})
                unfolded = stats.get(v[:-len(FOLDED)]) if v.endswith(FOLDED) else None
                if unfolded is not None:
                    records[-1]["speedup_vs_unfolded"] = unfolded.median / s.median
        del runners
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return records, {"name": name, "image_size": args.image_size, **cost}


def main(argv: Optional[List[str]] = None) -> Optional[Dict]:
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_with_cudnn_setting(run, parse_args(argv), argv)


def run(args: argparse.Namespace, argv: List[str]) -> Optional[Dict]:
    """The benchmark for parsed arguments (argv: as given, recorded in the result)."""
    load_at_start = load_average()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        from robust_models.distributed import init_distributed
        ctx = init_distributed(args.device.type)
        args.device = ctx.device
        if "inference" in args.modes:
            args.modes = ["train"]  # DDP only changes training; inference is per device
    is_main = int(os.environ.get("RANK", "0")) == 0
    timer = Timer(args.device)
    if is_main:
        print(f"device: {args.device.type} ({device_name(args.device)}) "
              f"x {world_size}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
              f"variants {[PLAIN] + [f'dwconv-{b}' for b in args.backends]}"
              + (" + dwconv-auto in benchmark mode" if args.benchmark_mode and "auto" in args.backends else "")
              + f", configurations "
              f"{[c.label for c in args.configs]}, modes {args.modes}, warm-up {args.warmup}, reps {args.reps}"
              + (f" ({args.inference_reps} for inference)" if args.inference_reps != args.reps else "")
              + (", torch.compile" if args.compile else "")
              + (", inference also with BatchNorms folded" if args.fold_bn else ""), flush=True)
    n_variants = 1 + len(args.backends) + (args.benchmark_mode and "auto" in args.backends)
    steps = {"inference": n_variants * (1 + args.fold_bn) * (args.warmup + args.inference_reps),
             "train": n_variants * (args.warmup + args.reps)}
    total = len(args.models) * len(args.configs) * sum(steps[m] for m in args.modes)
    progress = Progress(total, "throughput", enabled=is_main and not args.no_progress)
    records, models = [], []
    try:
        for name in args.models:
            model_records, cost = bench_model(name, args, world_size, timer, progress, is_main)
            records += model_records
            models.append(cost)
    finally:
        progress.close()
        if dist.is_initialized():
            dist.destroy_process_group()
    if not is_main:
        return None
    launcher = "python" if world_size == 1 else f"torchrun --nproc_per_node {os.environ.get('LOCAL_WORLD_SIZE', world_size)}"
    result = {"meta": run_metadata("throughput", argv, args.device, args.notes, launcher, load_at_start),
              "settings": {"models": args.models, "configs": [asdict(c) for c in args.configs], "modes": args.modes,
                           "backends": args.backends, "compile": args.compile, "fold_bn": args.fold_bn,
                           "benchmark_mode": args.benchmark_mode,
                           "image_size": args.image_size,
                           "world_size": world_size, "warmup": args.warmup, "reps": args.reps,
                           "inference_reps": args.inference_reps,
                           "optimizer": "AdamW", "model_overrides": args.model_overrides},
              "models": models, "results": records}
    print("\n" + tables.model_cost_table(result) + "\n\n" + tables.throughput_table(result))
    if args.json:
        label = "throughput" if world_size == 1 else f"throughput-ddp{world_size}"
        write_json(result_path(args.json, args.device, label), result)
    return result


if __name__ == "__main__":
    main()
