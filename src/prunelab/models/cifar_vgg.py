"""VGG for CIFAR as used by the channel-pruning papers ("network slimming", Liu et al. 2017).

The convolutional configurations of Simonyan & Zisserman (2015), every conv
3x3 followed by BatchNorm and ReLU, max-pooling between stages, and a single
``Linear(512, num_classes)`` on the flattened 1x1 map instead of the three
ImageNet fully connected layers. As in network slimming, the last pooling is
an average pool; we make it adaptive so the network also runs on the smaller
inputs a resolution pruner feeds it. At 32x32, VGG-16 costs 313 M MACs with
14.7 M parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from prunelab.models.layers import conv3x3, init_weights
from prunelab.models.registry import register_model

__all__ = ["CONFIGS", "CifarVGG"]

# Output channels of each conv; "M" is a 2x2 max-pool.
CONFIGS: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    "vgg19": [
        64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
        512, 512, 512, 512, "M", 512, 512, 512, 512,
    ],
}  # fmt: skip


class CifarVGG(nn.Module):
    """``features`` (conv-BN-ReLU and max-pools), global average pool, one linear layer.

    `config` may be any list of widths and "M"s, e.g. a pruned configuration.
    """

    def __init__(self, config: Sequence[int | str], num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                width = int(item)
                layers += [conv3x3(in_channels, width), nn.BatchNorm2d(width), nn.ReLU()]
                in_channels = width
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier(x)


@register_model("cifar_vgg16")
def cifar_vgg16(num_classes: int = 10, **kwargs) -> CifarVGG:
    """CIFAR VGG-16 with BN: 13 convs, 14.7 M params, 313 M MACs."""
    return CifarVGG(CONFIGS["vgg16"], num_classes, **kwargs)


@register_model("cifar_vgg19")
def cifar_vgg19(num_classes: int = 10, **kwargs) -> CifarVGG:
    """CIFAR VGG-19 with BN: 16 convs, 20.0 M params, 398 M MACs."""
    return CifarVGG(CONFIGS["vgg19"], num_classes, **kwargs)
