"""FPGM: filters near the geometric median are replaceable (He et al., CVPR 2019)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from prunelab.criteria._units import producer_filters, slices, to_units
from prunelab.criteria.registry import register_criterion
from prunelab.graph.groups import Group


@register_criterion("gm")
def geometric_median(
    model: nn.Module, group: Group, stats: Mapping[str, Any] | None = None
) -> torch.Tensor:
    """Sum of Euclidean distances from a filter to all others in its layer.

    A filter close to the layer's geometric median is well represented by the
    rest, so it scores low and is removed first. Coupled layers add up.
    """
    total = torch.zeros(group.size, dtype=torch.float64)
    for m in producer_filters(group):
        rows = slices(model, m).double()
        if rows.shape[0] < 2:
            continue
        dist = torch.cdist(rows, rows).sum(dim=1)
        total += to_units(group, m, dist)
    return total
