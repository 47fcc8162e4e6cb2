"""Cheap candidate scores for the random channel search, and re-initialisation.

Every mode measures top-1 on the held-out split of the training data, with
batch-norm statistics re-estimated on training batches (a pruned network's
statistics describe the dense network's features):

- "bn": re-estimate the statistics, nothing more; the cheapest, and the default;
- "finetune": `steps` SGD steps on the training loss, then re-estimate;
- "reconstruct": re-estimate, then `steps` Adam steps that only pull the
  pruned network's feature maps towards the original's (the paper's
  supplement): no labels are used.

All candidates see the same training batches in the same order (the loader's
state is replayed), so their scores differ only by architecture.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from prunelab.data import DataBundle, in_random_order
from prunelab.graph.plan import Plan
from prunelab.methods.finetune import accuracy, recalibrate_bn

SCORING_MODES = ("bn", "finetune", "reconstruct")


@dataclass
class ScoringSetup:
    """What scoring a candidate needs besides the candidate itself."""

    mode: str
    data: DataBundle
    loader_state: dict[str, Any]
    bn_batches: int = 20
    steps: int = 50
    finetune_lr: float = 0.01
    reconstruct_lr: float = 1e-3
    weight_decay: float = 5e-4
    eval_batches: int | None = None


def replay(data: DataBundle, state: dict[str, Any]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Training batches from the loader state `state` on, endlessly (a new epoch when one ends)."""
    data.train.load_state_dict(state)
    while True:
        empty = True
        for x, y in data.train:
            empty = False
            yield x, y
        if empty:
            raise ValueError("the training loader gives no batch")


def _take(batches: Iterator[tuple[torch.Tensor, torch.Tensor]], n: int) -> Iterator:
    for _ in range(n):
        yield next(batches)


def train_steps(
    model: nn.Module,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    lr: float,
    weight_decay: float = 5e-4,
) -> list[float]:
    """`steps` plain SGD steps (momentum 0.9) on the cross-entropy; returns the losses."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    model.train()
    device = next(model.parameters()).device
    losses = []
    for x, y in _take(batches, steps):
        loss = F.cross_entropy(model(x.to(device)), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def feature_points(original: nn.Module, pruned: nn.Module, plan: Plan) -> dict[str, torch.Tensor]:
    """Batch norms to match, with the original channels each one kept (in the pruned order).

    Surgery keeps the surviving channels of a tensor in their original order,
    so the pruned network's channel i is the original's i-th kept channel.
    """
    removed = plan.removed_positions()
    pruned_modules = dict(pruned.named_modules())
    points = {}
    for name, mod in original.named_modules():
        if not isinstance(mod, nn.modules.batchnorm._BatchNorm) or name not in pruned_modules:
            continue
        keep = torch.ones(mod.num_features, dtype=torch.bool)
        for param in ("weight", "running_mean"):
            gone = removed.get((name, param, 0))
            if gone is not None:
                keep[gone] = False
                break
        points[name] = torch.nonzero(keep).flatten()
    return points


def reconstruction_loss(
    feats: dict[str, torch.Tensor],
    targets: dict[str, torch.Tensor],
    points: dict[str, torch.Tensor],
) -> torch.Tensor:
    """Mean over matched points of ||pruned - original[kept]||^2 / ||original[kept]||^2."""
    terms = []
    for name, out in feats.items():
        ref = targets[name]
        if name in points:
            ref = ref.index_select(1, points[name])
        terms.append(F.mse_loss(out, ref) / ref.pow(2).mean().clamp_min(1e-8))
    return torch.stack(terms).mean()


def _recording(model: nn.Module, names: list[str], store: dict[str, torch.Tensor]) -> list[Any]:
    def hook_for(name: str) -> Any:
        def hook(mod: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            store[name] = output

        return hook

    modules = dict(model.named_modules())
    return [modules[n].register_forward_hook(hook_for(n)) for n in names]


def reconstruct(
    original: nn.Module,
    pruned: nn.Module,
    plan: Plan,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    lr: float = 1e-3,
) -> list[float]:
    """Update `pruned` for `steps` Adam steps to reproduce `original`'s feature maps.

    Matched: every batch norm's output (restricted to the kept channels) and
    the logits. Both networks run in eval mode, so batch statistics do not
    move the target; recalibrate the pruned network's BN before calling.
    Returns the loss of each step.
    """
    points = feature_points(original, pruned, plan)
    names = list(points)
    targets: dict[str, torch.Tensor] = {}
    feats: dict[str, torch.Tensor] = {}
    handles = _recording(original, names, targets) + _recording(pruned, names, feats)
    original.eval()
    pruned.eval()
    opt = torch.optim.Adam(pruned.parameters(), lr=lr)
    device = next(pruned.parameters()).device
    losses = []
    try:
        for x, _ in _take(batches, steps):
            x = x.to(device)
            with torch.no_grad():
                targets["__logits__"] = original(x)
            feats["__logits__"] = pruned(x)
            loss = reconstruction_loss(feats, targets, points)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        for h in handles:
            h.remove()
    return losses


def score_candidate(
    setup: ScoringSetup,
    pruned: nn.Module,
    original: nn.Module | None = None,
    plan: Plan | None = None,
) -> float:
    """Top-1 (percent) of `pruned` on the hold-out split after the setup's cheap repair.

    `pruned` is changed in place (statistics, and weights for finetune and
    reconstruct); `original` and `plan` are needed by "reconstruct".
    """
    if setup.data.holdout is None:
        raise ValueError("scoring candidates needs a hold-out split (data holdout > 0)")
    batches = replay(setup.data, setup.loader_state)
    if setup.mode == "finetune":
        train_steps(pruned, batches, setup.steps, setup.finetune_lr, setup.weight_decay)
    recalibrate_bn(pruned, batches, setup.bn_batches)
    if setup.mode == "reconstruct":
        if original is None or plan is None:
            raise ValueError("reconstruct scoring needs the original model and the plan")
        reconstruct(original, pruned, plan, batches, setup.steps, setup.reconstruct_lr)
    elif setup.mode not in ("bn", "finetune"):
        raise ValueError(f"unknown scoring mode {setup.mode!r}; use one of {SCORING_MODES}")
    holdout = setup.data.holdout
    if setup.eval_batches is not None:  # a prefix of a class-sorted split would be a few classes
        holdout = in_random_order(holdout, seed=0)  # the same images for every candidate
    return accuracy(pruned, holdout, setup.eval_batches)
