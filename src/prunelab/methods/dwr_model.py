"""DWR's accuracy model (MAP) and its maximiser under the cost constraint d*w^2*r^2 = T.

The model predicts accuracy from depth d, width w and resolution r (each a
fraction of the original network's). The paper's form is separable:

    F(d, w, r) = sum_{q=1..R} H(d; s_q) H(w; u_q) H(r; v_q),   H(z; c) = sum_k c_k z^k,

rank R (default 1) and degree K (default 3), fitted by alternating least
squares: with two of the three factors fixed, F is linear in the third. A
rank-1 model is identified by points that vary one dimension at a time
(what the data collection produces), which the full polynomial
sum theta_ijk d^i w^j r^k is not; the full form is here for comparison
(Table 4 of the paper), ridge-regularised so it can be fitted at all.

The maximiser works on the constraint surface directly: every free dimension
but one is a grid/optimiser variable in log space, the last one is solved
from d*w^2*r^2 = T, and points needing a value above 1 are infeasible. The
best point of a dense grid is refined with SLSQP and kept only if better,
so the result is never worse than the grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares, minimize

from prunelab.errors import ConfigError, InfeasibleBudgetError

__all__ = [
    "DIMS",
    "EXPONENTS",
    "FullPolynomial",
    "Optimum",
    "SeparablePolynomial",
    "constraint_grid",
    "fit_full",
    "fit_separable",
    "leave_one_out",
    "maximize",
    "rmse",
]

DIMS = ("depth", "width", "resolution")
# FLOPs scale ~ d * w^2 * r^2: depth linearly, width and resolution quadratically.
EXPONENTS = (1.0, 2.0, 2.0)

Model = Callable[[np.ndarray], np.ndarray]


def _as_points(x: np.ndarray | Sequence[float]) -> np.ndarray:
    pts = np.asarray(x, dtype=np.float64)
    if pts.ndim == 1:
        pts = pts[None, :]
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ConfigError(f"points must be (n, 3) rows of (d, w, r), got shape {pts.shape}")
    return pts


def _powers(z: np.ndarray, degree: int) -> np.ndarray:
    return np.vander(z, degree + 1, increasing=True)


@dataclass
class SeparablePolynomial:
    """F(x) = sum_q prod_j H(x_j; coef[q, j]); coef has shape (rank, 3, degree + 1)."""

    coef: np.ndarray

    @property
    def rank(self) -> int:
        return int(self.coef.shape[0])

    @property
    def degree(self) -> int:
        return int(self.coef.shape[2] - 1)

    @property
    def n_params(self) -> int:
        return int(self.coef.size)

    def factors(self, x: np.ndarray) -> np.ndarray:
        """H values per point, term and dimension: shape (n, rank, 3)."""
        pts = _as_points(x)
        out = np.empty((pts.shape[0], self.rank, 3))
        for j in range(3):
            out[:, :, j] = _powers(pts[:, j], self.degree) @ self.coef[:, j, :].T
        return out

    def __call__(self, x: np.ndarray | Sequence[float]) -> np.ndarray:
        return self.factors(np.asarray(x)).prod(axis=2).sum(axis=1)

    def to_dict(self) -> dict:
        return {"kind": "separable", "rank": self.rank, "degree": self.degree,
                "coef": self.coef.tolist()}  # fmt: skip


@dataclass
class FullPolynomial:
    """F(x) = sum_{i,j,k <= K} theta[i, j, k] d^i w^j r^k."""

    theta: np.ndarray

    @property
    def degree(self) -> int:
        return int(self.theta.shape[0] - 1)

    @property
    def n_params(self) -> int:
        return int(self.theta.size)

    def __call__(self, x: np.ndarray | Sequence[float]) -> np.ndarray:
        return _full_design(_as_points(np.asarray(x)), self.degree) @ self.theta.ravel()

    def to_dict(self) -> dict:
        return {"kind": "full", "degree": self.degree, "theta": self.theta.tolist()}


def _full_design(pts: np.ndarray, degree: int) -> np.ndarray:
    p = [_powers(pts[:, j], degree) for j in range(3)]
    return np.einsum("ni,nj,nk->nijk", p[0], p[1], p[2]).reshape(pts.shape[0], -1)


def _ridge_solve(a: np.ndarray, y: np.ndarray, ridge: float, free0: bool = False) -> np.ndarray:
    """argmin |a c - y|^2 + lam |c|^2, lam = ridge x mean diagonal of a^T a (scale-free)."""
    gram = a.T @ a
    lam = ridge * max(float(np.mean(np.diag(gram))), 1e-12)
    pen = np.full(a.shape[1], lam)
    if free0:
        pen[0] = 0.0  # leave the constant term unpenalised
    return np.linalg.solve(gram + np.diag(pen), a.T @ y)


def _check_fit_args(pts: np.ndarray, y: np.ndarray, degree: int) -> None:
    if y.shape != (pts.shape[0],):
        raise ConfigError(f"{pts.shape[0]} points but {y.shape} accuracies")
    if degree < 0:
        raise ConfigError(f"degree must be >= 0, got {degree}")
    if pts.shape[0] == 0:
        raise ConfigError("no points to fit the accuracy model to")


def fit_separable(
    x: np.ndarray | Sequence[Sequence[float]],
    y: np.ndarray | Sequence[float],
    degree: int = 3,
    rank: int = 1,
    ridge: float = 1e-6,
    sweeps: int = 300,
    restarts: int = 4,
    seed: int = 0,
) -> SeparablePolynomial:
    """Least-squares fit of the rank-`rank`, degree-`degree` separable model.

    Alternating least squares, one dimension (all terms together) at a time,
    with a tiny relative ridge so degree-K factors stay determined when a
    dimension has fewer than K + 1 distinct values. The first start makes
    every factor but depth constant (so the first solve is a plain fit along
    depth); further starts are random. The start with the lowest error wins.
    """
    pts = _as_points(x)
    y = np.asarray(y, dtype=np.float64)
    _check_fit_args(pts, y, degree)
    if rank < 1:
        raise ConfigError(f"rank must be >= 1, got {rank}")
    rng = np.random.default_rng(seed)
    powers = [_powers(pts[:, j], degree) for j in range(3)]
    best: tuple[float, np.ndarray] | None = None
    for start in range(max(1, restarts)):
        coef = rng.normal(0.0, 0.3, size=(rank, 3, degree + 1))
        if start == 0:
            coef[0] = 0.0
            coef[0, :, 0] = 1.0
        _als(coef, powers, y, ridge, sweeps)
        coef, sse = _polish(coef, powers, y, ridge)
        if best is None or sse < best[0]:
            best = (sse, coef)
    assert best is not None
    return SeparablePolynomial(best[1])


def _als(
    coef: np.ndarray, powers: list[np.ndarray], y: np.ndarray, ridge: float, sweeps: int
) -> float:
    """Alternating least squares in place; returns the final sum of squared errors."""
    rank, _, k1 = coef.shape
    prev = math.inf
    sse = math.inf
    for _ in range(sweeps):
        for j in range(3):
            others = np.ones((y.shape[0], rank))
            for jj in range(3):
                if jj != j:
                    others *= powers[jj] @ coef[:, jj, :].T
            design = (others[:, :, None] * powers[j][:, None, :]).reshape(y.shape[0], rank * k1)
            coef[:, j, :] = _ridge_solve(design, y, ridge).reshape(rank, k1)
        _balance(coef)
        sse = float(np.sum((_predict(coef, powers) - y) ** 2))
        if prev - sse <= 1e-13 * sse:
            break
        prev = sse
    return sse


def _predict(coef: np.ndarray, powers: list[np.ndarray]) -> np.ndarray:
    return np.prod([powers[j] @ coef[:, j, :].T for j in range(3)], axis=0).sum(axis=1)


def _polish(
    coef: np.ndarray, powers: list[np.ndarray], y: np.ndarray, ridge: float
) -> tuple[np.ndarray, float]:
    """Joint Gauss-Newton (trust region) refinement of all coefficients after ALS.

    ALS crawls along the valleys of a product model; a joint second-order
    step from its end point converges in a few iterations.
    """
    shape = coef.shape
    lam = math.sqrt(ridge * float(np.mean([np.mean(p**2) for p in powers])))

    def residual(c: np.ndarray) -> np.ndarray:
        return np.concatenate([_predict(c.reshape(shape), powers) - y, lam * c])

    res = least_squares(residual, coef.ravel(), method="trf", xtol=1e-15, ftol=1e-15,
                        gtol=1e-15, max_nfev=2000)  # fmt: skip
    out = res.x.reshape(shape)
    _balance(out)
    sse = float(np.sum((_predict(out, powers) - y) ** 2))
    before = float(np.sum((_predict(coef, powers) - y) ** 2))
    return (out, sse) if sse <= before else (coef, before)


def _balance(coef: np.ndarray) -> None:
    """Rescale each term's factors to equal norms (the product is unchanged)."""
    for q in range(coef.shape[0]):
        norms = np.linalg.norm(coef[q], axis=1)
        if np.all(norms > 0):
            g = float(np.prod(norms)) ** (1.0 / 3.0)
            coef[q] *= (g / norms)[:, None]


def fit_full(
    x: np.ndarray | Sequence[Sequence[float]],
    y: np.ndarray | Sequence[float],
    degree: int = 3,
    ridge: float = 1e-3,
) -> FullPolynomial:
    """Ridge least squares of the full polynomial ((K + 1)^3 coefficients)."""
    pts = _as_points(x)
    y = np.asarray(y, dtype=np.float64)
    _check_fit_args(pts, y, degree)
    theta = _ridge_solve(_full_design(pts, degree), y, ridge, free0=True)
    return FullPolynomial(theta.reshape(degree + 1, degree + 1, degree + 1))


def rmse(model: Model, x: np.ndarray, y: np.ndarray) -> float:
    """Root mean squared error of `model` on points `x` with accuracies `y`."""
    return float(np.sqrt(np.mean((model(_as_points(x)) - np.asarray(y)) ** 2)))


def leave_one_out(
    fit: Callable[[np.ndarray, np.ndarray], Model], x: np.ndarray, y: np.ndarray
) -> np.ndarray:
    """Absolute error on each point of a model fitted to all the other points."""
    pts = _as_points(x)
    y = np.asarray(y, dtype=np.float64)
    errors = np.empty(len(y))
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        errors[i] = abs(float(fit(pts[keep], y[keep])(pts[i : i + 1])[0]) - y[i])
    return errors


@dataclass(frozen=True)
class Optimum:
    """The maximiser's answer: (d, w, r), the predicted accuracy, and the grid's best."""

    point: tuple[float, float, float]
    value: float
    grid_point: tuple[float, float, float]
    grid_value: float
    refined: bool

    def to_dict(self) -> dict:
        return {"d": self.point[0], "w": self.point[1], "r": self.point[2], "value": self.value,
                "grid": list(self.grid_point), "grid_value": self.grid_value,
                "refined": self.refined}  # fmt: skip


def _free_indices(free: Sequence[str]) -> list[int]:
    unknown = sorted(set(free) - set(DIMS))
    if unknown or not free:
        raise ConfigError(f"free dimensions must be a non-empty subset of {DIMS}, got {free}")
    return [DIMS.index(f) for f in DIMS if f in free]


def _check_target(target: float) -> None:
    if not 0 < target <= 1:
        raise InfeasibleBudgetError(f"target FLOPs fraction must be in (0, 1], got {target}")


def _solve_last(
    u: np.ndarray, idx: list[int], target: float, exps: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Points (n, 3) from log-values `u` (n, len(idx) - 1) of all free dims but the last.

    Returns the points and log z of the solved dimension (> 0 means infeasible).
    """
    n = u.shape[0]
    pts = np.ones((n, 3))
    spent = np.zeros(n)
    for col, j in enumerate(idx[:-1]):
        pts[:, j] = np.exp(u[:, col])
        spent += exps[j] * u[:, col]
    last = idx[-1]
    log_z = (math.log(target) - spent) / exps[last]
    pts[:, last] = np.exp(np.minimum(log_z, 0.0))
    return pts, log_z


def constraint_grid(
    target: float,
    free: Sequence[str] = DIMS,
    n: int = 401,
    exponents: Sequence[float] = EXPONENTS,
) -> np.ndarray:
    """Feasible points (m, 3) on d^a w^b r^c = T, a grid over the free dimensions but one.

    Dimensions not in `free` stay at 1. Each grid variable ranges over
    [T^(1/e), 1] evenly in log space; n points per variable.
    """
    _check_target(target)
    idx = _free_indices(free)
    if len(idx) == 1:
        pts = np.ones((1, 3))
        pts[0, idx[0]] = target ** (1.0 / exponents[idx[0]])
        return pts
    axes = [np.linspace(math.log(target) / exponents[j], 0.0, n) for j in idx[:-1]]
    mesh = np.stack([a.ravel() for a in np.meshgrid(*axes, indexing="ij")], axis=1)
    pts, log_z = _solve_last(mesh, idx, target, exponents)
    return pts[log_z <= 1e-12]


def maximize(
    model: Model,
    target: float,
    free: Sequence[str] = DIMS,
    grid: int = 401,
    exponents: Sequence[float] = EXPONENTS,
) -> Optimum:
    """The (d, w, r) on d*w^2*r^2 = T (free dims in (0, 1], the rest at 1) maximising `model`."""
    idx = _free_indices(free)
    pts = constraint_grid(target, free, grid if len(idx) == 3 else grid * 20, exponents)
    values = model(pts)
    best = int(np.argmax(values))
    grid_point = tuple(float(v) for v in pts[best])
    grid_value = float(values[best])
    if len(idx) == 1:
        return Optimum(grid_point, grid_value, grid_point, grid_value, False)

    lo = [math.log(target) / exponents[j] for j in idx[:-1]]
    u0 = np.log(pts[best, idx[:-1]])

    def neg(u: np.ndarray) -> float:
        p, _ = _solve_last(u[None, :], idx, target, exponents)
        return -float(model(p)[0])

    def slack(u: np.ndarray) -> float:  # >= 0 when the solved dimension is <= 1
        return -float(_solve_last(u[None, :], idx, target, exponents)[1][0])

    res = minimize(
        neg, u0, method="SLSQP", bounds=list(zip(lo, [0.0] * len(lo), strict=True)),
        constraints=[{"type": "ineq", "fun": slack}], options={"ftol": 1e-12, "maxiter": 200},
    )  # fmt: skip
    u = np.clip(res.x, lo, 0.0)
    if slack(u) >= -1e-12 and -neg(u) > grid_value:
        p, _ = _solve_last(u[None, :], idx, target, exponents)
        point = tuple(float(v) for v in p[0])
        return Optimum(point, float(-neg(u)), grid_point, grid_value, True)
    return Optimum(grid_point, grid_value, grid_point, grid_value, False)
