"""Soft channel masks for methods that prune while training (CHEX, BWCP).

A masked unit has every slice of every member multiplied by zero: its
producing filters, its batch-norm scale and shift, and the consumers' input
columns. That makes the masked model compute exactly what the pruned model
computes, whatever sits between producer and consumer. Applying the mask is
one in-place multiply per touched tensor and dimension, cheap enough for every
training step; `mask_grads` zeroes gradients so masked weights get no update.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn as nn

from prunelab.graph.groups import ChannelGraph
from prunelab.graph.plan import Plan


class ChannelMask:
    """Per-group boolean masks over units, applied to a model's tensors."""

    def __init__(
        self, model: nn.Module, graph: ChannelGraph, groups: Iterable[int] | None = None
    ) -> None:
        self.model = model
        self.graph = graph
        chosen = [g.index for g in graph.prunable] if groups is None else list(groups)
        self.masks: dict[int, torch.Tensor] = {
            gi: torch.ones(graph.groups[gi].size, dtype=torch.bool) for gi in chosen
        }
        self._compiled: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    # -- editing ---------------------------------------------------------
    def set(self, group: int, keep: torch.Tensor) -> None:
        """Set group `group`'s mask (bool per unit, True = alive)."""
        keep = torch.as_tensor(keep).bool().cpu()
        if keep.shape != self.masks[group].shape:
            raise ValueError(f"mask for group {group} must have {self.masks[group].numel()} units")
        if not keep.any():
            raise ValueError(f"mask would remove every unit of group {group}")
        self.masks[group] = keep.clone()
        self._compiled = None

    def update(self, masks: Mapping[int, torch.Tensor]) -> None:
        for g, m in masks.items():
            self.set(g, m)

    def alive(self, group: int) -> int:
        return int(self.masks[group].sum())

    def to_plan(self) -> Plan:
        return Plan.from_masks(self.graph, self.masks)

    # -- applying --------------------------------------------------------
    def _compile(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Pair each touched tensor with a broadcastable 0/1 vector per dimension."""
        vectors: dict[tuple[str, str, int], torch.Tensor] = {}
        for gi, keep in self.masks.items():
            if keep.all():
                continue
            for m in self.graph.groups[gi].members:
                if m.param.startswith("running_"):
                    continue  # statistics are not learnt; zero gamma/beta already silence them
                pos = m.positions_of(~keep)
                if not len(pos):
                    continue
                tensor = getattr(self.model.get_submodule(m.module), m.param)
                vec = vectors.get(m.key)
                if vec is None:
                    vec = torch.ones(tensor.shape[m.dim], dtype=tensor.dtype)
                    vectors[m.key] = vec
                vec[pos] = 0
        compiled = []
        for (module, param, dim), vec in vectors.items():
            tensor = getattr(self.model.get_submodule(module), param)
            shape = [1] * tensor.dim()
            shape[dim] = -1
            compiled.append((tensor, vec.to(tensor.device).view(shape)))
        return compiled

    @property
    def compiled(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self._compiled is None:
            self._compiled = self._compile()
        return self._compiled

    @torch.no_grad()
    def apply(self) -> None:
        """Zero every masked slice of the model's tensors (W <- W * m)."""
        for tensor, vec in self.compiled:
            tensor.mul_(vec)

    @torch.no_grad()
    def mask_grads(self) -> None:
        """Zero the gradients of masked slices, so momentum cannot move them."""
        for tensor, vec in self.compiled:
            if tensor.grad is not None:
                tensor.grad.mul_(vec)

    def refresh(self) -> None:
        """Call after the model's tensors were replaced (e.g. moved to a device)."""
        self._compiled = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {str(g): m.clone() for g, m in self.masks.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.masks = {int(g): m.bool().clone() for g, m in state.items()}
        self._compiled = None
