"""fold_batchnorm: exact folds of conv -> BatchNorm pairs, and the pairs it must leave alone."""
import copy
import itertools

import pytest
import torch
import torch.nn as nn

import dwconv
import robust_models
from dwconv import FastDWConv, fold_batchnorm
from dwconv.fold import find_batchnorm_folds
from utils import assert_close


def randomize_batchnorms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Running statistics and affine parameters far from the identity (fresh BNs would fold to nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                if m.running_mean is not None:
                    m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                    m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2.5 + 0.2)
                if m.weight is not None:
                    m.weight.copy_(torch.randn(m.num_features, generator=g))
                    m.bias.copy_(torch.randn(m.num_features, generator=g))
    return model


def count(model: nn.Module, kind) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def check_output_unchanged(folded: nn.Module, reference: nn.Module, x: torch.Tensor, what: str):
    """folded (fp32) against the unfolded model run in float64."""
    ref = copy.deepcopy(reference).double()
    with torch.no_grad():
        assert_close(folded(x), ref(x.double()), torch.float32, what)


class ConvThenBN(nn.Module):
    """The pair inside a module's forward (found in the FX graph)."""

    def __init__(self, conv: nn.Module, bn: nn.Module):
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


def depthwise(kind: str, channels: int, multiplier: int, bias: bool, padding_mode: str = "zeros") -> nn.Module:
    cls = FastDWConv if kind == "FastDWConv" else nn.Conv2d
    return cls(channels, channels * multiplier, (5, 3), stride=(1, 2), padding=(2, 1), groups=channels,
               bias=bias, padding_mode=padding_mode)


@pytest.mark.parametrize("kind,multiplier,bias,channels_last",
                         list(itertools.product(["FastDWConv", "nn.Conv2d"], [1, 3], [True, False], [False, True])))
def test_depthwise_fold_is_exact(kind, multiplier, bias, channels_last):
    torch.manual_seed(0)
    model = ConvThenBN(depthwise(kind, 6, multiplier, bias), nn.BatchNorm2d(6 * multiplier, eps=1e-3))
    model = randomize_batchnorms(model).eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    reference = copy.deepcopy(model)
    weight = model.conv.weight
    assert fold_batchnorm(model) is model
    assert isinstance(model.bn, nn.Identity) and model.conv.bias is not None
    assert model.conv.weight is weight and weight.is_contiguous(memory_format=fmt)
    x = torch.randn(3, 6, 11, 10).contiguous(memory_format=fmt)
    check_output_unchanged(model, reference, x, f"{kind} x{multiplier} bias={bias} {fmt}")


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
def test_fold_in_sequential_any_padding_mode(padding_mode):
    torch.manual_seed(1)
    model = randomize_batchnorms(nn.Sequential(depthwise("FastDWConv", 4, 2, True, padding_mode),
                                               nn.BatchNorm2d(8), nn.ReLU())).eval()
    reference = copy.deepcopy(model)
    fold_batchnorm(model)
    assert isinstance(model[1], nn.Identity)
    check_output_unchanged(model, reference, torch.randn(2, 4, 9, 12), padding_mode)


def test_plain_and_grouped_convs_fold_too():
    torch.manual_seed(2)
    model = randomize_batchnorms(nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8),
                                               nn.Conv2d(8, 8, 1, groups=2, bias=False), nn.BatchNorm2d(8))).eval()
    reference = copy.deepcopy(model)
    fold_batchnorm(model)
    assert count(model, nn.BatchNorm2d) == 0
    check_output_unchanged(model, reference, torch.randn(2, 4, 7, 7), "dense and grouped convs")


def test_batchnorm_without_affine_folds_and_without_running_stats_stays():
    torch.manual_seed(3)
    model = nn.Sequential(depthwise("FastDWConv", 4, 1, True), nn.BatchNorm2d(4, affine=False),
                          depthwise("FastDWConv", 4, 1, False), nn.BatchNorm2d(4, track_running_stats=False))
    model = randomize_batchnorms(model).eval()
    reference = copy.deepcopy(model)
    with pytest.warns(UserWarning, match=r"3 has no running statistics"):
        fold_batchnorm(model)
    assert isinstance(model[1], nn.Identity) and isinstance(model[3], nn.BatchNorm2d)
    assert model[2].bias is None
    check_output_unchanged(model, reference, torch.randn(5, 4, 9, 9), "affine=False / no running stats")


class SharedOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = depthwise("FastDWConv", 4, 1, True), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class ConvCalledTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = depthwise("FastDWConv", 4, 1, True), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x)) + self.conv(x)


class WeightReadElsewhere(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = depthwise("FastDWConv", 4, 1, True), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x)) * self.conv.weight.sum()


class TiedWeights(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = depthwise("FastDWConv", 4, 1, True), nn.BatchNorm2d(4)
        self.other = depthwise("nn.Conv2d", 4, 1, True)
        self.other.weight = self.conv.weight

    def forward(self, x):
        return self.bn(self.conv(x)) + self.other(x)


class Untraceable(nn.Module):
    """Data-dependent control flow (FX cannot trace it) around a conv whose output is used twice and a
    plain nn.Sequential pair."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = depthwise("FastDWConv", 4, 1, True), nn.BatchNorm2d(4)
        self.seq = nn.Sequential(depthwise("nn.Conv2d", 4, 1, False), nn.BatchNorm2d(4))

    def forward(self, x):
        if x.sum() > 0:
            x = -x
        y = self.conv(x)
        return self.seq(self.bn(y) + y)


class UntraceableAlias(nn.Module):
    """A plain nn.Sequential pair whose conv is also called, under another name, by untraceable code."""

    def __init__(self):
        super().__init__()
        self.seq = nn.Sequential(depthwise("FastDWConv", 4, 1, True), nn.BatchNorm2d(4))
        self.alias = self.seq[0]

    def forward(self, x):
        if x.sum() > 0:
            x = -x
        return self.seq(x) + self.alias(x)


@torch.fx.wrap
def conv_again(conv, x):
    """Opaque to FX: a call_function node that receives the conv module."""
    return conv(x)


class ConvPassedToFunction(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = depthwise("FastDWConv", 4, 1, True), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x)) + conv_again(self.conv, x)


def hooked():
    model = ConvThenBN(depthwise("FastDWConv", 4, 1, True), nn.BatchNorm2d(4))
    model.conv.register_forward_hook(lambda m, i, o: None)
    return model


@pytest.mark.parametrize("build", [SharedOutput, ConvCalledTwice, WeightReadElsewhere, ConvPassedToFunction,
                                   TiedWeights, UntraceableAlias, hooked,
                                   lambda: nn.Sequential(nn.BatchNorm2d(4), depthwise("FastDWConv", 4, 1, True))],
                         ids=["shared-output", "conv-called-twice", "weight-read-elsewhere", "conv-passed-to-function",
                              "tied-weights", "sequential-conv-aliased", "hooked-conv", "bn-before-conv"])
def test_pairs_that_must_not_fold(build):
    torch.manual_seed(4)
    model = randomize_batchnorms(build()).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert find_batchnorm_folds(model) == []
    fold_batchnorm(model)
    assert count(model, nn.BatchNorm2d) == 1
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())


def test_untraceable_model_folds_only_sequential_pairs():
    torch.manual_seed(5)
    model = randomize_batchnorms(Untraceable()).eval()
    reference = copy.deepcopy(model)
    assert find_batchnorm_folds(model) == [("seq.0", "seq.1")]
    fold_batchnorm(model)
    assert isinstance(model.bn, nn.BatchNorm2d) and isinstance(model.seq[1], nn.Identity)
    check_output_unchanged(model, reference, torch.randn(2, 4, 8, 8), "untraceable model")


def test_training_mode_is_refused_or_skipped():
    model = randomize_batchnorms(nn.Sequential(depthwise("FastDWConv", 4, 1, True), nn.BatchNorm2d(4)))
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        fold_batchnorm(model)
    assert fold_batchnorm(model, on_training="skip") is model and isinstance(model[1], nn.BatchNorm2d)
    with pytest.raises(ValueError, match="on_training"):
        fold_batchnorm(model.eval(), on_training="ignore")


def test_batchnorm_in_training_mode_inside_eval_model():
    model = randomize_batchnorms(nn.Sequential(depthwise("FastDWConv", 4, 1, True), nn.BatchNorm2d(4),
                                               depthwise("FastDWConv", 4, 1, True), nn.BatchNorm2d(4))).eval()
    model[3].train()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"^fold_batchnorm: 3 in training mode"):
        fold_batchnorm(model)
    assert count(model, nn.BatchNorm2d) == 2 and torch.equal(model[0].weight, before["0.weight"])
    fold_batchnorm(model, on_training="skip")
    assert isinstance(model[1], nn.Identity) and isinstance(model[3], nn.BatchNorm2d)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_idempotent_and_keeps_dtype_parameters_and_state_dict(dtype):
    torch.manual_seed(6)
    model = randomize_batchnorms(ConvThenBN(depthwise("FastDWConv", 4, 2, False), nn.BatchNorm2d(8))).eval()
    model = model.to(dtype)
    fold_batchnorm(model)
    conv = model.conv
    assert conv.weight.dtype == conv.bias.dtype == dtype and conv.bias.device == conv.weight.device
    assert conv.bias.requires_grad and sorted(model.state_dict()) == ["conv.bias", "conv.weight"]
    state = copy.deepcopy(model.state_dict())
    weight, bias = conv.weight, conv.bias
    fold_batchnorm(model)
    assert conv.weight is weight and conv.bias is bias
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    other = fold_batchnorm(ConvThenBN(depthwise("FastDWConv", 4, 2, False), nn.BatchNorm2d(8)).eval().to(dtype))
    other.load_state_dict(state, strict=True)


@pytest.mark.parametrize("name", robust_models.list_models())
@pytest.mark.parametrize("norm_act", ["reduced", "full"])
def test_robust_resnet_every_batchnorm_folds(name, norm_act):
    torch.manual_seed(7)
    model = robust_models.create_model(name, depths=(1, 2, 1, 1), dims=(8, 16, 32, 64), norm_act=norm_act,
                                       num_classes=10)
    model = randomize_batchnorms(model).eval()
    reference = copy.deepcopy(model)
    depthwise_pairs = [(c, b) for c, b in find_batchnorm_folds(model)
                       if isinstance(model.get_submodule(c), FastDWConv)]
    bns = count(model, nn.BatchNorm2d)
    assert len(find_batchnorm_folds(model)) == bns
    fold_batchnorm(model)
    assert count(model, nn.BatchNorm2d) == 0
    if name == "robust_resnet_up_inverted_dw_small":  # conv_dw -> norm1, multiplier 2 at stage starts
        assert ("stages.1.blocks.0.conv_dw", "stages.1.blocks.0.norm1") in depthwise_pairs
        assert model.stages[1].blocks[0].conv_dw.weight.shape[0] == 2 * model.stages[1].blocks[0].conv_dw.in_channels
    expected_dw = count(reference, FastDWConv) if norm_act == "full" or name.startswith("robust_resnet_up") else 0
    assert len(depthwise_pairs) == expected_dw
    check_output_unchanged(model, reference, torch.randn(2, 3, 64, 64), f"{name} {norm_act}")


def test_exported_at_top_level():
    assert dwconv.fold_batchnorm is fold_batchnorm and "fold_batchnorm" in dwconv.__all__


def test_throughput_benchmark_times_folded_inference(tmp_path):
    from benchmarks import make_tables, tables, throughput

    path = tmp_path / "t.json"
    result = throughput.main(["--smoke", "--device", "cpu", "--backend", "cpu", "--fold-bn", "--no-progress",
                              "--json", str(path)])
    assert result["settings"]["fold_bn"] is True
    timed = {(r["mode"], r["variant"]) for r in result["results"]}
    assert timed == {("inference", "nn.Conv2d"), ("inference", "dwconv-cpu"), ("inference", "nn.Conv2d folded"),
                     ("inference", "dwconv-cpu folded"), ("train", "nn.Conv2d"), ("train", "dwconv-cpu")}
    for r in result["results"]:
        assert ("speedup_vs_unfolded" in r) == r["variant"].endswith(" folded")
    header = "| model | configuration | mode | nn.Conv2d img/s | dwconv-cpu img/s | nn.Conv2d folded img/s | " \
             "dwconv-cpu folded img/s |"
    assert header in tables.throughput_table(result) and header in make_tables.main([str(path)])
