"""Top-1 / top-5 accuracy of a classifier over a (possibly sharded) loader, summed over processes."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .distributed import all_reduce_sum
from .precision import autocast

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, device: torch.device, *,
             class_subset: Optional[Sequence[int]] = None, amp_dtype: Optional[torch.dtype] = None,
             channels_last: bool = False) -> Dict[str, Optional[float]]:
    """Accuracy (percent) of model on loader's (image, class index) batches.

    class_subset: score only among these model classes (the ImageNet-R / -A protocol: logits outside
    the benchmark's 200 classes are ignored); targets stay model class indices. The loss (mean
    cross-entropy over all classes) is reported only without a subset.
    Each process sees its own shard; counts are summed over processes, so every rank gets the totals.
    """
    was_training = model.training
    model.eval()
    subset = None if class_subset is None else torch.as_tensor(list(class_subset), dtype=torch.long, device=device)
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # samples, top-1 hits, top-5 hits, loss sum
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(images)
        logits = logits.float()
        if subset is None:
            scores, choices = logits, None
            totals[3] += F.cross_entropy(logits, targets, reduction="sum").double()
        else:
            scores, choices = logits[:, subset], subset
        k = min(5, scores.shape[1])
        top = scores.topk(k, dim=1).indices
        if choices is not None:
            top = choices[top]
        hits = top.eq(targets[:, None])
        totals[0] += targets.numel()
        totals[1] += hits[:, 0].sum()
        totals[2] += hits.any(dim=1).sum()
    totals = all_reduce_sum(totals)
    model.train(was_training)
    count = int(totals[0].item())
    if count == 0:
        raise ValueError("evaluation loader yielded no samples")
    return {
        "top1": 100.0 * totals[1].item() / count,
        "top5": 100.0 * totals[2].item() / count,
        "loss": totals[3].item() / count if subset is None else None,
        "count": count,
    }
