"""Turning per-position tensor scores into per-unit group scores."""

from __future__ import annotations

import torch
import torch.nn as nn

from prunelab.graph.groups import Group, Member


def tensor_of(model: nn.Module, member: Member) -> torch.Tensor:
    return getattr(model.get_submodule(member.module), member.param).detach()


def slices(model: nn.Module, member: Member) -> torch.Tensor:
    """The member's tensor as rows, one row per position, in `member.positions` order."""
    t = tensor_of(model, member).float().cpu()
    t = t.movedim(member.dim, 0)
    return t.reshape(t.shape[0], -1)[member.positions]


def to_units(group: Group, member: Member, per_position: torch.Tensor) -> torch.Tensor:
    """Sum a member's per-position scores into the units that own the positions."""
    out = torch.zeros(group.size, dtype=torch.float64)
    return out.index_add_(0, member.units, per_position.double())


def producer_filters(group: Group) -> list[Member]:
    """The members that produce the group's channels: conv/linear weight rows.

    Attention heads are produced by the rows of its projection weights
    (`in_proj_weight`, or `q_proj_weight`, `k_proj_weight`, `v_proj_weight`).
    """
    return [m for m in group.members if m.role == "out" and m.param.endswith("weight")]
