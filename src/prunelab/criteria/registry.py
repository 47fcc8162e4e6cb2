"""The criterion registry: one function and one line per criterion."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn

from prunelab.errors import UnknownNameError
from prunelab.graph.groups import Group

# A criterion maps (model, group, optional statistics) to one score per unit of
# the group; a higher score means more important, so pruning drops the lowest.
Criterion = Callable[[nn.Module, Group, Mapping[str, Any] | None], torch.Tensor]

_CRITERIA: dict[str, Criterion] = {}
# Criteria that need statistics from data (gradients, activations) before scoring.
DATA_DRIVEN: set[str] = set()


def register_criterion(name: str, needs_data: bool = False) -> Callable[[Criterion], Criterion]:
    def add(fn: Criterion) -> Criterion:
        _CRITERIA[name] = fn
        if needs_data:
            DATA_DRIVEN.add(name)
        return fn

    return add


def get_criterion(name: str) -> Criterion:
    try:
        return _CRITERIA[name]
    except KeyError:
        raise UnknownNameError("criterion", name, list(_CRITERIA)) from None


def list_criteria() -> list[str]:
    return sorted(_CRITERIA)


def score(
    name: str, model: nn.Module, group: Group, stats: Mapping[str, Any] | None = None
) -> torch.Tensor:
    """Scores of `group`'s units by criterion `name` (float64, one per unit)."""
    s = get_criterion(name)(model, group, stats)
    if s.shape != (group.size,):
        raise RuntimeError(f"criterion {name} gave shape {tuple(s.shape)} for {group.size} units")
    return s.detach().double().cpu()
