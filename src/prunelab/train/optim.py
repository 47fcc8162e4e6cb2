"""Optimizer construction and the per-step learning-rate schedule.

The schedule is a pure function of the global step, not a stateful torch
LRScheduler: resuming, or rebuilding the optimizer after pruning, only needs
the step number, and the value at any step can be checked in a test.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from prunelab.errors import ConfigError
from prunelab.train.config import TrainConfig


class LRSchedule:
    """Multiplier of each parameter group's base lr as a function of the global step.

    Linear warm-up over `warmup_epochs` (the first step already trains at
    base/warmup_steps), then one of: `constant`; `step` (x gamma at each
    milestone epoch); `cosine` from the base lr down to `min_lr` at the end of
    training. Each group's own base rate is kept in its "base_lr" entry, so groups
    with different rates (e.g. a method's gate parameters) follow one shape.
    """

    def __init__(self, config: TrainConfig, steps_per_epoch: int, base_lr: float) -> None:
        if steps_per_epoch < 1:
            raise ConfigError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.kind = config.schedule
        self.base_lr = base_lr
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = max(1, config.epochs * steps_per_epoch)
        self.warmup_steps = round(config.warmup_epochs * steps_per_epoch)
        self.milestone_steps = [round(m * steps_per_epoch) for m in config.milestones]
        self.gamma = config.gamma
        self.min_factor = config.min_lr / config.lr if config.lr > 0 else 0.0
        self.last_step = 0

    def factor(self, step: int) -> float:
        """lr / base_lr at optimizer step `step` (0-based)."""
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        if self.kind == "constant":
            main = 1.0
        elif self.kind == "step":
            main = self.gamma ** sum(step >= m for m in self.milestone_steps)
        else:  # cosine over the steps after warm-up, reaching min_lr when training ends
            span = max(1, self.total_steps - self.warmup_steps)
            t = min(1.0, max(0.0, (step - self.warmup_steps) / span))
            main = self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))
        return warm * main

    def lr(self, step: int) -> float:
        """The main group's learning rate at `step`."""
        return self.base_lr * self.factor(step)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's lr for `step`; returns the factor."""
        f = self.factor(step)
        for group in optimizer.param_groups:
            group["lr"] = group.setdefault("base_lr", group["lr"]) * f
        self.last_step = step
        return f

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_step = int(state.get("last_step", 0))


def param_groups(
    model: nn.Module, weight_decay: float, no_decay_bn_bias: bool
) -> list[dict[str, Any]]:
    """Trainable parameters split into a decayed group and (optionally) a no-decay group.

    With `no_decay_bn_bias`, every parameter with fewer than 2 dimensions
    (biases, BatchNorm/GroupNorm/LayerNorm scales and shifts, and the same in
    any replacement normalisation a method installs) gets weight decay 0, as
    in the NVIDIA/CHEX ImageNet recipe. Empty groups are left out.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if no_decay_bn_bias and p.ndim <= 1 else decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, "name": "decay"})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "name": "no_decay"})
    return groups


def build_optimizer(
    groups: Iterable[dict[str, Any]], config: TrainConfig, base_lr: float
) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov) or Adam/AdamW over prepared parameter groups."""
    groups = list(groups)
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    for g in groups:
        g.setdefault("lr", base_lr)
        g.setdefault("base_lr", g["lr"])
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=base_lr, momentum=config.momentum,
                               nesterov=config.nesterov, weight_decay=config.weight_decay)
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, lr=base_lr, betas=config.betas, weight_decay=config.weight_decay)
