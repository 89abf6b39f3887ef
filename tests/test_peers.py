"""benchmarks/peers.py and benchmarks/fma_probe.py: shape parsing, missing runtimes reported (never raised),
a smoke run with its JSON and README section, each installed runtime against float64, and the FMA probe
giving a rate. No speed is asserted."""
import json
import sys

import pytest
import torch

from benchmarks import fma_probe, make_tables, peer_runtimes, peers, shapes


def test_parse_shapes_sets_specs_and_repeats():
    default, dropped = peers.parse_shapes("peers")
    assert [(s.n, s.c, s.h, s.w, s.k) for s in default] == [
        (32, 384, 14, 14, 11), (32, 768, 7, 7, 11), (32, 1536, 14, 14, 7), (16, 96, 56, 56, 7), (8, 384, 32, 32, 11)]
    assert dropped == []
    same, _ = peers.parse_shapes("peers, 8x384x32x32K11,target")  # repeats run once, first name kept
    assert same == default
    (custom,), _ = peers.parse_shapes("4x16x9x12k5")
    assert (custom.n, custom.c, custom.h, custom.w, custom.k, custom.padding) == (4, 16, 9, 12, 5, 2)
    kept, dropped = peers.parse_shapes("robust_resnet")
    assert all(s.stride == 1 and s.multiplier == 1 for s in kept)
    assert {(s.stride, s.multiplier) for s in dropped} == {(2, 1), (1, 2), (2, 2)}
    assert len(kept) + len(dropped) == len(shapes.ROBUST_RESNET)
    for bad in ("", "nope", "8x384x32k11", "0x1x2x2k3"):
        with pytest.raises(ValueError, match="--shapes"):
            peers.parse_shapes(bad)


def test_missing_and_broken_runtimes_are_reported(monkeypatch):
    real_import = peer_runtimes.importlib.import_module

    def fake_import(name):
        if name == "openvino":
            raise OSError("libopenvino.so: cannot open shared object file")
        return real_import(name)

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    monkeypatch.setattr(peer_runtimes.importlib, "import_module", fake_import)
    status = peer_runtimes.runtime_status()
    missing = status["onnxruntime"]["missing"]
    assert missing.startswith("not installed") and "pip install" in missing
    assert status["openvino"]["missing"] == "fails to load: OSError: libopenvino.so: cannot open shared object file"
    with pytest.raises(peer_runtimes.RuntimeUnavailable, match="not installed"):
        peer_runtimes.build_runtime("onnxruntime", "unused.onnx", 1)


@pytest.fixture
def no_runtimes(monkeypatch):
    for name in peer_runtimes.RUNTIMES:
        monkeypatch.setitem(sys.modules, name, None)


def test_smoke_run_without_runtimes(no_runtimes, tmp_path):
    path = tmp_path / "p.json"
    peers.main(["--smoke", "--no-progress", "--notes", "smoke", "--json", str(path)])
    result = json.loads(path.read_text())
    assert result["meta"]["script"] == "peers" and result["complete"] and result["meta"]["notes"] == "smoke"
    records = {r["provider"]: r for r in result["results"]}
    assert list(records) == list(peers.PROVIDERS)
    for name in peers.DWCONV_PROVIDERS + peers.TORCH_PROVIDERS:
        r = records[name]
        assert r["rel_err"] <= peers.FP32_TOLERANCE and r["ms"] > 0 and r["gflops"] > 0 and r["sgemm_fraction"] > 0
    for name in peer_runtimes.RUNTIMES:
        assert records[name]["missing"].startswith("not installed") and "ms" not in records[name]
    machine = result["machine"]
    assert machine["sgemm_gflops"] > 0
    if machine["fma_peak_gflops"] is not None:
        assert records["dwconv-nchw"]["fma_peak_fraction"] == pytest.approx(
            records["dwconv-nchw"]["gflops"] / machine["fma_peak_gflops"])
    (row,) = result["summary"]["per_shape"]
    assert row["best_peer"] in peers.TORCH_PROVIDERS and row["dwconv_best"] in peers.DWCONV_PROVIDERS
    assert row["speedup_vs_best_peer"] == pytest.approx(row["best_peer_ms"] / row["dwconv_ms"])
    text = make_tables.render(make_tables.load_results([path]))
    assert "#### Depthwise-conv inference against other libraries" in text
    assert "| onnxruntime ms | openvino ms |" in text and "| missing | missing |" in text
    assert "onnxruntime: missing (not installed" in text


def test_installed_runtimes_match_float64(tmp_path):
    """Each runtime that is installed runs the exported conv within fp32 tolerance of float64."""
    installed = [n for n, s in peer_runtimes.runtime_status().items() if "missing" not in s]
    if not installed:
        pytest.skip("no peer runtime installed (pip install -e .[peers])")
    shape = shapes.DWShape("test", 2, 6, 9, 11, 5)
    sets, weight, bias = peers.make_inputs(shape, 1)
    with torch.inference_mode():
        calls, missing, _ = peers.build_calls(shape, installed, weight, bias, sets[0].nchw, tmp_path, 1)
        errors, failures = peers.check_against_float64(calls, sets[0], weight, bias, shape.padding)
    assert missing == {} and failures == {}
    assert set(installed) <= set(errors) and max(errors.values()) <= peers.FP32_TOLERANCE


def test_fma_probe_gives_a_rate_or_a_reason():
    available = fma_probe.available_isas()
    assert set(available) == set(fma_probe.ISAS)
    runnable = [isa for isa, reason in available.items() if reason is None]
    if not runnable:
        pytest.skip(f"FMA probe unavailable here: {available}")
    for isa in runnable:
        assert fma_probe.fma_peak(isa, 1, iters=20_000, reps=1) > 0
    threads = fma_probe.all_threads()
    assert fma_probe.fma_peak(runnable[0], threads, iters=20_000, reps=2) > 0
    assert fma_probe.fma_peak(runnable[0], threads + 1, clock="wall", iters=20_000, reps=1) > 0
    with pytest.raises(ValueError, match="a core per thread"):
        fma_probe.fma_peak(runnable[0], threads + 1, iters=1000)
    with pytest.raises(ValueError, match="unknown instruction set"):
        fma_probe.fma_peak("sse9", 1)
    info = fma_probe.describe([1], iters=1000, reps=1)
    for entry in info["isas"].values():
        assert ("gflops" in entry) != ("skipped" in entry)
        if "gflops" in entry:
            assert entry["gflops"]["1"]["median"] > 0 and entry["wall_gflops"]["1"]["median"] > 0


def test_fma_probe_without_a_compiler(monkeypatch):
    monkeypatch.setattr(fma_probe, "_library", None)
    monkeypatch.setattr(fma_probe, "_library_error", None)
    monkeypatch.setenv("CC", "no-such-compiler-dwconv")
    reasons = fma_probe.available_isas()
    assert all("gcc is missing" in r or "not an x86-64" in r for r in reasons.values())
    with pytest.raises(fma_probe.FMAProbeUnavailable):
        fma_probe.fma_peak("avx2", 1)
    text = fma_probe.format_description(fma_probe.describe([1]))
    assert "skipped:" in text


def test_check_reports_wrong_and_failing_providers():
    shape = shapes.DWShape("test", 2, 4, 8, 8, 3)
    sets, weight, bias = peers.make_inputs(shape, 1)
    good = lambda s: torch.nn.functional.conv2d(s.nchw, weight, bias, 1, 1, 1, 4)  # noqa: E731

    def broken(s):
        raise RuntimeError("no kernel for this shape\ndetails")

    calls = {"good": good, "off_by_bias": lambda s: good(s) - bias.view(1, -1, 1, 1), "broken": broken,
             "cropped": lambda s: good(s)[..., 1:]}
    errors, failures = peers.check_against_float64(calls, sets[0], weight, bias, 1)
    assert errors["good"] <= peers.FP32_TOLERANCE and set(failures) == {"off_by_bias", "broken", "cropped"}
    assert failures["broken"] == "failed: RuntimeError: no kernel for this shape"
    assert failures["off_by_bias"].startswith("relative error") and "output shape" in failures["cropped"]
