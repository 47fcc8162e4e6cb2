"""Random scores: the control every criterion should beat."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from prunelab.criteria.registry import register_criterion
from prunelab.graph.groups import Group


@register_criterion("random")
def random_scores(
    model: nn.Module, group: Group, stats: Mapping[str, Any] | None = None
) -> torch.Tensor:
    """Uniform random scores; `stats["generator"]` (a torch.Generator) makes them repeatable."""
    gen = stats.get("generator") if stats else None
    return torch.rand(group.size, generator=gen, dtype=torch.float64)
