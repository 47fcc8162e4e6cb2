"""Latency as a cost: a per-layer lookup table, measured once and cached on disk.

Planners try thousands of candidate plans; timing each would take hours. As
latency-aware pruning work does (NetAdapt, AMC and their successors), prunelab
times every convolution and linear layer alone over a grid of channel counts
once per (architecture, CPU, batch, threads, runtime, layout), caches the table
under ``$PRUNELAB_CACHE/latency`` (default ``~/.cache/prunelab``), and predicts a
plan's latency by interpolating each layer's time at its kept (in, out) widths:

    predicted = a * (sum_layers table(c_in, c_out) + m * attention) + b * activations + c

`activations` (output channels x positions, summed over layers) stands for what
the table does not time: batch norms, activations, additions, pooling.
`attention` is the MACs attention computes outside conv/linear modules (its
fused input projections and its two matmuls, `ChannelGraph.products`, which
shrink with the heads a plan keeps), timed at `m` ms per MAC: the rate the
table measured for the model's dense linear layers (all layers' without
any), since those matmuls run on the same kernels. The
three coefficients (non-negative) are fitted to real timings of the dense model
and of uniformly thinned copies, so isolated-layer overheads and fused ops
(onnxruntime and OpenVINO fold batch norms) are accounted for. The fit's own
error is stored with the table (`calibration`).

Kernel-friendly widths are measured, not assumed: the most expensive layers
are timed at every width in a 32-channel window and the table keeps the
smallest multiple (1, 2, 4, 8, 16 or 32) whose widths run as fast per channel
as the best multiple's (within 3%). Planners use it when `round_to="auto"`, and so
do the methods' `round_to: auto` (`methods.latency_budget.resolve_round_to`).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import hashlib
import json
import os
import platform
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from scipy.optimize import nnls

from prunelab.atomic import atomic_write_text
from prunelab.data.arrays import cache_root
from prunelab.errors import ConfigError, CorruptFileError
from prunelab.graph import prune
from prunelab.graph.cost import cost_model
from prunelab.graph.groups import ChannelGraph
from prunelab.graph.plan import Plan, add_survivors, round_keep
from prunelab.metrics.latency import LatencyStats, stats_of, time_callables
from prunelab.runtimes import (
    RUNTIMES,
    check_runtime,
    compare_in_runtime,
    make_runner,
    onnx_runner,
)

__all__ = [
    "LatencySpec",
    "LatencyTable",
    "RatioTiming",
    "latency_table",
    "measured_ratio",
    "measured_ratios",
]

GRID = (0.25, 0.5, 0.75, 1.0)  # kept fractions timed per layer axis
CALIBRATION = (1.0, 0.75, 0.5, 0.3)  # uniform widths timed whole for the fit
ROUND_CANDIDATES = (1, 2, 4, 8, 16, 32)
ROUND_WINDOW = 32
VERIFY_SPREAD = 0.0125  # a verification's ratio error goal: a quarter of its 5% tolerance
FORMAT = 1  # bump when the table's layout or method changes: old caches are re-measured
Masks = Mapping[int, "torch.Tensor | np.ndarray"]


@dataclass(frozen=True)
class LatencySpec:
    """Where latency is measured: batch, threads, runtime and memory layout (CPU).

    `repeats` is the whole-model timing count (calibration, reports, and one
    round of a verification, which adds rounds until its ratio is known well
    enough, at most `max_rounds`; see `measured_ratio`); `layer_repeats` that of
    each table entry. Only batch, threads, runtime and layout decide which
    cached table applies.
    """

    batch: int = 8
    threads: int = 2
    runtime: str = "torch"
    layout: str = "nchw"
    repeats: int = 20
    layer_repeats: int = 7
    max_rounds: int = 10

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | LatencySpec | None) -> LatencySpec:
        """A spec from the config's `latency:` mapping; unknown keys are an error."""
        if isinstance(config, LatencySpec):
            return config
        config = dict(config or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(config) - set(known))
        if unknown:
            raise ConfigError(f"unknown latency option(s) {unknown}; known: {known}")
        for k, v in config.items():
            text = k in ("runtime", "layout")
            if not isinstance(v, str if text else int) or isinstance(v, bool):
                kind = "a name" if text else "a whole number"
                raise ConfigError(f"latency.{k}={v!r} must be {kind}")
        spec = cls(**config)
        for name in ("batch", "threads", "repeats", "layer_repeats", "max_rounds"):
            value = getattr(spec, name)
            if value < 1:
                raise ConfigError(f"latency.{name}={value} must be a whole number >= 1")
        if spec.runtime not in RUNTIMES:
            raise ConfigError(
                f"latency.runtime must be one of {list(RUNTIMES)}, got {spec.runtime!r}"
            )
        if spec.layout not in ("nchw", "channels_last"):
            raise ConfigError(
                f"latency.layout must be 'nchw' or 'channels_last', got {spec.layout!r}"
            )
        if spec.layout == "channels_last" and spec.runtime != "torch":
            raise ConfigError("latency.layout=channels_last applies to the torch runtime only")
        return spec

    def key(self) -> dict[str, Any]:
        return {"batch": self.batch, "threads": self.threads, "runtime": self.runtime,
                "layout": self.layout}  # fmt: skip


@dataclass
class LatencyTable:
    """Per-layer times over channel grids plus a fitted remainder; predicts plans in ms.

    Arrays are in `graph.layers` order: `grid_out[l]`, `grid_in[l]` the timed
    widths of weight dims 0 and 1, `times[l, i, o]` the ms at (grid_in[i],
    grid_out[o]) for the whole batch.
    """

    spec: dict[str, Any]
    fingerprint: str
    layers: list[str]
    grid_out: np.ndarray
    grid_in: np.ndarray
    times: np.ndarray
    out_spatial: np.ndarray
    coef: tuple[float, float, float] = (1.0, 0.0, 0.0)
    round_to: int = 1
    round_scores: dict[int, float] = field(default_factory=dict)
    calibration: list[dict[str, float]] = field(default_factory=list)
    ms_per_mac: float = 0.0  # of attention's MACs outside modules (the dense linear layers' rate)

    # prediction -------------------------------------------------------------
    def layer_ms(self, c_out: np.ndarray, c_in: np.ndarray) -> np.ndarray:
        """Interpolated time of every layer at the given widths (linear outside the grid)."""
        to, io = _locate(self.grid_out, c_out)
        ti, ii = _locate(self.grid_in, c_in)
        rows = np.arange(len(self.layers))
        t = self.times
        low_in = (1 - to) * t[rows, ii, io] + to * t[rows, ii, io + 1]
        high_in = (1 - to) * t[rows, ii + 1, io] + to * t[rows, ii + 1, io + 1]
        return np.maximum((1 - ti) * low_in + ti * high_in, 0.0)

    def features(
        self, c_out: np.ndarray, c_in: np.ndarray, attention_macs: float = 0.0
    ) -> np.ndarray:
        """[summed layer and attention ms, activation volume, 1]: what the coefficients multiply."""
        layers = self.layer_ms(c_out, c_in).sum() + self.ms_per_mac * attention_macs
        return np.array([layers, float((c_out * self.out_spatial).sum()), 1.0])

    def predict_widths(
        self, c_out: np.ndarray, c_in: np.ndarray, attention_macs: float = 0.0
    ) -> float:
        return float(np.dot(self.coef, self.features(c_out, c_in, attention_macs)))

    def predict(self, graph: ChannelGraph, keep: Masks | None = None) -> float:
        """Predicted ms of the model that keeping `keep` (group -> bool mask) leaves."""
        self._check(graph)
        return self.predict_widths(*_widths_and_attention(graph, keep or {}))

    def predict_plan(self, plan: Plan) -> float:
        return self.predict(plan.graph, {g: plan.keep_mask(g).numpy() for g in plan.keep})

    def dense_ms(self, graph: ChannelGraph) -> float:
        return self.predict(graph, {})

    @property
    def dense_measured(self) -> dict[str, float]:
        """The dense model's own timing in the calibration (median, p10, p90 ms)."""
        return next(c for c in self.calibration if c["fraction"] == 1.0)

    def _check(self, graph: ChannelGraph) -> None:
        if list(graph.layers) != self.layers:
            raise ConfigError("this latency table was measured for another architecture")

    # storage ----------------------------------------------------------------
    def to_json(self) -> str:
        data = asdict(self)
        for name in ("grid_out", "grid_in", "times", "out_spatial"):
            data[name] = getattr(self, name).tolist()
        data["format"] = FORMAT
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> LatencyTable:
        data = json.loads(text)
        if data.pop("format", None) != FORMAT:
            raise CorruptFileError("latency table of an older format")
        for name in ("grid_out", "grid_in", "times", "out_spatial"):
            data[name] = np.asarray(data[name], dtype=np.float64)
        data["coef"] = tuple(data["coef"])
        data["round_scores"] = {int(k): v for k, v in data["round_scores"].items()}
        return cls(**data)


def latency_table(
    model: nn.Module,
    graph: ChannelGraph,
    spec: LatencySpec | Mapping[str, Any] | None = None,
    cache: bool = True,
    log: Callable[[str], None] | None = None,
) -> LatencyTable:
    """The latency table of `model`'s architecture under `spec`: from the disk cache or measured."""
    spec = LatencySpec.from_config(spec)
    check_runtime(spec.runtime)
    probe = _LayerProbe(model, graph)
    fingerprint = _fingerprint(probe, spec)
    path = _cache_dir() / f"{fingerprint[:24]}.json"
    if cache and path.is_file():
        try:
            table = LatencyTable.from_json(path.read_text())
            if table.fingerprint == fingerprint:
                return table
        except (CorruptFileError, ValueError, KeyError, TypeError):
            pass  # a damaged or outdated cache entry is measured again
    say = log or (lambda _: None)
    say(f"measuring a latency table ({len(probe.layers)} layers, {spec.runtime}, "
        f"batch {spec.batch}, {spec.threads} threads); cached in {path}")  # fmt: skip
    table = _measure(model, graph, probe, spec, fingerprint)
    if cache:
        atomic_write_text(path, table.to_json())
    return table


def measured_ratio(
    dense: nn.Module,
    pruned: nn.Module,
    example_input: torch.Tensor,
    spec: LatencySpec,
    pruned_input: torch.Tensor | None = None,
    spread: float = VERIFY_SPREAD,
) -> tuple[float, RatioTiming]:
    """pruned / dense median latency, timed interleaved until the ratio is known to `spread`.

    Two timings of one model can differ by as much as a 5% verification
    tolerance at 20 repeats on a shared machine, so a fixed count cannot tell a
    miss from noise. Rounds of `spec.repeats` interleaved calls are added until
    the ratio's relative standard error (a paired bootstrap over rounds: both
    models are timed in every round) is at most `spread`, or `spec.max_rounds`
    rounds are spent; `RatioTiming`
    says which. The default spread is a quarter of the 5% tolerance, so two
    standard errors are half of it. `pruned_input`: the pruned model's own
    input when its size differs (resolution pruning).
    """
    x = _batch_of(example_input, spec.batch)
    xp = x if pruned_input is None else _batch_of(pruned_input, spec.batch)
    cap = spec.max_rounds * spec.repeats
    layout = spec.layout == "channels_last"
    runners = {"dense": make_runner(dense, x, spec.runtime, spec.threads, layout),
               "pruned": make_runner(pruned, xp, spec.runtime, spec.threads, layout)}  # fmt: skip
    samples: dict[str, list[float]] = {"dense": [], "pruned": []}
    warmup = 3
    with _gc_paused():
        while True:
            rounds = time_callables(runners, spec.repeats, warmup, spec.threads)
            warmup = 0
            for name in samples:
                samples[name].extend(rounds[name].samples_ms)
            error = _ratio_spread(np.array(samples["dense"]), np.array(samples["pruned"]))
            if error <= spread or len(samples["dense"]) >= cap:
                break
    stats = {name: stats_of(values, spec.threads) for name, values in samples.items()}
    timing = RatioTiming(stats, error, len(samples["dense"]), error <= spread)
    return stats["pruned"].median_ms / stats["dense"].median_ms, timing


def measured_ratios(
    dense: nn.Module,
    example_input: torch.Tensor,
    models: Mapping[str, tuple[nn.Module, torch.Tensor]],
    spec: LatencySpec,
) -> dict[str, float]:
    """Each model's median latency over the dense model's, all timed interleaved in one session.

    `models` maps a name to (model, its own example input); `spec.repeats`
    rounds, one call of every model per round (for fitting a cost model to
    many realisations; a verification uses `measured_ratio`).
    """
    timed = {"dense": dense, **{n: m for n, (m, _) in models.items()}}
    inputs = {"dense": _batch_of(example_input, spec.batch),
              **{n: _batch_of(x, spec.batch) for n, (_, x) in models.items()}}  # fmt: skip
    with _gc_paused():
        stats = compare_in_runtime(timed, inputs, spec.runtime, spec.threads, spec.repeats,
                                   channels_last=_layouts(spec, timed))  # fmt: skip
    base = stats["dense"].median_ms
    return {n: stats[n].median_ms / base for n in models}


def next_aim(tried: list[Mapping[str, Any]], target: float) -> float:
    """The cost model's aim for the next try at a latency `target`, from the attempts so far.

    Each attempt holds the cost model's `predicted` ratio of the model built and its
    `measured` one. While every attempt missed on the same side, the model's error
    (measured / predicted, the median so that one noisy timing cannot swing the aim) is
    divided out. Once attempts lie on both sides of the target, the aim interpolates
    between the closest pair that brackets it, kept in the bracket's middle half so that
    every try narrows it by a quarter at least (plain interpolation can creep along one
    side of a kink): latency is not monotone in width where oneDNN switches kernels
    (mobilenet_v2 at batch 1 measured 0.407 at a predicted 0.408 and 0.567 at 0.447), and
    dividing by a median error across such a step returns to aims already tried.
    """
    below = [t for t in tried if t["measured"] < target]
    above = [t for t in tried if t["measured"] > target]
    if below and above:
        lo = max(below, key=lambda t: t["measured"])
        hi = min(above, key=lambda t: t["measured"])
        share = (target - lo["measured"]) / (hi["measured"] - lo["measured"])
        share = min(0.75, max(0.25, share))
        return min(1.0, lo["predicted"] + share * (hi["predicted"] - lo["predicted"]))
    error = float(np.median([t["measured"] / t["predicted"] for t in tried]))
    return min(1.0, target / error)


def closest_attempt(
    tried: list[dict[str, Any]], target: float, tolerance: float, artefact: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The attempt whose `measured` ratio lies closest to `target`, and the notes on it.

    The notes (target, measured, predicted, whether it `met` the target within
    `tolerance`, and every attempt without its `artefact`, the plan or model it built)
    are what a run records of its latency verification; callers add their own keys.
    """
    best = min(tried, key=lambda t: abs(t["measured"] / target - 1))
    notes = {
        "target": target, "measured": best["measured"], "predicted": best["predicted"],
        "met": abs(best["measured"] / target - 1) <= tolerance,
        "attempts": [{k: v for k, v in t.items() if k != artefact} for t in tried],
    }  # fmt: skip
    return best, notes


@dataclass(frozen=True)
class RatioTiming:
    """How a latency ratio was timed: per-model stats, the ratio's relative standard error,
    calls per model, and whether that error came under the goal before the cap."""

    stats: dict[str, LatencyStats]
    spread: float
    repeats: int
    settled: bool

    def summary(self) -> dict[str, Any]:
        return {"repeats": self.repeats, "spread": self.spread, "settled": self.settled,
                "dense_ms": self.stats["dense"].median_ms,
                "pruned_ms": self.stats["pruned"].median_ms}  # fmt: skip


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No garbage collection inside (one collection first): it would land in a timing."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _ratio_spread(dense: np.ndarray, pruned: np.ndarray, resamples: int = 400) -> float:
    """Relative standard error of median(pruned) / median(dense), resampling whole rounds."""
    if len(dense) < 4:
        return float("inf")
    rows = np.random.default_rng(0).integers(0, len(dense), (resamples, len(dense)))
    ratios = np.median(pruned[rows], axis=1) / np.median(dense[rows], axis=1)
    return float(ratios.std() / (np.median(pruned) / np.median(dense)))


# measuring ---------------------------------------------------------------------


class _LayerProbe:
    """Each conv/linear layer of the graph as something that can be rebuilt at any width."""

    def __init__(self, model: nn.Module, graph: ChannelGraph) -> None:
        self.graph = graph
        self.layers = list(graph.layers)
        self.modules = {name: model.get_submodule(name) for name in self.layers}
        self.calls = _input_shapes(model, self.modules, graph.input_shape)
        variable = {m.key for g in graph.prunable for m in g.members}
        self.full = {n: graph.layers[n].weight_shape[:2] for n in self.layers}
        self.varies = {n: ((n, "weight", 0) in variable, (n, "weight", 1) in variable)
                       for n in self.layers}  # fmt: skip

    def describe(self) -> list[Any]:
        """What decides the table: each layer's op, shapes and hyper-parameters."""
        out = []
        for n in self.layers:
            m = self.modules[n]
            hyper = {k: str(getattr(m, k)) for k in ("stride", "padding", "dilation", "groups",
                                                     "padding_mode") if hasattr(m, k)}  # fmt: skip
            out.append([n, type(m).__name__, list(self.graph.layers[n].weight_shape), hyper,
                        [list(s) for s in self.calls[n]], self.varies[n]])  # fmt: skip
        return out

    def layer_at(self, name: str, out_w: int, in_w: int) -> tuple[nn.Module, list[torch.Size]]:
        """The layer rebuilt with weight dims (out_w, in_w), and its per-call input shapes."""
        m = self.modules[name]
        shapes = self.calls[name]
        if isinstance(m, nn.Linear):
            layer = nn.Linear(in_w, out_w, bias=m.bias is not None)
            return layer, [torch.Size((*s[:-1], in_w)) for s in shapes]
        depthwise = m.groups == m.in_channels and m.weight.shape[1] == 1 and m.groups > 1
        groups = out_w if depthwise else m.groups
        in_channels = out_w if depthwise else in_w * m.groups
        layer = type(m)(
            in_channels, out_w, m.kernel_size, m.stride, m.padding, m.dilation, groups,
            m.bias is not None, m.padding_mode,
        )  # fmt: skip
        return layer, [torch.Size((s[0], in_channels, *s[2:])) for s in shapes]


def _measure(
    model: nn.Module, graph: ChannelGraph, probe: _LayerProbe, spec: LatencySpec, fingerprint: str
) -> LatencyTable:
    torch.manual_seed(0)
    round_to, scores = _choose_round_to(probe, spec)
    grids_out, grids_in, times = [], [], []
    for name in probe.layers:
        full_out, full_in = probe.full[name]
        g_out = _grid(full_out, probe.varies[name][0], round_to)
        g_in = _grid(full_in, probe.varies[name][1], round_to)
        runners = {
            (i, o): _layer_runner(probe, name, o, i, spec) for i in set(g_in) for o in set(g_out)
        }
        stats = time_callables(runners, spec.layer_repeats, 2, spec.threads)
        times.append(_monotone([[_own_time(stats[(i, o)]) for o in g_out] for i in g_in]))
        grids_out.append(g_out)
        grids_in.append(g_in)
    spatial = [graph.layers[n].out_spatial for n in probe.layers]
    table = LatencyTable(
        spec=spec.key(), fingerprint=fingerprint, layers=probe.layers,
        grid_out=np.array(grids_out, dtype=np.float64), grid_in=np.array(grids_in, np.float64),
        times=np.array(times, dtype=np.float64), out_spatial=np.array(spatial, np.float64),
        round_to=round_to, round_scores=scores,
    )  # fmt: skip
    if graph.products:
        table.ms_per_mac = _dense_ms_per_mac(table, probe)
    _calibrate(table, model, graph, spec)
    return table


def _calibrate(
    table: LatencyTable, model: nn.Module, graph: ChannelGraph, spec: LatencySpec
) -> None:
    """Fit the coefficients to whole-model timings of uniformly thinned copies."""
    plans = {f: _uniform_plan(graph, f, table.round_to) for f in CALIBRATION}
    models = {f"{f}": (model if f == 1.0 else prune(model, p)) for f, p in plans.items()}
    x = _batch_of(torch.zeros(graph.input_shape), spec.batch)
    stats = compare_in_runtime(models, dict.fromkeys(models, x), spec.runtime, spec.threads,
                               spec.repeats, channels_last=_layouts(spec, models))  # fmt: skip
    feats = np.array([table.features(*_widths_and_attention(graph, _masks(p)))
                      for p in plans.values()])  # fmt: skip
    measured = np.array([stats[f"{f}"].median_ms for f in plans])
    # A prior row pulls the layer coefficient towards 1 (the table's own times) with the
    # weight of one more observation: four noisy timings alone can zero it.
    prior = feats[0, 0]
    coef, _ = nnls(np.vstack([feats, [prior, 0.0, 0.0]]), np.append(measured, prior))
    table.coef = (float(coef[0]), float(coef[1]), float(coef[2]))
    table.calibration = [
        {"fraction": f, "median_ms": s.median_ms, "p10_ms": s.p10_ms, "p90_ms": s.p90_ms,
         "predicted_ms": float(np.dot(coef, row))}
        for f, s, row in zip(plans, (stats[f"{f}"] for f in plans), feats, strict=True)
    ]  # fmt: skip


def _choose_round_to(probe: _LayerProbe, spec: LatencySpec) -> tuple[int, dict[int, float]]:
    """The smallest channel multiple whose widths run as fast as the best multiple's.

    The most expensive layers are timed at every output width of a 32-wide
    window; each width's time is divided by the median time of its neighbours
    (4 widths either side), so a score below 1 means the multiple's widths run
    faster than the widths around them. Scores within 3% count as equal.
    """
    macs = {n: probe.graph.layers[n].out_spatial * int(np.prod(probe.graph.layers[n].weight_shape))
            for n in probe.layers}  # fmt: skip
    candidates = [n for n in probe.layers
                  if probe.varies[n][0] and probe.full[n][0] >= 2 * ROUND_WINDOW]  # fmt: skip
    probes = sorted(candidates, key=lambda n: -macs[n])[:3]
    if not probes:
        return 1, {}
    relative: dict[int, list[float]] = {m: [] for m in ROUND_CANDIDATES}
    for name in probes:
        full_out, full_in = probe.full[name]
        end = max(2 * ROUND_WINDOW, ROUND_WINDOW * round(0.6 * full_out / ROUND_WINDOW))
        widths = np.arange(end - ROUND_WINDOW + 1, end + 1)  # ends on a multiple of 32
        runners = {int(w): _layer_runner(probe, name, int(w), full_in, spec) for w in widths}
        stats = time_callables(runners, spec.layer_repeats, 2, spec.threads)
        ms = np.array([_own_time(stats[int(w)]) for w in widths])
        ratio = ms / _local_median(ms, 4)
        for m in ROUND_CANDIDATES:
            relative[m].append(float(ratio[widths % m == 0].mean()))
    scores = {m: float(np.mean(v)) for m, v in relative.items()}
    best = min(scores.values())
    return next(m for m in ROUND_CANDIDATES if scores[m] <= best * 1.03), scores


def _layer_runner(probe: _LayerProbe, name: str, out_w: int, in_w: int, spec: LatencySpec):
    layer, shapes = probe.layer_at(name, out_w, in_w)
    layer.eval()
    inputs = [torch.randn(_with_batch(s, spec.batch)) for s in shapes]
    if spec.runtime != "torch":
        runners = [onnx_runner(_single_layer_onnx(layer, x), x, spec.runtime, spec.threads)
                   for x in inputs]  # fmt: skip
        return lambda: [run() for run in runners]
    if spec.layout == "channels_last" and inputs[0].dim() == 4:
        layer = layer.to(memory_format=torch.channels_last)
        inputs = [x.contiguous(memory_format=torch.channels_last) for x in inputs]

    def run() -> object:
        with torch.inference_mode():
            return [layer(x) for x in inputs]

    return run


def _single_layer_onnx(layer: nn.Module, x: torch.Tensor) -> bytes:
    """A one-node ONNX model of `layer` (built directly: exporting each would take seconds)."""
    from prunelab.optional import require

    onnx = require("onnx", "a latency table in onnxruntime or openvino")
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    inits = [numpy_helper.from_array(layer.weight.detach().numpy(), "W")]
    if layer.bias is not None:
        inits.append(numpy_helper.from_array(layer.bias.detach().numpy(), "B"))
    names = ["X", "W"] + (["B"] if layer.bias is not None else [])
    if isinstance(layer, nn.Linear):
        nodes = [
            helper.make_node("MatMul", ["X", "WT"], ["Y0" if layer.bias is not None else "Y"]),
        ]
        inits.append(numpy_helper.from_array(layer.weight.detach().numpy().T.copy(), "WT"))
        if layer.bias is not None:
            nodes.append(helper.make_node("Add", ["Y0", "B"], ["Y"]))
    else:
        if isinstance(layer.padding, str):
            raise ConfigError(f"padding={layer.padding!r} is not supported by the latency table")
        pads = list(layer.padding) * 2
        nodes = [helper.make_node(
            "Conv", names, ["Y"], kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
            pads=pads, dilations=list(layer.dilation), group=layer.groups,
        )]  # fmt: skip
    with torch.no_grad():
        out_shape = list(layer(x[:1]).shape)
    graph = helper.make_graph(
        nodes, "layer",
        [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, ["N", *x.shape[1:]])],
        [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, ["N", *out_shape[1:]])],
        initializer=inits,
    )  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return proto.SerializeToString()


# helpers -----------------------------------------------------------------------


def _widths_and_attention(graph: ChannelGraph, keep: Masks) -> tuple[np.ndarray, np.ndarray, float]:
    """Each layer's (out, in) widths and the attention MACs outside modules, per image."""
    cm = cost_model(graph)
    c_out, c_in = cm.layer_widths(keep)
    return c_out, c_in, cm.product_macs(keep) if graph.products else 0.0


def _dense_ms_per_mac(table: LatencyTable, probe: _LayerProbe) -> float:
    """ms per MAC (the whole batch's ms over one image's MACs) of the dense linear layers."""
    linear = [isinstance(probe.modules[n], nn.Linear) for n in probe.layers]
    rows = np.array(linear) if any(linear) else np.ones(len(probe.layers), dtype=bool)
    ms = table.layer_ms(table.grid_out[:, -1], table.grid_in[:, -1])
    macs = np.array([probe.graph.layers[n].out_spatial * probe.graph.layers[n].kernel
                     * int(np.prod(probe.graph.layers[n].weight_shape[:2]))
                     for n in probe.layers], dtype=np.float64)  # fmt: skip
    return float(ms[rows].sum() / max(macs[rows].sum(), 1.0))


def _local_median(values: np.ndarray, half: int) -> np.ndarray:
    return np.array([np.median(values[max(0, i - half) : i + half + 1])
                     for i in range(len(values))])  # fmt: skip


def _own_time(stats: LatencyStats) -> float:
    """A layer's own time: interference from other processes only ever adds time, so the
    fastest repeat estimates it best (the calibration maps the table onto median times)."""
    return min(stats.samples_ms)


def _monotone(times: list[list[float]]) -> np.ndarray:
    """Times that never fall as a width grows: a narrower entry is capped by every wider one.

    Measured entries can break this only through interference, which slows a
    sample down; the grid's widths are all multiples of the chosen rounding.
    """
    t = np.array(times, dtype=np.float64)
    t = np.minimum.accumulate(t[::-1], axis=0)[::-1]
    return np.minimum.accumulate(t[:, ::-1], axis=1)[:, ::-1]


def _locate(grid: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interpolation weight and lower index of each row's width `c` on that row's grid."""
    k = grid.shape[1]
    index = np.clip((grid <= c[:, None]).sum(axis=1) - 1, 0, k - 2)
    rows = np.arange(len(grid))
    lo, hi = grid[rows, index], grid[rows, index + 1]
    weight = np.where(hi > lo, (c - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
    return weight, index


def _grid(full: int, varies: bool, round_to: int) -> list[int]:
    if not varies:
        return [full] * len(GRID)
    return [round_keep(f * full, full, round_to) for f in GRID]


def _uniform_plan(graph: ChannelGraph, fraction: float, round_to: int) -> Plan:
    keep = {}
    for g in graph.prunable:
        n = round_keep(fraction * g.size, g.size, round_to)
        scores = -torch.arange(g.size, dtype=torch.float32)  # keep a prefix
        keep[g.index] = add_survivors(graph, g, torch.arange(n), scores)
    return Plan(graph, keep)


def _masks(plan: Plan) -> dict[int, np.ndarray]:
    return {g: plan.keep_mask(g).numpy() for g in plan.keep}


def _input_shapes(
    model: nn.Module, modules: Mapping[str, nn.Module], input_shape: tuple[int, ...]
) -> dict[str, list[torch.Size]]:
    """Every call's input shape of each layer, from one eval forward pass of a copy."""
    shapes: dict[str, list[torch.Size]] = {n: [] for n in modules}
    twin = copy.deepcopy(model).eval()

    def record(name: str) -> Callable[..., None]:
        return lambda _module, args, _output: shapes[name].append(args[0].shape)

    handles = [twin.get_submodule(n).register_forward_hook(record(n)) for n in modules]
    try:
        with torch.no_grad():
            twin(torch.zeros(input_shape))
    finally:
        for h in handles:
            h.remove()
    return shapes


def _with_batch(shape: torch.Size, batch: int) -> tuple[int, ...]:
    return (batch, *shape[1:])


def _batch_of(x: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.randn(batch, *x.shape[1:], generator=torch.Generator().manual_seed(0))


def _layouts(spec: LatencySpec, names: Any) -> dict[str, bool]:
    return dict.fromkeys(names, spec.layout == "channels_last")


def _fingerprint(probe: _LayerProbe, spec: LatencySpec) -> str:
    versions = {"torch": torch.__version__, "format": FORMAT, "grid": GRID,
                "calibration": CALIBRATION}  # fmt: skip
    if probe.graph.products:  # tables of attention models before its term are re-measured
        versions["attention"] = 1
    if spec.runtime != "torch":
        versions[spec.runtime] = getattr(__import__(spec.runtime), "__version__", "?")
    text = json.dumps([probe.describe(), spec.key(), _cpu_name(), os.cpu_count(), versions],
                      default=str)  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    return cache_root() / "latency"
