"""Tables and plots of the CHEX CIFAR-10 runs (bench/chex_cifar.py, removed after
67402b9: its arms are compare configs now; bench/chex_timing.py).

Writes bench/results/chex_exploration.png (each layer's alive channels over
training), chex_layers.png (final width of every conv layer per arm) and
chex_curves.png (test top-1 per epoch), and prints the markdown tables that
bench/results/chex.md quotes.

    .venv/bin/python bench/chex_report.py [--runs bench/results/chex_runs]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ARMS = ["dense", "chex", "uniform", "random"]
ABLATIONS = ["abl_sample", "abl_topk", "abl_gradual", "abl_shortcuts"]
LABELS = {
    "dense": "dense (15 ep)",
    "chex": "CHEX (15 ep from scratch, probabilistic regrow)",
    "uniform": "uniform l1 (10 ep dense + prune + 5 ep)",
    "random": "random search (10 ep dense + prune + 5 ep)",
    "abl_sample": "CHEX, probabilistic regrow (default)",
    "abl_topk": "CHEX, deterministic top-eps regrow",
    "abl_gradual": "gradual pruning, no regrow",
    "abl_shortcuts": "CHEX, shortcut groups pruned too",
}


def load(runs: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for p in sorted(runs.glob("*.json")):
        out[p.stem] = json.loads(p.read_text())
    return out


def _stage_color(name: str) -> str:
    return {"layer1": "tab:blue", "layer2": "tab:orange", "layer3": "tab:green"}.get(
        name.split(".")[0], "tab:gray"
    )


def plot_exploration(rec: dict[str, Any], path: Path) -> None:
    """Each pruned layer's alive channel count per epoch, and the alive FLOPs."""
    info, history = rec["info"], rec["history"]
    names, sizes = info["groups"], info["sizes"]
    # the mask changes at epoch starts: the counts logged for epoch e held during [e - 1, e)
    epochs = [h["epoch"] - 1 for h in history] + [history[-1]["epoch"]]
    counts = {n: [h["chex_alive"][n] for h in history] for n in names}
    for n in names:
        counts[n].append(counts[n][-1])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    for n, size in zip(names, sizes, strict=True):
        ax.step(epochs, [c / size for c in counts[n]], where="post", color=_stage_color(n),
                alpha=0.8, label=f"{n} ({size})")  # fmt: skip
    ax.axvline(info["t_max"], color="k", ls="--", lw=1)
    ax.text(info["t_max"], 1.02, " T_max (mask frozen)", fontsize=8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("alive channels / layer width")
    ax.set_ylim(0, 1.1)
    ax.set_title("CHEX channel exploration, ResNet-20 on CIFAR-10")
    ax.legend(fontsize=7, ncol=3, loc="lower left")
    flops = [h["chex_flops"] for h in history]
    flops.append(flops[-1])
    ax2.step(epochs, flops, where="post", label="alive sub-model FLOPs / dense")
    upd = [e for e in info["timeline"] if e["t"] > 0]
    ax2.plot([e["t"] for e in upd], [e["delta"] for e in upd], "o-", ms=3, label="delta_t")
    ax2.axhline(info["target"], color="k", ls=":", lw=1, label="target")
    ax2.set_xlabel("epoch")
    ax2.set_ylim(0, 1.05)
    ax2.legend(fontsize=8)
    ax2.set_title(f"training FLOPs: {rec['info']['train_flops_ratio']:.2f} x dense")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_layers(recs: dict[str, dict[str, Any]], path: Path) -> None:
    """Final output width of every conv layer, per arm."""
    arms = [a for a in ARMS if a in recs and "widths" in recs[a]]
    if not arms:
        return
    names = list(recs[arms[0]]["widths"])
    dense_w = recs["dense"]["widths"] if "dense" in recs and "widths" in recs["dense"] else None
    fig, ax = plt.subplots(figsize=(13, 4.5))
    width = 0.8 / (len(arms) + 1)
    xs = range(len(names))
    if dense_w is None:  # the widths of the unpruned ResNet-20
        dense_w = {n: 16 if n.startswith(("conv1", "layer1")) else 32 if n.startswith(
            "layer2") else 64 for n in names}  # fmt: skip
    ax.bar([x - 0.4 + width / 2 for x in xs], [dense_w[n] for n in names], width,
           color="lightgray", label="dense")  # fmt: skip
    for k, arm in enumerate(arms, start=1):
        w = recs[arm]["widths"]
        ax.bar([x - 0.4 + width * (k + 0.5) for x in xs], [w.get(n, 0) for n in names], width,
               label=f"{arm} ({100 * recs[arm]['cost']['flops']:.0f}% FLOPs)")  # fmt: skip
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=70, fontsize=7)
    ax.set_ylabel("output channels")
    ax.set_title("Final width of each conv layer, ResNet-20 at 50% FLOPs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(recs: dict[str, dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm in ARMS:
        if arm not in recs:
            continue
        h = [r for r in recs[arm]["history"] if "test_top1" in r]
        offset = 10 if arm in ("uniform", "random") else 0
        ax.plot([r["epoch"] + offset for r in h], [r["test_top1"] for r in h], "o-", ms=3,
                label=LABELS[arm])  # fmt: skip
    ax.set_xlabel("epoch (total, including the dense epochs before pruning)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_ylim(40, 95)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _steps(rec: dict[str, Any]) -> int | None:
    history = rec.get("history") or []
    return history[-1].get("step") if history else None


def _same_length(recs: dict[str, dict[str, Any]], a: str, b: str) -> bool:
    """Whether two arms trained for the same number of steps (or `b` has not run yet)."""
    return b not in recs or _steps(recs[a]) == _steps(recs[b])


def tables(recs: dict[str, dict[str, Any]]) -> str:
    lines = []
    dense = recs.get("dense", {}).get("top1")
    head = "| arm | top-1 (%) | gap to dense | FLOPs | params | train FLOPs | wall (min) |"
    lines += [head, "|---|---|---|---|---|---|---|"]
    if "abl_sample" not in recs and "chex" in recs and _same_length(recs, "chex", "abl_topk"):
        recs = {**recs, "abl_sample": recs["chex"]}  # the main CHEX run is the default arm
    for arm in ARMS + ABLATIONS:
        if arm == "abl_sample":
            lines += ["", "Ablations (the same epochs and steps as the CHEX run):", "",
                      head, "|---|---|---|---|---|---|---|"]  # fmt: skip
        if arm not in recs:
            lines.append(f"| {LABELS[arm]} | not run | | | | | |")
            continue
        r = recs[arm]
        gap = f"{r['top1'] - dense:+.2f}" if dense is not None else ""
        tf = r.get("info", {}).get("train_flops_ratio")
        if arm in ("uniform", "random"):  # 10 dense epochs, then 5 on the pruned model
            tf = (10 + 5 * r["cost"]["flops"]) / 15
        lines.append(
            f"| {LABELS[arm]} | {r['top1']:.2f} | {gap} | {r['cost']['flops']:.3f} | "
            f"{r['cost']['params']:.3f} | {tf if tf is not None else 1.0:.2f} | "
            f"{r['wall_seconds'] / 60:.0f} |"
        )
    if "timing" in recs:
        t = recs["timing"]
        lines += [
            "", "| | dense | CHEX (masked) | ratio |", "|---|---|---|---|",
            f"| ms / training step ({t['threads']} threads) | {t['dense_step_ms']:.0f} | "
            f"{t['chex_step_ms']:.0f} | {t['step_ratio']:.3f} |",
            f"| mask apply + grad mask, ms / step | | {t['mask_ms_per_step']:.2f} | |",
            f"| one prune-regrow update, s | | {t['update_s']:.2f} | |",
            f"| full CIFAR-10 epoch (390 steps + 1 update), s | {t['epoch_dense_s']:.0f} | "
            f"{t['epoch_chex_s']:.0f} | {t['epoch_ratio']:.3f} |",
        ]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="bench/results/chex_runs")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    recs = load(Path(args.runs))
    out = Path(args.out)
    if "chex" in recs:
        plot_exploration(recs["chex"], out / "chex_exploration.png")
    if "abl_shortcuts" in recs:
        plot_exploration(recs["abl_shortcuts"], out / "chex_exploration_shortcuts.png")
    plot_layers(recs, out / "chex_layers.png")
    plot_curves(recs, out / "chex_curves.png")
    print(tables(recs))


if __name__ == "__main__":
    main()
