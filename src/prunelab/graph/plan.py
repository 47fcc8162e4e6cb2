"""A pruning plan: which units each group keeps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from prunelab.errors import PrunelabError
from prunelab.graph.groups import ChannelGraph, Group, Member

ParamKey = tuple[str, str]  # (module path, parameter or buffer name)


def round_keep(n_keep: float, total: int, multiple: int = 1) -> int:
    """Round a kept-unit count to a multiple, never below one multiple or above `total`.

    Rounding kept channels to 8 or 16 keeps CPU and GPU kernels on their fast
    paths; an unrounded prune can run slower than the dense model.
    """
    if total <= 0:
        return 0
    n = max(1, round(n_keep))
    if multiple > 1 and total >= multiple:
        n = max(multiple, multiple * round(n / multiple))
    return int(min(total, n))


@dataclass
class Plan:
    """Kept unit indices per group index; a group not listed keeps everything."""

    graph: ChannelGraph
    keep: dict[int, torch.Tensor] = field(default_factory=dict)
    # what the planner measured or decided on the way (e.g. a latency verification)
    notes: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.keep = {int(g): _as_index(k) for g, k in self.keep.items()}
        self.validate()

    @classmethod
    def from_masks(cls, graph: ChannelGraph, masks: Mapping[int, torch.Tensor]) -> Plan:
        """A plan keeping the units whose mask entry is True (or non-zero)."""
        return cls(graph, {g: torch.nonzero(m.bool()).flatten() for g, m in masks.items()})

    def validate(self) -> None:
        groups = self.graph.groups
        for gi, idx in self.keep.items():
            if not 0 <= gi < len(groups):
                raise PrunelabError(f"plan names group {gi}; the graph has {len(groups)}")
            g = groups[gi]
            if len(idx) == 0:
                raise PrunelabError(f"plan removes every channel of group {gi} ({g.name})")
            if int(idx.min()) < 0 or int(idx.max()) >= g.size:
                raise PrunelabError(f"plan keeps units outside group {gi} ({g.name})")
            if len(idx) < g.size and not g.prunable:
                raise PrunelabError(f"group {gi} ({g.name}) may not be pruned: {g.reason}")
            emptied = _emptied_layers(self.graph, g, self.keep_mask(gi))
            if emptied:
                raise PrunelabError(
                    f"plan removes every channel of layer {emptied[0]} (group {gi}, {g.name}); "
                    "use plan.with_survivors() or keep one of its channels"
                )

    def with_survivors(self, scores: Mapping[int, torch.Tensor] | None = None) -> Plan:
        """This plan, plus the best unit of any layer it would empty completely.

        A group can span layers of different widths (a DenseNet layer's few
        channels concatenated into a residual stage); keeping the group's best
        units may leave one of those layers with nothing. `scores` picks which
        unit comes back (the lowest index without them).
        """
        keep = dict(self.keep)
        for gi, idx in self.keep.items():
            keep[gi] = add_survivors(self.graph, self.graph.groups[gi], idx, (scores or {}).get(gi))
        return Plan(self.graph, keep)

    def kept(self, group: int) -> int:
        k = self.keep.get(group)
        return self.graph.groups[group].size if k is None else len(k)

    def keep_mask(self, group: int) -> torch.Tensor:
        size = self.graph.groups[group].size
        mask = torch.ones(size, dtype=torch.bool)
        if group in self.keep:
            mask[:] = False
            mask[self.keep[group]] = True
        return mask

    def removed_positions(self) -> dict[tuple[str, str, int], torch.Tensor]:
        """For every (module, param, dim): the positions this plan removes, sorted."""
        removed: dict[tuple[str, str, int], list[torch.Tensor]] = {}
        for gi in self.keep:
            gone = ~self.keep_mask(gi)
            if not gone.any():
                continue
            for m in self.graph.groups[gi].members:
                pos = m.positions_of(gone)
                if len(pos):
                    removed.setdefault(m.key, []).append(pos)
        return {k: torch.unique(torch.cat(v)) for k, v in removed.items()}

    def param_shapes(self) -> dict[ParamKey, tuple[int, ...]]:
        """Shape of every parameter and buffer after this plan's surgery."""
        shapes = {k: list(s) for k, s in self.graph.param_shapes.items()}
        for (module, param, dim), pos in self.removed_positions().items():
            shapes[(module, param)][dim] -= len(pos)
        return {k: tuple(s) for k, s in shapes.items()}

    def ratios(self) -> dict[str, float]:
        """Kept fraction of each prunable group, by group name."""
        return {g.name: self.kept(g.index) / g.size for g in self.graph.prunable}


def _whole_layers(graph: ChannelGraph, group: Group) -> list[Member]:
    """Weight members that span a layer's whole input or output dimension."""
    return [
        m
        for m in group.members
        if m.param == "weight"
        and m.role in ("out", "in")
        and len(m.positions) == graph.param_shapes[(m.module, m.param)][m.dim]
    ]


def _emptied_layers(graph: ChannelGraph, group: Group, keep: torch.Tensor) -> list[str]:
    """Layers that would lose every input or every output channel."""
    return [m.module for m in _whole_layers(graph, group) if not keep[m.units].any()]


def add_survivors(
    graph: ChannelGraph, group: Group, idx: torch.Tensor, scores: torch.Tensor | None = None
) -> torch.Tensor:
    """`idx` plus, for each layer it would leave without channels, that layer's best unit."""
    idx = _as_index(idx)
    keep = torch.zeros(group.size, dtype=torch.bool)
    keep[idx] = True
    for m in _whole_layers(graph, group):
        if keep[m.units].any():
            continue
        candidates = torch.unique(m.units)
        best = candidates[0] if scores is None else candidates[torch.argmax(scores[candidates])]
        keep[best] = True
    return torch.nonzero(keep).flatten()


def _as_index(k: torch.Tensor | list[int]) -> torch.Tensor:
    t = torch.as_tensor(k, dtype=torch.long).flatten()
    return torch.unique(t)  # sorted, no duplicates
