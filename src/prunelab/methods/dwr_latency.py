"""DWR under a latency target: the cost model fitted to timings, and a verified realisation.

An extension (the paper budgets FLOPs). With `metric=latency` the cost
C(d, w, r) of `dwr_cost` is fitted to measured latency, as a fraction of the
dense model's, instead of FLOPs counts: the per-layer latency table cannot
be used, because it times a layer at the dense model's input size and depth
and resolution change both. So a coarser grid of realisations than the FLOPs
fit's (4 depths x 3 sides x 4 widths; FLOPs: 7 x 5 x 6) is built without
training and timed interleaved in one session with the dense model, and
s(r) is the dense model's measured latency at each sampled side. The
accuracy model is maximised under this C as under FLOPs.

The optimum is realised as for FLOPs (depth by DBP, width by BN scale,
resolution by resizing), except that the last free dimension (width, else
resolution, else depth) is solved from C at the discrete depth and side
actually realised. The model is then timed against the dense one
(`latency_table.measured_ratio`); before the final fine-tune a miss can
still be corrected, so the aim is divided by C's measured error and the
solve repeated, up to `NUDGES` times. What was predicted and measured is
reported in `info["latency"]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch.nn as nn

from prunelab.graph import prune
from prunelab.latency_table import (
    LatencySpec,
    closest_attempt,
    measured_ratio,
    measured_ratios,
    next_aim,
)
from prunelab.methods.dwr_cost import CostModel, fit_cost, solve_dimension
from prunelab.methods.dwr_model import DIMS
from prunelab.methods.latency_budget import VERIFY_TOLERANCE
from prunelab.train import distributed as D

if TYPE_CHECKING:
    from prunelab.methods.dwr import Collector

NUDGES = 2


def latency_cost(col: Collector) -> CostModel:
    """C(d, w, r) through timed realisations: latency over the dense model's at r0."""
    spec = LatencySpec.from_config(col.task.latency)
    n, dims = len(col.blocks0), col.dims
    depths = sorted({round(v * n) for v in np.linspace(0, 1, 4)}) if "depth" in dims else [n]
    keeps = list(np.linspace(0.4, 1.0, 4)) if "width" in dims else [1.0]
    sides = np.linspace(0.5, 1.0, 3) if "resolution" in dims else [1.0]
    pixels = sorted({max(1, round(v * col.r0)) for v in sides})
    models: dict[str, tuple[nn.Module, Any]] = {}
    rows = []
    for k in depths:
        for p in pixels:
            for d, w, r, _, model in col.realisations(k, p, keeps, models=True):
                models[f"{len(rows)}"] = (model, col._input(p))
                rows.append((d, w, r))
    dense_at = {f"dense@{p}": (col.model0, col._input(p)) for p in pixels if p != col.r0}
    col.say(f"timing {len(models)} realisations for the latency cost model")
    ratios = measured_ratios(col.model0, col._input(col.r0), {**models, **dense_at}, spec)
    ratios = D.broadcast_object(ratios)  # under torchrun every rank fits rank 0's timings
    costs = np.array([ratios[f"{i}"] for i in range(len(rows))])
    scale = np.array([1.0 if p == col.r0 else ratios[f"dense@{p}"] for p in pixels])
    return fit_cost(np.array(rows), costs, np.array(pixels) / col.r0, scale)


def build_for_latency(
    col: Collector, point: Sequence[float], dims: Sequence[str]
) -> tuple[nn.Module, int, dict[str, Any]]:
    """Realise `point` at the latency target, timed and (before fine-tuning) nudged."""
    target = col.task.target
    spec = LatencySpec.from_config(col.task.latency)
    cost = col.cost_model()
    aim, tried = target, []
    for attempt in range(NUDGES + 1):
        model, pixels, details, realised = _realise(col, point, dims, aim)
        predicted = float(cost(realised)[0])
        measured, timing = measured_ratio(col.model0, model, col._input(col.r0), spec,
                                          pruned_input=col._input(pixels))  # fmt: skip
        measured = D.broadcast_object(measured)  # every rank takes rank 0's decision
        tried.append({"aim": aim, "predicted": predicted, "measured": measured,
                      "point": list(realised), "timing": timing.summary(),
                      "built": (model, pixels, details)})  # fmt: skip
        if abs(measured / target - 1) <= VERIFY_TOLERANCE or attempt == NUDGES:
            break
        aim = next_aim(tried, target)  # as for_cost re-aims its table
    best, notes = closest_attempt(tried, target, VERIFY_TOLERANCE, artefact="built")
    model, pixels, details = best["built"]
    details["latency"] = {**notes, "spec": spec.key(), "verify_tolerance": VERIFY_TOLERANCE,
                          "cost_fit_max_rel_error": cost.max_rel_error}  # fmt: skip
    return model, pixels, details


def _realise(
    col: Collector, point: Sequence[float], dims: Sequence[str], aim: float
) -> tuple[nn.Module, int, dict[str, Any], tuple[float, float, float]]:
    """Depth and side from `point`; the last free dimension solved from C = aim."""
    n = len(col.blocks0)
    d, w, r = point
    kept = min(n, max(0, round(d * n))) if "depth" in dims else n
    pixels = min(col.r0, max(1, round(r * col.r0))) if "resolution" in dims else col.r0
    free = next(x for x in ("width", "resolution", "depth") if x in dims)
    j = DIMS.index(free)
    at = np.array([[kept / n if n else 1.0, 1.0 if "width" not in dims else w, pixels / col.r0]])
    solved, _ = solve_dimension(col.cost_model(), at, j, aim, 0.0)
    value = float(solved[0, j])  # infeasible: the bound nearest the aim, timed and reported
    details: dict[str, Any] = {}
    if free == "depth":
        kept = min(n, max(0, round(value * n)))
    elif free == "resolution":
        pixels = min(col.r0, max(1, round(value * col.r0)))
    model = col.depth_model(kept)
    details["removed_blocks"] = []
    if "depth" in dims:
        order, scores = col.depth_order()
        details.update(dbp_gain=scores, removed_blocks=order[: n - kept])
    if free == "width":
        model = prune(model, col.width_planner(model, pixels, col.opts.round_to)(value))
        details["width_keep"] = value
    model.prunelab_input_size = (col.channels, pixels, pixels)
    d_real, w_real, r_real, _ = col.shape_of(model, pixels)
    return model, pixels, details, (d_real, w_real, r_real)
