"""Magnitude criteria: the L1 and L2 norms of the filters producing a channel."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from prunelab.criteria._units import producer_filters, slices, to_units
from prunelab.criteria.registry import register_criterion
from prunelab.graph.groups import Group


@register_criterion("l1")
def l1(model: nn.Module, group: Group, stats: Mapping[str, Any] | None = None) -> torch.Tensor:
    """Sum of |w| over every filter producing the unit (Li et al., 2017)."""
    total = torch.zeros(group.size, dtype=torch.float64)
    for m in producer_filters(group):
        total += to_units(group, m, slices(model, m).abs().sum(dim=1))
    return total


@register_criterion("l2")
def l2(model: nn.Module, group: Group, stats: Mapping[str, Any] | None = None) -> torch.Tensor:
    """Sum over the producing layers of each layer's filter L2 norm.

    In a coupled group (a residual stage) a unit is produced by several
    layers; as the random-pruning supplement, their norms are added, not
    pooled into one norm of all their weights.
    """
    total = torch.zeros(group.size, dtype=torch.float64)
    for m in producer_filters(group):
        total += to_units(group, m, slices(model, m).pow(2).sum(dim=1)).sqrt()
    return total
