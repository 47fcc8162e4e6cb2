"""Layers methods install into models (pure modules, no pruning logic)."""

from prunelab.layers.batch_whitening import (
    BatchWhitening2d,
    convert_batchnorm,
    group_size_for,
    newton_inverse_sqrt,
    whitening_layers,
)

__all__ = [
    "BatchWhitening2d",
    "convert_batchnorm",
    "group_size_for",
    "newton_inverse_sqrt",
    "whitening_layers",
]
