"""Training helpers every method shares: fine-tune, and data batches for criteria."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn as nn

from prunelab.methods.base import PruneTask
from prunelab.train import Callback, Trainer


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
    trainer = Trainer(model, task.data, config, callbacks=callbacks)
    final = trainer.fit()
    model = trainer.model.to(memory_format=torch.contiguous_format).cpu()
    return model, trainer.history, final


def batches(
    task: PruneTask, n: int, split: str = "train"
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Up to `n` batches of a split ("train", "holdout", "test"), e.g. for data-driven criteria."""
    loader = getattr(task.data, split)
    if loader is None:
        raise ValueError(f"the data has no {split} split")
    for i, batch in enumerate(loader):
        if i >= n:
            break
        yield batch[0].cpu(), batch[1].cpu()
