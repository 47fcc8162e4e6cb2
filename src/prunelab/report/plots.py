"""Plots a person would rather look at than read: channels per layer, curves, accuracy vs FLOPs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt


def kept_channels(dense: dict[str, int], pruned: dict[str, int], path: Path, title: str) -> Path:
    """Bar chart of output channels per layer, dense behind pruned (0 = layer removed)."""
    names = list(dense)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(names)), 3.6))
    xs = range(len(names))
    ax.bar(xs, [dense[n] for n in names], color="#d0d7de", label="dense")
    ax.bar(xs, [pruned.get(n, 0) for n in names], color="#1f77b4", label="pruned")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylabel("output channels")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def curves(history: list[dict[str, Any]], path: Path, title: str, metric: str = "top1",
           label: str = "top-1") -> Path | None:
    """Train loss and the test `metric` (the task's headline) per epoch; None without epochs."""
    epochs = [h for h in history if "train_loss" in h or f"test_{metric}" in h]
    if not epochs:
        return None
    xs = list(range(1, len(epochs) + 1))
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot(xs, [h.get("train_loss") for h in epochs], marker="o", label="train")
    if any("test_loss" in h for h in epochs):
        a.plot(xs, [h.get("test_loss") for h in epochs], marker="o", label="test")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    if any(f"train_{metric}" in h for h in epochs):
        b.plot(xs, [h.get(f"train_{metric}") for h in epochs], marker="o", label="train")
    b.plot(xs, [h.get(f"test_{metric}") for h in epochs], marker="o", label="test")
    b.set_xlabel("epoch")
    b.set_ylabel(f"{label} (%)")
    b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def accuracy_vs_flops(points: list[dict[str, Any]], path: Path, title: str,
                      label: str = "top-1") -> Path:
    """Scatter of the headline metric (`label`) against FLOPs; points: {label, flops, top1}."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for p in points:
        if p.get("top1") is None:
            continue
        ax.scatter(p["flops"] / 1e6, p["top1"], s=40)
        ax.annotate(p["label"], (p["flops"] / 1e6, p["top1"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")  # fmt: skip
    ax.set_xlabel("FLOPs (MACs, millions)")
    ax.set_ylabel(f"{label} (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
