"""Attention layers whose heads were pruned: fewer heads, the same head width.

torch's `nn.MultiheadAttention` ties the width of its queries, keys and values
to the width of its input (`embed_dim`): its forward splits the packed
projection at `embed_dim` and checks square query weights. A model that lost
whole heads keeps its input and output width (the residual stream) but has a
narrower inside, which that forward cannot run. `HeadPrunedMultiheadAttention`
is the same module (same parameters, same state dict keys) with a forward
that reads the inside width off its weights: `num_heads * head_dim`. Surgery
switches a pruned module's class to it; loading a pruned model does the same.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["HeadPrunedMultiheadAttention"]


class HeadPrunedMultiheadAttention(nn.MultiheadAttention):
    """`nn.MultiheadAttention` with `num_heads * head_dim` (not `embed_dim`) inside.

    Computes what the dense module computes on the heads it kept: each head
    projects, attends and is projected back exactly as before; the removed
    heads' terms are gone from the output projection's sum.
    """

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.head_dim

    def forward(  # type: ignore[override]
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:  # (L, E): one sequence
            query, key, value = (t.unsqueeze(0) for t in (query, key, value))
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif not self.batch_first:  # (L, B, E) -> (B, L, E)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        q, k, v = self._project(query, key, value)
        batch, heads, hd = q.shape[0], self.num_heads, self.head_dim
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.expand(batch, 1, -1)], dim=1)
            v = torch.cat([v, self.bias_v.expand(batch, 1, -1)], dim=1)
            attn_mask, key_padding_mask = _pad_key(attn_mask), _pad_key(key_padding_mask)
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(batch, 1, k.shape[2])], dim=1)
            v = torch.cat([v, v.new_zeros(batch, 1, v.shape[2])], dim=1)
            attn_mask, key_padding_mask = _pad_key(attn_mask), _pad_key(key_padding_mask)
        q, k, v = (t.view(batch, t.shape[1], heads, hd).transpose(1, 2) for t in (q, k, v))
        logits = (q * hd**-0.5) @ k.transpose(-2, -1)  # (B, H, L, S)
        logits = logits + self._additive_mask(attn_mask, key_padding_mask, logits)
        weights = F.dropout(logits.softmax(dim=-1), p=self.dropout, training=self.training)
        out = (weights @ v).transpose(1, 2).reshape(batch, q.shape[2], self.inner_dim)
        # functional, as torch's forward: the output projection is counted with the layer
        out = F.linear(out, self.out_proj.weight, self.out_proj.bias)
        if unbatched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        weights = weights.mean(dim=1) if average_attn_weights else weights
        return out, weights.squeeze(0) if unbatched else weights

    def _project(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._qkv_same_embed_dim:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q = b_k = b_v = None
        if self.in_proj_bias is not None:
            b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        return F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)

    def _additive_mask(
        self,
        attn_mask: torch.Tensor | None,
        key_padding_mask: torch.Tensor | None,
        logits: torch.Tensor,
    ) -> torch.Tensor:
        """attn_mask and key_padding_mask as one float mask broadcasting to (B, H, L, S)."""
        batch, heads, length, keys = logits.shape
        total = logits.new_zeros(())
        if attn_mask is not None:
            if attn_mask.dim() == 3:  # (B * H, L, S)
                attn_mask = attn_mask.view(batch, heads, length, keys)
            total = total + _as_float(attn_mask, logits)
        if key_padding_mask is not None:  # (B, S)
            total = total + _as_float(key_padding_mask, logits).view(batch, 1, 1, keys)
        return total


def _as_float(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A boolean mask (True = may not attend) as -inf / 0; a float mask as it is."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=like.dtype, device=like.device).masked_fill(
            mask, float("-inf")
        )
    return mask.to(like.dtype)


def _pad_key(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A mask with one more key (the bias or zero key appended), which everyone may attend."""
    return None if mask is None else F.pad(mask, (0, 1))
