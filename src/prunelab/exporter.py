"""Export a (pruned) model to a deployable file, checked against PyTorch after writing.

Two formats:

* ``onnx``: torch's ``torch.export``-based ONNX exporter (the default exporter
  since torch 2.9; the TorchScript-based one is deprecated), needing the
  ``deploy`` extra (onnx, onnxscript, onnxruntime);
* ``torchscript``: ``torch.jit.trace``, no extra needed.

Both files take any batch size (the first axis is dynamic). Before the file
is put in place, it is loaded back and run (ONNX through onnxruntime) on
batches of a size other than the one it was traced with; its outputs must
equal the PyTorch model's within `rtol` of the output's largest magnitude
(a per-element relative test would fail on logits near zero). A mismatch
raises ExportError and an op the exporter cannot express raises
UnsupportedModelError; in both cases nothing is written.
"""

from __future__ import annotations

import copy
import io
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn as nn

from prunelab.atomic import atomic_write_bytes
from prunelab.deploy import fold_batch_norms
from prunelab.errors import ConfigError, ExportError, UnsupportedModelError
from prunelab.optional import require

__all__ = ["FORMATS", "SUFFIXES", "export", "onnx_bytes"]

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
TRACE_BATCH = 2  # batch 0 and 1 are specialised by torch.export; 2 stays symbolic
CHECK_BATCHES = (1, 3)

Runner = Callable[[torch.Tensor], np.ndarray]


def export(
    model: nn.Module,
    path: str | Path,
    format: Literal["onnx", "torchscript"] = "onnx",
    example_input: torch.Tensor | None = None,
    fold_bn: bool = False,
    opset: int | None = None,
    rtol: float = 1e-4,
) -> Path:
    """Write `model` to `path` as ONNX or TorchScript, verified against the model itself.

    `example_input` gives the shape of one input (any batch); by default the
    model's recorded ``prunelab_input_size``. `fold_bn` folds conv -> batch
    norm pairs first (`prunelab.fold_batch_norms`); the check still compares
    with the unfolded model. `opset` is the ONNX opset (None: the exporter's).
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; use one of {list(FORMATS)}")
    sample = _example(model, example_input)
    reference = copy.deepcopy(model).cpu().eval()
    deployed = fold_batch_norms(reference) if fold_bn else reference
    trace_x = _batch(sample, TRACE_BATCH)
    if format == "onnx":
        data = onnx_bytes(deployed, trace_x, opset)
        runner = _onnxruntime_runner(data)
    else:
        if opset is not None:
            raise ConfigError("--opset applies to ONNX export only")
        data = _torchscript_bytes(deployed, trace_x)
        runner = _torchscript_runner(data)
    _verify(reference, runner, sample, rtol, format)
    path = Path(path)
    atomic_write_bytes(path, lambda f: f.write(data))
    return path


def onnx_bytes(model: nn.Module, x: torch.Tensor, opset: int | None = None) -> bytes:
    """The ONNX file of eval-mode `model` traced on `x`, its first axis dynamic."""
    require("onnxscript", "ONNX export")
    require("onnx", "ONNX export")
    batch = torch.export.Dim("batch", min=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model, (x,), None, input_names=["input"], output_names=["output"],
                dynamic_shapes=({0: batch},), opset_version=opset, dynamo=True, verbose=False,
            )  # fmt: skip
    except Exception as exc:  # the exporter raises many kinds; all mean "cannot export"
        op, why = _export_failure(exc)
        where = type(model).__name__
        raise UnsupportedModelError(op, where, f"ONNX cannot export it: {why}") from None
    return program.model_proto.SerializeToString()


def _export_failure(exc: BaseException) -> tuple[str, str]:
    """The op that failed and one line saying why, from the exporter's chained errors."""
    text = "\n".join(str(e) for e in _chain(exc))
    found = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)'", text)
    if found:
        return found.group(1), f"no ONNX function for {found.group(1)}"
    found = re.search(r"operator '([^']+)'", text)
    if found:
        return found.group(1), f"the exporter has no rule for {found.group(1)}"
    lines = [ln.strip() for ln in str(_chain(exc)[-1]).splitlines() if ln.strip()]
    return type(exc).__name__, (lines[0] if lines else type(exc).__name__)[:300]


def _chain(exc: BaseException) -> list[BaseException]:
    chain = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 10:
        chain.append(chain[-1].__cause__)
    return chain


def _torchscript_bytes(model: nn.Module, x: torch.Tensor) -> bytes:
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, x, check_trace=False)
    except Exception as exc:
        raise UnsupportedModelError(
            type(exc).__name__, type(model).__name__, f"torch.jit.trace failed: {exc}"
        ) from None
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # jit is deprecated, still the format
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


def _onnxruntime_runner(data: bytes) -> Runner:
    ort = require("onnxruntime", "checking an ONNX export")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"input": x.numpy()})[0]


def _torchscript_runner(data: bytes) -> Runner:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(io.BytesIO(data))

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return loaded(x).numpy()

    return run


def _verify(reference: nn.Module, runner: Runner, sample: torch.Tensor, rtol: float,
            format: str) -> None:  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    for n in CHECK_BATCHES:
        x = torch.randn(n, *sample.shape[1:], generator=generator)
        with torch.no_grad():
            expected = reference(x).numpy()
        got = runner(x)
        if got.shape != expected.shape:
            raise ExportError(
                f"the {format} export gives shape {got.shape} on a batch of {n}, "
                f"PyTorch {expected.shape}"
            )
        scale = max(float(np.abs(expected).max()), 1e-12)
        error = float(np.abs(got - expected).max()) / scale
        if not error <= rtol:
            raise ExportError(
                f"the {format} export differs from the PyTorch model by {error:.2e} "
                f"(relative to the largest output) on a batch of {n}; allowed {rtol:.0e}"
            )


def _example(model: nn.Module, example_input: torch.Tensor | None) -> torch.Tensor:
    if example_input is not None:
        return example_input.detach().cpu().float()
    size = getattr(model, "prunelab_input_size", None)
    if size is None:
        raise ConfigError("the model records no input size; pass example_input (one batch)")
    return torch.zeros(1, *size)


def _batch(sample: torch.Tensor, n: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, *sample.shape[1:], generator=generator)
