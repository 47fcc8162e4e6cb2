"""The classic baseline: one kept fraction in every layer, ranked by a criterion, then fine-tune.

The fraction is the one that meets the cost target (`planners.for_cost`);
it is the yardstick that per-layer ratio search (random, CHEX, BWCP, DWR)
has to beat at the same budget and fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prunelab import planners
from prunelab.criteria import DATA_DRIVEN, collect_taylor
from prunelab.graph import prune, trace
from prunelab.graph.cost import base_cost, plan_cost
from prunelab.methods.base import Method, PruneResult, PruneTask, register_method
from prunelab.methods.finetune import batches, fit
from prunelab.methods.latency_budget import check_round_to


@register_method
class UniformPruning(Method):
    name = "uniform"
    summary = "same kept fraction in every layer, criterion ranking, then fine-tune"

    @dataclass
    class Options:
        criterion: str = "l1"
        round_to: int | str = 8  # "auto": the multiple a latency table measured fastest
        shortcuts: bool = True
        criterion_batches: int = 8

        def __post_init__(self) -> None:
            check_round_to(self.round_to)  # the one rule every method's round_to follows

    def planner_options(self) -> dict[str, Any]:
        """How `planners.for_cost` spreads the budget over the layers."""
        return {"strategy": "uniform"}

    def run(self, task: PruneTask) -> PruneResult:
        opts = self.options
        model = task.model.cpu().eval()
        x = task.example_input
        graph = trace(model, x)
        stats = None
        if opts.criterion in DATA_DRIVEN:
            stats = collect_taylor(model, batches(task, opts.criterion_batches))
        plan = planners.for_cost(
            model, graph, task.target, metric=task.metric, criterion=opts.criterion,
            round_to=opts.round_to, shortcuts=opts.shortcuts, stats=stats, latency=task.latency,
            **self.planner_options(),
        )  # fmt: skip
        pruned = prune(model, plan)
        pruned, history, final = fit(task, pruned, "finetune")
        info = {"plan_ratios": plan.ratios(), "finetune": final}
        if task.metric == "latency":  # measured on the plan's model before fine-tuning
            info["latency"] = plan.notes["latency"]
            info["achieved"] = plan.notes["latency"]["measured"]
        else:
            info["achieved"] = plan_cost(plan)[task.metric] / base_cost(graph)[task.metric]
        return PruneResult(pruned, history, info, test_metrics=final)


@register_method
class GlobalRankPruning(UniformPruning):
    """Global ranking: one score threshold over every layer's channels, then fine-tune.

    Raw norms grow with a layer's fan-in, so scores are divided by their layer's
    mean first (`normalize="mean"`, as global pruning in Torch-Pruning and NNI
    does); `normalize="none"` pools the raw scores.
    """

    name = "global"
    summary = "one criterion threshold across all layers (global ranking), then fine-tune"

    @dataclass
    class Options(UniformPruning.Options):
        normalize: str = "mean"

    def planner_options(self) -> dict[str, Any]:
        return {"strategy": "global", "normalize": self.options.normalize}
