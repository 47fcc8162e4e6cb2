"""The tensor program inside a torchvision detection model, for the tracer.

A detection model's forward mixes a tensor program (backbone, FPN, heads)
with box logic (anchors, proposal selection, NMS, resizing) that torch.fx
cannot follow. `tensor_program(model)` returns a module that runs only the
tensor program on a batch of (already normalised) images and returns the raw
head outputs. It *shares* the model's submodules under the model's own
attribute names, so the channel groups traced from it name the model's
modules: pruning the detection model with them prunes backbone, FPN and every
head together, and the box logic, untouched, keeps working on the smaller
model.

The RoI heads of R-CNN models read features pooled per box; here every image
contributes one box, pooled from the finest FPN level by adaptive average
pooling to the RoI pooler's output size. That keeps each pooled channel the
channel it came from, which is all the channel groups need.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.detection.fcos import FCOS
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.models.detection.ssd import SSD


class _Program(nn.Module):
    """Holds the model's parts under the model's attribute names."""

    def __init__(self, model: nn.Module, parts: tuple[str, ...]) -> None:
        super().__init__()
        for name in parts:
            setattr(self, name, getattr(model, name))
        self.training = model.training  # the model's mode, without touching the shared parts


class _SSDProgram(_Program):
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = list(self.backbone(x).values())
        outs = []
        for i, f in enumerate(feats):
            outs.append(self.head.classification_head.module_list[i](f))
            outs.append(self.head.regression_head.module_list[i](f))
        return outs


class _DenseHeadProgram(_Program):
    """RetinaNet and FCOS: shared conv towers over every FPN level."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        cls, reg = self.head.classification_head, self.head.regression_head
        outs = []
        for f in self.backbone(x).values():
            outs.append(cls.cls_logits(cls.conv(f)))
            r = reg.conv(f)
            outs.append(reg.bbox_reg(r))
            if hasattr(reg, "bbox_ctrness"):
                outs.append(reg.bbox_ctrness(r))
        return outs


class _RCNNProgram(_Program):
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = list(self.backbone(x).values())
        logits, deltas = self.rpn.head(feats)
        outs = [*logits, *deltas]
        heads = self.roi_heads
        box = heads.box_head(F.adaptive_avg_pool2d(feats[0], heads.box_roi_pool.output_size))
        outs += [heads.box_predictor.cls_score(box), heads.box_predictor.bbox_pred(box)]
        if heads.mask_head is not None:
            pooled = F.adaptive_avg_pool2d(feats[0], heads.mask_roi_pool.output_size)
            outs.append(heads.mask_predictor(heads.mask_head(pooled)))
        if heads.keypoint_head is not None:
            pooled = F.adaptive_avg_pool2d(feats[0], heads.keypoint_roi_pool.output_size)
            outs.append(heads.keypoint_predictor(heads.keypoint_head(pooled)))
        return outs


def tensor_program(model: nn.Module) -> nn.Module:
    """The part of `model` the tracer follows: itself, or a detection model's tensor program."""
    if isinstance(model, GeneralizedRCNN):
        return _RCNNProgram(model, ("backbone", "rpn", "roi_heads"))
    if isinstance(model, (RetinaNet, FCOS)):
        return _DenseHeadProgram(model, ("backbone", "head"))
    if isinstance(model, SSD):
        return _SSDProgram(model, ("backbone", "head"))
    return model
