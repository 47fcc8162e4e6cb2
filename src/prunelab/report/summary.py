"""Before/after numbers of a pruning run: accuracy, cost, latency."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn

from prunelab.metrics import compare_latency, count
from prunelab.models.detection_core import tensor_program
from prunelab.runtimes import compare_in_runtime


@dataclass
class ModelStats:
    """One row of the before/after table."""

    label: str
    top1: float | None
    flops: int
    params: int
    latency_ms: float | None = None
    layout: str = ""
    speedup: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv and linear layer, by module name."""
    return {
        name: (m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
    }


def measure(
    models: dict[str, nn.Module],
    inputs: dict[str, torch.Tensor],
    top1: dict[str, float | None],
    batch: int = 8,
    threads: int = 2,
    repeats: int = 20,
    runtime: str = "torch",
) -> list[ModelStats]:
    """Costs of each model on its own input size, and latency in its faster memory layout.

    All models (and both layouts of each) are timed round-robin in one run, so
    the speedups are ratios measured side by side. The first model is the
    baseline of the speedups. With `runtime` "onnxruntime" or "openvino" the
    models are exported to ONNX and timed there (the runtime picks its layout).
    """
    if runtime != "torch":
        return _measure_in_runtime(models, inputs, top1, batch, threads, repeats, runtime)
    timed: dict[str, nn.Module] = {}
    batches: dict[str, torch.Tensor] = {}
    layouts: dict[str, bool] = {}
    for label, model in models.items():
        x = inputs[label].expand(batch, *inputs[label].shape[1:]).contiguous()
        for cl in (False, True) if x.dim() == 4 else (False,):  # channels_last: images only
            key = f"{label}/{'cl' if cl else 'nchw'}"
            timed[key], batches[key], layouts[key] = model, x, cl
    stats = compare_latency(timed, batches, repeats=repeats, threads=threads, channels_last=layouts)
    rows: list[ModelStats] = []
    base_ms: float | None = None
    for label, model in models.items():
        nchw = stats[f"{label}/nchw"].median_ms
        cl = stats[f"{label}/cl"].median_ms if f"{label}/cl" in stats else math.inf
        layout, ms = ("channels_last", cl) if cl < nchw else ("NCHW", nchw)
        base_ms = ms if base_ms is None else base_ms
        cost = _cost(model, inputs[label])
        rows.append(
            ModelStats(label, top1.get(label), cost.flops, cost.params, ms, layout, base_ms / ms)
        )
    return rows


def _cost(model: nn.Module, x: torch.Tensor) -> Any:
    """FLOPs and params; a detector's FLOPs are those of its tensor program (what planners
    budget): the whole R-CNN's depend on how many proposals and detections an image gives."""
    return count(tensor_program(model), x)


def _measure_in_runtime(
    models: dict[str, nn.Module],
    inputs: dict[str, torch.Tensor],
    top1: dict[str, float | None],
    batch: int,
    threads: int,
    repeats: int,
    runtime: str,
) -> list[ModelStats]:
    batches = {k: x.expand(batch, *x.shape[1:]).contiguous() for k, x in inputs.items()}
    stats = compare_in_runtime(models, batches, runtime, threads, repeats)
    rows = []
    for label, model in models.items():
        cost = _cost(model, inputs[label])
        rows.append(ModelStats(label, top1.get(label), cost.flops, cost.params,
                               stats[label].median_ms, runtime, stats[label].speedup))  # fmt: skip
    return rows


def format_table(
    rows: list[ModelStats], batch: int, threads: int, metric: str = "top-1", runtime: str = "torch"
) -> str:
    """A markdown table (also readable in a terminal); `metric` names the accuracy column."""
    base = rows[0]
    where = "CPU latency" if runtime == "torch" else f"{runtime} CPU latency"
    head = (
        f"| model | {metric} (%) | FLOPs (MACs) | params | {where} (batch {batch}, "
        f"{threads} threads) | speedup |"
    )
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        top1 = "-" if r.top1 is None else f"{r.top1:.2f}"
        flops = f"{r.flops / 1e6:.1f} M ({r.flops / base.flops:.0%})"
        params = f"{r.params / 1e6:.3f} M ({r.params / base.params:.0%})"
        lat = "-" if r.latency_ms is None else f"{r.latency_ms:.1f} ms ({r.layout})"
        speed = "-" if r.speedup is None else f"{r.speedup:.2f}x"
        lines.append(f"| {r.label} | {top1} | {flops} | {params} | {lat} | {speed} |")
    return "\n".join(lines)
