"""MACs of attention layers, which compute with their weights outside nn.Linear calls.

An attention layer costs its projections (tokens x in x out each) and its two
matmuls: queries x keys and weights x values, each L * S * (heads * head_dim)
per sample for L queries and S keys. Softmax, scaling and masks are not
counted (as activations are not elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
from torchvision.models.maxvit import RelativePositionalMultiHeadAttention
from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2

from prunelab.layers.attention import HeadPrunedMultiheadAttention
from prunelab.layers.timm_attention import is_timm_attention
from prunelab.layers.window_attention import (
    HeadPrunedMaxVitAttention,
    HeadPrunedWindowAttention,
    HeadPrunedWindowAttentionV2,
)

__all__ = ["ATTENTION_COUNTERS", "attention_macs", "counts_attention"]


def _argument(args: tuple, kwargs: dict, pos: int, name: str) -> torch.Tensor:
    return args[pos] if len(args) > pos else kwargs[name]


def multihead_attention_macs(m: nn.MultiheadAttention, args: tuple, kwargs: dict) -> int:
    query, key, value = (
        _argument(args, kwargs, i, n) for i, n in enumerate(("query", "key", "value"))
    )
    inner = m.out_proj.weight.shape[1]  # heads * head_dim
    batch = 1 if query.dim() == 2 else query.shape[0 if m.batch_first else 1]
    q_tokens = query.numel() // query.shape[-1]
    k_tokens = key.numel() // key.shape[-1]
    v_tokens = value.numel() // value.shape[-1]
    keys = k_tokens // batch + (m.bias_k is not None) + int(m.add_zero_attn)
    projections = inner * (
        q_tokens * query.shape[-1] + k_tokens * key.shape[-1] + v_tokens * value.shape[-1]
    )
    matmuls = 2 * q_tokens * keys * inner
    return projections + matmuls + q_tokens * inner * m.out_proj.weight.shape[0]


def window_attention_macs(m: ShiftedWindowAttention, args: tuple, kwargs: dict) -> int:
    """Swin: projections and matmuls over the input padded to whole windows.

    v2's bias MLP runs as modules, so the linear-layer hooks count it.
    """
    x = _argument(args, kwargs, 0, "x")
    batch, height, width, channels = x.shape
    window = m.window_size
    tokens = batch * (height + -height % window[0]) * (width + -width % window[1])
    inner = m.proj.weight.shape[1]
    projections = tokens * (3 * inner * channels + inner * m.proj.weight.shape[0])
    return projections + 2 * tokens * window[0] * window[1] * inner


def maxvit_attention_macs(
    m: RelativePositionalMultiHeadAttention, args: tuple, kwargs: dict
) -> int:
    """MaxViT: the two matmuls (its projections run as modules, counted by their hooks)."""
    x = _argument(args, kwargs, 0, "x")
    batch, groups, tokens, _ = x.shape
    return 2 * batch * groups * tokens * tokens * m.merge.weight.shape[1]


def timm_attention_macs(m: nn.Module, args: tuple, kwargs: dict) -> int:
    """timm's Attention: the two matmuls (qkv, proj and a gate run as modules)."""
    batch, tokens, _ = _argument(args, kwargs, 0, "x").shape
    return 2 * batch * tokens * tokens * m.proj.weight.shape[1]


ATTENTION_COUNTERS: dict[type, Callable[[nn.Module, tuple, dict], int]] = {
    nn.MultiheadAttention: multihead_attention_macs,
    HeadPrunedMultiheadAttention: multihead_attention_macs,
    ShiftedWindowAttention: window_attention_macs,
    ShiftedWindowAttentionV2: window_attention_macs,
    HeadPrunedWindowAttention: window_attention_macs,
    HeadPrunedWindowAttentionV2: window_attention_macs,
    RelativePositionalMultiHeadAttention: maxvit_attention_macs,
    HeadPrunedMaxVitAttention: maxvit_attention_macs,
}


def counts_attention(module: nn.Module) -> bool:
    """True if `attention_macs` knows `module` (its matmuls run outside modules)."""
    return type(module) in ATTENTION_COUNTERS or is_timm_attention(module)


def attention_macs(module: nn.Module, args: tuple, kwargs: dict) -> int:
    """MACs of one call of an attention module (the whole batch)."""
    if is_timm_attention(module):
        return timm_attention_macs(module, args, kwargs)
    return ATTENTION_COUNTERS[type(module)](module, args, kwargs)  # type: ignore[arg-type]
