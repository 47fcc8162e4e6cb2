"""Channel groups: the one vocabulary the rest of prunelab speaks.

A *unit* is the smallest thing that can be removed: one channel, or several
channels that must go together (the same channel of every group of a grouped
convolution, a channel and the depthwise outputs derived from it).
A *group* is a set of units that share tensors: the output channels of a
convolution, its batch norm, the input slices of every consumer, and, through
residual additions, every other producer added to it. Removing unit i of a
group removes, in every member, the positions that belong to unit i.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

Role = Literal["out", "in", "norm", "param"]


@dataclass(frozen=True)
class Member:
    """One slice of one tensor of a module that belongs to a group.

    `positions[k]` is an index along `dim` of `module.param`, and `units[k]` the
    unit (within the group) that owns it. A position belongs to exactly one
    unit; a unit may own several positions (flatten into a linear layer gives
    it H*W of them).
    """

    module: str
    param: str
    dim: int
    positions: torch.Tensor
    units: torch.Tensor
    role: Role

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.module, self.param, self.dim)

    def positions_of(self, units_mask: torch.Tensor) -> torch.Tensor:
        """Positions owned by the units where `units_mask` is True."""
        return self.positions[units_mask[self.units]]


@dataclass
class Group:
    """Units that must be pruned with the same indices across all members."""

    index: int
    size: int
    members: list[Member]
    prunable: bool
    reason: str = ""
    sources: int = 1
    unit_width: int = 1

    @property
    def name(self) -> str:
        """A readable name: the first layer that produces these channels."""
        for m in self.members:
            if m.role == "out":
                return m.module
        return self.members[0].module if self.members else f"group{self.index}"

    @property
    def producers(self) -> list[str]:
        """Modules whose output channels (weight dim 0) are in the group."""
        seen: dict[str, None] = {}
        for m in self.members:
            if m.role == "out" and m.param == "weight":
                seen.setdefault(m.module, None)
        return list(seen)

    @property
    def norms(self) -> list[str]:
        seen: dict[str, None] = {}
        for m in self.members:
            if m.role == "norm":
                seen.setdefault(m.module, None)
        return list(seen)

    @property
    def consumers(self) -> list[str]:
        seen: dict[str, None] = {}
        for m in self.members:
            if m.role == "in":
                seen.setdefault(m.module, None)
        return list(seen)

    @property
    def coupled(self) -> bool:
        """True when several independent producers are tied, e.g. by a residual add."""
        return self.sources > 1


    def members_of(self, role: Role, param: str | None = None) -> list[Member]:
        return [m for m in self.members if m.role == role and (param is None or m.param == param)]

    def __repr__(self) -> str:
        flag = "" if self.prunable else f", fixed: {self.reason}"
        return (
            f"Group({self.index}, {self.name!r}, units={self.size}, "
            f"members={len(self.members)}, sources={self.sources}{flag})"
        )


@dataclass(frozen=True)
class LayerInfo:
    """What cost counting needs to know of a Conv or Linear layer."""

    module: str
    kind: Literal["conv", "linear"]
    weight_shape: tuple[int, ...]
    out_spatial: int  # output elements per sample per output channel, summed over calls

    @property
    def kernel(self) -> int:
        k = 1
        for s in self.weight_shape[2:]:
            k *= s
        return k


@dataclass(frozen=True)
class ProductCost:
    """MACs computed outside conv and linear modules (attention's projections and matmuls).

    `factor` times the product of the sizes of `dims`, each a (module, tensor, dim)
    slice: attention over L queries and S keys costs 2 * L * S * (heads * head_dim),
    so it shrinks with the heads a plan keeps.
    """

    name: str
    factor: int
    dims: tuple[tuple[str, str, int], ...]


@dataclass
class ChannelGraph:
    """The result of tracing a model: its channel groups and what costs need.

    The graph describes the model it was traced from; after surgery, trace the
    pruned model again if you need its groups.
    """

    groups: list[Group]
    layers: dict[str, LayerInfo]
    param_shapes: dict[tuple[str, str], tuple[int, ...]]
    input_shape: tuple[int, ...]
    module_types: dict[str, type] = field(default_factory=dict)
    buffer_keys: frozenset[tuple[str, str]] = frozenset()
    products: list[ProductCost] = field(default_factory=list)
    # prunelab.graph.cost.CostModel, made on first use (kept here so searches share it)
    cost_model: Any = field(default=None, repr=False, compare=False)

    @property
    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def group_of(self, module: str) -> Group:
        """The group holding `module`'s output channels."""
        for g in self.groups:
            if any(m.module == module and m.role in ("out", "norm") for m in g.members):
                return g
        raise KeyError(f"no group produces the output of {module!r}")

    def __repr__(self) -> str:
        return (
            f"ChannelGraph({len(self.groups)} groups, {len(self.prunable)} prunable, "
            f"{len(self.layers)} conv/linear layers)"
        )


def is_residual(graph: ChannelGraph, group: Group) -> bool:
    """True when a residual add ties `group`: two or more normalised dense producers.

    A squeeze-excitation gate or a depthwise conv also couples channels (several
    sources), but brings no second normalised dense producer; `shortcuts=False`
    leaves only residual groups whole. A conv with one input channel per group is
    taken for depthwise.
    """
    if not group.coupled:
        return False
    depthwise = 0
    for name in group.producers:
        layer = graph.layers.get(name)
        if layer is not None and layer.kind == "conv" and layer.weight_shape[1] == 1:
            depthwise += 1
    return len(group.norms) - depthwise >= 2
