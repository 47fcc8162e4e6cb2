"""First-order Taylor importance from a few batches (Molchanov et al., CVPR 2019).

The loss change from removing a filter is approximated by (sum of w * dL/dw
over the filter) squared, averaged over batches. `collect_taylor` runs the
batches once and keeps one number per output channel of every layer, so
scoring any grouping afterwards costs nothing.
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
        n += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if n == 0:
        raise ValueError("collect_taylor needs at least one batch")
    return {"taylor": {k: v / n for k, v in acc.items()}}


@register_criterion("taylor", needs_data=True)
def taylor(model: nn.Module, group: Group, stats: Mapping[str, Any] | None = None) -> torch.Tensor:
    """Taylor importance of the unit's producing filters (and biases), summed."""
    if not stats or "taylor" not in stats:
        raise ValueError("the taylor criterion needs stats from collect_taylor(model, batches)")
    table: TaylorStats = stats["taylor"]
    total = torch.zeros(group.size, dtype=torch.float64)
    for m in producer_filters(group) + group.members_of("out", "bias"):
        per_channel = table.get((m.module, m.param))
        if per_channel is not None:
            total += to_units(group, m, per_channel[m.positions])
    return total
