"""Property test: random small CNNs keep the masked == pruned contract."""

from __future__ import annotations

import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prunelab.graph import trace
from tests._contract import assert_close_rel, masked_and_pruned, random_plan
from tests._nets import (
    ConvBN,
    Dense,
    GroupedBlock,
    Head,
    InvertedResidual,
    Residual,
    SqueezeExcite,
    randomize_bn,
)

BLOCKS = ["conv", "residual", "residual_widen", "dense", "inverted", "se", "grouped"]


@st.composite
def networks(draw: st.DrawFn) -> tuple[nn.Module, list[str]]:
    width = draw(st.integers(2, 8))
    layers: list[nn.Module] = [ConvBN(3, width)]
    kinds = draw(st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=5))
    for kind in kinds:
        if kind == "conv":
            new = draw(st.integers(2, 8))
            layers.append(ConvBN(width, new))
            width = new
        elif kind == "residual":
            layers.append(Residual(width))
        elif kind == "residual_widen":
            new = draw(st.integers(2, 8))
            layers.append(Residual(width, new))
            width = new
        elif kind == "dense":
            growth = draw(st.integers(1, 4))
            layers.append(Dense(width, growth))
            width += growth
        elif kind == "inverted":
            layers.append(InvertedResidual(width, draw(st.integers(1, 3)), draw(st.integers(1, 2))))
        elif kind == "se":
            layers.append(SqueezeExcite(width, draw(st.integers(1, 4))))
        elif kind == "grouped":
            divisors = [g for g in range(2, width + 1) if width % g == 0]
            if divisors:
                layers.append(GroupedBlock(width, draw(st.sampled_from(divisors))))
    layers.append(Head(width, draw(st.integers(1, 2)), 3))
    return nn.Sequential(*layers), kinds


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    net=networks(),
    keep=st.floats(0.05, 1.0),
    seed=st.integers(0, 10_000),
)
def test_random_networks_keep_the_contract(
    net: tuple[nn.Module, list[str]], keep: float, seed: int
) -> None:
    model, _ = net
    torch.manual_seed(seed)
    model = randomize_bn(model, seed).eval()
    x = torch.randn(2, 3, 8, 8)
    graph = trace(model, x)
    plan = random_plan(graph, keep, seed)
    masked, pruned_out, pruned = masked_and_pruned(model, plan, x)
    assert pruned_out.shape == (2, 3)
    assert_close_rel(masked, pruned_out)
    # The pruned model is itself traceable and its shapes are consistent.
    regraph = trace(pruned, x)
    for g in plan.keep:
        assert plan.kept(g) <= graph.groups[g].size
    assert sum(p.numel() for p in pruned.parameters()) <= sum(p.numel() for p in model.parameters())
    assert len(regraph.groups) > 0
