"""DenseNet-40 for CIFAR (Huang et al., "Densely Connected Convolutional Networks", 2017).

The basic (non-BC) DenseNet: a 3x3 stem of 16 channels, three dense blocks
of 12 layers, each layer BN-ReLU-Conv3x3 producing `growth_rate` (k=12) new
channels that are concatenated (``torch.cat`` along channels) to everything
before them; between blocks a transition BN-ReLU-Conv1x1-AvgPool2x2 without
compression. Channels grow 16 -> 160 -> 304 -> 448: 1.02 M parameters and
265 M MACs at 32x32, the paper's 1.0 M and network slimming's 5.33e8 FLOPs
(counted there as 2 x MACs).

The stem width follows the paper (16). The network-slimming PyTorch code,
which many pruning papers reuse, starts with 2k = 24 channels instead:
``create("densenet40", stem_width=24)`` gives that variant, 1.06 M
parameters and 283 M MACs (the "282 M FLOPs" baseline of e.g. HRank).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from prunelab.models.layers import conv1x1, conv3x3, init_weights
from prunelab.models.registry import register_model

__all__ = ["DenseLayer", "DenseNet", "Transition"]


class DenseLayer(nn.Module):
    """BN-ReLU-Conv3x3 whose output is appended to its input along channels."""

    def __init__(self, in_channels: int, growth_rate: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.conv = conv3x3(in_channels, growth_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.conv(self.relu(self.bn(x)))
        return torch.cat([x, new], dim=1)


class Transition(nn.Module):
    """BN-ReLU-Conv1x1-AvgPool2x2 between dense blocks (no compression by default)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.conv = conv1x1(in_channels, out_channels)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.relu(self.bn(x))))


class DenseNet(nn.Module):
    """Stem conv, dense blocks with transitions between them, BN-ReLU, pool, linear."""

    def __init__(
        self,
        depth: int = 40,
        growth_rate: int = 12,
        num_classes: int = 10,
        stem_width: int = 16,
        compression: float = 1.0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 3 != 0:
            raise ValueError(f"DenseNet depth must be 3n+4, got {depth}")
        layers_per_block = (depth - 4) // 3
        self.conv1 = conv3x3(3, stem_width)
        channels = stem_width
        blocks = []
        for index in range(3):
            layers = []
            for _ in range(layers_per_block):
                layers.append(DenseLayer(channels, growth_rate))
                channels += growth_rate
            blocks.append(nn.Sequential(*layers))
            if index < 2:
                out_channels = int(channels * compression)
                blocks.append(Transition(channels, out_channels))
                channels = out_channels
        self.block1, self.trans1, self.block2, self.trans2, self.block3 = blocks
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.trans1(self.block1(x))
        x = self.trans2(self.block2(x))
        x = self.block3(x)
        x = self.relu(self.bn(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


@register_model("densenet40")
def densenet40(num_classes: int = 10, growth_rate: int = 12, **kwargs) -> DenseNet:
    """DenseNet-40 (k=12): 1.02 M params, 265 M MACs (stem_width=24: 1.06 M, 283 M)."""
    return DenseNet(40, growth_rate, num_classes, **kwargs)
