"""Small hand-built networks used by several engine tests."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give batch norms non-trivial statistics so masked and pruned outputs differ if wrong."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.running_mean is not None:
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)
    return model


class ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        )


class Residual(nn.Module):
    def __init__(self, c: int, cout: int | None = None) -> None:
        super().__init__()
        cout = cout or c
        self.a = ConvBN(c, c)
        self.b = nn.Sequential(nn.Conv2d(c, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = (
            nn.Identity()
            if cout == c
            else nn.Sequential(nn.Conv2d(c, cout, 1), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.b(self.a(x)) + self.short(x))


class Dense(nn.Module):
    """x -> cat([x, conv(x)]): DenseNet's concatenation."""

    def __init__(self, c: int, growth: int) -> None:
        super().__init__()
        self.conv = ConvBN(c, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(x)], dim=1)


class InvertedResidual(nn.Module):
    """1x1 expand, depthwise 3x3 (optionally with a channel multiplier), 1x1 project."""

    def __init__(self, c: int, expand: int, multiplier: int = 1) -> None:
        super().__init__()
        hidden = c * expand
        self.expand = ConvBN(c, hidden, k=1)
        self.dw = ConvBN(hidden, hidden * multiplier, groups=hidden)
        self.project = nn.Sequential(
            nn.Conv2d(hidden * multiplier, c, 1, bias=False), nn.BatchNorm2d(c)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.dw(self.expand(x)))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, reduced: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s


class GroupedBlock(nn.Module):
    def __init__(self, c: int, groups: int) -> None:
        super().__init__()
        self.conv = ConvBN(c, c, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Head(nn.Module):
    """Flatten a small feature map straight into a linear layer (VGG style)."""

    def __init__(self, c: int, hw: int, classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(hw)
        self.fc = nn.Linear(c * hw * hw, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))
