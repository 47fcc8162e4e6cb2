"""Wall-clock latency of inference and of training steps, measured fairly.

FLOPs do not decide speed: channel counts that suit the kernels and the
memory layout (NCHW or channels_last) can matter more, and a pruned model
can even be slower than the dense one (see DESIGN.md). So prunelab measures.

Fairness rules used throughout:

* several models are timed interleaved, round-robin, in one run, with the
  starting model rotating each round, so machine noise (other processes,
  frequency scaling) hits all of them alike;
* warm-up calls are made before timing and not recorded;
* the torch thread count is set for the measurement and restored after;
* garbage collection is paused while timing;
* the median and 10th/90th percentiles are reported, not the mean.

Inference runs in eval mode under ``torch.inference_mode`` (the models'
modes are restored afterwards). Training steps run on deep copies, so the
caller's weights and BatchNorm statistics never change.
"""

from __future__ import annotations

import copy
import gc
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn

from prunelab.errors import ConfigError

__all__ = [
    "LatencyStats",
    "best_memory_format",
    "compare_latency",
    "compare_train_step",
    "measure_latency",
    "measure_train_step",
    "stats_of",
    "time_callables",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LatencyStats:
    """Timing of one model: median and 10th/90th percentile in milliseconds.

    `speedup` is set by the compare functions: the baseline's (first
    model's) median divided by this one's, so > 1 means faster.
    """

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    repeats: int
    threads: int
    speedup: float | None = None
    samples_ms: tuple[float, ...] = field(default=(), repr=False, compare=False)

    def __str__(self) -> str:
        text = (
            f"{self.median_ms:.2f} ms (p10 {self.p10_ms:.2f}, p90 {self.p90_ms:.2f}, "
            f"n={self.repeats}, {self.threads} threads)"
        )
        if self.speedup is not None:
            text += f", {self.speedup:.2f}x vs baseline"
        return text


def _stats(samples: list[float], threads: int) -> LatencyStats:
    if len(samples) >= 2:
        deciles = statistics.quantiles(samples, n=10, method="inclusive")
        p10, p90 = deciles[0], deciles[-1]
    else:
        p10 = p90 = samples[0]
    return LatencyStats(
        median_ms=statistics.median(samples),
        p10_ms=p10,
        p90_ms=p90,
        mean_ms=statistics.fmean(samples),
        repeats=len(samples),
        threads=threads,
        samples_ms=tuple(samples),
    )


def stats_of(samples: list[float], threads: int) -> LatencyStats:
    """Median and percentiles of timings (ms) gathered elsewhere, e.g. over several runs."""
    return _stats(list(samples), threads)


@contextmanager
def _thread_count(threads: int | None) -> Iterator[int]:
    """Use `threads` intra-op threads inside the block (None: leave as is)."""
    previous = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


@contextmanager
def _eval_modes(models: list[nn.Module]) -> Iterator[None]:
    """Eval mode inside the block; every submodule's own mode restored after."""
    modes = [(m, m.training) for model in models for m in model.modules()]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for module, training in modes:
            module.training = training


def _check_counts(repeats: int, warmup: int) -> None:
    if repeats < 1:
        raise ConfigError(f"repeats must be at least 1, got {repeats}")
    if warmup < 0:
        raise ConfigError(f"warmup must be >= 0, got {warmup}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _to_layout(
    model: nn.Module, x: torch.Tensor, channels_last: bool
) -> tuple[nn.Module, torch.Tensor]:
    """The model and input in the requested layout; a copy is made only to convert."""
    if not channels_last:
        return model, x
    if x.dim() != 4:
        raise ConfigError(
            f"channels_last needs a 4-D (N, C, H, W) input, got shape {tuple(x.shape)}"
        )
    converted = copy.deepcopy(model).to(memory_format=torch.channels_last)
    return converted, x.contiguous(memory_format=torch.channels_last)


def _time_round_robin(
    runners: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int,
    device: torch.device,
) -> dict[str, list[float]]:
    """Call every runner `warmup` times, then time `repeats` rounds, rotating the order."""
    names = list(runners)
    for _ in range(warmup):
        for name in names:
            runners[name]()
    _sync(device)
    samples: dict[str, list[float]] = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    if gc_was_enabled:  # a caller timing in several calls pauses it (a collection takes seconds)
        gc.collect()
        gc.disable()
    try:
        for round_index in range(repeats):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                runners[name]()
                _sync(device)
                samples[name].append((time.perf_counter() - start) * 1000.0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def _per_model(value: object, names: list[str], what: str) -> dict:
    """Expand a shared value, or check a per-model mapping covers every model."""
    if isinstance(value, Mapping):
        missing = [name for name in names if name not in value]
        if missing:
            raise ConfigError(f"{what} given per model but missing for {missing}")
        return {name: value[name] for name in names}
    return dict.fromkeys(names, value)


def _with_speedups(samples: dict[str, list[float]], threads: int) -> dict[str, LatencyStats]:
    stats = {name: _stats(values, threads) for name, values in samples.items()}
    baseline = next(iter(stats.values())).median_ms
    return {name: replace(s, speedup=baseline / s.median_ms) for name, s in stats.items()}


def time_callables(
    runners: Mapping[str, Callable[[], object]],
    repeats: int = 30,
    warmup: int = 5,
    threads: int | None = None,
) -> dict[str, LatencyStats]:
    """Time ready-made calls (e.g. other runtimes' sessions) round-robin; the first is the baseline.

    `threads` sets torch's thread count only; a runtime's own sessions take
    theirs when they are built.
    """
    _check_counts(repeats, warmup)
    if not runners:
        raise ConfigError("time_callables needs at least one runner")
    with _thread_count(threads) as used_threads:
        samples = _time_round_robin(dict(runners), repeats, warmup, torch.device("cpu"))
    return _with_speedups(samples, used_threads)


def compare_latency(
    models: Mapping[str, nn.Module],
    example_input: torch.Tensor | Mapping[str, torch.Tensor],
    repeats: int = 30,
    warmup: int = 5,
    threads: int | None = None,
    channels_last: bool | Mapping[str, bool] = False,
) -> dict[str, LatencyStats]:
    """Inference latency of several models measured interleaved; the first is the baseline.

    `example_input` and `channels_last` may be given per model name (a
    resolution-pruned model runs on a smaller input; one model may be
    compared with itself in both layouts). Each result's `speedup` is the
    baseline median over its median.
    """
    _check_counts(repeats, warmup)
    names = list(models)
    if not names:
        raise ConfigError("compare_latency needs at least one model")
    inputs = _per_model(example_input, names, "example_input")
    layouts = _per_model(channels_last, names, "channels_last")
    prepared = {name: _to_layout(models[name], inputs[name], layouts[name]) for name in names}
    device = next(iter(inputs.values())).device

    def runner(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
        return lambda: model(x)

    runners = {name: runner(*prepared[name]) for name in names}
    with (
        _thread_count(threads) as used_threads,
        _eval_modes([model for model, _ in prepared.values()]),
        torch.inference_mode(),
    ):
        samples = _time_round_robin(runners, repeats, warmup, device)
    return _with_speedups(samples, used_threads)


def measure_latency(
    model: nn.Module,
    example_input: torch.Tensor,
    repeats: int = 30,
    warmup: int = 5,
    threads: int | None = None,
    channels_last: bool = False,
) -> LatencyStats:
    """Inference latency of one forward pass on `example_input` (whole batch), in ms."""
    stats = compare_latency(
        {"model": model}, example_input, repeats, warmup, threads, channels_last
    )["model"]
    return replace(stats, speedup=None)


def _train_step_runner(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor | None,
    loss_fn: LossFn | None,
    lr: float,
) -> Callable[[], object]:
    """One SGD step (forward, loss, backward, update) on `model`, already a private copy."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    criterion = loss_fn if loss_fn is not None else nn.functional.cross_entropy

    def step() -> object:
        optimizer.zero_grad(set_to_none=True)
        output = model(x)
        loss = output.float().mean() if targets is None else criterion(output, targets)
        loss.backward()
        optimizer.step()
        return None

    return step


def compare_train_step(
    models: Mapping[str, nn.Module],
    example_input: torch.Tensor | Mapping[str, torch.Tensor],
    targets: torch.Tensor | None,
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    channels_last: bool | Mapping[str, bool] = False,
    loss_fn: LossFn | None = None,
    lr: float = 0.01,
) -> dict[str, LatencyStats]:
    """Training-step time (forward + backward + SGD step) of several models, interleaved.

    Runs on deep copies in train mode; the callers' models are untouched.
    `targets` feed `loss_fn` (default cross-entropy); with None the loss is
    the output's mean, enough to time the backward pass.
    """
    _check_counts(repeats, warmup)
    names = list(models)
    if not names:
        raise ConfigError("compare_train_step needs at least one model")
    inputs = _per_model(example_input, names, "example_input")
    layouts = _per_model(channels_last, names, "channels_last")
    runners = {}
    for name in names:
        # channels_last conversion already copies; otherwise copy here.
        model = models[name] if layouts[name] else copy.deepcopy(models[name])
        model, x = _to_layout(model, inputs[name], layouts[name])
        runners[name] = _train_step_runner(model, x, targets, loss_fn, lr)
    device = next(iter(inputs.values())).device
    with _thread_count(threads) as used_threads:
        samples = _time_round_robin(runners, repeats, warmup, device)
    return _with_speedups(samples, used_threads)


def measure_train_step(
    model: nn.Module,
    example_input: torch.Tensor,
    targets: torch.Tensor | None,
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    channels_last: bool = False,
    loss_fn: LossFn | None = None,
    lr: float = 0.01,
) -> LatencyStats:
    """Median time of one training step (forward + backward + SGD step) in ms, on a copy."""
    stats = compare_train_step(
        {"model": model}, example_input, targets, repeats, warmup, threads,
        channels_last, loss_fn, lr,
    )["model"]  # fmt: skip
    return replace(stats, speedup=None)


def best_memory_format(
    model: nn.Module,
    example_input: torch.Tensor,
    train: bool = False,
    repeats: int = 10,
    warmup: int = 2,
    threads: int | None = None,
    targets: torch.Tensor | None = None,
    loss_fn: LossFn | None = None,
) -> torch.memory_format:
    """Time NCHW against channels_last and return the faster memory format.

    With ``train=True`` a training step (forward + backward + update) is
    timed instead of inference, its loss `loss_fn` (cross-entropy if None).
    Inputs that are not 4-D can only be
    contiguous. Apply with ``model.to(memory_format=fmt)`` and
    ``x.contiguous(memory_format=fmt)``.
    """
    if example_input.dim() != 4:
        return torch.contiguous_format
    models = {"nchw": model, "channels_last": model}
    layouts = {"nchw": False, "channels_last": True}
    if train:
        stats = compare_train_step(
            models, example_input, targets, repeats, warmup, threads, layouts, loss_fn
        )
    else:
        stats = compare_latency(models, example_input, repeats, warmup, threads, layouts)
    if stats["channels_last"].median_ms < stats["nchw"].median_ms:
        return torch.channels_last
    return torch.contiguous_format
