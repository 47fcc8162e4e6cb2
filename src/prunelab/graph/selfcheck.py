"""Does a model prune? One call that traces, plans, masks, cuts and compares.

`check_prunes` is what the torchvision coverage test and `bench/model_coverage.py`
run on every model: trace, keep a random ~half of every prunable group, and
hold the engine's contracts on the result (the masked model computes what the
pruned model computes; the planned cost is what counting the pruned model
gives; of a detection model, the raw head outputs of its tensor program are
compared). A model the tracer refuses comes back with the `UnsupportedModelError`,
so a caller can tell "refused clearly" from "broken". With ``roundtrip=True`` the
pruned model is also saved and loaded (same outputs) and trained one step.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torchvision.ops.misc import FrozenBatchNorm2d

from prunelab import io
from prunelab.errors import UnsupportedModelError
from prunelab.graph.cost import plan_cost
from prunelab.graph.groups import ChannelGraph
from prunelab.graph.masks import ChannelMask
from prunelab.graph.plan import Plan, add_survivors
from prunelab.graph.surgery import prune
from prunelab.graph.trace import trace
from prunelab.metrics import count
from prunelab.models.detection_core import tensor_program


@dataclass
class PruneCheck:
    """What `check_prunes` found. `refused` holds the tracer's error, if any."""

    groups: int = 0
    prunable: int = 0
    error: float = 0.0  # largest relative difference, masked vs pruned outputs
    cost_matches: bool = False
    flops_ratio: float = 1.0
    refused: UnsupportedModelError | None = None
    load_error: float | None = None  # saved-and-loaded vs pruned outputs, if checked
    trains: bool | None = None  # one SGD step gives finite, changed weights, if checked

    @property
    def passed(self) -> bool:
        done = self.refused is None and self.prunable > 0
        saved = self.load_error is None or self.load_error == 0.0
        trains = self.trains is not False
        return done and self.cost_matches and self.error < 1e-4 and saved and trains


@torch.no_grad()
def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch norm non-trivial statistics and affine values, in place.

    Fresh batch norms are identities on zero channels, which would hide a
    pruned bias or shift that surgery got wrong. Layer norms get random affine
    values too, and a zero-initialised linear layer (a vision transformer's
    classifier) random weights: a model whose output is zero compares equal to anything.
    """
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.LayerNorm) and m.weight is not None:
            m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
            if m.bias is not None:
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) - 0.5)
        if isinstance(m, nn.Linear) and not m.weight.any():
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * m.in_features**-0.5)
        if isinstance(m, (nn.modules.batchnorm._NormBase, FrozenBatchNorm2d)):
            if getattr(m, "running_mean", None) is None:
                continue
            n = m.running_mean.numel()
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            if m.weight is not None:
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) - 0.5)
    return model


def half_plan(graph: ChannelGraph, keep: float = 0.5, seed: int = 0) -> Plan:
    """Keep a random `keep` fraction of every prunable group (every layer keeps one unit)."""
    gen = torch.Generator().manual_seed(seed)
    chosen = {}
    for g in graph.prunable:
        n = max(1, round(keep * g.size))
        chosen[g.index] = add_survivors(graph, g, torch.randperm(g.size, generator=gen)[:n])
    return Plan(graph, chosen)


def tensors_of(out: object) -> Iterator[torch.Tensor]:
    """Every tensor in a (nested) output: tensors, tuples, lists, dicts, named tuples."""
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, dict):
        for v in out.values():
            yield from tensors_of(v)
    elif isinstance(out, (tuple, list)):
        for v in out:
            yield from tensors_of(v)


def output_difference(a: object, b: object) -> float:
    """Largest relative difference between two outputs of the same structure."""
    worst = 0.0
    for x, y in zip(tensors_of(a), tensors_of(b), strict=True):
        if x.shape != y.shape:
            return float("inf")
        if x.is_floating_point():
            scale = x.abs().max().clamp_min(1e-6) if x.numel() else 1.0
            err = ((x - y).abs().max() / scale).item() if x.numel() else 0.0
        else:
            err = 0.0 if torch.equal(x, y) else float("inf")
        worst = max(worst, err)
    return worst


def check_prunes(
    model: nn.Module,
    example_input: torch.Tensor,
    keep: float = 0.5,
    seed: int = 0,
    flops_ratio: bool = True,
    copy_model: bool = True,
    roundtrip: bool = False,
) -> PruneCheck:
    """Trace `model`, prune about `keep` of every group, and check the contracts.

    Raises nothing the tracer raises on purpose: a refusal is returned in
    `PruneCheck.refused`. Any other exception is a defect and propagates.
    `copy_model=False` masks `model` itself (saves a copy of a large model).
    """
    model = model.eval()
    try:
        graph = trace(model, example_input)
    except UnsupportedModelError as exc:
        return PruneCheck(refused=exc)
    result = PruneCheck(groups=len(graph.groups), prunable=len(graph.prunable))
    if not graph.prunable:
        return result
    plan = half_plan(graph, keep, seed)
    pruned = prune(model, plan).eval()
    counted = count(tensor_program(pruned), example_input[:1])
    planned = plan_cost(plan)
    result.cost_matches = (planned.flops, planned.params) == (counted.flops, counted.params)
    if flops_ratio:  # one more forward, of the dense model
        dense = count(tensor_program(model), example_input[:1])
        result.flops_ratio = counted.flops / max(dense.flops, 1)
    masked = copy.deepcopy(model) if copy_model else model
    mask = ChannelMask(masked, graph)
    for g in plan.keep:
        mask.set(g, plan.keep_mask(g))
    mask.apply()
    with torch.no_grad():
        a = tensor_program(masked)(example_input)
        result.error = output_difference(a, tensor_program(pruned)(example_input))
    if roundtrip:
        result.load_error, result.trains = saves_and_trains(pruned, example_input)
    return result


def saves_and_trains(pruned: nn.Module, example_input: torch.Tensor) -> tuple[float, bool]:
    """Save and load `pruned`: how far the loaded outputs are off, and whether it trains.

    Training is one SGD step on the loaded model (batch norms in training mode
    need two images, so a batch of one is doubled) on the mean square of its
    outputs: it trains if every gradient and weight stays finite and the weights move.
    """
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "pruned.pt"
        io.save(pruned, path)
        loaded = io.load(path)
    with torch.no_grad():
        error = output_difference(
            tensor_program(pruned.eval())(example_input), tensor_program(loaded)(example_input)
        )
    x = example_input if len(example_input) > 1 else example_input.repeat(2, 1, 1, 1)
    params = [p for p in loaded.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    loaded.train()
    loss = sum(t.float().pow(2).mean() for t in tensors_of(tensor_program(loaded)(x)))
    loss.backward()  # type: ignore[union-attr]
    finite = all(p.grad is None or torch.isfinite(p.grad).all() for p in params)
    torch.optim.SGD(params, lr=0.01).step()
    moved = any(not torch.equal(b, p) for b, p in zip(before, params, strict=True))
    finite = finite and all(torch.isfinite(p).all() for p in params)
    return error, bool(finite and moved)
