"""Which torch ops and modules the tracer knows, by how they treat channels.

Each op falls in one class; an op in none of them is unsupported.
"""

from __future__ import annotations

import operator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.maxvit import RelativePositionalMultiHeadAttention
from torchvision.models.swin_transformer import (
    ShiftedWindowAttention,
    ShiftedWindowAttentionV2,
    _patch_merging_pad,
)
from torchvision.ops.misc import FrozenBatchNorm2d  # a batch norm whose values are buffers

from prunelab.layers import point_ops
from prunelab.layers.attention import HeadPrunedMultiheadAttention
from prunelab.layers.window_attention import (
    HeadPrunedMaxVitAttention,
    HeadPrunedWindowAttention,
    HeadPrunedWindowAttentionV2,
)

# fmt: off

_PASS_MODULES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
)

_PASS_FUNCTIONS: set = {
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.hardtanh, F.leaky_relu, F.elu, F.selu,
    F.celu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, torch.sigmoid, F.sigmoid,
    torch.tanh, F.tanh, F.softplus, torch.clamp, torch.clip, torch.abs, torch.neg, torch.exp,
    operator.neg, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
    F.interpolate, F.upsample, F.upsample_bilinear, F.upsample_nearest,
}

_PASS_METHODS: set[str] = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clip", "abs",
    "neg", "exp", "contiguous", "float", "double", "half", "bfloat16", "to", "type", "type_as",
    "clone", "detach", "requires_grad_", "hardswish", "hardsigmoid",
}

_BINARY_FUNCTIONS: set = {
    operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
    operator.truediv, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div,
    torch.maximum, torch.minimum,
}
_BINARY_METHODS: set[str] = {
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "maximum", "minimum",
}

_SHAPE_METHODS: set[str] = {"size", "dim", "numel", "ndimension", "nelement", "get_device"}

_CAT_FUNCTIONS: set = {torch.cat, torch.concat, torch.concatenate}
_REDUCE_FUNCTIONS: set = {torch.mean, torch.sum, torch.amax, torch.amin}
_REDUCE_METHODS: set[str] = {"mean", "sum", "amax", "amin"}
_VIEW_METHODS: set[str] = {"view", "reshape"}
_SPLIT_FUNCTIONS: set = {torch.split, torch.chunk, torch.tensor_split, torch.unbind}
_SPLIT_METHODS: set[str] = {"split", "chunk", "tensor_split", "unbind"}

# What may be applied to channels a view has split across two axes (a channel shuffle).
_SPLIT_SAFE_FUNCTIONS: set = {torch.reshape, torch.permute, torch.transpose, torch.flatten} | (
    _PASS_FUNCTIONS
)
_SPLIT_SAFE_METHODS: set[str] = {"view", "reshape", "flatten", "permute", "transpose"} | (
    _PASS_METHODS
)
# Ops with a rule of their own for split channels (graph.split_rules).
_SOFTMAX_FUNCTIONS: set = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax}
_SPLIT_AWARE_FUNCTIONS: set = _BINARY_FUNCTIONS | _REDUCE_FUNCTIONS | _SOFTMAX_FUNCTIONS
_SPLIT_AWARE_METHODS: set[str] = _BINARY_METHODS | _REDUCE_METHODS | {"softmax", "log_softmax"}

_CHANNEL_MIXING_NORMS: tuple[type, ...] = (nn.GroupNorm, nn.LocalResponseNorm)

# Point-cloud sampling/grouping (PointNet++): index ops return indices, which carry
# no channels; gather ops pick columns of their first argument and keep its channels.
_INDEX_FUNCTIONS: set = {point_ops.farthest_point_sample, point_ops.ball_query}
_GATHER_FUNCTIONS: set = {point_ops.gather_points, point_ops.group_points}

# Attention the tracer prunes by whole heads (exact classes: a subclass may compute otherwise).
MULTIHEAD_ATTENTION: tuple[type, ...] = (nn.MultiheadAttention, HeadPrunedMultiheadAttention)
SWIN_ATTENTION: tuple[type, ...] = (
    ShiftedWindowAttention, ShiftedWindowAttentionV2,
    HeadPrunedWindowAttention, HeadPrunedWindowAttentionV2,
)
MAXVIT_ATTENTION: tuple[type, ...] = (
    RelativePositionalMultiHeadAttention, HeadPrunedMaxVitAttention,
)
patch_merging_pad = _patch_merging_pad  # Swin's patch merging, fx-wrapped: one call in the graph

# Modules outside torch.nn that the tracer treats as leaves, with a rule of their own.
_EXTRA_LEAVES: tuple[type, ...] = (
    FrozenBatchNorm2d, HeadPrunedMultiheadAttention, *SWIN_ATTENTION, *MAXVIT_ATTENTION,
)
# fmt: on

try:  # torchvision's stochastic depth is a pass-through on a channel's values
    from torchvision.ops import stochastic_depth as _tv_stochastic_depth

    _PASS_FUNCTIONS.add(_tv_stochastic_depth)
except ImportError:  # pragma: no cover - torchvision is a dependency
    pass
