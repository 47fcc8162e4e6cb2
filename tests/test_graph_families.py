"""Architecture families the engine learnt one by one: each prunes or is refused clearly."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.ops.misc import FrozenBatchNorm2d

from prunelab.errors import UnsupportedModelError
from prunelab.graph import ChannelMask, prune, trace
from prunelab.graph.selfcheck import check_prunes, half_plan, output_difference
from tests._nets import randomize_bn


def _frozen_from(model: nn.Module) -> nn.Module:
    """Fill every FrozenBatchNorm2d with non-trivial statistics."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            n = m.weight.numel()
            m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return model


def test_frozen_batch_norm_is_pruned_like_batch_norm() -> None:
    torch.manual_seed(0)
    model = _frozen_from(torchvision.models.resnet18(num_classes=10, norm_layer=FrozenBatchNorm2d))
    result = check_prunes(model, torch.randn(2, 3, 64, 64))
    assert result.passed, result
    graph = trace(model, torch.randn(1, 3, 64, 64))
    assert "bn1" in graph.group_of("conv1").norms


def test_convnext_prunes_its_mlp_and_names_layer_norm_for_the_stream() -> None:
    torch.manual_seed(0)
    model = torchvision.models.convnext_tiny(num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    result = check_prunes(model, x)
    assert result.passed, result
    graph = trace(model, x)
    hidden = graph.group_of("features.1.0.block.3")  # the MLP's first linear
    assert hidden.prunable and "features.1.0.block.5" in hidden.consumers
    stream = graph.group_of("features.1.0.block.0")  # the depthwise conv on the stream
    assert not stream.prunable and "layer_norm" in stream.reason
    # layer scale is a parameter multiplied onto the stream: it is a member of it
    assert any(m.param == "layer_scale" for m in stream.members)


class _StdConv(nn.Conv2d):
    """A conv that standardises its weight first, as timm's StdConv2d does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True)
        return F.conv2d(x, w.reshape_as(self.weight), self.bias, self.stride, self.padding)


class _PlainSubclass(nn.Conv2d):
    """Subclasses Conv2d without touching forward: the same layer."""


def _net(conv: type[nn.Conv2d]) -> nn.Module:
    return nn.Sequential(conv(3, 8, 3, padding=1), nn.ReLU(), conv(8, 4, 3, padding=1))


def test_a_leaf_with_its_own_forward_is_refused_not_pruned_wrongly() -> None:
    with pytest.raises(UnsupportedModelError, match=r"_StdConv.*'0'.*own forward.*leaves="):
        trace(_net(_StdConv), torch.randn(1, 3, 8, 8), leaves=(_StdConv,))
    # followed into, the weight it computes is refused where channels stop being followed
    with pytest.raises(UnsupportedModelError, match=r"at '0 \("):
        trace(_net(_StdConv), torch.randn(1, 3, 8, 8))


def test_a_leaf_subclass_keeping_the_forward_prunes() -> None:
    torch.manual_seed(0)
    model = _net(_PlainSubclass)
    result = check_prunes(model, torch.randn(2, 3, 8, 8))
    assert result.passed, result


@pytest.mark.slow
def test_an_input_too_small_for_the_aux_head_is_a_clear_error() -> None:
    model = torchvision.models.inception_v3(num_classes=10, init_weights=True)
    with pytest.raises(UnsupportedModelError, match=r"only in training, AuxLogits.*as large as"):
        trace(model, torch.randn(1, 3, 75, 75))


@pytest.mark.parametrize(
    "name", ["googlenet", pytest.param("inception_v3", marks=pytest.mark.slow)]
)
def test_aux_heads_are_pruned_with_the_trunk_and_the_pruned_model_trains(name: str) -> None:
    torch.manual_seed(0)
    # no dropout: it would draw different masks for the pruned model's smaller tensors
    no_dropout = {"dropout": 0.0, **({"dropout_aux": 0.0} if name == "googlenet" else {})}
    model = torchvision.models.get_model(name, num_classes=10, init_weights=True, **no_dropout)
    model = randomize_bn(model)
    x = torch.randn(2, 3, *((64, 64) if name == "googlenet" else (299, 299)))
    graph = trace(model, x)
    aux = "aux1.conv.conv" if name == "googlenet" else "AuxLogits.conv0.conv"
    assert any(aux in g.consumers for g in graph.prunable), "aux head not in any group"
    # aux layers cost nothing at inference: planned FLOPs stay the counted ones
    assert not any(layer.startswith(aux.split(".")[0]) for layer in graph.layers)
    plan = half_plan(graph)
    pruned = prune(model, plan)
    masked = copy.deepcopy(model)
    mask = ChannelMask(masked, graph)
    mask.update({g: plan.keep_mask(g) for g in plan.keep})
    mask.apply()
    outs = []
    for net in (masked, pruned):
        net.train()
        torch.manual_seed(1)  # the same dropout in both
        outs.append(net(x))
    assert type(outs[1]).__name__.endswith("Outputs")
    # train-mode BN on a batch of two through ~90 layers amplifies float rounding: a CI run
    # measured 1.01e-4 on inception_v3 (a real error is of order 1)
    assert output_difference(outs[0], outs[1]) < 5e-4
    y = torch.tensor([1, 2])
    loss = sum(nn.functional.cross_entropy(o, y) for o in outs[1] if o is not None)
    loss.backward()
    torch.optim.SGD(pruned.parameters(), lr=0.1).step()
    assert all(torch.isfinite(p).all() for p in pruned.parameters())
