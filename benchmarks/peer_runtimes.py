"""The inference runtimes peers.py times beside dwconv and PyTorch: ONNX Runtime and OpenVINO, each running
one depthwise conv exported from an nn.Conv2d to ONNX.

Both are optional (`pip install -e .[peers]`): `runtime_status()` says which ones import here and why the
others do not, and a runtime that is missing or fails to load is reported, never raised past the caller.
"""
from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

__all__ = ["RUNTIMES", "RuntimeUnavailable", "first_line", "runtime_status", "export_conv_onnx", "build_runtime"]

RUNTIMES = ("onnxruntime", "openvino")
_INSTALL_HINT = "pip install onnx onnxruntime openvino (or pip install -e .[peers])"


class RuntimeUnavailable(RuntimeError):
    """A peer runtime that cannot run here: the reason is the message."""


def first_line(e: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _import(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise RuntimeUnavailable(f"not installed ({e}); {_INSTALL_HINT}") from e
    except Exception as e:  # a broken install (missing shared library, ABI mismatch): report, never crash
        raise RuntimeUnavailable(f"fails to load: {first_line(e)}") from e


def runtime_status() -> Dict[str, Dict[str, Optional[str]]]:
    """Per runtime: {"version": ...} when it imports, else {"missing": why not}."""
    out: Dict[str, Dict[str, Optional[str]]] = {}
    for name in RUNTIMES:
        try:
            module = _import(name)
            version = getattr(module, "__version__", None) or getattr(module, "get_version", lambda: None)()
            out[name] = {"version": str(version)}
        except RuntimeUnavailable as e:
            out[name] = {"missing": str(e)}
    return out


def export_conv_onnx(weight: torch.Tensor, bias: torch.Tensor, padding: int, example: torch.Tensor,
                     path: Path) -> str:
    """Write the depthwise nn.Conv2d with these parameters to `path` as ONNX (static shape of `example`,
    NCHW); returns the exporter used. The TorchScript exporter needs no extra package; the dynamo one
    (onnxscript) is the fallback for a torch without it."""
    c, _, k, _ = weight.shape
    conv = nn.Conv2d(c, c, k, padding=padding, groups=c, bias=True).eval()
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    errors = []
    for exporter, dynamo in (("torchscript", False), ("dynamo", True)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
                torch.onnx.export(conv, (example,), str(path), input_names=["x"], output_names=["y"], dynamo=dynamo)
            return exporter
        except Exception as e:  # noqa: BLE001 - every exporter failure is reported with its reason
            errors.append(f"{exporter}: {first_line(e)}")
    raise RuntimeUnavailable("torch.onnx.export failed (" + "; ".join(errors) + ")")


# ONNX Runtime's workers spin after each run by default, on the cores the next provider in the interleaved
# order then computes on: on the 2-core VM that made the call after ONNX Runtime's (dwconv's) up to 2x slower,
# and ONNX Runtime itself was no faster with spinning (N16 C96 56x56 K7: 8.7-8.9 ms with, 7.4-8.1 without).
ORT_SPINNING = "0"


def _onnxruntime(path: Path, threads: int) -> Tuple[Callable[[np.ndarray], np.ndarray], Dict]:
    ort = _import("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", ORT_SPINNING)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: x})[0]

    return run, {"execution_provider": "CPUExecutionProvider", "intra_op_num_threads": threads,
                 "inter_op_num_threads": 1, "graph_optimization_level": "ORT_ENABLE_ALL",
                 "session.intra_op.allow_spinning": ORT_SPINNING}


def _openvino(path: Path, threads: int) -> Tuple[Callable[[np.ndarray], np.ndarray], Dict]:
    ov = _import("openvino")
    core = ov.Core()
    # f32 explicitly: on CPUs with AVX-512 BF16 or AMX, OpenVINO may otherwise infer in bf16.
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        return request.infer({0: x}, share_inputs=True)[0]

    applied = {}
    for key in ("INFERENCE_NUM_THREADS", "PERFORMANCE_HINT", "INFERENCE_PRECISION_HINT", "NUM_STREAMS"):
        value = compiled.get_property(key)
        applied[key] = value.get_type_name() if isinstance(value, ov.Type) else str(value)  # "f32"
    return run, {"device": "CPU", **applied}


_BUILDERS = {"onnxruntime": _onnxruntime, "openvino": _openvino}


def build_runtime(name: str, onnx_path: Path, threads: int) -> Tuple[Callable[[np.ndarray], np.ndarray], Dict]:
    """(run, settings): run(x) is one inference of the ONNX model on an NCHW float32 array; settings are what
    the runtime was set to. Raises RuntimeUnavailable with the reason when the runtime cannot run it."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown runtime {name!r}; choose from {', '.join(RUNTIMES)}")
    try:
        return _BUILDERS[name](onnx_path, threads)
    except RuntimeUnavailable:
        raise
    except Exception as e:  # noqa: BLE001 - a runtime that rejects the model is reported, not raised
        raise RuntimeUnavailable(f"failed to load the model: {first_line(e)}") from e
