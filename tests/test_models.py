"""robust_models: official state-dict parity, sizes, block order, backends, timm, checkpoints, compile."""
from __future__ import annotations

import functools
import json
import pathlib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import dwconv
import robust_models
from robust_models import create_model, list_models
from robust_models.robust_resnet import RobustResNet
from utils import assert_close, poisoned_outputs

# Every state-dict key and shape of the four models in the official (timm-based) code.
_FIXTURE = pathlib.Path(__file__).resolve().parent / "fixtures" / "robust_resnet_official_state_dict.json"
MODELS = [
    "robust_resnet_dw_small",
    "robust_resnet_inverted_dw_small",
    "robust_resnet_up_inverted_dw_small",
    "robust_resnet_down_inverted_dw_small",
]
# From the official code / the paper (fvcore GFLOPs = multiply-adds at 224x224).
OFFICIAL_PARAMS = dict(zip(MODELS, (38_558_440, 33_618_088, 34_432_552, 34_316_776)))
OFFICIAL_GFLOPS = dict(zip(MODELS, (4.49, 4.59, 4.43, 4.55)))
BLOCK_TYPE = dict(zip(MODELS, "abcd"))
# A small configuration (any block type) for tests that do not need the released sizes.
TINY = dict(depths=(1, 1, 2, 1), dims=(8, 16, 32, 64), num_classes=7)


@pytest.fixture(scope="module")
def official():
    """Keys and shapes of the official models' state dicts."""
    return json.loads(_FIXTURE.read_text())


@functools.lru_cache(maxsize=None)
def _released(name: str) -> RobustResNet:
    """One shared instance per released model, for tests that only inspect it."""
    return create_model(name, backend="torch")


def _randomize_bn(model: nn.Module, generator: torch.Generator) -> None:
    """Non-trivial BN statistics and affine parameters, so eval-mode BN is not close to identity."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(c, generator=generator) * 0.1)


def _random_official_state_dict(shapes, generator):
    return {k: (torch.randint(0, 100, (), generator=generator) if not shape and k.endswith("num_batches_tracked")
                else torch.randn(shape, generator=generator)) for k, shape in shapes.items()}


# ----------------------------------------------------------------------------------------------------
# Released architectures: names, shapes, sizes, FLOPs.

def test_list_models():
    assert list_models() == sorted(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_matches_official(name, official):
    state_dict = _released(name).state_dict()
    expected = official[name]
    assert list(state_dict) == list(expected), "keys (and their order) differ from the official model"
    for key, shape in expected.items():
        assert list(state_dict[key].shape) == shape, key


@pytest.mark.parametrize("name", MODELS)
def test_parameter_count(name):
    assert sum(p.numel() for p in _released(name).parameters()) == OFFICIAL_PARAMS[name]


@pytest.mark.parametrize("name", MODELS)
def test_fvcore_gflops(name):
    fvcore_nn = pytest.importorskip("fvcore.nn")
    model = _released(name).eval()
    counter = fvcore_nn.FlopCountAnalysis(model, torch.randn(1, 3, 224, 224))
    counter.unsupported_ops_warnings(False)
    counter.uncalled_modules_warnings(False)
    conv = model.stages[0].blocks[0].conv_dw
    expected_dw = conv.out_channels * 14 * 14 * conv.kernel_size[0] * conv.kernel_size[1]
    assert counter.by_module()["stages.0.blocks.0.conv_dw"] == expected_dw, "depthwise conv miscounted"
    gflops = counter.total() / 1e9
    assert abs(gflops - OFFICIAL_GFLOPS[name]) <= 0.015 * OFFICIAL_GFLOPS[name], gflops


@pytest.mark.parametrize("name", MODELS)
def test_depthwise_convs_are_fastdwconv(name):
    model = _released(name)
    dw = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert dw and all(isinstance(m, dwconv.FastDWConv) and m.backend == "torch" for m in dw)
    assert len(dw) == sum(len(stage.blocks) for stage in model.stages)
    strided = [(s, b) for s, stage in enumerate(model.stages) for b, block in enumerate(stage.blocks)
               if block.conv_dw.stride != (1, 1)]
    depth2 = len(model.stages[2].blocks)
    assert strided == ([(2, depth2 - 1)] if BLOCK_TYPE[name] == "d" else [(3, 0)])
    assert [m.kernel_size[0] for m in dw] == [7 if BLOCK_TYPE[name] == "b" else 11] * len(dw)


def test_up_inverted_has_channel_multiplier_2():
    model = _released("robust_resnet_up_inverted_dw_small")
    for s, (cin, stride) in enumerate([(96, 1), (192, 1), (384, 2)], start=1):
        conv = model.stages[s].blocks[0].conv_dw
        assert (conv.in_channels, conv.out_channels, conv.groups, conv.stride) == (cin, 2 * cin, cin, (stride,) * 2)
        assert conv.weight.shape == (2 * cin, 1, 11, 11)


def test_official_train_state_loads_strict(official, tmp_path):
    """A checkpoint with the official names and shapes (weights under "model") loads with strict=True.
    (The other three models follow from test_state_dict_matches_official.)"""
    name = "robust_resnet_up_inverted_dw_small"
    g = torch.Generator().manual_seed(1)
    state_dict = _random_official_state_dict(official[name], g)
    path = tmp_path / "official.pth.tar"
    torch.save({"epoch": 299, "arch": name, "model": state_dict, "optimizer": {"lr": 1e-3}}, path)
    model = create_model(name, pretrained=str(path))
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state_dict.items())


# ----------------------------------------------------------------------------------------------------
# Order of operations: the model against a float64 re-implementation of the design note's formulas.

def _bn(sd, p, x):
    return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                        False, 0.0, 1e-5)


def _conv(sd, p, x, stride=1, groups=1):
    w = sd[p + ".weight"]
    return F.conv2d(x, w, sd[p + ".bias"], stride, w.shape[-1] // 2, 1, groups)


def _reference_block(sd, p, x, block_type, stride):
    short = x
    if p + ".downsample.0.weight" in sd:
        short = _bn(sd, p + ".downsample.1", _conv(sd, p + ".downsample.0", x, stride))
    if block_type == "a":
        y = _bn(sd, p + ".norm1", _conv(sd, p + ".pwconv1", x))
        y = _conv(sd, p + ".conv_dw", y, stride, groups=y.shape[1])
        return F.relu(_conv(sd, p + ".pwconv2", y) + short)
    if block_type == "b":
        y = F.relu(_bn(sd, p + ".norm1", _conv(sd, p + ".pwconv1", x)))
        y = _conv(sd, p + ".conv_dw", y, stride, groups=y.shape[1])
        return _conv(sd, p + ".pwconv2", y) + short
    if block_type == "c":
        y = _bn(sd, p + ".norm1", _conv(sd, p + ".conv_dw", x, stride, groups=x.shape[1]))
        y = F.relu(_conv(sd, p + ".pwconv1", y))
        return _conv(sd, p + ".pwconv2", y) + short
    y = F.relu(_bn(sd, p + ".norm2", _conv(sd, p + ".pwconv1", x)))
    y = _conv(sd, p + ".pwconv2", y)
    return _conv(sd, p + ".conv_dw", y, stride, groups=y.shape[1]) + short


# The ResNet-like comparison layout: BN after each conv, ReLU after the first two and after the add.
_FULL_CONV_ORDER = {"a": ("pwconv1", "conv_dw", "pwconv2"), "b": ("pwconv1", "conv_dw", "pwconv2"),
                    "c": ("conv_dw", "pwconv1", "pwconv2"), "d": ("pwconv1", "pwconv2", "conv_dw")}
_FULL_NORMS = {"a": ("norm1", "norm2", "norm3"), "b": ("norm1", "norm2", "norm3"),
               "c": ("norm1", "norm2", "norm3"), "d": ("norm2", "norm3", "norm4")}


def _reference_full_block(sd, p, x, block_type, stride):
    short = x
    if p + ".downsample.0.weight" in sd:
        short = _bn(sd, p + ".downsample.1", _conv(sd, p + ".downsample.0", x, stride))
    y = x
    for i, (conv, norm) in enumerate(zip(_FULL_CONV_ORDER[block_type], _FULL_NORMS[block_type])):
        y = _conv(sd, f"{p}.{conv}", y, stride, groups=y.shape[1]) if conv == "conv_dw" else _conv(sd, f"{p}.{conv}", y)
        y = _bn(sd, f"{p}.{norm}", y)
        y = F.relu(y) if i < 2 else y
    return F.relu(y + short)


def _reference_forward(sd, depths, block_type, x, norm_act="reduced"):
    """Patch 16: stride 2 at stage 3's first block, or at stage 2's last block for type d."""
    strided = (2, depths[2] - 1) if block_type == "d" else (3, 0)
    block = _reference_block if norm_act == "reduced" else _reference_full_block
    x = F.conv2d(x, sd["stem.weight"], sd["stem.bias"], sd["stem.weight"].shape[-1])
    for s, depth in enumerate(depths):
        for b in range(depth):
            x = block(sd, f"stages.{s}.blocks.{b}", x, block_type, 2 if (s, b) == strided else 1)
    return F.linear(x.mean(dim=(2, 3)), sd["head.fc.weight"], sd["head.fc.bias"])


@pytest.mark.parametrize("norm_act", ["reduced", "full"])
@pytest.mark.parametrize("name", MODELS)
def test_forward_matches_design_note(name, norm_act):
    """Released kernels, small widths, two blocks in the last stages (stride-2 and multiplier-2 blocks
    included), eval mode with random BN statistics, 64x64 input."""
    g = torch.Generator().manual_seed(2)
    depths = (1, 1, 2, 2)
    model = create_model(name, **dict(TINY, depths=depths), norm_act=norm_act, backend="torch").eval()
    _randomize_bn(model, g)
    x = torch.randn(2, 3, 64, 64, generator=g)
    sd64 = {k: v.double() for k, v in model.state_dict().items()}
    expected = _reference_forward(sd64, depths, BLOCK_TYPE[name], x.double(), norm_act)
    with torch.no_grad():
        actual = model(x)
    assert_close(actual, expected, torch.float32, name, factor=10)


# ----------------------------------------------------------------------------------------------------
# Training on the CPU, backends, torch.compile.

@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_small(name):
    g = torch.Generator().manual_seed(3)
    """Released widths, fewer blocks: every kind of block (projection, stride 2, multiplier 2) still occurs."""
    model = create_model(name, depths=(1, 1, 2, 2), num_classes=10, drop_path_rate=0.1, backend="torch").train()
    x = torch.randn(2, 3, 64, 64, generator=g, requires_grad=True)
    logits = model(x)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    logits.logsumexp(dim=1).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def _backend_cases():
    cases = [pytest.param("cpu", "cpu", id="cpu-cpu")]
    # Triton's interpreter is slow: one block type (c: multiplier 2 and stride 2) on a small model.
    cases.append(pytest.param("triton", "cpu", id="triton-cpu-interpreter"))
    cases += [pytest.param(b, "cuda", id=f"{b}-cuda", marks=pytest.mark.gpu) for b in ("cuda", "triton")]
    return cases


@pytest.mark.parametrize("block_type", "abcd")
@pytest.mark.parametrize("backend,device", _backend_cases())
def test_backends_agree_with_torch(backend, device, block_type):
    if (backend, device) == ("triton", "cpu") and block_type != "c":
        pytest.skip("Triton's interpreter is slow: covered by block type c")
    reason = dwconv.available_backends(device)[backend]
    if reason is not None:
        pytest.skip(reason)
    g = torch.Generator().manual_seed(4)
    cfg = dict(TINY, depths=(1, 1, 1, 1), block_type=block_type)
    if device == "cpu" and backend == "triton":
        cfg.update(dims=(4, 8, 16, 32), kernel_size=5)  # the interpreter is slow
    reference = create_model("robust_resnet_dw_small", backend="torch", **cfg).to(device).eval()
    _randomize_bn(reference, g)
    model = create_model("robust_resnet_dw_small", backend=backend, **cfg).to(device).eval()
    model.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 64, 64, generator=g).to(device)
    outputs = []
    for m in (reference, model):
        xi = x.clone().requires_grad_(True)
        with poisoned_outputs():
            y = m(xi)
            y.square().sum().backward()
        outputs.append((y, xi.grad, {n: p.grad for n, p in m.named_parameters()}))
    (y_ref, dx_ref, grads_ref), (y, dx, grads) = outputs
    assert_close(y, y_ref, torch.float32, "logits", factor=10)
    assert_close(dx, dx_ref, torch.float32, "input grad", factor=10)
    for n, g_ref in grads_ref.items():
        assert_close(grads[n], g_ref, torch.float32, n, factor=10)


@pytest.mark.parametrize("block_type", "abcd")
def test_channels_last_matches_nchw(block_type):
    g = torch.Generator().manual_seed(9)
    model = create_model("robust_resnet_dw_small", block_type=block_type, **dict(TINY, depths=(1, 1, 1, 1))).eval()
    _randomize_bn(model, g)
    x = torch.randn(2, 3, 64, 64, generator=g)
    with torch.no_grad(), poisoned_outputs():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        actual = model(x.contiguous(memory_format=torch.channels_last))
    assert_close(actual, expected, torch.float32, "channels_last logits", factor=10)


@pytest.mark.parametrize("block_type", ["a", "c"])
def test_torch_compile(block_type):
    """fullgraph compile traces the dwconv ops (fake kernels, autograd); aot_eager keeps CPU CI fast.
    Block a has a stride-2 depthwise conv, block c also multiplier-2 ones."""
    g = torch.Generator().manual_seed(5)
    model = create_model("robust_resnet_dw_small", block_type=block_type, backend="torch",
                         **dict(TINY, depths=(1, 1, 1, 1))).eval()
    _randomize_bn(model, g)
    x = torch.randn(2, 3, 64, 64, generator=g)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    xc, xe = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    yc, ye = compiled(xc), model(xe)
    assert_close(yc, ye, torch.float32, "compiled logits")
    yc.square().sum().backward()
    ye.square().sum().backward()
    assert_close(xc.grad, xe.grad, torch.float32, "compiled input grad")


# ----------------------------------------------------------------------------------------------------
# Model API.

def test_head_api_and_reset_classifier():
    g = torch.Generator().manual_seed(6)
    model = create_model("robust_resnet_dw_small", **TINY).eval()
    x = torch.randn(2, 3, 64, 64, generator=g)
    features = model.forward_features(x)
    assert features.shape == (2, 4 * 64, 2, 2)
    pre = model.forward_head(features, pre_logits=True)
    assert pre.shape == (2, 256)
    assert_close(model.forward_head(features), model.get_classifier()(pre), torch.float32, "head")
    assert_close(model(x), model.get_classifier()(pre), torch.float32, "forward")
    model.reset_classifier(3)
    assert isinstance(model.get_classifier(), nn.Linear) and model(x).shape == (2, 3)
    model.reset_classifier(0)
    assert model(x).shape == (2, 256) and model.num_classes == 0
    model.reset_classifier(0, global_pool="")
    assert torch.equal(model(x), features)
    with pytest.raises(ValueError, match="num_classes=0"):
        model.reset_classifier(5, global_pool="")


def test_grad_checkpointing_same_result():
    g = torch.Generator().manual_seed(7)
    model = create_model("robust_resnet_up_inverted_dw_small", **TINY).eval()
    _randomize_bn(model, g)
    x = torch.randn(2, 3, 64, 64, generator=g)
    results = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        y = model(x)
        y.square().sum().backward()
        results.append((y.detach(), model.stem.weight.grad.clone()))
    assert_close(results[1][0], results[0][0], torch.float32, "checkpointed output")
    assert_close(results[1][1], results[0][1], torch.float32, "checkpointed stem grad")


@pytest.mark.parametrize("name", MODELS)
def test_feature_info_matches_stage_outputs(name):
    model = create_model(name, **TINY).eval()
    x = torch.randn(1, 3, 128, 128)
    x = model.stem(x)
    for info, stage in zip(model.feature_info, model.stages):
        x = stage(x)
        assert (x.shape[1], 128 // x.shape[2]) == (info["num_chs"], info["reduction"]), info


def test_pretrained_cfg():
    cfg = create_model("robust_resnet_dw_small", **TINY).pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["interpolation"] == "bicubic" and cfg["crop_pct"] == 0.875
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
    model = create_model("robust_resnet_dw_small", **TINY)
    assert model.get_submodule(cfg["first_conv"]) is model.stem  # names modules that exist
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()


# ----------------------------------------------------------------------------------------------------
# Ablation knobs.

@pytest.mark.parametrize("block_type", "abcd")
@pytest.mark.parametrize("patch_size,resolutions", [(4, (16, 8, 4, 2)), (8, (8, 8, 4, 2)), (16, (4, 4, 4, 2))])
def test_patch_size_keeps_output_stride_32(patch_size, resolutions, block_type):
    model = create_model("robust_resnet_dw_small", patch_size=patch_size, block_type=block_type, **TINY).eval()
    assert model.stem.kernel_size == model.stem.stride == (patch_size, patch_size)
    x = model.stem(torch.randn(1, 3, 64, 64))
    sizes = []
    for stage in model.stages:
        x = stage(x)
        sizes.append(x.shape[-1])
    if block_type == "d":  # the stride moves to the last block of the stage before
        resolutions = resolutions[1:] + resolutions[-1:]
    assert tuple(sizes) == resolutions
    assert [64 // r for r in sizes] == [i["reduction"] for i in model.feature_info]


@pytest.mark.parametrize("kernel_size", [3, 5, 7, 9, 11, 13])
def test_kernel_size(kernel_size):
    model = create_model("robust_resnet_inverted_dw_small", kernel_size=kernel_size, **TINY)
    dw = [m for m in model.modules() if isinstance(m, dwconv.FastDWConv)]
    assert {m.kernel_size for m in dw} == {(kernel_size, kernel_size)}
    assert {m.padding for m in dw} == {(kernel_size // 2, kernel_size // 2)}
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 7)


@pytest.mark.parametrize("block_type", "abcd")
def test_norm_act_layouts(block_type):
    counts = {}
    for layout in ("reduced", "full"):
        model = create_model("robust_resnet_dw_small", block_type=block_type, norm_act=layout, **TINY)
        block = model.stages[1].blocks[0]
        bns = [n for n, m in block.named_modules() if isinstance(m, nn.BatchNorm2d) and not n.startswith("downsample")]
        relus = [m for m in block.modules() if isinstance(m, nn.ReLU)]
        counts[layout] = (len(bns), len(relus))
        y = model(torch.randn(2, 3, 64, 64))
        assert y.shape == (2, 7) and torch.isfinite(y).all()
    assert counts == {"reduced": (1, 1), "full": (3, 3)}


def test_layer_scale_and_drop_path():
    model = create_model("robust_resnet_down_inverted_dw_small", layer_scale_init_value=1e-6, drop_path_rate=0.3,
                         **TINY)
    gammas = {n: p for n, p in model.named_parameters() if n.endswith("gamma")}
    assert len(gammas) == 5 and all(torch.all(p == 1e-6) for p in gammas.values())
    assert model.stages[3].blocks[0].gamma.shape == (64,)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for s in model.stages for b in s.blocks]
    assert rates == pytest.approx([0.3 * i / 4 for i in range(5)])
    bottleneck = create_model("robust_resnet_dw_small", layer_scale_init_value=0.5, **TINY)
    assert bottleneck.stages[0].blocks[0].gamma.shape == (32,)  # block (a) outputs 4 * dim
    x = torch.randn(4, 3, 64, 64)
    model.eval()
    assert torch.equal(model(x), model(x))  # no drop path in eval


@pytest.mark.parametrize("kwargs,error", [
    (dict(block_type="e"), "block_type"),
    (dict(norm_act="none"), "norm_act"),
    (dict(kernel_size=4), "kernel_size"),
    (dict(kernel_size=0), "kernel_size"),
    (dict(patch_size=3), "patch_size"),
    (dict(patch_size=2), "downsampling stages"),
    (dict(depths=(1, 1, 1)), "same length"),
    (dict(dims=(8, 16, 0, 64)), "dims"),
    (dict(block_type="c", dims=(8, 12, 32, 64)), "multiple"),
    (dict(global_pool="max"), "global_pool"),
    (dict(drop_path_rate=1.0), "drop_path_rate"),
    (dict(mlp_ratio=0.0), "mlp_ratio"),
    (dict(num_classes=-1), "num_classes"),
])
def test_bad_arguments_raise(kwargs, error):
    with pytest.raises(ValueError, match=error):
        create_model("robust_resnet_dw_small", **{**TINY, **kwargs})


def test_bad_names_raise():
    with pytest.raises(ValueError, match="unknown model"):
        create_model("resnet50")
    with pytest.raises(TypeError, match="unknown arguments"):
        create_model("robust_resnet_dw_small", kernel=7)
    with pytest.raises(ValueError, match="unknown dwconv backend"):
        create_model("robust_resnet_dw_small", backend="cudnn", **TINY)
    with pytest.raises(TypeError, match="local checkpoint"):
        create_model("robust_resnet_dw_small", pretrained=True, **TINY)
    assert isinstance(create_model("robust_resnet_dw_small", pretrained=False, **TINY), RobustResNet)


# ----------------------------------------------------------------------------------------------------
# Checkpoints.

def _tiny_with_random_state(seed=8):
    model = create_model("robust_resnet_up_inverted_dw_small", **TINY)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g))
    return model


def _assert_same_state(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_checkpoint_round_trip_official_format(tmp_path):
    model = _tiny_with_random_state()
    path = tmp_path / "ckpt.pth"
    robust_models.save_checkpoint(model, path, epoch=7)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"model", "epoch"} and raw["epoch"] == 7
    fresh = create_model("robust_resnet_up_inverted_dw_small", **TINY)
    result = robust_models.load_checkpoint(fresh, path)
    assert result.missing_keys == () and result.unexpected_keys == ()
    _assert_same_state(fresh, model)
    with pytest.raises(ValueError, match="reserved"):
        robust_models.save_checkpoint(model, path, model=1)


@pytest.mark.parametrize("layout", ["state_dict", "model_ema", "bare", "ddp", "compiled"])
def test_checkpoint_accepted_layouts(layout, tmp_path):
    model = _tiny_with_random_state()
    sd = model.state_dict()
    obj = {
        "state_dict": {"state_dict": sd, "epoch": 1},
        "model_ema": {"model_ema": sd},
        "bare": sd,
        "ddp": {"model": {"module." + k: v for k, v in sd.items()}},
        "compiled": {"model": {"_orig_mod." + k: v for k, v in sd.items()}},
    }[layout]
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    fresh = create_model("robust_resnet_up_inverted_dw_small", **TINY)
    robust_models.load_checkpoint(fresh, path)
    _assert_same_state(fresh, model)
    via_create = create_model("robust_resnet_up_inverted_dw_small", pretrained=str(path), **TINY)
    _assert_same_state(via_create, model)


def test_checkpoint_save_unwraps_compiled(tmp_path):
    model = _tiny_with_random_state()
    path = tmp_path / "ckpt.pth"
    robust_models.save_checkpoint(torch.compile(model), path)
    assert list(torch.load(path, weights_only=True)["model"]) == list(model.state_dict())


def test_checkpoint_mismatch_lists_keys(tmp_path):
    sd = _tiny_with_random_state().state_dict()
    sd.pop("stages.1.blocks.0.norm1.running_var")
    sd["stages.9.extra.weight"] = torch.ones(3)
    path = tmp_path / "bad.pth"
    torch.save({"model": sd}, path)
    fresh = create_model("robust_resnet_up_inverted_dw_small", **TINY)
    with pytest.raises(robust_models.CheckpointMismatchError) as info:
        robust_models.load_checkpoint(fresh, path)
    message = str(info.value)
    assert "missing keys (1): stages.1.blocks.0.norm1.running_var" in message
    assert "unexpected keys (1): stages.9.extra.weight" in message
    result = robust_models.load_checkpoint(fresh, path, strict=False)
    assert result.missing_keys == ("stages.1.blocks.0.norm1.running_var",)
    assert result.unexpected_keys == ("stages.9.extra.weight",)
    other = create_model("robust_resnet_up_inverted_dw_small", **dict(TINY, dims=(8, 16, 32, 128)))
    with pytest.raises(robust_models.CheckpointMismatchError, match="shape mismatches"):
        robust_models.load_checkpoint(other, path, strict=False)


def test_checkpoint_without_weights_raises(tmp_path):
    path = tmp_path / "opt_only.pth"
    torch.save({"optimizer": {"lr": torch.tensor(1.0)}, "epoch": 3}, path)
    with pytest.raises(ValueError, match="model"):
        robust_models.load_checkpoint(create_model("robust_resnet_dw_small", **TINY), path)
    with pytest.raises(FileNotFoundError):
        robust_models.load_checkpoint(create_model("robust_resnet_dw_small", **TINY), tmp_path / "missing.pth")


def test_pretrained_with_new_num_classes_skips_head(tmp_path):
    model = _tiny_with_random_state()
    path = tmp_path / "ckpt.pth"
    robust_models.save_checkpoint(model, path)
    new = create_model("robust_resnet_up_inverted_dw_small", pretrained=str(path), **dict(TINY, num_classes=3))
    assert new.get_classifier().weight.shape == (3, 64)
    for k, v in model.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(new.state_dict()[k], v), k


# ----------------------------------------------------------------------------------------------------
# timm.

@pytest.mark.parametrize("name", MODELS)
def test_timm_registry(name):
    timm = pytest.importorskip("timm")
    assert name in timm.list_models("robust_resnet_*")
    model = timm.create_model(name, num_classes=5, drop_path_rate=0.1, depths=(1, 1, 1, 1))
    assert isinstance(model, RobustResNet) and model.num_classes == 5
    data_cfg = timm.data.resolve_data_config({}, model=model)
    assert data_cfg["input_size"] == (3, 224, 224) and data_cfg["interpolation"] == "bicubic"
    assert data_cfg["crop_pct"] == 0.875


def test_timm_pretrained_file_and_features(tmp_path):
    timm = pytest.importorskip("timm")
    model = _tiny_with_random_state()
    path = tmp_path / "ckpt.pth"
    robust_models.save_checkpoint(model, path)
    loaded = timm.create_model("robust_resnet_up_inverted_dw_small", pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(path)), **TINY)
    _assert_same_state(loaded, model)
    via_timm_loader = timm.create_model("robust_resnet_up_inverted_dw_small", checkpoint_path=str(path), **TINY)
    _assert_same_state(via_timm_loader, model)
    with pytest.raises(ValueError, match="no download location"):
        timm.create_model("robust_resnet_up_inverted_dw_small", pretrained=True, **TINY)
    features = timm.create_model("robust_resnet_down_inverted_dw_small", features_only=True, **TINY)
    outs = features(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == features.feature_info.channels() == [8, 16, 32, 64]
    assert [64 // o.shape[-1] for o in outs] == features.feature_info.reduction() == [16, 16, 32, 32]
