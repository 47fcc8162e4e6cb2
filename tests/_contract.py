"""The masked-equals-pruned contract, shared by the engine tests."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from prunelab.graph import ChannelGraph, ChannelMask, Plan, prune
from prunelab.graph.selfcheck import half_plan


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
