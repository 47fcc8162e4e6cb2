"""Layers that call torch's functional forms, and channels split into radix groups.

The patterns timm builds its models from, written by hand so the engine's rules
are tested without timm installed: a BatchNorm2d subclass whose forward calls
F.batch_norm (timm's BatchNormAct2d), a Linear subclass calling F.linear (timm's
Linear), a conv whose forward computes its weight (refused, never pruned into a
different model), ResNeSt's split attention and GhostNet's cat-then-slice.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from prunelab.errors import UnsupportedModelError
from prunelab.graph import trace
from prunelab.graph.selfcheck import check_prunes, randomize_norms


class _BatchNormAct(nn.BatchNorm2d):
    """BatchNorm2d + ReLU with the norm written out functionally, as timm does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias,
            self.training, self.momentum or 0.0, self.eps,
        )  # fmt: skip
        return F.relu(x)


class _FunctionalLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class _ScaledConv(nn.Conv2d):
    """Computes its weight in forward: not the Conv2d its tensors describe."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * 2.0, self.bias, self.stride, self.padding)


def _classifier(conv: type[nn.Conv2d], norm: type[nn.BatchNorm2d], linear: type[nn.Linear]):
    return nn.Sequential(
        conv(3, 16, 3, padding=1), norm(16), conv(16, 16, 3, padding=1), norm(16),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear(16, 16), nn.ReLU(), linear(16, 5),
    )  # fmt: skip


def test_functional_batch_norm_and_linear_in_subclasses_prune() -> None:
    torch.manual_seed(0)
    model = randomize_norms(_classifier(nn.Conv2d, _BatchNormAct, _FunctionalLinear))
    result = check_prunes(model, torch.randn(2, 3, 8, 8))
    assert result.passed and result.prunable == 3, result
    graph = trace(model, torch.randn(1, 3, 8, 8))
    first = graph.group_of("0")
    assert "1" in first.norms  # the functional norm's tensors are pruned with the conv
    assert {m.param for m in first.members if m.module == "1"} == {
        "weight", "bias", "running_mean", "running_var"
    }
    assert "6" in graph.layers  # the functional linear counts as a layer


def test_a_conv_computing_its_weight_is_refused() -> None:
    model = _classifier(_ScaledConv, nn.BatchNorm2d, nn.Linear)
    with pytest.raises(UnsupportedModelError, match=r"conv2d.*'0 .*weight is computed"):
        trace(model, torch.randn(1, 3, 8, 8))


class _SplitAttention(nn.Module):
    """ResNeSt's split attention (radix 2): radix groups summed, gated by a radix softmax."""

    def __init__(self, channels: int = 8, radix: int = 2) -> None:
        super().__init__()
        self.radix = radix
        self.conv = nn.Conv2d(channels, channels * radix, 3, padding=1, groups=radix)
        self.bn = nn.BatchNorm2d(channels * radix)
        self.fc1 = nn.Conv2d(channels, 16, 1)
        self.fc2 = nn.Conv2d(16, channels * radix, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        b, rc, h, w = x.shape
        x = x.reshape((b, self.radix, rc // self.radix, h, w))
        gap = x.sum(dim=1).mean((2, 3), keepdim=True)
        attn = self.fc2(F.relu(self.fc1(gap)))
        attn = attn.view(b, 1, self.radix, -1).transpose(1, 2)
        attn = F.softmax(attn, dim=1).reshape(b, -1).view(b, -1, 1, 1)
        return (x * attn.reshape((b, self.radix, rc // self.radix, 1, 1))).sum(dim=1)


class _Ghost(nn.Module):
    """GhostNet's module: primary conv, cheap depthwise conv, concatenated, cut to `out`."""

    def __init__(self, cin: int, out: int) -> None:
        super().__init__()
        self.out = out
        self.primary = nn.Conv2d(cin, out // 2, 1)
        self.cheap = nn.Conv2d(out // 2, out // 2, 3, padding=1, groups=out // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.primary(x)
        return torch.cat([y, self.cheap(y)], dim=1)[:, : self.out]


def test_split_attention_prunes_its_radix_groups_together() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), _SplitAttention(), nn.Conv2d(8, 4, 1))
    model = randomize_norms(model)
    result = check_prunes(model, torch.randn(2, 3, 8, 8))
    assert result.passed, result
    graph = trace(model, torch.randn(1, 3, 8, 8))
    radix = graph.group_of("1.conv")
    assert radix.prunable and radix.unit_width == 2  # channel j of both radix groups at once
    assert graph.group_of("1.fc2") is radix  # the attention's gates go with them


def test_a_softmax_across_radix_channels_is_not_pruned_through() -> None:
    class _MixingSoftmax(_SplitAttention):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.conv(x)
            b, rc, h, w = x.shape
            x = x.reshape((b, self.radix, rc // self.radix, h, w))
            return F.softmax(x, dim=2).sum(dim=1)  # across the channels of a radix group

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), _MixingSoftmax(), nn.Conv2d(8, 4, 1))
    graph = trace(model, torch.randn(1, 3, 8, 8))
    assert not graph.group_of("1.conv").prunable
    assert check_prunes(model, torch.randn(2, 3, 8, 8)).passed


def test_a_slice_keeping_every_channel_prunes_through() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(_Ghost(3, 8), nn.ReLU(), _Ghost(8, 8), nn.Conv2d(8, 4, 1))
    result = check_prunes(model, torch.randn(2, 3, 8, 8))
    assert result.passed and result.prunable >= 2, result
    cut = nn.Sequential(_Ghost(3, 6), nn.Conv2d(5, 4, 1))
    cut[0].out = 5  # a real cut: those channels stay whole
    assert not trace(cut, torch.randn(1, 3, 8, 8)).group_of("0.primary").prunable
