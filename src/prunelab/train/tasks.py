"""Tasks: what a batch, a loss and an evaluation are, so one Trainer serves every task.

A task tells the loop four things and nothing else:

    inputs, targets = task.prepare(batch, device, channels_last)   # on the device
    outputs = task.forward(model, inputs, targets)  # training: model(inputs) for classifiers
    loss = criterion(outputs, targets)        # criterion = task.criterion(config)
    meter.update(outputs, targets)            # train_meter / eval_meter; compute() per epoch

plus the names of its metrics (`metrics`, the first is the headline a table
reports). Methods and callbacks never see the task: they get `batch` =
(inputs, targets) and `outputs`, whatever those are. Meters keep their sums on
the device and synchronise once, in `compute()`, which also sums over DDP ranks.

Tasks: `classification` (top-1/top-5 %, the default) and
`pointcloud_classification` (overall accuracy and mean class accuracy, %);
`detection` and `instance_segmentation` (COCO mAP) live in detection_tasks.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.errors import UnknownNameError
from prunelab.train import distributed as D

Criterion = Callable[[Any, Any], torch.Tensor]


class Meter:
    """Accumulates one metric family over batches; `compute()` reads it (all ranks summed)."""

    def update(self, outputs: Any, targets: Any) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        raise NotImplementedError


def _topk_correct(outputs: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, outputs.shape[1])
    top = outputs.topk(k, dim=1).indices
    return (top == targets.view(-1, 1)).any(dim=1).sum()


class TrainAccuracy(Meter):
    """Top-1 of the training batches as they were trained on (no extra forward pass)."""

    def __init__(self, device: torch.device, name: str = "top1") -> None:
        self.name = name
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.seen = torch.zeros((), device=device)

    def update(self, outputs: Any, targets: Any) -> None:
        self.correct += (outputs.detach().argmax(dim=1) == targets).sum()
        self.seen += targets.shape[0]

    def compute(self) -> dict[str, float]:
        correct, n = D.all_reduce_sum(torch.stack([self.correct.float(), self.seen])).tolist()
        return {self.name: 100.0 * correct / max(n, 1.0)}


class TopKAccuracy(Meter):
    """Top-1 / top-5 (percent) and mean cross-entropy, in float64 sums."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(4, device=device, dtype=torch.float64)

    def update(self, outputs: Any, targets: Any) -> None:
        out = outputs.float()
        self.sums[0] += F.cross_entropy(out, targets, reduction="sum").double()
        self.sums[1] += _topk_correct(out, targets, 1)
        self.sums[2] += _topk_correct(out, targets, 5)
        self.sums[3] += targets.shape[0]

    def compute(self) -> dict[str, float]:
        loss_sum, c1, c5, n = D.all_reduce_sum(self.sums).tolist()
        denom = max(n, 1.0)
        return {"top1": 100.0 * c1 / denom, "top5": 100.0 * c5 / denom,
                "loss": loss_sum / denom, "samples": int(n)}


class ClassAccuracy(Meter):
    """Overall accuracy, mean per-class accuracy (percent) and mean cross-entropy.

    Mean class accuracy averages the accuracy of each class that occurs in
    the evaluated set (PointNet/PointNet++'s "avg. class accuracy").
    """

    def __init__(self, device: torch.device, num_classes: int) -> None:
        self.num_classes = num_classes
        # [per-class correct, per-class count, loss sum]
        self.sums = torch.zeros(2 * num_classes + 1, device=device, dtype=torch.float64)

    def update(self, outputs: Any, targets: Any) -> None:
        out = outputs.float()
        k = self.num_classes
        hit = (out.argmax(dim=1) == targets).double()
        self.sums[:k] += torch.zeros(k, device=out.device, dtype=torch.float64).index_add_(
            0, targets, hit)
        self.sums[k:2 * k] += torch.bincount(targets, minlength=k).double()
        self.sums[-1] += F.cross_entropy(out, targets, reduction="sum").double()

    def compute(self) -> dict[str, float]:
        sums = D.all_reduce_sum(self.sums).cpu()
        k = self.num_classes
        correct, count = sums[:k], sums[k:2 * k]
        n = float(count.sum())
        present = count > 0
        per_class = correct[present] / count[present]
        return {
            "overall_acc": 100.0 * float(correct.sum()) / max(n, 1.0),
            "mean_class_acc": 100.0 * float(per_class.mean()) if present.any() else 0.0,
            "loss": float(sums[-1]) / max(n, 1.0),
            "samples": int(n),
        }


class Task:
    """Image classification: (images, labels) batches, cross-entropy, top-1/top-5."""

    name: ClassVar[str] = "classification"
    metrics: ClassVar[tuple[str, ...]] = ("top1", "top5", "loss")  # first = headline
    train_metric: ClassVar[str | None] = "top1"  # None: the task logs no training metric
    channels_last: ClassVar[bool] = True  # inputs are NCHW images that may use channels_last
    logits: ClassVar[bool] = True  # training outputs are class logits (distillation matches them)

    def __init__(self, num_classes: int | None = None) -> None:
        self.num_classes = num_classes

    @property
    def headline(self) -> str:
        return self.metrics[0]

    def prepare(self, batch: Any, device: torch.device, channels_last: bool) -> tuple[Any, Any]:
        x, y = batch
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def forward(self, model: nn.Module, inputs: Any, targets: Any) -> Any:
        """The model's training-mode output (detection models also take the targets)."""
        return model(inputs)

    def batch_size(self, targets: Any) -> int:
        return int(targets.shape[0])

    def criterion(self, config: Any) -> Criterion:
        return nn.CrossEntropyLoss(label_smoothing=getattr(config, "label_smoothing", 0.0))

    def train_meter(self, device: torch.device) -> Meter:
        return TrainAccuracy(device, self.train_metric)

    def eval_meter(self, device: torch.device) -> Meter:
        return TopKAccuracy(device)

    def example_targets(self, batch: int, device: torch.device) -> Any:
        """Random targets for timing a training step (memory-layout choice)."""
        return torch.randint(0, self.num_classes or 1, (batch,), device=device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_classes={self.num_classes})"


class PointCloudClassification(Task):
    """Point clouds (B, 3, N) with one label each: overall and mean class accuracy.

    The loss is the same cross-entropy; only the inputs (no memory-layout
    change for (B, 3, N) tensors) and the metrics differ from images.
    """

    name = "pointcloud_classification"
    metrics = ("overall_acc", "mean_class_acc", "loss")
    train_metric = "overall_acc"
    channels_last = False

    def prepare(self, batch: Any, device: torch.device, channels_last: bool) -> tuple[Any, Any]:
        return super().prepare(batch, device, channels_last=False)

    def eval_meter(self, device: torch.device) -> Meter:
        if not self.num_classes:
            raise ValueError("point-cloud classification needs num_classes")
        return ClassAccuracy(device, self.num_classes)


_LABELS = {"top1": "top-1", "top5": "top-5", "overall_acc": "overall accuracy",
           "mean_class_acc": "mean class accuracy", "map": "mAP@[.5:.95]", "map50": "mAP@.5",
           "mask_map": "mask mAP@[.5:.95]", "mask_map50": "mask mAP@.5"}


def metric_label(name: str) -> str:
    """How tables and command output name a metric ("top1" -> "top-1")."""
    return _LABELS.get(name, name)


_TASKS: dict[str, type[Task]] = {
    Task.name: Task,
    PointCloudClassification.name: PointCloudClassification,
}


def available_tasks() -> list[str]:
    return sorted(_TASKS)


def register_task(cls: type[Task]) -> type[Task]:
    """Decorator: make a task available to `task_for` under `cls.name`."""
    _TASKS[cls.name] = cls
    return cls


def task_for(data: Any) -> Task:
    """The task a data bundle asks for (its `task` attribute; classification if it has none)."""
    name = getattr(data, "task", Task.name)
    if name not in _TASKS:
        raise UnknownNameError("task", name, list(_TASKS))
    return _TASKS[name](num_classes=getattr(data, "num_classes", None))


@torch.no_grad()
def evaluate_model(
    model: nn.Module, loader: Iterable[Any], task: Task, max_batches: int | None = None
) -> dict[str, float]:
    """The task's metrics of `model` (put in eval mode) on `loader`, on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    meter = task.eval_meter(device)
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x, y = task.prepare(batch, device, channels_last=False)
        meter.update(model(x), y)
    return meter.compute()
