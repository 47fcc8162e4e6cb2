"""The maths of CHEX (Hou et al., CVPR 2022), free of models and training loops.

- `leverage_scores`: column subset selection. A matrix X has one column per
  channel (a layer's weights in the paper; `chex_features` supplies the
  matrices); the channels whose columns carry most of the rank-K subspace
  (large leverage ||V_K[j, :]||) are the ones to keep.
- `orthogonality`: ||x_j - P x_j|| with P the projection onto the kept
  columns; a pruned channel far from what is kept adds most when it regrows.
- `sample_regrow`: which candidates come back, drawn without replacement
  with softmax(eps / temperature) probabilities (or the top eps).
- `delta_at`: the cosine-decaying regrowing factor delta_t.
- `pooled_order` / `pruned_counts`: channel re-allocation by a global
  quantile of the batch-norm scales pooled over all pruned layers.
- `update_times`: when the prune-regrow updates happen.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from prunelab.graph.groups import Group

# Singular values below this fraction of the largest count as zero (rank of a span).
_RANK_TOL = 1e-6


def leverage_scores(x: torch.Tensor, k: int) -> torch.Tensor:
    """Rank-`k` leverage ||V_k[j, :]|| of every column j of `x` (N rows, C columns).

    A column outside the span of the others has leverage 1 for any k at or
    above the rank; identical columns share their direction's leverage
    equally. Needs N >= k; `css_scores` falls back to l1 otherwise.
    """
    if x.dim() != 2:
        raise ValueError(f"leverage scores need a matrix, got shape {tuple(x.shape)}")
    n_cols = x.shape[1]
    k = max(0, min(k, min(x.shape)))
    if k == 0 or n_cols == 0:
        return torch.zeros(n_cols, dtype=torch.float64)
    _, _, vh = torch.linalg.svd(x.double(), full_matrices=False)
    return vh[:k].T.norm(dim=1)


def css_scores(x: torch.Tensor, k: int) -> torch.Tensor:
    """Column subset selection scores: leverage at rank `k`, or the column l1 when N < C.

    With fewer rows than columns the rank-k subspace cannot single out k of
    the C columns (every column is in the span), so the paper's recipe falls
    back to the magnitude criterion.
    """
    if x.shape[0] < x.shape[1]:
        return x.double().abs().sum(dim=0)
    return leverage_scores(x, k)


def orthogonality(kept: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """||x_j - P x_j|| for each candidate column x_j, P the projection onto span(`kept`).

    `kept` is N x K, `candidates` N x M. The span is taken from an SVD so that
    dependent or zero kept columns do not inflate it.
    """
    cand = candidates.double()
    if kept.shape[1] == 0 or cand.shape[1] == 0:
        return cand.norm(dim=0)
    u, s, _ = torch.linalg.svd(kept.double(), full_matrices=False)
    if s.numel() == 0 or float(s[0]) == 0.0:
        return cand.norm(dim=0)
    basis = u[:, s > _RANK_TOL * s[0]]
    residual = cand - basis @ (basis.T @ cand)
    return residual.norm(dim=0)


def sample_regrow(
    eps: torch.Tensor,
    n: int,
    *,
    deterministic: bool = False,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Indices (into `eps`) of `n` candidates to regrow, without replacement.

    Probabilistic (the paper's default, as its reference code): probabilities
    softmax(eps / temperature). Deterministic: the `n` largest eps, ties by index.
    """
    m = eps.numel()
    n = max(0, min(int(n), m))
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    if n == m:
        return torch.arange(m)
    if deterministic:
        return torch.argsort(eps.double(), descending=True, stable=True)[:n]
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    probs = torch.softmax(eps.double() / temperature, dim=0)
    return torch.multinomial(probs, n, replacement=False, generator=generator)


def delta_at(t: float, t_max: float, delta0: float) -> float:
    """Regrowing factor delta_t = delta0 (1 + cos(pi t / T_max)) / 2; 0 from T_max on."""
    if t_max <= 0 or t >= t_max:
        return 0.0
    return delta0 * 0.5 * (1.0 + math.cos(math.pi * max(0.0, t) / t_max))


def update_times(interval: int, t_max: int) -> list[int]:
    """Times of the prune-regrow updates: every `interval` from the first period, and T_max.

    The last update is at T_max itself (delta = 0 there), so the mask frozen
    afterwards is exactly the allocation for the target.
    """
    if interval < 1:
        raise ValueError(f"interval must be >= 1, got {interval}")
    if t_max < 1:
        return []
    times = list(range(interval, t_max, interval))
    return [*times, t_max]


def pooled_order(scores: list[torch.Tensor]) -> torch.Tensor:
    """Which score list each pooled unit comes from, in ascending score order.

    `scores[i]` holds layer i's per-unit scores (|gamma|); the result's first
    n entries name the layers of the n lowest-scoring units network-wide, i.e.
    the units at or below the global (n / total)-quantile. Ties resolve by
    layer order, then unit order (a stable sort), so allocation is repeatable.
    """
    if not scores:
        return torch.zeros(0, dtype=torch.long)
    pooled = torch.cat([s.double().flatten() for s in scores])
    owner = torch.cat([torch.full((len(s),), i, dtype=torch.long) for i, s in enumerate(scores)])
    return owner[torch.argsort(pooled, stable=True)]


def pruned_counts(order: torch.Tensor, n: int, n_layers: int) -> torch.Tensor:
    """Per layer: how many of its units are among the `n` lowest of `pooled_order`."""
    n = max(0, min(int(n), len(order)))
    return torch.bincount(order[:n], minlength=n_layers)


def smallest_within(fn: Callable[[int], float], total: int, goal: float) -> int:
    """The smallest n in [0, total] with fn(n) <= goal, for a cost fn non-increasing in n.

    Returns `total + 1` when even n = total costs more than `goal`.
    """
    if fn(0) <= goal:
        return 0
    if fn(total) > goal:
        return total + 1
    lo, hi = 0, total  # fn(lo) > goal >= fn(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fn(mid) <= goal:
            hi = mid
        else:
            lo = mid
    return hi


# ---------------------------------------------------------------- per group
# A group's weights are read through `weights[(module, param)]` (the caller's
# remembered values, so pruned units score with the weights they had last).
Weights = Mapping[tuple[str, str], torch.Tensor]
Matrices = list[tuple[torch.Tensor, torch.Tensor]]  # (units present, X), chex_features


def mean_gamma(weights: Weights, group: Group) -> torch.Tensor:
    """Mean |gamma| per unit over the group's batch norms (comparable across groups)."""
    total = torch.zeros(group.size, dtype=torch.float64)
    n = torch.zeros(group.size, dtype=torch.float64)
    for m in group.members_of("norm", "weight"):
        vals = weights[(m.module, m.param)].detach().cpu().double()[m.positions]
        total.index_add_(0, m.units, vals.abs())
        n.index_add_(0, m.units, torch.ones(len(m.units), dtype=torch.float64))
    return total / n.clamp_min(1)


def group_css_scores(mats: Matrices, size: int, alive: torch.Tensor, k: int) -> torch.Tensor:
    """CSS scores (rank k) of the `alive` units, one entry per unit of a group of `size`.

    `mats` are the group's (units present, X) matrices (`chex_features`). Each
    matrix's scores are scaled to a maximum of 1 and summed, so the layers of a
    residual group count equally whether they use leverage or l1.
    """
    total = torch.zeros(size, dtype=torch.float64)
    is_alive = torch.zeros(size, dtype=torch.bool)
    is_alive[alive] = True
    for present, x in mats:
        on = is_alive[present]
        if on.any():
            s = css_scores(x[:, on], min(k, int(on.sum())))
            total[present[on]] += s / s.max().clamp_min(1e-30)
    return total


def group_orthogonality(
    mats: Matrices, size: int, kept: torch.Tensor, cand: torch.Tensor
) -> torch.Tensor:
    """eps of each candidate unit in `cand` against the `kept` (bool) units, summed over `mats`."""
    total = torch.zeros(size, dtype=torch.float64)
    for present, x in mats:
        k_on = kept[present]
        if (~k_on).any():
            total[present[~k_on]] += orthogonality(x[:, k_on], x[:, ~k_on])
    return total[cand]


class Allocation:
    """Per-layer budgets at any global sparsity, from per-unit scores pooled over layers."""

    def __init__(self, scores: list[torch.Tensor], min_units: int = 1) -> None:
        self.order = pooled_order(scores)
        self.sizes = torch.tensor([len(s) for s in scores])
        self.total = int(self.sizes.sum())
        self.min_units = min_units
        # rank of each unit in its layer, best first: masks keep the best `count`
        self._ranks = [
            torch.argsort(torch.argsort(s, descending=True, stable=True)) for s in scores
        ]

    def counts(self, n: int) -> torch.Tensor:
        """Units each layer keeps when the `n` lowest-scoring units network-wide go."""
        kept = self.sizes - pruned_counts(self.order, n, len(self.sizes))
        return torch.minimum(kept.clamp(min=self.min_units), self.sizes)

    def masks(self, counts: torch.Tensor) -> list[torch.Tensor]:
        """Bool masks keeping each layer's `counts[i]` best-scoring units (for costing)."""
        return [r < int(c) for r, c in zip(self._ranks, counts, strict=True)]


def refine_counts(
    counts: torch.Tensor,
    prefer: torch.Tensor,
    cap: torch.Tensor,
    cost_of: Callable[[torch.Tensor], float],
    goal: float,
    tolerance: float = 0.01,
    tries: int = 512,
    step: torch.Tensor | None = None,
) -> torch.Tensor:
    """Give units back, layer by layer in `prefer` order, until the cost is within tolerance.

    Pruning one more unit of a wide early layer can move the cost by more than
    1%; so from an allocation under `goal`, the best-scoring pruned units (the
    last ones below the quantile, listed in `prefer` by layer) come back one
    at a time while the cost stays under goal * (1 + tolerance). Counts never
    exceed `cap`. `step` (per layer) gives back that many units at once, so
    counts rounded to a multiple stay multiples (or reach `cap`).
    """
    counts = counts.clone()
    cost = cost_of(counts)
    for layer in prefer[:tries].tolist():
        if cost >= goal * (1 - tolerance):
            break
        if counts[layer] >= cap[layer]:
            continue
        before = int(counts[layer])
        grow = 1 if step is None else int(step[layer])
        counts[layer] = min(before + grow, int(cap[layer]))
        trial = cost_of(counts)
        if trial <= goal * (1 + tolerance):
            cost = trial
        else:
            counts[layer] = before
    return counts
