"""Run and time models in the runtime they deploy to: PyTorch eager, onnxruntime, OpenVINO.

A model is exported to ONNX once (``prunelab.exporter.onnx_bytes``, dynamic
batch) and given to onnxruntime or OpenVINO on the CPU with a fixed thread
count and float32 arithmetic, so a speedup is measured where it will be used. onnxruntime and
OpenVINO are the ``deploy`` extra, imported only when asked for.

Timing follows `prunelab.metrics.latency`: all models of one comparison are
called round-robin in one run with the order rotating, and the median is
reported. PyTorch eager runs each model in the memory layout given.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from prunelab.errors import ConfigError
from prunelab.exporter import onnx_bytes
from prunelab.metrics.latency import LatencyStats, time_callables
from prunelab.optional import require

__all__ = ["RUNTIMES", "check_runtime", "compare_in_runtime", "make_runner", "onnx_runner"]

RUNTIMES = ("torch", "onnxruntime", "openvino")

Runner = Callable[[], object]


def check_runtime(runtime: str) -> str:
    """The runtime name, after checking it is known and its package is installed."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}; use one of {list(RUNTIMES)}")
    if runtime != "torch":
        require("onnxscript", f"the {runtime} runtime (ONNX export)")
        require(runtime, f"the {runtime} runtime")
    return runtime


def make_runner(
    model: nn.Module, x: torch.Tensor, runtime: str, threads: int, channels_last: bool = False
) -> Runner:
    """A call that runs `model` on the batch `x` once in `runtime` with `threads` threads."""
    check_runtime(runtime)
    if threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}")
    model = copy.deepcopy(model).cpu().eval()
    if runtime == "torch":
        return _torch_runner(model, x, channels_last)
    return onnx_runner(onnx_bytes(model, _two_of(x)), x, runtime, threads)


def onnx_runner(data: bytes, x: torch.Tensor, runtime: str, threads: int) -> Runner:
    """A call that runs the ONNX model `data` on the batch `x` in onnxruntime or openvino."""
    if runtime == "onnxruntime":
        return _onnxruntime_runner(data, x.numpy(), threads)
    if runtime == "openvino":
        return _openvino_runner(data, x.numpy(), threads)
    raise ConfigError(f"runtime {runtime!r} does not run ONNX files; use onnxruntime or openvino")


def compare_in_runtime(
    models: Mapping[str, nn.Module],
    inputs: Mapping[str, torch.Tensor],
    runtime: str = "torch",
    threads: int = 2,
    repeats: int = 20,
    warmup: int = 3,
    channels_last: Mapping[str, bool] | None = None,
) -> dict[str, LatencyStats]:
    """Latency of several models (each on its own batch) in one runtime; the first is baseline."""
    layouts = channels_last or {}
    runners = {
        name: make_runner(model, inputs[name], runtime, threads, layouts.get(name, False))
        for name, model in models.items()
    }
    return time_callables(runners, repeats, warmup, threads)


def _two_of(x: torch.Tensor) -> torch.Tensor:
    """A batch of two of `x`'s shape: torch.export keeps batch 2 symbolic (0 and 1 it fixes)."""
    return torch.zeros(2, *x.shape[1:])


def _torch_runner(model: nn.Module, x: torch.Tensor, channels_last: bool) -> Runner:
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def run() -> object:
        with torch.inference_mode():
            return model(x)

    return run


def _onnxruntime_runner(data: bytes, x: np.ndarray, threads: int) -> Runner:
    ort = require("onnxruntime", "the onnxruntime runtime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)}
    return lambda: session.run(None, feed)


def _openvino_runner(data: bytes, x: np.ndarray, threads: int) -> Runner:
    ov = require("openvino", "the openvino runtime")
    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:  # OpenVINO reads ONNX from a file
        path = Path(tmp) / "model.onnx"
        path.write_bytes(data)
        network = core.read_model(str(path))
    # f32: on CPUs with bf16 units OpenVINO would otherwise compute in bf16 (1e-3 errors)
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
              "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": "f32"}  # fmt: skip
    compiled = core.compile_model(network, "CPU", config)
    request = compiled.create_infer_request()
    batch = np.ascontiguousarray(x, dtype=np.float32)
    return lambda: request.infer({0: batch})
