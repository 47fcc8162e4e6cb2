"""Knowledge distillation from a teacher network, as a loss callback on the shared Trainer.

Hinton et al. (2015): the student's loss becomes

    (1 - α) · CE(student, labels) + α · T² · KL(softmax(teacher / T) ‖ softmax(student / T))

The Trainer computes the task loss CE (with its label smoothing) itself; this
callback adds `α · (T² · KL - CE)` through `extra_loss`, so the sum is exactly
the formula above while the logged `train_loss` stays the plain label loss,
comparable across runs with and without a teacher. The teacher runs in eval
mode under `no_grad`, in the student's memory layout, on the same batch; it is
never handed to the optimizer, so its weights cannot change. Under DDP every
rank runs its own teacher copy on its own shard; nothing is communicated.

`train.distill: {teacher: dense | PATH, weight: α, temperature: T}` in a run
configuration turns it on for every training a method does (`methods.finetune.fit`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from prunelab.errors import ConfigError
from prunelab.train.callbacks import Callback

if TYPE_CHECKING:
    from prunelab.train.loop import Trainer

DISTILL_KEYS = {"teacher", "weight", "temperature"}
DENSE_TEACHER = "dense"  # the run's own trained dense model


def check_distill(options: dict[str, Any]) -> dict[str, Any]:
    """Validate a `train.distill` mapping and fill its defaults (α 0.9, T 4)."""
    if not isinstance(options, dict):
        raise ConfigError(f"train.distill must be a mapping of {sorted(DISTILL_KEYS)}, "
                          f"got {options!r}")  # fmt: skip
    unknown = sorted(set(options) - DISTILL_KEYS)
    if unknown:
        raise ConfigError(f"train.distill has no option(s) {unknown}; options: "
                          f"{sorted(DISTILL_KEYS)}")  # fmt: skip
    out = {"teacher": DENSE_TEACHER, "weight": 0.9, "temperature": 4.0, **options}
    if not isinstance(out["teacher"], str) or not out["teacher"]:
        raise ConfigError("train.distill.teacher must be 'dense' or the path of a model file")
    try:
        out["weight"], out["temperature"] = float(out["weight"]), float(out["temperature"])
    except (TypeError, ValueError):
        raise ConfigError("train.distill weight and temperature must be numbers") from None
    if not 0.0 <= out["weight"] <= 1.0:
        raise ConfigError(f"train.distill.weight must be in [0, 1], got {out['weight']}")
    if out["temperature"] <= 0:
        raise ConfigError(f"train.distill.temperature must be > 0, got {out['temperature']}")
    return out


def kd_term(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over the batch."""
    t = temperature
    log_p_student = F.log_softmax(student.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher.float() / t, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * t * t


class Distillation(Callback):
    """Adds the distillation term of `teacher`'s logits to every training step."""

    def __init__(self, teacher: nn.Module, weight: float = 0.9, temperature: float = 4.0) -> None:
        check_distill({"teacher": "given", "weight": weight, "temperature": temperature})
        self.teacher = teacher
        self.weight = float(weight)
        self.temperature = float(temperature)
        self._logits: torch.Tensor | None = None
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def on_train_start(self, trainer: Trainer) -> None:
        self.teacher.to(trainer.device).eval()
        if trainer.channels_last:
            self.teacher.to(memory_format=torch.channels_last)

    def on_step_start(self, trainer: Trainer, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.teacher.eval()  # a stray .train() on the teacher would update its BN statistics
        with torch.no_grad(), trainer._autocast():
            self._logits = self.teacher(batch[0])

    def extra_loss(
        self, trainer: Trainer, outputs: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor | None:
        if self._logits is None:
            return None
        kd = kd_term(outputs, self._logits, self.temperature)
        label = trainer.criterion(outputs, targets)
        self._logits = None
        return self.weight * (kd - label)

    def on_train_end(self, trainer: Trainer) -> None:
        self.teacher.cpu()
