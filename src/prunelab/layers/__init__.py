"""Layers methods install into models (pure modules, no pruning logic)."""

from prunelab.layers.batch_whitening import (
    BatchWhitening2d,
    convert_batchnorm,
    group_size_for,
    newton_inverse_sqrt,
    whitening_layers,
)
from prunelab.layers.channel_select import SelectedNorm2d

__all__ = [
    "BatchWhitening2d",
    "SelectedNorm2d",
    "convert_batchnorm",
    "group_size_for",
    "newton_inverse_sqrt",
    "whitening_layers",
]
