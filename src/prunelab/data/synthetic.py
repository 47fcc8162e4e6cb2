"""A small deterministic synthetic image set that a tiny model can learn quickly.

Each class has a smooth random pattern (an upsampled 4x4 field per channel)
and a mean colour; an image is its class pattern plus pixel noise. The colour
survives flips and crops, so a few SGD steps already beat chance, while the
spatial pattern rewards real convolutions. Same seed, same bytes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from prunelab.data.arrays import ImageArrays
from prunelab.errors import ConfigError


def make_synthetic(
    n_train: int = 1024,
    n_test: int = 512,
    image_size: int = 32,
    num_classes: int = 10,
    channels: int = 3,
    seed: int = 0,
    noise: float = 30.0,
) -> ImageArrays:
    """Generate uint8 (N, C, S, S) images with balanced labels, deterministically from `seed`."""
    if n_train < 1 or n_test < 1 or image_size < 4 or num_classes < 2 or channels < 1:
        raise ConfigError(
            f"synthetic data needs n_train, n_test >= 1, image_size >= 4, num_classes >= 2, "
            f"channels >= 1 (got {n_train}, {n_test}, {image_size}, {num_classes}, {channels})"
        )
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(num_classes, channels, 4, 4, generator=g)
    pattern = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear",
                            align_corners=False)
    colour = torch.randn(num_classes, channels, 1, 1, generator=g)
    templates = 128.0 + 35.0 * pattern + 30.0 * colour

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=g)]
        x = templates[labels] + noise * torch.randn(n, channels, image_size, image_size,
                                                    generator=g)
        images = x.round().clamp(0, 255).to(torch.uint8)
        return images.numpy(), labels.numpy().astype(np.int64)

    train_x, train_y = split(n_train)
    test_x, test_y = split(n_test)
    return ImageArrays(train_x, train_y, test_x, test_y, [f"class{i}" for i in range(num_classes)])
