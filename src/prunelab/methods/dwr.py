"""DWR: prune depth, width and input resolution together (Wang et al., ICML 2021).

"Accelerate CNNs from Three Dimensions: A Comprehensive Pruning Framework".
Instead of spending the whole FLOPs budget T on one dimension, DWR learns how
accuracy depends on depth d, width w and resolution r and picks the best
(d, w, r) with d * w^2 * r^2 = T:

1. Data collection (the paper's Algorithm 1): from the trained model, prune
   along one dimension at a time for `rounds` rounds (depth down to T, width
   and resolution down to sqrt(T), in equal steps), fine-tuning after each
   round; every intermediate model is a (d, w, r, accuracy) point.
2. Fit the accuracy model (MAP, `dwr_model`): rank-R, degree-K separable
   polynomial (R = 1, K = 3 by default).
3. Maximise it under the cost T. The paper's constraint is d * w^2 * r^2 = T;
   by default (`cost: measured`) the constraint is instead a cost model fitted
   to the engine's exact counts of realised (d, w, r) models (`dwr_cost`),
   because d counts only the removable blocks and the rest of the network
   does not shrink with it. The real cost is then met by measuring it with
   the engine (depth and resolution fixed, width adjusted).
4. Prune the trained model: depth by DBP (`dwr_probe`, linear probes on
   each block's pooled output), width by BN scale with the same ratio in
   every layer, resolution by bilinearly resizing every batch; fine-tune.

Depth d is the kept fraction of the removable units: residual blocks whose
shortcut is the identity (`prunelab.graph.blocks`) and the layers of dense
blocks, which go from each block's end (`prunelab.graph.dense_layers`, so
DenseNet is pruned in all three dimensions); width w the kept fraction
of channels over the prunable groups; resolution r the input side length
over the original one. The pruned model records its input size in
`model.prunelab_input_size` and the chosen side length in
`model.prunelab_resolution`, which `prunelab.save` keeps and the command line
applies to evaluation.

With one dimension in `dims` there is nothing to learn: the method prunes
that dimension alone to the budget (the paper's Table 1 baselines), with the
same final fine-tune.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from prunelab import planners
from prunelab.atomic import atomic_write_text
from prunelab.data import DataBundle, Loader, in_random_order
from prunelab.errors import ConfigError, InfeasibleBudgetError
from prunelab.graph import ChannelMask, Plan, prune, trace
from prunelab.graph.blocks import find_removable_blocks, remove_blocks, zero_branches
from prunelab.graph.cost import base_cost, plan_cost
from prunelab.graph.dense_layers import (
    find_dense_layers,
    removable_tail,
    remove_dense_layers,
    zero_dense_layers,
)
from prunelab.graph.plan import round_keep
from prunelab.io import load, save
from prunelab.methods.base import Method, PruneResult, PruneTask, register_method
from prunelab.methods.dwr_cost import CostModel, fit_cost, maximize_under_cost, solve_dimension
from prunelab.methods.dwr_latency import build_for_latency, latency_cost
from prunelab.methods.dwr_model import (
    DIMS,
    FullPolynomial,
    SeparablePolynomial,
    fit_full,
    fit_separable,
    leave_one_out,
    maximize,
    rmse,
)
from prunelab.methods.dwr_probe import dbp_importance
from prunelab.methods.finetune import fit
from prunelab.methods.latency_budget import check_round_to, resolve_round_to
from prunelab.metrics import count
from prunelab.train import TrainConfig
from prunelab.train import distributed as D

__all__ = ["DWR", "Collector", "Point"]


@dataclass
class Point:
    """One data point of the accuracy model: a pruned, fine-tuned model and its accuracy."""

    d: float
    w: float
    r: float
    accuracy: float  # percent, on the evaluation split
    dim: str  # "origin", "depth", "width" or "resolution"
    round: int
    pixels: int
    flops: int
    params: int
    blocks_kept: int
    test_top1: float | None = None
    epochs: int = 0
    seconds: float = 0.0

    @property
    def xyz(self) -> tuple[float, float, float]:
        return (self.d, self.w, self.r)


@contextlib.contextmanager
def at_resolution(data: DataBundle, pixels: int) -> Iterator[None]:
    """Resize every batch of every loader to `pixels` inside the block, then restore."""
    before = data.resolution
    data.set_resolution(pixels)
    try:
        yield
    finally:
        data.set_resolution(before)


def _loader(data: DataBundle, split: str) -> Loader | None:
    if split not in ("train", "test", "holdout"):
        raise ConfigError(f"split must be 'train', 'test' or 'holdout', got {split!r}")
    return getattr(data, split)


class Collector:
    """Data collection and pruning along each dimension, for one task.

    Holds what every step needs: the trained model, its removable blocks and
    channel groups, its native input size and cost. With a cache folder each
    collected point (and its model) is written as soon as it exists and read
    back instead of being recomputed, so an interrupted collection resumes
    and separate processes can collect different dimensions.
    """

    def __init__(self, task: PruneTask, options: DWR.Options) -> None:
        self.task = task
        self.opts = options
        # Under torchrun every rank runs the whole method; decisions must agree, so
        # accuracies and DBP gains are reduced over ranks and rank 0 owns the cache.
        self.dist = D.init_distributed()
        self.device = (
            torch.device("cuda", self.dist.local_rank)
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
        self.model0 = task.model.cpu().eval()
        c, h, w = task.data.effective_input_size
        if h != w:
            raise ConfigError(f"DWR prunes square inputs; the data gives {h}x{w}")
        self.channels, self.r0 = c, h
        self.base = count(self.model0, self._input(self.r0))
        # Depth units: identity-shortcut residual blocks, and the layers of dense blocks.
        self.dense0 = set(find_dense_layers(self.model0))
        residual = [b.name for b in find_removable_blocks(self.model0, self._input(self.r0))]
        self.blocks0 = [n for n, _ in self.model0.named_modules() if n in self.dense0
                        or n in residual]  # fmt: skip
        graph = trace(self.model0, self._input(self.r0))
        self.groups0 = {g.name: g.size for g in planners.select_groups(graph)}
        # "auto": the channel multiple the latency table of task.latency measured fastest
        round_to = resolve_round_to(options.round_to, self.model0, graph, task)
        self.opts = options = replace(options, round_to=round_to)
        self.eval_split = options.eval_split
        if _loader(task.data, self.eval_split) is None:
            self.eval_split = "test"  # no hold-out split was built
        cache = options.collect_dir or (task.run_dir / "collect" if task.run_dir else None)
        self.cache = Path(cache) if cache is not None else None
        self.dims = [d for d in DIMS if d in options.dims]
        self._order: tuple[list[str], dict[str, float]] | None = None
        self._cost: CostModel | None = None

    # ------------------------------------------------------------------ basics
    def _input(self, pixels: int) -> torch.Tensor:
        return torch.zeros(1, self.channels, pixels, pixels)

    def say(self, text: str) -> None:
        if not (self.task.quiet or self.task.train.quiet):
            print(f"[dwr] {text}", flush=True)

    def settings(self) -> dict[str, Any]:
        """What the collected points depend on; a cache made otherwise is refused."""
        o = self.opts
        arch = getattr(self.model0, "prunelab_arch", {"name": type(self.model0).__name__})
        return {"arch": arch, "target": self.task.target, "rounds": o.rounds,
                "round_epochs": o.round_epochs, "round_lr": o.round_lr,
                "eval_split": self.eval_split, "seed": self.task.seed,
                "base_flops": self.base.flops, "pixels": self.r0, "cost": o.cost,
                "probe_order": o.probe_order,
                **({} if self.task.metric == "flops" else {"metric": self.task.metric}),
                **({} if o.round_steps is None else {"round_steps": o.round_steps}),
                # the collection rounds fine-tune with the recipe's distillation too
                **({} if not self.task.train.distill else {"distill": self.task.train.distill}),
                }  # fmt: skip

    def removable(self, model: nn.Module) -> list[str]:
        """Blocks of the original model still present (and removable) in `model`."""
        present = {b.name for b in find_removable_blocks(model)} | set(find_dense_layers(model))
        return [b for b in self.blocks0 if b in present]

    def remove(self, model: nn.Module, names: Sequence[str]) -> nn.Module:
        """`model` without the named depth units (residual blocks and/or dense layers)."""
        dense = [n for n in names if n in self.dense0]
        residual = [n for n in names if n not in self.dense0]
        if residual:
            model = remove_blocks(model, residual)
        if dense:
            model = remove_dense_layers(model, dense, self._input(self.r0))
        return model

    def removal_order(self, present: Sequence[str], scores: dict[str, float]) -> list[str]:
        """`present` units, least important first; a dense layer only once it is its block's last.

        Residual blocks go in DBP order; dense blocks lose layers from their end
        (DWR on DenseNet), the least important of the blocks' current last layers first.
        """
        left, order = list(present), []
        while left:
            tails = set(removable_tail([b for b in left if b in self.dense0]))
            ready = [b for b in left if b not in self.dense0 or b in tails]
            pick = min(ready, key=lambda b: (scores[b], present.index(b)))
            order.append(pick)
            left.remove(pick)
        return order

    def masked(self, names: Sequence[str]) -> nn.Module:
        """The trained model with the named depth units zeroed in place of removed."""
        x = self._input(self.r0)
        dense = [n for n in names if n in self.dense0]
        model = zero_dense_layers(self.model0, dense, x) if dense else self.model0
        residual = [n for n in names if n not in self.dense0]
        return zero_branches(model, residual, x) if residual else model

    @torch.no_grad()
    def masked_vs_pruned(
        self, removed: Sequence[str], depth: nn.Module, plan: Plan | None, pruned: nn.Module,
        pixels: int,
    ) -> float:
        """Largest relative output difference of the pruned model from its masked counterpart.

        Two steps, each an exact equality: the depth-pruned model against the trained
        one with those units zeroed, and the width-pruned model against the
        depth-pruned one with the plan's channel masks applied; both at `pixels`.
        """
        g = torch.Generator().manual_seed(0)
        x = torch.randn(4, self.channels, pixels, pixels, generator=g)
        pairs = [(self.masked(removed).eval(), depth.eval())]
        if plan is not None:
            masked = copy.deepcopy(depth).eval()
            mask = ChannelMask(masked, plan.graph)
            for g in plan.keep:
                mask.set(g, plan.keep_mask(g))
            mask.apply()
            pairs.append((masked, pruned.eval()))
        diff = 0.0
        for a, b in pairs:
            ya, yb = a(x), b(x)
            diff = max(diff, float((ya - yb).abs().max() / ya.abs().max().clamp_min(1e-12)))
        return diff

    def width_of(self, model: nn.Module, pixels: int) -> float:
        """Kept fraction of channels over the original prunable groups still present."""
        graph = trace(model, self._input(pixels))
        kept = total = 0
        for g in planners.select_groups(graph):
            if g.name in self.groups0:
                kept += g.size
                total += self.groups0[g.name]
        return kept / total if total else 1.0

    @torch.no_grad()
    def evaluate(self, model: nn.Module, pixels: int) -> float:
        """Accuracy (percent) on the evaluation split at `pixels`, over all ranks' shards."""
        model.to(self.device).eval()
        correct = total = 0
        with at_resolution(self.task.data, pixels):
            for x, y in _loader(self.task.data, self.eval_split):
                pred = model(x.to(self.device)).argmax(dim=1).cpu()
                correct += int((pred == y.cpu()).sum())
                total += len(y)
        model.cpu()
        sums = D.all_gather_object((correct, total))
        return 100.0 * sum(c for c, _ in sums) / max(1, sum(t for _, t in sums))

    def shape_of(self, model: nn.Module, pixels: int) -> tuple[float, float, float, int]:
        """(d, w, r, removable blocks kept) of a pruned model fed `pixels`-sized inputs."""
        kept = len(self.removable(model))
        d = kept / len(self.blocks0) if self.blocks0 else 1.0
        return d, self.width_of(model, pixels), pixels / self.r0, kept

    def flops(self, model: nn.Module, pixels: int) -> int:
        return count(model, self._input(pixels)).flops

    def point(
        self, model: nn.Module, dim: str, rnd: int, pixels: int, acc: float, **extra: Any
    ) -> Point:
        cost = count(model, self._input(pixels))
        d, w, r, kept = self.shape_of(model, pixels)
        return Point(d, w, r, acc, dim, rnd, pixels, cost.flops, cost.params, kept, **extra)

    # ------------------------------------------------------------ depth (DBP)
    def dbp(self, model: nn.Module, blocks: Sequence[str]) -> dict[str, float]:
        """DBP importance of `blocks` from probes on two halves of the probe split."""
        loader = _loader(self.task.data, self.opts.probe_split)
        if loader is None:
            loader = self.task.data.train
        if self.opts.probe_order == "random":
            # the hold-out split is sorted by class: its halves would hold different classes
            loader = in_random_order(loader, seed=self.task.seed)
        batches = []
        for i, (x, y) in enumerate(loader):
            if i >= self.opts.probe_batches:
                break
            batches.append((x.cpu(), y.cpu()))
        if len(batches) == 1:  # e.g. a small split sharded over ranks: halve the batch
            x, y = batches[0]
            h = len(y) // 2
            batches = [(x[:h], y[:h]), (x[h:], y[h:])]
        if not batches or len(batches[0][1]) == 0:
            raise ConfigError("DBP needs probe images: raise probe_batches or use another split")
        half = len(batches) // 2
        gains = dbp_importance(model.to(self.device), list(blocks), batches[:half],
                               batches[half:], self.task.data.num_classes)  # fmt: skip
        model.cpu()
        every = D.all_gather_object(gains)  # ranks probe different shards: average
        return {b: sum(g[b] for g in every) / len(every) for b in blocks}

    def prune_depth(self, model: nn.Module, keep: int) -> tuple[nn.Module, dict[str, float]]:
        """Remove the least important blocks by DBP until `keep` original blocks remain."""
        present = self.removable(model)
        if keep >= len(present):
            return model, {}
        scores = self.dbp(model, present)
        order = self.removal_order(present, scores)
        return self.remove(model, order[: len(present) - keep]), scores

    # -------------------------------------------------------- width (BN scale)
    def width_planner(
        self, model: nn.Module, pixels: int, round_to: int = 1
    ) -> Callable[[float], Plan]:
        """keep -> plan keeping `keep` of each group's ORIGINAL channels, best BN scales first.

        The same fraction in every group, channels compared only within their
        group; tracing and scoring happen once, so searching `keep` is cheap.
        """
        graph = trace(model, self._input(pixels))
        groups = planners.select_groups(graph)
        scores = planners.score_groups(model, groups, "bn_scale")

        def plan_at(keep: float) -> Plan:
            counts = {
                g.index: round_keep(keep * self.groups0.get(g.name, g.size), g.size, round_to)
                for g in groups
            }
            return planners.plan_from_counts(graph, scores, counts)

        return plan_at

    # -------------------------------------------------------------- fine-tune
    def finetune(
        self, model: nn.Module, pixels: int, epochs: int, subdir: str | None, **changes: Any
    ) -> tuple[nn.Module, list[dict[str, Any]], dict[str, Any]]:
        """Fine-tune at input size `pixels` (training and the trainer's evaluation)."""
        with at_resolution(self.task.data, pixels):
            return fit(self.task, model, subdir, epochs=epochs, **changes)

    # --------------------------------------------------------- data collection
    def _cached(self, name: str) -> tuple[Point, nn.Module | None] | None:
        if self.cache is None:
            return None
        path = self.cache / f"{name}.json"
        record = json.loads(path.read_text()) if self.dist.is_main and path.exists() else None
        record = D.broadcast_object(record)  # every rank takes the same branch
        if record is None:
            return None
        if record.get("settings") != json.loads(json.dumps(self.settings())):
            raise ConfigError(
                f"{self.cache} holds points collected with other settings "
                f"({record.get('settings')}); use another collect_dir"
            )
        model_file = self.cache / f"{name}.pt"
        model = load(model_file, trust_pickle=True) if model_file.exists() else None
        return Point(**record["point"]), model

    def _store(self, name: str, p: Point, model: nn.Module | None) -> None:
        if self.cache is None:
            return
        if self.dist.is_main:  # the model first: a point's json means its model is there
            if model is not None:
                save(model, self.cache / f"{name}.pt", meta={"dwr_point": asdict(p)})
            record = {"point": asdict(p), "settings": self.settings()}
            atomic_write_text(self.cache / f"{name}.json", json.dumps(record, indent=1))
        D.barrier()

    def origin(self) -> Point:
        """The unpruned model's point (1, 1, 1).

        `origin: checkpoint` (the paper) evaluates the trained model as it is.
        `origin: retrained` (the default) first gives it the same fine-tuning round as
        every collected point: the trained model's accuracy on the hold-out split (part
        of the data it was trained on) sits above what any fine-tuned model reaches
        there (93.7 against 90.9 after one round on ResNet-20), and a separable model
        fitted through that outlier charges a steep first step to every dimension, so
        it avoids mixing them (bench/results/dwr.md, RESULTS §6).
        """
        o = self.opts
        name = "origin" if o.origin == "checkpoint" else "origin_retrained"
        cached = self._cached(name)
        if cached is not None:
            return cached[0]
        if o.origin == "checkpoint":
            p = self.point(self.model0, "origin", 0, self.r0, self.evaluate(self.model0, self.r0))
        else:
            _, p = self.collection_round(copy.deepcopy(self.model0), self.r0, name, "origin", 0,
                                         time.perf_counter())  # fmt: skip
        self._store(name, p, None)
        return p

    def schedule(self, dim: str) -> list[int]:
        """Blocks kept (depth), or pixels (resolution), or 0 for width, per round."""
        o = self.opts
        lo = self.lowest(dim)
        values = [1.0 - n * (1.0 - lo) / o.rounds for n in range(1, o.rounds + 1)]
        if dim == "width":
            return [0] * o.rounds
        full = len(self.blocks0) if dim == "depth" else self.r0
        out, prev = [], full
        for v in values:
            n = min(prev - 1, round(v * full))  # every round removes something
            if n < (0 if dim == "depth" else 1):
                break
            out.append(n)
            prev = n
        return out

    def dimension(self, dim: str) -> list[Point]:
        """Algorithm 1 along one dimension: prune a little more, fine-tune, record, repeat."""
        if dim not in DIMS:
            raise ConfigError(f"unknown dimension {dim!r}; choose from {DIMS}")
        if dim == "depth" and not self.blocks0:
            raise ConfigError(_NO_BLOCKS)
        o = self.opts
        # A copy: the trainer trains in place, and resolution rounds prune nothing first,
        # so the trained model itself would be fine-tuned (and reused by every later step).
        model, pixels = copy.deepcopy(self.model0), self.r0
        points = []
        for n, step in enumerate(self.schedule(dim), start=1):
            name = f"{dim}_{n}"
            cached = self._cached(name)
            if cached is not None and cached[1] is not None:
                p, model = cached
                pixels = p.pixels
                points.append(p)
                continue
            t0 = time.perf_counter()
            if dim == "depth":
                model, _ = self.prune_depth(model, step)
            elif dim == "width":
                keep = 1.0 - n * (1.0 - self.lowest("width")) / o.rounds
                model = prune(model, self.width_planner(model, pixels)(keep))
            else:
                pixels = step
            model, p = self.collection_round(model, pixels, name, dim, n, t0)
            self._store(name, p, model)
            points.append(p)
        return points

    def collection_round(
        self, model: nn.Module, pixels: int, name: str, dim: str, n: int, started: float
    ) -> tuple[nn.Module, Point]:
        """Fine-tune one round's (already pruned) model and measure its point."""
        o = self.opts
        self.say(f"{name}: fine-tuning {o.round_epochs} epoch(s) at {pixels} px")
        changes = {} if o.round_lr is None else {"lr": o.round_lr}
        if o.round_steps is not None:
            changes["steps_per_epoch"] = o.round_steps
        model, _, final = self.finetune(model, pixels, o.round_epochs, f"collect/{name}",
                                        **changes)  # fmt: skip
        model.prunelab_input_size = (self.channels, pixels, pixels)
        acc = self.evaluate(model, pixels)
        p = self.point(model, dim, n, pixels, acc, test_top1=final.get("top1"),
                       epochs=o.round_epochs, seconds=time.perf_counter() - started)  # fmt: skip
        self.say(f"{name}: d={p.d:.3f} w={p.w:.3f} r={p.r:.3f} acc={acc:.2f}")
        return model, p

    def collect(self, dims: Sequence[str]) -> list[Point]:
        """The origin plus every round of every dimension in `dims`."""
        return [self.origin()] + [p for dim in dims for p in self.dimension(dim)]

    # --------------------------------------------------------- final pruning
    def depth_order(self) -> tuple[list[str], dict[str, float]]:
        """Removable blocks, least important first (DBP on the trained model), and their gains."""
        if self._order is None:
            scores = self.dbp(self.model0, self.blocks0)
            order = self.removal_order(self.blocks0, scores)
            self._order = (order, scores)
        return self._order

    def depth_model(self, kept: int) -> nn.Module:
        """The trained model with all but `kept` removable blocks removed, in DBP order."""
        n = len(self.blocks0)
        if kept >= n:
            return self.model0
        return self.remove(self.model0, self.depth_order()[0][: n - kept])

    # ------------------------------------------------------------ cost model
    def realisations(
        self, kept: int, pixels: int, keeps: Sequence[float], models: bool = False
    ) -> list[tuple[Any, ...]]:
        """(d, w, r, FLOPs fraction) of the models `build` makes with `kept` blocks at `pixels`.

        One row per width keep; w is the kept channel fraction after rounding,
        as `width_of` measures it, and the cost is the engine's exact count.
        `models=True` appends each realised model to its row (to be timed).
        """
        n = len(self.blocks0)
        base = self.depth_model(kept)
        plan_at = self.width_planner(base, pixels, self.opts.round_to)
        rows = []
        for keep in keeps:
            plan = plan_at(keep)
            present = [g for g in planners.select_groups(plan.graph) if g.name in self.groups0]
            total = sum(self.groups0[g.name] for g in present)
            w = sum(plan.kept(g.index) for g in present) / total if total else 1.0
            cost = plan_cost(plan).flops / self.base.flops
            row = (kept / n if n else 1.0, w, pixels / self.r0, cost)
            rows.append((*row, prune(base, plan)) if models else row)
        return rows

    def cost_model(self) -> CostModel:
        """C(d, w, r) fitted to exact counts on a grid of realisations (once per task).

        Under a latency target, fitted to timings instead (`dwr_latency`).
        """
        if self._cost is None and self.task.metric == "latency":
            self._cost = latency_cost(self)
        if self._cost is None:
            n, dims = len(self.blocks0), self.dims
            levels = np.linspace(0, 1, 7)
            depths = sorted({round(v * n) for v in levels}) if "depth" in dims else [n]
            keeps = list(np.linspace(0.4, 1.0, 6)) if "width" in dims else [1.0]
            sides = np.linspace(0.5, 1.0, 5) if "resolution" in dims else [1.0]
            pixels = sorted({max(1, round(v * self.r0)) for v in sides})
            rows = np.array([row for k in depths for p in pixels
                             for row in self.realisations(k, p, keeps)])  # fmt: skip
            # s(r) from the smallest sampled side up (tiny inputs may not fit the network).
            every = range(pixels[0], self.r0 + 1)
            scale = [self.flops(self.model0, p) / self.base.flops for p in every]
            self._cost = fit_cost(rows[:, :3], rows[:, 3], np.array(every) / self.r0,
                                  np.array(scale))  # fmt: skip
        return self._cost

    def lowest(self, dim: str) -> float:
        """Where data collection stops along `dim`: the value at which it alone costs T.

        d = T and w = r = sqrt(T) under the paper's cost; under the measured
        cost, solved from the cost model. If the dimension alone cannot reach
        T, collection removes everything it can: every block and channel
        group, or down to the smallest input side the cost model measured
        (a network's cost need not fall as r², e.g. EfficientNet-B0 at 16 of
        32 px still costs 52%: zero pixels would mean no resolution point).
        """
        T = self.task.target
        if self.opts.cost == "paper":
            return T if dim == "depth" else math.sqrt(T)
        j = DIMS.index(dim)
        cost = self.cost_model()
        pts, ok = solve_dimension(cost, np.ones((1, 3)), j, T, 0.0)
        if ok[0]:
            return float(pts[0, j])
        return float(cost.sides[0]) if dim == "resolution" else 0.0

    def _closest_pixels(self, model: nn.Module, goal: float) -> int:
        """Side length whose cost is closest to `goal` (cost grows with pixels)."""
        lo, hi = 1, self.r0
        if self.flops(model, hi) <= goal:
            return hi
        while hi - lo > 1:  # cost(lo) <= goal < cost(hi), or lo = 1
            mid = (lo + hi) // 2
            if self.flops(model, mid) <= goal:
                lo = mid
            else:
                hi = mid
        return min((lo, hi), key=lambda p: abs(self.flops(model, p) - goal))

    def _fit_width(self, model: nn.Module, pixels: int, goal: float) -> tuple[Plan, float]:
        """The same kept fraction in every group (BN scale within a group) meeting `goal`."""
        o = self.opts
        plan_at = self.width_planner(model, pixels, o.round_to)
        full = plan_at(1.0)
        if plan_cost(full).flops <= goal:
            return full, 1.0

        def cost(keep: float) -> tuple[Plan, int]:
            plan = plan_at(keep)
            return plan, plan_cost(plan).flops

        lo, hi = 0.0, 1.0
        for _ in range(30):
            mid = (lo + hi) / 2
            if mid > 0 and cost(mid)[1] <= goal:
                lo = mid
            else:
                hi = mid
        options = [(k, *cost(k)) for k in (lo, hi) if k > 0]
        keep, plan, flops = min(options, key=lambda t: abs(t[2] - goal))
        if abs(flops - goal) <= o.tolerance * goal:
            return plan, keep
        # Rounding leaves a gap: let the engine nudge single groups by one step.
        graph = plan.graph
        with contextlib.suppress(InfeasibleBudgetError):  # else keep the closest; reported
            plan = planners.for_cost(
                model, graph, goal / base_cost(graph).flops, criterion="bn_scale",
                round_to=o.round_to, tolerance=o.tolerance,
            )  # fmt: skip
        return plan, keep

    def build(
        self, point: tuple[float, float, float], dims: Sequence[str]
    ) -> tuple[nn.Module, int, dict[str, Any]]:
        """Prune the trained model to about `point`, meeting the budget with the engine's count.

        Depth and resolution come from the point; the width that meets
        T x baseline FLOPs at that resolution is then searched. Without width,
        resolution (or, alone, depth) absorbs the difference instead.
        """
        d, _, r = point
        goal = self.task.target * self.base.flops
        n = len(self.blocks0)
        details: dict[str, Any] = {}
        order: list[str] = []
        if "depth" in dims:
            order, scores = self.depth_order()
            details["dbp_gain"] = scores
        depth_model = self.depth_model

        kept = min(n, max(0, round(d * n))) if "depth" in dims else n
        pixels = min(self.r0, max(1, round(r * self.r0))) if "resolution" in dims else self.r0
        if dims == ["depth"]:
            kept = min(range(n + 1), key=lambda k: abs(self.flops(depth_model(k), self.r0) - goal))
        model = depth = depth_model(kept)
        plan = None
        if "width" in dims:
            if "resolution" in dims:  # depth and resolution alone already too cheap: widen r
                while pixels < self.r0 and self.flops(model, pixels) < goal * (
                    1 - self.opts.tolerance
                ):
                    pixels += 1
            plan, keep = self._fit_width(model, pixels, goal)
            details["width_keep"] = keep
            model = prune(model, plan)
        elif "resolution" in dims:
            pixels = self._closest_pixels(model, goal)
        details["removed_blocks"] = order[: n - kept]
        details["masked_vs_pruned_max_diff"] = self.masked_vs_pruned(
            details["removed_blocks"], depth, plan, model, pixels
        )
        model.prunelab_input_size = (self.channels, pixels, pixels)
        return model, pixels, details


_NO_BLOCKS = (
    "the model has no removable depth units (a residual block whose output is x + f(x) with "
    "an identity shortcut, or a dense layer whose output is cat([x, f(x)])); prune without "
    "'depth' in dims"
)


@register_method
class DWR(Method):
    name = "dwr"
    summary = (
        "depth, width and resolution chosen together: data collection, polynomial accuracy "
        "model, constrained optimum, DBP + BN-scale + resize, fine-tune"
    )

    metrics = ("flops", "latency")  # latency: an extension, see dwr_latency

    @dataclass
    class Options:
        # Dimensions to prune; one alone is the single-dimension baseline (no model fitted).
        dims: list[str] = field(default_factory=lambda: list(DIMS))
        # Data collection rounds per dimension (paper: 4).
        rounds: int = 4
        # Fine-tune epochs after each collection round (paper: 40 CIFAR, 30 ImageNet).
        round_epochs: int = 40
        # Steps per round fine-tune epoch (None: the task's train.steps_per_epoch, full
        # epochs by default). Not in the paper: quick presets on a CPU use short rounds.
        round_steps: int | None = None
        # Learning rate of the round fine-tunes (None: the task's train.lr).
        round_lr: float | None = None
        # Final fine-tune epochs (None: the task's train.epochs; paper: 80 CIFAR, 60 ImageNet).
        final_epochs: int | None = None
        # Accuracy model: polynomial degree K and rank R of the separable form (paper: 3, 1).
        degree: int = 3
        rank: int = 1
        # "separable" (the paper's MAP) or "full" (sum of theta_ijk d^i w^j r^k, ridge).
        model: str = "separable"
        # Relative ridge of the fits (keeps high degrees determined on few points).
        ridge: float = 1e-6
        # Split the collected points' accuracy is measured on ("holdout" falls back to "test").
        eval_split: str = "holdout"
        # DBP: batches of `probe_split` for the linear probes (half fit, half scored).
        probe_batches: int = 40
        probe_split: str = "holdout"
        # "random": the probe batches drawn in a fixed random order, so both halves hold every
        # class; "split": the split's own order (sorted by class for image folders; the
        # behaviour before 2026-12-03, which fitted probes on half the classes)
        probe_order: str = "random"
        # Kept-channel multiple of the final width step (1 = exact ratio, as the paper);
        # "auto": the multiple the latency table of `task.latency` measured fastest, under
        # any metric (info["round_to"] records it).
        round_to: int | str = 1
        # The final model's FLOPs must be within this relative distance of the target.
        tolerance: float = 0.03
        # Cost constraint: "measured" (fitted to the engine's counts, dwr_cost) or
        # "paper" (d * w^2 * r^2 = T, which ignores the layers depth does not remove).
        cost: str = "measured"
        # Grid points per variable of the maximiser's check grid.
        grid: int = 401
        # The origin point: "retrained" (one collection round of fine-tuning at full size,
        # like every other point) or "checkpoint" (the trained model as is, the paper).
        origin: str = "retrained"
        # Cache of collected points and models (None: <run_dir>/collect, or no cache).
        collect_dir: str | None = None

        def __post_init__(self) -> None:
            check_round_to(self.round_to)

    def check(self, task: PruneTask) -> None:
        task.require_metric(self.name, *self.metrics)

    def _check(self, task: PruneTask) -> list[str]:
        o = self.options
        dims = [d for d in DIMS if d in o.dims]
        if not dims or len(dims) != len(o.dims):
            raise ConfigError(f"dims must be distinct names from {DIMS}, got {o.dims}")
        self.check(task)
        if not 0 < task.target <= 1:
            raise InfeasibleBudgetError(f"target must be in (0, 1], got {task.target}")
        if o.rounds < 1 or o.round_epochs < 0 or o.degree < 1 or o.rank < 1:
            raise ConfigError("rounds, degree and rank must be >= 1, round_epochs >= 0")
        if o.round_steps is not None and o.round_steps < 1:
            raise ConfigError("round_steps must be >= 1 (or null for full epochs)")
        if o.model not in ("separable", "full"):
            raise ConfigError(f"model must be 'separable' or 'full', got {o.model!r}")
        if o.origin not in ("retrained", "checkpoint"):
            raise ConfigError(f"origin must be 'retrained' or 'checkpoint', got {o.origin!r}")
        if o.cost not in ("measured", "paper"):
            raise ConfigError(f"cost must be 'measured' or 'paper', got {o.cost!r}")
        if o.cost == "paper" and task.metric == "latency":
            raise ConfigError("cost: paper (d * w^2 * r^2 = T) is a FLOPs model; with "
                              "metric=latency use cost: measured")  # fmt: skip
        if o.tolerance <= 0:
            raise ConfigError(f"tolerance must be > 0, got {o.tolerance}")
        if o.probe_order not in ("random", "split"):
            raise ConfigError(f"probe_order must be 'random' or 'split', got {o.probe_order!r}")
        return dims

    def fit_model(self, x: np.ndarray, y: np.ndarray) -> SeparablePolynomial | FullPolynomial:
        """The configured accuracy model fitted to points x (n, 3) and accuracies y."""
        o = self.options
        if o.model == "full":
            return fit_full(x, y, o.degree, ridge=max(o.ridge, 1e-4))
        return fit_separable(x, y, o.degree, o.rank, ridge=o.ridge, seed=0)

    def training_epochs(self, train: TrainConfig) -> float:
        """The final fine-tune; the collection rounds are search (reported on their own)."""
        o = self.options
        return float(train.epochs if o.final_epochs is None else o.final_epochs)

    def _maximize(
        self, col: Collector, model_fn: Any, x: np.ndarray, target: float, dims: list[str]
    ) -> Any:
        """The accuracy model's best (d, w, r) under the configured cost constraint."""
        if self.options.cost == "paper":
            return maximize(model_fn, target, dims, self.options.grid)
        # Within the collected range: the polynomial is not trusted beyond its data.
        lower = [float(x[:, j].min()) for j in range(3)]
        return maximize_under_cost(model_fn, col.cost_model(), target, dims, lower,
                                   min(self.options.grid, 201))  # fmt: skip

    def run(self, task: PruneTask) -> PruneResult:
        o = self.options
        dims = self._check(task)
        col = Collector(task, o)
        if "depth" in dims and not col.blocks0:
            raise ConfigError(_NO_BLOCKS)
        info: dict[str, Any] = {"dims": dims, "eval_split": col.eval_split,
                                "removable_blocks": col.blocks0,
                                "round_to": col.opts.round_to}  # fmt: skip
        t0 = time.perf_counter()
        if len(dims) > 1:
            points = col.collect(dims)
            info["points"] = [asdict(p) for p in points]
            info["collection"] = _collection_cost(points)
            x = np.array([p.xyz for p in points])
            y = np.array([p.accuracy / 100.0 for p in points])  # fit accuracy fractions
            model_fn = self.fit_model(x, y)
            info["accuracy_model"] = {
                **model_fn.to_dict(),
                "train_rmse": rmse(model_fn, x, y),
                "loo_rmse": float(np.sqrt(np.mean(leave_one_out(self.fit_model, x, y) ** 2))),
            }
            optimum = self._maximize(col, model_fn, x, task.target, dims)
            info["optimum"] = optimum.to_dict()
            if o.cost == "measured":
                info["cost_model"] = col.cost_model().to_dict()
                info["optimum"]["cost"] = float(col.cost_model()(optimum.point)[0])
            else:
                d, w, r = optimum.point
                info["optimum"]["cost"] = d * w**2 * r**2
            info["collection_ends"] = {dim: col.lowest(dim) for dim in dims}
            target_point = optimum.point
        elif task.metric == "latency":  # the one dimension alone at the target, by C
            j = DIMS.index(dims[0])
            solved, _ = solve_dimension(col.cost_model(), np.ones((1, 3)), j, task.target, 0.0)
            target_point = tuple(float(v) for v in solved[0])
        else:
            exps = {"depth": 1.0, "width": 2.0, "resolution": 2.0}
            target_point = tuple(task.target ** (1 / exps[d]) if d in dims else 1.0 for d in DIMS)  # type: ignore[assignment]
        col.say(f"target point d={target_point[0]:.3f} w={target_point[1]:.3f} "
                f"r={target_point[2]:.3f}")  # fmt: skip
        if task.metric == "latency":
            model, pixels, details = build_for_latency(col, target_point, dims)
        else:
            model, pixels, details = col.build(target_point, dims)
        flops = col.flops(model, pixels)
        achieved = flops / col.base.flops
        within = abs(achieved - task.target) <= o.tolerance * task.target
        if task.metric == "latency":
            achieved, within = details["latency"]["measured"], details["latency"]["met"]
        if not within:
            col.say(f"warning: final cost {achieved:.3f} of baseline {task.metric} is not "
                    f"within tolerance of the target {task.target} (blocks and pixels "
                    "are discrete)")  # fmt: skip
        final_epochs = task.train.epochs if o.final_epochs is None else o.final_epochs
        col.say(f"final fine-tune: {final_epochs} epoch(s) at {pixels} px, "
                f"{achieved:.3f} of baseline {task.metric}")  # fmt: skip
        model, history, final = col.finetune(model, pixels, final_epochs, "finetune")
        model.prunelab_input_size = (col.channels, pixels, pixels)
        model.prunelab_resolution = pixels  # chosen here: the command line resizes inputs to it
        d, w, r, kept = col.shape_of(model, pixels)
        params = sum(p.numel() for p in model.parameters())
        info.update({
            "chosen": {"d": d, "w": w, "r": r, "pixels": pixels, "blocks_kept": kept},
            "target_point": list(target_point),
            "achieved_flops": flops / col.base.flops,
            **({"achieved_latency": achieved} if task.metric == "latency" else {}),
            "achieved_params": params / col.base.params,
            "within_tolerance": within,
            "finetune": final,
            "final_epochs": final_epochs,
            "search_seconds": info.get("collection", {}).get("seconds", 0.0),
            "seconds": time.perf_counter() - t0,
            **details,
        })  # fmt: skip
        return PruneResult(model, history, info)


def _collection_cost(points: Sequence[Point]) -> dict[str, Any]:
    rounds = [p for p in points if p.epochs > 0]  # a retrained origin is a round too
    return {
        "models_finetuned": len(rounds),
        "epochs": sum(p.epochs for p in rounds),
        "seconds": sum(p.seconds for p in rounds),
    }
