"""Detection and instance segmentation as Trainer tasks (torchvision's detection models).

A batch is `(images, targets)`: a (B, 3, H, W) image tensor (torchvision's
detection models iterate over it as their list of images) and one target dict
per image ("boxes", "labels", and "masks" for instance segmentation). In
training the model is called as `model(images, targets)` and returns its loss
dict; the task's loss is the plain sum of that dict, as torchvision's
reference training scripts use. In evaluation the model returns detections,
scored by pycocotools: COCO mAP@[.5:.95] ("map") and mAP@.5 ("map50"), in
percent (the 0-100 scale detection papers quote), of boxes and, for instance
segmentation, of masks ("mask_map", "mask_map50"). The train meter reports
the mean of each loss term (e.g. train_classification, train_bbox_regression).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from prunelab.metrics.detection import coco_box_map, coco_mask_map
from prunelab.train import distributed as D
from prunelab.train.tasks import Criterion, Meter, Task, register_task

Targets = list[dict[str, torch.Tensor]]


def sum_losses(outputs: Any, targets: Any) -> torch.Tensor:
    """The training loss of a torchvision detection model: the sum of its loss dict."""
    if not isinstance(outputs, dict):
        raise TypeError("a detection model in training mode returns a dict of losses; "
                        f"got {type(outputs).__name__} (was it called with targets?)")
    return torch.stack([v.float() for v in outputs.values()]).sum()


class LossTerms(Meter):
    """Mean of each term of the loss dict over the training images of an epoch."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.seen = torch.zeros((), device=device)

    def update(self, outputs: Any, targets: Any) -> None:
        n = len(targets)
        for name, value in outputs.items():
            total = self.sums.setdefault(name, torch.zeros((), device=self.device))
            total += value.detach().float() * n
        self.seen += n

    def compute(self) -> dict[str, float]:
        names = sorted(self.sums)
        values = D.all_reduce_sum(torch.stack([*(self.sums[k] for k in names), self.seen]))
        *totals, n = values.tolist()
        return {k: v / max(n, 1.0) for k, v in zip(names, totals, strict=True)}


class CocoMap(Meter):
    """Detections of every evaluated image, scored once by pycocotools in `compute()`."""

    def __init__(self, masks: bool) -> None:
        self.masks = masks
        self.ground_truth: list[dict[str, torch.Tensor]] = []
        self.predictions: list[dict[str, torch.Tensor]] = []

    def update(self, outputs: Any, targets: Any) -> None:
        keep = ("boxes", "labels", "scores", "masks") if self.masks else ("boxes", "labels",
                                                                          "scores")
        for pred, gt in zip(outputs, targets, strict=True):
            self.predictions.append({k: pred[k].detach().cpu() for k in keep})
            self.ground_truth.append({k: v.detach().cpu() for k, v in gt.items()})

    def compute(self) -> dict[str, float]:
        gt = [g for rank in D.all_gather_object(self.ground_truth) for g in rank]
        pred = [p for rank in D.all_gather_object(self.predictions) for p in rank]
        out: dict[str, float] = {"samples": len(gt)}
        if not any(len(g["labels"]) for g in gt):
            raise ValueError("COCO mAP needs ground-truth boxes; the evaluated images have none")
        box = coco_box_map(gt, pred)
        out.update({"map": 100.0 * box["map"], "map50": 100.0 * box["map50"]})
        if self.masks:
            mask = coco_mask_map(gt, pred)
            out.update({"mask_map": 100.0 * mask["map"], "mask_map50": 100.0 * mask["map50"]})
        return out


@register_task
class Detection(Task):
    """Object detection: sum of the model's losses; COCO box mAP (pycocotools)."""

    name = "detection"
    metrics: ClassVar[tuple[str, ...]] = ("map", "map50")
    train_metric: ClassVar[str | None] = None  # the loss terms are logged instead
    channels_last = False  # a list-of-images model: its transform decides the layout
    logits = False
    masks: ClassVar[bool] = False

    def prepare(self, batch: Any, device: torch.device, channels_last: bool) -> tuple[Any, Any]:
        images, targets = batch
        images = images.to(device, non_blocking=True)
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        return images, targets

    def forward(self, model: nn.Module, inputs: Any, targets: Any) -> Any:
        return model(inputs, targets)

    def batch_size(self, targets: Any) -> int:
        return len(targets)

    def criterion(self, config: Any) -> Criterion:
        return sum_losses

    def train_meter(self, device: torch.device) -> Meter:
        return LossTerms(device)

    def eval_meter(self, device: torch.device) -> Meter:
        return CocoMap(self.masks)

    def example_targets(self, batch: int, device: torch.device) -> Any:
        raise NotImplementedError("detection does not time memory layouts (channels_last=False)")


@register_task
class InstanceSegmentation(Detection):
    """Instance segmentation (Mask R-CNN): box and mask COCO mAP."""

    name = "instance_segmentation"
    metrics = ("map", "map50", "mask_map", "mask_map50")
    masks = True
