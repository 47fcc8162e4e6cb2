"""Random channel pruning: "Revisiting Random Channel Pruning" (Li et al., CVPR 2022).

The paper's point is that the per-layer ratios matter more than the channel
criterion, and that a plain random search over ratios is a strong, neutral
baseline. The pipeline:

1. trace the trained model into channel groups; a residual stage is one
   coupled group, so its blocks share one ratio (as the paper's supplement);
2. sample `candidates` architectures: per-group keep ratios uniform in
   [r_min, 1], rescaled (or rejected) until the cost is within `tolerance`
   of the target (FLOPs = MACs, or params, as a fraction of the dense model);
3. build each by keeping, in each group, the units a criterion ranks highest
   (l1 l2 gm taylor taylor_weight es kl bn_scale random);
4. score each cheaply (BN recalibration + hold-out accuracy by default, or a
   short fine-tune, or feature-map reconstruction; see random_scoring.py);
5. fine-tune the best one with the task's recipe.

`from_scratch=True` is the paper's other pipeline (its supplement: sample the
architecture, train it from scratch): candidates are re-initialised, scored by
`score_steps` of training from scratch, and the winner re-initialised again and
trained from scratch with the task's recipe; with `candidates=1` the one sampled
architecture is trained unscored. The trained model then only gives the
architecture space (the criterion's choice of channels is irrelevant after
re-initialisation), so no checkpoint is needed.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from prunelab import planners
from prunelab.criteria import DATA_DRIVEN, collect_taylor, list_criteria
from prunelab.errors import ConfigError, InfeasibleBudgetError
from prunelab.graph import prune, trace
from prunelab.graph.cost import base_cost, cost_of_masks, plan_cost
from prunelab.graph.groups import ChannelGraph, Group
from prunelab.graph.plan import round_keep
from prunelab.latency_table import LatencyTable
from prunelab.methods.base import Method, PruneResult, PruneTask, register_method
from prunelab.methods.finetune import batches, fit
from prunelab.methods.latency_budget import LatencyBudget, check_round_to, resolve_round_to
from prunelab.methods.random_scoring import (
    SCORING_MODES,
    ScoringSetup,
    score_candidate,
)
from prunelab.models.layers import reinitialise
from prunelab.train.loop import resolve_device

Counts = dict[int, int]  # kept units per group index


@dataclass
class Sampled:
    """Architectures drawn by `sample_architectures`, and how many draws it took."""

    counts: list[Counts]
    drawn: int
    duplicates: int = 0

    @property
    def acceptance_rate(self) -> float:
        """Accepted candidates per draw (duplicates count as drawn, not accepted)."""
        return len(self.counts) / max(1, self.drawn)


def sample_architectures(
    graph: ChannelGraph,
    groups: list[Group],
    target: float,
    metric: str = "flops",
    n: int = 32,
    r_min: float = 0.1,
    tolerance: float = 0.02,
    round_to: int = 1,
    sampling: str = "rescale",
    seed: int = 0,
    max_draws: int = 20000,
    unique: bool = True,
    table: LatencyTable | None = None,
) -> Sampled:
    """Draw `n` kept-unit counts per group whose cost is within `tolerance` of `target`.

    The window is target x (1 +- tolerance), relative like `planners.for_cost`.
    Each draw takes a keep ratio per group uniformly in [r_min, 1]. "rescale"
    then multiplies all ratios by the largest factor s (ratios clipped to
    [r_min, 1]) whose cost stays under the window's top, and accepts the draw
    if the cost is also above its bottom (rounding to `round_to` can make it
    jump over the window); "reject" accepts a draw only if its raw cost is in
    the window. With `unique`, a repeated architecture is drawn but not
    accepted again. Costs are the analytic `cost_of_masks` (kept units taken
    as a prefix: which units a criterion keeps does not change the cost, except
    for units added back so no layer is emptied). Same seed, same candidates.
    With metric "latency" the cost is `table`'s predicted latency in ms.
    """
    _check_sampling(target, metric, n, r_min, tolerance, sampling, max_draws)
    if not groups:
        raise InfeasibleBudgetError("the model has no prunable channel groups")
    if metric == "latency" and table is None:
        raise ConfigError("a latency budget needs the model's latency table")
    rng = np.random.default_rng(seed)
    base = table.dense_ms(graph) if table is not None else base_cost(graph)[metric]
    floor, ceiling = target * base * (1 - tolerance), target * base * (1 + tolerance)
    sizes = np.array([g.size for g in groups])

    def counts_of(ratios: np.ndarray) -> Counts:
        return {
            g.index: round_keep(float(r) * g.size, g.size, round_to)
            for g, r in zip(groups, ratios, strict=True)
        }

    def cost(counts: Counts) -> float:
        masks = {g: torch.arange(size) < k for g, k, size in _with_sizes(graph, counts)}
        if table is not None:
            return table.predict(graph, {g: m.numpy() for g, m in masks.items()})
        return cost_of_masks(graph, masks)[metric]

    lowest = cost(counts_of(np.full(len(groups), r_min)))
    if lowest > ceiling:
        raise InfeasibleBudgetError(
            f"cannot reach {target:.1%} of the baseline {metric}: keeping r_min={r_min} of every "
            f"group (rounded to {round_to}) still costs {lowest / base:.1%}"
        )
    accepted: list[Counts] = []
    seen: set[tuple[int, ...]] = set()
    drawn = duplicates = 0
    while len(accepted) < n:
        if drawn >= max_draws:
            raise InfeasibleBudgetError(
                f"only {len(accepted)} of {n} candidates within {tolerance:.1%} of {target:.1%} "
                f"{metric} after {drawn} draws; widen the tolerance, lower round_to or use "
                "sampling='rescale'"
            )
        drawn += 1
        ratios = rng.uniform(r_min, 1.0, size=len(groups))
        if sampling == "rescale":
            ratios = _rescaled(ratios, r_min, lambda r: cost(counts_of(r)), ceiling, sizes)
        counts = counts_of(ratios)
        if not floor <= cost(counts) <= ceiling:
            continue
        key = tuple(counts[g.index] for g in groups)
        if unique and key in seen:
            duplicates += 1
            continue
        seen.add(key)
        accepted.append(counts)
    return Sampled(accepted, drawn, duplicates)


def _rescaled(
    ratios: np.ndarray, r_min: float, cost: Any, ceiling: float, sizes: np.ndarray
) -> np.ndarray:
    """ratios x s, clipped to [r_min, 1], for the largest s whose cost is <= ceiling."""

    def at(s: float) -> np.ndarray:
        return np.clip(ratios * s, r_min, 1.0)

    lo, hi = 0.0, 1.0 / float(ratios.min())
    if cost(at(hi)) <= ceiling:
        return at(hi)
    # Ratios move in steps of one unit at best, so ~log2(max size) + a few halvings suffice.
    for _ in range(int(np.log2(sizes.max() + 1)) + 24):
        mid = (lo + hi) / 2
        if cost(at(mid)) <= ceiling:
            lo = mid
        else:
            hi = mid
    return at(lo)


def _with_sizes(graph: ChannelGraph, counts: Counts) -> list[tuple[int, int, int]]:
    return [(g, k, graph.groups[g].size) for g, k in counts.items()]


def _check_sampling(
    target: float, metric: str, n: int, r_min: float, tolerance: float, sampling: str, draws: int
) -> None:
    if not 0 < target <= 1:
        raise InfeasibleBudgetError(f"target {metric} fraction must be in (0, 1], got {target}")
    if metric not in ("flops", "params", "latency"):
        raise ConfigError(f"metric must be 'flops', 'params' or 'latency', got {metric!r}")
    if n < 1:
        raise ConfigError(f"candidates must be >= 1, got {n}")
    if not 0 < r_min <= 1:
        raise ConfigError(f"r_min must be in (0, 1], got {r_min}")
    if not 0 < tolerance < 1:
        raise ConfigError(f"tolerance must be in (0, 1), got {tolerance}")
    if sampling not in ("rescale", "reject"):
        raise ConfigError(f"sampling must be 'rescale' or 'reject', got {sampling!r}")
    if draws < n:
        raise ConfigError(f"max_draws ({draws}) must be >= candidates ({n})")


@register_method
class RandomSearchPruning(Method):
    name = "random"
    summary = (
        "random per-layer ratios under the budget, criterion ranking, cheap scoring, fine-tune"
    )

    @dataclass
    class Options:
        """Options; the paper's pipeline with our CPU-sized defaults where it gives none.

        candidates: architectures sampled and scored.
        r_min: lowest keep ratio a group is drawn with (and rescaled to).
        tolerance: accepted cost window, target x (1 +- tolerance), relative as in
            planners.for_cost (0.02 around 0.5 accepts 0.49..0.51 of the baseline).
        sampling: "rescale" (scale each draw onto the budget) or "reject" (keep draws
            that land in the window; exact uniform-in-the-window, far more draws).
        max_draws: give up (InfeasibleBudgetError) after this many draws.
        round_to: kept counts are multiples of this (8 keeps CPU/GPU kernels fast;
            the paper does not round: 1); "auto": the multiple the latency table of
            `task.latency` measured fastest, under any metric (info["round_to"]).
        shortcuts: also prune residual-coupled groups (a stage keeps one ratio).
        criterion: channel ranking within a group: l1 l2 gm taylor (gate) taylor_weight
            es kl bn_scale random.
        criterion_batches: training batches for data-driven criteria (taylor, es, kl).
        scoring: "bn", "finetune" or "reconstruct" (see random_scoring.py).
        bn_batches: training batches for BN recalibration when scoring.
        score_steps: optimisation steps of "finetune"/"reconstruct" scoring.
        finetune_lr: SGD learning rate of "finetune" scoring.
        reconstruct_lr: Adam learning rate of "reconstruct" scoring.
        eval_batches: hold-out batches a score is measured on (None: all; else the first of
            the split in a fixed random order, the same images for every candidate).
        from_scratch: re-initialise candidates, score them by `score_steps` of training
            from scratch ("finetune" scoring), train the winner from scratch.
        """

        candidates: int = 32
        r_min: float = 0.1
        tolerance: float = 0.02
        sampling: str = "rescale"
        max_draws: int = 20000
        round_to: int | str = 8
        shortcuts: bool = True
        criterion: str = "l1"
        criterion_batches: int = 4
        scoring: str = "bn"
        bn_batches: int = 20
        score_steps: int = 50
        finetune_lr: float = 0.01
        reconstruct_lr: float = 1e-3
        eval_batches: int | None = None
        from_scratch: bool = False

        def __post_init__(self) -> None:
            if self.criterion not in list_criteria():
                raise ConfigError(
                    f"unknown criterion {self.criterion!r}; known: {', '.join(list_criteria())}"
                )
            if self.scoring not in SCORING_MODES:
                raise ConfigError(f"scoring must be one of {SCORING_MODES}, got {self.scoring!r}")
            check_round_to(self.round_to)
            for name in ("criterion_batches", "bn_batches", "score_steps"):
                if getattr(self, name) < 1:
                    raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
            if self.eval_batches is not None and self.eval_batches < 1:
                raise ConfigError(f"eval_batches must be >= 1 or None, got {self.eval_batches}")
            if self.from_scratch and self.candidates > 1 and self.scoring != "finetune":
                raise ConfigError(
                    "from_scratch scores candidates by training them from scratch: use "
                    "scoring='finetune' (or candidates=1 for one random architecture)"
                )
            _check_sampling(
                0.5, "flops", self.candidates, self.r_min, self.tolerance, self.sampling,
                self.max_draws,
            )  # fmt: skip

    def check(self, task: PruneTask) -> None:
        task.require_metric(self.name, *self.metrics)
        opts = self.options
        if (opts.candidates > 1 or not opts.from_scratch) and task.data.holdout is None:
            raise ConfigError(
                "the random search scores candidates on a hold-out split of the training data, "
                "and this data has none: set data holdout (e.g. 5000 for CIFAR)"
            )

    def run(self, task: PruneTask) -> PruneResult:
        self.check(task)
        opts = self.options
        needs_scoring = opts.candidates > 1 or not opts.from_scratch
        start = time.perf_counter()
        loader_state = task.data.train.state_dict()
        device = resolve_device(task.train.device)
        model = task.model.to(device).eval()
        graph = trace(model.cpu(), task.example_input)
        groups = planners.select_groups(graph, opts.shortcuts)
        round_to = resolve_round_to(opts.round_to, model, graph, task)
        # timed on the CPU, as the table is
        # A latency budget samples in the table's prediction, aimed by its error on the uniform
        # plan; random architectures cannot be nudged one by one without changing what was
        # scored, so the winner is timed once and reported (info["latency"]), met or not.
        latency = None
        if task.metric == "latency":
            latency = LatencyBudget(model, graph, task, round_to, opts.shortcuts,
                                    opts.tolerance)  # fmt: skip
        model.to(device)
        # Sampling needs no scores: an infeasible budget fails before slow criteria run.
        sampled = sample_architectures(
            graph, groups, latency.aim if latency else task.target, task.metric, opts.candidates,
            opts.r_min, opts.tolerance, round_to, opts.sampling, task.seed, opts.max_draws,
            table=latency.table if latency else None,
        )  # fmt: skip
        scores = planners.score_groups(model, groups, opts.criterion, self._stats(task, model))
        setup = ScoringSetup(
            "finetune" if opts.from_scratch else opts.scoring, task.data, loader_state,
            opts.bn_batches, opts.score_steps, opts.finetune_lr, opts.reconstruct_lr,
            task.train.weight_decay, opts.eval_batches,
        )  # fmt: skip
        base = base_cost(graph)
        records: list[dict[str, Any]] = []
        best: tuple[float, int, nn.Module] | None = None
        for i, counts in enumerate(sampled.counts):
            t0 = time.perf_counter()
            plan = planners.plan_from_counts(graph, scores, counts)
            pruned = prune(model, plan)
            if opts.from_scratch:
                reinitialise(pruned, task.seed * 1000 + i)
            value = score_candidate(setup, pruned, model, plan) if needs_scoring else None
            cost = plan_cost(plan)
            named = {graph.groups[g].name: (k, graph.groups[g].size) for g, k in counts.items()}
            records.append({
                "index": i,
                "ratios": {name: k / size for name, (k, size) in named.items()},
                "kept": {name: k for name, (k, _) in named.items()},
                "flops_ratio": cost.flops / base.flops,
                "params_ratio": cost.params / base.params,
                "score": value,
                "seconds": time.perf_counter() - t0,
            })  # fmt: skip
            if latency is not None:  # the table's prediction, corrected by its measured error
                records[-1]["latency_ratio"] = latency.predicted_ratio(plan)
            if best is None or (value is not None and value > best[0]):
                best = (value if value is not None else 0.0, i, pruned)
            if not task.quiet:
                self._progress(i, len(sampled.counts), records[-1], best)
        assert best is not None
        task.data.train.load_state_dict(loader_state)
        winner = best[2].cpu()
        if latency is not None:  # the winner timed against the dense model, once
            records[best[1]]["latency_ratio"] = latency.verify(model.cpu(), winner)
            model.to(device)
        search_seconds = time.perf_counter() - start
        if opts.from_scratch:  # scoring trained it a few steps: the final run starts afresh
            reinitialise(winner, task.seed * 1000 + best[1])
        subdir = "scratch" if opts.from_scratch else "finetune"
        winner, history, final = fit(task, winner, subdir)
        info = {
            "method": "random",
            "options": dataclasses.asdict(opts),
            "round_to": round_to,
            "target": task.target,
            "metric": task.metric,
            "groups": [
                {"index": g.index, "name": g.name, "size": g.size, "coupled": g.coupled}
                for g in groups
            ],
            "candidates": records,
            "winner": best[1],
            "winner_score": records[best[1]]["score"],
            "plan_ratios": records[best[1]]["ratios"],
            "achieved": records[best[1]][f"{task.metric}_ratio"],
            "acceptance_rate": sampled.acceptance_rate,
            "drawn": sampled.drawn,
            "duplicates": sampled.duplicates,
            "search_seconds": search_seconds,
            "finetune": final,
        }
        if latency is not None:
            info["latency"] = latency.notes
        return PruneResult(winner, history, info, test_metrics=final)

    def _stats(self, task: PruneTask, model: nn.Module) -> dict[str, Any] | None:
        """What the criterion needs: a seeded generator (random) or training batches."""
        name = self.options.criterion
        if name == "random":
            return {"generator": torch.Generator().manual_seed(task.seed)}
        if name not in DATA_DRIVEN:
            return None
        data = list(batches(task, self.options.criterion_batches))
        stats: dict[str, Any] = {"batches": data}
        if name in ("taylor", "taylor_weight"):
            stats.update(collect_taylor(model, data))
        return stats

    @staticmethod
    def _progress(
        i: int, n: int, record: dict[str, Any], best: tuple[float, int, nn.Module]
    ) -> None:
        score = record["score"]
        shown = "not scored" if score is None else f"score {score:.2f}%, best {best[0]:.2f}%"
        print(
            f"[random] candidate {i + 1}/{n}: flops {record['flops_ratio']:.3f}, "
            f"params {record['params_ratio']:.3f}, {shown} (#{best[1]}), "
            f"{record['seconds']:.1f}s",
            flush=True,
        )
