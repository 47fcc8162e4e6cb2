"""MobileNetV2 for CIFAR (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks").

The ImageNet network with two strides removed so a 32x32 image is not
shrunk to 1x1 too early: the stem conv and the second stage (24 channels)
use stride 1, the common CIFAR variant. The final map is 4x4 at 32x32.

Each inverted residual is an optional 1x1 expansion (t x channels,
BN-ReLU6), a 3x3 depthwise conv (BN-ReLU6) and a linear 1x1 projection
(BN). As in the paper, a block adds its input back only when stride is 1
and the channel count is unchanged.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from prunelab.models.layers import conv1x1, conv3x3, init_weights
from prunelab.models.registry import register_model

__all__ = ["CIFAR_SETTINGS", "CifarMobileNetV2", "InvertedResidual"]

# (expansion t, output channels c, repeats n, first stride s) per stage.
CIFAR_SETTINGS: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # stride 2 on ImageNet
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class InvertedResidual(nn.Module):
    """Expand 1x1, depthwise 3x3, project 1x1; residual add when shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        if expansion == 1:
            self.expand_conv = None
            self.expand_bn = None
            self.expand_act = None
        else:
            self.expand_conv = conv1x1(in_channels, hidden)
            self.expand_bn = nn.BatchNorm2d(hidden)
            self.expand_act = nn.ReLU6()
        self.dw_conv = conv3x3(hidden, hidden, stride, groups=hidden)
        self.dw_bn = nn.BatchNorm2d(hidden)
        self.dw_act = nn.ReLU6()
        self.project_conv = conv1x1(hidden, out_channels)
        self.project_bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.expand_conv is not None:
            out = self.expand_act(self.expand_bn(self.expand_conv(out)))
        out = self.dw_act(self.dw_bn(self.dw_conv(out)))
        out = self.project_bn(self.project_conv(out))
        if self.use_residual:
            out = out + x
        return out


class CifarMobileNetV2(nn.Module):
    """Stem conv, 17 inverted residual blocks, 1x1 conv to 1280, pool, dropout, linear."""

    def __init__(
        self,
        num_classes: int = 10,
        stem_width: int = 32,
        last_width: int = 1280,
        dropout: float = 0.0,
        settings: list[tuple[int, int, int, int]] | None = None,
    ) -> None:
        super().__init__()
        settings = CIFAR_SETTINGS if settings is None else settings
        self.conv1 = conv3x3(3, stem_width)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.act1 = nn.ReLU6()
        blocks = []
        in_channels = stem_width
        for expansion, out_channels, repeats, stride in settings:
            for index in range(repeats):
                blocks.append(
                    InvertedResidual(
                        in_channels, out_channels, stride if index == 0 else 1, expansion
                    )
                )
                in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.conv2 = conv1x1(in_channels, last_width)
        self.bn2 = nn.BatchNorm2d(last_width)
        self.act2 = nn.ReLU6()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(last_width, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.blocks(x)
        x = self.act2(self.bn2(self.conv2(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(self.dropout(x))


@register_model("cifar_mobilenet_v2")
def cifar_mobilenet_v2(num_classes: int = 10, **kwargs) -> CifarMobileNetV2:
    """MobileNetV2 with CIFAR strides: 2.2 M params, 88 M MACs at 32x32."""
    return CifarMobileNetV2(num_classes, **kwargs)
