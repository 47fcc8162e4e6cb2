"""Network-slimming criterion: the batch-norm scale |gamma| of a channel."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from prunelab.criteria._units import slices, to_units
from prunelab.criteria.norms import l1
from prunelab.criteria.registry import register_criterion
from prunelab.graph.groups import Group


@register_criterion("bn_scale")
def bn_scale(
    model: nn.Module, group: Group, stats: Mapping[str, Any] | None = None
) -> torch.Tensor:
    """Sum of |gamma| over the group's batch norms (Liu et al., ICCV 2017).

    A group without an affine batch norm (a plain classifier input, say) has
    no gamma to read, so it falls back to the l1 norm of its filters.
    """
    gammas = group.members_of("norm", "weight")
    if not gammas:
        return l1(model, group)
    total = torch.zeros(group.size, dtype=torch.float64)
    for m in gammas:
        total += to_units(group, m, slices(model, m).abs().sum(dim=1))
    return total
