"""Criteria rank channels as their formulas say."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from prunelab import models
from prunelab.criteria import DATA_DRIVEN, collect_taylor, list_criteria, score
from prunelab.errors import UnknownNameError
from prunelab.graph import trace
from tests._nets import ConvBN, Residual


def _single_conv() -> tuple[nn.Module, object]:
    model = nn.Sequential(ConvBN(2, 5, k=1), nn.Conv2d(5, 3, 1))
    graph = trace(model, torch.randn(1, 2, 4, 4))
    return model, graph.group_of("0.0")


def test_registry_lists_the_classic_criteria() -> None:
    assert {"l1", "l2", "gm", "bn_scale", "taylor", "taylor_weight", "random"} <= set(
        list_criteria()
    )
    assert "taylor" in DATA_DRIVEN
    with pytest.raises(UnknownNameError, match="criterion 'nope'"):
        score("nope", *_single_conv())


def test_l1_and_l2_rank_a_zeroed_filter_last() -> None:
    model, group = _single_conv()
    with torch.no_grad():
        w = model[0][0].weight
        w.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]).view(5, 1, 1, 1) * torch.ones(5, 2, 1, 1))
        w[2] = 0
    l1 = score("l1", model, group)
    assert torch.allclose(l1, torch.tensor([2.0, 4.0, 0.0, 8.0, 10.0], dtype=torch.float64))
    assert int(torch.argmin(score("l2", model, group))) == 2


def test_gm_ranks_duplicated_central_filters_first_to_remove() -> None:
    model, group = _single_conv()
    filters = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 0.0], [0.0, 10.0], [-10.0, 0.0]])
    with torch.no_grad():
        model[0][0].weight.copy_(filters.view(5, 2, 1, 1))
    gm = score("gm", model, group)
    assert set(torch.argsort(gm)[:2].tolist()) == {0, 2}
    expected = torch.cdist(filters.double(), filters.double()).sum(1)
    assert torch.allclose(gm, expected)


def test_bn_scale_reads_abs_gamma_and_coupled_groups_sum() -> None:
    model, group = _single_conv()
    with torch.no_grad():
        model[0][1].weight.copy_(torch.tensor([0.5, -2.0, 0.1, 1.0, -0.3]))
    assert torch.allclose(
        score("bn_scale", model, group),
        torch.tensor([0.5, 2.0, 0.1, 1.0, 0.3], dtype=torch.float64),
    )
    net = nn.Sequential(ConvBN(3, 4), Residual(4), nn.Conv2d(4, 2, 1))
    graph = trace(net, torch.randn(1, 3, 4, 4))
    coupled = graph.group_of("0.0")
    assert coupled.coupled
    with torch.no_grad():
        net[0][1].weight.fill_(1.0)
        net[1].b[1].weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert torch.allclose(
        score("bn_scale", net, coupled), torch.tensor([2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    )


def test_taylor_scores_from_batches_and_zero_filter_scores_zero() -> None:
    torch.manual_seed(0)
    model = models.create("resnet20")
    with torch.no_grad():
        model.conv1.weight[3] = 0
    graph = trace(model, torch.randn(1, 3, 32, 32))
    batches = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))) for _ in range(2)]
    stats = collect_taylor(model, batches)
    inner = graph.group_of("layer1.0.conv1")
    s = score("taylor_weight", model, inner, stats)
    assert s.shape == (inner.size,) and torch.all(s >= 0) and s.sum() > 0
    assert all(p.grad is None for p in model.parameters())
    stem = graph.group_of("conv1")
    stem_conv = next(m for m in stem.members if m.module == "conv1" and m.param == "weight")
    only_stem = torch.zeros(stem.size, dtype=torch.float64).index_add_(
        0, stem_conv.units, stats["taylor"][("conv1", "weight")][stem_conv.positions]
    )
    assert only_stem[3] == 0
    with pytest.raises(ValueError, match="collect_taylor"):
        score("taylor", model, inner)


def test_gate_taylor_equals_a_hand_computation_on_a_tiny_network() -> None:
    """(gamma dL/dgamma + beta dL/dbeta)^2 per batch, averaged: the squared derivative of a gate."""
    torch.manual_seed(0)
    model = nn.Sequential(ConvBN(2, 4, k=3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3))  # fmt: skip
    with torch.no_grad():
        model[0][1].weight.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
        model[0][1].bias.copy_(torch.tensor([0.1, 0.3, -0.2, 0.4]))
    model.eval()
    group = trace(model, torch.randn(1, 2, 5, 5)).group_of("0.0")
    batches = [(torch.randn(6, 2, 5, 5), torch.randint(0, 3, (6,))) for _ in range(2)]
    # By hand: a gate g (= 1) multiplying the BN output; dL/dg per channel, squared, averaged.
    conv, bn = model[0][0], model[0][1]
    expected = torch.zeros(4, dtype=torch.float64)
    for x, y in batches:
        gate = torch.ones(4, requires_grad=True)
        out = bn(conv(x)) * gate.view(1, 4, 1, 1)
        loss = nn.functional.cross_entropy(model[4](model[3](model[2](model[1](out)))), y)
        (grad,) = torch.autograd.grad(loss, gate)
        expected += grad.double().pow(2) / len(batches)
    got = score("taylor", model, group, collect_taylor(model, batches))
    torch.testing.assert_close(got, expected)
    # The filter form is a different number; both are registered and need data.
    assert {"taylor", "taylor_weight"} <= DATA_DRIVEN
    weight = score("taylor_weight", model, group, collect_taylor(model, batches))
    assert not torch.allclose(weight, got)


def test_l2_of_a_coupled_group_sums_the_per_layer_norms() -> None:
    net = nn.Sequential(ConvBN(3, 4, k=1), Residual(4), nn.Conv2d(4, 2, 1))
    coupled = trace(net, torch.randn(1, 3, 4, 4)).group_of("0.0")
    assert coupled.coupled
    producers = [m.module for m in coupled.members_of("out", "weight")]
    assert len(producers) == 2  # the stem and the block's last conv write the same channels
    expected = sum(
        net.get_submodule(name).weight.detach().double().flatten(1).norm(dim=1)
        for name in producers
    )
    torch.testing.assert_close(score("l2", net, coupled), expected)
    pooled = sum(net.get_submodule(n).weight.detach().double().flatten(1).pow(2).sum(1)
                 for n in producers).sqrt()  # fmt: skip
    assert not torch.allclose(score("l2", net, coupled), pooled)


def test_random_is_repeatable_with_a_generator() -> None:
    model, group = _single_conv()
    a = score("random", model, group, {"generator": torch.Generator().manual_seed(5)})
    b = score("random", model, group, {"generator": torch.Generator().manual_seed(5)})
    assert torch.equal(a, b)
