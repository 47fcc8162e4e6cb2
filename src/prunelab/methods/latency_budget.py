"""A latency target for a method: the cached per-layer table, its error here, and the check.

Methods budget latency through `prunelab.latency_table`: every architecture a
method considers is costed by the table's prediction from its kept widths,
never timed one by one. Before the method searches, the uniform plan at the
target is timed against the dense model (`planners.for_cost` verifies and
nudges it); measured / predicted of that plan is the table's error on this
machine, and the method aims its search at target / error. After the method,
its final model is timed against the dense one (adaptive repeats, see
`latency_table.measured_ratio`) and what was predicted and measured is
reported in `notes`, met or not.

`round_to: auto` (a method's kept-channel multiple) is resolved here too:
`resolve_round_to` reads the multiple the table of the task's latency spec
measured fastest, whatever the budget's metric.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from prunelab import planners
from prunelab.errors import ConfigError, InfeasibleBudgetError
from prunelab.graph.groups import ChannelGraph
from prunelab.graph.plan import Plan
from prunelab.latency_table import LatencySpec, latency_table, measured_ratio
from prunelab.methods.base import PruneTask
from prunelab.train import distributed as D

__all__ = ["ROUND_TO_VALUES", "VERIFY_TOLERANCE", "LatencyBudget", "check_round_to",
           "resolve_round_to"]  # fmt: skip

VERIFY_TOLERANCE = 0.05  # as planners.for_cost: a timing, not a count
ROUND_TO_VALUES = "a whole number >= 1 (1: no rounding) or 'auto' (the latency table's fastest)"
Masks = Mapping[int, Any]


def check_round_to(value: object, option: str = "method.round_to") -> None:
    """Raise one ConfigError unless `value` is a kept-channel multiple >= 1 or "auto"."""
    if isinstance(value, str) and value == "auto":
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{option}={value!r} must be {ROUND_TO_VALUES}")


def resolve_round_to(
    round_to: int | str, model: nn.Module, graph: ChannelGraph, task: PruneTask
) -> int:
    """`round_to` as a channel multiple; "auto": the one the latency table measured fastest.

    The table is the one of `model`'s architecture under `task.latency` (read
    from the cache, or measured and cached), as `planners.for_cost` uses it;
    under `metric=flops` or `params` it is measured for the rounding alone.
    Under torchrun every rank takes rank 0's multiple, so the ranks' widths agree.
    """
    check_round_to(round_to)
    if round_to != "auto":
        return int(round_to)
    table = planners.table_for(model, graph, task.latency)
    return int(D.broadcast_object(table.round_to))


class LatencyBudget:
    """The table of `model`'s architecture under `task.latency`, aimed by its measured error.

    `check=False` skips the uniform plan's timing (aim = target). When no
    uniform plan reaches the target (e.g. the method prunes groups the uniform
    planner leaves whole), the aim stays at the target and `notes` says why.
    """

    def __init__(
        self,
        model: nn.Module,
        graph: ChannelGraph,
        task: PruneTask,
        round_to: int | str = 1,
        shortcuts: bool = True,
        tolerance: float = 0.01,
        check: bool = True,
    ) -> None:
        self.spec = LatencySpec.from_config(task.latency)
        self.graph, self.target = graph, task.target
        self.table = latency_table(model, graph, self.spec)
        self.dense_ms = self.table.dense_ms(graph)
        self.error, self.aim = 1.0, task.target
        self.notes: dict[str, Any] = {"target": task.target, "spec": self.spec.key(),
                                      "verify_tolerance": VERIFY_TOLERANCE}  # fmt: skip
        if check:
            self._check_uniform(model, round_to, shortcuts, tolerance)
        self.notes.update(table_error=self.error, aim=self.aim)

    def _check_uniform(
        self, model: nn.Module, round_to: int | str, shortcuts: bool, tolerance: float
    ) -> None:
        try:
            uniform = planners.for_cost(
                model, self.graph, self.target, metric="latency", latency=self.table,
                round_to=round_to, shortcuts=shortcuts, tolerance=tolerance,
            )  # fmt: skip
        except InfeasibleBudgetError as e:
            self.notes["uniform_check"] = f"not timed: {e}"
            return
        checked = uniform.notes["latency"]
        # under torchrun every rank aims where rank 0 measured, so the ranks' budgets agree
        self.error = D.broadcast_object(checked["measured"] / checked["predicted"])
        self.aim = min(1.0, self.target / self.error)
        self.notes["uniform_check"] = {k: checked[k] for k in ("predicted", "measured")}

    def table_ratio(self, keep: Plan | Masks) -> float:
        """The table's predicted latency of the kept architecture over the dense model's."""
        if isinstance(keep, Plan):
            return self.table.predict_plan(keep) / self.dense_ms
        return self.table.predict(self.graph, keep) / self.dense_ms

    def predicted_ratio(self, keep: Plan | Masks) -> float:
        """The table's ratio corrected by its error measured on the uniform plan."""
        return self.table_ratio(keep) * self.error

    def verify(
        self,
        dense: nn.Module,
        pruned: nn.Module,
        predicted: float | None = None,
        pruned_input: torch.Tensor | None = None,
    ) -> float:
        """Time `pruned` against `dense` (interleaved); record it, with the prediction if given.

        `pruned_input`: the pruned model's own input when it differs from the
        dense model's (a resolution-pruned model).
        """
        x = torch.zeros(self.graph.input_shape)
        ratio, timing = measured_ratio(dense, pruned, x, self.spec, pruned_input=pruned_input)
        self.notes.update(measured=ratio, met=abs(ratio / self.target - 1) <= VERIFY_TOLERANCE,
                          timing=timing.summary())  # fmt: skip
        if predicted is not None:
            self.notes.update(predicted=predicted, prediction_error=ratio / predicted - 1)
        return ratio
