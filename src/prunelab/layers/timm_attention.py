"""timm's self-attention layer, recognised without importing timm (an optional extra).

timm's `Attention` (ViT, DeiT, and the models built from its blocks) projects
tokens with one packed `qkv` linear layer, reshapes the result to (B, N, 3,
heads, head_dim), attends per head (`F.scaled_dot_product_attention`, or the
same computed by hand when timm's fused attention is off) and projects back
with `proj`. Its forward reads the inside width off `num_heads` and
`attn_dim`, so a layer that lost whole heads runs on its own once those two
attributes say how many are left: `sync_heads` sets them from the weights.

A model holding this layer imported timm already, so the class is looked up in
`sys.modules`; a timm that has no such class (or one without `attn_dim`, whose
forward hard-codes the width) simply has none to find.
"""

from __future__ import annotations

import sys

import torch.nn as nn

__all__ = ["is_timm_attention", "sync_heads"]

_MODULE = "timm.layers.attention"


def _attention_class() -> type | None:
    cls = getattr(sys.modules.get(_MODULE), "Attention", None)
    return cls if isinstance(cls, type) else None


def is_timm_attention(m: nn.Module) -> bool:
    """True for exactly timm's `Attention` (a subclass may compute something else)."""
    cls = _attention_class()
    return cls is not None and type(m) is cls and hasattr(m, "attn_dim")


def sync_heads(model: nn.Module) -> None:
    """Make every timm attention layer's head count agree with its `qkv` weight."""
    for m in model.modules():
        if is_timm_attention(m):
            m.num_heads = m.qkv.weight.shape[0] // 3 // m.head_dim
            m.attn_dim = m.num_heads * m.head_dim
