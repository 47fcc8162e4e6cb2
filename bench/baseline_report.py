"""Compare dense ResNet-20 baseline runs (bench/train_baseline.py) epoch by epoch.

    python bench/baseline_report.py bench/results/baseline_resnet20_metrics.jsonl \
        bench/results/baseline_resnet20_e40_metrics.jsonl

Prints each run's final and best test top-1 and writes one plot of test top-1
and train loss against the fraction of the schedule done, so runs of different
lengths line up at the same learning-rate phase. Weight averages a run logged
(`--ema`, `--swa-start`) are drawn dashed in the run's colour.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from prunelab.train import read_metrics

OUT = Path("bench/results/baseline_resnet20_compare.png")
AVERAGE_STYLES = (":", "-.", (0, (5, 1, 1, 1, 1, 1)))


def read_run(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The run's training and data settings and its epoch records (a stopped run has fewer)."""
    records = read_metrics(path)
    starts = [r for r in records if r.get("kind") == "start"]
    config = dict(starts[0]["config"]) if starts else {}
    data = starts[0].get("data") if starts else None
    # logs written before the data description was recorded had no cutout
    config["cutout"] = data.get("cutout", 0) if isinstance(data, dict) else 0
    return config, [r for r in records if r.get("kind") == "epoch"]


def weight_averages(rows: list[dict[str, Any]]) -> list[str]:
    """Names of the weight averages logged beside the raw weights (e.g. "ema0.999")."""
    suffix = "_test_top1"
    return sorted({k[: -len(suffix)] for r in rows for k in r
                   if k.endswith(suffix) and k != "test_top1"})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--note", action="append", default=[], metavar="N=TEXT",
                        help="add TEXT to the label of the N-th log (1-based), e.g. for "
                        "settings a log predating the data record does not show")
    args = parser.parse_args()
    notes: dict[int, str] = {}
    for item in args.note:
        index, _, text = item.partition("=")
        notes[int(index)] = text
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(9, 3.4))
    for number, path in enumerate(args.logs, start=1):
        config, rows = read_run(path)
        if not rows:
            raise SystemExit(f"{path}: no epoch records (is it a prunelab metrics.jsonl?)")
        n = int(config.get("epochs", len(rows)))
        xs = [r["epoch"] / n for r in rows]
        label = f"{number}: {n} epochs, batch {config.get('batch_size', '?')}"
        label += f", lr {config.get('lr', '?')}"
        if config["cutout"]:
            label += f", cutout {config['cutout']}"
        if config.get("label_smoothing"):
            label += f", label smoothing {config['label_smoothing']}"
        if config.get("no_decay_bn_bias"):
            label += ", no decay on BN/bias"
        if config.get("seed"):
            label += f", seed {config['seed']}"
        if number in notes:
            label += f", {notes[number]}"
        if len(rows) < n:
            label += f" (stopped after {len(rows)})"
        (line,) = acc.plot(xs, [r["test_top1"] for r in rows], "o-", ms=3, label=label)
        loss.plot(xs, [r["train_loss"] for r in rows], "o-", ms=3, label=label)
        best = max(rows, key=lambda r: r["test_top1"])
        print(f"{path}: {len(rows)}/{n} epochs, last test top-1 {rows[-1]['test_top1']:.2f}%, "
              f"best {best['test_top1']:.2f}% (epoch {best['epoch']}), "
              f"final train top-1 {rows[-1]['train_top1']:.2f}%")  # fmt: skip
        # bench/train_baseline.py --ema / --swa-start: the run's colour, one dash style each
        for average, style in zip(weight_averages(rows), AVERAGE_STYLES, strict=False):
            key = f"{average}_test_top1"
            points = [(r["epoch"] / n, r[key]) for r in rows if key in r]
            acc.plot(*zip(*points, strict=True), linestyle=style, color=line.get_color(), lw=1.5,
                     label=f"  weight average {average} of run {number}")
            print(f"    weight average {average}: last test top-1 {points[-1][1]:.2f}% "
                  f"(logged from epoch {next(r['epoch'] for r in rows if key in r)})")
    acc.set_ylim(70, 90)
    acc.axhline(88, color="gray", ls="--", lw=1, label="target 88%")
    for ax, name in ((acc, "test top-1 (%)"), (loss, "train loss (with smoothing, if any)")):
        ax.set_xlabel("fraction of the schedule")
        ax.set_ylabel(name)
    fig.suptitle("ResNet-20, CIFAR-10 (JPEG): cosine-schedule baselines")
    fig.tight_layout()
    # one legend under both panels (they share the colours), clear of the curves;
    # the tight bounding box grows the saved image to hold it
    handles, labels = acc.get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 0), ncol=2)
    fig.savefig(args.out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
