"""Tiny models and data for the training-loop tests (shared by subprocess helpers)."""

from __future__ import annotations

import torch
from torch import nn

from prunelab.data import DataBundle, build_data


def tiny_cnn(num_classes: int = 4, width: int = 8, bn: bool = True, dropout: float = 0.0
             ) -> nn.Module:
    """conv-(BN)-ReLU x2, global pool, (dropout), linear: trains in milliseconds per step."""
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(width))
    layers += [nn.ReLU(), nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(2 * width))
    layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(2 * width, num_classes))
    return nn.Sequential(*layers)


def tiny_data(batch_size: int = 16, n_train: int = 128, n_test: int = 64, **kw) -> DataBundle:
    """Synthetic 4-class 12x12 images."""
    return build_data("synthetic", n_train=n_train, n_test=n_test, image_size=12, num_classes=4,
                      batch_size=batch_size, **kw)


def state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
