"""Layers methods install into models (pure modules, no pruning logic)."""

from prunelab.layers.attention import HeadPrunedMultiheadAttention
from prunelab.layers.batch_whitening import (
    BatchWhitening2d,
    convert_batchnorm,
    group_size_for,
    newton_inverse_sqrt,
    whitening_layers,
)
from prunelab.layers.channel_select import SelectedNorm2d
from prunelab.layers.window_attention import (
    HeadPrunedMaxVitAttention,
    HeadPrunedWindowAttention,
    HeadPrunedWindowAttentionV2,
)

__all__ = [
    "BatchWhitening2d",
    "HeadPrunedMaxVitAttention",
    "HeadPrunedMultiheadAttention",
    "HeadPrunedWindowAttention",
    "HeadPrunedWindowAttentionV2",
    "SelectedNorm2d",
    "convert_batchnorm",
    "group_size_for",
    "newton_inverse_sqrt",
    "whitening_layers",
]
