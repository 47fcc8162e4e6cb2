"""The masked-equals-pruned contract, shared by the engine tests."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from prunelab import io, models
from prunelab.graph import ChannelGraph, ChannelMask, Plan, prune, trace
from prunelab.graph.selfcheck import half_plan, randomize_norms
from prunelab.models import registry


def random_plan(graph: ChannelGraph, keep: float, seed: int) -> Plan:
    """Keep a random subset of about `keep` of the units of every prunable group."""
    return half_plan(graph, keep, seed)


def masked_and_pruned(
    model: nn.Module, plan: Plan, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
    masked = copy.deepcopy(model).eval()
    mask = ChannelMask(masked, plan.graph)
    for g in plan.keep:
        mask.set(g, plan.keep_mask(g))
    mask.apply()
    pruned = prune(model, plan).eval()
    with torch.no_grad():
        return masked(x), pruned(x), pruned


def assert_close_rel(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> None:
    scale = a.abs().max().clamp_min(1e-6)
    err = ((a - b).abs().max() / scale).item()
    assert err <= rtol, f"masked and pruned outputs differ: relative error {err:.2e}"


def pruned_and_reloaded(
    build: Callable[..., nn.Module], x: torch.Tensor, seed: int, folder: Path
) -> tuple[nn.Module, nn.Module]:
    """`build`'s model (registered for the while) pruned to half, saved and loaded back."""
    name = "_test_roundtrip"
    models.register_model(name, input_size=tuple(x.shape[1:]))(build)
    try:
        model = randomize_norms(models.create(name)).eval()
        pruned = prune(model, half_plan(trace(model, x), 0.5, seed=seed)).eval()
        io.save(pruned, folder / "model.pt")
        return pruned, io.load(folder / "model.pt")
    finally:
        registry._REGISTRY.pop(name)
