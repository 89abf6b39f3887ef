"""Train a Robust-ResNet with the paper's recipe (DeiT's), single process or DDP under torchrun.

    python -m robust_models.train --data-dir /imagenet --output runs/dw_small
    torchrun --nproc_per_node 8 -m robust_models.train --data-dir /imagenet --output runs/dw_small
    python -m robust_models.train --synthetic --output /tmp/smoke --epochs 1 --warmup-epochs 0 --img-size 32 \\
        --depths 1 1 1 1 --dims 16 32 64 128

Defaults: AdamW, lr 5e-4 x global batch / 512, weight decay 0.05, cosine schedule with 5 warm-up epochs,
label smoothing 0.1, mixup 0.8, cutmix 1.0, RandAugment m9, random erasing 0.25, repeated augmentation
(3, when distributed), drop path 0.1, 300 epochs. Each --checkpoint-every updates and at each epoch's
end the full train state is written; --resume continues it bit-exactly (same world size and settings).
Needs timm and torchvision: pip install -e ".[train]".
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn

from . import data
from .distributed import DistContext, all_reduce_sum, init_distributed, shutdown_distributed
from .evaluation import evaluate
from .metrics_log import MetricsLog
from .precision import AMP_CHOICES, amp_dtype, autocast
from .seeding import derived_seed, seed_all
from .train_state import Progress, load_train_state, save_train_state

__all__ = ["parse_args", "main"]

LOG_FIELDS = ("scope", "epoch", "update", "lr", "train_loss", "eval_loss", "eval_top1", "eval_top5",
              "ema_top1", "ema_top5", "samples_per_s")

# Settings that may change when resuming (where the data and outputs live, how fast the same run goes,
# what is evaluated); every other one must match the checkpoint's for the run to continue exactly.
RESUMABLE_CHANGES = frozenset({"output", "resume", "data_dir", "workers", "log_file", "log_interval",
                               "checkpoint_every", "no_progress", "pretrained", "backend", "device",
                               "channels_last", "val_split", "crop_pct"})

_MODEL_OVERRIDES = ("depths", "dims", "patch_size", "kernel_size", "block_type", "norm_act", "in_chans")


def _none_or_str(value: str) -> Optional[str]:
    return None if value.lower() == "none" else value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m robust_models.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--model", default="robust_resnet_dw_small")
    g.add_argument("--pretrained", default=None, help="checkpoint to start from (not a resume)")
    g.add_argument("--num-classes", type=int, default=1000)
    g.add_argument("--drop", type=float, default=0.0, help="dropout before the classifier")
    g.add_argument("--drop-path", type=float, default=0.1)
    g.add_argument("--layer-scale-init-value", type=float, default=0.0)
    g.add_argument("--backend", default="auto", help="dwconv backend")
    g.add_argument("--depths", type=int, nargs="+", default=None, help="override: blocks per stage")
    g.add_argument("--dims", type=int, nargs="+", default=None, help="override: width per stage")
    g.add_argument("--patch-size", type=int, default=None)
    g.add_argument("--kernel-size", type=int, default=None)
    g.add_argument("--block-type", default=None, choices=("a", "b", "c", "d"))
    g.add_argument("--norm-act", default=None, choices=("reduced", "full"))
    g.add_argument("--in-chans", type=int, default=None)

    g = p.add_argument_group("data")
    g.add_argument("--data-dir", default=None, help="ImageFolder root with train/ and val/ sub-folders")
    g.add_argument("--train-split", default="train")
    g.add_argument("--val-split", default="val", help="evaluated after each epoch when present")
    g.add_argument("--synthetic", action="store_true", help="generated images instead of --data-dir")
    g.add_argument("--synthetic-size", type=int, default=12800, help="images per synthetic epoch")
    g.add_argument("--img-size", type=int, default=224)
    g.add_argument("--interpolation", default="bicubic")
    g.add_argument("--crop-pct", type=float, default=0.875, help="evaluation centre crop")
    g.add_argument("--batch-size", type=int, default=128, help="per process and micro-step")
    g.add_argument("--accum-steps", type=int, default=1, help="micro-steps per optimizer update")
    g.add_argument("--workers", type=int, default=8)

    g = p.add_argument_group("optimization")
    g.add_argument("--epochs", type=int, default=300)
    g.add_argument("--lr", type=float, default=None, help="default: --lr-base x global batch / --lr-base-size")
    g.add_argument("--lr-base", type=float, default=5e-4)
    g.add_argument("--lr-base-size", type=int, default=512)
    g.add_argument("--min-lr", type=float, default=1e-5)
    g.add_argument("--warmup-lr", type=float, default=1e-6)
    g.add_argument("--warmup-epochs", type=int, default=5)
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--opt-eps", type=float, default=1e-8)
    g.add_argument("--clip-grad", type=float, default=None, help="max gradient norm")

    g = p.add_argument_group("augmentation and regularization")
    g.add_argument("--smoothing", type=float, default=0.1)
    g.add_argument("--mixup", type=float, default=0.8, help="mixup alpha (0: off)")
    g.add_argument("--cutmix", type=float, default=1.0, help="cutmix alpha (0: off)")
    g.add_argument("--mixup-prob", type=float, default=1.0)
    g.add_argument("--mixup-switch-prob", type=float, default=0.5)
    g.add_argument("--aa", type=_none_or_str, default="rand-m9-mstd0.5-inc1", help="timm auto-augment ('none': off)")
    g.add_argument("--color-jitter", type=float, default=0.4)
    g.add_argument("--reprob", type=float, default=0.25, help="random erasing probability")
    g.add_argument("--remode", default="pixel")
    g.add_argument("--recount", type=int, default=1)
    g.add_argument("--aug-repeats", type=int, default=3, help="repeated augmentation when distributed (0: off)")
    g.add_argument("--model-ema", action="store_true")
    g.add_argument("--model-ema-decay", type=float, default=0.99996)

    g = p.add_argument_group("run")
    g.add_argument("--amp", default="none", choices=AMP_CHOICES, help="autocast dtype (fp16 adds a grad scaler)")
    g.add_argument("--channels-last", action="store_true")
    g.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--output", required=True, help="directory for checkpoints and the log")
    g.add_argument("--resume", default=None, help="train state to continue")
    g.add_argument("--checkpoint-every", type=int, default=0, help="also save checkpoint-<update>.pth every N updates")
    g.add_argument("--log-file", default=None, help="metrics log, .csv or .jsonl (default: <output>/log.csv)")
    g.add_argument("--log-interval", type=int, default=50, help="updates between log rows")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.synthetic == (args.data_dir is not None):
        parser.error("give exactly one of --data-dir and --synthetic")
    for name in ("batch_size", "accum_steps", "epochs", "img_size", "num_classes", "log_interval", "synthetic_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("workers", "checkpoint_every", "warmup_epochs", "aug_repeats"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    if (args.mixup > 0 or args.cutmix > 0) and args.batch_size % 2:
        parser.error("mixup / cutmix mix a batch with its reverse: --batch-size must be even")
    if args.warmup_epochs >= args.epochs and args.warmup_epochs > 0:
        parser.error("--warmup-epochs must be smaller than --epochs")
    if args.log_file is None:
        args.log_file = os.path.join(args.output, "log.csv")
    return args


def build_model(args: argparse.Namespace, pretrained: Optional[str]) -> nn.Module:
    from robust_models import create_model

    overrides = {k: getattr(args, k) for k in _MODEL_OVERRIDES if getattr(args, k) is not None}
    return create_model(args.model, pretrained=pretrained, num_classes=args.num_classes,
                        drop_path_rate=args.drop_path, layer_scale_init_value=args.layer_scale_init_value,
                        backend=args.backend, drop_rate=args.drop, **overrides)


def _train_dataset(args):
    transform = data.train_transform(
        args.img_size, auto_augment=args.aa, color_jitter=args.color_jitter, interpolation=args.interpolation,
        re_prob=args.reprob, re_mode=args.remode, re_count=args.recount)
    if args.synthetic:
        return data.SyntheticImageDataset(args.synthetic_size, args.num_classes, args.img_size, transform)
    return data.image_folder(os.path.join(args.data_dir, args.train_split), transform, args.num_classes)


def _val_dataset(args):
    if args.synthetic:
        return None
    root = os.path.join(args.data_dir, args.val_split)
    if not os.path.isdir(root):
        return None
    transform = data.eval_transform(args.img_size, crop_pct=args.crop_pct, interpolation=args.interpolation)
    return data.image_folder(root, transform, args.num_classes)


def _loss_and_mixup(args):
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if args.mixup > 0 or args.cutmix > 0:
        mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                      switch_prob=args.mixup_switch_prob, mode="batch", label_smoothing=args.smoothing,
                      num_classes=args.num_classes)
        return SoftTargetCrossEntropy(), mixup
    if args.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=args.smoothing), None
    return nn.CrossEntropyLoss(), None


def _config(args: argparse.Namespace, ctx: DistContext) -> Dict[str, Any]:
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}
    config["world_size"] = ctx.world_size
    return config


class Trainer:
    """One training run: the model, its optimizer state and the loop over epochs and updates."""

    def __init__(self, args: argparse.Namespace, ctx: DistContext):
        from timm.optim import create_optimizer_v2
        from timm.scheduler import create_scheduler_v2
        from timm.utils import ModelEmaV3

        self.args, self.ctx = args, ctx
        self.device = ctx.device
        self.amp_dtype = amp_dtype(args.amp)
        seed_all(args.seed)  # identical initial weights on every rank
        self.model = build_model(args, pretrained=None if args.resume else args.pretrained).to(self.device)
        if args.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

        self.train_set = _train_dataset(args)
        self.val_set = _val_dataset(args)
        base_sampler = data.train_sampler(self.train_set, rank=ctx.rank, world_size=ctx.world_size,
                                          seed=args.seed, aug_repeats=args.aug_repeats)
        self.sampler = data.EpochSampler(base_sampler, seed=args.seed, rank=ctx.rank)
        self.loader = data.train_loader(self.train_set, self.sampler, batch_size=args.batch_size,
                                        workers=args.workers, pin_memory=self.device.type == "cuda")
        self.updates_per_epoch = len(base_sampler) // (args.batch_size * args.accum_steps)
        if self.updates_per_epoch == 0:
            raise ValueError(f"an epoch has {len(base_sampler)} samples per process, fewer than one update's "
                             f"batch-size x accum-steps = {args.batch_size * args.accum_steps}")

        self.global_batch = args.batch_size * args.accum_steps * ctx.world_size
        lr = args.lr if args.lr is not None else args.lr_base * self.global_batch / args.lr_base_size
        self.optimizer = create_optimizer_v2(self.model, opt="adamw", lr=lr, weight_decay=args.weight_decay,
                                             eps=args.opt_eps)
        self.lr_scheduler, _ = create_scheduler_v2(
            self.optimizer, sched="cosine", num_epochs=args.epochs, min_lr=args.min_lr, warmup_lr=args.warmup_lr,
            warmup_epochs=args.warmup_epochs, step_on_epochs=False, updates_per_epoch=self.updates_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        self.model_ema = ModelEmaV3(self.model, decay=args.model_ema_decay) if args.model_ema else None
        self.loss_fn, self.mixup = _loss_and_mixup(args)

        self.config = _config(args, ctx)
        self.progress = Progress()
        if args.resume:
            self.progress = load_train_state(
                args.resume, self.model, optimizer=self.optimizer, lr_scheduler=self.lr_scheduler,
                scaler=self.scaler, model_ema=self.model_ema, config=self.config,
                invariant_keys=sorted(set(self.config) - RESUMABLE_CHANGES))
        self.lr_scheduler.step_update(self.progress.num_updates)

        self.train_model = self.model
        if ctx.distributed:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.log = MetricsLog(args.log_file, LOG_FIELDS) if ctx.is_main else None

    # -- one optimizer update -------------------------------------------------------------------------
    def _micro_step(self, images, targets, batch_idx: int, sync: bool) -> torch.Tensor:
        args = self.args
        seed_all(derived_seed(args.seed, self.ctx.rank, self.progress.epoch, batch_idx, 1))  # mixup, drop path
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        if args.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.mixup is not None:
            images, targets = self.mixup(images, targets)
        no_sync = self.train_model.no_sync if (self.ctx.distributed and not sync) else contextlib.nullcontext
        with no_sync():
            with autocast(self.device, self.amp_dtype):
                loss = self.loss_fn(self.train_model(images), targets)
            scaled = loss / args.accum_steps
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return loss.detach().float()

    def _optimizer_step(self) -> None:
        if self.args.clip_grad is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.progress.num_updates += 1
        self.progress.update_in_epoch += 1
        if self.model_ema is not None:
            self.model_ema.update(self.model, step=self.progress.num_updates)
        self.lr_scheduler.step_update(self.progress.num_updates)

    # -- epochs ---------------------------------------------------------------------------------------
    def train_epoch(self) -> Optional[float]:
        """Runs the rest of the current epoch; returns the mean training loss of the updates it ran
        (over all processes), None when the epoch was already complete (resumed from its last update)."""
        args, prog = self.args, self.progress
        accum = args.accum_steps
        first_batch = prog.update_in_epoch * accum
        self.sampler.set_epoch(prog.epoch, start=first_batch * args.batch_size)
        self.train_model.train()
        batches = iter(self.loader)
        epoch_loss = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, micro-steps
        window_loss = torch.zeros(2, dtype=torch.float64, device=self.device)
        window_start = time.perf_counter()
        bar = _progress_bar(self.ctx.is_main and not args.no_progress, self.updates_per_epoch,
                            prog.update_in_epoch, f"epoch {prog.epoch}")
        try:
            while prog.update_in_epoch < self.updates_per_epoch:
                for micro in range(accum):
                    images, targets = next(batches)
                    loss = self._micro_step(images, targets, prog.update_in_epoch * accum + micro,
                                            sync=micro == accum - 1)
                    step_loss = torch.stack([loss.double(), torch.ones((), dtype=torch.float64, device=self.device)])
                    epoch_loss += step_loss
                    window_loss += step_loss
                self._optimizer_step()
                bar.update(1)
                if prog.num_updates % args.log_interval == 0 or prog.update_in_epoch == self.updates_per_epoch:
                    total = all_reduce_sum(window_loss)
                    mean = (total[0] / total[1]).item()
                    if not math.isfinite(mean):
                        raise FloatingPointError(f"training loss is {mean} at update {prog.num_updates}")
                    seconds = time.perf_counter() - window_start
                    samples = total[1].item() * args.batch_size
                    self._log(scope="update", update=prog.num_updates, lr=self._lr(), train_loss=mean,
                              samples_per_s=samples / seconds if seconds > 0 else None)
                    bar.set_postfix(loss=f"{mean:.4f}", lr=f"{self._lr():.2e}")
                    window_loss.zero_()
                    window_start = time.perf_counter()
                if args.checkpoint_every and prog.num_updates % args.checkpoint_every == 0:
                    self._save(f"checkpoint-{prog.num_updates}.pth")
        finally:
            bar.close()
        total = all_reduce_sum(epoch_loss)
        return (total[0] / total[1]).item() if total[1] > 0 else None

    def run(self) -> None:
        prog = self.progress
        while prog.epoch < self.args.epochs:
            train_loss = self.train_epoch()
            row: Dict[str, Any] = dict(scope="epoch", update=prog.num_updates, lr=self._lr(), train_loss=train_loss)
            if self.val_set is not None:
                row.update(self._evaluate())
            self._log(**row)
            prog.epoch, prog.update_in_epoch = prog.epoch + 1, 0
            self._save("last.pth")
            if row.get("eval_top1") is not None and (prog.best_top1 is None or row["eval_top1"] > prog.best_top1):
                prog.best_top1 = row["eval_top1"]
                self._save("best.pth")

    def _evaluate(self) -> Dict[str, float]:
        args = self.args
        loader = data.eval_loader(self.val_set, rank=self.ctx.rank, world_size=self.ctx.world_size,
                                  batch_size=args.batch_size, workers=args.workers,
                                  pin_memory=self.device.type == "cuda")
        kwargs = dict(amp_dtype=self.amp_dtype, channels_last=args.channels_last)
        result = evaluate(self.model, loader, self.device, **kwargs)
        row = dict(eval_loss=result["loss"], eval_top1=result["top1"], eval_top5=result["top5"])
        if self.model_ema is not None:
            ema = evaluate(self.model_ema.module, loader, self.device, **kwargs)
            row.update(ema_top1=ema["top1"], ema_top5=ema["top5"])
        return row

    def _lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def _log(self, **row) -> None:
        if self.log is not None:
            self.log.write(dict(epoch=self.progress.epoch, **row))

    def _save(self, name: str) -> None:
        if self.ctx.is_main:
            save_train_state(os.path.join(self.args.output, name), self.model, optimizer=self.optimizer,
                             lr_scheduler=self.lr_scheduler, scaler=self.scaler, model_ema=self.model_ema,
                             progress=self.progress, config=self.config)


def _progress_bar(enabled: bool, total: int, initial: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True, file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    ctx = init_distributed(args.device)
    try:
        if ctx.is_main:
            os.makedirs(args.output, exist_ok=True)
        Trainer(args, ctx).run()
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main()
