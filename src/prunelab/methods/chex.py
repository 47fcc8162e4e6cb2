"""CHEX: channel exploration (Hou et al., CVPR 2022), a prune-and-regrow training callback.

One training run gives a compact model. Soft masks (`ChannelMask`) hold the
current sub-model; every `interval` epochs (or steps) up to T_max:

1. re-allocate the channel budget: pool |gamma| of the batch norms after the
   pruned convs network-wide; a layer keeps its channels above the global
   kappa-quantile, with kappa chosen so the kept architecture meets the cost
   target (the budget is FLOPs, users do not think in channel sparsity);
2. prune every layer to its budget by column subset selection (leverage
   scores of the rank-K right singular vectors of its weight matrix, or,
   where that matrix is wider than tall, of the channels' feature maps on a
   batch of training images: `css_source`, see `chex_features`);
3. regrow a cosine-decaying fraction delta_t of channels, sampled by their
   orthogonality to the kept ones (in the same matrices; feature maps of
   pruned channels computed with their remembered weights), each restored to the weights it had when
   it was last pruned (filters, consumer columns, BN gamma/beta and running
   statistics) with its optimizer momentum reset to zero.

After T_max (delta = 0 there) the mask is frozen; after training the model is
physically pruned and checked to compute exactly what the masked model did.
The maths lives in `chex_selection.py`.

The budget may be FLOPs, params or latency (`metric=latency`, an extension:
the paper budgets FLOPs). Latency is costed by the cached per-layer table
(`prunelab.latency_table`) from each candidate allocation's kept widths,
never by timing candidates; the table's target is aimed by its error on this
machine, measured once before training on the uniform plan at the target
(`methods.latency_budget`). After training the pruned model is timed against
the dense one and `info["latency"]` reports predicted against measured. A
miss cannot be nudged then (the allocation was trained for; changing it
would need more training), so it is reported, not corrected.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from prunelab.criteria import score
from prunelab.errors import ConfigError, InfeasibleBudgetError, PrunelabError
from prunelab.graph import ChannelGraph, ChannelMask, Group, Member, prune, trace
from prunelab.graph.cost import base_cost, cost_of_masks
from prunelab.graph.groups import is_residual
from prunelab.graph.plan import add_survivors, round_keep
from prunelab.graph.selfcheck import tensors_of
from prunelab.latency_table import LatencyTable
from prunelab.methods import chex_features as feat
from prunelab.methods import chex_selection as sel
from prunelab.methods.base import Method, PruneResult, PruneTask, register_method
from prunelab.methods.finetune import batches, fit
from prunelab.methods.latency_budget import LatencyBudget, check_round_to, resolve_round_to
from prunelab.metrics import count
from prunelab.models.detection_core import tensor_program
from prunelab.train import Callback, Trainer
from prunelab.train import distributed as D

Key = tuple[str, str]  # (module, parameter or buffer)
_REGROW = ("sample", "topk", "none")


@dataclass
class ChexOptions:
    """CHEX options; defaults are the paper's ImageNet ResNet-50 recipe where it has one."""

    delta0: float = 0.3  # initial regrowing factor (a channel sparsity): start at kappa - delta0
    interval: int = 2  # Delta T: epochs (or steps, unit="step") between prune-regrow updates
    unit: str = "epoch"  # "epoch", or "step" for long single-epoch schedules
    t_max: float = 0.72  # fraction of training after which the mask is frozen (180 of 250)
    regrow: str = "sample"  # "sample" (softmax of eps), "topk" (largest eps), "none" (gradual)
    temperature: float = 1.0  # softmax temperature of the regrow sampling (reference code: 1)
    shortcuts: bool = False  # also prune residual-coupled groups, with summed layer scores
    kappa: float | None = None  # fixed channel sparsity instead of the cost target
    min_channels: int = 1  # fewest units a pruned group keeps
    # Kept counts rounded to a multiple (8, 16) for fast kernels; 1 = the paper's exact
    # per-layer widths. Not in the paper: with it, the budget search moves in multiples.
    # "auto": the multiple the latency table of `task.latency` measured fastest (under any
    # metric; info["round_to"] records it). ChexCallback needs the resolved whole number.
    round_to: int | str = 1
    init_criterion: str = "l1"  # ranks the initial uniform mask
    # Matrix CSS and the regrow orthogonality read (chex_features): "auto" the weights where
    # they have more rows than channels, else feature maps; "weights" the paper's reference
    # (l1 where the weight matrix is wide); "features"; "stacked" (producer + consumer weights).
    css_source: str = "auto"
    feature_images: int = 64  # latest training images the feature maps are computed on
    feature_rows: int = 4096  # rows kept per consumer (at least 2x the channels)


class WeightMemory:
    """The most recent alive value of every tensor entry the managed groups touch.

    Masked entries are zeroed in the model, so "the weights a channel had when
    it was pruned" must be kept aside: `remember` copies alive entries here
    before the mask changes, `revive` writes them back for entries that come
    alive. Running statistics are included (the mask leaves them to drift).
    """

    def __init__(self, model: nn.Module, graph: ChannelGraph, groups: list[int]) -> None:
        self.model = model
        self.touch: dict[Key, list[tuple[int, Member]]] = {}
        for gi in groups:
            for m in graph.groups[gi].members:
                self.touch.setdefault((m.module, m.param), []).append((gi, m))
        self.shadow = {k: self.tensor(k).detach().clone() for k in self.touch}

    def tensor(self, key: Key) -> torch.Tensor:
        return getattr(self.model.get_submodule(key[0]), key[1])

    def alive(self, key: Key, masks: dict[int, torch.Tensor]) -> torch.Tensor:
        """Bool tensor of `key`'s shape: entries no masked unit touches."""
        t = self.tensor(key)
        out = torch.ones(t.shape, dtype=torch.bool, device=t.device)
        for gi, m in self.touch[key]:
            vec = torch.ones(t.shape[m.dim], dtype=torch.bool)
            vec[m.positions] = masks[gi][m.units]
            shape = [1] * t.dim()
            shape[m.dim] = -1
            out &= vec.to(t.device).view(shape)
        return out

    @torch.no_grad()
    def remember(self, masks: dict[int, torch.Tensor]) -> None:
        for key, shadow in self.shadow.items():
            shadow.copy_(torch.where(self.alive(key, masks), self.tensor(key).detach(), shadow))

    @contextlib.contextmanager
    def revived(self) -> Iterator[None]:
        """Within the block every touched tensor holds its remembered values (all units alive)."""
        saved = {k: self.tensor(k).detach().clone() for k in self.shadow}
        try:
            with torch.no_grad():
                for k, v in self.shadow.items():
                    self.tensor(k).copy_(v)
            yield
        finally:
            with torch.no_grad():
                for k, v in saved.items():
                    self.tensor(k).copy_(v)

    @torch.no_grad()
    def revive(
        self,
        old: dict[int, torch.Tensor],
        new: dict[int, torch.Tensor],
        optimizer: torch.optim.Optimizer | None,
    ) -> None:
        """Restore entries dead under `old` and alive under `new`; zero their optimizer state.

        Momentum of every entry whose status changed is reset, so a regrown
        channel restarts from its weights, not from a stale update direction.
        """
        for key, shadow in self.shadow.items():
            before, after = self.alive(key, old), self.alive(key, new)
            revived = after & ~before
            t = self.tensor(key)
            t.copy_(torch.where(revived, shadow, t))
            state = optimizer.state.get(t) if optimizer is not None else None
            for v in (state or {}).values():
                if isinstance(v, torch.Tensor) and v.shape == t.shape:
                    v.masked_fill_(before ^ after, 0)


class ChexCallback(Callback):
    """The prune-regrow schedule on the shared Trainer (see the module docstring)."""

    def __init__(
        self,
        graph: ChannelGraph,
        target: float,
        metric: str,
        options: ChexOptions,
        seed: int = 0,
        table: LatencyTable | None = None,
    ) -> None:
        """`table`: the latency table that costs allocations when `metric` is "latency"."""
        if metric == "latency" and table is None:
            raise ConfigError("chex: a latency budget needs the model's latency table")
        if not isinstance(options.round_to, int):  # Chex.run resolves "auto" first
            raise ConfigError(f"ChexCallback needs a whole round_to, got {options.round_to!r}")
        self.graph, self.target, self.metric, self.opts, self.seed = (
            graph, target, metric, options, seed)  # fmt: skip
        self.table = table
        self.base = base_cost(graph)
        self.dense_ms = table.dense_ms(graph) if table is not None else 0.0
        self.mask: ChannelMask | None = None
        self.memory: WeightMemory | None = None
        self.groups: list[int] = []
        self.left_whole: dict[str, str] = {}
        self.times: list[int] = []
        self._times: set[int] = set()
        self.t_max = 0
        self.done: list[int] = []
        self.timeline: list[dict[str, Any]] = []
        self.kappa = 0.0
        self.alive_flops = 1.0
        self.flops_images = 0.0
        self.images = 0.0
        self.update_seconds = 0.0
        self._epoch_update_s = 0.0
        self.ever_alive: dict[int, torch.Tensor] = {}  # units alive at some point
        self.images_for_features: torch.Tensor | None = None  # from the latest batch
        self.css_used: dict[str, str] = {}  # group -> matrix source of the latest update

    # -------------------------------------------------------------- set-up
    def _choose_groups(self, model: nn.Module) -> None:
        self.groups, self.left_whole = [], {}
        for g in self.graph.prunable:
            if not g.members_of("norm", "weight"):
                self.left_whole[g.name] = "no batch-norm scale to allocate by"
            elif not self.opts.shortcuts and is_residual(self.graph, g):
                self.left_whole[g.name] = "residual shortcut (shortcuts=False)"
            else:
                self.groups.append(g.index)
        if not self.groups:
            raise InfeasibleBudgetError("chex: the model has no prunable group with a batch norm")

    def on_train_start(self, trainer: Trainer) -> None:
        model = trainer.model
        self._choose_groups(model)
        steps = trainer.steps_per_epoch * trainer.config.epochs
        horizon = trainer.config.epochs if self.opts.unit == "epoch" else steps
        self.t_max = max(1, round(self.opts.t_max * horizon))
        self.times = sel.update_times(self.opts.interval, self.t_max)
        self._times = set(self.times)
        self.mask = ChannelMask(model, self.graph, self.groups)
        self.memory = WeightMemory(model, self.graph, self.groups)
        keep = self._initial_keep_fraction()
        new = {}
        for gi in self.groups:
            g = self.graph.groups[gi]
            s = score(self.opts.init_criterion, model, g)
            n = self._rounded(keep * g.size, g.size)
            new[gi] = self._mask_of(g, self._top(s, torch.arange(g.size), n), s)
        self._set_masks(new, trainer)
        self._record(0, trainer, self.opts.delta0, None, None)

    def _initial_keep_fraction(self) -> float:
        """Kept fraction 1 - (kappa - delta0), kappa the uniform sparsity meeting the target."""
        if self.opts.kappa is not None:
            self.kappa = self.opts.kappa
            return min(1.0, 1.0 - self.opts.kappa + self.opts.delta0)
        sizes = {gi: self.graph.groups[gi].size for gi in self.groups}

        def cost(frac: float) -> float:
            masks = {}
            for gi, size in sizes.items():
                m = torch.zeros(size, dtype=torch.bool)
                m[: self._rounded(frac * size, size)] = True
                masks[gi] = m
            return self._cost(masks)

        if cost(0.0) > self.target * 1.01:
            raise InfeasibleBudgetError(
                f"chex: cannot reach {self.target:.1%} of the {self.metric}: the smallest "
                f"architecture costs {cost(0.0):.1%}"
                + ("" if self.opts.shortcuts else " (residual shortcuts are left whole)")
            )
        lo, hi = 0.0, 1.0
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if cost(mid) <= self.target else (lo, mid)
        self.kappa = 1.0 - lo  # the uniform channel sparsity that meets the target
        return min(1.0, lo + self.opts.delta0)

    # ------------------------------------------------------------- hooks
    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self._epoch_update_s = 0.0
        if self.opts.unit == "epoch":
            self._maybe_update(trainer, epoch)

    def on_step_start(self, trainer: Trainer, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        if self.opts.css_source != "weights":  # the latest `feature_images` training images
            recent = batch[0].detach()
            if self.images_for_features is not None and len(recent) < self.opts.feature_images:
                recent = torch.cat([recent, self.images_for_features.to(recent.device)])
            self.images_for_features = recent[: self.opts.feature_images]
        if self.opts.unit == "step":
            self._maybe_update(trainer, trainer.global_step)
        n = batch[0].shape[0] * trainer.dist.world_size
        self.flops_images += self.alive_flops * n
        self.images += n

    def after_backward(self, trainer: Trainer) -> None:
        assert self.mask is not None
        self.mask.mask_grads()

    def on_step_end(self, trainer: Trainer) -> None:
        assert self.mask is not None
        self.mask.apply()

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        assert self.mask is not None
        trainer.log(
            chex_alive={self.graph.groups[g].name: self.mask.alive(g) for g in self.groups},
            chex_flops=self.alive_flops,
            chex_kappa=self.kappa,
            chex_update_s=self._epoch_update_s,
        )

    def on_train_end(self, trainer: Trainer) -> None:
        # T_max at the very end of training: the final update still freezes the target mask.
        if self.times and self.times[-1] not in self.done:
            self._update(trainer, self.times[-1])

    # ------------------------------------------------------------ updates
    def _maybe_update(self, trainer: Trainer, t: int) -> None:
        if t in self._times and t not in self.done:
            self._update(trainer, t)

    def _update(self, trainer: Trainer, t: int) -> None:
        assert self.mask is not None and self.memory is not None
        t0 = time.perf_counter()
        self.memory.remember(self.mask.masks)
        delta = sel.delta_at(t, self.t_max, self.opts.delta0)
        alloc, cost_of = self._allocation()
        total, step = alloc.total, self._steps(alloc.sizes)

        def counts(n: int) -> torch.Tensor:
            return self._rounded_counts(alloc.counts(n), alloc.sizes)
        if self.opts.kappa is not None:
            n_prune = round(self.opts.kappa * total)
        else:
            n_prune = sel.smallest_within(lambda n: cost_of(counts(n)), total, self.target)
            if n_prune > total:
                raise InfeasibleBudgetError(
                    f"chex: {self.target:.1%} of the {self.metric} is below the smallest allocation"
                )
        self.kappa = n_prune / total
        keep_counts = counts(n_prune)
        if self.opts.kappa is None:  # land within 1% of the target, not just under it
            keep_counts = sel.refine_counts(
                keep_counts, alloc.order[:n_prune].flip(0), alloc.sizes, cost_of, self.target,
                step=step,
            )
        alive_counts = torch.maximum(counts(max(0, n_prune - round(delta * total))), keep_counts)
        if self.opts.regrow == "none":  # gradual pruning: the same cost path, nothing returns
            alive = torch.tensor([self.mask.alive(g) for g in self.groups])
            goal = cost_of(alive_counts)

            def capped(n: int) -> torch.Tensor:
                return torch.minimum(counts(n), alive)

            n_cut = min(total, sel.smallest_within(lambda n: cost_of(capped(n)), total, goal))
            keep_counts = alive_counts = sel.refine_counts(
                capped(n_cut), alloc.order[:n_cut].flip(0), alive, cost_of, goal, step=step
            )
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + t)
        sub, revived = self._features(trainer.model, t)
        new = {}
        for i, gi in enumerate(self.groups):
            new[gi] = self._prune_regrow(
                gi, int(keep_counts[i]), int(alive_counts[i]), gen, sub, revived
            )
        new = D.broadcast_object(new)
        self._set_masks(new, trainer)
        self.done.append(t)
        spent = time.perf_counter() - t0
        self.update_seconds += spent
        self._epoch_update_s += spent
        self._record(t, trainer, delta, cost_of(keep_counts), keep_counts.tolist())

    def _features(
        self, model: nn.Module, t: int
    ) -> tuple[feat.Features | None, feat.Features | None]:
        """Consumer inputs on the latest images: of the sub-model, and with every unit revived.

        The sub-model's features score the alive channels (what they compute now);
        the revived model (remembered weights written back for the pruned units)
        gives pruned channels the feature maps they would have when regrown.
        """
        x = self.images_for_features
        assert self.memory is not None
        source, shadow = self.opts.css_source, self.memory.shadow
        need = [
            g for g in (self.graph.groups[gi] for gi in self.groups)
            if source == "features" or (source == "auto" and not all(
                feat.is_tall(m) for _, m in feat.weight_matrices(shadow, g)))
        ]  # fmt: skip
        if x is None or not need:
            return None, None
        names = [n for g in need for n in feat.consumers(g, model)]
        rows = max(self.opts.feature_rows, 2 * max(g.size for g in need))
        seed = self.seed * 1_000_003 + t
        sub = feat.capture_inputs(model, names, x, rows, seed)
        with self.memory.revived():
            revived = feat.capture_inputs(model, names, x, rows, seed)
        return sub, revived

    def _prune_regrow(
        self,
        gi: int,
        n_keep: int,
        n_alive: int,
        gen: torch.Generator,
        sub: feat.Features | None = None,
        revived: feat.Features | None = None,
    ) -> torch.Tensor:
        assert self.mask is not None and self.memory is not None
        g = self.graph.groups[gi]
        alive = torch.nonzero(self.mask.masks[gi]).flatten()
        n_keep = min(n_keep, len(alive))
        shadow = self.memory.shadow
        mats, used = feat.group_matrices(self.opts.css_source, g, shadow, sub)
        self.css_used[g.name] = used
        lev = sel.group_css_scores(mats, g.size, alive, n_keep)
        kept = self._mask_of(g, self._top(lev, alive, n_keep), lev)
        n_regrow = n_alive - int(kept.sum())
        if self.opts.regrow == "none" or n_regrow <= 0:
            return kept
        cand = torch.nonzero(~kept).flatten()
        if used == "features":  # the same consumers, with the pruned channels revived
            mats, _ = feat.group_matrices("features", g, shadow, revived)
        eps = sel.group_orthogonality(mats, g.size, kept, cand)
        pick = sel.sample_regrow(
            eps,
            n_regrow,
            deterministic=self.opts.regrow == "topk",
            temperature=self.opts.temperature,
            generator=gen,
        )
        out = kept.clone()
        out[cand[pick]] = True
        return out

    def _set_masks(self, new: dict[int, torch.Tensor], trainer: Trainer) -> None:
        assert self.mask is not None and self.memory is not None
        old = {g: m.clone() for g, m in self.mask.masks.items()}
        self.mask.update(new)
        self.memory.revive(old, self.mask.masks, getattr(trainer, "optimizer", None))
        self.mask.apply()
        for g, m in self.mask.masks.items():
            self.ever_alive[g] = self.ever_alive.get(g, m) | m
        self.alive_flops = cost_of_masks(self.graph, self.mask.masks).flops / self.base.flops

    # ------------------------------------------------------------ rounding
    def _rounded(self, n: float, size: int) -> int:
        """A kept count: at least `min_channels`, a multiple of `round_to` where it fits."""
        return round_keep(max(self.opts.min_channels, round(n)), size, self.opts.round_to)

    def _rounded_counts(self, counts: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        if self.opts.round_to <= 1:
            return counts
        pairs = zip(counts.tolist(), sizes.tolist(), strict=True)
        return torch.tensor([self._rounded(c, s) for c, s in pairs])

    def _steps(self, sizes: torch.Tensor) -> torch.Tensor:
        """Per layer, how many units one refinement step gives back (a group smaller than
        `round_to` is never rounded, so it moves by one)."""
        r = self.opts.round_to
        return torch.where(sizes >= r, torch.full_like(sizes, max(1, r)), torch.ones_like(sizes))

    # ------------------------------------------------------------ scoring
    def _allocation(self) -> tuple[sel.Allocation, Callable[[torch.Tensor], float]]:
        """Budgets by pooled |gamma|, and their cost.

        A pruned unit counts with the |gamma| it had when last alive, so a layer
        can win channels back; a unit never alive (masked from the start) has
        no trained scale and counts as 0.
        """
        assert self.memory is not None
        gammas = [
            sel.mean_gamma(self.memory.shadow, self.graph.groups[g]) * self.ever_alive[g]
            for g in self.groups
        ]
        alloc = sel.Allocation(gammas, self.opts.min_channels)

        def cost_of(counts: torch.Tensor) -> float:
            return self._cost(dict(zip(self.groups, alloc.masks(counts), strict=True)))

        return alloc, cost_of

    def _cost(self, masks: dict[int, torch.Tensor]) -> float:
        if self.table is not None and self.metric == "latency":
            return self.table.predict(self.graph, masks) / self.dense_ms
        return cost_of_masks(self.graph, masks)[self.metric] / self.base[self.metric]

    def _top(self, scores: torch.Tensor, among: torch.Tensor, n: int) -> torch.Tensor:
        order = torch.argsort(scores[among], descending=True, stable=True)
        return among[order[:n]]

    def _mask_of(self, g: Group, idx: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        idx = add_survivors(self.graph, g, idx, scores)  # never empty a layer of the group
        m = torch.zeros(g.size, dtype=torch.bool)
        m[idx] = True
        return m

    # ------------------------------------------------------------ records
    def _record(
        self, t: int, trainer: Trainer, delta: float, cost: float | None, keep: list[int] | None
    ) -> None:
        """One timeline entry: the budget after pruning (keep, its cost) and the alive counts."""
        assert self.mask is not None
        self.timeline.append({
            "t": t, "epoch": trainer.epoch, "step": trainer.global_step, "delta": delta,
            "kappa": self.kappa, "keep": keep, "pruned_cost": cost,
            "alive": [self.mask.alive(g) for g in self.groups], "alive_flops": self.alive_flops,
        })  # fmt: skip

    def training_flops_ratio(self) -> float:
        """Training FLOPs of the alive sub-models over dense training (forward MACs x images)."""
        return self.flops_images / self.images if self.images else 1.0

    def state_dict(self) -> dict[str, Any]:
        assert self.mask is not None and self.memory is not None
        return {
            "masks": self.mask.state_dict(),
            "ever_alive": {str(g): m.clone() for g, m in self.ever_alive.items()},
            "shadow": {f"{k[0]}|{k[1]}": v.detach().cpu() for k, v in self.memory.shadow.items()},
            "done": list(self.done), "timeline": self.timeline, "kappa": self.kappa,
            "flops_images": self.flops_images, "images": self.images,
            "update_seconds": self.update_seconds,
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.mask is not None and self.memory is not None
        self.mask.load_state_dict(state["masks"])
        self.ever_alive = {int(g): m.bool().clone() for g, m in state["ever_alive"].items()}
        for name, v in state["shadow"].items():
            module, param = name.split("|")
            self.memory.shadow[(module, param)].copy_(v)
        self.done = [int(t) for t in state["done"]]
        self.timeline = list(state["timeline"])
        self.kappa = float(state["kappa"])
        self.flops_images, self.images = float(state["flops_images"]), float(state["images"])
        self.update_seconds = float(state["update_seconds"])
        self.alive_flops = cost_of_masks(self.graph, self.mask.masks).flops / self.base.flops


@register_method
class Chex(Method):
    name = "chex"
    summary = "prune and regrow channels while training; budget re-allocated by BN scales"
    trains_from_scratch = True
    Options = ChexOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        if o.unit not in ("epoch", "step"):
            raise ConfigError(f"chex unit={o.unit!r}: use 'epoch' or 'step'")
        if o.regrow not in _REGROW:
            raise ConfigError(f"chex regrow={o.regrow!r}: use one of {', '.join(_REGROW)}")
        if not 0 <= o.delta0 < 1:
            raise ConfigError(f"chex delta0={o.delta0}: must be in [0, 1)")
        if int(o.interval) != o.interval or o.interval < 1:
            raise ConfigError(f"chex interval={o.interval}: must be a whole number >= 1")
        if not 0 < o.t_max <= 1:
            raise ConfigError(f"chex t_max={o.t_max}: a fraction of training in (0, 1]")
        if o.kappa is not None and not 0 <= o.kappa < 1:
            raise ConfigError(f"chex kappa={o.kappa}: a channel sparsity in [0, 1)")
        if o.temperature <= 0:
            raise ConfigError(f"chex temperature={o.temperature}: must be > 0")
        if o.min_channels < 1:
            raise ConfigError(f"chex min_channels={o.min_channels}: must be >= 1")
        check_round_to(o.round_to)
        if o.css_source not in feat.SOURCES:
            raise ConfigError(
                f"chex css_source={o.css_source!r}: use one of {', '.join(feat.SOURCES)}"
            )
        if o.feature_images < 1 or o.feature_rows < 1:
            raise ConfigError("chex feature_images and feature_rows must be >= 1")
        o.interval = int(o.interval)

    def check(self, task: PruneTask) -> None:
        task.require_metric(self.name, *self.metrics)

    def run(self, task: PruneTask) -> PruneResult:
        self.check(task)
        if task.train.epochs < 1:
            raise ConfigError("chex prunes while training: train.epochs must be >= 1")
        if not 0 < task.target <= 1:
            raise InfeasibleBudgetError(f"target must be a fraction in (0, 1], got {task.target}")
        model = task.model.cpu().eval()
        x = task.example_input
        graph = trace(model, x)
        round_to = resolve_round_to(self.options.round_to, model, graph, task)
        budget = None
        if task.metric == "latency":  # aimed by the table's error on the uniform plan
            budget = LatencyBudget(model, graph, task, shortcuts=self.options.shortcuts)
        cb = ChexCallback(graph, budget.aim if budget else task.target, task.metric,
                          dataclasses.replace(self.options, round_to=round_to), seed=task.seed,
                          table=budget.table if budget else None)  # fmt: skip
        model, history, final = fit(task, model, "chex", [cb])
        pruned, check = surgery(cb, model, _check_batch(task, x))
        dense, small = count(tensor_program(model), x), count(tensor_program(pruned), x)
        info = {
            "target": task.target, "metric": task.metric, "kappa": cb.kappa,
            "achieved_flops": small.flops / dense.flops,
            "achieved_params": small.params / dense.params,
            "groups": [graph.groups[g].name for g in cb.groups],
            "sizes": [graph.groups[g].size for g in cb.groups],
            "kept": [cb.mask.alive(g) for g in cb.groups] if cb.mask is not None else [],
            "left_whole": cb.left_whole, "timeline": cb.timeline, "t_max": cb.t_max,
            "css_used": cb.css_used,
            "update_times": cb.times, "train_flops_ratio": cb.training_flops_ratio(),
            "update_seconds": cb.update_seconds, "masked_vs_pruned_max_diff": check,
            "final": final, "options": dict(vars(self.options)), "round_to": round_to,
        }  # fmt: skip
        if budget is not None and cb.mask is not None:  # trained for: timed, not nudged
            predicted = budget.predicted_ratio(cb.mask.masks)
            info["achieved_latency"] = budget.verify(model.cpu(), pruned.cpu(), predicted)
            info["latency"] = {**budget.notes, "table_ratio": budget.table_ratio(cb.mask.masks)}
        return PruneResult(pruned, history, info)


def _check_batch(task: PruneTask, fallback: torch.Tensor) -> torch.Tensor:
    for xb, _ in batches(task, 1, "test"):
        return xb[:32]
    return fallback


@torch.no_grad()
def surgery(cb: ChexCallback, model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, float]:
    """Physically remove the masked channels; raise if the pruned model computes otherwise.

    Returns the pruned model and the largest absolute output difference on `x`.
    """
    if cb.mask is None:
        raise PrunelabError("chex: training never started, there is no mask to prune with")
    cb.mask.apply()
    model.eval()
    pruned = prune(model, cb.mask.to_plan()).eval()
    device = next(pruned.parameters()).device
    # a detector's raw head outputs (its boxes after NMS could differ by a tie)
    a = tensor_program(model)(x.to(device))
    b = tensor_program(pruned)(x.to(device))
    pairs = list(zip(tensors_of(a), tensors_of(b), strict=True))
    diff = max(float((p - q).abs().max()) for p, q in pairs)
    if diff > 1e-4 * max(1.0, *(float(p.abs().max()) for p, _ in pairs)):
        raise PrunelabError(f"chex: pruned model differs from the masked one by {diff:.3g}")
    return pruned, diff
