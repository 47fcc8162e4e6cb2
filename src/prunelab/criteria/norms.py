"""Magnitude criteria: the L1 and L2 norms of the filters producing a channel."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from prunelab.criteria._units import producer_filters, slices, to_units
from prunelab.criteria.registry import register_criterion
from prunelab.graph.groups import Group


def _norm_score(model: nn.Module, group: Group, p: int) -> torch.Tensor:
    total = torch.zeros(group.size, dtype=torch.float64)
    for m in producer_filters(group):
        rows = slices(model, m)
        total += to_units(group, m, rows.norm(p=p, dim=1) ** p)
    return total ** (1.0 / p)


@register_criterion("l1")
def l1(model: nn.Module, group: Group, stats: Mapping[str, Any] | None = None) -> torch.Tensor:
    """Sum of |w| over every filter producing the unit (Li et al., 2017)."""
    return _norm_score(model, group, 1)


@register_criterion("l2")
def l2(model: nn.Module, group: Group, stats: Mapping[str, Any] | None = None) -> torch.Tensor:
    """L2 norm of all filter weights producing the unit."""
    return _norm_score(model, group, 2)
