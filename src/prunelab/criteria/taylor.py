"""First-order Taylor importance from a few batches (Molchanov et al., CVPR 2019).

Two forms, both estimated by `collect_taylor` in one pass over the batches:

- `taylor` (the gate form, what the random-pruning supplement calls TE and
  Molchanov et al. recommend): a gate on the channel after its batch norm,
  importance (dL/dgate)^2 = (gamma * dL/dgamma + beta * dL/dbeta)^2 per
  batch, averaged over batches, summed over the group's batch norms;
- `taylor_weight` (the filter form): (sum of w * dL/dw over the producing
  filter, plus its bias)^2, averaged over batches, summed over the filters.

`collect_taylor` keeps one number per channel of every layer, so scoring any
grouping afterwards costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from prunelab.criteria._units import producer_filters, to_units
from prunelab.criteria.registry import register_criterion
from prunelab.graph.groups import Group

TaylorStats = dict[tuple[str, str], torch.Tensor]


def collect_taylor(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> dict[str, TaylorStats]:
    """Accumulate (sum over a filter of w * grad)^2 per output channel, over batches.

    Returns {"taylor": {(module, param): per-channel importance}} to pass as
    the `stats` of the taylor criterion. The model's gradients are left as
    they were found (cleared) and its mode restored.
    """
    was_training = model.training
    model.eval()  # importance of the trained function, not of batch statistics
    named = [
        (mname, pname, p)
        for mname, mod in model.named_modules()
        for pname, p in mod.named_parameters(recurse=False)
        if p.dim() >= 1 and p.requires_grad
    ]
    gates = [
        (mname, mod)
        for mname, mod in model.named_modules()
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.affine
    ]
    acc: TaylorStats = {}
    n = 0
    device = next(model.parameters()).device
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model(x.to(device)), y.to(device))
        loss.backward()
        with torch.no_grad():
            for mname, pname, p in named:
                if p.grad is None:
                    continue
                contrib = (p * p.grad).reshape(p.shape[0], -1).sum(dim=1).pow(2).double().cpu()
                key = (mname, pname)
                acc[key] = acc[key] + contrib if key in acc else contrib
            for mname, bn in gates:  # dL/dgate of a gate after the BN, squared
                if bn.weight.grad is None or bn.bias.grad is None:
                    continue
                gate = bn.weight * bn.weight.grad + bn.bias * bn.bias.grad
                key = (mname, "gate")
                contrib = gate.pow(2).double().cpu()
                acc[key] = acc[key] + contrib if key in acc else contrib
        n += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if n == 0:
        raise ValueError("collect_taylor needs at least one batch")
    return {"taylor": {k: v / n for k, v in acc.items()}}


def _table(stats: Mapping[str, Any] | None, name: str) -> TaylorStats:
    if not stats or "taylor" not in stats:
        raise ValueError(f"the {name} criterion needs stats from collect_taylor(model, batches)")
    return stats["taylor"]


@register_criterion("taylor", needs_data=True)
def taylor(model: nn.Module, group: Group, stats: Mapping[str, Any] | None = None) -> torch.Tensor:
    """Gate Taylor importance: (gamma dL/dgamma + beta dL/dbeta)^2, summed over the group's BNs.

    A group without an affine batch norm (e.g. a classifier input) has no
    gate to read, so it falls back to the filter form (`taylor_weight`).
    """
    table = _table(stats, "taylor")
    norms = [m for m in group.members_of("norm", "weight") if (m.module, "gate") in table]
    if not norms:
        return taylor_weight(model, group, stats)
    total = torch.zeros(group.size, dtype=torch.float64)
    for m in norms:
        total += to_units(group, m, table[(m.module, "gate")][m.positions])
    return total


@register_criterion("taylor_weight", needs_data=True)
def taylor_weight(
    model: nn.Module, group: Group, stats: Mapping[str, Any] | None = None
) -> torch.Tensor:
    """Filter Taylor importance of the unit's producing filters (and biases), summed."""
    table = _table(stats, "taylor_weight")
    total = torch.zeros(group.size, dtype=torch.float64)
    for m in producer_filters(group) + group.members_of("out", "bias"):
        per_channel = table.get((m.module, m.param))
        if per_channel is not None:
            total += to_units(group, m, per_channel[m.positions])
    return total
