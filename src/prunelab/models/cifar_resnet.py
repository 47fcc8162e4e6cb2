"""ResNets for CIFAR (He et al., "Deep Residual Learning for Image Recognition", 2016).

Depth 6n+2 with BasicBlocks (resnet20/32/44/56/110) or 9n+2 with Bottleneck
blocks (resnet164): a 3x3 stem of 16 channels, three stages of n blocks at
16, 32 and 64 channels (x4 at the output of a bottleneck block), the second
and third stage starting with stride 2, then global average pooling and one
linear layer.

Shortcuts are option B of the paper: identity when the shape is unchanged,
a 1x1 convolution with BatchNorm when channels or resolution change. Option
A (zero padding) has no parameters but cannot be pruned like a layer; B
adds only 0.003 M parameters to ResNet-56 and keeps every channel owned by a
real convolution. Blocks are post-activation (BN after every conv, ReLU
after the add), ResNet-164 included, so all six share one structure.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from prunelab.models.layers import conv1x1, conv3x3, init_weights
from prunelab.models.registry import register_model

__all__ = ["BasicBlock", "Bottleneck", "CifarResNet"]


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    """Option-B shortcut: None (identity) or 1x1 conv + BN when the shape changes."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _shortcut(in_channels, planes, stride)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + identity
        return self.relu2(out)


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(x4)-BN, plus the shortcut, then ReLU."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = conv1x1(in_channels, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = conv1x1(planes, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = _shortcut(in_channels, out_channels, stride)
        self.relu3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = out + identity
        return self.relu3(out)


class CifarResNet(nn.Module):
    """Stem, three stages of residual blocks, global average pool, linear classifier.

    `widths` are the per-stage base widths (block inputs of the 3x3 convs);
    changing them gives the narrower networks a channel pruner produces.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        blocks_per_stage: int,
        num_classes: int = 10,
        widths: Sequence[int] = (16, 32, 64),
        stem_width: int | None = None,
    ) -> None:
        super().__init__()
        if len(widths) != 3:
            raise ValueError(f"CIFAR ResNets have 3 stages, got widths={tuple(widths)}")
        stem_width = widths[0] if stem_width is None else stem_width
        self.conv1 = conv3x3(3, stem_width)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU()
        in_channels = stem_width
        stages = []
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            blocks = []
            for b in range(blocks_per_stage):
                blocks.append(block(in_channels, width, stride if b == 0 else 1))
                in_channels = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


@register_model("resnet20")
def resnet20(num_classes: int = 10, **kwargs) -> CifarResNet:
    """ResNet-20: 3 BasicBlocks per stage, 0.27 M params, 41 M MACs."""
    return CifarResNet(BasicBlock, 3, num_classes, **kwargs)


@register_model("resnet32")
def resnet32(num_classes: int = 10, **kwargs) -> CifarResNet:
    """ResNet-32: 5 BasicBlocks per stage, 0.47 M params, 69 M MACs."""
    return CifarResNet(BasicBlock, 5, num_classes, **kwargs)


@register_model("resnet44")
def resnet44(num_classes: int = 10, **kwargs) -> CifarResNet:
    """ResNet-44: 7 BasicBlocks per stage, 0.66 M params, 97 M MACs."""
    return CifarResNet(BasicBlock, 7, num_classes, **kwargs)


@register_model("resnet56")
def resnet56(num_classes: int = 10, **kwargs) -> CifarResNet:
    """ResNet-56: 9 BasicBlocks per stage, 0.86 M params, 126 M MACs."""
    return CifarResNet(BasicBlock, 9, num_classes, **kwargs)


@register_model("resnet110")
def resnet110(num_classes: int = 10, **kwargs) -> CifarResNet:
    """ResNet-110: 18 BasicBlocks per stage, 1.7 M params, 253 M MACs."""
    return CifarResNet(BasicBlock, 18, num_classes, **kwargs)


@register_model("resnet164")
def resnet164(num_classes: int = 10, **kwargs) -> CifarResNet:
    """ResNet-164: 18 Bottleneck blocks per stage (16/32/64 x4), 1.7 M params, 248 M MACs."""
    return CifarResNet(Bottleneck, 18, num_classes, **kwargs)
