"""The cost of a plan, computed from the traced shapes without building the model.

Costs are multiply-accumulates of conv and linear layers (MACs, which the
pruning papers call FLOPs) per image, plus those of attention (its projections
and its two matmuls, `ChannelGraph.products`), and parameter counts. Planners call this
hundreds of times while searching, so it counts removed positions per member
instead of performing surgery; `prunelab.metrics.count` on the pruned model
gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from prunelab.graph.groups import ChannelGraph
from prunelab.graph.plan import Plan


@dataclass(frozen=True)
class PlanCost:
    flops: int
    params: int

    def __getitem__(self, metric: str) -> int:
        return int(getattr(self, metric))


class CostModel:
    """The costs of keep-masks on one graph, vectorised for searches that try thousands.

    Every dimension of every tensor gets a slot in one array of sizes (slot 0 is
    a constant 1 that pads shorter shapes). A group's members subtract from their
    slots the positions its removed units own: one product of a (members x units)
    count matrix with the removed-units vector. FLOPs and params are then array
    arithmetic over the slots, with no Python loop over layers.
    """

    def __init__(self, graph: ChannelGraph) -> None:
        self.graph = graph
        rank = max((len(s) for s in graph.param_shapes.values()), default=1)
        sizes, slot = [1], {}
        param_slots = np.zeros((len(graph.param_shapes), rank), dtype=np.int64)
        for i, ((module, param), shape) in enumerate(graph.param_shapes.items()):
            for d, n in enumerate(shape):
                slot[(module, param, d)] = param_slots[i, d] = len(sizes)
                sizes.append(n)
        self._slot = slot
        self._sizes = np.array(sizes, dtype=np.int64)
        self._param_slots = param_slots
        self._counted = np.array([k not in graph.buffer_keys for k in graph.param_shapes])
        layers = list(graph.layers.values())
        self._out = np.array([slot[(ly.module, "weight", 0)] for ly in layers], dtype=np.int64)
        self._in = np.array([slot[(ly.module, "weight", 1)] for ly in layers], dtype=np.int64)
        self._factor = np.array([ly.out_spatial * ly.kernel for ly in layers], dtype=np.int64)
        # products: factor * prod(sizes of up to `rank` slots), padded with slot 0 (size 1)
        prod_slots = np.zeros((len(graph.products), 3), dtype=np.int64)
        for i, p in enumerate(graph.products):
            prod_slots[i, : len(p.dims)] = [slot[d] for d in p.dims]
        self._prod_slots = prod_slots
        self._prod_factor = np.array([p.factor for p in graph.products], dtype=np.int64)
        self._members: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _group(self, gi: int) -> tuple[np.ndarray, np.ndarray]:
        if gi not in self._members:  # built on first use: most searches touch few groups
            group = self.graph.groups[gi]
            slots = np.array([self._slot[m.key] for m in group.members])
            owned = np.stack(
                [np.bincount(m.units.numpy(), minlength=group.size) for m in group.members]
            )
            self._members[gi] = (slots.astype(np.int64), owned.astype(np.int64))
        return self._members[gi]

    def sizes(self, keep: Mapping[int, torch.Tensor | np.ndarray]) -> np.ndarray:
        """Every slot's size after keeping the units where each group's mask is True."""
        sizes = self._sizes.copy()
        for gi, mask in keep.items():
            gone = ~np.asarray(mask, dtype=bool)
            if gone.any():
                slots, owned = self._group(gi)
                np.subtract.at(sizes, slots, owned @ gone.astype(np.int64))
        return sizes

    def layer_widths(
        self, keep: Mapping[int, torch.Tensor | np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each layer's weight dims 0 and 1 (out, in per group), in `graph.layers` order."""
        sizes = self.sizes(keep)
        return sizes[self._out], sizes[self._in]

    def product_macs(self, keep: Mapping[int, torch.Tensor | np.ndarray]) -> float:
        """MACs outside conv/linear modules (attention's projections and matmuls) per image."""
        sizes = self.sizes(keep)
        return float((self._prod_factor * sizes[self._prod_slots].prod(axis=1)).sum())

    def cost(self, keep: Mapping[int, torch.Tensor | np.ndarray]) -> PlanCost:
        sizes = self.sizes(keep)
        flops = int((self._factor * sizes[self._out] * sizes[self._in]).sum())
        flops += int((self._prod_factor * sizes[self._prod_slots].prod(axis=1)).sum())
        params = int(sizes[self._param_slots].prod(axis=1)[self._counted].sum())
        return PlanCost(flops=flops, params=params)


def cost_model(graph: ChannelGraph) -> CostModel:
    """The graph's cost model, built once and kept on the graph."""
    if graph.cost_model is None:
        graph.cost_model = CostModel(graph)
    return graph.cost_model


def cost_of_masks(graph: ChannelGraph, keep: Mapping[int, torch.Tensor]) -> PlanCost:
    """Cost after keeping the units where each group's bool mask is True."""
    return cost_model(graph).cost(keep)


def plan_cost(plan: Plan) -> PlanCost:
    """Cost of the model `prune(model, plan)` would return."""
    return cost_of_masks(plan.graph, {g: plan.keep_mask(g) for g in plan.keep})


def base_cost(graph: ChannelGraph) -> PlanCost:
    """Cost of the unpruned model."""
    return cost_of_masks(graph, {})
