"""Tables and plots of the BWCP experiments (bench/bwcp_cifar.py, bench/bwcp_timing.py).

Reads bench/results/bwcp_runs/*.json and bench/results/bwcp_timing.json, writes
bench/results/bwcp_tables.md (the tables bench/results/bwcp.md quotes) and
bench/results/bwcp_tradeoff.png, bwcp_fig3.png, bwcp_widths.png, bwcp_curves.png;
full-schedule arms from bench/results/bwcp_full/*.json add a table and bwcp_full_curves.png.

    .venv/bin/python bench/bwcp_report.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from prunelab.train import read_metrics

RESULTS = Path("bench/results")
RUNS = RESULTS / "bwcp_runs"
# Arms run at the dense baseline's full schedule (bwcp_cifar.py --epochs 30 --results ...),
# compared with the baseline's own log (same recipe: batch 128, cosine, 30 epochs).
FULL = RESULTS / "bwcp_full"
BASELINE_LOG = RESULTS / "baseline_resnet20_metrics.jsonl"
MAIN = [
    "dense",
    "lam_1",
    "lam_8",
    "lam_32",
    "lam_128",
    "target50",
    "target50_lam32",
    "inner_lam_8",
    "inner_target50",
    "target50_ramp",
    "inner_target50_ramp",
]
ABLATIONS = ["abl_full", "abl_bw_only", "abl_loss_only", "abl_no_bw", "abl_no_loss", "abl_hard_st"]
LABELS = {
    "dense": "dense BN (no pruning)",
    "lam_1": "BWCP, paper λ (4e-5, 8e-5)",
    "lam_8": "BWCP, λ x 8",
    "lam_32": "BWCP, λ x 32",
    "lam_128": "BWCP, λ x 128",
    "target50": "BWCP, FLOPs target 50%",
    "target50_lam32": "BWCP, FLOPs target 50%, λ starting at x 32",
    "inner_lam_8": "BWCP, λ x 8, residual streams unmasked",
    "inner_target50": "BWCP, FLOPs target 50%, residual streams unmasked",
    "target50_ramp": "BWCP, FLOPs target 50%, aim ramped over half the schedule",
    "inner_target50_ramp": "BWCP, FLOPs target 50%, ramped aim, residual streams unmasked",
    "abl_full": "full BWCP (BW + loss + Gumbel)",
    "abl_bw_only": "BW only (no masks, no loss)",
    "abl_loss_only": "sparsity loss only (BN, no masks)",
    "abl_no_bw": "without BW (BN + masks + loss)",
    "abl_no_loss": "without the loss (BW + masks)",
    "abl_hard_st": "straight-through hard masks",
}


def load(folder: Path = RUNS) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def epoch_seconds(r: dict[str, Any]) -> float:
    times = [h["time"] for h in r["history"]]
    return mean(times[1:] if len(times) > 1 else times)


def row(arm: str, r: dict[str, Any], dense_top1: float | None) -> str:
    info = r.get("info", {})
    lam = (
        f"{info['lambda1']:.2e} / {info['lambda2']:.2e}"
        if "lambda1" in info and r.get("options", {}).get("lambda1", 0) > 0
        else "-"
    )
    delta = f"{r['top1'] - dense_top1:+.2f}" if dense_top1 is not None else ""
    thr = info.get("threshold", 0.5)
    extra = []
    if "unmasked_top1" in info:
        extra.append(f"unmasked net {info['unmasked_top1']:.2f}%")
    if thr != 0.5:
        extra.append(f"threshold moved to {thr:.3f}")
    corr = mean(list(r.get("correlation", {}).values()))
    return (
        f"| {LABELS.get(arm, arm)} | {lam} | {r['top1']:.2f} | {delta} | {r['flops_ratio']:.3f} | "
        f"{r['params_ratio']:.3f} | {corr:.3f} | {epoch_seconds(r):.0f} | {'; '.join(extra)} |"
    )


HEADER = (
    "| arm | final λ1 / λ2 | top-1 % | Δ vs dense | FLOPs | params | corr. score | s/epoch "
    "| notes |\n|---|---|---|---|---|---|---|---|---|"
)


def tables(runs: dict[str, dict[str, Any]]) -> str:
    out = []
    dense = runs.get("dense", {}).get("top1")
    out.append("### λ sweep and FLOPs target (ResNet-20, CIFAR-10 JPEG)\n")
    out.append(HEADER)
    out += [row(a, runs[a], dense) for a in MAIN if a in runs]
    # Every arm that steered λ to a target, as its options say (not a list kept by hand).
    steered = [a for a in MAIN if runs.get(a, {}).get("options", {}).get("target_control")]
    for arm in steered:
        info = runs[arm]["info"]
        tl = info.get("control_timeline", [])
        out.append(
            f"\n{LABELS[arm]}: the multiplier update ran {len(tl)} times; the hard-mask "
            f"model was at {info['controller_ratio']:.3f} of the dense FLOPs when training ended "
            f"(threshold 0.5), final λ multiplier {info['lambda_scale']:.2f}; exported model "
            f"{runs[arm]['flops_ratio']:.3f} (threshold {info.get('threshold', 0.5):.3f})."
        )
    full = runs.get("abl_full", {}).get("top1")
    out.append("\n### Ablations (Table 3 at our scale: a third of the steps per epoch)\n")
    out.append(HEADER.replace("Δ vs dense", "Δ vs full"))
    out += [row(a, runs[a], full) for a in ABLATIONS if a in runs]
    out.append("\n### Export check\n")
    out.append("| arm | eval-mode BWCP top-1 | exported top-1 | max |out diff| | reference max |")
    out.append("|---|---|---|---|---|")
    for arm, r in runs.items():
        info = r.get("info")
        if info:
            out.append(
                f"| {arm} | {info['eval_top1']:.2f} | {r['top1']:.2f} | "
                f"{info['export_max_diff']:.2e} | {info['export_reference_max']:.1f} |"
            )
    timing = RESULTS / "bwcp_timing.json"
    if timing.exists():
        t = json.loads(timing.read_text())
        out.append(f"\n### Training step time (batch {t['batch']}, {t['threads']} threads)\n")
        out.append("| variant | median ms | vs BN (NCHW) | vs best BN |\n|---|---|---|---|")
        best = min(t["median_ms"]["bn"], t["median_ms"]["bn_cl"])
        for k, v in t["median_ms"].items():
            out.append(f"| {k} | {v:.1f} | {v / t['median_ms']['bn']:.2f}x | {v / best:.2f}x |")
    return "\n".join(out) + "\n"


def plot_tradeoff(runs: dict[str, dict[str, Any]]) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    sweep = [a for a in ("lam_1", "lam_8", "lam_32", "lam_128") if a in runs]
    if sweep:
        pts = sorted((runs[a]["flops_ratio"], runs[a]["top1"], a) for a in sweep)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label="BWCP, λ sweep")
        for x, y, a in pts:
            ax.annotate(a.replace("lam_", "λx"), (x, y), textcoords="offset points", xytext=(4, 4))
    marks = {"target50": "s", "target50_lam32": "x", "inner_lam_8": "^", "inner_target50": "D",
             "target50_ramp": "P", "inner_target50_ramp": "*"}  # fmt: skip
    for arm, marker in marks.items():
        if arm in runs:
            r = runs[arm]
            ax.plot([r["flops_ratio"]], [r["top1"]], marker, label=LABELS[arm])
    if "dense" in runs:
        ax.axhline(runs["dense"]["top1"], color="gray", ls="--", label="dense BN, same epochs")
    ax.set_xlabel("FLOPs of the exported model / dense")
    ax.set_ylabel("CIFAR-10 test top-1 (%)")
    ax.set_title("ResNet-20, BWCP accuracy vs FLOPs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "bwcp_tradeoff.png", dpi=120)
    plt.close(fig)


def plot_fig3(runs: dict[str, dict[str, Any]]) -> None:
    bw = runs.get("abl_no_loss") or runs.get("lam_32")
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    if bw:
        xs = [p for v in bw["probabilities_bn"].values() for p in v]
        ys = [p for v in bw["probabilities"].values() for p in v]
        axes[0].scatter(xs, ys, s=4, alpha=0.4)
        axes[0].plot([0, 1], [0, 1], "k--", lw=0.8)
        axes[0].set_xlabel("P from γ, β alone (what BN gives)")
        axes[0].set_ylabel("P after BW (from Σ_N^-1/2 γ, Σ_N^-1/2 β)")
        axes[0].set_title(f"activation probability, same channels ({bw['arm']})")
    pairs = [(a, k) for a, k in (("abl_full", "BW (full BWCP)"), ("abl_no_bw", "BN (no BW)"))
             if a in runs]  # fmt: skip
    for arm, label in pairs:
        vals = [p for v in runs[arm]["probabilities"].values() for p in v]
        axes[1].hist(vals, bins=40, range=(0, 1), alpha=0.5, label=label)
    axes[1].set_xlabel("activation probability P")
    axes[1].set_ylabel("channels")
    axes[1].set_title("P of all channels after training")
    axes[1].legend(fontsize=8)
    series = [(a, LABELS[a]) for a in ("dense", "abl_bw_only", "abl_full", "abl_no_bw")
              if a in runs]  # fmt: skip
    width = 0.8 / max(len(series), 1)
    for i, (arm, label) in enumerate(series):
        corr = runs[arm]["correlation"]
        names = list(corr)
        axes[2].bar([j + i * width for j in range(len(names))], list(corr.values()), width,
                    label=f"{label}: mean {mean(list(corr.values())):.3f}")  # fmt: skip
    axes[2].set_xlabel("norm layer (network order)")
    axes[2].set_ylabel("mean |corr| between channels (16-groups)")
    axes[2].set_title("channel-correlation score")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "bwcp_fig3.png", dpi=120)
    plt.close(fig)


def plot_widths(runs: dict[str, dict[str, Any]]) -> None:
    fig, ax = plt.subplots(figsize=(8, 4))
    for arm in ("lam_1", "lam_8", "lam_32", "lam_128", "target50", "inner_target50"):
        if arm not in runs:
            continue
        widths = runs[arm]["widths"]
        names = [n for n in widths if n != "conv1"]
        ax.plot(range(len(names)), [widths[n][1] for n in names], "o-", ms=3, label=LABELS[arm])
    dense_w = [16] * 7 + [32] * 7 + [64] * 7
    ax.plot(range(len(dense_w)), dense_w, "k:", label="dense (downsample convs inline)")
    ax.set_xlabel("convolution (network order)")
    ax.set_ylabel("output channels kept")
    ax.set_title("Per-layer widths of the exported ResNet-20s")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "bwcp_widths.png", dpi=120)
    plt.close(fig)


def full_length(full: dict[str, dict[str, Any]], base: list[dict[str, Any]]) -> str:
    """Table of the full-schedule arms against the dense baseline's epoch records `base`."""
    if not full:
        return ""
    dense = base[-1]["test_top1"] if base else None
    epochs = len(next(iter(full.values()))["history"])
    out = [f"\n### Full schedule ({epochs} epochs, the dense baseline's recipe)\n", HEADER]
    if base:  # its epoch times were taken on a shared machine: not comparable, left out
        out.append(f"| dense baseline (bench/train_baseline.py) | - | {dense:.2f} | | 1.000 | "
                   "1.000 | - | - | the committed checkpoint's run |")  # fmt: skip
    out += [row(a, r, dense) for a, r in full.items()]
    for arm, r in full.items():
        info = r["info"]
        out.append(
            f"\n{LABELS.get(arm, arm)}: hard-mask FLOPs {info['controller_ratio']:.3f} when "
            f"training ended, λ multiplier {info['lambda_scale']:.2f}, exported model "
            f"{r['flops_ratio']:.3f} FLOPs (threshold {info.get('threshold', 0.5):.3f})."
        )
    return "\n".join(out) + "\n"


def plot_curves(
    runs: dict[str, dict[str, Any]], out: Path, baseline: list[dict[str, Any]] | None = None
) -> None:
    """Test top-1 and hard-mask / expected FLOPs per epoch of each arm (and a dense log's)."""
    if not runs:
        return
    fig, (acc, flops) = plt.subplots(1, 2, figsize=(11, 4))
    if baseline:
        acc.plot([r["epoch"] for r in baseline], [r["test_top1"] for r in baseline], "k-",
                 label="dense baseline")  # fmt: skip
    for arm, r in runs.items():
        h = r["history"]
        ep = [e["epoch"] for e in h]
        acc.plot(ep, [e.get("test_top1", float("nan")) for e in h], "o-", ms=3,
                 label=LABELS.get(arm, arm))  # fmt: skip
        if "bwcp_hard_flops" in h[0]:
            flops.plot(ep, [e["bwcp_hard_flops"] for e in h], "o-", ms=3, label=f"{arm} hard")
            flops.plot(ep, [e["bwcp_expected_flops"] for e in h], "x:", label=f"{arm} expected")
    acc.set_xlabel("epoch")
    acc.set_ylabel("test top-1 % (eval mode: hard masks)")
    acc.legend(fontsize=7, loc="lower right")
    flops.set_xlabel("epoch")
    flops.set_ylabel("FLOPs / dense")
    flops.set_title("hard-mask and expected FLOPs during training")
    flops.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    runs = load()
    full = load(FULL)
    base = read_metrics(BASELINE_LOG, kind="epoch") if BASELINE_LOG.exists() else []
    text = tables(runs) + full_length(full, base)
    (RESULTS / "bwcp_tables.md").write_text(text)
    print(text)
    plot_tradeoff(runs)
    plot_fig3(runs)
    plot_widths(runs)
    plot_curves({a: runs[a] for a in MAIN if a in runs}, RESULTS / "bwcp_curves.png")
    plot_curves(full, RESULTS / "bwcp_full_curves.png", base)


if __name__ == "__main__":
    main()
