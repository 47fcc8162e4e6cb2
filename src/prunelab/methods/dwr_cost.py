"""DWR's cost model as the engine measures it, and the maximiser under it.

The paper constrains d * w^2 * r^2 = T. That holds when every layer of the
network is counted by d, but `d` here is the kept fraction of the *removable*
blocks (identity-shortcut blocks, or the last layers of dense blocks): the
stem, the downsampling blocks, transitions and the classifier stay. On a
CIFAR ResNet the measured FLOPs are about 0.19 + 0.81 d, so under the
paper's constraint depth always looks cheap and the optimum sits at the
corner d = T. Here the cost is instead fitted to exact engine counts of
realised (d, w, r) models:

    C(d, w, r) = sum_{i, j <= 2} (a_ij + b_ij s(r)) d^i w^j   (a fraction of the dense FLOPs),

where s(r) is the dense model's own measured FLOPs at side r x r0 (linear
between whole pixels), so the ceil() of strided layers at odd sizes is in
the model rather than an error of it; a_ij holds what does not shrink with
resolution (the classifier). Fitted by relative least squares on a grid of
realisations (depth by the method's block order,
width by its same-fraction-everywhere rule, resolution by the input side);
no training is involved, so it is cheap. `maximize_under_cost` then finds
the accuracy model's best point on C(d, w, r) = T. The paper's constraint
stays selectable (DWR option `cost: paper`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from prunelab.errors import ConfigError, InfeasibleBudgetError
from prunelab.methods.dwr_model import DIMS, Optimum

__all__ = ["CostModel", "fit_cost", "maximize_under_cost", "solve_dimension"]

DEGREE = 2  # per dimension: depth is ~linear, width and resolution ~quadratic
Model = Callable[[np.ndarray], np.ndarray]


def _design(pts: np.ndarray, s: np.ndarray) -> np.ndarray:
    p = [np.vander(pts[:, j], DEGREE + 1, increasing=True) for j in range(2)]
    dw = np.einsum("ni,nj->nij", p[0], p[1]).reshape(pts.shape[0], -1)
    return np.concatenate([dw, dw * s[:, None]], axis=1)


@dataclass
class CostModel:
    """C(d, w, r) = sum (a_ij + b_ij s(r)) d^i w^j, the FLOPs fraction of the dense model.

    `sides` (increasing r values) and `scale` (the dense model's FLOPs fraction
    at each) define s(r) by linear interpolation.
    """

    coef: np.ndarray  # (2 * (DEGREE + 1) ** 2,)
    sides: np.ndarray
    scale: np.ndarray
    max_rel_error: float = 0.0  # largest |fit - measured| / measured on the fitted samples

    def s(self, r: np.ndarray) -> np.ndarray:
        return np.interp(r, self.sides, self.scale)

    def __call__(self, x: np.ndarray | Sequence[float]) -> np.ndarray:
        pts = np.atleast_2d(np.asarray(x, dtype=np.float64))
        return _design(pts, self.s(pts[:, 2])) @ self.coef

    def to_dict(self) -> dict:
        return {"kind": "measured", "degree": DEGREE, "coef": self.coef.tolist(),
                "sides": self.sides.tolist(), "scale": self.scale.tolist(),
                "max_rel_error": self.max_rel_error}  # fmt: skip


def fit_cost(
    points: np.ndarray, costs: np.ndarray, sides: np.ndarray, scale: np.ndarray
) -> CostModel:
    """Cost model through measured (d, w, r) -> FLOPs fraction samples.

    `sides`/`scale`: the dense model's FLOPs fraction at input sides r (s(r)).
    """
    pts = np.asarray(points, dtype=np.float64)
    y = np.asarray(costs, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or y.shape != (pts.shape[0],):
        raise ConfigError(f"cost samples must be (n, 3) points and n costs, got {pts.shape}")
    if pts.shape[0] == 0 or (y <= 0).any():
        raise ConfigError("a cost fit needs samples with positive costs")
    order = np.argsort(sides)
    sides, scale = np.asarray(sides, float)[order], np.asarray(scale, float)[order]
    a = _design(pts, np.interp(pts[:, 2], sides, scale))
    # Relative least squares: a 0.1 model matters as much as a 0.9 one near its own budget.
    coef, *_ = np.linalg.lstsq(a / y[:, None], np.ones_like(y), rcond=None)
    rel = np.abs(a @ coef - y) / y
    return CostModel(coef, sides, scale, float(rel.max()))


def solve_dimension(
    cost: Model, pts: np.ndarray, j: int, target: float, lower: float, iters: int = 60
) -> tuple[np.ndarray, np.ndarray]:
    """Set column j of `pts` so that cost = target (bisection on [lower, 1]; cost rises in it).

    Returns the points and a feasibility mask (target between the costs at
    lower and at 1).
    """
    pts = np.array(pts, dtype=np.float64)
    lo = np.full(pts.shape[0], float(lower))
    hi = np.ones(pts.shape[0])

    def at(z: np.ndarray) -> np.ndarray:
        pts[:, j] = z
        return cost(pts)

    ok = (at(lo) <= target + 1e-12) & (at(hi) >= target - 1e-12)
    for _ in range(iters):
        mid = (lo + hi) / 2
        under = at(mid) <= target
        lo = np.where(under, mid, lo)
        hi = np.where(under, hi, mid)
    pts[:, j] = (lo + hi) / 2
    return pts, ok


def maximize_under_cost(
    model: Model,
    cost: Model,
    target: float,
    free: Sequence[str] = DIMS,
    lower: Sequence[float] = (0.0, 0.0, 0.0),
    grid: int = 201,
) -> Optimum:
    """The (d, w, r) with cost(d, w, r) = target maximising `model`.

    Free dimensions range over [lower, 1] (e.g. the range the accuracy model
    was fitted on: it is not trusted beyond), the others stay at 1. The last
    free dimension is solved from the constraint; the best point of a grid
    over the others is refined with SLSQP and kept only if better.
    """
    if not 0 < target <= 1:
        raise InfeasibleBudgetError(f"target FLOPs fraction must be in (0, 1], got {target}")
    idx = [DIMS.index(f) for f in DIMS if f in free]
    if not idx or len(idx) != len(set(free)):
        raise ConfigError(f"free dimensions must be a non-empty subset of {DIMS}, got {free}")
    last, rest = idx[-1], idx[:-1]
    axes = [np.linspace(lower[j], 1.0, grid) for j in rest]
    mesh = np.ones((1, 3))
    if rest:
        cols = np.meshgrid(*axes, indexing="ij")
        mesh = np.ones((cols[0].size, 3))
        for c, j in zip(cols, rest, strict=True):
            mesh[:, j] = c.ravel()
    pts, ok = solve_dimension(cost, mesh, last, target, lower[last])
    if not ok.any():
        raise InfeasibleBudgetError(
            f"no (d, w, r) within the collected range {tuple(lower)}..1 costs {target:.1%} of "
            "the dense model's cost; collect further (more rounds) or raise the target"
        )
    values = np.where(ok, model(pts), -np.inf)
    best = int(np.argmax(values))
    grid_point = tuple(float(v) for v in pts[best])
    grid_value = float(values[best])
    if not rest:
        return Optimum(grid_point, grid_value, grid_point, grid_value, False)

    def realise(u: np.ndarray) -> tuple[np.ndarray, bool]:
        p = np.ones((1, 3))
        p[0, rest] = u
        p, feasible = solve_dimension(cost, p, last, target, lower[last])
        return p, bool(feasible[0])

    def neg(u: np.ndarray) -> float:
        return -float(model(realise(u)[0])[0])

    def slack(u: np.ndarray) -> float:  # >= 0 where the solved dimension fits in [lower, 1]
        p = np.ones((2, 3))
        p[:, rest] = u
        p[0, last], p[1, last] = lower[last], 1.0
        c = cost(p)
        return float(min(target - c[0], c[1] - target))

    res = minimize(
        neg, pts[best, rest], method="SLSQP", bounds=[(lower[j], 1.0) for j in rest],
        constraints=[{"type": "ineq", "fun": slack}], options={"ftol": 1e-12, "maxiter": 200},
    )  # fmt: skip
    u = np.clip(res.x, [lower[j] for j in rest], 1.0)
    p, feasible = realise(u)
    if feasible and -neg(u) > grid_value:
        point = tuple(float(v) for v in p[0])
        return Optimum(point, float(-neg(u)), grid_point, grid_value, True)
    return Optimum(grid_point, grid_value, grid_point, grid_value, False)
