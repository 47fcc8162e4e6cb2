"""Mask R-CNN on smaller ResNet-FPN backbones, from torchvision's own parts.

torchvision ships Mask R-CNN on ResNet-50-FPN only. At CPU scale (a few
hundred training steps on one core) that is out of reach, so
``maskrcnn_resnet18_fpn`` and ``maskrcnn_resnet34_fpn`` put the same FPN,
RPN and RoI heads (256 FPN channels, the standard mask head) on a
ResNet-18/34 trunk. As with every detector here nothing is pretrained: all
five stages train and the norms are ordinary BatchNorm (torchvision freezes
them only for a pretrained backbone).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch.nn as nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone


def maskrcnn_resnet_fpn(depth: str, num_classes: int, **kwargs: Any) -> MaskRCNN:
    """torchvision's MaskRCNN on a fresh ResNet-`depth` FPN; kwargs go to MaskRCNN."""
    backbone = resnet_fpn_backbone(backbone_name=depth, weights=None, trainable_layers=5,
                                   norm_layer=nn.BatchNorm2d)
    return MaskRCNN(backbone, num_classes=num_classes, **kwargs)


BUILDERS = {
    f"maskrcnn_{depth}_fpn": partial(maskrcnn_resnet_fpn, depth)
    for depth in ("resnet18", "resnet34")
}
