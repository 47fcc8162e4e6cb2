"""KL-divergence importance: how much the network's predictions move without a unit.

Following CURL (Luo & Wu, CVPR 2020), a unit's score is the mean over the
data of KL(p || p_-u), where p is the network's softmax output and p_-u the
output with unit u masked. Masking zeroes every slice the unit owns in every
member of its group (filters, batch-norm scale and shift, consumer columns),
which is exactly what pruning it would compute; a residual stage is one
group, so its unit is masked in every block at once: one shared mask.

Statistics: `stats["batches"]`, a list of input batches (tensors, or (x, y)
pairs whose labels are ignored). Cost: one forward pass over the batches per
unit, plus one for the reference outputs, so keep the batches few and small.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from prunelab.criteria.es import input_batches
from prunelab.criteria.registry import register_criterion
from prunelab.graph.groups import Group

# (tensor, dim, positions per unit) of every slice a group's unit owns.
_Slices = list[tuple[torch.Tensor, int, list[torch.Tensor]]]


def _unit_slices(model: nn.Module, group: Group) -> _Slices:
    slices: _Slices = []
    for m in group.members:
        if m.param.startswith("running_"):
            continue  # statistics: zero scale and shift already silence the channel
        tensor = getattr(model.get_submodule(m.module), m.param)
        per_unit = [m.positions[m.units == u].to(tensor.device) for u in range(group.size)]
        slices.append((tensor, m.dim, per_unit))
    return slices


@register_criterion("kl", needs_data=True)
def kl_divergence(
    model: nn.Module, group: Group, stats: Mapping[str, Any] | None = None
) -> torch.Tensor:
    """Mean KL(original || unit masked) of the softmax outputs, per unit (CURL)."""
    xs = input_batches(stats, "kl")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    xs = [x.to(device) for x in xs]
    slices = _unit_slices(model, group)
    n = sum(x.shape[0] for x in xs)
    scores = torch.zeros(group.size, dtype=torch.float64)
    try:
        with torch.no_grad():
            refs = [F.log_softmax(model(x).float(), dim=1) for x in xs]
            for u in range(group.size):
                saved = []
                for tensor, dim, per_unit in slices:
                    pos = per_unit[u]
                    if len(pos):
                        saved.append((tensor, dim, pos, tensor.index_select(dim, pos)))
                        tensor.index_fill_(dim, pos, 0)
                try:
                    total = 0.0
                    for x, ref in zip(xs, refs, strict=True):
                        out = F.log_softmax(model(x).float(), dim=1)
                        total += float(F.kl_div(out, ref, log_target=True, reduction="sum"))
                finally:
                    for tensor, dim, pos, values in saved:
                        tensor.index_copy_(dim, pos, values)
                scores[u] = total / n
    finally:
        model.train(was_training)
    return scores
