"""CPU speed of pruned ResNet-20s against the dense model.

Times, interleaved round-robin in one process (prunelab.metrics), inference at
batch 8 and 128 and one training step at batch 128, in both memory layouts,
for the dense checkpoint and every pruned model under `--runs`: a folder of `.pt`
files, or a `prunelab compare` folder's arms (each arm's `model.pt`, named by the
arm). Takes the whole machine, so run it alone and short:

    PRUNELAB_SLOT_ALL=1 bench/slot .venv/bin/python bench/random_speed.py \
        --runs runs/leagues/posttrain/arms

Writes per model and setting the median ms and the speedup over the dense model in
the same layout to `--out` (default: speed.json beside a compare folder's arms, or
bench/results/random_speed.json for a folder of .pt files).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

import prunelab
from prunelab.atomic import atomic_write_bytes
from prunelab.metrics import compare_latency, compare_train_step

CHECKPOINT = Path("src/prunelab/checkpoints/resnet20_cifar10_jpg.pt")
RECORD = Path("bench/results/random_speed.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/leagues/posttrain/arms"))
    parser.add_argument("--out", type=Path, default=None,
                        help=f"default: speed.json beside a compare folder's arms/, else {RECORD}")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    args = parser.parse_args()
    threads = int(os.environ.get("PRUNELAB_THREADS", "2"))
    models = {"dense": prunelab.load(args.checkpoint).eval()}
    for path in sorted(args.runs.glob("*.pt")):
        models[path.stem] = prunelab.load(path).eval()
    arms = sorted(args.runs.glob("*/model.pt"))  # a compare folder's arms
    for path in arms:
        models[path.parent.name] = prunelab.load(path).eval()
    if len(models) == 1:
        raise SystemExit(f"no pruned models (*.pt or */model.pt) under {args.runs}")
    if args.out is None:  # never overwrite the random-pruning record with a league's timings
        args.out = args.runs.parent / "speed.json" if arms else RECORD
    results: dict[str, dict[str, dict[str, float]]] = {name: {} for name in models}
    torch.manual_seed(0)
    for layout in (False, True):
        tag = "channels_last" if layout else "nchw"
        for batch in (8, 128):
            x = torch.randn(batch, 3, 32, 32)
            stats = compare_latency(models, x, repeats=args.repeats, threads=threads,
                                    channels_last=layout)  # fmt: skip
            for name, s in stats.items():
                results[name][f"infer_b{batch}_{tag}"] = {"ms": s.median_ms, "speedup": s.speedup}
            print(f"inference batch {batch} {tag}: " + ", ".join(
                f"{n} {s.median_ms:.1f}ms" for n, s in stats.items()), flush=True)  # fmt: skip
        x = torch.randn(128, 3, 32, 32)
        y = torch.randint(0, 10, (128,))
        stats = compare_train_step(models, x, y, repeats=max(5, args.repeats // 2),
                                   threads=threads, channels_last=layout)  # fmt: skip
        for name, s in stats.items():
            results[name][f"train_b128_{tag}"] = {"ms": s.median_ms, "speedup": s.speedup}
        print(f"train step batch 128 {tag}: " + ", ".join(
            f"{n} {s.median_ms:.0f}ms" for n, s in stats.items()), flush=True)  # fmt: skip
    record = {"threads": threads, "repeats": args.repeats, "models": results}
    text = json.dumps(record, indent=1).encode()
    atomic_write_bytes(args.out, lambda f: f.write(text))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
