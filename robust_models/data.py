"""Datasets, transforms, samplers and loaders for train.py and validate.py (transforms from timm).

Training samples are drawn through `EpochSampler`, which yields (index, seed) pairs: `SeededSamples`
seeds the augmentation of each sample from its position in the epoch, and an epoch can start at any
position, so a resumed run sees exactly the batches the interrupted one would have.
"""
from __future__ import annotations

import os
from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler

from .robustness import imagenet_1k_wnids, indices_in_1k
from .seeding import derived_seed, seed_all

__all__ = [
    "SyntheticImageDataset", "SeededSamples", "EpochSampler", "ShardSampler", "train_transform",
    "eval_transform", "image_folder", "train_sampler", "train_loader", "eval_loader",
]


def _timm_data():
    try:
        import timm.data
    except ImportError as err:
        raise ImportError('training and validation need timm and torchvision: pip install -e ".[train]"') from err
    return timm.data


def _image_folder_cls():
    try:
        from torchvision.datasets import ImageFolder
    except ImportError as err:
        raise ImportError('image folders need torchvision: pip install -e ".[train]"') from err
    return ImageFolder


class SyntheticImageDataset(Dataset):
    """Deterministic RGB images with a learnable label: sample i has class i % num_classes, and its
    pixels are uniform noise around that class's colour. Goes through the same transforms as real data."""

    def __init__(self, num_samples: int, num_classes: int, img_size: int, transform: Optional[Callable] = None):
        if num_samples < 1 or num_classes < 1 or img_size < 1:
            raise ValueError(f"synthetic data needs positive sizes, got num_samples={num_samples}, "
                             f"num_classes={num_classes}, img_size={img_size}")
        self.num_samples, self.num_classes, self.img_size = num_samples, num_classes, img_size
        self.transform = transform
        self.class_colors = np.random.default_rng(0).integers(40, 216, size=(num_classes, 3))

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int):
        from PIL import Image

        label = index % self.num_classes
        noise = np.random.default_rng(index).integers(-40, 41, size=(self.img_size, self.img_size, 3))
        image = Image.fromarray((self.class_colors[label] + noise).astype(np.uint8))
        return (self.transform(image) if self.transform is not None else image), label


class SeededSamples(Dataset):
    """Indexed by (index, seed): seeds the global generators, then returns dataset[index]."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index_and_seed: Tuple[int, int]):
        index, seed = index_and_seed
        seed_all(seed)
        return self.dataset[index]


class EpochSampler(Sampler):
    """Wraps a sampler that has set_epoch; yields (index, seed), starting `start` samples into the epoch.

    A sample's seed depends on (seed, rank, epoch, position in this rank's epoch order) only.
    """

    def __init__(self, sampler: Sampler, seed: int, rank: int):
        self.sampler, self.seed, self.rank = sampler, seed, rank
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= len(self.sampler):
            raise ValueError(f"start {start} outside the epoch's {len(self.sampler)} samples")
        self.epoch, self.start = epoch, start
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler) - self.start

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        for position, index in enumerate(self.sampler):
            if position >= self.start:
                yield index, derived_seed(self.seed, self.rank, self.epoch, position)


class ShardSampler(Sampler):
    """Every world_size-th index from rank: the shards cover the dataset exactly once, no padding."""

    def __init__(self, num_samples: int, rank: int, world_size: int):
        self.indices = range(rank, num_samples, world_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


def train_transform(img_size: int, *, auto_augment: Optional[str], color_jitter: float, interpolation: str,
                    re_prob: float, re_mode: str, re_count: int):
    return _timm_data().create_transform(
        img_size, is_training=True, auto_augment=auto_augment, color_jitter=color_jitter,
        interpolation=interpolation, re_prob=re_prob, re_mode=re_mode, re_count=re_count)


def eval_transform(img_size: int, *, crop_pct: float, interpolation: str):
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    return _timm_data().create_transform(img_size, is_training=False, crop_pct=crop_pct,
                                         interpolation=interpolation)


def image_folder(root: str, transform: Optional[Callable], num_classes: int, *, by_imagenet_wnid: Optional[bool] = None):
    """An ImageFolder whose labels are model class indices.

    Labels follow the class folders' sorted order, which requires one folder per model class, except
    when the folders are named by ImageNet-1k WordNet ids and the model has 1000 classes: then each
    folder's label is its ImageNet class index, so a folder holding a subset of the classes (as
    ImageNet-C, -R, -A, -Sketch, Stylized-ImageNet or a sample of ImageNet val) is labelled correctly.
    by_imagenet_wnid=True demands the second rule.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder not found: {root}")
    dataset = _image_folder_cls()(root, transform=transform)
    classes: List[str] = dataset.classes
    is_imagenet = num_classes == 1000 and set(classes) <= set(imagenet_1k_wnids())
    if by_imagenet_wnid and not is_imagenet:
        if num_classes != 1000:
            raise ValueError(f"{root}: ImageNet benchmarks need a 1000-class model, got num_classes={num_classes}")
        unknown = sorted(set(classes) - set(imagenet_1k_wnids()))
        raise ValueError(f"{root}: class folders that are not ImageNet-1k WordNet ids: {unknown[:10]}")
    if is_imagenet:
        folder_to_class = indices_in_1k(classes)
        dataset.target_transform = _FolderToClass(folder_to_class)
        dataset.class_indices = folder_to_class
    else:
        if len(classes) != num_classes:
            raise ValueError(f"{root} has {len(classes)} class folders but the model has {num_classes} classes "
                             "(folders named by ImageNet-1k WordNet ids map to a 1000-class model's indices)")
        dataset.class_indices = tuple(range(num_classes))
    return dataset


class _FolderToClass:
    """Folder label -> model class index (a class, not a lambda, so loader workers can pickle it)."""

    def __init__(self, class_indices: Tuple[int, ...]):
        self.class_indices = class_indices

    def __call__(self, folder_label: int) -> int:
        return self.class_indices[folder_label]


def train_sampler(dataset: Dataset, *, rank: int, world_size: int, seed: int, aug_repeats: int) -> Sampler:
    """Repeated augmentation (each image `aug_repeats` times per epoch, spread over the processes, as in
    DeiT) when distributed and aug_repeats > 0; otherwise a shuffled split of the dataset."""
    if aug_repeats > 0 and world_size > 1:
        from timm.data.distributed_sampler import RepeatAugSampler

        return RepeatAugSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                num_repeats=aug_repeats, selected_round=0)
    from torch.utils.data.distributed import DistributedSampler

    return DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)


def train_loader(dataset: Dataset, sampler: EpochSampler, *, batch_size: int, workers: int,
                 pin_memory: bool) -> DataLoader:
    return DataLoader(SeededSamples(dataset), batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=pin_memory, drop_last=True, persistent_workers=workers > 0)


def eval_loader(dataset: Dataset, *, rank: int, world_size: int, batch_size: int, workers: int,
                pin_memory: bool) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), rank, world_size),
                      num_workers=workers, pin_memory=pin_memory, drop_last=False)
