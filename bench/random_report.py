"""Tables and plots of the random-pruning experiments (bench/random_speed.py, and the
records of the removed bench/random_cifar.py).

Reads bench/results/random_runs/*.json and bench/results/random_speed.json;
writes the plots bench/results/random_candidates.png, random_criteria.png and
random_widths.png, and the generated tables into bench/results/random.md
between the markers `<!-- tables:begin -->` and `<!-- tables:end -->` (the
hand-written text around them is kept).

    .venv/bin/python bench/random_report.py
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from scipy.stats import spearmanr

from prunelab import create

RESULTS = Path("bench/results")
RUNS = RESULTS / "random_runs"
MD = RESULTS / "random.md"
BEGIN, END = "<!-- tables:begin -->", "<!-- tables:end -->"
CRITERIA = ["l1", "l2", "gm", "taylor", "es", "kl", "bn_scale", "random"]


def load_runs() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(RUNS.glob("*.json"))}


def load_speed() -> dict[str, Any]:
    path = RESULTS / "random_speed.json"
    return json.loads(path.read_text())["models"] if path.exists() else {}


def _speed(speed: dict[str, Any], run: str, key: str) -> str:
    entry = speed.get(run, {}).get(key)
    return f"{entry['speedup']:.2f}x" if entry else "n/a"


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def compare_table(runs: dict[str, dict[str, Any]], speed: dict[str, Any]) -> str:
    rows = sorted((r for r in runs.values() if r["run"].startswith("compare_")),
                  key=lambda r: (r["seed"], r["method"]))  # fmt: skip
    if not rows:
        return "_no comparison runs yet_\n"
    dense = rows[0]["dense_top1"]
    lines = [
        f"Dense ResNet-20: top-1 {dense:.2f}% (FLOPs 1.00, params 1.00).\n",
        "| method | seed | top-1 % | Δ vs dense | FLOPs | params | speedup infer b8 (NCHW) "
        "| infer b128 (NCHW) | train step b128 (ch.-last) | hold-out % before fine-tune |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = "random search (32 cand.)" if r["method"] == "random" else "uniform ratio"
        winner = r["info"].get("winner_score", r.get("uniform_holdout_score"))
        lines.append(
            f"| {name} | {r['seed']} | {r['top1']:.2f} | {r['top1'] - dense:+.2f} "
            f"| {r['flops_ratio']:.3f} | {r['params_ratio']:.3f} "
            f"| {_speed(speed, r['run'], 'infer_b8_nchw')} "
            f"| {_speed(speed, r['run'], 'infer_b128_nchw')} "
            f"| {_speed(speed, r['run'], 'train_b128_channels_last')} "
            f"| {'' if winner is None else f'{winner:.2f}'} |"
        )
    lines += [
        "",
        "| method | seeds | top-1 % mean ± sd | FLOPs | params |",
        "|---|---|---|---|---|",
    ]
    for method, label in (("random", "random search"), ("uniform", "uniform ratio")):
        sel = [r for r in rows if r["method"] == method]
        if sel:
            lines.append(
                f"| {label} | {len(sel)} | {_mean_sd([r['top1'] for r in sel])} "
                f"| {_mean_sd([r['flops_ratio'] for r in sel])} "
                f"| {_mean_sd([r['params_ratio'] for r in sel])} |"
            )
    return "\n".join(lines) + "\n"


def _scores(run: dict[str, Any]) -> list[float]:
    return [c["score"] for c in run["info"]["candidates"]]


def criteria_table(runs: dict[str, dict[str, Any]]) -> str:
    rows = [runs[f"criteria_{c}_s0"] for c in CRITERIA if f"criteria_{c}_s0" in runs]
    if not rows:
        return "_no criteria runs yet_\n"
    dense = rows[0]["dense_top1"]
    ref = _scores(runs["criteria_l1_s0"]) if "criteria_l1_s0" in runs else None
    lines = [
        "| criterion | top-1 % after fine-tune | Δ vs dense | FLOPs | params "
        "| hold-out % of winner | median of 32 | worst of 32 | rank corr. with l1 "
        "| search min |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| dense baseline | {dense:.2f} | | 1.000 | 1.000 | | | | | |",
    ]
    for r in rows:
        s = _scores(r)
        rho = spearmanr(s, ref).statistic if ref is not None and len(ref) == len(s) else None
        lines.append(
            f"| {r['options']['criterion']} | {r['top1']:.2f} | {r['top1'] - dense:+.2f} "
            f"| {r['flops_ratio']:.3f} | {r['params_ratio']:.3f} | {max(s):.2f} "
            f"| {statistics.median(s):.2f} | {min(s):.2f} "
            f"| {'' if rho is None else f'{rho:.2f}'} "
            f"| {r['info']['search_seconds'] / 60:.1f} |"
        )
    return "\n".join(lines) + "\n"


def search_table(runs: dict[str, dict[str, Any]]) -> str:
    rows = [r for r in runs.values() if r["method"] == "random"]
    if not rows:
        return ""
    lines = [
        "| run | candidates | draws | acceptance | duplicates | FLOPs of candidates (min-max) "
        "| search min | fine-tune min |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        info = r["info"]
        flops = [c["flops_ratio"] for c in info["candidates"]]
        tune = sum(h.get("time", 0.0) for h in r["history"]) / 60
        lines.append(
            f"| {r['run']} | {len(flops)} | {info['drawn']} | {info['acceptance_rate']:.2f} "
            f"| {info['duplicates']} | {min(flops):.3f}-{max(flops):.3f} "
            f"| {info['search_seconds'] / 60:.1f} | {tune:.1f} |"
        )
    return "\n".join(lines) + "\n"


def plot_candidates(runs: dict[str, dict[str, Any]], path: Path) -> bool:
    """The paper's Fig. 3 at our scale: candidate scores against FLOPs (and params)."""
    sel = [r for r in runs.values() if r["method"] == "random" and r["run"].startswith("compare")]
    sel += [runs[k] for k in ("criteria_l1_s0",) if k in runs and not sel]
    if not sel:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key, label in zip(axes, ("flops_ratio", "params_ratio"),
                              ("FLOPs (MACs) / dense", "params / dense"), strict=True):  # fmt: skip
        for r in sel:
            cands = r["info"]["candidates"]
            tag = f"seed {r['seed']}: {len(cands)} candidates"
            pts = ax.scatter([c[key] for c in cands], [c["score"] for c in cands], s=22,
                             alpha=0.75, label=tag)  # fmt: skip
            w = cands[r["info"]["winner"]]
            ax.scatter([w[key]], [w["score"]], marker="*", s=240, color=pts.get_facecolor(),
                       edgecolor="black", label=f"seed {r['seed']}: winner")  # fmt: skip
        uni = runs.get("compare_uniform_l1_s0", {})
        if uni.get("uniform_holdout_score") is not None:
            ax.scatter([uni[key]], [uni["uniform_holdout_score"]], marker="D", s=70,
                       color="black", label="uniform-ratio plan")  # fmt: skip
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("hold-out top-1 % after BN recalibration")
    axes[1].legend(fontsize=8)
    fig.suptitle("ResNet-20 CIFAR-10: random architectures at 50% FLOPs, l1 channels")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_criteria(runs: dict[str, dict[str, Any]], path: Path) -> bool:
    rows = [(c, runs[f"criteria_{c}_s0"]) for c in CRITERIA if f"criteria_{c}_s0" in runs]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    data = [_scores(r) for _, r in rows]
    ax.boxplot(data, tick_labels=[c for c, _ in rows], showfliers=True)
    for i, s in enumerate(data, start=1):
        ax.scatter(np.full(len(s), i) + np.linspace(-0.15, 0.15, len(s)), s, s=8, alpha=0.5)
    ax.set_ylabel("hold-out top-1 % after BN recalibration")
    ax.set_title("The same 32 architectures, channels chosen by each criterion")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_widths(runs: dict[str, dict[str, Any]], path: Path) -> bool:
    """Kept output channels per convolution: dense, uniform and the random winner (seed 0)."""
    rnd, uni = runs.get("compare_random_l1_s0"), runs.get("compare_uniform_l1_s0")
    if rnd is None:
        return False
    dense = {n: m.out_channels for n, m in create("resnet20").named_modules()
             if hasattr(m, "out_channels")}  # fmt: skip
    names = [n for n in dense if n in rnd["widths"]]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.bar(x - 0.27, [dense[n] for n in names], 0.27, label="dense", color="#bbbbbb")
    if uni is not None:
        ax.bar(x, [uni["widths"][n] for n in names], 0.27, label="uniform (l1)")
    ax.bar(x + 0.27, [rnd["widths"][n] for n in names], 0.27, label="random search winner")
    ax.set_xticks(x, names, rotation=75, fontsize=7)
    ax.set_ylabel("output channels")
    ax.set_title("ResNet-20 at 50% FLOPs: kept channels per convolution (seed 0)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main() -> None:
    runs = load_runs()
    speed = load_speed()
    plots = {
        "random_candidates.png": plot_candidates(runs, RESULTS / "random_candidates.png"),
        "random_criteria.png": plot_criteria(runs, RESULTS / "random_criteria.png"),
        "random_widths.png": plot_widths(runs, RESULTS / "random_widths.png"),
    }
    tables = "\n".join([
        BEGIN,
        "### Random search vs uniform ratios (l1, same fine-tuning)\n",
        compare_table(runs, speed),
        "### Criteria under the random search (the same 32 architectures each)\n",
        criteria_table(runs),
        "### Search statistics\n",
        search_table(runs),
        "Plots: " + ", ".join(f"![{k}]({k})" for k, ok in plots.items() if ok),
        END,
    ])  # fmt: skip
    text = MD.read_text() if MD.exists() else f"# random\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    MD.write_text(head + tables + tail)
    print(f"wrote {MD} ({len(runs)} runs, plots: {[k for k, ok in plots.items() if ok]})")


if __name__ == "__main__":
    main()
