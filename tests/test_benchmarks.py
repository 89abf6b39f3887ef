"""Smoke runs of the benchmark scripts (tiny shapes, one repetition) and the fields of their JSON; the
results-table generator; the timing utility; the shape sets against the models. No speed is asserted."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensorMode

import dwconv
import robust_models
from benchmarks import make_tables, shapes, tables, throughput
from benchmarks.model_variants import PLAIN, build_variants, to_plain_conv2d
from benchmarks.timing import Stats, interleaved, summarize

REPO = Path(__file__).resolve().parent.parent
META_FIELDS = {"script", "command", "git_commit", "git_dirty", "date_utc", "torch", "triton", "cuda", "device_type",
               "device_name", "torch_num_threads", "load_average", "notes"}


@pytest.fixture(scope="module")
def kernels_result(tmp_path_factory):
    """The script run as users run it (a subprocess from the repository root)."""
    path = tmp_path_factory.mktemp("kernels") / "k.json"
    out = subprocess.run([sys.executable, "benchmarks/kernels.py", "--smoke", "--device", "cpu", "--backend", "cpu",
                          "--no-progress", "--notes", "smoke", "--json", str(path)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "| shape | torch-nchw ms | torch-nhwc ms | cpu-nchw ms | cpu-nhwc ms |" in out.stdout
    assert "fwd+bwd, fp32: achieved GFLOP/s / GB/s" in out.stdout
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def throughput_result(tmp_path_factory):
    """In-process (main(argv)): the script's start-up is the same as kernels.py's."""
    path = tmp_path_factory.mktemp("throughput") / "t.json"
    throughput.main(["--smoke", "--device", "cpu", "--backend", "cpu,auto", "--no-progress", "--json", str(path)])
    with open(path) as f:
        return json.load(f)


def test_kernels_json_fields(kernels_result):
    meta = kernels_result["meta"]
    assert META_FIELDS <= set(meta)
    assert meta["script"] == "kernels" and meta["device_type"] == "cpu" and meta["notes"] == "smoke"
    assert meta["command"].startswith("python benchmarks/kernels.py --smoke")
    assert meta["torch"] == torch.__version__
    assert kernels_result["machine"]["sgemm_gflops"] > 0
    records = kernels_result["results"]
    providers = {r["provider"] for r in records}
    assert providers == {"torch-nchw", "torch-nhwc", "cpu-nchw", "cpu-nhwc"}
    ops = {r["op"] for r in records}
    assert ops == {"fwd", "dgrad", "wgrad", "fwd+bwd"}
    n_shapes = len(shapes.SHAPE_SETS["smoke"])
    assert len(records) == n_shapes * len(ops) * len(providers)
    for r in records:
        assert "skipped" not in r, r
        for field in ("ms", "p20_ms", "p80_ms", "speedup_vs_best_torch", "speedup_vs_torch_same_layout", "tflops",
                      "gbs", "roofline_fraction"):
            assert r[field] > 0, (field, r)
        assert {"n", "c", "h", "w", "k", "stride", "multiplier", "name"} <= set(r["shape"])
    summary = kernels_result["summary"]
    assert {(s["provider"], s["op"]) for s in summary} == {(p, o) for p in ("cpu-nchw", "cpu-nhwc") for o in ops}
    for s in summary:
        assert s["shapes"] == n_shapes and s["geomean_speedup_vs_best_torch"] > 0


def test_kernels_speedups_are_consistent(kernels_result):
    """speed-up over the faster layout = that layout's time / the provider's time."""
    records = kernels_result["results"]
    for r in records:
        same = [t for t in records if t["provider"].startswith("torch-") and t["op"] == r["op"]
                and t["shape"]["name"] == r["shape"]["name"]]
        best = min(t["ms"] for t in same)
        assert r["speedup_vs_best_torch"] == pytest.approx(best / r["ms"])


def test_throughput_json_fields(throughput_result):
    meta = throughput_result["meta"]
    assert META_FIELDS <= set(meta) and meta["script"] == "throughput"
    assert meta["command"].startswith("python benchmarks/throughput.py --smoke")
    (model,) = throughput_result["models"]
    assert model["name"] == "robust_resnet_dw_small" and model["params"] > 0 and model["gflops"] > 0
    records = throughput_result["results"]
    assert {r["variant"] for r in records} == {PLAIN, "dwconv-cpu", "dwconv-auto", "dwconv-auto benchmark"}
    assert {r["mode"] for r in records} == {"inference", "train"}
    for r in records:
        assert r["images_per_s"] > 0 and r["ms_per_step"] > 0 and r["speedup_vs_conv2d"] > 0
        assert {"dtype", "channels_last", "batch_size", "compile", "image_size", "world_size"} <= set(r)
        if r["variant"] == PLAIN:
            assert r["speedup_vs_conv2d"] == 1.0


def test_make_tables_runs_from_the_command_line(kernels_result, tmp_path):
    (tmp_path / "k.json").write_text(json.dumps(kernels_result))
    out = subprocess.run([sys.executable, "benchmarks/make_tables.py", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "#### Depthwise-conv kernels" in out.stdout


def test_make_tables_renders_and_updates(kernels_result, throughput_result, tmp_path):
    for name, result in (("k.json", kernels_result), ("t.json", throughput_result)):
        (tmp_path / name).write_text(json.dumps(result))
    text = make_tables.main([str(tmp_path)])
    assert "#### Model throughput" in text and "#### Depthwise-conv kernels" in text
    assert text.index("Model throughput") < text.index("Depthwise-conv kernels")
    assert "| robust_resnet_dw_small | fp32 NCHW batch 1 | train |" in text
    assert "| fp32 | cpu-nhwc |" in text
    assert throughput_result["meta"]["command"] in text
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n{make_tables.BEGIN_MARKER}\nold table\n{make_tables.END_MARKER}\n\nrest\n")
    make_tables.main([str(tmp_path / "k.json"), "--update", str(readme)])
    updated = readme.read_text()
    assert "old table" not in updated and "#### Depthwise-conv kernels" in updated
    assert updated.startswith("# Title\n\n") and updated.endswith(f"{make_tables.END_MARKER}\n\nrest\n")
    make_tables.main([str(tmp_path / "k.json"), "--update", str(readme)])
    assert readme.read_text() == updated  # idempotent
    (tmp_path / "k.png").write_bytes(b"")
    assert "k.png)" in make_tables.main([str(tmp_path / "k.json")])


def test_make_tables_needs_markers(tmp_path):
    with pytest.raises(ValueError, match="markers"):
        make_tables.replace_between_markers("no markers here", "table")


def test_committed_results_render():
    """Every committed result file is well-formed for the README generator."""
    results = make_tables.load_results([REPO / "benchmarks" / "results"])
    for result in results:
        assert META_FIELDS <= set(result["meta"])
    make_tables.render(results)


def test_sass_page_is_what_the_committed_report_renders(tmp_path):
    """docs/sass.md's tables are make_tables.py's rendering of benchmarks/results/sass-sm90.json; --update-sass
    writes exactly that between the page's sass markers."""
    report = make_tables.load_sass()
    assert META_FIELDS <= set(report["meta"]) and report["meta"]["target"] == "sm_90"
    assert report["rows"] and all(set(row) == set(tables.SASS_FIELDS) for row in report["rows"])
    page = (REPO / "docs" / "sass.md").read_text()
    rendered = make_tables.replace_between_markers(page, make_tables.render_sass(report),
                                                   make_tables.SASS_BEGIN_MARKER, make_tables.SASS_END_MARKER)
    assert page == rendered, "docs/sass.md is stale: run python benchmarks/make_tables.py --update-sass docs/sass.md"
    copy = tmp_path / "sass.md"
    copy.write_text(f"# Title\n\n{make_tables.SASS_BEGIN_MARKER}\nold\n{make_tables.SASS_END_MARKER}\n")
    make_tables.main(["--update-sass", str(copy)])
    assert copy.read_text() == (f"# Title\n\n{make_tables.SASS_BEGIN_MARKER}\n{make_tables.render_sass(report)}\n"
                                f"{make_tables.SASS_END_MARKER}\n")


def test_summarize_percentiles():
    stats = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert stats == Stats(median=3.0, p20=1.8, p80=4.2, samples=5, values=(5.0, 1.0, 3.0, 2.0, 4.0))


def test_interleaved_rotates_order_and_drops_warmup():
    calls = []

    def fake_timer(fn, inner=1):
        fn()
        return float(len(calls))

    cases = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    stats = interleaved(cases, fake_timer, warmup=1, reps=3)
    assert calls == list("abc" "bca" "cab" "abc")
    assert {name: s.samples for name, s in stats.items()} == {"a": 3, "b": 3, "c": 3}
    assert stats["a"].median == 8.0  # a's samples: 6, 8, 10


def test_to_plain_conv2d_shares_parameters():
    model = robust_models.create_model("robust_resnet_up_inverted_dw_small", depths=(1, 1, 1, 1), dims=(8, 16, 32, 64),
                                       num_classes=10)
    fast = [m for m in model.modules() if isinstance(m, dwconv.FastDWConv)]
    weights = [m.weight for m in fast]
    to_plain_conv2d(model)
    plain = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert not any(isinstance(m, dwconv.FastDWConv) for m in model.modules())
    assert all(type(m) is nn.Conv2d for m in plain) and len(plain) == len(fast)
    assert all(m.weight is w for m, w in zip(plain, weights))


def test_variants_compute_the_same_function():
    variants = build_variants("robust_resnet_dw_small", ["cpu"], depths=(1, 1, 1, 1), dims=(8, 16, 32, 64),
                              num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    outs = {name: m.eval()(x) for name, m in variants.items()}
    torch.testing.assert_close(outs["dwconv-cpu"], outs[PLAIN], rtol=1e-4, atol=1e-4)


def test_robust_resnet_shape_set_covers_every_model_layer():
    """The hard-coded layer list equals the distinct depthwise layers of the four models at 224x224 (small
    depths suffice: each stage's first block and one other block give every distinct shape)."""
    found = set()

    def record(module, inputs, output):
        _, c, h, w = inputs[0].shape
        found.add((c, h, module.kernel_size[0], module.stride[0], module.out_channels // c))

    for name in robust_models.list_models():
        model = robust_models.create_model(name, depths=(2, 2, 2, 2))
        for m in model.modules():
            if isinstance(m, dwconv.FastDWConv):
                m.register_forward_hook(record)
        with FakeTensorMode(allow_non_fake_inputs=True):  # shapes only, no arithmetic
            model(torch.empty(1, 3, 224, 224))
    assert found == set(shapes.ROBUST_RESNET_LAYERS)


@pytest.mark.parametrize("k, dtype_bytes, expected_us", [(7, 4, 240), (11, 4, 364), (7, 2, 147), (11, 2, 364)])
def test_roofline_bounds_match_the_design_notes(k, dtype_bytes, expected_us):
    """One forward layer 64x384x64x64 on an H100 SXM (3.35 TB/s, 67 TFLOP/s FFMA): docs/benchmarking.md."""
    from benchmarks import roofline
    shape = shapes.DWShape("doc", 64, 384, 64, 64, k)
    bound = roofline.lower_bound_seconds("fwd", shape, dtype_bytes, bandwidth_gbs=3350, fma_tflops=67)
    assert bound * 1e6 == pytest.approx(expected_us, rel=0.02)


def test_make_tables_renders_gpu_results(kernels_result):
    gpu = json.loads(json.dumps(kernels_result))
    gpu["meta"].update(device_type="cuda", device_name="NVIDIA H100 80GB HBM3", cuda="13.0")
    gpu["machine"] = {"bandwidth_gbs": 3000.0, "fma_tflops": 60.0}
    text = make_tables.render(make_tables.load_results_from([gpu, kernels_result]))
    assert text.index("kernels, NVIDIA H100") < text.index(f"kernels, {kernels_result['meta']['device_name']}")
    assert "DRAM copy 3000 GB/s, fp32 FMA 60.0 TFLOP/s" in text and "fraction of roofline" in text


def test_cpu_target_report(kernels_result, capsys):
    from benchmarks import kernels
    kernels.print_cpu_target(kernels_result)
    out = capsys.readouterr().out
    assert "cpu-nchw: fwd+bwd geometric-mean speed-up" in out and "cpu-nhwc: fwd+bwd" in out


_FFMA_SHARE_SCRIPT = """
import collections, re, subprocess, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from benchmarks import _fma_kernel
signature = {"out_ptr": "*fp32", "a": "fp32", "b": "fp32", "ITERS": "constexpr", "BLOCK": "constexpr"}
source = ASTSource(fn=_fma_kernel._fma_chains_kernel, signature=signature, constexprs={"ITERS": 512, "BLOCK": 1024})
cubin = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8}).asm["cubin"]
with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
    f.write(cubin)
    f.flush()
    sass = subprocess.run([triton.knobs.nvidia.cuobjdump.path, "-sass", f.name], capture_output=True, text=True).stdout
ops = collections.Counter(re.findall(r"^\\s+/\\*[0-9a-f]{4,}\\*/\\s+(?:@!?U?P[T0-9]+\\s+)?([A-Z][A-Z0-9_]*)", sass, re.M))
print(ops["FFMA"] / sum(ops.values()))
"""


def test_fma_kernel_is_ffma_bound():
    """The kernel that measures the GPU's FMA rate compiles (for sm_90, no GPU needed) to mostly FFMA."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile real GPU code
    out = subprocess.run([sys.executable, "-c", _FFMA_SHARE_SCRIPT], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    if out.returncode != 0:
        pytest.skip(f"cannot compile for sm_90 here: {out.stderr.strip().splitlines()[-1:]}")
    assert float(out.stdout) > 0.7


def test_triton_rows_smoke(tmp_path):
    """benchmarks/triton_rows.py checks both Triton kernel families against float64 and writes its JSON."""
    from conftest import require_backend
    require_backend("triton", "cuda" if torch.cuda.is_available() else "cpu")
    from benchmarks import triton_rows
    out = tmp_path / "rows.json"
    triton_rows.main(["--smoke", "--reps", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    assert {r["op"] for r in result["rows"]} == {"fwd", "dgrad", "wgrad"}
    for row in result["rows"]:
        assert row["direct_rel_err"] < 1e-5
        if "rows_unavailable" in row:  # the row kernels' dgrad takes stride 1 only
            assert row["op"] == "dgrad" and row["stride"] != 1, row
        else:
            assert row["rows_rel_err"] < 1e-5


def test_kernels_layouts_restrict_dwconv_providers_only(tmp_path):
    """--layouts nhwc: the dwconv backend runs channels_last only; PyTorch keeps both layouts (the baseline)."""
    path = tmp_path / "k.json"
    from benchmarks import kernels
    kernels.main(["--smoke", "--device", "cpu", "--backend", "cpu", "--layouts", "nhwc", "--ops", "fwd",
                  "--no-progress", "--json", str(path)])
    with open(path) as f:
        result = json.load(f)
    assert {r["provider"] for r in result["results"]} == {"torch-nchw", "torch-nhwc", "cpu-nhwc"}
    assert result["settings"]["layouts"] == ["nhwc"]


def test_kernels_resume_measures_only_the_missing_shapes(tmp_path):
    """--resume continues a run cut short: the shapes it finished are kept (with its metadata), the rest are
    measured; each shape's seconds per phase are recorded; other settings are refused."""
    from benchmarks import kernels
    path = tmp_path / "k.json"
    argv = ["--smoke", "--device", "cpu", "--backend", "cpu", "--ops", "fwd", "--no-progress", "--json", str(path)]
    full = kernels.main(argv)
    names = [s["shape"] for s in full["seconds"]["shapes"]]
    assert len(names) >= 2 and {"reference", "check", "timing"} <= set(full["seconds"]["shapes"][0])
    cut = json.loads(json.dumps(full))  # as a time limit leaves it: the first shape only
    cut["results"] = [r for r in cut["results"] if r["shape"]["name"] == names[0]]
    cut["complete"], cut["meta"]["date_utc"] = False, "2000-01-01T00:00:00Z"
    path.write_text(json.dumps(cut))
    resumed = kernels.main(argv + ["--resume"])
    assert resumed["complete"] and [s["shape"] for s in resumed["seconds"]["shapes"]] == names[1:]
    assert [r for r in resumed["results"] if r["shape"]["name"] == names[0]] == cut["results"]
    assert {r["shape"]["name"] for r in resumed["results"]} == set(names)
    assert resumed["meta"]["resumed_from"][0]["date_utc"] == "2000-01-01T00:00:00Z"
    with pytest.raises(SystemExit, match="other settings"):
        kernels.main(argv[:-2] + ["--ops", "fwd,dgrad", "--json", str(path), "--resume"])


def test_git_dirty_means_code_not_results(tmp_path, monkeypatch):
    """A result file written under benchmarks/results/ (a run's own partial write, or an earlier script's)
    does not mark a run as modified; a change to the code does."""
    from benchmarks import run_info
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=tmp_path,
                                    check=True, capture_output=True)
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "dwconv").mkdir()
    result, code = tmp_path / "benchmarks" / "results" / "r.json", tmp_path / "dwconv" / "op.py"
    result.write_text("{}\n")
    code.write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "init")
    monkeypatch.setattr(run_info, "REPO_ROOT", tmp_path)
    assert run_info.run_metadata("kernels", [], torch.device("cpu"))["git_dirty"] is False
    result.write_text('{"partial": true}\n')
    assert run_info.run_metadata("kernels", [], torch.device("cpu"))["git_dirty"] is False
    code.write_text("x = 2\n")
    assert run_info.run_metadata("kernels", [], torch.device("cpu"))["git_dirty"] is True


def test_goals_shape_set_is_the_issue_shapes():
    """Batch 128 Robust-ResNet layers, batch 64 ConvNeXt 56x56 K7 and RepLKNet-like 32x32 K11 on a GPU; each
    Robust-ResNet goal shape is a layer of the models."""
    goals = shapes.shape_set("goals", "cuda")
    layers = {(s.c, s.h, s.k, s.stride, s.multiplier) for s in shapes.ROBUST_RESNET}
    for s in goals:
        if s.family == "robust_resnet":
            assert s.n == 128 and (s.c, s.h, s.k, s.stride, s.multiplier) in layers
        else:
            assert s.n == 64
    assert {(s.family, s.h, s.k) for s in goals if s.family != "robust_resnet"} == {("convnext", 56, 7),
                                                                                    ("replknet", 32, 11)}


def test_triton_tiles_smoke(tmp_path):
    """The tile sweep replays every autotune candidate the launcher records; each one's result matches the
    first candidate's (here in the interpreter: checks only, no timing)."""
    from benchmarks import triton_tiles
    path = tmp_path / "tiles.json"
    result = triton_tiles.main(["--smoke", "--cases", "fp32-nchw", "--ops", "fwd,wgrad", "--json", str(path)])
    records = result["results"]
    assert {r["kernel"] for r in records} == {"rows_kernel", "rows_wgrad_kernel"}
    assert max(r["candidate"] for r in records) >= 1  # several tiles were replayed
    for r in records:
        assert r["finite"] and r["rel_err_vs_first"] <= 1e-6 and r["rel_err_vs_float64"] <= 1e-5, r
        if r["op"] == "wgrad":
            assert r["op_atomic_rel_err_vs_float64"] <= 1e-5 and r["op_deterministic_rel_err_vs_float64"] <= 1e-5
    with open(path) as f:
        written = json.load(f)
    assert written["meta"]["script"] == "triton_tiles" and written["complete"]


def test_kernels_skips_a_plan_whose_op_is_wrong(tmp_path, monkeypatch):
    """Every op of every plan is checked against float64 before it is timed: a dgrad off by 1 % is recorded
    as skipped for dgrad (so the dispatch table never picks it), the plan's other ops are timed."""
    from benchmarks import conv_ops, kernels
    calls = conv_ops._dwconv_calls

    def wrong_dgrad(shape, backend, example):
        fwd, dgrad, wgrad = calls(shape, backend, example)
        return fwd, (lambda o: dgrad(o) * 1.01), wgrad
    monkeypatch.setattr(conv_ops, "_dwconv_calls", wrong_dgrad)
    path = tmp_path / "k.json"
    kernels.main(["--smoke", "--device", "cpu", "--backend", "torch:aten", "--layouts", "nchw", "--ops",
                  "fwd,dgrad,wgrad", "--no-progress", "--json", str(path)])
    records = [r for r in json.loads(path.read_text())["results"] if r["backend"] == "torch:aten"]
    assert records and all(("skipped" in r) == (r["op"] == "dgrad") for r in records), records
    assert all("dgrad relative error" in r["skipped"] for r in records if r["op"] == "dgrad")
