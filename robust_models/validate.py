"""Evaluate a Robust-ResNet on ImageNet and the robustness benchmarks of the paper.

    python -m robust_models.validate --model robust_resnet_dw_small --checkpoint dw_small.pth \\
        --imagenet /data/imagenet/val --imagenet-r /data/imagenet-r --imagenet-a /data/imagenet-a \\
        --imagenet-c /data/imagenet-c --stylized-imagenet /data/stylized/val \\
        --imagenet-sketch /data/imagenet-sketch --json results.json
    torchrun --nproc_per_node 8 -m robust_models.validate ...   (each process scores a shard)

Reports top-1 / top-5 accuracy (%) on each folder. ImageNet-R and ImageNet-A are scored among their 200
classes only (the other logits are ignored). ImageNet-C (<root>/<corruption>/<severity>/<class>/...) is
reported as the mean top-1 error over its corruption x severity folders (the paper's number) with the
AlexNet-normalized mCE beside it. Class folders named by ImageNet WordNet ids are labelled with their
ImageNet class index, so folders with a subset of the classes work. Each BatchNorm is folded into the
conv before it (dwconv.fold_batchnorm: the same logits up to rounding; --no-fold-bn keeps them).
Needs timm and torchvision.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from dwconv import fold_batchnorm

from . import data
from .distributed import DistContext, init_distributed, shutdown_distributed
from .evaluation import evaluate
from .precision import AMP_CHOICES, amp_dtype
from .robustness import (IMAGENET_A_WNIDS, IMAGENET_C_CORRUPTIONS, IMAGENET_C_EXTRA_CORRUPTIONS,
                         IMAGENET_C_SEVERITIES, IMAGENET_R_WNIDS, indices_in_1k, summarize_imagenet_c)

__all__ = ["parse_args", "main", "run", "imagenet_c_folders"]

# Result key and command-line flag of each benchmark, in reporting order.
BENCHMARKS = ("imagenet", "imagenet_r", "imagenet_a", "imagenet_c", "stylized_imagenet", "imagenet_sketch")
_PLAIN_WNID_FOLDERS = ("stylized_imagenet", "imagenet_sketch")
_CLASS_SUBSETS = {"imagenet_r": IMAGENET_R_WNIDS, "imagenet_a": IMAGENET_A_WNIDS}
_MODEL_OVERRIDES = ("depths", "dims", "patch_size", "kernel_size", "block_type", "norm_act", "in_chans")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m robust_models.validate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--model", default="robust_resnet_dw_small")
    g.add_argument("--checkpoint", default=None, help="weights to evaluate (official train state or state dict)")
    g.add_argument("--checkpoint-key", default=None, choices=("model", "model_ema", "state_dict"),
                   help="which weights of a train state (default: the first of model, state_dict, model_ema)")
    g.add_argument("--num-classes", type=int, default=1000)
    g.add_argument("--backend", default="auto", help="dwconv backend")
    g.add_argument("--depths", type=int, nargs="+", default=None)
    g.add_argument("--dims", type=int, nargs="+", default=None)
    g.add_argument("--patch-size", type=int, default=None)
    g.add_argument("--kernel-size", type=int, default=None)
    g.add_argument("--block-type", default=None, choices=("a", "b", "c", "d"))
    g.add_argument("--norm-act", default=None, choices=("reduced", "full"))
    g.add_argument("--in-chans", type=int, default=None)
    g.add_argument("--fold-bn", action=argparse.BooleanOptionalAction, default=True,
                   help="fold each BatchNorm into the conv before it (dwconv.fold_batchnorm; same outputs up to "
                        "rounding, one pass less per BatchNorm); --no-fold-bn runs the model as trained")

    g = p.add_argument_group("benchmarks (give at least one folder)")
    g.add_argument("--imagenet", default=None, help="ImageFolder scored on all classes (e.g. ImageNet val)")
    g.add_argument("--imagenet-r", default=None, help="ImageNet-R root (200 class folders)")
    g.add_argument("--imagenet-a", default=None, help="ImageNet-A root (200 class folders)")
    g.add_argument("--imagenet-c", default=None, help="ImageNet-C root: <corruption>/<severity 1-5>/<class>/")
    g.add_argument("--stylized-imagenet", default=None, help="Stylized-ImageNet val root")
    g.add_argument("--imagenet-sketch", default=None, help="ImageNet-Sketch root")

    g = p.add_argument_group("run")
    g.add_argument("--img-size", type=int, default=224)
    g.add_argument("--crop-pct", type=float, default=0.875, help="resize to img-size / crop-pct, centre crop")
    g.add_argument("--interpolation", default="bicubic")
    g.add_argument("--batch-size", type=int, default=128, help="per process")
    g.add_argument("--workers", type=int, default=8)
    g.add_argument("--amp", default="none", choices=AMP_CHOICES)
    g.add_argument("--channels-last", action="store_true")
    g.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    g.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                   help="write the results as JSON to PATH (no PATH: to stdout, the summary then goes to stderr)")
    g.add_argument("--no-progress", action="store_true")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not any(getattr(args, name) for name in BENCHMARKS):
        parser.error("give at least one of " + ", ".join("--" + b.replace("_", "-") for b in BENCHMARKS))
    if args.batch_size < 1 or args.workers < 0 or args.num_classes < 1:
        parser.error("--batch-size and --num-classes must be >= 1, --workers >= 0")
    return args


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    from robust_models import create_model, load_checkpoint

    overrides = {k: getattr(args, k) for k in _MODEL_OVERRIDES if getattr(args, k) is not None}
    model = create_model(args.model, num_classes=args.num_classes, backend=args.backend, **overrides)
    if args.checkpoint is not None:
        load_checkpoint(model, args.checkpoint, strict=True, key=args.checkpoint_key)
    return model


def imagenet_c_folders(root: str) -> List[Tuple[str, int, str]]:
    """(corruption, severity, folder) for every <root>/<corruption>/<severity> directory, benchmark order.

    Raises on directories that are not ImageNet-C corruptions or severities 1-5.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"ImageNet-C root not found: {root}")
    known = (*IMAGENET_C_CORRUPTIONS, *IMAGENET_C_EXTRA_CORRUPTIONS)
    found = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    unknown = [d for d in found if d not in known]
    if unknown:
        raise ValueError(f"{root}: {unknown} are not ImageNet-C corruptions; expected folders named {list(known)}")
    folders = []
    for corruption in (c for c in known if c in found):
        cdir = os.path.join(root, corruption)
        severities = sorted(d for d in os.listdir(cdir) if os.path.isdir(os.path.join(cdir, d)))
        bad = [s for s in severities if s not in {str(v) for v in IMAGENET_C_SEVERITIES}]
        if bad or not severities:
            raise ValueError(f"{cdir}: expected severity folders among {list(IMAGENET_C_SEVERITIES)}, found {severities}")
        folders.extend((corruption, int(s), os.path.join(cdir, s)) for s in sorted(severities, key=int))
    if not folders:
        raise ValueError(f"{root} holds no corruption folders; expected some of {list(known)}")
    return folders


class _Evaluator:
    """Scores one model on image folders, each process on its shard."""

    def __init__(self, model: torch.nn.Module, args: argparse.Namespace, ctx: DistContext):
        self.model, self.args, self.ctx = model, args, ctx
        self.transform = data.eval_transform(args.img_size, crop_pct=args.crop_pct, interpolation=args.interpolation)

    def __call__(self, root: str, desc: str, *, imagenet_labels: bool = False,
                 class_subset: Optional[Sequence[int]] = None) -> Dict[str, Any]:
        args, ctx = self.args, self.ctx
        dataset = data.image_folder(root, self.transform, args.num_classes,
                                    by_imagenet_wnid=True if imagenet_labels else None)
        if class_subset is not None:
            allowed = set(class_subset)
            outside = sorted(name for name, index in zip(dataset.classes, dataset.class_indices)
                             if index not in allowed)
            if outside:
                raise ValueError(f"{root}: class folders {outside[:10]} are not among the {desc} classes")
        loader = data.eval_loader(dataset, rank=ctx.rank, world_size=ctx.world_size, batch_size=args.batch_size,
                                  workers=args.workers, pin_memory=ctx.device.type == "cuda")
        if ctx.is_main and not args.no_progress:
            from tqdm import tqdm

            loader = tqdm(loader, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)
        return evaluate(self.model, loader, ctx.device, class_subset=class_subset,
                        amp_dtype=amp_dtype(args.amp), channels_last=args.channels_last)


def run(args: argparse.Namespace, ctx: DistContext) -> Dict[str, Any]:
    """All requested benchmarks' results (identical on every process)."""
    model = build_model(args).to(ctx.device).eval()
    if args.fold_bn:
        fold_batchnorm(model)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    score = _Evaluator(model, args, ctx)
    results: Dict[str, Any] = {"model": args.model, "checkpoint": args.checkpoint, "fold_bn": args.fold_bn}
    if args.imagenet:
        results["imagenet"] = score(args.imagenet, "imagenet")
    for name, wnids in _CLASS_SUBSETS.items():
        root = getattr(args, name)
        if root:
            results[name] = score(root, name, imagenet_labels=True, class_subset=indices_in_1k(wnids))
    if args.imagenet_c:
        errors: Dict[str, Dict[int, float]] = {}
        for corruption, severity, folder in imagenet_c_folders(args.imagenet_c):
            top1 = score(folder, f"imagenet_c {corruption} {severity}", imagenet_labels=True)["top1"]
            errors.setdefault(corruption, {})[severity] = 1.0 - top1 / 100.0
        results["imagenet_c"] = summarize_imagenet_c(errors)
    for name in _PLAIN_WNID_FOLDERS:
        root = getattr(args, name)
        if root:
            results[name] = score(root, name, imagenet_labels=True)
    return results


def summary_lines(results: Dict[str, Any]) -> List[str]:
    lines = []
    for name in BENCHMARKS:
        if name not in results:
            continue
        r = results[name]
        if name == "imagenet_c":
            note = "" if r["complete"] else " (not all 15 corruptions x 5 severities)"
            lines.append(f"{name}: mean error {r['mean_error']:.2f}  mCE {r['mce']:.2f}{note}")
        else:
            lines.append(f"{name}: top-1 {r['top1']:.2f}  top-5 {r['top5']:.2f}  ({r['count']} images)")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    ctx = init_distributed(args.device)
    try:
        results = run(args, ctx)
    finally:
        shutdown_distributed()
    if ctx.is_main:
        summary_stream = sys.stderr if args.json == "-" else sys.stdout
        print("\n".join(summary_lines(results)), file=summary_stream)
        if args.json == "-":
            print(json.dumps(results, indent=2))
        elif args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
