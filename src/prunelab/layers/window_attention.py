"""Window attention of Swin (v1, v2) and MaxViT with heads pruned (head width kept).

torchvision's `shifted_window_attention` and MaxViT's
`RelativePositionalMultiHeadAttention.forward` take the inside width
(heads * head_dim) from their input's channel count. After whole heads are
removed the inside is narrower than the input, so the classes here are the
same modules (same parameters, state dict keys and results) whose forward
reads the inside width off the query/key/value projection instead. Surgery
switches a pruned module's class to them; loading a pruned model does too.

The computation follows torchvision's step by step (pad, cyclic shift,
partition, attention with relative position bias and the shift mask,
reverse), so a model whose heads are all kept computes exactly what it did.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.models.maxvit import RelativePositionalMultiHeadAttention
from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2

__all__ = [
    "HeadPrunedMaxVitAttention",
    "HeadPrunedWindowAttention",
    "HeadPrunedWindowAttentionV2",
    "window_attention",
]


def _shift_mask(
    padded: tuple[int, int], window: list[int], shift: list[int], like: torch.Tensor
) -> torch.Tensor:
    """(windows, N, N): -100 between tokens a cyclic shift brought together from afar."""
    region = like.new_zeros(padded)
    label = 0
    for rows in (slice(0, -window[0]), slice(-window[0], -shift[0]), slice(-shift[0], None)):
        for cols in (slice(0, -window[1]), slice(-window[1], -shift[1]), slice(-shift[1], None)):
            region[rows, cols] = label
            label += 1
    h, w = padded[0] // window[0], padded[1] // window[1]
    region = region.view(h, window[0], w, window[1]).permute(0, 2, 1, 3).reshape(h * w, -1)
    differ = region.unsqueeze(1) - region.unsqueeze(2)
    return torch.where(differ != 0, -100.0, 0.0).to(like.dtype)


def window_attention(
    x: torch.Tensor,
    qkv_weight: torch.Tensor,
    proj_weight: torch.Tensor,
    position_bias: torch.Tensor,
    window: list[int],
    heads: int,
    shift: list[int],
    attention_dropout: float = 0.0,
    dropout: float = 0.0,
    qkv_bias: torch.Tensor | None = None,
    proj_bias: torch.Tensor | None = None,
    logit_scale: torch.Tensor | None = None,
    training: bool = False,
) -> torch.Tensor:
    """Swin's (shifted) window attention on (B, H, W, C); inside width = qkv rows / 3."""
    batch, height, width, _ = x.shape
    inner = qkv_weight.shape[0] // 3
    head_dim = inner // heads
    x = F.pad(x, (0, 0, 0, -width % window[1], 0, -height % window[0]))
    padded = (x.shape[1], x.shape[2])
    shift = [0 if window[i] >= padded[i] else shift[i] for i in range(2)]
    if sum(shift):
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    grid = (padded[0] // window[0], padded[1] // window[1])
    tokens = window[0] * window[1]
    x = x.view(batch, grid[0], window[0], grid[1], window[1], -1).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(batch * grid[0] * grid[1], tokens, -1)
    if logit_scale is not None and qkv_bias is not None:  # v2: keys get no bias
        qkv_bias = torch.cat([qkv_bias[:inner], torch.zeros_like(qkv_bias[inner:2 * inner]),
                              qkv_bias[2 * inner:]])  # fmt: skip
    qkv = F.linear(x, qkv_weight, qkv_bias).reshape(x.shape[0], tokens, 3, heads, head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    if logit_scale is not None:  # v2: cosine attention with a learnt temperature per head
        logits = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        logits = logits * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    else:
        logits = (q * head_dim**-0.5) @ k.transpose(-2, -1)
    logits = logits + position_bias
    if sum(shift):
        mask = _shift_mask(padded, window, shift, logits)
        logits = logits.view(batch, -1, heads, tokens, tokens) + mask.unsqueeze(1).unsqueeze(0)
        logits = logits.view(-1, heads, tokens, tokens)
    weights = F.dropout(logits.softmax(dim=-1), p=attention_dropout, training=training)
    x = (weights @ v).transpose(1, 2).reshape(x.shape[0], tokens, inner)
    x = F.dropout(F.linear(x, proj_weight, proj_bias), p=dropout, training=training)
    x = x.view(batch, grid[0], grid[1], window[0], window[1], -1).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(batch, padded[0], padded[1], -1)
    if sum(shift):
        x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
    return x[:, :height, :width, :].contiguous()


def _swin_forward(m: ShiftedWindowAttention, x: torch.Tensor) -> torch.Tensor:
    return window_attention(
        x, m.qkv.weight, m.proj.weight, m.get_relative_position_bias(), m.window_size,
        m.num_heads, m.shift_size, m.attention_dropout, m.dropout, m.qkv.bias, m.proj.bias,
        getattr(m, "logit_scale", None), m.training,
    )  # fmt: skip


class HeadPrunedWindowAttention(ShiftedWindowAttention):
    """Swin v1's window attention whose inside is `num_heads` heads of the original width."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _swin_forward(self, x)


class HeadPrunedWindowAttentionV2(ShiftedWindowAttentionV2):
    """Swin v2's window attention (cosine attention, bias MLP) with heads pruned."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _swin_forward(self, x)


class HeadPrunedMaxVitAttention(RelativePositionalMultiHeadAttention):
    """MaxViT's relative-position attention on (B, G, P, D) with heads pruned."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, groups, tokens, _ = x.shape
        qkv = self.to_qkv(x).view(batch, groups, tokens, 3, self.n_heads, self.head_dim)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5)  # each (B, G, H, P, head_dim)
        logits = q @ (k * self.scale_factor).transpose(-2, -1)
        weights = F.softmax(logits + self.get_relative_positional_bias(), dim=-1)
        out = (weights @ v).permute(0, 1, 3, 2, 4).reshape(batch, groups, tokens, -1)
        return self.merge(out)
