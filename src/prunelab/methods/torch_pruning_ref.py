"""An external reference arm: Torch-Pruning's group-L1 pruning (Fang et al., DepGraph, CVPR 2023).

Not one of prunelab's methods: it lets `prunelab compare` put the library
users come from beside ours at the same FLOPs and the same fine-tuning. Its
`MetaPruner` with `MagnitudeImportance(p=1)` (L1 norms summed over each
dependency group, mean-reduced, the "group L1" of its benchmarks) prunes one
ratio in every layer; the ratio that meets the FLOPs target is found by
bisection, with FLOPs counted by prunelab's own counter so both sides are
measured alike. Needs the `bench` extra (`pip install prunelab[bench]`,
torch-pruning 1.6.1).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch.nn as nn

from prunelab.errors import ConfigError, InfeasibleBudgetError
from prunelab.methods.base import Method, PruneResult, PruneTask, register_method
from prunelab.methods.finetune import fit
from prunelab.metrics import count


def _torch_pruning():
    try:
        import torch_pruning
    except ImportError:
        raise ConfigError(
            "method torch_pruning needs Torch-Pruning: pip install 'prunelab[bench]'"
        ) from None
    return torch_pruning


@register_method
class TorchPruningReference(Method):
    name = "torch_pruning"
    metrics = ("flops",)
    summary = "external reference: Torch-Pruning 1.6 group-L1, one ratio per layer, fine-tune"

    @dataclass
    class Options:
        # Torch-Pruning's own channel rounding (1: none, its default); its round_to=8 rounds
        # a 16-channel layer at a 12% ratio down to 8, so one ratio cannot be tuned finely
        round_to: int = 1
        global_pruning: bool = False
        # relative distance from the FLOPs target: one ratio for all layers rounded to 8
        # channels moves in coarse steps (0.509 is the closest to 0.5 on ResNet-20)
        tolerance: float = 0.02

    def check(self, task: PruneTask) -> None:
        task.require_metric(self.name, *self.metrics)  # bisected on FLOPs

    def prune_to_target(self, task: PruneTask) -> tuple[nn.Module, float]:
        """The pruned model and its pruning ratio, FLOPs within tolerance of the target."""
        self.check(task)
        tp = _torch_pruning()
        x = task.example_input
        dense = task.model.cpu().eval()
        base = count(dense, x).flops
        goal = task.target * base

        def pruned_at(ratio: float) -> tuple[nn.Module, int]:
            model = copy.deepcopy(dense)
            classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
            pruner = tp.pruner.MetaPruner(
                model, x, importance=tp.importance.MagnitudeImportance(p=1),
                pruning_ratio=ratio, ignored_layers=[classifier],
                round_to=self.options.round_to if self.options.round_to > 1 else None,
                global_pruning=self.options.global_pruning,
            )  # fmt: skip
            pruner.step()
            return model, count(model, x).flops

        lo, hi = 0.0, 0.95
        best: tuple[float, nn.Module, int] | None = None
        for _ in range(24):
            mid = (lo + hi) / 2
            model, flops = pruned_at(mid)
            if best is None or abs(flops - goal) < abs(best[2] - goal):
                best = (mid, model, flops)
            if abs(flops - goal) <= self.options.tolerance * goal:
                break
            lo, hi = (mid, hi) if flops > goal else (lo, mid)
        assert best is not None
        ratio, model, flops = best
        if abs(flops - goal) > self.options.tolerance * goal:
            raise InfeasibleBudgetError(
                f"torch_pruning found no ratio within {self.options.tolerance:.0%} of "
                f"{task.target:.0%} FLOPs (closest {flops / base:.3f}); try round_to=1"
            )
        for attr in ("prunelab_arch", "prunelab_input_size"):  # keep what prunelab.save needs
            if hasattr(dense, attr):
                setattr(model, attr, getattr(dense, attr))
        return model, ratio

    def run(self, task: PruneTask) -> PruneResult:
        model, ratio = self.prune_to_target(task)
        x = task.example_input
        achieved = count(model, x).flops / count(task.model, x).flops
        model, history, final = fit(task, model, "finetune")
        info = {"pruning_ratio": ratio, "achieved": achieved, "finetune": final}
        return PruneResult(model, history, info, test_metrics=final)
