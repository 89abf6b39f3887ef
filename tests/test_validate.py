"""validate.py on small generated image folders, against accuracies computed here from the model's logits.

Images are 32x32 PNGs evaluated at 32x32 with crop_pct 1 (resize and crop are identities), so the test
can preprocess them itself. Each image is filed under a class chosen from its own logits (a top-1 hit,
a top-5-only hit or a miss), which makes every expected number known and non-trivial.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("timm")
pytest.importorskip("torchvision")

from PIL import Image  # noqa: E402

from robust_models import create_model, save_checkpoint  # noqa: E402
from robust_models import validate  # noqa: E402
from robust_models.robustness import (IMAGENET_A_WNIDS, IMAGENET_R_WNIDS,  # noqa: E402
                                      imagenet_1k_wnids, indices_in_1k)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))
TINY_ARGS = ["--depths", "1", "1", "1", "1", "--dims", "8", "16", "32", "64"]
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# AlexNet's ImageNet-C errors (ImageNet-C release), written out here independently of robustness.py.
ALEXNET = {"gaussian_noise": 0.886428, "fog": 0.819324}
# Which rank of the (restricted) logits each image's folder gets: 0 -> top-1 hit, 1..4 -> top-5 only, 9 -> miss.
RANKS = (0, 3, 9, 0, 1, 9, 0, 9)


def _logits(model, images):
    x = np.stack([(im.astype(np.float32) / 255.0 - MEAN) / STD for im in images]).transpose(0, 3, 1, 2)
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x))).double()


def _file_images(root, images, labels):
    """Save each image as root/<ImageNet wnid of its 1k label>/<i>.png."""
    wnids = imagenet_1k_wnids()
    for i, (im, label) in enumerate(zip(images, labels)):
        folder = os.path.join(root, wnids[label])
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(im).save(os.path.join(folder, f"{i}.png"))


def _labels_at_ranks(logits, ranks, choices=None):
    """For image i, the class at rank ranks[i] of its logits (restricted to `choices` if given)."""
    scores = logits if choices is None else logits[:, list(choices)]
    order = scores.argsort(dim=1, descending=True)
    picked = order[torch.arange(len(ranks)), torch.tensor(ranks)]
    return [int(choices[p]) if choices is not None else int(p) for p in picked]


def _accuracy(logits, labels, choices=None):
    """(top-1 %, top-5 %) with predictions restricted to `choices` (1k class indices) if given."""
    idx = torch.arange(logits.shape[1]) if choices is None else torch.tensor(list(choices))
    top = idx[logits[:, idx].topk(5, dim=1).indices]
    target = torch.tensor(labels)[:, None]
    return 100.0 * top[:, :1].eq(target).any(1).double().mean().item(), \
        100.0 * top.eq(target).any(1).double().mean().item()


@pytest.fixture(scope="module")
def benchmark_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmarks")
    torch.manual_seed(0)
    model = create_model("robust_resnet_dw_small", backend="torch", **TINY).eval()
    checkpoint = str(root / "model.pth")
    save_checkpoint(model, checkpoint, epoch=3)
    rng = np.random.default_rng(0)
    expected = {}

    def images(n):
        return [rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8) for _ in range(n)]

    plain = images(len(RANKS))
    logits = _logits(model, plain)
    labels = _labels_at_ranks(logits, RANKS)
    _file_images(str(root / "imagenet"), plain, labels)
    expected["imagenet"] = _accuracy(logits, labels)

    for name, wnids in (("imagenet_r", IMAGENET_R_WNIDS), ("imagenet_a", IMAGENET_A_WNIDS)):
        subset = indices_in_1k(wnids)
        ims = images(len(RANKS))
        logits = _logits(model, ims)
        labels = _labels_at_ranks(logits, RANKS, choices=subset)
        _file_images(str(root / name), ims, labels)
        expected[name] = _accuracy(logits, labels, choices=subset)
        # Scoring all 1000 classes would give other numbers: the test sees whether the subset is used.
        assert _accuracy(logits, labels) != expected[name]

    folder_errors = {}
    for c, corruption in enumerate(ALEXNET):
        for severity in (1, 2, 5):
            ims = images(4)
            logits = _logits(model, ims)
            hits = (c + severity) % 5  # 0..4 of the 4 images classified correctly
            labels = _labels_at_ranks(logits, [0] * hits + [9] * (4 - hits))
            _file_images(str(root / "imagenet_c" / corruption / str(severity)), ims, labels)
            folder_errors[corruption, severity] = 1.0 - _accuracy(logits, labels)[0] / 100.0
    expected["imagenet_c_mean_error"] = 100.0 * np.mean(list(folder_errors.values()))
    expected["imagenet_c_mce"] = 100.0 * np.mean([
        np.mean([e for (c, _), e in folder_errors.items() if c == corruption]) / ALEXNET[corruption]
        for corruption in ALEXNET])
    expected["imagenet_c_folders"] = folder_errors
    return root, checkpoint, expected


def _cli(root, checkpoint, backend):
    return ["--model", "robust_resnet_dw_small", *TINY_ARGS, "--checkpoint", checkpoint, "--backend", backend,
            "--img-size", "32", "--crop-pct", "1.0", "--batch-size", "3", "--workers", "0", "--no-progress",
            "--imagenet", str(root / "imagenet"), "--imagenet-r", str(root / "imagenet_r"),
            "--imagenet-a", str(root / "imagenet_a"), "--imagenet-c", str(root / "imagenet_c"),
            "--imagenet-sketch", str(root / "imagenet")]


def _check(results, expected):
    for name in ("imagenet", "imagenet_r", "imagenet_a"):
        top1, top5 = expected[name]
        assert results[name]["count"] == len(RANKS)
        assert results[name]["top1"] == pytest.approx(top1, abs=1e-9), name
        assert results[name]["top5"] == pytest.approx(top5, abs=1e-9), name
    assert results["imagenet_sketch"]["top1"] == pytest.approx(expected["imagenet"][0], abs=1e-9)
    c = results["imagenet_c"]
    assert c["complete"] is False
    assert c["mean_error"] == pytest.approx(expected["imagenet_c_mean_error"], abs=1e-9)
    assert c["mce"] == pytest.approx(expected["imagenet_c_mce"], abs=1e-9)
    for (corruption, severity), error in expected["imagenet_c_folders"].items():
        assert c["corruptions"][corruption]["errors"][str(severity)] == pytest.approx(100.0 * error, abs=1e-9)


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_validate_matches_independent_accuracies(benchmark_tree, tmp_path, backend):
    root, checkpoint, expected = benchmark_tree
    out = tmp_path / "results.json"
    results = validate.main(_cli(root, checkpoint, backend) + ["--json", str(out)])
    _check(results, expected)
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))


def test_validate_two_processes(benchmark_tree, tmp_path):
    """Each process scores a shard; the summed counts give the single-process numbers."""
    root, checkpoint, expected = benchmark_tree
    out = tmp_path / "results.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "robust_models.validate", *_cli(root, checkpoint, "auto"), "--json", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check(json.loads(out.read_text()), expected)


def test_imagenet_c_rejects_unknown_folders(tmp_path):
    (tmp_path / "gaussian_noise" / "1").mkdir(parents=True)
    (tmp_path / "blurry").mkdir()
    with pytest.raises(ValueError, match="blurry"):
        validate.imagenet_c_folders(str(tmp_path))
    (tmp_path / "blurry").rmdir()
    (tmp_path / "gaussian_noise" / "6").mkdir()
    with pytest.raises(ValueError, match="severity"):
        validate.imagenet_c_folders(str(tmp_path))


def test_benchmark_class_subsets_match_released_indices():
    """ImageNet-A's released `indices_in_1k` begins 6, 11, 13, 15, 17; ImageNet-R's mask keeps 1, 2, 4, 6, 8."""
    assert indices_in_1k(IMAGENET_A_WNIDS)[:5] == (6, 11, 13, 15, 17)
    assert indices_in_1k(IMAGENET_R_WNIDS)[:5] == (1, 2, 4, 6, 8)
    for wnids in (IMAGENET_R_WNIDS, IMAGENET_A_WNIDS):
        assert len(set(wnids)) == 200 and list(wnids) == sorted(wnids)


def test_imagenet_classes_need_a_1000_class_model(benchmark_tree):
    root, _, _ = benchmark_tree
    with pytest.raises(ValueError, match="1000-class"):
        validate.main(["--model", "robust_resnet_dw_small", *TINY_ARGS, "--num-classes", "10", "--backend", "torch",
                       "--img-size", "32", "--workers", "0", "--no-progress", "--imagenet-r", str(root / "imagenet_r")])


def test_imagenet_r_folder_outside_its_classes_is_rejected(tmp_path):
    # n01440764 (tench) is an ImageNet class but not one of ImageNet-R's 200.
    assert "n01440764" not in IMAGENET_R_WNIDS
    (tmp_path / "n01440764").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "n01440764" / "0.png")
    with pytest.raises(ValueError, match="n01440764"):
        validate.main(["--model", "robust_resnet_dw_small", *TINY_ARGS, "--backend", "torch", "--img-size", "32",
                       "--workers", "0", "--no-progress", "--imagenet-r", str(tmp_path)])
