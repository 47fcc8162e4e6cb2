"""Side-by-side timings of the DWR arms against the dense ResNet-20: bench/results/dwr_speed.json.

Each model runs at its own input size (a resolution-pruned model on smaller
images) in both memory layouts, all interleaved in one run; a model's time
is its faster layout, and its speedup is the dense model's best time over
its own. Inference at batch 8 and 64, one training step (forward, backward,
SGD) at batch 128. Needs the whole machine:

    PRUNELAB_SLOT_ALL=1 bench/slot .venv/bin/python bench/dwr_speed.py
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

import prunelab
from prunelab.atomic import atomic_write_text
from prunelab.metrics import compare_latency, compare_train_step

CHECKPOINT = Path("src/prunelab/checkpoints/resnet20_cifar10_jpg.pt")
RUNS = Path("runs/dwr_bench")
OUT = Path("bench/results/dwr_speed.json")
ARMS = ["depth", "width", "resolution", "3d"]


def best_of_layouts(timer, models, inputs, **kwargs) -> dict[str, float]:
    """Median ms of each model in its faster layout (both layouts timed interleaved)."""
    names = {f"{n}/{cl}": (n, cl) for n in models for cl in (False, True)}
    stats = timer(
        {k: models[n] for k, (n, _) in names.items()},
        {k: inputs[n] for k, (n, _) in names.items()},
        channels_last={k: cl for k, (_, cl) in names.items()},
        **kwargs,
    )
    best: dict[str, float] = {}
    for k, (n, _) in names.items():
        best[n] = min(best.get(n, float("inf")), stats[k].median_ms)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--runs", type=Path, default=RUNS)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    threads = int(os.environ.get("PRUNELAB_THREADS", "2"))
    models = {"dense": prunelab.load(args.checkpoint)}
    for arm in ARMS:
        path = args.runs / f"arm_{arm}.pt"
        if path.exists():
            models[arm] = prunelab.load(path)
    sizes = {n: tuple(getattr(m, "prunelab_input_size", (3, 32, 32))) for n, m in models.items()}
    result: dict[str, dict[str, float] | str] = {}
    times = {}
    for batch in (8, 64):
        inputs = {n: torch.randn(batch, *sizes[n]) for n in models}
        times[f"infer_b{batch}"] = best_of_layouts(
            compare_latency, models, inputs, repeats=args.repeats, threads=threads
        )
    inputs = {n: torch.randn(128, *sizes[n]) for n in models}
    targets = torch.randint(0, 10, (128,))
    times["train_b128"] = best_of_layouts(
        compare_train_step, models, inputs, targets=targets, repeats=max(5, args.repeats // 2),
        threads=threads,
    )  # fmt: skip
    for n in models:
        result[n] = {"input": list(sizes[n])}
        for key, t in times.items():
            result[n][f"{key}_ms"] = t[n]
            result[n][key] = times[key]["dense"] / t[n]
    result["_note"] = (
        f"{threads} threads, median of {args.repeats} interleaved runs, each model in its "
        "faster memory layout (NCHW or channels_last), at its own input size; speedup = dense "
        "time / model time (inference at batch 8 and 64, one SGD training step at batch 128)."
    )
    atomic_write_text(args.out, json.dumps(result, indent=1))
    for n in models:
        r = result[n]
        print(f"{n:>10}: " + ", ".join(f"{k} {r[k]:.2f}x" for k in times), flush=True)


if __name__ == "__main__":
    main()
