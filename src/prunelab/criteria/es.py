"""Empirical sensitivity: Provable Filter Pruning's data-driven channel score.

Liebenwein et al. (ICLR 2020) call a channel important when, for some input
and some output neuron of the next layer, it carries a large share of that
neuron's pre-activation. For a consumer layer with weights W and input
activations a, the share of channel j at output neuron i (an output channel
at one spatial position, for convolutions) is

    g_ij(x) = z_ij(x) / sum_k z_ik(x),   z_ij = sum over the kernel of W+_ij * |a_j|,

computed separately for the positive and the negative part of W (W+ = max(W, 0),
W- = max(-W, 0)), as the paper does, and the sensitivity is

    s_j = max over inputs x, output neurons i and both signs of g_ij(x),  in [0, 1].

|a| equals a after a ReLU; the absolute value keeps the shares in [0, 1] when
a consumer sees signed inputs. A group's unit takes the maximum over every
consumer that reads it (a residual stage has several) and over the positions
it owns (flatten into a linear layer gives a channel H*W inputs).

In early layers many units reach share 1 on some neuron (only they are
active there after the ReLU), so the maximum alone ties them; ties are
ordered by the unit's mean share over all neurons, added with weight 1e-6
(below any difference of the maxima that float32 activations can resolve).

Statistics: `stats["batches"]`, a list of input batches (tensors, or (x, y)
pairs whose labels are ignored), re-read for every group. Each group costs
one forward pass over them. Consumers must be nn.Conv2d (any stride,
dilation, groups) or nn.Linear.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from prunelab.criteria.registry import register_criterion
from prunelab.graph.groups import Group, Member

# Elements of one chunk of per-(input channel, output neuron) contributions.
_CHUNK_ELEMENTS = 1 << 22
# Weight of the mean share, which only orders units tied at the same largest share.
TIE_BREAK = 1e-6


def input_batches(stats: Mapping[str, Any] | None, criterion: str) -> list[torch.Tensor]:
    """The input tensors of `stats["batches"]` (a list of tensors or (x, y) pairs)."""
    raw = stats.get("batches") if stats else None
    if raw is None:
        raise ValueError(
            f"the {criterion} criterion needs stats={{'batches': [x, ...]}}: a list of input "
            "batches (or (x, y) pairs) from the training data"
        )
    if isinstance(raw, Iterator):
        raise ValueError(f"{criterion}: stats['batches'] must be a list (it is read per group)")
    xs = [b[0] if isinstance(b, Sequence) and not isinstance(b, torch.Tensor) else b for b in raw]
    if not xs:
        raise ValueError(f"the {criterion} criterion got an empty stats['batches']")
    return xs


def _inverse(denom: torch.Tensor) -> torch.Tensor:
    """1 / denom, with 0 for neurons that receive no input mass (their shares count as 0)."""
    return torch.where(denom > 0, denom.clamp_min(1e-30).reciprocal(), torch.zeros_like(denom))


# Shares of one consumer over some data, per weight column: (largest, sum, neurons counted).
Shares = tuple[torch.Tensor, torch.Tensor, float]


def conv_shares(conv: nn.Conv2d, a: torch.Tensor) -> Shares:
    """Shares of each column of `conv.weight` (dim 1) for input batch `a` (N, C, H, W).

    A grouped convolution's column k is read by channel g * (C / groups) + k of
    every group g; the column takes the largest (and the sum) over those channels.
    """
    w = conv.weight.detach().to(a.dtype)
    n, c = a.shape[:2]
    groups = conv.groups
    pin, pout = w.shape[1], w.shape[0] // groups
    kh, kw = w.shape[2:]
    a = a.detach().abs()
    opts = {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation}
    best = torch.zeros(c, dtype=a.dtype, device=a.device)
    total = torch.zeros(c, dtype=torch.float64, device=a.device)
    counted = 0.0
    for part in (w.clamp(min=0), (-w).clamp(min=0)):
        # 1 / (the neuron's whole mass), per sample, output channel and position.
        inv = _inverse(F.conv2d(a, part, groups=groups, **opts))
        hw = inv.shape[2] * inv.shape[3]
        counted += n * pout * hw * groups
        ch_chunk = max(1, min(pin, _CHUNK_ELEMENTS // max(1, pout * hw)))
        n_chunk = max(1, _CHUNK_ELEMENTS // max(1, ch_chunk * pout * hw))
        for gi in range(groups):
            inv_g = inv[:, gi * pout : (gi + 1) * pout].unsqueeze(1)  # (N, 1, pout, H', W')
            filters = part[gi * pout : (gi + 1) * pout]  # (pout, pin, kh, kw)
            for k0 in range(0, pin, ch_chunk):
                k1 = min(pin, k0 + ch_chunk)
                # Each input channel against every filter of its group: (k1-k0)*pout maps.
                kern = filters[:, k0:k1].transpose(0, 1).reshape((k1 - k0) * pout, 1, kh, kw)
                c0, c1 = gi * pin + k0, gi * pin + k1
                for s0 in range(0, n, n_chunk):
                    x = a[s0 : s0 + n_chunk, c0:c1]
                    z = F.conv2d(x, kern, groups=k1 - k0, **opts)
                    z = z.view(x.shape[0], k1 - k0, pout, hw)
                    z.mul_(inv_g[s0 : s0 + n_chunk].reshape(x.shape[0], 1, pout, hw))
                    best[c0:c1] = torch.maximum(best[c0:c1], z.amax(dim=(0, 2, 3)))
                    total[c0:c1] += z.sum(dim=(0, 2, 3), dtype=torch.float64)
    return best.view(groups, pin).amax(dim=0), total.view(groups, pin).sum(dim=0), counted


def conv_sensitivity(conv: nn.Conv2d, a: torch.Tensor) -> torch.Tensor:
    """Empirical sensitivity of each column of `conv.weight` (dim 1) for input batch `a`."""
    return conv_shares(conv, a)[0]


def linear_shares(linear: nn.Linear, a: torch.Tensor) -> Shares:
    """Shares of each input feature of `linear` for input batch `a` (..., F)."""
    w = linear.weight.detach().to(a.dtype)
    a = a.detach().abs().reshape(-1, w.shape[1])
    best = torch.zeros(w.shape[1], dtype=a.dtype, device=a.device)
    total = torch.zeros(w.shape[1], dtype=torch.float64, device=a.device)
    step = max(1, _CHUNK_ELEMENTS // max(1, w.numel()))
    for part in (w.clamp(min=0), (-w).clamp(min=0)):
        for s0 in range(0, a.shape[0], step):
            x = a[s0 : s0 + step]
            z = x[:, None, :] * part[None]  # (N, out, F)
            z.mul_(_inverse(x @ part.T)[..., None])
            best = torch.maximum(best, z.amax(dim=(0, 1)))
            total += z.sum(dim=(0, 1), dtype=torch.float64)
    return best, total, 2.0 * a.shape[0] * w.shape[0]


def _consumers(model: nn.Module, group: Group) -> list[tuple[Member, nn.Module]]:
    found = []
    for m in group.members_of("in", "weight"):
        mod = model.get_submodule(m.module)
        if m.dim == 1 and type(mod) in (nn.Conv2d, nn.Linear):
            found.append((m, mod))
    return found


@register_criterion("es", needs_data=True)
def empirical_sensitivity(
    model: nn.Module, group: Group, stats: Mapping[str, Any] | None = None
) -> torch.Tensor:
    """Largest share of a next-layer neuron's input a unit carries, over the data (PFP)."""
    xs = input_batches(stats, "es")
    consumers = _consumers(model, group)
    if not consumers:
        raise ValueError(
            f"es: group {group.index} ({group.name}) has no Conv2d or Linear layer reading it"
        )
    modules = {name: mod for name, mod in model.named_modules()}
    by_module: dict[str, Shares] = {}

    def hook_for(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            shares = conv_shares if isinstance(mod, nn.Conv2d) else linear_shares
            big, total, counted = shares(mod, inputs[0])
            big, total = big.double().cpu(), total.cpu()
            if name in by_module:
                seen_big, seen_total, seen_counted = by_module[name]
                big = torch.maximum(seen_big, big)
                total, counted = seen_total + total, seen_counted + counted
            by_module[name] = (big, total, counted)

        return hook

    names = {m.module for m, _ in consumers}
    handles = [modules[n].register_forward_pre_hook(hook_for(n)) for n in names]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for x in xs:
                model(x.to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    largest = torch.zeros(group.size, dtype=torch.float64)
    mean = torch.zeros(group.size, dtype=torch.float64)
    for m, _ in consumers:
        big, total, counted = by_module[m.module]
        largest.scatter_reduce_(0, m.units, big[m.positions], reduce="amax")
        mean.scatter_reduce_(0, m.units, total[m.positions] / counted, reduce="amax")
    return largest + TIE_BREAK * mean
