"""Planners: decide how many units each group keeps, and which.

Every planner scores units with a criterion, decides a kept count per group,
and keeps the highest-scoring units. They differ in how counts are chosen:

- `uniform`: the same kept fraction in every group;
- `per_group`: explicit fractions by group index or name;
- `global_rank`: one threshold over scores pooled across groups;
- `for_cost`: whatever fraction (uniform or global) meets a target cost,
  e.g. 50% of the baseline FLOPs, or of the measured latency, within a tolerance.

Kept counts can be rounded to a multiple (8, 16) so the pruned layers stay on
the fast paths of CPU and GPU kernels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn

from prunelab.criteria import score
from prunelab.errors import ConfigError, InfeasibleBudgetError
from prunelab.graph.cost import cost_model
from prunelab.graph.groups import ChannelGraph, Group, is_residual
from prunelab.graph.plan import Plan, add_survivors, round_keep
from prunelab.latency_table import (
    LatencySpec,
    LatencyTable,
    closest_attempt,
    latency_table,
    measured_ratio,
    next_aim,
)

Scores = dict[int, torch.Tensor]


def select_groups(
    graph: ChannelGraph, shortcuts: bool = True, groups: Iterable[int] | None = None
) -> list[Group]:
    """Prunable groups to plan over; `shortcuts=False` leaves residual-coupled groups whole
    (not the groups a squeeze-excitation gate or a depthwise conv couples: `is_residual`)."""
    chosen = graph.prunable if groups is None else [graph.groups[i] for i in groups]
    for g in chosen:
        if not g.prunable:
            raise ConfigError(f"group {g.index} ({g.name}) may not be pruned: {g.reason}")
    return [g for g in chosen if shortcuts or not is_residual(graph, g)]


def score_groups(
    model: nn.Module,
    groups: Iterable[Group],
    criterion: str = "l1",
    stats: Mapping[str, Any] | None = None,
) -> Scores:
    """Unit scores for each group, by criterion name."""
    return {g.index: score(criterion, model, g, stats) for g in groups}


def _keep_top(scores: torch.Tensor, n: int) -> torch.Tensor:
    # A stable order makes ties (e.g. all-zero scores) resolve by index, repeatably.
    order = torch.argsort(scores, descending=True, stable=True)
    return order[:n]


def plan_from_counts(graph: ChannelGraph, scores: Scores, counts: Mapping[int, int]) -> Plan:
    """Keep the `counts[g]` best-scoring units of each group (and one of any emptied layer)."""
    return Plan(graph, {g: _kept_units(graph, scores, g, n) for g, n in counts.items()})


def _kept_units(graph: ChannelGraph, scores: Scores, g: int, n: int) -> torch.Tensor:
    return add_survivors(graph, graph.groups[g], _keep_top(scores[g], n), scores[g])


def uniform(
    model: nn.Module,
    graph: ChannelGraph,
    keep: float,
    criterion: str = "l1",
    round_to: int = 1,
    shortcuts: bool = True,
    stats: Mapping[str, Any] | None = None,
    scores: Scores | None = None,
) -> Plan:
    """Keep the same fraction `keep` of units in every prunable group."""
    _check_fraction(keep, "keep")
    groups = select_groups(graph, shortcuts)
    scores = scores or score_groups(model, groups, criterion, stats)
    counts = {g.index: round_keep(keep * g.size, g.size, round_to) for g in groups}
    return plan_from_counts(graph, scores, counts)


def per_group(
    model: nn.Module,
    graph: ChannelGraph,
    keeps: Mapping[int | str, float],
    criterion: str = "l1",
    round_to: int = 1,
    stats: Mapping[str, Any] | None = None,
    scores: Scores | None = None,
) -> Plan:
    """Keep an explicit fraction per group, named by group index or group name."""
    by_name = {g.name: g for g in graph.groups}
    counts: dict[int, int] = {}
    for key, frac in keeps.items():
        _check_fraction(frac, f"keep[{key!r}]")
        g = graph.groups[key] if isinstance(key, int) else by_name.get(key)
        if g is None:
            raise ConfigError(f"no group named {key!r}; groups: {sorted(by_name)[:20]} ...")
        counts[g.index] = round_keep(frac * g.size, g.size, round_to)
    groups = [graph.groups[i] for i in counts]
    scores = scores or score_groups(model, groups, criterion, stats)
    return plan_from_counts(graph, scores, counts)


def global_rank(
    model: nn.Module,
    graph: ChannelGraph,
    keep: float,
    criterion: str = "bn_scale",
    round_to: int = 1,
    shortcuts: bool = True,
    normalize: Literal["none", "max", "mean"] = "none",
    stats: Mapping[str, Any] | None = None,
    scores: Scores | None = None,
) -> Plan:
    """Keep the top `keep` fraction of units pooled over all groups.

    Scores are comparable across layers for bn_scale (network slimming);
    for weight norms, `normalize="max"` divides each group's scores by its
    maximum first. Each group keeps at least one unit (or `round_to`).
    """
    _check_fraction(keep, "keep")
    groups = select_groups(graph, shortcuts)
    scores = scores or score_groups(model, groups, criterion, stats)
    counts = _global_counts(groups, _normalized(scores, normalize), keep, round_to)
    return plan_from_counts(graph, scores, counts)


def for_cost(
    model: nn.Module,
    graph: ChannelGraph,
    target: float,
    metric: Literal["flops", "params", "latency"] = "flops",
    criterion: str = "l1",
    strategy: Literal["uniform", "global"] = "uniform",
    round_to: int | Literal["auto"] = 1,
    tolerance: float = 0.01,
    shortcuts: bool = True,
    normalize: Literal["none", "max", "mean"] = "none",
    stats: Mapping[str, Any] | None = None,
    scores: Scores | None = None,
    latency: LatencySpec | Mapping[str, Any] | LatencyTable | None = None,
    verify: bool = True,
    verify_tolerance: float = 0.05,
    max_nudges: int = 4,
) -> Plan:
    """The plan whose cost is `target` x the baseline's, within `tolerance` (relative).

    `target=0.5, metric="flops"` halves the FLOPs (MACs). The uniform strategy
    finds one kept fraction for all groups, the global one a score threshold;
    both then adjust single groups by one step (one unit or `round_to`) to land
    inside the tolerance. A target below what one kept unit per group costs,
    or outside (0, 1], raises InfeasibleBudgetError.

    `metric="latency"` budgets the measured latency under `latency` (a
    LatencySpec or its mapping: batch, threads, runtime, layout; or a ready
    LatencyTable): plans are costed by the cached per-layer table
    (`prunelab.latency_table`), then, with `verify`, the chosen plan's model
    is timed against the dense one (repeats added until the ratio's standard
    error is a quarter of `verify_tolerance`) and the table's target nudged (up to
    `max_nudges` times, `latency_table.next_aim`: the table's error divided out, or,
    once timings lie on both sides, the bracket narrowed) until the measured ratio is
    within `verify_tolerance` (relative) of `target`; the closest plan is returned
    and what was measured is kept in `plan.notes["latency"]`. `round_to="auto"` takes the channel
    multiple the table of `latency` measured as fastest, under any metric (with
    FLOPs or params the table is measured, or read from the cache, for it alone).
    """
    if not 0 < target <= 1:
        raise InfeasibleBudgetError(f"target {metric} fraction must be in (0, 1], got {target}")
    if metric not in ("flops", "params", "latency"):
        raise ConfigError(f"metric must be 'flops', 'params' or 'latency', got {metric!r}")
    groups = select_groups(graph, shortcuts)
    if not groups:
        raise InfeasibleBudgetError("the model has no prunable channel groups")
    scores = scores or score_groups(model, groups, criterion, stats)
    table = table_for(model, graph, latency) if metric == "latency" else None
    if round_to == "auto":  # a speed choice, whatever the budget's metric
        round_to = (table or table_for(model, graph, latency)).round_to
    costs = _CountsCost(graph, scores, metric, table)
    search = _CostSearch(graph, groups, scores, costs, strategy, round_to, normalize, shortcuts)
    plan = plan_from_counts(graph, scores, search.counts_for(target, tolerance))
    if table is None or not verify:
        return plan
    return _verified(model, graph, scores, search, table, latency, plan, target, tolerance,
                     verify_tolerance, max_nudges)  # fmt: skip


class _CostSearch:
    """Kept counts per group whose cost is a given fraction of the baseline's."""

    def __init__(self, graph: ChannelGraph, groups: list[Group], scores: Scores,
                 costs: _CountsCost, strategy: str, round_to: int, normalize: str,
                 shortcuts: bool) -> None:  # fmt: skip
        if strategy not in ("uniform", "global"):
            raise ConfigError(f"unknown strategy {strategy!r}; use 'uniform' or 'global'")
        self.groups, self.costs, self.strategy, self.round_to = groups, costs, strategy, round_to
        self.scores = _normalized(scores, normalize)
        self.shortcuts = shortcuts
        self.base = costs({})
        self.step = {g.index: max(1, round_to) if g.size >= round_to else 1 for g in groups}

    def counts_at(self, frac: float) -> dict[int, int]:
        if self.strategy == "uniform":
            return {g.index: round_keep(frac * g.size, g.size, self.round_to) for g in self.groups}
        return _global_counts(self.groups, self.scores, frac, self.round_to)

    def counts_for(self, target: float, tolerance: float) -> dict[int, int]:
        cost, base, metric = self.costs, self.base, self.costs.metric
        goal = target * base
        smallest = self.counts_at(0.0)
        if cost(smallest) > goal * (1 + tolerance):
            raise InfeasibleBudgetError(
                f"cannot reach {target:.1%} of baseline {metric}: keeping the minimum in every "
                f"prunable group still costs {cost(smallest) / base:.1%}"
                + ("" if self.shortcuts else " (shortcut groups are excluded)")
            )
        lo, hi = 0.0, 1.0  # cost(counts_at(lo)) <= goal < cost(counts_at(hi)), unless hi fits
        if cost(self.counts_at(hi)) <= goal:
            return self.counts_at(hi)
        for _ in range(40):
            mid = (lo + hi) / 2
            if cost(self.counts_at(mid)) <= goal:
                lo = mid
            else:
                hi = mid
        sizes = {g.index: g.size for g in self.groups}
        counts = _refine(self.counts_at(lo), self.step, sizes, cost, goal, tolerance)
        achieved = cost(counts)
        if abs(achieved - goal) > tolerance * goal:
            raise InfeasibleBudgetError(
                f"no plan found within {tolerance:.1%} of {target:.1%} {metric}: closest is "
                f"{achieved / base:.2%} (try a smaller round_to or a larger tolerance)"
            )
        return counts


def table_for(
    model: nn.Module,
    graph: ChannelGraph,
    latency: LatencySpec | Mapping[str, Any] | LatencyTable | None,
) -> LatencyTable:
    """`latency` itself if it is a table, else the table of `model` under that spec (cached)."""
    if isinstance(latency, LatencyTable):
        return latency
    return latency_table(model, graph, LatencySpec.from_config(latency))


def _verified(model: nn.Module, graph: ChannelGraph, scores: Scores, search: _CostSearch,
              table: LatencyTable, latency: Any, plan: Plan, target: float, tolerance: float,
              verify_tolerance: float, max_nudges: int) -> Plan:  # fmt: skip
    """Time the plan's model; while it misses the target, re-aim the table and plan again."""
    from prunelab.graph import prune  # surgery is only needed here

    spec = LatencySpec.from_config(table.spec if isinstance(latency, LatencyTable) else latency)
    x = torch.zeros(graph.input_shape)
    aim, tried = target, []
    for attempt in range(max_nudges + 1):
        ratio, timing = measured_ratio(model, prune(model, plan), x, spec,
                                       spread=verify_tolerance / 4)  # fmt: skip
        predicted = search.costs(_counts_of(plan)) / search.base
        tried.append({"aim": aim, "predicted": predicted, "measured": ratio, "plan": plan,
                      "timing": timing.summary()})  # fmt: skip
        if abs(ratio / target - 1) <= verify_tolerance or attempt == max_nudges:
            break
        aim = next_aim(tried, target)  # the table's error divided out, or a bracket narrowed
        try:
            plan = plan_from_counts(graph, scores, search.counts_for(aim, tolerance))
        except InfeasibleBudgetError:
            break
    best, notes = closest_attempt(tried, target, verify_tolerance, artefact="plan")
    best["plan"].notes["latency"] = {**notes, "spec": spec.key(), "round_to": search.round_to}
    return best["plan"]


def _counts_of(plan: Plan) -> dict[int, int]:
    return {g: len(k) for g, k in plan.keep.items()}


def _refine(
    counts: dict[int, int],
    step: Mapping[int, int],
    sizes: Mapping[int, int],
    cost: Any,
    goal: float,
    tolerance: float,
) -> dict[int, int]:
    """Greedily grow single groups by one step while the cost stays under the ceiling."""
    counts = dict(counts)
    current = cost(counts)
    ceiling = goal * (1 + tolerance)
    while abs(current - goal) > tolerance * goal:
        best: tuple[int, int] | None = None
        for g, n in counts.items():
            if n >= sizes[g]:
                continue
            trial = dict(counts)
            trial[g] = min(sizes[g], n + step[g])
            c = cost(trial)
            if c <= ceiling and (best is None or c > best[1]):
                best = (g, c)
        if best is None or best[1] <= current:
            break
        counts[best[0]] = min(sizes[best[0]], counts[best[0]] + step[best[0]])
        current = best[1]
    return counts


class _CountsCost:
    """Cost in `metric` of kept counts per group; each group's mask at each count is made once."""

    def __init__(self, graph: ChannelGraph, scores: Scores, metric: str = "flops",
                 table: LatencyTable | None = None) -> None:  # fmt: skip
        self.graph, self.scores, self.metric, self.table = graph, scores, metric, table
        self.model = cost_model(graph)
        self._masks: dict[tuple[int, int], np.ndarray] = {}

    def mask(self, g: int, n: int) -> np.ndarray:
        if (g, n) not in self._masks:
            mask = np.zeros(len(self.scores[g]), dtype=bool)
            mask[_kept_units(self.graph, self.scores, g, n).numpy()] = True
            self._masks[(g, n)] = mask
        return self._masks[(g, n)]

    def __call__(self, counts: Mapping[int, int]) -> float:
        masks = {g: self.mask(g, n) for g, n in counts.items()}
        if self.table is not None:
            return self.table.predict(self.graph, masks)
        return self.model.cost(masks)[self.metric]


def _normalized(scores: Scores, how: str) -> Scores:
    if how == "none":
        return scores
    if how == "max":
        return {g: s / s.max().clamp_min(1e-12) for g, s in scores.items()}
    if how == "mean":
        return {g: s / s.mean().clamp_min(1e-12) for g, s in scores.items()}
    raise ConfigError(f"unknown normalization {how!r}; use 'none', 'max' or 'mean'")


def _global_counts(
    groups: list[Group], scores: Scores, keep: float, round_to: int
) -> dict[int, int]:
    pooled = torch.cat([scores[g.index] for g in groups])
    n_keep = round(keep * len(pooled))
    if n_keep >= len(pooled):
        return {g.index: g.size for g in groups}
    threshold = torch.sort(pooled, descending=True).values[n_keep] if n_keep > 0 else float("inf")
    return {
        g.index: round_keep(int((scores[g.index] > threshold).sum()), g.size, round_to)
        for g in groups
    }


def _check_fraction(x: float, name: str) -> None:
    if not 0 < x <= 1:
        raise ConfigError(f"{name} must be a fraction in (0, 1], got {x}")
