"""What every pruning method receives and returns, and the method registry.

A method is one class in one file. It gets a `PruneTask` (model, data, cost
target, training recipe, run folder) and returns a `PruneResult` whose model
is physically pruned. Training-time methods (CHEX, BWCP) implement their
work as `prunelab.train.Callback`s on the shared `Trainer`; post-training
methods (random, DWR) drive the `Trainer` themselves. The command line and
the report only ever talk to this interface.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn

from prunelab.data import DataBundle
from prunelab.errors import ConfigError, UnknownNameError
from prunelab.train import TrainConfig


@dataclass
class PruneTask:
    """Everything a method needs to produce a pruned model.

    `model` is trained for post-training methods and freshly initialised (or
    pretrained) for training-time ones. `target` is the cost to reach as a
    fraction of the dense model's `metric` ("flops": MACs, "params", or
    "latency": measured under `latency`, a `prunelab.latency_table.LatencySpec`
    mapping of batch, threads, runtime and layout).
    `train` is the recipe for the training the method does (fine-tuning, or
    training from scratch); `run_dir` is where the method may write files.
    """

    model: nn.Module
    data: DataBundle
    target: float = 0.5
    metric: str = "flops"
    train: TrainConfig = field(default_factory=TrainConfig)
    run_dir: Path | None = None
    seed: int = 0
    quiet: bool = False
    # The trained dense model (None when there is none): the `train.distill` teacher "dense".
    teacher: nn.Module | None = None
    latency: dict[str, Any] | None = None

    def require_metric(self, method: str, *metrics: str) -> None:
        """One clear error when this method cannot budget the task's metric.

        The error names the registered methods that can (their `Method.metrics`).
        """
        if self.metric not in metrics:
            able = sorted(n for n, cls in _METHODS.items() if self.metric in cls.metrics)
            others = f" (metric={self.metric}: methods {', '.join(able)})" if able else ""
            raise ConfigError(
                f"{method} budgets {' or '.join(metrics)}, not {self.metric}; "
                f"use metric={metrics[0]}{others}"
            )

    @property
    def example_input(self) -> torch.Tensor:
        """One input of the size the model sees, on the CPU."""
        return torch.zeros(1, *self.data.effective_input_size)

    def train_config(self, subdir: str | None = None, **changes: Any) -> TrainConfig:
        """The task's recipe with changes, writing to `run_dir/subdir` (None: no files)."""
        run_dir = str(self.run_dir / subdir) if self.run_dir is not None and subdir else None
        return self.train.replace(run_dir=run_dir, quiet=self.quiet or self.train.quiet, **changes)


@dataclass
class PruneResult:
    """A method's output: the pruned model, its training curves and method details.

    `test_metrics` are the task's test metrics of exactly `model` when the method
    has them already (its last training epoch evaluated this very model), so the
    caller need not evaluate it again (minutes for a detector); empty otherwise.
    """

    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    test_metrics: dict[str, Any] = field(default_factory=dict)


class Method:
    """Base class: subclasses set `name`, `summary`, `Options` and implement `run`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    # True when the method trains the network itself (from scratch or from a
    # pretrained model); False when it starts from a trained model.
    trains_from_scratch: ClassVar[bool] = False
    # The cost metrics a target may be given in (what `check` accepts).
    metrics: ClassVar[tuple[str, ...]] = ("flops", "params", "latency")

    @dataclass
    class Options:
        pass

    def __init__(self, **options: Any) -> None:
        fields = {f.name for f in dataclasses.fields(self.Options)}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise ConfigError(
                f"method {self.name!r} has no option(s) {unknown}; options: {sorted(fields)}"
            )
        self.options = self.Options(**options)

    def run(self, task: PruneTask) -> PruneResult:
        raise NotImplementedError

    def check(self, task: PruneTask) -> None:
        """Raise ConfigError if this method cannot run `task` (its metric, its data).

        The CLI calls it before a run writes anything; `run` calls it too, so the
        Python API gets the same one-line errors. The base method accepts every task.
        """

    def training_epochs(self, train: TrainConfig) -> float:
        """Epochs of training the method spends on its answer (fine-tuning or training).

        Search work that only chooses the architecture (candidate scoring, data
        collection) is not counted here; `prunelab compare` reports it separately.
        """
        return float(train.epochs)


_METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a name")
    _METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    try:
        return _METHODS[name]
    except KeyError:
        raise UnknownNameError("method", name, list(_METHODS)) from None


def list_methods() -> dict[str, type[Method]]:
    return dict(sorted(_METHODS.items()))
