"""Callback: how a training-time method (CHEX, BWCP, ...) changes training without editing the loop.

Order of hooks in `Trainer.fit()`:

    on_train_start                      (then a checkpoint is restored if resuming)
    per epoch:
        on_epoch_start
        per step:
            on_step_start(batch)        batch = (inputs, targets), already on the device
            forward; loss = task loss + sum of extra_loss(outputs, targets)
                                        (what inputs, targets and outputs are is the task's:
                                        classification: images, labels, logits; see tasks.py)
            backward
            after_backward              gradients are unscaled (AMP) and DDP-averaged here
            (gradient clipping, learning rate set, optimizer step)
            on_step_end
        before_evaluate, evaluate, on_evaluate(metrics)   (every `eval_every` epochs, the last)
        on_epoch_end(metrics)           then the epoch is logged and checkpointed
    on_train_end

A callback that changes the model's parameters (replaces modules, removes
channels) must call `trainer.rebuild_optimizer()` afterwards. State returned
by `state_dict()` is stored in each checkpoint and handed back to
`load_state_dict()` on resume; keep it to tensors, numbers, strings and
lists/dicts of them so checkpoints load with `weights_only=True`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from prunelab.train.loop import Trainer


class Callback:
    """Base class: every hook is a no-op; override the ones a method needs."""

    def on_train_start(self, trainer: Trainer) -> None:
        """Before the first epoch (also on resume, before the checkpoint is loaded)."""

    def param_groups(self, trainer: Trainer, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Adjust optimizer parameter groups (e.g. no decay or own lr for gate logits).

        Called whenever the optimizer is (re)built. A group's "lr" is its base rate
        that the schedule scales.
        """
        return groups

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """At the start of epoch `epoch` (0-based)."""

    def on_step_start(self, trainer: Trainer, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Before the forward pass of a training step."""

    def extra_loss(
        self, trainer: Trainer, outputs: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor | None:
        """A term added to the task loss (e.g. a sparsity penalty); None adds nothing."""
        return None

    def after_backward(self, trainer: Trainer) -> None:
        """Edit gradients before the optimizer step (e.g. zero pruned channels' gradients)."""

    def on_step_end(self, trainer: Trainer) -> None:
        """After the optimizer step (e.g. re-apply masks to the weights)."""

    def before_evaluate(self, trainer: Trainer) -> None:
        """Before an evaluation (e.g. re-estimate norm statistics for the eval-time model)."""

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """After an evaluation; `metrics` has the task's metrics (`trainer.task.metrics`), samples.

        Classification: top1, top5 (percent), loss.
        """

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        """After epoch `epoch` (0-based) trained and maybe evaluated, before the checkpoint.

        `metrics` is the epoch's log record; add fields with `trainer.log(...)`.
        """

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last epoch."""

    def state_dict(self) -> dict[str, Any]:
        """What this callback needs to resume exactly."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict()` returned."""
