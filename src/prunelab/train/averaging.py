"""WeightAveraging: an average of the weights along the training trajectory, evaluated each epoch.

Two kinds, one callback:
- exponential moving average (`decay=d`): after every step avg <- d*avg + (1-d)*w,
  the Polyak-style EMA many recipes report;
- uniform average (`decay=None`): the plain mean of the weights after every step
  from `start_epoch` on, stochastic weight averaging (Izmailov et al., 2018).

Floating-point buffers (BatchNorm running statistics) are averaged the same
way, which is accurate when the averaged weights are close together (an EMA,
or a uniform average over a low-lr tail); integer buffers are copied. The
averaged weights live beside the model and never touch training: each
evaluation epoch they are swapped in, evaluated and swapped out, and their
metrics are logged as `<name>_test_top1` etc. (other callbacks' evaluation hooks
run for that evaluation too, so e.g. BN re-estimation sees the averaged weights).
`apply_to(model)` loads them for saving. If a method changes the model's shapes
(channel surgery) the average restarts from the new weights, since the old ones
no longer fit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from prunelab.errors import ConfigError
from prunelab.train.callbacks import Callback

if TYPE_CHECKING:
    from prunelab.train.loop import Trainer


class WeightAveraging(Callback):
    """Keep an EMA (`decay` in (0, 1)) or a uniform average (`decay=None`) of the model's state.

    Averaging starts with the first step of epoch `start_epoch` (0-based).
    `name` prefixes the logged metrics; by default "ema0.999" or "swa<start>".
    """

    def __init__(
        self,
        decay: float | None = 0.999,
        start_epoch: int = 0,
        name: str | None = None,
        evaluate: bool = True,
    ) -> None:
        if decay is not None and not 0.0 < decay < 1.0:
            raise ConfigError(
                f"weight averaging decay={decay!r}: must be in (0, 1), "
                f"or None for a uniform average"
            )
        if start_epoch < 0:
            raise ConfigError(f"weight averaging start_epoch={start_epoch!r}: must be >= 0")
        self.decay = decay
        self.start_epoch = int(start_epoch)
        self.name = name or (f"ema{decay:g}" if decay is not None else f"swa{start_epoch}")
        self.evaluate = evaluate
        self.averaged: dict[str, torch.Tensor] | None = None
        self.count = 0  # steps averaged so far

    # ------------------------------------------------------------- averaging
    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current state into the average (one step)."""
        current = model.state_dict()
        if not self._fits(current):
            self.averaged = {k: v.detach().clone() for k, v in current.items()}
            self.count = 1
            return
        assert self.averaged is not None
        weight = 1.0 / (self.count + 1) if self.decay is None else 1.0 - self.decay
        for key, avg in self.averaged.items():
            value = current[key]
            if avg.device != value.device:  # restored from a CPU checkpoint
                avg = self.averaged[key] = avg.to(value.device)
            if avg.is_floating_point():
                avg.lerp_(value.detach(), weight)
            else:
                avg.copy_(value)
        self.count += 1

    def _fits(self, current: dict[str, torch.Tensor]) -> bool:
        return (
            self.averaged is not None
            and self.averaged.keys() == current.keys()
            and all(self.averaged[k].shape == v.shape for k, v in current.items())
        )

    def apply_to(self, model: nn.Module) -> None:
        """Load the averaged weights into `model` (e.g. before saving it)."""
        if self.averaged is None:
            raise ConfigError(
                f"weight average {self.name!r} is empty: no step reached "
                f"its start epoch {self.start_epoch}"
            )
        model.load_state_dict(self.averaged)

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[nn.Module]:
        """Within the block `model` holds the averaged weights; its own come back after."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.apply_to(model)
        try:
            yield model
        finally:
            model.load_state_dict(own)

    # ----------------------------------------------------------------- hooks
    def on_step_end(self, trainer: Trainer) -> None:
        if trainer.epoch >= self.start_epoch:
            self.update(trainer.model)

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        task = trainer.task
        if not self.evaluate or self.averaged is None or f"test_{task.headline}" not in metrics:
            return
        with self.swapped_in(trainer.model):
            result = trainer.evaluate(log=False)
        trainer.log(**{self.metric_key(k): result[k] for k in task.metrics})

    def metric_key(self, metric: str) -> str:
        """The log field of one of this average's test metrics, e.g. "ema0.999_test_top1"."""
        return f"{self.name}_test_{metric}"

    def final_top1(self, trainer: Trainer) -> float:
        """The average's test headline metric (top-1 for classification) after the last epoch.

        Read from the last epoch's log, not evaluated again.
        """
        last = trainer.history[-1] if trainer.history else {}
        key = self.metric_key(trainer.task.headline)
        if key not in last:
            raise ConfigError(f"weight average {self.name!r} was not evaluated in the last epoch")
        return float(last[key])

    def state_dict(self) -> dict[str, Any]:
        return {"averaged": self.averaged, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged = state["averaged"]
        self.count = int(state["count"])
