"""Tables and figures of the DWR experiments: bench/results/dwr.md, dwr_*.json, dwr_*.png.

Reads the collected points (runs/dwr_bench/collect, or the copy this script
keeps in bench/results/dwr_points.json), the arms (bench/results/dwr_runs/)
and, if measured, the timings (bench/results/dwr_speed.json), then:

- Table 1 at our scale: depth-only, width-only, resolution-only and 3-D;
- the accuracy model's fit (the paper's Table 4): training and leave-one-out
  error of the rank-1 separable model and of the full polynomial, K = 1..5;
- the optimum (d*, w*, r*) for K = 1..6 (the paper's Fig. 4);
- the fitted accuracy over (d, w) and (w, r) slices with the constraint curve
  and the chosen point; the fitted factors along each axis with the data;
- the cost of data collection in "models trained".

Text after the notes marker in an existing dwr.md is kept.

    .venv/bin/python bench/dwr_report.py
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from prunelab.atomic import atomic_write_text
from prunelab.methods.dwr_model import (
    fit_full,
    fit_separable,
    leave_one_out,
    maximize,
    rmse,
)
from prunelab.train import read_metrics

RESULTS = Path("bench/results")
COLLECT = Path("runs/dwr_bench/collect")
BASELINE_LOG = Path("runs/baseline_resnet20/metrics.jsonl")
MARKER = "<!-- notes: text below this line is kept when the report is regenerated -->"
# The line under the title: RESULTS §6's text sits after MARKER (kept on regeneration).
MOVED_NOTE = (
    "This page holds the per-method details that were in [bench/RESULTS.md](../RESULTS.md) §6 "
    "(moved [below the generated tables](#summary-from-benchresultsmd-moved-2026-12-02) "
    "on 2026-12-02); the leaderboards in [bench/RESULTS.md](../RESULTS.md) are the current "
    "head-to-head comparison."
)
TARGET = 0.5
ARM_ORDER = ["depth", "width", "resolution", "3d"]


def load_points(collect: Path, keep: Path) -> list[dict[str, Any]]:
    """Collected points from the cache (copied to `keep`), else from `keep`."""
    files = sorted(collect.glob("*.json")) if collect.is_dir() else []
    if files:
        points = [json.loads(f.read_text())["point"] for f in files]
        order = {"origin": 0, "depth": 1, "width": 2, "resolution": 3}
        points.sort(key=lambda p: (order[p["dim"]], p["round"]))
        atomic_write_text(keep, json.dumps(points, indent=1))
        return points
    return json.loads(keep.read_text()) if keep.exists() else []


def arrays(points: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    x = np.array([[p["d"], p["w"], p["r"]] for p in points])
    return x, np.array([p["accuracy"] / 100.0 for p in points])


def map_study(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Table 4 (fit errors) and Fig. 4 (optimum against K), errors in accuracy points."""
    table = []
    for k in range(1, 6):
        sep = fit_separable(x, y, k)
        full = fit_full(x, y, k)
        table.append({
            "K": k,
            "rank1_params": sep.n_params, "full_params": full.n_params,
            "rank1_train": 100 * rmse(sep, x, y),
            "rank1_loo": 100 * float(np.sqrt(np.mean(leave_one_out(
                lambda a, b, k=k: fit_separable(a, b, k), x, y) ** 2))),
            "full_train": 100 * rmse(full, x, y),
            "full_loo": 100 * float(np.sqrt(np.mean(leave_one_out(
                lambda a, b, k=k: fit_full(a, b, k), x, y) ** 2))),
        })  # fmt: skip
    optima = []
    for k in range(1, 7):
        opt = maximize(fit_separable(x, y, k), TARGET)
        optima.append({"K": k, "d": opt.point[0], "w": opt.point[1], "r": opt.point[2],
                       "predicted": 100 * opt.value})  # fmt: skip
    return {"fit": table, "optima": optima}


def slices_figure(x: np.ndarray, y: np.ndarray, opt: tuple[float, float, float], out: Path) -> None:
    """Fitted accuracy over (d, w) at r* and (w, r) at d*, the constraint curve, the optimum."""
    model = fit_separable(x, y, 3)
    d_s, w_s, r_s = opt
    lo_d, lo_w = TARGET, math.sqrt(TARGET)
    grid = np.linspace(0, 1, 201)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    panels = [
        ("d", "w", lambda a, b: np.stack([a, b, np.full_like(a, r_s)], -1), (lo_d, lo_w),
         f"r = r* = {r_s:.3f}", (d_s, w_s),
         lambda w: TARGET / (w**2 * r_s**2), "x"),
        ("w", "r", lambda a, b: np.stack([np.full_like(a, d_s), a, b], -1), (lo_w, lo_w),
         f"d = d* = {d_s:.3f}", (w_s, r_s),
         lambda w: np.sqrt(TARGET / (d_s * w**2)), "y"),
    ]  # fmt: skip
    for ax, (xa, ya, make, lows, title, star, curve, _) in zip(axes, panels, strict=True):
        a = lows[0] + (1 - lows[0]) * grid
        b = lows[1] + (1 - lows[1]) * grid
        aa, bb = np.meshgrid(a, b)
        zz = 100 * model(make(aa.ravel(), bb.ravel())).reshape(aa.shape)
        cs = ax.contourf(aa, bb, zz, levels=20, cmap="viridis")
        fig.colorbar(cs, ax=ax, label="fitted top-1 (%)")
        if xa == "d":  # constraint d = T / (w^2 r*^2), drawn as w -> d
            ww = b
            dd = curve(ww)
            ok = (dd >= lows[0]) & (dd <= 1)
            ax.plot(dd[ok], ww[ok], "w--", label="d w² r² = T")
        else:  # r = sqrt(T / (d* w^2))
            rr = curve(a)
            ok = (rr >= lows[1]) & (rr <= 1)
            ax.plot(a[ok], rr[ok], "w--", label="d w² r² = T")
        ax.plot(*star, "r*", markersize=16, label="chosen (d*, w*, r*)")
        ax.set_xlabel(xa)
        ax.set_ylabel(ya)
        ax.set_title(f"fitted accuracy, {title}")
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle("DWR accuracy model (rank 1, K = 3), ResNet-20 CIFAR-10, T = 50% FLOPs")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def axes_figure(x: np.ndarray, y: np.ndarray, study: dict[str, Any], out: Path) -> None:
    """The fitted model along each axis with the collected points; the optimum against K."""
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    lows = [TARGET, math.sqrt(TARGET), math.sqrt(TARGET)]
    for j, (name, ax) in enumerate(zip(["depth d", "width w", "resolution r"], axes, strict=False)):
        on_axis = np.all(np.delete(x, j, axis=1) == 1.0, axis=1)
        z = np.linspace(min(lows[j], x[on_axis, j].min()), 1, 100)
        for k, style in ((1, ":"), (3, "-"), (5, "--")):
            model = fit_separable(x, y, k)
            pts = np.ones((100, 3))
            pts[:, j] = z
            ax.plot(z, 100 * model(pts), style, label=f"rank 1, K={k}")
        ax.plot(x[on_axis, j], 100 * y[on_axis], "ko", label="collected")
        ax.set_xlabel(name)
        ax.set_ylabel("hold-out top-1 (%)")
        ax.legend(fontsize=7)
    ax = axes[3]
    ks = [o["K"] for o in study["optima"]]
    for key, marker in (("d", "o-"), ("w", "s-"), ("r", "^-")):
        ax.plot(ks, [o[key] for o in study["optima"]], marker, label=f"{key}*")
    ax.set_xlabel("degree K")
    ax.set_ylabel("optimum")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.set_title("(d*, w*, r*) against K")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def baseline_training_seconds(log: Path) -> tuple[int, float] | None:
    if not log.exists():
        return None
    epochs = read_metrics(log, kind="epoch")
    return (len(epochs), sum(e["time"] for e in epochs)) if epochs else None


def _f(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def write_report(points, arms, study, speed, baseline, out: Path) -> None:
    lines = [
        "# DWR: depth, width and resolution pruned together (ResNet-20, CIFAR-10 JPEG)",
        "",
        MOVED_NOTE,
        "",
    ]
    dense = next((a.get("dense_top1") for a in arms.values() if a.get("dense_top1")), None)
    lines += [
        "Method `dwr` (Wang et al., ICML 2021) from the committed dense ResNet-20 "
        f"(test top-1 {_f(dense)}%, 40.8 MFLOPs = MACs, 0.27 M params) at T = 50% of its "
        "FLOPs. Point accuracies and DBP probes use 5000 held-out training images "
        "(left out of every fine-tune). Scripts: `bench/dwr_cifar.py` (runs; removed "
        "after 67402b9, now `configs/compare/dwr_dims_resnet20_cifar10.yaml`), "
        "`bench/dwr_speed.py` (timings), `bench/dwr_report.py` (this file).",
        "",
        "## Table 1 at our scale: one dimension against three",
        "",
    ]
    first = next(iter(arms.values()), {})
    lines.append(
        f"Same final fine-tune for every arm: {first.get('final_epochs', '?')} epochs, SGD "
        "(Nesterov 0.9), lr 0.02 cosine to 0, wd 5e-4, batch 128. Test top-1 at the model's "
        "own input size; FLOPs counted by the engine at that size."
    )
    lines += ["", "| arm | d | w | r (pixels) | removed blocks | top-1 (%) | Δ vs dense | "
              "FLOPs | params | FLOPs red. | params red. | speedup b8 | speedup b64 | "
              "train-step speedup |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in ARM_ORDER:
        a = arms.get(name)
        if a is None:
            continue
        c = a["info"]["chosen"]
        sp = (speed or {}).get(name, {})
        delta = a["top1"] - dense if dense is not None else None
        lines.append(
            f"| {name} | {c['d']:.3f} ({c['blocks_kept']}/7) | {c['w']:.3f} | "
            f"{c['r']:.3f} ({c['pixels']}) | {len(a['info'].get('removed_blocks', []))} | "
            f"{a['top1']:.2f} | {_f(delta)} | {a['flops_ratio']:.3f} | {a['params_ratio']:.3f} | "
            f"{100 * (1 - a['flops_ratio']):.1f}% | {100 * (1 - a['params_ratio']):.1f}% | "
            f"{_f(sp.get('infer_b8'))} | {_f(sp.get('infer_b64'))} | {_f(sp.get('train_b128'))} |"
        )
    if "3d" in arms:
        info = arms["3d"]["info"]
        o = info["optimum"]
        lines += ["", f"Chosen by the accuracy model: (d*, w*, r*) = ({o['d']:.3f}, {o['w']:.3f}, "
                  f"{o['r']:.3f}), predicted hold-out top-1 {100 * o['value']:.2f}%; realised "
                  f"after rounding blocks and pixels and meeting the budget with the engine's "
                  f"count: d = {info['chosen']['d']:.3f}, w = {info['chosen']['w']:.3f}, "
                  f"r = {info['chosen']['r']:.3f}, FLOPs {info['achieved_flops']:.3f} of "
                  f"the dense model."]  # fmt: skip
    if speed:
        lines += ["", f"Speedups: {speed.get('_note', '')}"]

    lines += ["", "## Collected points (Algorithm 1: 4 rounds per dimension)", "",
              "| point | d | w | r (pixels) | hold-out top-1 | test top-1 | FLOPs | "
              "fine-tune s |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    base_flops = next((p["flops"] for p in points if p["dim"] == "origin"), None)
    for p in points:
        name = "origin" if p["dim"] == "origin" else f"{p['dim']} {p['round']}"
        flops = p["flops"] / base_flops if base_flops else float("nan")
        lines.append(f"| {name} | {p['d']:.3f} | {p['w']:.3f} | {p['r']:.3f} ({p['pixels']}) | "
                     f"{p['accuracy']:.2f} | {_f(p.get('test_top1'))} | {flops:.3f} | "
                     f"{p['seconds']:.0f} |")  # fmt: skip

    rounds = [p for p in points if p["dim"] != "origin"]
    if rounds:
        epochs = sum(p["epochs"] for p in rounds)
        seconds = sum(p["seconds"] for p in rounds)
        lines += ["", "## Cost of data collection", ""]
        text = (f"{len(rounds)} intermediate models fine-tuned, {epochs} epochs in all, "
                f"{seconds / 60:.1f} min wall clock in a 1-thread slot (pruning, DBP, "
                "fine-tuning and hold-out evaluation).")  # fmt: skip
        if baseline:
            b_epochs, b_seconds = baseline
            text += (f" The dense model was trained for {b_epochs} epochs "
                     f"({b_seconds / 3600:.2f} h logged), so collection cost "
                     f"{epochs / b_epochs:.2f} models trained by epochs "
                     f"and {seconds / b_seconds:.2f} by wall clock (timings from a shared "
                     "machine; the baseline ran with other jobs too).")  # fmt: skip
        text += (" At the paper's CIFAR schedule (40 epochs per round) the same 12 rounds are "
                 "480 epochs, 3 trainings of 160 epochs.")  # fmt: skip
        lines.append(text)

    if study:
        lines += ["", "## The accuracy model's fit (the paper's Table 4 at our scale)", "",
                  f"RMSE in top-1 points over the {len(points)} collected points; "
                  "'LOO' is the error on each point of a model fitted to the others (our "
                  "held-out error: every point is held out once). The full polynomial "
                  "(K+1)^3 coefficients is ridge-regularised (relative 1e-3).", "",
                  "| K | rank-1 params | rank-1 train | rank-1 LOO | full params | full train | "
                  "full LOO |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for row in study["fit"]:
            lines.append(f"| {row['K']} | {row['rank1_params']} | {row['rank1_train']:.3f} | "
                         f"{row['rank1_loo']:.3f} | {row['full_params']} | "
                         f"{row['full_train']:.3f} | {row['full_loo']:.3f} |")  # fmt: skip
        lines += [
            "",
            "## Is the optimum stable in K? (the paper's Fig. 4)",
            "",
            "| K | d* | w* | r* | predicted top-1 |",
            "|---|---|---|---|---|",
        ]
        for o in study["optima"]:
            lines.append(f"| {o['K']} | {o['d']:.3f} | {o['w']:.3f} | {o['r']:.3f} | "
                         f"{o['predicted']:.2f} |")  # fmt: skip
        lines += [
            "",
            "![fitted accuracy slices](dwr_slices.png)",
            "",
            "![fit along each axis, optimum against K](dwr_axes.png)",
        ]

    notes = ""
    if out.exists() and MARKER in out.read_text():
        notes = out.read_text().split(MARKER, 1)[1]
    lines += ["", MARKER]
    atomic_write_text(out, "\n".join(lines) + (notes if notes else "\n"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--collect", type=Path, default=COLLECT)
    args = parser.parse_args()
    points = load_points(args.collect, args.results / "dwr_points.json")
    arms = {}
    for f in sorted((args.results / "dwr_runs").glob("*.json")):
        record = json.loads(f.read_text())
        arms[record["arm"]] = record
    speed_file = args.results / "dwr_speed.json"
    speed = json.loads(speed_file.read_text()) if speed_file.exists() else None
    study = None
    if len(points) >= 5:
        x, y = arrays(points)
        study = map_study(x, y)
        atomic_write_text(args.results / "dwr_map.json", json.dumps(study, indent=1))
        opt = maximize(fit_separable(x, y, 3), TARGET).point
        slices_figure(x, y, opt, args.results / "dwr_slices.png")
        axes_figure(x, y, study, args.results / "dwr_axes.png")
    write_report(points, arms, study, speed, baseline_training_seconds(BASELINE_LOG),
                 args.results / "dwr.md")  # fmt: skip
    print(f"wrote {args.results / 'dwr.md'}")


if __name__ == "__main__":
    main()
