"""A leaderboard of `prunelab compare` arms: one table sorted by top-1, one plot, one JSON.

Input is one record per finished run of an arm (an arm may have several
seeds); output rows aggregate the seeds of an arm (mean top-1, its sample
standard deviation as error bars) and compare each arm with the dense model
and with the baseline arm (uniform L1 unless the config names another).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from prunelab.atomic import atomic_write_text

LEADERBOARD_JSON = "leaderboard.json"
LEADERBOARD_MD = "leaderboard.md"
LEADERBOARD_PNG = "leaderboard.png"


@dataclass
class ArmRun:
    """One finished run of an arm (one seed)."""

    arm: str
    seed: int
    method: str
    top1: float | None
    flops: int
    params: int
    flops_ratio: float
    train_epochs: float
    wall_seconds: float
    search_seconds: float = 0.0
    search_epochs: float = 0.0  # search wall time in epochs of dense training
    latency_ms: float | None = None
    speedup: float | None = None
    on_budget: bool = True
    distilled: bool = False
    run_dir: str = ""


@dataclass
class ArmRow:
    """One leaderboard row: an arm over its seeds."""

    arm: str
    method: str
    seeds: list[int]
    top1: float | None
    top1_std: float | None
    flops: int
    params: int
    flops_ratio: float
    latency_ms: float | None
    speedup: float | None
    train_epochs: float
    search_epochs: float
    search_seconds: float
    wall_seconds: float
    on_budget: bool
    distilled: bool
    delta_dense: float | None = None
    delta_baseline: float | None = None
    runs: list[str] = field(default_factory=list)


def aggregate(runs: list[ArmRun], dense_top1: float | None, baseline: str | None) -> list[ArmRow]:
    """Rows sorted by mean top-1 (arms off budget last), with deltas to dense and baseline."""
    by_arm: dict[str, list[ArmRun]] = {}
    for r in runs:
        by_arm.setdefault(r.arm, []).append(r)
    rows = []
    for arm, group in by_arm.items():
        group.sort(key=lambda r: r.seed)
        accs = [r.top1 for r in group if r.top1 is not None]
        first = group[0]
        rows.append(ArmRow(
            arm=arm, method=first.method, seeds=[r.seed for r in group],
            top1=statistics.fmean(accs) if accs else None,
            top1_std=statistics.stdev(accs) if len(accs) > 1 else None,
            flops=first.flops, params=first.params, flops_ratio=first.flops_ratio,
            latency_ms=first.latency_ms, speedup=first.speedup,
            train_epochs=first.train_epochs,
            search_epochs=statistics.fmean(r.search_epochs for r in group),
            search_seconds=statistics.fmean(r.search_seconds for r in group),
            wall_seconds=statistics.fmean(r.wall_seconds for r in group),
            on_budget=all(r.on_budget for r in group), distilled=first.distilled,
            runs=[r.run_dir for r in group],
        ))  # fmt: skip
    base_top1 = next((r.top1 for r in rows if r.arm == baseline), None)
    for row in rows:
        if row.top1 is not None:
            row.delta_dense = None if dense_top1 is None else row.top1 - dense_top1
            row.delta_baseline = None if base_top1 is None else row.top1 - base_top1
    rows.sort(key=lambda r: (not r.on_budget, -(r.top1 if r.top1 is not None else -math.inf)))
    return rows


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def _duration(seconds: float) -> str:
    if seconds <= 0:
        return "-"
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def format_leaderboard(
    rows: list[ArmRow], dense: dict[str, Any], baseline: str | None, timing: str
) -> str:
    """The markdown table: rank, arm, top-1 (± sd over seeds), deltas, costs, speed, budget."""
    dense_top1 = dense.get("top1")
    head = (
        f"| # | arm | method | top-1 (%) | Δ dense | Δ {baseline or 'baseline'} | FLOPs (MACs) | "
        f"params | CPU latency ({timing}) | speedup | train epochs | search (dense epochs) | "
        "wall time |"
    )
    lines = [head, "|" + "---|" * 13]
    if dense_top1 is not None or dense.get("flops"):
        top1 = "-" if dense_top1 is None else f"{dense_top1:.2f}"
        lat = "-" if dense.get("latency_ms") is None else f"{dense['latency_ms']:.1f} ms"
        lines.append(
            f"| - | dense | - | {top1} | - | - | {dense['flops'] / 1e6:.1f} M (100%) | "
            f"{dense['params'] / 1e6:.3f} M | {lat} | 1.00x | - | - | - |"
        )
    for i, r in enumerate(rows, 1):
        if r.top1 is None:
            top1 = "-"
        else:
            spread = f" ± {r.top1_std:.2f}" if r.top1_std is not None else ""
            top1 = f"{r.top1:.2f}{spread}" + (f" (n={len(r.seeds)})" if len(r.seeds) > 1 else "")
        rank = str(i) if r.on_budget else "✗ off budget"
        lat = "-" if r.latency_ms is None else f"{r.latency_ms:.1f} ms"
        speed = "-" if r.speedup is None else f"{r.speedup:.2f}x"
        search = (
            "-" if r.search_seconds <= 0
            else f"{r.search_epochs:.1f} ({_duration(r.search_seconds)})"
        )  # fmt: skip
        lines.append(
            f"| {rank} | {r.arm} | {r.method} | {top1} | {_signed(r.delta_dense)} | "
            f"{_signed(r.delta_baseline)} | {r.flops / 1e6:.1f} M ({r.flops_ratio:.1%}) | "
            f"{r.params / 1e6:.3f} M | {lat} | {speed} | {r.train_epochs:g} | {search} | "
            f"{_duration(r.wall_seconds)} |"
        )
    return "\n".join(lines)


def spread_labels(points: list[tuple[float, float]], gap: float, near: float) -> list[float]:
    """Heights for the labels of `points` (x, y) so that no two near each other overlap.

    Arms at one budget sit at one FLOPs value within a few tenths of a point, where
    labels at the points themselves print over each other. Going up from the lowest
    point, each label rises just enough to clear, by `gap`, every label already placed
    within `near` of it along x; a label keeps its point's height where it is clear.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][1], points[i][0]))
    heights = [0.0] * len(points)
    placed: list[int] = []
    for i in order:
        x, y = points[i]
        below = [heights[j] for j in placed if abs(points[j][0] - x) <= near]
        heights[i] = max([y, *(h + gap for h in below)])
        placed.append(i)
    return heights


def _label_points(ax: Any, points: list[tuple[float, float, str]]) -> None:
    """Name every point, labels spread clear of each other, with a leader where moved."""
    if not points:
        return
    ax.autoscale_view()
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    heights = spread_labels([(x, y) for x, y, _ in points], gap=0.045 * (y1 - y0),
                            near=0.25 * (x1 - x0))  # fmt: skip
    for (x, y, text), h in zip(points, heights, strict=True):
        moved = h - y > 1e-9
        ax.annotate(text, (x, y), xytext=(x + 0.02 * (x1 - x0), h), textcoords="data",
                    fontsize=7, va="center",
                    arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5"} if moved else None)
    ax.set_ylim(y0, max(y1, max(heights) + 0.05 * (y1 - y0)))


def plot_leaderboard(rows: list[ArmRow], dense: dict[str, Any], path: Path, title: str) -> Path:
    """Top-1 against FLOPs and against measured latency, one point per arm, seeds as error bars."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    panels = (("flops", "FLOPs (MACs, millions)", 1e6), ("latency_ms", "CPU latency (ms)", 1.0))
    for ax, (key, label, scale) in zip(axes, panels, strict=True):
        if dense.get("top1") is not None and dense.get(key) is not None:
            ax.scatter(dense[key] / scale, dense["top1"], marker="*", s=120, color="black")
            ax.annotate("dense", (dense[key] / scale, dense["top1"]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")  # fmt: skip
        shown = [r for r in rows if r.top1 is not None and getattr(r, key) is not None]
        for r in shown:
            ax.errorbar(getattr(r, key) / scale, r.top1, yerr=r.top1_std or 0.0,
                        fmt="o" if r.on_budget else "x", capsize=3, markersize=5)  # fmt: skip
        _label_points(ax, [(getattr(r, key) / scale, r.top1, r.arm) for r in shown])
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_leaderboard(
    out: Path,
    title: str,
    runs: list[ArmRun],
    dense: dict[str, Any],
    baseline: str | None,
    timing: str,
    notes: list[str] = (),  # type: ignore[assignment]
) -> tuple[str, list[ArmRow]]:
    """Write leaderboard.md, leaderboard.json and leaderboard.png into `out`; return the table."""
    rows = aggregate(runs, dense.get("top1"), baseline)
    table = format_leaderboard(rows, dense, baseline, timing)
    image = plot_leaderboard(rows, dense, out / LEADERBOARD_PNG, title)
    text = [f"# {title}", "", table, ""]
    text += [f"- {n}" for n in notes]
    text += ["", f"![top-1 against FLOPs and latency]({image.name})", ""]
    atomic_write_text(out / LEADERBOARD_MD, "\n".join(text))
    payload = {
        "title": title, "baseline": baseline, "timing": timing, "dense": dense,
        "rows": [asdict(r) for r in rows], "runs": [asdict(r) for r in runs], "notes": list(notes),
    }  # fmt: skip
    atomic_write_text(out / LEADERBOARD_JSON, json.dumps(payload, indent=1))
    return table, rows


def read_leaderboard(folder: Path) -> dict[str, Any] | None:
    """The leaderboard.json of a compare folder, or None when `folder` is not one."""
    path = Path(folder) / LEADERBOARD_JSON
    if not path.is_file():
        return None
    return json.loads(path.read_text())
