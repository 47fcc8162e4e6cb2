"""Training helpers every method shares: fine-tune (and distill), data batches for criteria."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn as nn

from prunelab import io
from prunelab.data import DataBundle, in_random_order
from prunelab.errors import ConfigError
from prunelab.layers import BatchWhitening2d
from prunelab.methods.base import PruneTask
from prunelab.train import Callback, Distillation, TrainConfig, Trainer, evaluate_model, task_for
from prunelab.train.distill import DENSE_TEACHER


def fit(
    task: PruneTask,
    model: nn.Module,
    subdir: str | None,
    callbacks: Iterable[Callback] = (),
    **changes: Any,
) -> tuple[nn.Module, list[dict[str, Any]], dict[str, Any]]:
    """Train `model` with the task's recipe (plus `changes`); return model, history, final metrics.

    Checkpoints and the metrics log go to `task.run_dir/subdir`, so an
    interrupted run resumes there when the recipe says `resume`.
    """
    config = task.train_config(subdir, **changes)
    if config.epochs == 0:
        return model, [], {}
    callbacks = [*callbacks, *distillation(task, config)]
    trainer = Trainer(model, task.data, config, callbacks=callbacks)
    final = trainer.fit()
    model = trainer.model.to(memory_format=torch.contiguous_format).cpu()
    return model, trainer.history, final


def distillation(task: PruneTask, config: TrainConfig) -> list[Distillation]:
    """The distillation callback `config.distill` asks for (none when it is not set)."""
    if not config.distill:
        return []
    if not task_for(task.data).logits:
        raise ConfigError(f"train.distill matches class logits; the {task_for(task.data).name} "
                          f"task's model returns losses in training: drop train.distill")
    spec = config.distill["teacher"]
    if spec == DENSE_TEACHER:
        if task.teacher is None:
            raise ConfigError(
                "train.distill.teacher=dense needs a trained dense model: give a checkpoint "
                "(post-training) or a reference (from scratch), or a teacher file path"
            )
        teacher = copy.deepcopy(task.teacher)
    else:
        teacher = io.load(spec)
    return [Distillation(teacher, config.distill["weight"], config.distill["temperature"])]


def batches(
    task: PruneTask, n: int, split: str = "train"
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Up to `n` batches of a split ("train", "holdout", "test"), e.g. for data-driven criteria.

    Hold-out and test batches come in a fixed random order: those splits keep the
    data set's order, so their first batch would hold a single class.
    """
    loader = getattr(task.data, split)
    if loader is None:
        raise ValueError(f"the data has no {split} split")
    if split != "train":
        loader = in_random_order(loader, seed=0)
    cpu = torch.device("cpu")
    prepare = task_for(task.data).prepare  # targets may be a list of dicts (detection)
    for i, batch in enumerate(loader):
        if i >= n:
            break
        yield prepare(batch, cpu, False)


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], steps: int = 50
) -> nn.Module:
    """Re-estimate batch-norm running statistics on `steps` batches (cumulative average).

    A freshly pruned network's BN statistics describe the dense network's
    features; recomputing them is the cheapest repair, and what the random
    search uses to score candidates. Batch-whitening layers are re-estimated
    too. The model is left in eval mode.
    """
    norm_types = (nn.modules.batchnorm._BatchNorm, BatchWhitening2d)
    norms = [m for m in model.modules() if isinstance(m, norm_types)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches seen
    model.train()
    device = next(model.parameters()).device
    for i, (x, _) in enumerate(loader):
        if i >= steps:
            break
        model(x.to(device))
    for m, mom in zip(norms, saved, strict=True):
        m.momentum = mom
    return model.eval()


def headline(model: nn.Module, data: DataBundle) -> tuple[str, float]:
    """(name, value) of the data task's headline test metric (classification: top1 in %)."""
    task = task_for(data)
    return task.headline, evaluate_model(model, data.test, task)[task.headline]


@torch.no_grad()
def accuracy(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    max_batches: int | None = None,
) -> float:
    """Top-1 accuracy in percent of `model` (eval mode) over a loader."""
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        pred = model(x.to(device)).argmax(dim=1)
        correct += int((pred == y.to(device)).sum())
        total += len(y)
    return 100.0 * correct / max(total, 1)
