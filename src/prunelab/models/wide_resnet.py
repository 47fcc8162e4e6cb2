"""Wide ResNet for CIFAR (Zagoruyko & Komodakis, "Wide Residual Networks", 2016).

WRN-d-k: a 3x3 stem of 16 channels, three stages of (d-4)/6 pre-activation
blocks at 16k, 32k and 64k channels (strides 1, 2, 2), BN-ReLU, global
average pooling, one linear layer. A block is BN-ReLU-Conv3x3-BN-ReLU-
(dropout)-Conv3x3 added to the shortcut; when the shape changes the shortcut
is a 1x1 conv applied to the block's pre-activated input, as in the
authors' code. WRN-28-10 has 36.5 M parameters and 5.24 G MACs.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from prunelab.models.layers import conv1x1, conv3x3, init_weights
from prunelab.models.registry import register_model

__all__ = ["WideBlock", "WideResNet"]


class WideBlock(nn.Module):
    """Pre-activation basic block with optional dropout between the two convs."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv3x3(out_channels, out_channels)
        if stride == 1 and in_channels == out_channels:
            self.shortcut = None
        else:
            self.shortcut = conv1x1(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        return out + shortcut


class WideResNet(nn.Module):
    """Stem conv, three stages of wide pre-activation blocks, BN-ReLU, pool, linear."""

    def __init__(
        self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"Wide ResNet depth must be 6n+4, got {depth}")
        blocks_per_stage = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = conv3x3(3, 16)
        in_channels = 16
        stages = []
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            blocks = []
            for b in range(blocks_per_stage):
                blocks.append(WideBlock(in_channels, width, stride if b == 0 else 1, dropout))
                in_channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.relu(self.bn(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


@register_model("wrn28_10")
def wrn28_10(num_classes: int = 10, dropout: float = 0.0, **kwargs) -> WideResNet:
    """WRN-28-10: 4 blocks per stage at 160/320/640 channels, 36.5 M params."""
    return WideResNet(28, 10, num_classes, dropout, **kwargs)
