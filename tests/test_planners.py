"""Planners meet cost targets; analytic plan costs equal counted costs."""

from __future__ import annotations

import pytest
import torch

from prunelab import models, planners
from prunelab.errors import ConfigError, InfeasibleBudgetError
from prunelab.graph import prune, trace
from prunelab.graph.cost import base_cost, plan_cost
from prunelab.metrics import count


@pytest.fixture(scope="module")
def resnet56():
    torch.manual_seed(0)
    model = models.create("resnet56").eval()
    x = torch.randn(1, 3, 32, 32)
    return model, trace(model, x), x


@pytest.mark.parametrize("strategy", ["uniform", "global"])
@pytest.mark.parametrize("round_to", [1, 8])
def test_for_cost_meets_half_flops_within_one_percent(resnet56, strategy, round_to) -> None:
    model, graph, x = resnet56
    plan = planners.for_cost(
        model, graph, 0.5, criterion="l1", strategy=strategy, round_to=round_to, normalize="max"
    )
    pruned = prune(model, plan)
    counted = count(pruned, x)
    base = count(model, x)
    assert abs(counted.flops / base.flops - 0.5) <= 0.005
    assert plan_cost(plan).flops == counted.flops and plan_cost(plan).params == counted.params


def test_params_target(resnet56) -> None:
    model, graph, _x = resnet56
    plan = planners.for_cost(model, graph, 0.4, metric="params")
    assert abs(plan_cost(plan).params / base_cost(graph).params - 0.4) <= 0.004


def test_rounding_keeps_multiples_of_eight(resnet56) -> None:
    model, graph, _ = resnet56
    plan = planners.uniform(model, graph, 0.6, round_to=8)
    for g in graph.prunable:
        assert plan.kept(g.index) % 8 == 0


def test_uniform_and_per_group_and_global(resnet56) -> None:
    model, graph, _ = resnet56
    plan = planners.uniform(model, graph, 0.5)
    for g in graph.prunable:
        assert plan.kept(g.index) == round(0.5 * g.size)
    target = graph.prunable[3]
    one = planners.per_group(model, graph, {target.name: 0.25})
    assert one.kept(target.index) == round(0.25 * target.size)
    assert set(one.keep) == {target.index}
    glob = planners.global_rank(model, graph, 0.5, criterion="l1", normalize="max")
    kept = sum(glob.kept(g.index) for g in graph.prunable)
    total = sum(g.size for g in graph.prunable)
    assert abs(kept / total - 0.5) < 0.05


def test_shortcut_groups_can_be_left_whole(resnet56) -> None:
    model, graph, _ = resnet56
    plan = planners.uniform(model, graph, 0.5, shortcuts=False)
    for g in graph.prunable:
        assert (plan.kept(g.index) == g.size) == g.coupled


def test_infeasible_and_bad_targets_are_clear_errors(resnet56) -> None:
    model, graph, _ = resnet56
    with pytest.raises(InfeasibleBudgetError, match=r"cannot reach 0\.1%"):
        planners.for_cost(model, graph, 0.001)
    with pytest.raises(InfeasibleBudgetError, match=r"\(0, 1\]"):
        planners.for_cost(model, graph, 1.5)
    with pytest.raises(ConfigError, match="keep"):
        planners.uniform(model, graph, 0.0)
    with pytest.raises(ConfigError, match="no group named"):
        planners.per_group(model, graph, {"nope": 0.5})


def test_shortcuts_false_leaves_only_residual_groups_whole_on_a_squeeze_excitation_net() -> None:
    """EfficientNet-B0's SE gates and depthwise convs couple its expanded channels too; only
    the residual streams stay whole, so a 50% FLOPs plan is reachable (it was not: 77.7%)."""
    from prunelab.graph.groups import is_residual

    model = models.create("efficientnet_b0", num_classes=10).eval()
    graph = trace(model, torch.zeros(1, 3, 32, 32))
    coupled = [g for g in graph.prunable if g.coupled]
    residual = [g for g in coupled if is_residual(graph, g)]
    assert len(residual) == 5 < len(coupled)  # 5 residual streams among 21 coupled groups
    chosen = {g.index for g in planners.select_groups(graph, shortcuts=False)}
    assert chosen == {g.index for g in graph.prunable} - {g.index for g in residual}
    plan = planners.for_cost(model, graph, 0.5, metric="flops", shortcuts=False)
    ratio = plan_cost(plan)["flops"] / base_cost(graph)["flops"]
    assert abs(ratio - 0.5) < 0.01
    assert all(len(plan.keep.get(g.index, range(g.size))) == g.size for g in residual)
