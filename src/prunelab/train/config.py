"""TrainConfig: every knob of the training loop in one flat, checked dataclass.

Flat on purpose: it maps one-to-one to command-line flags and YAML keys, and a
run's config is stored in its checkpoint and log. `PRESETS` holds the recipes
the papers use so that "the CIFAR step schedule" means one thing everywhere.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from prunelab.errors import ConfigError
from prunelab.train.distill import check_distill

_OPTIMIZERS = ("sgd", "adam", "adamw")
_SCHEDULES = ("step", "cosine", "constant")
_TRISTATE = ("auto", "on", "off")
_LAYOUTS = (*_TRISTATE, "best")
_AMP = ("auto", "off", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Hyper-parameters and run settings of one training run.

    Learning rates: `lr` is the peak rate for a global batch of
    `lr_ref_batch` images when that is set (then scaled linearly to the actual
    global batch, e.g. lr=0.256, lr_ref_batch=256 gives 1.024 at batch 1024),
    else the peak rate as is. `batch_size` is per process (None: keep the
    loader's); the global batch is batch_size x world size. `milestones`,
    `warmup_epochs` and `eval_every` are in epochs; the schedule itself is
    evaluated per optimizer step, so warm-up and cosine are smooth.
    """

    epochs: int = 1
    batch_size: int | None = None
    optimizer: str = "sgd"
    lr: float = 0.1
    lr_ref_batch: int | None = None
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 5e-4
    no_decay_bn_bias: bool = False
    schedule: str = "cosine"
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    seed: int = 0
    eval_every: int = 1
    steps_per_epoch: int | None = None
    checkpoint_every: int = 1
    channels_last: str = "auto"
    amp: str = "auto"
    device: str = "auto"
    threads: int | None = None
    deterministic: bool = False
    sync_bn: bool = False
    find_unused_parameters: bool = False
    quiet: bool = False
    progress_seconds: float = 30.0
    run_dir: str | None = None
    resume: bool = False
    # {teacher: dense | PATH, weight: α, temperature: T}: knowledge distillation (train/distill.py)
    distill: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.channels_last, bool):
            self.channels_last = "on" if self.channels_last else "off"
        if isinstance(self.amp, bool):
            self.amp = "auto" if self.amp else "off"
        self.milestones = tuple(float(m) for m in self.milestones)
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        self.optimizer = self.optimizer.lower()
        self.schedule = self.schedule.lower()
        self.channels_last = str(self.channels_last).lower()
        self.amp = str(self.amp).lower()
        if self.run_dir is not None:
            self.run_dir = str(self.run_dir)
        if self.distill is not None:
            self.distill = check_distill(self.distill)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first bad value."""
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"train config {name}={getattr(self, name)!r}: {why}")

        if self.epochs < 0:
            raise bad("epochs", "must be >= 0")
        if self.batch_size is not None and self.batch_size < 1:
            raise bad("batch_size", "must be >= 1")
        if self.optimizer not in _OPTIMIZERS:
            raise bad("optimizer", f"choose one of {', '.join(_OPTIMIZERS)}")
        if self.schedule not in _SCHEDULES:
            raise bad("schedule", f"choose one of {', '.join(_SCHEDULES)}")
        if self.channels_last not in _LAYOUTS:
            raise bad("channels_last", f"choose one of {', '.join(_LAYOUTS)}")
        if self.amp not in _AMP:
            raise bad("amp", f"choose one of {', '.join(_AMP)}")
        if self.lr <= 0:
            raise bad("lr", "must be > 0")
        if self.lr_ref_batch is not None and self.lr_ref_batch < 1:
            raise bad("lr_ref_batch", "must be >= 1")
        if not 0 <= self.momentum < 1:
            raise bad("momentum", "must be in [0, 1)")
        if self.nesterov and self.momentum == 0:
            raise bad("nesterov", "needs momentum > 0")
        if self.weight_decay < 0:
            raise bad("weight_decay", "must be >= 0")
        if not 0 < self.gamma <= 1:
            raise bad("gamma", "must be in (0, 1]")
        if self.warmup_epochs < 0:
            raise bad("warmup_epochs", "must be >= 0")
        if self.min_lr < 0 or self.min_lr > self.lr:
            raise bad("min_lr", "must be in [0, lr]")
        if not 0 <= self.label_smoothing < 1:
            raise bad("label_smoothing", "must be in [0, 1)")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise bad("grad_clip", "must be > 0 (or None)")
        if self.eval_every < 1:
            raise bad("eval_every", "must be >= 1")
        if self.checkpoint_every < 1:
            raise bad("checkpoint_every", "must be >= 1")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise bad("steps_per_epoch", "must be >= 1 (or None for full epochs)")
        if self.threads is not None and self.threads < 1:
            raise bad("threads", "must be >= 1")
        if any(m < 0 for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            raise bad("milestones", "must be increasing epoch numbers >= 0")
        if self.resume and not self.run_dir:
            raise bad("resume", "needs run_dir (where the checkpoint is)")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples as lists) for logs, YAML and checkpoints."""
        out = dataclasses.asdict(self)
        out["milestones"] = list(self.milestones)
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict (YAML, CLI), rejecting unknown keys by name."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown train config key(s) {unknown}; known: {sorted(names)}")
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown train config key(s) {unknown}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> TrainConfig:
        """A named recipe from PRESETS, with overrides."""
        if name not in PRESETS:
            raise ConfigError(f"unknown train preset {name!r}; known: {sorted(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})


PRESETS: dict[str, dict[str, Any]] = {
    # He et al. 2016 CIFAR recipe: 160 epochs, lr 0.1, /10 at epochs 80 and 120.
    "cifar_step": {
        "epochs": 160, "batch_size": 128, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9,
        "weight_decay": 1e-4, "schedule": "step", "milestones": (80, 120), "gamma": 0.1,
    },
    # A cosine CIFAR recipe, common in the pruning papers' fine-tuning.
    "cifar_cosine": {
        "epochs": 160, "batch_size": 128, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9,
        "weight_decay": 5e-4, "schedule": "cosine",
    },
    # CHEX ImageNet (NVIDIA ResNet-50 recipe): global batch 1024 at lr 1.024 (0.256 per 256),
    # momentum 0.875, 8 warm-up epochs, cosine to zero, wd 3.05e-5 not on BN/bias,
    # label smoothing 0.1, 250 epochs.
    "imagenet_chex": {
        "epochs": 250, "optimizer": "sgd", "lr": 0.256, "lr_ref_batch": 256, "momentum": 0.875,
        "weight_decay": 3.05e-5, "no_decay_bn_bias": True, "schedule": "cosine",
        "warmup_epochs": 8, "min_lr": 0.0, "label_smoothing": 0.1,
    },
    # Short schedule for quick checks and demos (a few hundred steps).
    "quick": {
        "epochs": 2, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
        "schedule": "cosine", "steps_per_epoch": 50,
    },
}
