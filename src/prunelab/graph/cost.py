"""The cost of a plan, computed from the traced shapes without building the model.

Costs are multiply-accumulates of conv and linear layers (MACs, which the
pruning papers call FLOPs) per image, and parameter counts. Planners call this
hundreds of times while searching, so it counts removed positions per member
instead of performing surgery; `prunelab.metrics.count` on the pruned model
gives the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from prunelab.graph.groups import ChannelGraph
from prunelab.graph.plan import Plan


@dataclass(frozen=True)
class PlanCost:
    flops: int
    params: int

    def __getitem__(self, metric: str) -> int:
        return int(getattr(self, metric))


def _shapes(graph: ChannelGraph, keep: dict[int, torch.Tensor]) -> dict[tuple[str, str], list[int]]:
    shapes = {k: list(s) for k, s in graph.param_shapes.items()}
    for gi, mask in keep.items():
        gone = ~mask
        if not gone.any():
            continue
        for m in graph.groups[gi].members:
            shapes[(m.module, m.param)][m.dim] -= int(gone[m.units].sum())
    return shapes


def cost_of_masks(graph: ChannelGraph, keep: dict[int, torch.Tensor]) -> PlanCost:
    """Cost after keeping the units where each group's bool mask is True."""
    shapes = _shapes(graph, keep)
    flops = 0
    for layer in graph.layers.values():
        w = shapes[(layer.module, "weight")]
        flops += layer.out_spatial * w[0] * w[1] * layer.kernel
    params = sum(math.prod(s) for k, s in shapes.items() if k not in graph.buffer_keys)
    return PlanCost(flops=flops, params=params)


def plan_cost(plan: Plan) -> PlanCost:
    """Cost of the model `prune(model, plan)` would return."""
    return cost_of_masks(plan.graph, {g: plan.keep_mask(g) for g in plan.keep})


def base_cost(graph: ChannelGraph) -> PlanCost:
    """Cost of the unpruned model."""
    return cost_of_masks(graph, {})
