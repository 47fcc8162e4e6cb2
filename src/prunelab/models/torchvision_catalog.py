"""Every torchvision classification, segmentation and detection model, built small.

The coverage test and `bench/model_coverage.py` walk this list: each case
names a torchvision builder, the smallest input it accepts (so the whole list
runs in CI's time) and the keyword arguments that build it from scratch
(``weights=None``, ``weights_backbone=None``: nothing is downloaded).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn
import torchvision

TASKS = ("classification", "segmentation", "detection")

# Inputs below 64x64 break these; the rest run at 64x64 (32x32 for the giants).
# inception_v3's aux head (traced too: it runs in training) needs about 299x299.
_MIN_SIZE = {"inception_v3": 299, "maxvit_t": 224}
_GIANTS = {  # more than ~100 M parameters: small inputs keep their forward cheap
    "regnet_y_128gf", "regnet_y_32gf", "regnet_x_32gf", "vit_h_14", "vit_l_16", "vit_l_32",
    "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
    "convnext_large", "swin_b", "swin_v2_b", "wide_resnet101_2", "efficientnet_v2_l",
}  # fmt: skip


@dataclass(frozen=True)
class TorchvisionCase:
    """One torchvision model and the input the coverage check feeds it."""

    task: str
    name: str
    image_size: int
    kwargs: dict[str, Any] = field(default_factory=dict)

    batch: int = 1  # the check runs in eval mode: one image is enough


def _classification(name: str) -> TorchvisionCase:
    size = _MIN_SIZE.get(name, 32 if name in _GIANTS else 64)
    kwargs: dict[str, Any] = {"num_classes": 10}
    if name.startswith("vit_"):
        patch = int(name.rsplit("_", 1)[1])
        size = (2 if name in _GIANTS else 4) * patch  # a grid of 2x2 or 4x4 patches
        kwargs["image_size"] = size
    if name in ("googlenet", "inception_v3"):
        kwargs["init_weights"] = True
    if name.startswith("convnext_"):
        # its layer scale starts at 1e-6, which hides a wrongly pruned block (its output
        # barely reaches the logits): the check builds it at 1, as the timm case does
        kwargs["layer_scale"] = 1.0
    return TorchvisionCase("classification", name, size, kwargs)


def torchvision_cases(task: str | None = None) -> list[TorchvisionCase]:
    """The cases of one task (or all), in torchvision's order."""
    cases: list[TorchvisionCase] = []
    if task in (None, "classification"):
        names = torchvision.models.list_models(module=torchvision.models)
        cases += [_classification(n) for n in names]
    if task in (None, "segmentation"):
        names = torchvision.models.list_models(module=torchvision.models.segmentation)
        cases += [_segmentation(n) for n in names]
    if task in (None, "detection"):
        names = torchvision.models.list_models(module=torchvision.models.detection)
        cases += [_detection(n) for n in names]
    return cases


def _segmentation(name: str) -> TorchvisionCase:
    kwargs: dict[str, Any] = {"num_classes": 5, "weights_backbone": None}
    if not name.startswith("lraspp"):  # the others have an auxiliary FCN head
        kwargs["aux_loss"] = True
    return TorchvisionCase("segmentation", name, 64, kwargs)


def _detection(name: str) -> TorchvisionCase:
    kwargs: dict[str, Any] = {"num_classes": 5, "weights_backbone": None}
    if not name.startswith("ssd"):
        kwargs["min_size"] = kwargs["max_size"] = 64  # the transform resizes to this
    size = 320 if name.startswith("ssdlite") else 300 if name.startswith("ssd") else 64
    return TorchvisionCase("detection", name, size, kwargs)


def build_case(case: TorchvisionCase) -> nn.Module:
    """Build the case's model with fresh weights."""
    return torchvision.models.get_model(case.name, weights=None, **case.kwargs)
